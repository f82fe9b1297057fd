package migrate

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
)

// Fuzz targets of the wire protocol. `make fuzz` runs each for longer;
// `make test` for a few seconds; plain `go test` runs their seeds (the f.Add
// calls, built with this package's own encoders, and testdata/fuzz/).

// streamConn is a net.Conn that reads a fixed input and records what is
// written. Deadlines are ignored: where the input ends a read returns
// io.EOF at once, so a reader that waits for more than the input holds
// fails instead of blocking.
type streamConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func newStreamConn(in []byte) *streamConn { return &streamConn{r: bytes.NewReader(in)} }

func (c *streamConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *streamConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *streamConn) Close() error                     { return nil }
func (c *streamConn) LocalAddr() net.Addr              { return fuzzAddr{} }
func (c *streamConn) RemoteAddr() net.Addr             { return fuzzAddr{} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }
func (c *streamConn) consumed(total int) int           { return total - c.r.Len() }
func (c *streamConn) written() []byte                  { return c.w.Bytes() }
func (fuzzAddr) Network() string                       { return "fuzz" }
func (fuzzAddr) String() string                        { return "fuzz" }

type fuzzAddr struct{}

// encodeFrame returns the bytes send writes for one frame.
func encodeFrame(tb testing.TB, t msgType, payload []byte) []byte {
	tb.Helper()
	c := newStreamConn(nil)
	if err := newFrameConn(c).send(t, payload); err != nil {
		tb.Fatalf("encode %s: %v", t, err)
	}
	return bytes.Clone(c.written())
}

func encodeJSONFrame(tb testing.TB, t msgType, v any) []byte {
	tb.Helper()
	c := newStreamConn(nil)
	if err := newFrameConn(c).sendJSON(t, v); err != nil {
		tb.Fatalf("encode %s: %v", t, err)
	}
	return bytes.Clone(c.written())
}

// FuzzFrame: a frame that send accepts is exactly type, big-endian length
// and payload, recv returns it unchanged and then a clean io.EOF; any
// truncation of it is an error, never a frame or a wait; a limit below its
// length is refused from the header alone, before the payload is read.
func FuzzFrame(f *testing.F) {
	f.Add(byte(msgPing), []byte(nil), uint32(0))
	f.Add(byte(msgCommit), []byte(nil), uint32(3))
	f.Add(byte(msgBegin), []byte(`{"size":42}`), uint32(7))
	f.Add(byte(msgRequest), []byte(`{"root":"/a","as":"/b"}`), uint32(1))
	f.Add(byte(msgData), bytes.Repeat([]byte{0xaa}, 3000), uint32(2000))
	f.Add(byte(msgPages), []byte{0, 1, 'p', 'a', 'g', 'e'}, uint32(6))
	f.Add(byte(0x99), []byte("unknown"), uint32(2))
	f.Fuzz(func(t *testing.T, typ byte, payload []byte, cut uint32) {
		mt := msgType(typ)
		lim, known := maxPayload(mt)
		c := newStreamConn(nil)
		err := newFrameConn(c).send(mt, payload)
		if !known || uint64(len(payload)) > uint64(lim) {
			if err == nil || len(c.written()) != 0 {
				t.Fatalf("send %s of %d bytes: err %v, wrote %d bytes; want a refusal and nothing written", mt, len(payload), err, len(c.written()))
			}
			return
		}
		if err != nil {
			t.Fatalf("send %s of %d bytes: %v", mt, len(payload), err)
		}
		frame := bytes.Clone(c.written())
		want := append([]byte{typ, 0, 0, 0, 0}, payload...)
		binary.BigEndian.PutUint32(want[1:], uint32(len(payload)))
		if !bytes.Equal(frame, want) {
			t.Fatalf("frame % x, want % x", frame, want)
		}

		// Round trip.
		rc := newStreamConn(frame)
		fc := newFrameConn(rc)
		gt, gp, err := fc.recv(maxData, time.Time{})
		if err != nil || gt != mt || !bytes.Equal(gp, payload) {
			t.Fatalf("recv: %s %d bytes %v, want %s %d bytes", gt, len(gp), err, mt, len(payload))
		}
		if _, _, err := fc.recv(maxData, time.Time{}); err != io.EOF {
			t.Fatalf("recv after the frame: %v, want io.EOF", err)
		}

		// Truncations: at the fuzzer's cut, in the header, and one byte
		// short.
		cuts := []int{int(cut % uint32(len(frame))), len(frame) - 1}
		for i := range headerLen {
			cuts = append(cuts, i)
		}
		for _, n := range cuts {
			rc := newStreamConn(frame[:n])
			gt, gp, err := newFrameConn(rc).recv(maxData, time.Time{})
			switch {
			case n == 0 && err != io.EOF:
				t.Fatalf("recv of nothing: %v, want io.EOF", err)
			case n > 0 && !errors.Is(err, io.ErrUnexpectedEOF):
				t.Fatalf("recv of %d of %d bytes: %s %d bytes, err %v; want io.ErrUnexpectedEOF", n, len(frame), gt, len(gp), err)
			}
		}

		// A limit below the length: refused after the header only.
		if len(payload) > 0 {
			small := uint32(cut) % uint32(len(payload))
			rc := newStreamConn(frame)
			_, gp, err := newFrameConn(rc).recv(small, time.Time{})
			if !errors.Is(err, errProtocol) || gp != nil {
				t.Fatalf("recv with limit %d of a %d-byte payload: %v", small, len(payload), err)
			}
			if n := rc.consumed(len(frame)); n != headerLen {
				t.Fatalf("recv over the limit read %d bytes, want only the %d of the header", n, headerLen)
			}
		}
	})
}

// FuzzRecvStream: recv on any byte stream returns frames whose types are
// known and whose lengths are within the limits, re-encoding them gives
// back exactly the bytes consumed, it never reads ahead of a frame, its
// buffer never grows beyond the largest frame allowed, and the stream ends
// with io.EOF only at a frame boundary.
func FuzzRecvStream(f *testing.F) {
	conv := bytes.Join([][]byte{
		encodeJSONFrame(f, msgRequest, Request{Root: "/a"}),
		encodeFrame(f, msgPing, nil),
		encodeJSONFrame(f, msgBegin, beginMsg{Size: 3}),
		encodeFrame(f, msgData, []byte("abc")),
		encodeJSONFrame(f, msgEnd, endMsg{Bytes: 3}),
		encodeFrame(f, msgCommit, nil),
	}, nil)
	f.Add(conv, uint32(maxControl))
	f.Add(conv, uint32(maxPreAuth))
	f.Add(conv[:len(conv)-3], uint32(maxData))
	f.Add(append(encodeFrame(f, msgPing, nil), byte(msgData), 0xff, 0xff, 0xff, 0xff), uint32(maxData))
	f.Add([]byte{0x7f, 0, 0, 0, 0}, uint32(maxData))
	f.Fuzz(func(t *testing.T, in []byte, limit uint32) {
		rc := newStreamConn(in)
		fc := newFrameConn(rc)
		var again []byte
		for {
			before := rc.consumed(len(in))
			mt, p, err := fc.recv(limit, time.Time{})
			after := rc.consumed(len(in))
			if err != nil {
				switch {
				case err == io.EOF:
					if before != len(in) {
						t.Fatalf("io.EOF at byte %d of %d", before, len(in))
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if after != len(in) {
						t.Fatalf("truncated at byte %d of %d", after, len(in))
					}
				case errors.Is(err, errProtocol):
					if after-before != headerLen {
						t.Fatalf("a refused frame consumed %d bytes, want its header only", after-before)
					}
					n := binary.BigEndian.Uint32(in[before+1:])
					lim, known := maxPayload(msgType(in[before]))
					if known && n <= min(lim, limit) {
						t.Fatalf("refused a valid header % x with limit %d: %v", in[before:after], limit, err)
					}
				default:
					t.Fatalf("recv: unexpected error %v", err)
				}
				if !bytes.Equal(again, in[:before]) {
					t.Fatal("the frames read do not re-encode to the bytes consumed")
				}
				return
			}
			lim, known := maxPayload(mt)
			if !known || uint64(len(p)) > uint64(min(lim, limit)) {
				t.Fatalf("recv returned %s of %d bytes with limit %d", mt, len(p), limit)
			}
			if after-before != headerLen+len(p) {
				t.Fatalf("recv of a %d-byte payload consumed %d bytes", len(p), after-before)
			}
			if c := cap(fc.rbuf); c > max(int(min(lim, limit)), 4<<10) {
				t.Fatalf("receive buffer of %d bytes for frames of at most %d", c, min(lim, limit))
			}
			again = append(again, encodeFrame(t, mt, p)...)
		}
	})
}

// controlMsg returns a new value of the payload type of each control
// frame that carries JSON.
func controlMsg(t msgType) any {
	switch t {
	case msgHello:
		return &helloMsg{}
	case msgChallenge:
		return &challengeMsg{}
	case msgAuth, msgAuthOK:
		return &macMsg{}
	case msgRequest:
		return &Request{}
	case msgAccept:
		return &acceptMsg{}
	case msgReject, msgAbort, msgError:
		return &reasonMsg{}
	case msgBegin:
		return &beginMsg{}
	case msgEnd:
		return &endMsg{}
	case msgReady, msgDone:
		return &RestoreInfo{}
	case msgComplete:
		return &completeMsg{}
	}
	return nil
}

// FuzzControlPayload: a control payload that decode accepts survives a
// marshal and decode round trip (its encoding is a fixed point); a request
// that validates names paths the tree's rules allow (nstree.ValidatePath),
// never the root as its target, and still validates after the round trip;
// sanitize makes any reason printable and bounded.
func FuzzControlPayload(f *testing.F) {
	add := func(t msgType, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(byte(t), b)
	}
	add(msgHello, helloMsg{Proto: ProtocolVersion, Mode: modeToken, Nonce: bytes.Repeat([]byte{1}, nonceLen)})
	add(msgChallenge, challengeMsg{Nonce: bytes.Repeat([]byte{2}, nonceLen)})
	add(msgAuth, macMsg{MAC: bytes.Repeat([]byte{3}, 32)})
	add(msgRequest, Request{Root: "/lab/job", As: "/other", Lazy: true, CRVersion: "v1.2.3"})
	add(msgRequest, Request{Root: "/../x"})
	add(msgRequest, Request{Root: "/a\u202eb"})
	add(msgAccept, acceptMsg{IdleMillis: 60000})
	add(msgReject, reasonMsg{Reason: "busy\x1b[8m\n", Code: codeExists})
	add(msgError, reasonMsg{Reason: "failed", InDoubt: true})
	add(msgBegin, beginMsg{Size: 1 << 40})
	add(msgEnd, endMsg{Bytes: 12345})
	add(msgReady, RestoreInfo{Paths: []string{"/a", "/a/b"}, Pids: map[string]int{"/a": 7}, Elapsed: time.Second})
	add(msgComplete, completeMsg{Elapsed: time.Millisecond})
	f.Add(byte(msgRequest), []byte(`{"root":"/a"}{"root":"/b"}`))
	f.Add(byte(msgRequest), []byte(`{"root":"/a","ROOT":"/b"}`))
	f.Fuzz(func(t *testing.T, typ byte, p []byte) {
		mt := msgType(typ)
		v := controlMsg(mt)
		if v == nil {
			return
		}
		if err := decode(mt, p, v); err != nil {
			if !errors.Is(err, errProtocol) {
				t.Fatalf("decode error %v is not a protocol violation", err)
			}
			return
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("marshal a decoded %s: %v", mt, err)
		}
		w := controlMsg(mt)
		if err := decode(mt, b, w); err != nil {
			t.Fatalf("decode the re-encoded %s %s: %v", mt, b, err)
		}
		// Compared as JSON: an empty byte string and a missing one are
		// the same to the protocol.
		if b2, err := json.Marshal(w); err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("%s round trip: %s became %s (%v)", mt, b, b2, err)
		}
		switch m := v.(type) {
		case *Request:
			if err := m.validate(); err == nil {
				for _, p := range []string{m.Root, m.Target()} {
					if !strings.HasPrefix(p, "/") || filepath.Clean(p) != p || len(p) > maxPathLen || nstree.ValidatePath(p) != nil {
						t.Fatalf("request %+v validates with path %q", m, p)
					}
				}
				if m.Target() == "/" {
					t.Fatalf("request %+v validates with the tree's root as its target", m)
				}
				if err := w.(*Request).validate(); err != nil {
					t.Fatalf("request %+v validates, its round trip does not: %v", m, err)
				}
			}
		case *reasonMsg:
			s := sanitize(m.Reason)
			if !utf8.ValidString(s) || len(s) > maxReasonLen+len("...") || strings.ContainsFunc(s, unicode.IsControl) {
				t.Fatalf("sanitize(%q) = %q", m.Reason, s)
			}
		}
	})
}

