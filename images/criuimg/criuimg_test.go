package criuimg

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fifo"
	crfs "github.com/checkpoint-restore/go-criu/v7/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pipe"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	sk_inet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-inet"
	sk_unix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/vma"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// fillRequired sets every unset required field of m, recursively, to its
// default, so that tests name only the fields they care about.
func fillRequired(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Cardinality() != protoreflect.Required {
			continue
		}
		if fd.Message() != nil {
			m.Mutable(fd)
		} else if !m.Has(fd) {
			m.Set(fd, fd.Default())
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Message() == nil || fd.IsMap():
		case fd.IsList():
			for i := 0; i < v.List().Len(); i++ {
				fillRequired(v.List().Get(i).Message())
			}
		default:
			fillRequired(v.Message())
		}
		return true
	})
}

// encode returns an image file as CRIU writes it: the common magic, the
// file's magic, and each message behind its size.
func encode(t *testing.T, magicName string, msgs ...proto.Message) []byte {
	t.Helper()
	ms := magic.LoadMagic().ByName
	b := binary.LittleEndian.AppendUint32(nil, uint32(ms["IMG_COMMON"]))
	if magicName == "INVENTORY" {
		b = b[:0] // the inventory has no common magic
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(ms[magicName]))
	for _, m := range msgs {
		fillRequired(m.ProtoReflect())
		p, err := proto.Marshal(m)
		if err != nil {
			t.Fatalf("marshal %T: %v", m, err)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

func writeImage(t *testing.T, dir, name, magicName string, msgs ...proto.Message) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), encode(t, magicName, msgs...), 0o600); err != nil {
		t.Fatal(err)
	}
}

// pidfdFile is a files.img entry of CRIU 4's pidfd type, which go-criu v7
// does not know: its pidfd_entry (field 22) is raw bytes here.
func pidfdFile(t *testing.T, id uint32, nspid int32) *fdinfo.FileEntry {
	t.Helper()
	var inner []byte
	inner = protowire.AppendTag(inner, 1, protowire.VarintType)
	inner = protowire.AppendVarint(inner, uint64(id))
	inner = protowire.AppendTag(inner, 4, protowire.VarintType)
	inner = protowire.AppendVarint(inner, uint64(nspid))
	e := &fdinfo.FileEntry{Type: fdinfo.FdTypes(fdPidfd).Enum(), Id: proto.Uint32(id)}
	e.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 22, protowire.BytesType), inner))
	return e
}

func reg(id uint32, name string, flags, mode uint32) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(id), Reg: &regfile.RegFileEntry{
		Id: proto.Uint32(id), Name: proto.String(name), Flags: proto.Uint32(flags), Mode: proto.Uint32(mode),
	}}
}

func unixSk(id, ino, peer, typ, state uint32, name string) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(id), Usk: &sk_unix.UnixSkEntry{
		Id: proto.Uint32(id), Ino: proto.Uint32(ino), Peer: proto.Uint32(peer), Type: proto.Uint32(typ),
		State: proto.Uint32(state), Name: []byte(name),
	}}
}

func inetSk(id, ino, family, typ, proto_, state uint32, src []uint32, sport uint32, dst []uint32, dport uint32) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_INETSK.Enum(), Id: proto.Uint32(id), Isk: &sk_inet.InetSkEntry{
		Id: proto.Uint32(id), Ino: proto.Uint32(ino), Family: proto.Uint32(family), Type: proto.Uint32(typ),
		Proto: proto.Uint32(proto_), State: proto.Uint32(state), SrcAddr: src, SrcPort: proto.Uint32(sport),
		DstAddr: dst, DstPort: proto.Uint32(dport),
	}}
}

func fd(n int, typ fdinfo.FdTypes, id uint32) *fdinfo.FdinfoEntry {
	return &fdinfo.FdinfoEntry{Fd: proto.Uint32(uint32(n)), Type: typ.Enum(), Id: proto.Uint32(id)}
}

func pm(vaddr uint64, n uint32, flags uint32) *pagemap.PagemapEntry {
	return &pagemap.PagemapEntry{Vaddr: proto.Uint64(vaddr), NrPages: proto.Uint32(n), Flags: proto.Uint32(flags)}
}

func core(state uint32, comm string, ids *criu_core.TaskKobjIdsEntry) *criu_core.CoreEntry {
	return &criu_core.CoreEntry{
		Mtype: criu_core.CoreEntry_X86_64.Enum(),
		Tc:    &criu_core.TaskCoreEntry{TaskState: proto.Uint32(state), Comm: proto.String(comm)},
		Ids:   ids,
	}
}

