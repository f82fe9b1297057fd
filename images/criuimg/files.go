package criuimg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	sk_inet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-inet"
	sk_unix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	"google.golang.org/protobuf/encoding/protowire"
)

// fileTable is files.img: every file object of the tree by id, and the unix
// sockets by inode, to name a socket's peer.
type fileTable struct {
	byID    map[uint32]*fdinfo.FileEntry
	unixIno map[uint32]*sk_unix.UnixSkEntry
}

func readFiles(dir string) (*fileTable, error) {
	t := &fileTable{byID: map[uint32]*fdinfo.FileEntry{}, unixIno: map[uint32]*sk_unix.UnixSkEntry{}}
	es, err := entries(dir, "files.img", "FILES", func() *fdinfo.FileEntry { return &fdinfo.FileEntry{} })
	if errors.Is(err, errMissing) {
		// A tree without any file object (no cwd even) cannot be dumped,
		// but an empty table only leaves names out.
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		t.byID[e.GetId()] = e
		if u := e.GetUsk(); u != nil {
			t.unixIno[u.GetIno()] = u
		}
	}
	return t, nil
}

// regName is the path of the regular file object id, or "".
func (t *fileTable) regName(id uint32) string {
	if e := t.byID[id]; e != nil && e.GetReg() != nil {
		return e.GetReg().GetName()
	}
	return ""
}

// describe turns a file descriptor into a File.
func (t *fileTable) describe(fd *fdinfo.FdinfoEntry) File {
	f := File{Fd: int(fd.GetFd()), Kind: "unknown"}
	e := t.byID[fd.GetId()]
	switch fd.GetType() {
	case fdinfo.FdTypes_REG:
		f.Kind = "file"
		if r := e.GetReg(); r != nil {
			f.Path = r.GetName()
			f.Offset = r.GetPos()
			f.Size = r.GetSize()
			f.Access = access(r.GetFlags())
			switch r.GetMode() & syscall.S_IFMT {
			case syscall.S_IFDIR:
				f.Kind = "dir"
			case syscall.S_IFCHR, syscall.S_IFBLK:
				f.Kind = "device"
			}
		}
	case fdinfo.FdTypes_PIPE:
		f.Kind = "pipe"
		if p := e.GetPipe(); p != nil {
			f.Path = fmt.Sprintf("pipe:[%d]", p.GetPipeId())
		}
	case fdinfo.FdTypes_FIFO:
		f.Kind = "fifo"
		if p := e.GetFifo(); p != nil {
			f.Path = t.regName(p.GetRegfId())
		}
	case fdinfo.FdTypes_TTY:
		f.Kind = "tty"
		if p := e.GetTty(); p != nil {
			f.Path = t.regName(p.GetRegfId())
		}
	case fdinfo.FdTypes_UNIXSK:
		f.Kind = "socket"
		if u := e.GetUsk(); u != nil {
			f.Socket = t.unixSocket(u)
			f.Path = f.Socket.Local
		}
	case fdinfo.FdTypes_INETSK:
		f.Kind = "socket"
		if s := e.GetIsk(); s != nil {
			f.Socket = inetSocket(s)
		}
	case fdinfo.FdTypes_NETLINKSK:
		f.Kind = "socket"
		f.Socket = &Socket{Family: "netlink"}
		if s := e.GetNlsk(); s != nil {
			f.Socket.Protocol = strconv.Itoa(int(s.GetProtocol()))
			f.Socket.Inode = s.GetIno()
		}
	case fdinfo.FdTypes_PACKETSK:
		f.Kind = "socket"
		f.Socket = &Socket{Family: "packet"}
		if s := e.GetPsk(); s != nil {
			f.Socket.Type = sockType(s.GetType())
		}
	case fdinfo.FdTypes_MEMFD:
		f.Kind = "memfd"
	case fdPidfd:
		f.Kind = "pidfd"
		if pid, ok := pidfdTarget(e); ok {
			f.Path = fmt.Sprintf("pid:%d", pid)
		}
	default:
		if k, ok := kinds[fd.GetType()]; ok {
			f.Kind = k
		}
	}
	return f
}

// fdPidfd is CRIU 4's descriptor type of a pidfd, newer than go-criu v7's
// fdinfo.proto (Go's os/exec holds pidfds of its children).
const fdPidfd fdinfo.FdTypes = 20

// pidfdTarget returns the pid (in the tree's pid namespace) that a pidfd
// refers to: field nspid (4) of file_entry's pidfd (22), which go-criu v7
// decodes as an unknown field.
func pidfdTarget(e *fdinfo.FileEntry) (int32, bool) {
	if e == nil {
		return 0, false
	}
	entry, ok := field(e.ProtoReflect().GetUnknown(), 22, protowire.BytesType)
	if !ok {
		return 0, false
	}
	nspid, ok := field(entry, 4, protowire.VarintType)
	if !ok {
		return 0, false
	}
	v, n := protowire.ConsumeVarint(nspid)
	return int32(v), n > 0
}

// field returns the value bytes of the last field num of type typ in the
// protobuf message b.
func field(b []byte, num protowire.Number, typ protowire.Type) ([]byte, bool) {
	var val []byte
	found := false
	for len(b) > 0 {
		n, t, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil, false
		}
		b = b[l:]
		m := protowire.ConsumeFieldValue(n, t, b)
		if m < 0 {
			return nil, false
		}
		if n == num && t == typ {
			val, found = b[:m], true
			if typ == protowire.BytesType {
				v, k := protowire.ConsumeBytes(b[:m])
				if k < 0 {
					return nil, false
				}
				val = v
			}
		}
		b = b[m:]
	}
	return val, found
}

// kinds names the descriptor types that carry no path.
var kinds = map[fdinfo.FdTypes]string{
	fdinfo.FdTypes_EVENTFD:   "eventfd",
	fdinfo.FdTypes_EVENTPOLL: "eventpoll",
	fdinfo.FdTypes_INOTIFY:   "inotify",
	fdinfo.FdTypes_SIGNALFD:  "signalfd",
	fdinfo.FdTypes_FANOTIFY:  "fanotify",
	fdinfo.FdTypes_NS:        "ns",
	fdinfo.FdTypes_TUNF:      "tun",
	fdinfo.FdTypes_EXT:       "external",
	fdinfo.FdTypes_TIMERFD:   "timerfd",
	fdinfo.FdTypes_BPFMAP:    "bpf-map",
}

func access(flags uint32) string {
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		return "r"
	case syscall.O_WRONLY:
		return "w"
	case syscall.O_RDWR:
		return "rw"
	}
	return ""
}

func (t *fileTable) unixSocket(u *sk_unix.UnixSkEntry) *Socket {
	s := &Socket{
		Family: "unix",
		Type:   sockType(u.GetType()),
		State:  sockState(u.GetState()),
		Local:  unixName(u.GetName()),
		Inode:  u.GetIno(),
	}
	if peer := u.GetPeer(); peer != 0 {
		s.Peer = fmt.Sprintf("socket:[%d]", peer)
		if p := t.unixIno[peer]; p != nil && len(p.GetName()) > 0 {
			s.Peer = unixName(p.GetName())
		}
	}
	return s
}

// unixName shows a socket's name: a path ends at its first NUL (the
// address length a process bound with may count the terminating NUL, and
// CRIU keeps it); an abstract name (a leading NUL) is shown as "@name", as
// ss does.
func unixName(b []byte) string {
	if len(b) > 0 && b[0] == 0 {
		return "@" + string(b[1:])
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func inetSocket(i *sk_inet.InetSkEntry) *Socket {
	s := &Socket{
		Family:   "inet",
		Type:     sockType(i.GetType()),
		Protocol: protoName(i.GetProto()),
		State:    sockState(i.GetState()),
		Inode:    i.GetIno(),
	}
	if i.GetFamily() == syscall.AF_INET6 {
		s.Family = "inet6"
	}
	s.Local = hostPort(i.GetSrcAddr(), i.GetSrcPort())
	if i.GetDstPort() != 0 || !isZero(i.GetDstAddr()) {
		s.Peer = hostPort(i.GetDstAddr(), i.GetDstPort())
	}
	return s
}

// ip converts CRIU's address words back to an address: the words hold the
// address bytes in network order, read as little-endian uint32s.
func ip(words []uint32) net.IP {
	b := make([]byte, 4*len(words))
	for i, w := range words {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	switch len(b) {
	case net.IPv4len, net.IPv6len:
		return net.IP(b)
	}
	return nil
}

func hostPort(words []uint32, port uint32) string {
	host := "*"
	if a := ip(words); a != nil && !a.IsUnspecified() {
		host = a.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

func isZero(words []uint32) bool {
	for _, w := range words {
		if w != 0 {
			return false
		}
	}
	return true
}

func sockType(t uint32) string {
	switch t {
	case syscall.SOCK_STREAM:
		return "stream"
	case syscall.SOCK_DGRAM:
		return "dgram"
	case syscall.SOCK_SEQPACKET:
		return "seqpacket"
	case syscall.SOCK_RAW:
		return "raw"
	case syscall.SOCK_RDM:
		return "rdm"
	case syscall.SOCK_PACKET:
		return "packet"
	}
	return strconv.Itoa(int(t))
}

func protoName(p uint32) string {
	switch p {
	case syscall.IPPROTO_TCP:
		return "tcp"
	case syscall.IPPROTO_UDP:
		return "udp"
	case syscall.IPPROTO_UDPLITE:
		return "udplite"
	case syscall.IPPROTO_ICMP:
		return "icmp"
	case syscall.IPPROTO_ICMPV6:
		return "icmpv6"
	case syscall.IPPROTO_RAW:
		return "raw"
	}
	return strconv.Itoa(int(p))
}

// tcpStates are the kernel's socket states (include/net/tcp_states.h),
// which unix sockets share.
var tcpStates = []string{
	1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait-1", 5: "fin-wait-2",
	6: "time-wait", 7: "close", 8: "close-wait", 9: "last-ack", 10: "listen",
	11: "closing", 12: "new-syn-recv",
}

func sockState(s uint32) string {
	if int(s) < len(tcpStates) && tcpStates[s] != "" {
		return tcpStates[s]
	}
	return strconv.Itoa(int(s))
}
