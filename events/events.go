// Package events owns cr's events journal: an append-only, bounded file
// of JSON lines under the state directory, written by the commands and
// container inits that cause each event (no daemon), and read by
// `cr events`.
//
// Each record is one line, written with a single O_APPEND write(2), so
// concurrent writers never interleave and a crash can at worst leave a
// torn last line, which readers skip (and the next writer ends with a
// newline first). The journal is bounded: when the file reaches MaxBytes
// it is renamed to FILE.1 (replacing the previous one) and a new file
// begins, so it never holds much more than twice MaxBytes.
package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The kinds of event.
const (
	Started      = "started"      // cr run started the container's job
	Exited       = "exited"       // the job exited (ExitCode; Signal if killed by one)
	Empty        = "empty"        // the last process of the container is gone (OnEmpty says what happens to the node)
	Removed      = "removed"      // the node was removed from the tree
	Frozen       = "frozen"       // cr freeze
	Thawed       = "thawed"       // cr thaw
	Checkpointed = "checkpointed" // cr checkpoint wrote an image (Image), cr snapshot a snapshot (Store, Snapshot)
	Restored     = "restored"     // cr restore brought the container back (Image)
	MigratedOut  = "migrated_out" // cr migrate moved it to Host
	MigratedIn   = "migrated_in"  // cr serve restored it from a migration
	MemoryHigh   = "memory_high"  // throttled above memory.high (Count times since the last record)
	MemoryMax    = "memory_max"   // hit its memory limit (Count)
	OOMKill      = "oom_kill"     // processes killed by the OOM killer (Count)
	PidsMax      = "pids_max"     // a fork refused by its pids limit (Count)
	EmptyExec    = "empty_exec"   // the --on-empty-exec command ran (ExitCode)
)

// Event is one record of the journal.
type Event struct {
	Time     time.Time `json:"time"` // RFC 3339 with nanoseconds, UTC
	Type     string    `json:"type"`
	Path     string    `json:"path"` // the container's host path when it happened
	ID       string    `json:"id,omitempty"`
	ExitCode *int      `json:"exit_code,omitempty"`
	Signal   string    `json:"signal,omitempty"`
	Count    int64     `json:"count,omitempty"`
	OnEmpty  string    `json:"on_empty,omitempty"`
	Image    string    `json:"image,omitempty"`    // a checkpoint's image file
	Store    string    `json:"store,omitempty"`    // a snapshot's store (cr snapshot)
	Snapshot string    `json:"snapshot,omitempty"` // and its id
	Host     string    `json:"host,omitempty"`
}

// FileName is the journal's file in the state directory.
const FileName = "events.jsonl"

// DefaultMaxBytes is the size at which the journal is rotated.
const DefaultMaxBytes = 1 << 20

// maxLine bounds a record; longer lines are not written, and are skipped
// when read.
const maxLine = 64 << 10

// Journal is the journal in one state directory.
type Journal struct {
	Dir      string // the state directory
	MaxBytes int64  // rotate at this size; 0 means DefaultMaxBytes
}

// Path is the journal's current file.
func (j Journal) Path() string { return filepath.Join(j.Dir, FileName) }

func (j Journal) max() int64 {
	if j.MaxBytes > 0 {
		return j.MaxBytes
	}
	return DefaultMaxBytes
}

// Append writes ev (Time set to now when zero) as one line. It never
// blocks on another writer.
func (j Journal) Append(ev Event) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if len(b) >= maxLine {
		return fmt.Errorf("record event: %d bytes is too long", len(b))
	}
	b = append(b, '\n')
	if err := os.MkdirAll(j.Dir, 0o700); err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	j.rotate()
	fd, err := unix.Open(j.Path(), unix.O_RDWR|unix.O_APPEND|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	defer unix.Close(fd)
	// A writer that died in the middle of its write left a torn line:
	// end it, so that this record starts a line of its own.
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Size > 0 {
		last := make([]byte, 1)
		if n, _ := unix.Pread(fd, last, st.Size-1); n == 1 && last[0] != '\n' {
			b = append([]byte{'\n'}, b...)
		}
	}
	for {
		_, err = unix.Write(fd, b)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	return nil
}

// rotateWait bounds how long a writer that found the journal full waits
// for another writer's rotation before it appends anyway: long enough that
// writers do not pile records onto a full file while one rotates, short
// enough that a rotator frozen with the lock (cr freeze of a container
// whose init was rotating) never blocks a command.
const rotateWait = 200 * time.Millisecond

// rotate renames the journal to FILE.1 once it has reached MaxBytes. Only
// one writer rotates, under a lock; a writer that finds it taken waits
// (up to rotateWait) and checks the size again, so a file just begun is
// never rotated away and a full one does not keep growing meanwhile.
func (j Journal) rotate() {
	if st, err := os.Stat(j.Path()); err != nil || st.Size() < j.max() {
		return
	}
	lk, err := unix.Open(filepath.Join(j.Dir, FileName+".lock"), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return
	}
	defer unix.Close(lk)
	for deadline := time.Now().Add(rotateWait); unix.Flock(lk, unix.LOCK_EX|unix.LOCK_NB) != nil; {
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	if st, err := os.Stat(j.Path()); err != nil || st.Size() < j.max() {
		return
	}
	_ = os.Rename(j.Path(), j.Path()+".1")
}

// Read returns the journal's events, oldest first: the rotated file's,
// then the current one's. Lines that are not a complete record (a torn
// last line, anything else) are skipped.
func (j Journal) Read() ([]Event, error) {
	var all []Event
	for _, p := range []string{j.Path() + ".1", j.Path()} {
		evs, _, err := readFile(p, 0)
		if err != nil {
			return nil, err
		}
		all = append(all, evs...)
	}
	sort.SliceStable(all, func(a, b int) bool { return all[a].Time.Before(all[b].Time) })
	return all, nil
}

// readFile reads the complete records of p from offset on; next is the
// offset after the last complete line.
func readFile(p string, offset int64) (evs []Event, next int64, err error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read events: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, 0, fmt.Errorf("read events: %w", err)
	}
	r := bufio.NewReader(f)
	next = offset
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An overlong line: skip to its end.
			n := int64(len(line))
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				n += int64(len(line))
			}
			if err != nil {
				return evs, next, nil
			}
			next += n
			continue
		}
		if err != nil {
			return evs, next, nil // EOF: a torn or unfinished last line is not read
		}
		next += int64(len(line))
		if ev, ok := parse(line); ok {
			evs = append(evs, ev)
		}
	}
}