func vmas(ranges ...uint64) []*vma.VmaEntry {
	var vs []*vma.VmaEntry
	for i := 0; i+1 < len(ranges); i += 2 {
		vs = append(vs, &vma.VmaEntry{Start: proto.Uint64(ranges[i]), End: proto.Uint64(ranges[i+1])})
	}
	return vs
}

// Addresses as CRIU stores them: the address bytes in network order, read
// as little-endian 32-bit words.
var (
	ip10001   = []uint32{0x0100000a} // 10.0.0.1
	ip1921682 = []uint32{0x0201a8c0} // 192.168.1.2
	ip6any    = []uint32{0, 0, 0, 0}
	ip6loop   = []uint32{0, 0, 0, 0x01000000} // ::1
)

// synthTree writes an images directory of three processes: init (pid 1,
// two threads), a zombie (2) and a stopped worker (3) whose ids are in an
// ids file rather than its core, with every kind of descriptor Read names.
// regName names the regular file with id 105.
func synthTree(t *testing.T, regName string) string {
	t.Helper()
	dir := t.TempDir()
	writeImage(t, dir, "inventory.img", "INVENTORY", &inventory.InventoryEntry{ImgVersion: proto.Uint32(2), FdinfoPerId: proto.Bool(true)})
	writeImage(t, dir, "pstree.img", "PSTREE",
		&pstree.PstreeEntry{Pid: proto.Uint32(1), Pgid: proto.Uint32(1), Sid: proto.Uint32(1), Threads: []uint32{1, 4}},
		&pstree.PstreeEntry{Pid: proto.Uint32(2), Ppid: proto.Uint32(1), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)},
		&pstree.PstreeEntry{Pid: proto.Uint32(3), Ppid: proto.Uint32(1), Pgid: proto.Uint32(3), Sid: proto.Uint32(1), Threads: []uint32{3}},
	)
	writeImage(t, dir, "core-1.img", "CORE", core(taskAlive, "init", &criu_core.TaskKobjIdsEntry{FilesId: proto.Uint32(7)}))
	writeImage(t, dir, "core-2.img", "CORE", core(taskDead, "dead", nil)) // how CRIU writes a zombie
	writeImage(t, dir, "core-3.img", "CORE", core(taskStopped, "worker", nil))
	writeImage(t, dir, "ids-3.img", "IDS", &criu_core.TaskKobjIdsEntry{FilesId: proto.Uint32(8)})
	for _, pid := range []string{"1", "3"} {
		writeImage(t, dir, "fs-"+pid+".img", "FS", &crfs.FsEntry{CwdId: proto.Uint32(100), RootId: proto.Uint32(101)})
	}
	writeImage(t, dir, "mm-1.img", "MM", &mm.MmEntry{ExeFileId: proto.Uint32(102), Vmas: vmas(0x1000, 0x5000, 0x10000, 0x20000)})
	writeImage(t, dir, "mm-3.img", "MM", &mm.MmEntry{ExeFileId: proto.Uint32(102), Vmas: vmas(0x1000, 0x2000)})
	writeImage(t, dir, "pagemap-1.img", "PAGEMAP",
		&pagemap.PagemapHead{PagesId: proto.Uint32(1)},
		pm(0x1000, 3, pagePresent),
		pm(0x10000, 2, pagePresent|pageLazy),
		pm(0x12000, 4, pageLazy),
		pm(0x18000, 1, pageParent),
	)
	// An entry without flags, as CRIU before 3.0 wrote: present.
	writeImage(t, dir, "pagemap-3.img", "PAGEMAP",
		&pagemap.PagemapHead{PagesId: proto.Uint32(2)},
		&pagemap.PagemapEntry{Vaddr: proto.Uint64(0x1000), NrPages: proto.Uint32(1)},
	)
	if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), make([]byte, 5*4096), 0o600); err != nil {
		t.Fatal(err)
	}
	// pages-2.img is not on disk: Options.FileSize reports it.
	writeImage(t, dir, "fdinfo-7.img", "FDINFO",
		fd(0, fdinfo.FdTypes_REG, 103),
		fd(1, fdinfo.FdTypes_PIPE, 104),
		fd(3, fdinfo.FdTypes_REG, 105),
		fd(4, fdinfo.FdTypes_REG, 106),
		fd(5, fdinfo.FdTypes_UNIXSK, 107),
		fd(6, fdinfo.FdTypes_UNIXSK, 108),
		fd(7, fdinfo.FdTypes_UNIXSK, 109),
		fd(8, fdinfo.FdTypes_INETSK, 110),
		fd(9, fdinfo.FdTypes_INETSK, 111),
		fd(10, fdinfo.FdTypes_INETSK, 112),
		fd(11, fdinfo.FdTypes_FIFO, 113),
		fd(12, fdPidfd, 115),
		fd(13, fdinfo.FdTypes_EVENTFD, 116),
		fd(14, fdinfo.FdTypes_TTY, 117),
		fd(15, fdinfo.FdTypes_MEMFD, 119),
	)
	writeImage(t, dir, "fdinfo-8.img", "FDINFO", fd(0, fdinfo.FdTypes_REG, 103))
	logFile := reg(105, regName, syscall.O_WRONLY|syscall.O_APPEND, syscall.S_IFREG|0o644)
	logFile.Reg.Pos, logFile.Reg.Size = proto.Uint64(42), proto.Uint64(100)
	writeImage(t, dir, "files.img", "FILES",
		reg(100, "/home", 0, syscall.S_IFDIR|0o755),
		reg(101, "/", 0, syscall.S_IFDIR|0o755),
		reg(102, "/usr/bin/app", 0, syscall.S_IFREG|0o755),
		reg(103, "/dev/null", syscall.O_RDWR, syscall.S_IFCHR|0o666),
		&fdinfo.FileEntry{Type: fdinfo.FdTypes_PIPE.Enum(), Id: proto.Uint32(104), Pipe: &pipe.PipeEntry{Id: proto.Uint32(104), PipeId: proto.Uint32(777)}},
		logFile,
		reg(106, "/etc", syscall.O_RDONLY, syscall.S_IFDIR|0o755),
		unixSk(107, 5000, 0, syscall.SOCK_STREAM, 10, "/run/x.sock\x00"),
		unixSk(108, 5001, 5002, syscall.SOCK_STREAM, 1, ""),
		unixSk(109, 5002, 5001, syscall.SOCK_STREAM, 1, "\x00abs"),
		inetSk(110, 6000, syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_TCP, 1, ip10001, 5555, ip1921682, 80),
		inetSk(111, 6001, syscall.AF_INET6, syscall.SOCK_STREAM, syscall.IPPROTO_TCP, 10, ip6any, 8080, ip6any, 0),
		inetSk(112, 6002, syscall.AF_INET6, syscall.SOCK_DGRAM, syscall.IPPROTO_UDP, 7, ip6loop, 53, nil, 0),
		&fdinfo.FileEntry{Type: fdinfo.FdTypes_FIFO.Enum(), Id: proto.Uint32(113), Fifo: &fifo.FifoEntry{Id: proto.Uint32(113), PipeId: proto.Uint32(9), RegfId: proto.Uint32(114)}},
		reg(114, "/tmp/fifo", syscall.O_RDONLY, syscall.S_IFIFO|0o600),
		pidfdFile(t, 115, 3),
		&fdinfo.FileEntry{Type: fdinfo.FdTypes_EVENTFD.Enum(), Id: proto.Uint32(116)},
		&fdinfo.FileEntry{Type: fdinfo.FdTypes_TTY.Enum(), Id: proto.Uint32(117), Tty: &tty.TtyFileEntry{Id: proto.Uint32(117), RegfId: proto.Uint32(118)}},
		reg(118, "/dev/pts/0", syscall.O_RDWR, syscall.S_IFCHR|0o620),
	)
	return dir
}

