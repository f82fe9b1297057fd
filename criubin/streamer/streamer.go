// Package streamer speaks CRIU's image-streamer protocol (criu --stream),
// both ways, so that CRIU's images never need to be files:
//
//   - capture (criu dump --stream): CRIU connects to streamer-capture.sock
//     in its images directory and, for every image file it writes, sends
//     a request naming the file, then passes the read end of a pipe by
//     SCM_RIGHTS and writes the file's content into the other end;
//   - serve (criu restore --stream): CRIU connects to streamer-serve.sock
//     and, for every image file it wants, sends a request naming it; the
//     streamer answers whether the file exists and, if it does, receives
//     the write end of a pipe and writes the content into it.
//
// Each message is a little-endian (host order) u32 length followed by a
// protobuf (CRIU's images/img-streamer.proto): img_streamer_request_entry
// {required string filename = 1} from CRIU, img_streamer_reply_entry
// {required bool exists = 1} back. A pipe comes with a 1-byte payload.
//
// CRIU opens several files at once (dump: a process's pagemap and pages
// together; restore: in its own order, unlike the dump's), so every pipe
// is served on its own goroutine. The protocol has no end-of-file marker
// of its own: a pipe that ends is a file that ends, whether CRIU finished
// it or died. A capture is therefore complete only when CRIU also exited
// successfully; the caller checks that.
package streamer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
)

// Socket names in the images directory, as CRIU's img-streamer.c has them.
const (
	CaptureSocket = "streamer-capture.sock"
	ServeSocket   = "streamer-serve.sock"
)

// maxRequest bounds a request message: a file name of CRIU's (at most
// PATH_MAX) and its protobuf framing.
const maxRequest = 4096 + 16

// ErrBadRequest: CRIU sent something that is not a request this package
// understands, or a file name that is not a plain name.
var ErrBadRequest = errors.New("bad image-streamer request")

// ErrCutShort: the conversation ended in the middle of a request.
var ErrCutShort = errors.New("image-streamer conversation cut short")

// Listener waits for CRIU on one of the two sockets.
type Listener struct {
	ln   *net.UnixListener
	path string
	once sync.Once // removes the socket
}

// ListenCapture listens on dir/streamer-capture.sock, for a dump.
func ListenCapture(dir string) (*Listener, error) { return listen(dir, CaptureSocket) }

// ListenServe listens on dir/streamer-serve.sock, for a restore.
func ListenServe(dir string) (*Listener, error) { return listen(dir, ServeSocket) }

func listen(dir, name string) (*Listener, error) {
	ln, err := ListenIn(dir, name)
	if err != nil {
		return nil, fmt.Errorf("listen for criu: %w", err)
	}
	return &Listener{ln: ln, path: filepath.Join(dir, name)}, nil
}

// ListenIn listens on the unix socket dir/name, bound through the
// directory's fd: a socket's path is limited to 107 bytes, and staging
// directories can be deeper. A client connects to it by a relative name
// from dir (CRIU: -D "." with dir its working directory). The socket file
// stays until the caller removes it.
func ListenIn(dir, name string) (*net.UnixListener, error) {
	d, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_PATH, 0)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), name), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", filepath.Join(dir, name), err)
	}
	ln.SetUnlinkOnClose(false) // its name was the fd's
	return ln, nil
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket. It is safe to call more
// than once, and ends an Accept in progress.
func (l *Listener) Close() error {
	err := l.ln.Close()
	l.once.Do(func() { os.Remove(l.path) })
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// accept waits for CRIU's one connection, or for ctx to end.
func (l *Listener) accept(ctx context.Context) (*net.UnixConn, error) {
	stop := context.AfterFunc(ctx, func() { l.ln.Close() })
	defer stop()
	c, err := l.ln.AcceptUnix()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("wait for criu: %w", err)
	}
	// One conversation per listener: nobody else may connect later.
	l.ln.Close()
	return c, nil
}

// Open is what a capture does with one file CRIU writes: it returns where
// the content goes. Close is called once the content has ended (CRIU
// closed its end of the pipe), with the content complete only if CRIU
// then exits successfully. An error from Open, Write or Close ends the
// capture: every pipe is closed, so CRIU fails its dump.
type Open func(name string) (io.WriteCloser, error)

