package streamer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
)

// fakeCRIU is the CRIU side of the protocol, as criu/img-streamer.c has it.
type fakeCRIU struct {
	t    *testing.T
	conn *net.UnixConn
	mu   sync.Mutex // CRIU's img_streamer_fd_lock
}

func dial(t *testing.T, path string) *fakeCRIU {
	t.Helper()
	var c *net.UnixConn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"}); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	return &fakeCRIU{t: t, conn: c}
}

func request(name string) []byte {
	msg := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), name)
	return append(binary.NativeEndian.AppendUint32(nil, uint32(len(msg))), msg...)
}

// sendPipe makes a pipe, passes the end given by theirs (0 read, 1 write)
// and returns the other.
func (f *fakeCRIU) sendPipe(theirs int) *os.File {
	f.t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		f.t.Fatal(err)
	}
	pass, keep := r, w
	if theirs == 1 {
		pass, keep = w, r
	}
	if _, _, err := f.conn.WriteMsgUnix([]byte{0}, unix.UnixRights(int(pass.Fd())), nil); err != nil {
		f.t.Fatalf("send fd: %v", err)
	}
	pass.Close()
	return keep
}

// create names a file for a dump and returns the pipe to write it into.
func (f *fakeCRIU) create(name string) *os.File {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.conn.Write(request(name)); err != nil {
		f.t.Fatalf("request %s: %v", name, err)
	}
	return f.sendPipe(0)
}

