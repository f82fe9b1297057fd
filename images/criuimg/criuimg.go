// Package criuimg reads the CRIU images of one dumped process tree (one
// images directory) into a summary: its processes, their memory, open files
// and sockets. It owns the interpretation of CRIU's image files for cr
// inspect; it never reads page contents.
//
// It decodes each file itself with crit's generated protobuf types and keeps
// nothing between calls: crit's Explore helpers cache files.img and friends
// in package variables that are never reset, so a second directory read in
// the same process would show the first one's files.
package criuimg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	crfs "github.com/checkpoint-restore/go-criu/v7/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ErrBadImage is wrapped by the errors of Read for an images directory that
// CRIU could not have written: a missing or truncated file, a wrong magic,
// an entry that does not decode.
var ErrBadImage = errors.New("bad CRIU image")

// Tree is what a CRIU images directory holds.
type Tree struct {
	// Processes in the order of pstree.img: parents before their children.
	Processes []Process `json:"processes"`
}

// Process is one process of the dumped tree.
type Process struct {
	Pid     int    `json:"pid"`  // in the dumped tree's pid namespace
	PPid    int    `json:"ppid"` // 0 for the root of the dumped tree
	PGid    int    `json:"pgid"`
	Sid     int    `json:"sid"`
	Threads int    `json:"threads"`
	Comm    string `json:"comm"`  // the kernel's task name, at most 15 bytes
	State   string `json:"state"` // "alive", "stopped", "zombie" or "state <n>"
	Exe     string `json:"exe,omitempty"`
	Cwd     string `json:"cwd,omitempty"`
	Root    string `json:"root,omitempty"`
	Memory  Memory `json:"memory"`
	// Files are the open file descriptors by number (none for a zombie).
	Files []File `json:"files"`
}

// Memory is the address space of a process as dumped.
type Memory struct {
	VMAs        int   `json:"vmas"`
	MappedBytes int64 `json:"mapped_bytes"` // total size of the mappings
	// DumpedPages were written to the images; DumpedBytes is the size of
	// the process's pages-<n>.img that holds them.
	DumpedPages int64 `json:"dumped_pages"`
	DumpedBytes int64 `json:"dumped_bytes"`
	LazyPages   int64 `json:"lazy_pages,omitempty"`   // left in the source for lazy restore
	ParentPages int64 `json:"parent_pages,omitempty"` // in a parent (pre-dump) image
}

// File is one open file descriptor.
type File struct {
	Fd int `json:"fd"`
	// Kind is "file", "dir", "device", "pipe", "fifo", "socket", "tty",
	// "eventfd", "eventpoll", "signalfd", "timerfd", "inotify", "fanotify",
	// "memfd", "ns", "tun", "bpf-map", "external" or "unknown".
	Kind string `json:"kind"`
	// Path of a file, directory, device, fifo or tty; "pipe:[<id>]" for a
	// pipe; the local name of a unix socket.
	Path   string  `json:"path,omitempty"`
	Access string  `json:"access,omitempty"`     // "r", "w" or "rw", for files
	Offset uint64  `json:"offset,omitempty"`     // file position, for files
	Size   uint64  `json:"size_bytes,omitempty"` // size of a regular file at dump time
	Socket *Socket `json:"socket,omitempty"`
}

// Socket describes a socket descriptor.
type Socket struct {
	Family   string `json:"family"`             // "unix", "inet", "inet6", "netlink", "packet"
	Type     string `json:"type,omitempty"`     // "stream", "dgram", "seqpacket", "raw"
	Protocol string `json:"protocol,omitempty"` // "tcp", "udp", ... for inet sockets
	State    string `json:"state,omitempty"`    // "listen", "established", "close", ...
	// Local is the socket's own address: a unix path ("@name" when
	// abstract) or "addr:port".
	Local string `json:"local,omitempty"`
	// Peer is the other end: "addr:port", or for a unix socket the peer's
	// name, or "socket:[<inode>]" when it has none.
	Peer  string `json:"peer,omitempty"`
	Inode uint32 `json:"inode,omitempty"`
}

// Options tune Read.
type Options struct {
	// FileSize reports the size of an image file of the directory that is
	// not on disk (an extraction may leave pages-*.img out, see Needs).
	// Read asks it only for files it cannot stat; nil means none.
	FileSize func(name string) (int64, bool)
}