// Capture runs the conversation of one dump: it accepts CRIU's
// connection, then for each file CRIU names calls open and copies the
// pipe into what it returned, every pipe on its own goroutine. It returns
// once CRIU has closed the connection and every pipe has ended, with the
// first error. When ctx ends, or anything fails, it closes the connection
// and every pipe at once: CRIU's next write fails (EPIPE) and CRIU fails
// its dump on its own, resuming the tasks it seized; cr never has to kill
// it.
func (l *Listener) Capture(ctx context.Context, open Open) error {
	return l.converse(ctx, func(s *session, name string) error {
		pipe, err := s.recvFd(name)
		if err != nil {
			return err
		}
		w, err := open(name)
		if err != nil {
			pipe.Close()
			return fmt.Errorf("%s: %w", name, err)
		}
		s.goPipe(pipe, func() {
			var err error
			if pw, ok := w.(PipeWriter); ok {
				_, err = pw.ReadFromPipe(pipe)
			} else {
				_, err = io.CopyBuffer(w, onlyReader{pipe}, make([]byte, copyBuf))
			}
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				s.fail(fmt.Errorf("%s: %w", name, err))
			}
		})
		return nil
	})
}

// PipeWriter is an Open's writer that takes the pipe itself (to splice
// it, say) instead of its content through Write. ReadFromPipe returns
// when the pipe ends, or fails once the pipe is closed under it.
type PipeWriter interface {
	io.WriteCloser
	ReadFromPipe(pipe *os.File) (int64, error)
}

// Lookup is what a serve does with one file CRIU asks for: ok false says
// it does not exist (CRIU asks for files a dump never wrote, and handles
// their absence). Otherwise write is called, on a goroutine of its own, to
// write the content into the pipe. A write that fails because CRIU closed
// its end early (it read what it wanted) is not an error of the serve; any
// other error ends it.
type Lookup func(name string) (write func(io.Writer) error, ok bool)

// Serve runs the conversation of one restore: it accepts CRIU's
// connection and answers each request with lookup, serving every pipe on
// its own goroutine, until CRIU closes the connection (it has every file
// it wants) and every pipe is written. When ctx ends, or anything fails,
// it closes the connection and every pipe: CRIU's next read fails and its
// restore with it.
func (l *Listener) Serve(ctx context.Context, lookup Lookup) error {
	return l.converse(ctx, func(s *session, name string) error {
		write, ok := lookup(name)
		if err := s.reply(ok); err != nil {
			return err
		}
		if !ok {
			return nil
		}
		pipe, err := s.recvFd(name)
		if err != nil {
			return err
		}
		s.goPipe(pipe, func() {
			err := write(pipe)
			if err != nil && !errors.Is(err, syscall.EPIPE) {
				s.fail(fmt.Errorf("%s: %w", name, err))
			}
		})
		return nil
	})
}

// converse is the conversation Capture and Serve share: it accepts CRIU's
// connection, then hands each request's file name to handle until CRIU
// closes the connection between two requests. A bad request or an error
// from handle fails the session (the connection and every pipe are
// closed); either way it returns once every pipe has ended, with the
// first error.
func (l *Listener) converse(ctx context.Context, handle func(s *session, name string) error) error {
	defer l.Close()
	conn, err := l.accept(ctx)
	if err != nil {
		return err
	}
	s := newSession(ctx, conn)
	for {
		name, err := s.readRequest()
		if err == io.EOF {
			break // CRIU dismissed the streamer: no more files
		}
		if err == nil {
			err = handle(s, name)
		}
		if err != nil {
			s.fail(err)
			break
		}
	}
	return s.wait()
}

// session is one conversation: the connection, the pipes in flight and
// the first error.
type session struct {
	conn *net.UnixConn
	wg   sync.WaitGroup
	stop func() bool

	mu     sync.Mutex
	err    error
	pipes  map[*os.File]bool
	closed bool
}

func newSession(ctx context.Context, conn *net.UnixConn) *session {
	s := &session{conn: conn, pipes: map[*os.File]bool{}}
	s.stop = context.AfterFunc(ctx, func() { s.fail(ctx.Err()) })
	return s
}