// synthFileSize reports the pages file synthTree leaves out.
func synthFileSize(name string) (int64, bool) {
	if name == "pages-2.img" {
		return 4096, true
	}
	return 0, false
}

func TestReadSynthetic(t *testing.T) {
	dir := synthTree(t, "/var/log/app.log")
	got, err := Read(dir, Options{FileSize: synthFileSize})
	if err != nil {
		t.Fatal(err)
	}
	devNull := File{Fd: 0, Kind: "device", Path: "/dev/null", Access: "rw"}
	want := &Tree{Processes: []Process{
		{
			Pid: 1, PPid: 0, PGid: 1, Sid: 1, Threads: 2, Comm: "init", State: "alive",
			Exe: "/usr/bin/app", Cwd: "/home", Root: "/",
			Memory: Memory{VMAs: 2, MappedBytes: 0x4000 + 0x10000, DumpedPages: 5, DumpedBytes: 5 * 4096, LazyPages: 4, ParentPages: 1},
			Files: []File{
				devNull,
				{Fd: 1, Kind: "pipe", Path: "pipe:[777]"},
				{Fd: 3, Kind: "file", Path: "/var/log/app.log", Access: "w", Offset: 42, Size: 100},
				{Fd: 4, Kind: "dir", Path: "/etc", Access: "r"},
				{Fd: 5, Kind: "socket", Path: "/run/x.sock", Socket: &Socket{Family: "unix", Type: "stream", State: "listen", Local: "/run/x.sock", Inode: 5000}},
				{Fd: 6, Kind: "socket", Socket: &Socket{Family: "unix", Type: "stream", State: "established", Peer: "@abs", Inode: 5001}},
				{Fd: 7, Kind: "socket", Path: "@abs", Socket: &Socket{Family: "unix", Type: "stream", State: "established", Local: "@abs", Peer: "socket:[5001]", Inode: 5002}},
				{Fd: 8, Kind: "socket", Socket: &Socket{Family: "inet", Type: "stream", Protocol: "tcp", State: "established", Local: "10.0.0.1:5555", Peer: "192.168.1.2:80", Inode: 6000}},
				{Fd: 9, Kind: "socket", Socket: &Socket{Family: "inet6", Type: "stream", Protocol: "tcp", State: "listen", Local: "*:8080", Inode: 6001}},
				{Fd: 10, Kind: "socket", Socket: &Socket{Family: "inet6", Type: "dgram", Protocol: "udp", State: "close", Local: "[::1]:53", Inode: 6002}},
				{Fd: 11, Kind: "fifo", Path: "/tmp/fifo"},
				{Fd: 12, Kind: "pidfd", Path: "pid:3"},
				{Fd: 13, Kind: "eventfd"},
				{Fd: 14, Kind: "tty", Path: "/dev/pts/0"},
				{Fd: 15, Kind: "memfd"},
			},
		},
		{Pid: 2, PPid: 1, PGid: 1, Sid: 1, Threads: 1, Comm: "dead", State: "zombie", Files: []File{}},
		{
			Pid: 3, PPid: 1, PGid: 3, Sid: 1, Threads: 1, Comm: "worker", State: "stopped",
			Exe: "/usr/bin/app", Cwd: "/home", Root: "/",
			Memory: Memory{VMAs: 1, MappedBytes: 0x1000, DumpedPages: 1, DumpedBytes: 4096},
			Files:  []File{devNull},
		},
	}}
	if !reflect.DeepEqual(got, want) {
		for i := range max(len(got.Processes), len(want.Processes)) {
			var g, w Process
			if i < len(got.Processes) {
				g = got.Processes[i]
			}
			if i < len(want.Processes) {
				w = want.Processes[i]
			}
			if !reflect.DeepEqual(g, w) {
				t.Errorf("process %d:\n got %+v\nwant %+v", i, g, w)
				for j := range max(len(g.Files), len(w.Files)) {
					var gf, wf File
					if j < len(g.Files) {
						gf = g.Files[j]
					}
					if j < len(w.Files) {
						wf = w.Files[j]
					}
					if !reflect.DeepEqual(gf, wf) {
						t.Errorf("  file %d:\n   got %+v %+v\n  want %+v %+v", j, gf, gf.Socket, wf, wf.Socket)
					}
				}
			}
		}
	}
}

// Read keeps nothing between calls: a second directory shows its own
// files (crit's Explore helpers would show the first one's).
func TestReadIsStateless(t *testing.T) {
	for _, name := range []string{"/first/log", "/second/log"} {
		tr, err := Read(synthTree(t, name), Options{FileSize: synthFileSize})
		if err != nil {
			t.Fatal(err)
		}
		if got := tr.Processes[0].Files[2].Path; got != name {
			t.Errorf("fd 3 is %q, want %q", got, name)
		}
	}
}

func TestReadBadImages(t *testing.T) {
	ms := magic.LoadMagic().ByName
	header := func(name string) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(ms["IMG_COMMON"]))
		return binary.LittleEndian.AppendUint32(b, uint32(ms[name]))
	}
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, dir string)
		opts   Options
		want   string
	}{
		{"missing pstree", func(t *testing.T, dir string) { rm(t, dir, "pstree.img") }, Options{FileSize: synthFileSize}, "pstree.img: missing"},
		{"missing fdinfo", func(t *testing.T, dir string) { rm(t, dir, "fdinfo-8.img") }, Options{FileSize: synthFileSize}, "fdinfo-8.img: missing"},
		{"missing pages", func(t *testing.T, dir string) {}, Options{}, "pages-2.img"},
		{"wrong magic", func(t *testing.T, dir string) {
			write(t, dir, "core-1.img", header("MM"))
		}, Options{FileSize: synthFileSize}, "core-1.img: magic"},
		{"no magic", func(t *testing.T, dir string) { write(t, dir, "mm-1.img", []byte{1, 2}) }, Options{FileSize: synthFileSize}, "mm-1.img: no magic"},
		{"truncated size", func(t *testing.T, dir string) {
			write(t, dir, "pstree.img", append(header("PSTREE"), 1, 0))
		}, Options{FileSize: synthFileSize}, "pstree.img: truncated"},
		{"entry past the end", func(t *testing.T, dir string) {
			b := encode(t, "FS", &crfs.FsEntry{})
			write(t, dir, "fs-1.img", b[:len(b)-1])
		}, Options{FileSize: synthFileSize}, "fs-1.img: entry of"},
		{"undecodable entry", func(t *testing.T, dir string) {
			// A valid frame around a message without its required fields.
			b := binary.LittleEndian.AppendUint32(header("PSTREE"), 2)
			write(t, dir, "pstree.img", append(b, 0x08, 0x01)) // pid only
		}, Options{FileSize: synthFileSize}, "pstree.img: entry 0"},
		{"two cores", func(t *testing.T, dir string) {
			write(t, dir, "core-3.img", encode(t, "CORE", core(taskAlive, "a", nil), core(taskAlive, "b", nil)))
		}, Options{FileSize: synthFileSize}, "core-3.img: 2 entries"},
		{"empty pstree", func(t *testing.T, dir string) { write(t, dir, "pstree.img", header("PSTREE")) }, Options{}, "no processes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := synthTree(t, "/log")
			tc.break_(t, dir)
			_, err := Read(dir, tc.opts)
			if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %v mentioning %q", err, ErrBadImage, tc.want)
			}
		})
	}
}