// senderConn plays the sender for FuzzServerConversation: it sends its
// input up to the end of the first END frame at once, and the rest only
// after the receiver wrote READY, as a sender waits for READY before it
// sends COMMIT (so that whether a COMMIT comes before or after READY does
// not depend on the goroutines' timing). While it waits, a read deadline in
// the past (the receiver's stopReads or kill) interrupts the read; where
// the input ends a read returns io.EOF.
type senderConn struct {
	in      []byte
	barrier int // offset of the bytes sent after READY; -1: none
	off     int

	mu        sync.Mutex
	out       bytes.Buffer
	ready     chan struct{} // closed once READY is written
	readySent bool
	stop      chan struct{} // closed while the read deadline is past
	stopped   bool
}

func newSenderConn(in []byte) *senderConn {
	c := &senderConn{in: in, barrier: -1, ready: make(chan struct{}), stop: make(chan struct{})}
	for off := 0; off+headerLen <= len(in); {
		n := int(binary.BigEndian.Uint32(in[off+1:]))
		if n > maxData || off+headerLen+n > len(in) {
			break
		}
		off += headerLen + n
		if msgType(in[off-headerLen-n]) == msgEnd {
			c.barrier = off
			break
		}
	}
	return c
}

func (c *senderConn) Read(p []byte) (int, error) {
	if c.off == c.barrier {
		c.mu.Lock()
		ready, stop := c.ready, c.stop
		c.mu.Unlock()
		select {
		case <-ready:
			c.barrier = -1
		case <-stop:
			return 0, os.ErrDeadlineExceeded
		}
	}
	end := len(c.in)
	if c.barrier >= 0 {
		end = c.barrier
	}
	if c.off == len(c.in) {
		return 0, io.EOF
	}
	n := copy(p, c.in[c.off:end])
	c.off += n
	return n, nil
}