// open asks for a file for a restore: nil when it does not exist.
func (f *fakeCRIU) open(name string) *os.File {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.conn.Write(request(name)); err != nil {
		f.t.Fatalf("request %s: %v", name, err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(f.conn, hdr[:]); err != nil {
		f.t.Fatalf("reply %s: %v", name, err)
	}
	msg := make([]byte, binary.NativeEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(f.conn, msg); err != nil {
		f.t.Fatalf("reply %s: %v", name, err)
	}
	if !bytes.Equal(msg, []byte{0x08, 0x01}) {
		if !bytes.Equal(msg, []byte{0x08, 0x00}) {
			f.t.Fatalf("reply %s: % x", name, msg)
		}
		return nil
	}
	return f.sendPipe(1)
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// memFiles collects a capture in memory.
type memFiles struct {
	mu    sync.Mutex
	files map[string]*bytes.Buffer
	order []string
}

type memFile struct {
	m    *memFiles
	name string
	buf  bytes.Buffer
}

func (f *memFile) Write(p []byte) (int, error) { return f.buf.Write(p) }
func (f *memFile) Close() error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	f.m.files[f.name] = &f.buf
	return nil
}

func (m *memFiles) open(name string) (io.WriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.order = append(m.order, name)
	return &memFile{m: m, name: name}, nil
}

func startCapture(t *testing.T, ctx context.Context, open Open) (*Listener, chan error) {
	t.Helper()
	l, err := ListenCapture(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Capture(ctx, open) }()
	return l, done
}

func wait(t *testing.T, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the streamer did not return")
		return nil
	}
}

// Several files open at once, written in interleaved chunks larger than a
// pipe's buffer and finished out of order: each arrives whole, and the
// socket is gone afterwards.
func TestCaptureSeveralFilesAtOnce(t *testing.T) {
	m := &memFiles{files: map[string]*bytes.Buffer{}}
	l, done := startCapture(t, context.Background(), m.open)
	c := dial(t, l.Path())
	names := []string{"pagemap-1.img", "pages-1.img", "core-1.img"}
	want := map[string][]byte{}
	pipes := map[string]*os.File{}
	for i, n := range names {
		want[n] = random(t, (i+1)*300<<10)
		pipes[n] = c.create(n)
	}
	// Interleaved writes: a streamer that drained one pipe at a time would
	// deadlock here, each write being larger than a pipe holds.
	for off := 0; ; off += 100 << 10 {
		more := false
		for _, n := range names {
			if off < len(want[n]) {
				more = true
				if _, err := pipes[n].Write(want[n][off:min(off+100<<10, len(want[n]))]); err != nil {
					t.Fatalf("write %s: %v", n, err)
				}
			}
		}
		if !more {
			break
		}
	}
	for _, n := range []string{"core-1.img", "pagemap-1.img", "pages-1.img"} {
		pipes[n].Close()
	}
	c.conn.Close()
	if err := wait(t, done); err != nil {
		t.Fatalf("Capture: %v", err)
	}
	for _, n := range names {
		if got := m.files[n]; got == nil || !bytes.Equal(got.Bytes(), want[n]) {
			t.Errorf("%s: not captured intact", n)
		}
	}
	if _, err := os.Stat(l.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

// A file CRIU ends early is only as long as what CRIU wrote: the capture
// cannot tell, which is why a capture counts only once CRIU exited well.
func TestCapturePipeClosedEarly(t *testing.T) {
	m := &memFiles{files: map[string]*bytes.Buffer{}}
	l, done := startCapture(t, context.Background(), m.open)
	c := dial(t, l.Path())
	p := c.create("pages-1.img")
	p.Write([]byte("half"))
	p.Close()
	q := c.create("inventory.img")
	q.Write([]byte("inv"))
	q.Close()
	c.conn.Close()
	if err := wait(t, done); err != nil {
		t.Fatalf("Capture: %v", err)
	}
	if got := m.files["pages-1.img"].String(); got != "half" {
		t.Errorf("pages-1.img = %q, want %q", got, "half")
	}
	if got := fmt.Sprint(m.order); got != "[pages-1.img inventory.img]" {
		t.Errorf("order %s", got)
	}
}

// The conversation ends inside a request, or between a request and its
// pipe: an error, never a silently shorter image.
func TestCaptureCutShort(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c *fakeCRIU)
	}{
		{"inside the length", func(c *fakeCRIU) { c.conn.Write([]byte{5, 0}) }},
		{"inside the message", func(c *fakeCRIU) { c.conn.Write(request("pages-1.img")[:7]) }},
		{"before the pipe", func(c *fakeCRIU) { c.conn.Write(request("pages-1.img")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &memFiles{files: map[string]*bytes.Buffer{}}
			l, done := startCapture(t, context.Background(), m.open)
			c := dial(t, l.Path())
			tc.send(c)
			c.conn.Close()
			if err := wait(t, done); !errors.Is(err, ErrCutShort) {
				t.Fatalf("Capture = %v, want %v", err, ErrCutShort)
			}
		})
	}
}

// Names that are not plain file names are refused, and so is a request
// without a pipe (a descriptor that is not one).
func TestCaptureBadRequest(t *testing.T) {
	for _, name := range []string{"../etc/passwd", "a/b", "", ".."} {
		m := &memFiles{files: map[string]*bytes.Buffer{}}
		l, done := startCapture(t, context.Background(), m.open)
		c := dial(t, l.Path())
		c.conn.Write(request(name))
		if err := wait(t, done); !errors.Is(err, ErrBadRequest) {
			t.Errorf("name %q: Capture = %v, want %v", name, err, ErrBadRequest)
		}
		c.conn.Close()
		if len(m.order) != 0 {
			t.Errorf("name %q opened", name)
		}
	}
	m := &memFiles{files: map[string]*bytes.Buffer{}}
	l, done := startCapture(t, context.Background(), m.open)
	c := dial(t, l.Path())
	c.conn.Write(request("x.img"))
	f, _ := os.Open(os.DevNull)
	c.conn.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil)
	f.Close()
	if err := wait(t, done); !errors.Is(err, ErrBadRequest) {
		t.Errorf("/dev/null for a pipe: Capture = %v, want %v", err, ErrBadRequest)
	}
	c.conn.Close()
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
func (failWriter) Close() error              { return nil }

// A sink that fails, or a cancelled capture, closes every pipe: CRIU's
// writes fail with EPIPE (so it fails its dump itself) and Capture says
// why.
func TestCaptureFailureBreaksEveryPipe(t *testing.T) {
	for _, tc := range []string{"sink fails", "cancelled"} {
		t.Run(tc, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			open := func(name string) (io.WriteCloser, error) {
				if name == "pages-1.img" && tc == "sink fails" {
					return failWriter{}, nil
				}
				m := &memFiles{files: map[string]*bytes.Buffer{}}
				return m.open(name)
			}
			l, done := startCapture(t, ctx, open)
			c := dial(t, l.Path())
			other := c.create("pagemap-1.img")
			pages := c.create("pages-1.img")
			if tc == "cancelled" {
				cancel()
			} else {
				pages.Write([]byte("some pages"))
			}
			err := wait(t, done)
			if tc == "cancelled" && !errors.Is(err, context.Canceled) || tc == "sink fails" && (err == nil || !bytes.Contains([]byte(err.Error()), []byte("pages-1.img: disk full"))) {
				t.Errorf("Capture = %v", err)
			}
			if _, err := other.Write(make([]byte, 1<<20)); !errors.Is(err, syscall.EPIPE) {
				t.Errorf("CRIU's write after the failure = %v, want EPIPE", err)
			}
			other.Close()
			pages.Close()
			c.conn.Close()
		})
	}
}

// A capture cancelled before CRIU ever connects returns at once.
func TestCaptureCancelledBeforeConnect(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	l, done := startCapture(t, ctx, (&memFiles{files: map[string]*bytes.Buffer{}}).open)
	cancel()
	if err := wait(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Capture = %v", err)
	}
	if _, err := os.Stat(l.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func startServe(t *testing.T, ctx context.Context, files map[string][]byte) (*Listener, chan error, *[]string) {
	t.Helper()
	l, err := ListenServe(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var asked []string
	lookup := func(name string) (func(io.Writer) error, bool) {
		mu.Lock()
		asked = append(asked, name)
		mu.Unlock()
		b, ok := files[name]
		return func(w io.Writer) error {
			_, err := w.Write(b)
			return err
		}, ok
	}
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx, lookup) }()
	return l, done, &asked
}

// Files opened together and read in another order than asked, one of
// them asked for twice, one that does not exist.
func TestServeOutOfOrderAndTwice(t *testing.T) {
	files := map[string][]byte{
		"inventory.img": random(t, 100),
		"pages-1.img":   random(t, 1<<20),
		"pagemap-1.img": random(t, 300<<10),
	}
	l, done, asked := startServe(t, context.Background(), files)
	c := dial(t, l.Path())
	if p := c.open("inventory.img"); p == nil {
		t.Fatal("inventory.img: not found")
	} else if b, _ := io.ReadAll(p); !bytes.Equal(b, files["inventory.img"]) {
		t.Error("inventory.img: wrong content")
	} else {
		p.Close()
	}
	if p := c.open("remap-fpath.img"); p != nil {
		t.Error("remap-fpath.img: exists")
	}
	pm := c.open("pagemap-1.img")
	pg := c.open("pages-1.img")
	// The one asked last is read first, both larger than a pipe holds.
	if b, _ := io.ReadAll(pg); !bytes.Equal(b, files["pages-1.img"]) {
		t.Error("pages-1.img: wrong content")
	}
	if b, _ := io.ReadAll(pm); !bytes.Equal(b, files["pagemap-1.img"]) {
		t.Error("pagemap-1.img: wrong content")
	}
	again := c.open("pagemap-1.img")
	if b, _ := io.ReadAll(again); !bytes.Equal(b, files["pagemap-1.img"]) {
		t.Error("pagemap-1.img asked twice: wrong content the second time")
	}
	pm.Close()
	pg.Close()
	again.Close()
	c.conn.Close()
	if err := wait(t, done); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if got := fmt.Sprint(*asked); got != "[inventory.img remap-fpath.img pagemap-1.img pages-1.img pagemap-1.img]" {
		t.Errorf("asked %s", got)
	}
}

// CRIU may close a pipe before reading all of it: the serve goes on.
func TestServePipeClosedEarly(t *testing.T) {
	files := map[string][]byte{"pages-1.img": random(t, 4<<20), "core-1.img": []byte("core")}
	l, done, _ := startServe(t, context.Background(), files)
	c := dial(t, l.Path())
	p := c.open("pages-1.img")
	b := make([]byte, 10)
	io.ReadFull(p, b)
	p.Close()
	q := c.open("core-1.img")
	if b, _ := io.ReadAll(q); string(b) != "core" {
		t.Errorf("core-1.img = %q after a pipe closed early", b)
	}
	q.Close()
	c.conn.Close()
	if err := wait(t, done); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// A conversation cut short inside a request is an error; a cancelled
// serve closes the pipe CRIU reads, so CRIU sees its file end early.
func TestServeCutShortAndCancelled(t *testing.T) {
	l, done, _ := startServe(t, context.Background(), nil)
	c := dial(t, l.Path())
	c.conn.Write(request("inventory.img")[:5])
	c.conn.Close()
	if err := wait(t, done); !errors.Is(err, ErrCutShort) {
		t.Errorf("Serve = %v, want %v", err, ErrCutShort)
	}

	ctx, cancel := context.WithCancel(context.Background())
	files := map[string][]byte{"pages-1.img": random(t, 4<<20)}
	l, done, _ = startServe(t, ctx, files)
	c = dial(t, l.Path())
	p := c.open("pages-1.img")
	io.ReadFull(p, make([]byte, 1000))
	cancel()
	if err := wait(t, done); !errors.Is(err, context.Canceled) {
		t.Errorf("Serve = %v, want %v", err, context.Canceled)
	}
	if n, _ := io.Copy(io.Discard, p); n >= 4<<20-1000 {
		t.Errorf("CRIU read the whole file after the cancel")
	}
	p.Close()
	c.conn.Close()
	if _, err := os.Stat(filepath.Join(filepath.Dir(l.Path()), ServeSocket)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}