func rm(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestNeeds(t *testing.T) {
	for name, want := range map[string]bool{
		"inventory.img": true, "pstree.img": true, "files.img": true,
		"core-1.img": true, "core-12345.img": true, "mm-8.img": true, "pagemap-8.img": true,
		"ids-8.img": true, "fdinfo-2.img": true, "fs-8.img": true,
		"pages-1.img": false, "pipes-data.img": false, "ipcns-shm-10.img": false, "fsnotify.img": false,
		"dump.log": false, "stats-dump": false, "core-1.log": false, "tty-info.img": false,
	} {
		if got := Needs(name); got != want {
			t.Errorf("Needs(%q) = %v, want %v", name, got, want)
		}
	}
	// Everything Read opens in the synthetic tree is needed.
	dir := synthTree(t, "/log")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !Needs(e.Name()) {
			rm(t, dir, e.Name())
		}
	}
	if _, err := Read(dir, Options{FileSize: func(name string) (int64, bool) {
		if strings.HasPrefix(name, "pages-") {
			return 4096, true
		}
		return 0, false
	}}); err != nil {
		t.Errorf("read with only the needed files: %v", err)
	}
}

// CRIU 4.2 counts a pagemap entry's pages in the 64-bit field 5 and leaves
// the old 32-bit field 2 zero; older CRIUs fill only field 2.
func TestNrPagesCRIU42(t *testing.T) {
	old := &pagemap.PagemapEntry{Vaddr: proto.Uint64(0x1000), NrPages: proto.Uint32(7), Flags: proto.Uint32(pagePresent)}
	if got := nrPages(old); got != 7 {
		t.Errorf("field 2 only: %d pages, want 7", got)
	}
	b, err := proto.Marshal(&pagemap.PagemapEntry{Vaddr: proto.Uint64(0x1000), NrPages: proto.Uint32(0), Flags: proto.Uint32(pagePresent)})
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendTag(b, 5, protowire.VarintType)
	b = protowire.AppendVarint(b, 1<<33)
	var pe pagemap.PagemapEntry
	if err := proto.Unmarshal(b, &pe); err != nil {
		t.Fatal(err)
	}
	if got := nrPages(&pe); got != 1<<33 {
		t.Errorf("field 5: %d pages, want %d", got, int64(1)<<33)
	}
}