// Needs reports whether Read reads the image file name (a base name of
// the directory). Read also uses the sizes of pages-*.img, but not their
// content.
func Needs(name string) bool {
	switch name {
	case "inventory.img", "pstree.img", "files.img":
		return true
	}
	if !strings.HasSuffix(name, ".img") {
		return false
	}
	for _, p := range []string{"core-", "mm-", "pagemap-", "ids-", "fdinfo-", "fs-"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Task states of core's task_state (CRIU's compel task states). CRIU
// writes a zombie as dead; restoring it makes a zombie again.
const (
	taskAlive   = 1
	taskDead    = 2
	taskStopped = 3
	taskZombie  = 6
)

// Flags of a pagemap entry (CRIU's pagemap.h).
const (
	pageParent  = 1 << 0
	pageLazy    = 1 << 1
	pagePresent = 1 << 2
)

// Read reads the CRIU images in dir. It decodes pstree.img, each process's
// core, ids, fs, mm and pagemap images, its fdinfo image and files.img, and
// nothing else.
func Read(dir string, o Options) (*Tree, error) {
	inv, err := one(dir, "inventory.img", "INVENTORY", func() *inventory.InventoryEntry { return &inventory.InventoryEntry{} })
	if err != nil {
		return nil, err
	}
	ps, err := entries(dir, "pstree.img", "PSTREE", func() *pstree.PstreeEntry { return &pstree.PstreeEntry{} })
	if err != nil {
		return nil, err
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("%w: pstree.img: no processes", ErrBadImage)
	}
	ft, err := readFiles(dir)
	if err != nil {
		return nil, err
	}
	r := &reader{dir: dir, o: o, files: ft, fdinfoPerID: inv.GetFdinfoPerId()}
	t := &Tree{Processes: make([]Process, 0, len(ps))}
	for _, e := range ps {
		p, err := r.process(e)
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", e.GetPid(), err)
		}
		t.Processes = append(t.Processes, p)
	}
	return t, nil
}

// reader holds what Read shares between the processes of one directory.
type reader struct {
	dir         string
	o           Options
	files       *fileTable
	fdinfoPerID bool
}

func (r *reader) process(e *pstree.PstreeEntry) (Process, error) {
	pid := e.GetPid()
	p := Process{
		Pid: int(pid), PPid: int(e.GetPpid()), PGid: int(e.GetPgid()), Sid: int(e.GetSid()),
		Threads: max(len(e.GetThreads()), 1), Files: []File{},
	}
	core, err := one(r.dir, imgName("core", pid), "CORE", func() *criu_core.CoreEntry { return &criu_core.CoreEntry{} })
	if err != nil {
		return p, err
	}
	tc := core.GetTc()
	if tc == nil {
		return p, fmt.Errorf("%w: %s: no task core", ErrBadImage, imgName("core", pid))
	}
	p.Comm = tc.GetComm()
	p.State = stateName(tc.GetTaskState())
	if s := tc.GetTaskState(); s != taskAlive && s != taskStopped {
		// CRIU writes only the core of a zombie: no memory, no files.
		return p, nil
	}
	ids := core.GetIds()
	if ids == nil {
		if ids, err = one(r.dir, imgName("ids", pid), "IDS", func() *criu_core.TaskKobjIdsEntry { return &criu_core.TaskKobjIdsEntry{} }); err != nil {
			return p, err
		}
	}
	if p.Memory, p.Exe, err = r.memory(pid); err != nil {
		return p, err
	}
	fsEntry, err := one(r.dir, imgName("fs", pid), "FS", func() *crfs.FsEntry { return &crfs.FsEntry{} })
	if err != nil {
		return p, err
	}
	p.Cwd = r.files.regName(fsEntry.GetCwdId())
	p.Root = r.files.regName(fsEntry.GetRootId())
	fdID := pid
	if r.fdinfoPerID {
		fdID = ids.GetFilesId()
	}
	fds, err := entries(r.dir, imgName("fdinfo", fdID), "FDINFO", func() *fdinfo.FdinfoEntry { return &fdinfo.FdinfoEntry{} })
	if err != nil {
		return p, err
	}
	for _, fd := range fds {
		p.Files = append(p.Files, r.files.describe(fd))
	}
	return p, nil
}

// memory sums a process's mappings (mm-<pid>.img) and the pages its
// pagemap-<pid>.img records, and finds its executable.
func (r *reader) memory(pid uint32) (Memory, string, error) {
	var m Memory
	mmEntry, err := one(r.dir, imgName("mm", pid), "MM", func() *mm.MmEntry { return &mm.MmEntry{} })
	if err != nil {
		return m, "", err
	}
	exe := r.files.regName(mmEntry.GetExeFileId())
	for _, v := range mmEntry.GetVmas() {
		if v.GetEnd() < v.GetStart() {
			return m, "", fmt.Errorf("%w: %s: mapping %#x-%#x", ErrBadImage, imgName("mm", pid), v.GetStart(), v.GetEnd())
		}
		m.VMAs++
		m.MappedBytes += int64(v.GetEnd() - v.GetStart())
	}
	name := imgName("pagemap", pid)
	raw, err := rawEntries(r.dir, name, "PAGEMAP")
	if err != nil {
		return m, "", err
	}
	if len(raw) == 0 {
		return m, "", fmt.Errorf("%w: %s: no head", ErrBadImage, name)
	}
	var head pagemap.PagemapHead
	if err := proto.Unmarshal(raw[0], &head); err != nil {
		return m, "", fmt.Errorf("%w: %s: head: %v", ErrBadImage, name, err)
	}
	for i, b := range raw[1:] {
		var pe pagemap.PagemapEntry
		if err := proto.Unmarshal(b, &pe); err != nil {
			return m, "", fmt.Errorf("%w: %s: entry %d: %v", ErrBadImage, name, i+1, err)
		}
		flags := pe.GetFlags()
		if pe.Flags == nil { // images older than CRIU 3.0
			flags = pagePresent
			if pe.GetInParent() {
				flags = pageParent
			}
		}
		n := nrPages(&pe)
		if flags&pagePresent != 0 {
			m.DumpedPages += n
		}
		if flags&pageLazy != 0 && flags&pagePresent == 0 {
			m.LazyPages += n
		}
		if flags&pageParent != 0 {
			m.ParentPages += n
		}
	}
	pages := imgName("pages", head.GetPagesId())
	size, ok := r.size(pages)
	if m.DumpedPages > 0 && !ok {
		return m, "", fmt.Errorf("%w: %s: %s holds %d pages but is missing", ErrBadImage, name, pages, m.DumpedPages)
	}
	m.DumpedBytes = size
	return m, exe, nil
}

// size returns the size of the image file name, on disk or as Options
// report it.
func (r *reader) size(name string) (int64, bool) {
	if fi, err := os.Stat(filepath.Join(r.dir, name)); err == nil {
		return fi.Size(), true
	}
	if r.o.FileSize != nil {
		return r.o.FileSize(name)
	}
	return 0, false
}

func imgName(kind string, id uint32) string { return fmt.Sprintf("%s-%d.img", kind, id) }

func stateName(s uint32) string {
	switch s {
	case taskAlive:
		return "alive"
	case taskStopped:
		return "stopped"
	case taskDead, taskZombie:
		return "zombie"
	}
	return fmt.Sprintf("state %d", s)
}

// nrPages is a pagemap entry's page count. CRIU 4.2 writes it as the
// 64-bit nr_pages (field 5), which go-criu v7's schema lacks, and leaves
// the older 32-bit field (2, compat_nr_pages) zero; older CRIUs write only
// field 2.
func nrPages(pe *pagemap.PagemapEntry) int64 {
	b := pe.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 5 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				break
			}
			return int64(v)
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			break
		}
		b = b[m:]
	}
	return int64(pe.GetNrPages())
}

// PagesID returns the id N of the pages image (pages-N.img) that the
// pagemap image name in dir (pagemap-PID.img, pagemap-shmem-ID.img)
// points to, from its head.
func PagesID(dir, name string) (uint32, error) {
	raw, err := rawEntries(dir, name, "PAGEMAP")
	if err != nil {
		return 0, err
	}
	if len(raw) == 0 {
		return 0, fmt.Errorf("%w: %s: no head", ErrBadImage, name)
	}
	var head pagemap.PagemapHead
	if err := proto.Unmarshal(raw[0], &head); err != nil {
		return 0, fmt.Errorf("%w: %s: head: %v", ErrBadImage, name, err)
	}
	return head.GetPagesId(), nil
}