func (c *senderConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(p) > 0 && msgType(p[0]) == msgReady && !c.readySent {
		c.readySent = true
		close(c.ready)
	}
	return c.out.Write(p)
}

func (c *senderConn) setReadDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	past := !t.IsZero() && t.Before(time.Now())
	switch {
	case past && !c.stopped:
		c.stopped = true
		close(c.stop)
	case !past && c.stopped:
		c.stopped = false
		c.stop = make(chan struct{})
	}
}

func (c *senderConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

func (c *senderConn) Close() error                       { return nil }
func (c *senderConn) LocalAddr() net.Addr                { return fuzzAddr{} }
func (c *senderConn) RemoteAddr() net.Addr               { return fuzzAddr{} }
func (c *senderConn) SetDeadline(t time.Time) error      { c.setReadDeadline(t); return nil }
func (c *senderConn) SetReadDeadline(t time.Time) error  { c.setReadDeadline(t); return nil }
func (c *senderConn) SetWriteDeadline(t time.Time) error { return nil }

// fuzzServer is a receiver for FuzzServerConversation: its conn.migrate
// runs on a streamConn, after an authentication it does not do.
type fuzzServer struct {
	s        *server
	staging  string
	restorer *fuzzRestorer
}

// fuzzRestorer checks what the receiver hands it and plays the commit
// handshake; in a lazy migration, it also plays a lazy-pages daemon per
// container, which reads its pages until the sender closes its channel.
type fuzzRestorer struct {
	calls  int
	err    error // what was wrong with the job
	ready  error // what Ready returned
	result error // what Restore returned
	lazy   bool  // the job was lazy
}

func (r *fuzzRestorer) Restore(ctx context.Context, job *Job) (info RestoreInfo, err error) {
	r.calls++
	r.err = checkJob(job)
	r.lazy = job.Lazy
	defer func() { r.result = err }()
	info = RestoreInfo{Paths: []string{job.As}, Pids: map[string]int{job.As: 42}}
	var daemons []*os.File
	if job.Lazy {
		for i := range job.Manifest.Containers {
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
			if err != nil {
				return RestoreInfo{}, err
			}
			theirs := os.NewFile(uintptr(fds[1]), "daemon")
			defer theirs.Close()
			job.Pages(i, os.NewFile(uintptr(fds[0]), "ours"))
			daemons = append(daemons, theirs)
		}
	}
	r.ready = job.Ready(info)
	if r.ready != nil {
		return RestoreInfo{}, r.ready
	}
	if !job.Lazy {
		return info, nil
	}
	job.Resumed(info)
	var wg sync.WaitGroup
	for _, d := range daemons {
		wg.Go(func() { io.Copy(io.Discard, d) })
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
		return info, nil
	case <-ctx.Done():
	}
	// The sender is gone. Its last frames may have closed every channel
	// just before: the daemons then read the end of their pages at once.
	select {
	case <-all:
		return info, nil
	case <-time.After(100 * time.Millisecond):
	}
	for _, d := range daemons {
		d.Close()
	}
	<-all
	return RestoreInfo{}, context.Cause(ctx)
}

// checkJob checks that a job holds a verified image: its directory holds
// exactly the files of its manifest, and its target is a valid path.
func checkJob(job *Job) error {
	if err := nstree.ValidatePath(job.As); err != nil || job.As == "/" {
		return fmt.Errorf("target %q: %v", job.As, err)
	}
	got, err := hashTree(job.Dir)
	if err != nil {
		return err
	}
	want := map[string]string{}
	for _, f := range job.Manifest.Files {
		if f.Dir {
			want[f.Name] = "dir"
		} else {
			want[f.Name] = f.SHA256
		}
	}
	if !reflect.DeepEqual(got, want) {
		return errors.New("the job's directory does not hold its manifest's files")
	}
	return nil
}

func newFuzzServer(f *testing.F) *fuzzServer {
	dir := f.TempDir()
	tok := filepath.Join(dir, "token")
	if err := WriteToken(tok); err != nil {
		f.Fatal(err)
	}
	srv := &fuzzServer{staging: filepath.Join(dir, "staging"), restorer: &fuzzRestorer{}}
	s, err := newServer(ServerConfig{
		Auth:       Auth{TokenFile: tok},
		StagingDir: srv.staging,
		Limits:     images.Limits{MaxBytes: 1 << 20, MaxFiles: 64},
		// No PING during a run: the conversation is the input alone.
		IdleTimeout:  time.Hour,
		ReadyTimeout: 10 * time.Second,
		Restorer:     srv.restorer,
		Lazy:         func() error { return nil },
		PreCopy:      func() error { return nil },
		Check: func(req Request) error {
			if req.Target() == "/exists" {
				return ErrTargetExists
			}
			return nil
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	srv.s = s
	return srv
}

// fuzzImage returns a valid archive of a small staging dir, written by
// images.WriteArchive, and the size to declare for it.
func fuzzImage(f *testing.F, compression string) ([]byte, int64) {
	dir := f.TempDir()
	ck := filepath.Join(dir, "checkpoint")
	if err := os.Mkdir(ck, 0o700); err != nil {
		f.Fatal(err)
	}
	var size int64
	for name, body := range map[string]string{"core-1.img": "core", "pages-1.img": strings.Repeat("page", 300)} {
		if err := os.WriteFile(filepath.Join(ck, name), []byte(body), 0o600); err != nil {
			f.Fatal(err)
		}
		size += int64(len(body))
	}
	var buf bytes.Buffer
	m := &images.Manifest{Root: "/src", Containers: []images.Container{{Path: "/", Dir: "checkpoint"}}}
	if _, err := images.WriteArchive(context.Background(), &buf, dir, m, images.WriteOptions{Compression: compression}); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes(), size
}

// conversation is what a sender sends after AUTH_OK, as frames.
func conversation(f *testing.F, req Request, image []byte, size int64, dataFrame int, tail ...[]byte) []byte {
	frames := [][]byte{
		encodeJSONFrame(f, msgRequest, req),
		encodeFrame(f, msgPing, nil),
		encodeJSONFrame(f, msgBegin, beginMsg{Size: size}),
	}
	for b := image; len(b) > 0; b = b[min(len(b), dataFrame):] {
		frames = append(frames, encodeFrame(f, msgData, b[:min(len(b), dataFrame)]))
	}
	frames = append(frames, encodeJSONFrame(f, msgEnd, endMsg{Bytes: int64(len(image))}))
	return bytes.Join(append(frames, tail...), nil)
}

// FuzzServerConversation runs the receiver's side of a migration, after
// authentication, on any sequence of bytes from the sender (what follows
// the first END only once READY was sent: see senderConn). It always
// ends; it leaves nothing in the staging directory and no target or slot
// reserved; it calls the restorer only with a verified image and a valid
// target; what it answers is a well-formed sequence of receiver frames,
// READY only when the restorer asked, DONE only after COMMIT, COMPLETE
// (lazy: the receiver accepts lazy requests, and the PAGES frames go to
// fake lazy-pages daemons) only after DONE and a restore that succeeded.
func FuzzServerConversation(f *testing.F) {
	srv := newFuzzServer(f)
	plain, size := fuzzImage(f, images.CompressionNone)
	packed, _ := fuzzImage(f, images.CompressionZstd)
	commit := encodeFrame(f, msgCommit, nil)
	f.Add(conversation(f, Request{Root: "/src"}, plain, size, 4096, commit))
	f.Add(conversation(f, Request{Root: "/src", As: "/dst"}, packed, size, 300, encodeFrame(f, msgPing, nil), commit))
	f.Add(conversation(f, Request{Root: "/src"}, plain, size, 1000, encodeJSONFrame(f, msgAbort, reasonMsg{Reason: "changed my mind"})))
	f.Add(conversation(f, Request{Root: "/src"}, plain, size, 1000))
	f.Add(conversation(f, Request{Root: "/src", As: "/exists"}, plain, size, 1000, commit))
	f.Add(conversation(f, Request{Root: "/src", Lazy: true}, plain, size, 1000, commit,
		encodeFrame(f, msgPages, []byte{0, 0, 'p', 'a', 'g', 'e', 's'}), encodeFrame(f, msgPages, []byte{0, 0})))
	f.Add(conversation(f, Request{Root: "/src", Lazy: true}, plain, size, 1000, commit,
		encodeFrame(f, msgPages, []byte{0, 9, 'x'})))
	f.Add(conversation(f, Request{Root: "/src"}, plain, size-1, 1000, commit))
	f.Add(conversation(f, Request{Root: "/src"}, plain[:len(plain)/2], size, 1000, commit))
	f.Add(conversation(f, Request{Root: "/../x"}, plain, size, 1000, commit))
	// A pre-copy of an upper before BEGIN; one that lies about its size.
	layer := fuzzLayer(f)
	for _, declared := range []int64{4096, 1} {
		c := conversation(f, Request{Root: "/src", PreCopy: true}, plain, size, 1000, commit)
		req := encodeJSONFrame(f, msgRequest, Request{Root: "/src", PreCopy: true})
		pre := bytes.Join([][]byte{req, encodeJSONFrame(f, msgFS, Layer{Kind: LayerUpper, Path: "/", Size: declared}),
			encodeFrame(f, msgData, layer), encodeJSONFrame(f, msgFSEnd, endMsg{Bytes: int64(len(layer))})}, nil)
		f.Add(append(pre, c[len(req):]...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := srv.restorer
		*r = fuzzRestorer{}
		sc := newSenderConn(in)
		c := &conn{s: srv.s, fc: newFrameConn(sc), remote: "fuzz", release: func() {}}
		done := make(chan string, 1)
		go func() { done <- c.migrate(context.Background()) }()
		var line string
		select {
		case line = <-done:
		case <-time.After(20 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("the receiver did not end on a finite input:\n%s", buf[:runtime.Stack(buf, true)])
		}

		if ents, err := os.ReadDir(srv.staging); err != nil || len(ents) != 0 {
			t.Fatalf("staging directory after %q: %v %v", line, ents, err)
		}
		srv.s.mu.Lock()
		reserved := len(srv.s.targets)
		srv.s.mu.Unlock()
		if reserved != 0 || len(srv.s.slots) != 0 {
			t.Fatalf("after %q: %d targets and %d slots still reserved", line, reserved, len(srv.s.slots))
		}
		if r.calls > 1 {
			t.Fatalf("restorer called %d times", r.calls)
		}
		if r.err != nil {
			t.Fatalf("restorer given a bad job: %v", r.err)
		}

		// The answer: receiver frames only, each well formed.
		out := sc.written()
		oc := newFrameConn(newStreamConn(out))
		var types []msgType
		for {
			mt, p, err := oc.recv(maxControl, time.Time{})
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("the receiver's answer is not a sequence of frames: %v", err)
			}
			types = append(types, mt)
			switch mt {
			case msgAccept, msgReject, msgError, msgReady, msgDone, msgComplete:
				if err := decode(mt, p, controlMsg(mt)); err != nil {
					t.Fatalf("the receiver sent %s %q: %v", mt, p, err)
				}
			case msgPing:
				if len(p) != 0 {
					t.Fatalf("the receiver sent PING with a payload")
				}
			case msgPages:
				if len(p) < pagesHeader {
					t.Fatalf("the receiver sent PAGES %q", p)
				}
			default:
				t.Fatalf("the receiver sent %s", mt)
			}
		}
		// The answer's order, PING and PAGES aside.
		var order []msgType
		for _, mt := range types {
			if mt != msgPing && mt != msgPages {
				order = append(order, mt)
			}
		}
		doneAt := slices.Index(order, msgDone)
		for i, mt := range order {
			last := i == len(order)-1
			switch {
			case (mt == msgReject || mt == msgError || mt == msgComplete) && !last:
				t.Fatalf("the receiver sent %v: %s is not last", order, mt)
			case mt == msgDone && !last && !(i == len(order)-2 && (order[i+1] == msgComplete || order[i+1] == msgError)):
				t.Fatalf("the receiver sent %v: DONE followed by more than COMPLETE or ERROR", order)
			case mt == msgReady && r.calls == 0:
				t.Fatalf("READY without a restore: %v", order)
			case mt == msgDone && (r.calls == 0 || r.ready != nil):
				t.Fatalf("DONE without a commit: %v (ready: %v)", order, r.ready)
			case mt == msgComplete && (doneAt < 0 || r.result != nil || !r.lazy):
				t.Fatalf("COMPLETE without DONE or with a failed restore: %v (restore: %v)", order, r.result)
			}
		}
		if r.calls == 1 && r.result == nil {
			want := msgDone
			if r.lazy {
				want = msgComplete
			}
			if len(order) == 0 || order[len(order)-1] != want {
				t.Fatalf("restored, but the receiver answered %v (%s)", order, line)
			}
		}
	})
}

// FuzzAuthenticate runs the receiver's token-mode authentication, over a
// real TLS 1.3 connection, on any bytes from a client that completed TLS
// but does not know the token. It always fails and ends; the receiver
// sends nothing but a CHALLENGE and, at the end, ERROR, never AUTH_OK.
func FuzzAuthenticate(f *testing.F) {
	srv := newFuzzServer(f)
	nonce := bytes.Repeat([]byte{7}, nonceLen)
	hello := encodeJSONFrame(f, msgHello, helloMsg{Proto: ProtocolVersion, Mode: modeToken, Nonce: nonce})
	f.Add(bytes.Join([][]byte{hello, encodeJSONFrame(f, msgAuth, macMsg{MAC: make([]byte, 32)})}, nil))
	f.Add(bytes.Join([][]byte{hello, encodeJSONFrame(f, msgAuth, macMsg{})}, nil))
	f.Add(bytes.Join([][]byte{hello, encodeFrame(f, msgAuth, nil)}, nil))
	f.Add(encodeJSONFrame(f, msgHello, helloMsg{Proto: ProtocolVersion, Mode: modeMTLS}))
	f.Add(encodeJSONFrame(f, msgHello, helloMsg{Proto: ProtocolVersion + 1, Mode: modeToken, Nonce: nonce}))
	f.Add(encodeJSONFrame(f, msgRequest, Request{Root: "/a"}))
	f.Add([]byte{byte(msgHello), 0, 0, 4, 1})
	clientTLS := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		tc := tls.Server(a, srv.s.tls)
		c := &conn{s: srv.s, tc: tc, fc: newFrameConn(tc), remote: "fuzz", release: func() {}}
		result := make(chan error, 1)
		go func() {
			if err := tc.Handshake(); err != nil {
				result <- fmt.Errorf("server handshake: %w", err)
				return
			}
			result <- c.authenticate(time.Now().Add(20 * time.Second))
		}()
		cl := tls.Client(b, clientTLS)
		if err := cl.Handshake(); err != nil {
			t.Fatalf("client handshake: %v", err)
		}
		answer := make(chan []byte, 1)
		go func() {
			out, _ := io.ReadAll(cl)
			answer <- out
		}()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			if _, err := cl.Write(in); err == nil {
				cl.CloseWrite()
			}
		}()
		var err error
		select {
		case err = <-result:
		case <-time.After(30 * time.Second):
			t.Fatal("authentication did not end on a finite input")
		}
		a.Close()
		<-wrote
		out := <-answer
		if err == nil {
			t.Fatalf("authenticated a client that does not know the token, on %q", in)
		}
		oc := newFrameConn(newStreamConn(out))
		for i := 0; ; i++ {
			mt, p, rerr := oc.recv(maxPreAuth, time.Time{})
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				t.Fatalf("the receiver's answer is not a sequence of frames: %v", rerr)
			}
			switch mt {
			case msgChallenge:
				var m challengeMsg
				if i != 0 || decode(mt, p, &m) != nil || len(m.Nonce) != nonceLen {
					t.Fatalf("the receiver sent CHALLENGE %q as frame %d", p, i)
				}
			case msgError:
				var m reasonMsg
				if decode(mt, p, &m) != nil || m.Reason != ErrAuth.Error() && !strings.HasPrefix(m.Reason, "unsupported protocol version") {
					t.Fatalf("the receiver sent ERROR %q", p)
				}
			default:
				t.Fatalf("the receiver sent %s before authentication", mt)
			}
		}
	})
}

// fuzzLayer is a small upper layer archive.
func fuzzLayer(f *testing.F) []byte {
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file"), []byte("upper"), 0o644); err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := rootfs.WriteLayer(&buf, dir); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes()
}