func parse(line []byte) (Event, bool) {
	line = bytes.TrimSpace(line)
	// A torn line followed by the newline its successor added reads as
	// one bad line: skip it.
	var ev Event
	if len(line) == 0 || json.Unmarshal(line, &ev) != nil || ev.Type == "" || ev.Time.IsZero() {
		return Event{}, false
	}
	// cr writes only clean absolute paths ("/a/b"); anything else was not
	// written by cr, and would not be scoped right ("/a/" is not below /a).
	if ev.Path != "" && (!strings.HasPrefix(ev.Path, "/") || path.Clean(ev.Path) != ev.Path) {
		return Event{}, false
	}
	return ev, true
}

// Follow calls f for each event appended after the call (following the
// rotation), checking every interval, until stop is closed or f returns
// an error. With history it first calls f for every event already there,
// oldest first, and then for those that follow, none missed between.
func (j Journal) Follow(interval time.Duration, stop <-chan struct{}, history bool, f func(Event) error) error {
	ino, off := fileState(j.Path())
	if history {
		old, _, err := readFile(j.Path()+".1", 0)
		if err != nil {
			return err
		}
		ino, _ = fileState(j.Path())
		cur, next, err := readFile(j.Path(), 0)
		if err != nil {
			return err
		}
		off = next
		for _, ev := range append(old, cur...) {
			if err := f(ev); err != nil {
				return err
			}
		}
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
		cur, size := fileState(j.Path())
		if cur != ino {
			// Rotated: finish the old file (now FILE.1), start the new one.
			if old, _ := fileState(j.Path() + ".1"); old == ino && ino != 0 {
				evs, _, err := readFile(j.Path()+".1", off)
				if err != nil {
					return err
				}
				for _, ev := range evs {
					if err := f(ev); err != nil {
						return err
					}
				}
			}
			ino, off = cur, 0
		}
		if size <= off {
			continue
		}
		evs, next, err := readFile(j.Path(), off)
		if err != nil {
			return err
		}
		off = next
		for _, ev := range evs {
			if err := f(ev); err != nil {
				return err
			}
		}
	}
}

func fileState(p string) (ino uint64, size int64) {
	var st unix.Stat_t
	if unix.Stat(p, &st) != nil {
		return 0, 0
	}
	return st.Ino, st.Size
}

// Scope is what one viewer may see of the journal: events of containers
// at or below Under (a host path), which must be inside Root (the
// viewer's own container, "/" for the host), with paths shown relative
// to Root, and none before Since.
type Scope struct {
	Root  string
	Under string // "" or "/" for everything the viewer sees
	Since time.Time
}

// Filter returns the events of evs that s lets through, with their
// paths as the viewer names them.
func (s Scope) Filter(evs []Event) []Event {
	var out []Event
	for _, ev := range evs {
		if ev, ok := s.Apply(ev); ok {
			out = append(out, ev)
		}
	}
	return out
}

// Apply returns ev as the viewer sees it, or false if it may not.
func (s Scope) Apply(ev Event) (Event, bool) {
	if !s.Since.IsZero() && ev.Time.Before(s.Since) {
		return Event{}, false
	}
	if s.Under != "" && s.Under != "/" && ev.Path != s.Under && !strings.HasPrefix(ev.Path, s.Under+"/") {
		return Event{}, false
	}
	root := s.Root
	if root == "" {
		root = "/"
	}
	switch {
	case root == "/":
	case ev.Path == root:
		// A viewer's own container is its root: it is not one of the
		// containers it can name, and its events are its parent's.
		return Event{}, false
	case strings.HasPrefix(ev.Path, root+"/"):
		ev.Path = ev.Path[len(root):]
	default:
		return Event{}, false
	}
	return ev, true
}
