package criubin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
)

// PageProc is a CRIU process of a lazy migration that talks to its peer
// over a socket of which cr holds the other end: `criu dump --lazy-pages`
// (which serves the pages it kept back) or `criu lazy-pages --page-server`
// (which fetches them for a lazy restore). CRIU's page-server protocol is
// not authenticated, so it never touches the network: cr carries the bytes
// of Conn over its own authenticated connection.
type PageProc struct {
	// Conn is cr's end of CRIU's page-server socket.
	Conn *os.File
	// Log is the path of CRIU's log.
	Log string

	op     string
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan struct{}
	err    error
	once   sync.Once
}

// StartPageProc runs criu with args (which must name the log file given
// as log) plus "--ps-socket" and "--status-fd", in a process group of its
// own, and returns once CRIU reports it ready: the dump's images are
// written and its page server waits on the socket; or the lazy-pages daemon
// listens for the restore. If CRIU exits first, the error carries the
// reason from its log. op names the operation in errors ("dump",
// "lazy-pages").
func StartPageProc(criu, op string, args []string, log string) (*PageProc, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("criu %s: %w", op, err)
	}
	// Non-blocking, so that closing Conn ends a Read in progress.
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return nil, fmt.Errorf("criu %s: %w", op, err)
	}
	ours := os.NewFile(uintptr(fds[0]), "page-server")
	theirs := os.NewFile(uintptr(fds[1]), "criu-page-server")
	defer theirs.Close()
	sr, sw, err := os.Pipe()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("criu %s: %w", op, err)
	}
	defer sr.Close()
	p := &PageProc{Conn: ours, Log: log, op: op, done: make(chan struct{})}
	// ExtraFiles start at fd 3.
	p.cmd = exec.Command(criu, append(args, "--ps-socket", "3", "--status-fd", "4")...)
	p.cmd.ExtraFiles = []*os.File{theirs, sw}
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		sw.Close()
		ours.Close()
		return nil, fmt.Errorf("start criu %s: %w", op, err)
	}
	sw.Close()
	go func() {
		werr := p.cmd.Wait()
		if werr != nil {
			p.err = p.failure(werr)
		}
		close(p.done)
	}()
	var b [1]byte
	if n, _ := io.ReadFull(sr, b[:]); n == 1 {
		return p, nil
	}
	// CRIU closed the status pipe without a word: it exited.
	<-p.done
	ours.Close()
	if p.err == nil {
		p.err = fmt.Errorf("criu %s: %w", op, ErrNotReady)
	}
	return nil, p.err
}

func (p *PageProc) failure(werr error) error {
	if _, err := os.Stat(p.Log); err == nil {
		e := NewCRIUError(p.op, p.Log, werr)
		if e.Reason != "" {
			return e
		}
	}
	if s := strings.TrimSpace(p.stderr.String()); s != "" {
		werr = fmt.Errorf("%w: %s", werr, s)
	}
	return &CRIUError{Op: p.op, LogPath: p.Log, Err: werr}
}

// Wait waits for CRIU to exit and returns its failure, if any.
func (p *PageProc) Wait() error {
	<-p.done
	return p.err
}

// Close closes cr's end of the socket (CRIU sees the end of the
// conversation) and waits for CRIU to exit.
func (p *PageProc) Close() error {
	p.once.Do(func() { p.Conn.Close() })
	return p.Wait()
}

// Kill kills CRIU and waits for it. Only for a lazy-pages daemon whose
// restored tree is gone: a dump killed half-way would leave its tasks
// seized.
func (p *PageProc) Kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	p.once.Do(func() { p.Conn.Close() })
	<-p.done
}

// ErrNotReady: CRIU exited before it was ready, without an error.
var ErrNotReady = errors.New("criu exited before it was ready")
