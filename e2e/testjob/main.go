// Command testjob is the workload of cr's end-to-end tests. It keeps state
// that checkpoint and restore must preserve: a counter in memory and in a
// file it holds open, child processes, SysV IPC objects, and memory with a
// known checksum. On SIGUSR1 it writes a report of that state, as it sees it
// now, to the --report file (written to a temporary name and renamed, never
// held open).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/e2e/jobreport"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		signal.Ignore(unix.SIGUSR1)
		for {
			time.Sleep(time.Hour)
		}
	}
	report := flag.String("report", "", "file to write reports to")
	memMiB := flag.Int("mem", 0, "MiB of memory to fill and checksum")
	children := flag.Int("children", 0, "child processes to start")
	ipc := flag.Bool("ipc", false, "create SysV shm, semaphores and a message queue")
	counterFile := flag.String("counter-file", "", "file to keep the counter in (held open)")
	connect := flag.String("connect", "", "hold a TCP connection to this address (CRIU cannot dump it without --tcp-established)")
	tick := flag.Duration("tick", 10*time.Millisecond, "counter period")
	sockets := flag.Bool("sockets", false, "hold a TCP listener and a UDP socket on loopback, and use them at every report")
	daemonize := flag.Bool("daemonize", false, "fork the job as a daemon in a session of its own, wait for its first report, and exit 0 (as redis-server --daemonize yes)")
	flag.Parse()
	if *daemonize {
		daemonizeSelf(*report)
	}

	r := &jobreport.Report{}
	var counter atomic.Int64
	// Children inherit SIGUSR1 ignored across exec, so a report request
	// sent to every process of the container never kills one that has not
	// yet set up its own handling.
	signal.Ignore(unix.SIGUSR1)
	for i := 0; i < *children; i++ {
		c := exec.Command("/proc/self/exe", "child")
		if err := c.Start(); err != nil {
			die(err)
		}
		r.Children = append(r.Children, c.Process.Pid)
	}
	var mem []byte
	if *memMiB > 0 {
		mem = fill(*memMiB << 20)
		r.MemBytes = len(mem)
		r.MemSHAAtInit = sum(mem)
	}
	if *ipc {
		makeIPC(r)
	}
	if *connect != "" {
		c, err := net.Dial("tcp", *connect)
		if err != nil {
			die(err)
		}
		defer c.Close()
	}
	var sk *inetSockets
	if *sockets {
		var err error
		if sk, err = openInetSockets(); err != nil {
			die(err)
		}
		r.TCPPort = sk.tcp.Addr().(*net.TCPAddr).Port
	}
	var cf *os.File
	if *counterFile != "" {
		var err error
		if cf, err = os.OpenFile(*counterFile, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
			die(err)
		}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGUSR1)
	// A first report once everything is set up: it tells the harness the
	// job is ready (SIGUSR1 before this point would kill it).
	writeReport := func() {
		r.Reports++
		r.Pid, r.PPid = os.Getpid(), os.Getppid()
		r.Counter = counter.Load()
		if cf != nil {
			b := make([]byte, 20)
			if _, err := cf.ReadAt(b, 0); err == nil {
				r.CounterFile, _ = strconv.ParseInt(string(b), 10, 64)
			}
		}
		if mem != nil {
			r.MemSHA = sum(mem)
		}
		if *ipc {
			readIPC(r)
		}
		r.Hostname, _ = os.Hostname()
		if sk != nil {
			r.Sockets = "ok"
			if err := sk.use(); err != nil {
				r.Sockets = err.Error()
			}
		}
		r.Time = time.Now().Format(time.RFC3339Nano)
		if *report != "" {
			b, _ := json.Marshal(r)
			tmp := *report + ".tmp"
			if err := os.WriteFile(tmp, b, 0o644); err == nil {
				_ = os.Rename(tmp, *report)
			}
		}
	}
	writeReport()
	tk := time.NewTicker(*tick)
	for {
		select {
		case <-tk.C:
			v := counter.Add(1)
			if cf != nil {
				// Fixed width at offset 0: the file never changes size,
				// so CRIU can restore it while the source runs on.
				if _, err := cf.WriteAt([]byte(fmt.Sprintf("%020d\n", v)), 0); err != nil {
					die(err)
				}
			}
		case <-sigs:
			writeReport()
		}
	}
}

// daemonizeSelf starts the job again without --daemonize as a daemon (its
// own session, stdio on /dev/null, not waited for) and exits 0 once the
// daemon has written its first report: the first process ends, the daemon
// is an orphan of the container's init.
func daemonizeSelf(report string) {
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--daemonize" && a != "-daemonize" {
			args = append(args, a)
		}
	}
	if report != "" {
		_ = os.Remove(report)
	}
	c := exec.Command("/proc/self/exe", args...)
	c.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		die(err)
	}
	fmt.Printf("daemon %d started\n", c.Process.Pid)
	for report != "" {
		if _, err := os.Stat(report); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.Exit(0)
}

func die(err error) {
	fmt.Fprintln(os.Stderr, "testjob:", err)
	os.Exit(1)
}

// fill makes memory of realistic content: a quarter zeros, half text-like,
// a quarter random, from a fixed seed.
func fill(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n/4; i += 4096 {
		b[i] = 0 // dirty the zero quarter too: it is resident, as in a real heap
	}
	rng := rand.New(rand.NewSource(42))
	words := []string{"checkpoint ", "restore ", "container ", "pid ", "namespace ", "freezer ", "memory "}
	for i := n / 4; i < 3*n/4; {
		i += copy(b[i:3*n/4], words[rng.Intn(len(words))])
	}
	for i := 3 * n / 4; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

const (
	ipcCreat  = 0o1000
	ipcNowait = 0o4000
	msgCopy   = 0o40000
	semSetAll = 17
	semGetAll = 13
)

func makeIPC(r *jobreport.Report) {
	id, err := unix.SysvShmGet(unix.IPC_PRIVATE, 4096, ipcCreat|0o600)
	if err != nil {
		die(fmt.Errorf("shmget: %w", err))
	}
	seg, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		die(fmt.Errorf("shmat: %w", err))
	}
	copy(seg, "shared memory survives checkpoint")
	r.ShmID = id
	semID, _, e := unix.Syscall(unix.SYS_SEMGET, unix.IPC_PRIVATE, 3, ipcCreat|0o600)
	if e != 0 {
		die(fmt.Errorf("semget: %w", e))
	}
	vals := []uint16{3, 5, 7}
	if _, _, e := unix.Syscall6(unix.SYS_SEMCTL, semID, 0, semSetAll, uintptr(unsafe.Pointer(&vals[0])), 0, 0); e != 0 {
		die(fmt.Errorf("semctl: %w", e))
	}
	r.SemID = int(semID)
	msgID, _, e := unix.Syscall(unix.SYS_MSGGET, unix.IPC_PRIVATE, ipcCreat|0o600, 0)
	if e != 0 {
		die(fmt.Errorf("msgget: %w", e))
	}
	r.MsgID = int(msgID)
	for i, m := range []string{"first message", "second message", "third message"} {
		buf := make([]byte, 8+len(m))
		binary.LittleEndian.PutUint64(buf, uint64(i+1))
		copy(buf[8:], m)
		if _, _, e := unix.Syscall6(unix.SYS_MSGSND, msgID, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(m)), 0, 0, 0); e != 0 {
			die(fmt.Errorf("msgsnd: %w", e))
		}
	}
	readIPC(r)
}

// readIPC reads the objects back by id, without consuming any message.
func readIPC(r *jobreport.Report) {
	seg, err := unix.SysvShmAttach(r.ShmID, 0, unix.SHM_RDONLY)
	if err == nil {
		n := 0
		for n < len(seg) && seg[n] != 0 {
			n++
		}
		r.ShmData = string(seg[:n])
		_ = unix.SysvShmDetach(seg)
	} else {
		r.ShmData = "error: " + err.Error()
	}
	vals := make([]uint16, 3)
	if _, _, e := unix.Syscall6(unix.SYS_SEMCTL, uintptr(r.SemID), 0, semGetAll, uintptr(unsafe.Pointer(&vals[0])), 0, 0); e == 0 {
		r.SemValues = []int{int(vals[0]), int(vals[1]), int(vals[2])}
	} else {
		r.SemValues = nil
	}
	r.Msgs = nil
	for i := 0; ; i++ {
		buf := make([]byte, 8+256)
		n, _, e := unix.Syscall6(unix.SYS_MSGRCV, uintptr(r.MsgID), uintptr(unsafe.Pointer(&buf[0])), 256, uintptr(i), ipcNowait|msgCopy, 0)
		if e != 0 {
			break
		}
		r.Msgs = append(r.Msgs, string(buf[8:8+n]))
	}
}

// inetSockets are a TCP listener and a bound UDP socket on loopback.
type inetSockets struct {
	tcp net.Listener
	udp *net.UDPConn
}

func openInetSockets() (*inetSockets, error) {
	// Plain TCP: Go listens with MPTCP by default, which CRIU cannot dump.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	return &inetSockets{tcp: l, udp: u}, nil
}

// use connects to the listener and exchanges a line over the accepted
// connection, and sends a datagram to the UDP socket's own address.
func (s *inetSockets) use() error {
	deadline := time.Now().Add(2 * time.Second)
	c, err := net.DialTimeout("tcp4", s.tcp.Addr().String(), time.Until(deadline))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	_ = s.tcp.(*net.TCPListener).SetDeadline(deadline)
	a, err := s.tcp.Accept()
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer a.Close()
	_ = a.SetDeadline(deadline)
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return fmt.Errorf("tcp write: %w", err)
	}
	buf := make([]byte, 16)
	if n, err := io.ReadFull(a, buf[:5]); err != nil || string(buf[:n]) != "ping\n" {
		return fmt.Errorf("tcp read: %q, %v", buf[:n], err)
	}
	if _, err := s.udp.WriteTo([]byte("dgram"), s.udp.LocalAddr()); err != nil {
		return fmt.Errorf("udp send: %w", err)
	}
	_ = s.udp.SetReadDeadline(deadline)
	n, _, err := s.udp.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "dgram" {
		return fmt.Errorf("udp receive: %q, %v", buf[:n], err)
	}
	return nil
}