// fail records the first error and tears everything down.
func (s *session) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
	if s.closed {
		return
	}
	s.closed = true
	s.conn.Close()
	for p := range s.pipes {
		p.Close()
	}
}

func (s *session) track(p *os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		p.Close()
		return
	}
	s.pipes[p] = true
}

// goPipe runs run on a goroutine of its own with p tracked, so that a
// failure closes p under it; p is closed once run returns.
func (s *session) goPipe(p *os.File, run func()) {
	s.track(p)
	s.wg.Go(func() {
		defer s.untrack(p)
		run()
	})
}

func (s *session) untrack(p *os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pipes, p)
	p.Close()
}

func (s *session) wait() error {
	s.wg.Wait()
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn.Close()
	s.closed = true
	return s.err
}

// readRequest reads one request: io.EOF when CRIU closed the connection
// between two requests.
func (s *session) readRequest() (string, error) {
	var hdr [4]byte
	if n, err := io.ReadFull(s.conn, hdr[:]); err != nil {
		if err == io.EOF && n == 0 {
			return "", io.EOF
		}
		return "", s.readErr(err)
	}
	size := binary.NativeEndian.Uint32(hdr[:])
	if size == 0 || size > maxRequest {
		return "", fmt.Errorf("%w: message of %d bytes", ErrBadRequest, size)
	}
	msg := make([]byte, size)
	if _, err := io.ReadFull(s.conn, msg); err != nil {
		return "", s.readErr(err)
	}
	name, err := parseRequest(msg)
	if err != nil {
		return "", err
	}
	return name, nil
}

func (s *session) readErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return ErrCutShort
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err // we closed it
	}
	return fmt.Errorf("read from criu: %w", err)
}

// parseRequest decodes img_streamer_request_entry and checks the name:
// a plain file name, as CRIU's images are, never a path.
func parseRequest(b []byte) (string, error) {
	var name string
	seen := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", fmt.Errorf("%w: %v", ErrBadRequest, protowire.ParseError(n))
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", fmt.Errorf("%w: %v", ErrBadRequest, protowire.ParseError(n))
			}
			name, seen = string(v), true
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", fmt.Errorf("%w: %v", ErrBadRequest, protowire.ParseError(n))
		}
		b = b[n:]
	}
	if !seen {
		return "", fmt.Errorf("%w: no file name", ErrBadRequest)
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return "", fmt.Errorf("%w: file name %q", ErrBadRequest, name)
	}
	return name, nil
}

// reply answers a restore's request: img_streamer_reply_entry{exists}.
func (s *session) reply(exists bool) error {
	var v uint64
	if exists {
		v = 1
	}
	msg := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), v)
	b := binary.NativeEndian.AppendUint32(nil, uint32(len(msg)))
	if _, err := s.conn.Write(append(b, msg...)); err != nil {
		return fmt.Errorf("answer criu: %w", err)
	}
	return nil
}

// recvFd receives the pipe CRIU passes for the file it just named.
func (s *session) recvFd(name string) (*os.File, error) {
	var b [1]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := s.conn.ReadMsgUnix(b[:], oob)
	if err != nil {
		return nil, s.readErr(err)
	}
	if n == 0 {
		return nil, ErrCutShort
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadRequest, name, err)
	}
	var fds []int
	for _, m := range msgs {
		f, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, f...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("%w: %s: %d descriptors passed, want one pipe", ErrBadRequest, name, len(fds))
	}
	unix.CloseOnExec(fds[0])
	// Non-blocking, so that closing the pipe ends a Read or Write in
	// progress (the poller owns it). The flag belongs to this end only:
	// CRIU's end of the pipe is another open file.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fds[0])
		return nil, fmt.Errorf("%w: %s: the descriptor passed is not a pipe", ErrBadRequest, name)
	}
	// A larger pipe means fewer round trips between CRIU and cr; it is
	// only an optimization (an unprivileged cr gets pipe-max-size).
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	return os.NewFile(uintptr(fds[0]), name), nil
}

// Sizes of a pipe's buffer and of the copies out of it.
const (
	pipeSize = 1 << 20
	copyBuf  = 1 << 20
)

// onlyReader hides the pipe's WriterTo, so that io.CopyBuffer copies
// through its buffer in large pieces.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }
