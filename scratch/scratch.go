// Package scratch owns what one cr process creates for its own lifetime
// only: staging directories, an image file being written, a record in a
// journal. Each such entry is named PREFIX + 16 hex digits and is locked
// by its owner with flock(2) on the entry itself for as long as the owner
// wants it. The kernel drops the lock when the owner's last descriptor
// closes, however the owner dies (SIGKILL included), and no other process
// inherits it (descriptors are close-on-exec), so a recycled pid is never
// taken for the owner and a process in another pid namespace sees the
// same lock.
//
// Whoever creates an entry first sweeps the directory for entries of the
// same prefix whose lock it can take: their owners are gone, and it
// removes them. Creation and sweeping are race-free against each other: a
// sweeper removes only an entry it holds locked, and a creator that finds,
// once it holds the lock on its new entry, that the entry was removed
// meanwhile (a sweeper locked it between its mkdir and its flock) starts
// again with a new name.
package scratch

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// suffixLen is the length of the random part of a name.
const suffixLen = 16

// Entry is a directory or file owned by this process until Remove or
// Release.
type Entry struct {
	// Path is the entry's path.
	Path string
	f    *os.File // holds the lock; for a file, the file itself
	dir  bool
}

// File is the open file of an entry made by Create (read and write), whose
// descriptor holds the lock: closing it releases the entry.
func (e *Entry) File() *os.File { return e.f }

// Remove removes the entry (a directory with everything in it), then
// releases it. It is safe to call more than once.
func (e *Entry) Remove() error {
	if e == nil || e.f == nil {
		return nil
	}
	var err error
	if e.dir {
		err = os.RemoveAll(e.Path)
	} else if err = os.Remove(e.Path); errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	e.Release()
	return err
}

// Release gives the entry up without removing it (a file renamed into its
// place, say): its lock is released and a later sweep of its name would
// remove it.
func (e *Entry) Release() {
	if e == nil || e.f == nil {
		return
	}
	e.f.Close()
	e.f = nil
}

// Mkdir sweeps parent (see Sweep) and creates a new directory
// parent/PREFIX<16 hex digits>, mode 0700, owned by this process. parent is
// created if it is missing.
func Mkdir(parent, prefix string) (*Entry, error) {
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	Sweep(parent, prefix, Dirs, nil)
	return MkdirOnly(parent, prefix)
}

// MkdirOnly is Mkdir without the sweep, for entries that their finder
// must act on before it removes them (see Sweep's claim). parent must
// exist.
func MkdirOnly(parent, prefix string) (*Entry, error) {
	for {
		p := filepath.Join(parent, prefix+randomSuffix())
		if err := os.Mkdir(p, 0o700); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return nil, err
		}
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue // swept already
		}
		if err != nil {
			os.Remove(p)
			return nil, err
		}
		if ok, err := own(f); err != nil || !ok {
			f.Close()
			if err != nil {
				os.Remove(p)
				return nil, err
			}
			continue
		}
		return &Entry{Path: p, f: f, dir: true}, nil
	}
}

// Create sweeps dir (see Sweep) and creates a new regular file
// dir/PREFIX<16 hex digits>, mode 0600, owned by this process.
func Create(dir, prefix string) (*Entry, error) {
	Sweep(dir, prefix, Files, nil)
	return CreateOnly(dir, prefix)
}

// CreateOnly is Create without the sweep, for entries that their finder
// must act on before it removes them (a journal's records: see Sweep's
// claim).
func CreateOnly(dir, prefix string) (*Entry, error) {
	for {
		p := filepath.Join(dir, prefix+randomSuffix())
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return nil, err
		}
		if ok, err := own(f); err != nil || !ok {
			f.Close()
			if err != nil {
				os.Remove(p)
				return nil, err
			}
			continue
		}
		return &Entry{Path: p, f: f}, nil
	}
}

// own takes the lock of a new entry, waiting for a sweeper that holds it,
// and reports whether the entry still exists.
func own(f *os.File) (bool, error) {
	if err := flock(f, unix.LOCK_EX); err != nil {
		return false, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, err
	}
	return st.Nlink > 0, nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

func randomSuffix() string {
	b := make([]byte, suffixLen/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// IsName reports whether name is an entry's name for prefix: prefix
// followed by 16 lowercase hex digits.
func IsName(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || len(rest) != suffixLen {
		return false
	}
	for _, c := range rest {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Claim is called by Sweep with an abandoned entry, locked, before it is
// removed; f is the entry opened read-only. It returns false to leave the
// entry in place.
type Claim func(path string, f *os.File) bool

// Kind is what a sweep looks at: directories (made by Mkdir) or regular
// files (made by Create).
type Kind int

const (
	Dirs Kind = iota
	Files
)

// Sweep removes from dir every entry of kind named for prefix (see IsName)
// whose owner is gone, and returns their paths. An entry whose lock
// another process holds is alive and left alone; a symbolic link or an
// entry of another kind is never touched. claim, if set, sees each
// abandoned entry first. Sweep is best effort: what it cannot read or
// remove stays for a later sweep.
func Sweep(dir, prefix string, kind Kind, claim Claim) []string {
	return SweepMatch(dir, func(name string) bool { return IsName(name, prefix) }, kind, claim)
}

// SweepMatch is Sweep for the entries whose name match accepts.
func SweepMatch(dir string, match func(name string) bool, kind Kind, claim Claim) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, ent := range ents {
		t := ent.Type()
		isDir := kind == Dirs
		if !match(ent.Name()) || isDir && !t.IsDir() || !isDir && !t.IsRegular() {
			continue
		}
		p := filepath.Join(dir, ent.Name())
		if sweepOne(p, isDir, claim) {
			removed = append(removed, p)
		}
	}
	return removed
}

func sweepOne(p string, isDir bool, claim Claim) bool {
	flags := os.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK
	if isDir {
		flags |= unix.O_DIRECTORY
	}
	f, err := os.OpenFile(p, flags, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false // alive (EWOULDBLOCK), or no locks here
	}
	// Still there, and still the entry that was opened?
	var fst, pst unix.Stat_t
	if unix.Fstat(int(f.Fd()), &fst) != nil || fst.Nlink == 0 {
		return false
	}
	if unix.Lstat(p, &pst) != nil || pst.Dev != fst.Dev || pst.Ino != fst.Ino {
		return false
	}
	if isDir && fst.Mode&unix.S_IFMT != unix.S_IFDIR || !isDir && fst.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	if claim != nil && !claim(p, f) {
		return false
	}
	if isDir {
		return os.RemoveAll(p) == nil
	}
	return os.Remove(p) == nil
}
