package criuimg

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cr-dev/cr/criubin"
)

// holderEnv makes the test binary hold descriptors for TestReadRealDump
// instead of running tests.
const holderEnv = "CRIUIMG_TEST_HOLDER"

func init() {
	if os.Getenv(holderEnv) == "" {
		return
	}
	if err := holdFiles(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		os.Exit(1)
	}
	for {
		time.Sleep(time.Hour)
	}
}

// holdFiles opens, in dir, a file it has written 5 bytes to, a listening
// unix socket with a client connected to it, and outside it an abstract
// datagram socket, a socketpair and a pipe; then it creates dir/ready.
func holdFiles(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("hello"); err != nil {
		return err
	}
	l, err := net.Listen("unix", filepath.Join(dir, "l.sock"))
	if err != nil {
		return err
	}
	if _, err := net.Dial("unix", filepath.Join(dir, "l.sock")); err != nil {
		return err
	}
	if _, err := l.Accept(); err != nil {
		return err
	}
	abstract := &net.UnixAddr{Net: "unixgram", Name: "@criuimg-test-" + strconv.Itoa(os.Getpid())}
	if _, err := net.ListenUnixgram("unixgram", abstract); err != nil {
		return err
	}
	if _, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0); err != nil {
		return err
	}
	if _, _, err := os.Pipe(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600)
}

// TestReadRealDump reads what CRIU wrote for a process holding known
// descriptors.
func TestReadRealDump(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("CRIU dumps as root only")
	}
	criu, err := criubin.Find("")
	if err != nil {
		t.Skipf("no CRIU: %v", err)
	}
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, dir)
	cmd.Env = append(os.Environ(), holderEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the holder did not get ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	images := filepath.Join(dir, "images")
	if err := os.Mkdir(images, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(criu, "dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", images,
		"-o", "dump.log", "-v4", "--leave-running").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(images, "dump.log"))
		if len(log) > 4000 {
			log = log[len(log)-4000:]
		}
		t.Fatalf("criu dump: %v\n%s\ndump.log ends:\n%s", err, out, log)
	}

	tr, err := Read(images, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Processes) != 1 {
		t.Fatalf("%d processes, want the holder alone: %+v", len(tr.Processes), tr.Processes)
	}
	p := tr.Processes[0]
	wd, _ := os.Getwd()
	comm := filepath.Base(exe)
	if len(comm) > 15 {
		comm = comm[:15]
	}
	if p.Pid != cmd.Process.Pid || p.PPid != 0 || p.State != "alive" || p.Exe != exe || p.Comm != comm || p.Cwd != wd || p.Root != "/" || p.Threads < 1 {
		t.Errorf("holder = pid %d ppid %d %s exe %q comm %q cwd %q root %q threads %d; want pid %d, ppid 0, alive, %q, %q, cwd %q, root /",
			p.Pid, p.PPid, p.State, p.Exe, p.Comm, p.Cwd, p.Root, p.Threads, cmd.Process.Pid, exe, comm, wd)
	}
	m := p.Memory
	if m.VMAs == 0 || m.MappedBytes <= 0 || m.DumpedPages <= 0 || m.DumpedBytes != m.DumpedPages*int64(os.Getpagesize()) ||
		m.DumpedBytes > m.MappedBytes || m.LazyPages != 0 || m.ParentPages != 0 {
		t.Errorf("memory %+v: want mappings and %d-byte dumped pages, none lazy or in a parent", m, os.Getpagesize())
	}

	sock := filepath.Join(dir, "l.sock")
	byIno := map[uint32]File{}
	var listen, server, client, abstract []File
	pipes := map[string]int{}
	for _, f := range p.Files {
		s := f.Socket
		switch {
		case f.Kind == "pipe":
			pipes[f.Path]++
		case f.Kind == "file" && f.Path == filepath.Join(dir, "data"):
			if f.Access != "rw" || f.Offset != 5 || f.Size != 5 {
				t.Errorf("data file: %+v, want rw at offset 5 of 5 bytes", f)
			}
		case s == nil:
		case s.Family != "unix" || f.Kind != "socket":
			t.Errorf("fd %d: %+v %+v, want only unix sockets", f.Fd, f, s)
		case s.Local == sock && s.State == "listen":
			listen = append(listen, f)
		case s.Local == sock:
			server = append(server, f)
		case s.Peer == sock:
			client = append(client, f)
		case s.Local == "@criuimg-test-"+strconv.Itoa(p.Pid):
			abstract = append(abstract, f)
		}
		if s != nil {
			byIno[s.Inode] = f
		}
	}
	if len(listen) != 1 || listen[0].Socket.Type != "stream" || listen[0].Path != sock {
		t.Errorf("listening sockets %+v, want one stream socket on %s", listen, sock)
	}
	if len(server) != 1 || len(client) != 1 || server[0].Socket.State != "established" ||
		server[0].Socket.Peer != fmt.Sprintf("socket:[%d]", client[0].Socket.Inode) {
		t.Errorf("accepted %+v and client %+v, want a connection between them", server, client)
	}
	if len(abstract) != 1 || abstract[0].Socket.Type != "dgram" {
		t.Errorf("abstract sockets %+v, want one datagram socket", abstract)
	}
	pairs := 0
	for ino, f := range byIno {
		if f.Socket.Local != "" {
			continue
		}
		var peer uint32
		if _, err := fmt.Sscanf(f.Socket.Peer, "socket:[%d]", &peer); err == nil && byIno[peer].Socket != nil && byIno[peer].Socket.Peer == fmt.Sprintf("socket:[%d]", ino) {
			pairs++
		}
	}
	if pairs != 2 {
		t.Errorf("%d ends of an unnamed socketpair naming each other, want 2: %+v", pairs, p.Files)
	}
	both := 0
	for _, n := range pipes {
		if n == 2 {
			both++
		}
	}
	if both != 1 {
		t.Errorf("pipes %v, want both ends of the holder's pipe (and other pipes once)", pipes)
	}
}
