package migrate

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
)

// TestMain fails the run if goroutines started by the tests outlive them.
func TestMain(m *testing.M) {
	before := testGoroutines()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for testGoroutines() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := testGoroutines(); n > before {
			buf := make([]byte, 1<<20)
			fmt.Fprintf(os.Stderr, "leaked goroutines: %d > %d\n%s\n", n, before, buf[:runtime.Stack(buf, true)])
			code = 1
		}
	}
	os.Exit(code)
}

// testGoroutines counts the goroutines that may be the tests': all but the
// signal handler that go test -fuzz starts (os/signal's loop).
func testGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if !strings.Contains(g, "os/signal.signal_recv") {
			n++
		}
	}
	return n
}

// tokenAuth writes a new token file and returns the Auth that uses it.
func tokenAuth(t *testing.T) Auth {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := WriteToken(p); err != nil {
		t.Fatal(err)
	}
	return Auth{TokenFile: p}
}

// pki is a CA with a server and a client certificate.
type pki struct {
	dir            string
	server, client Auth
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if err := GenerateCA(ca); err != nil {
		t.Fatal(err)
	}
	if err := GenerateCert(ca, "server", dir, true, []string{"127.0.0.1", "localhost"}); err != nil {
		t.Fatal(err)
	}
	if err := GenerateCert(ca, "client", dir, false, nil); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(ca, CACertFile)
	return pki{
		dir:    dir,
		server: Auth{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"), CAFile: caFile},
		client: Auth{CertFile: filepath.Join(dir, "client.crt"), KeyFile: filepath.Join(dir, "client.key"), CAFile: caFile},
	}
}

// syncBuffer is a log sink that tests can wait on.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the log lines other than the start-up line.
func (b *syncBuffer) lines() []string {
	var out []string
	for l := range strings.SplitSeq(strings.TrimSpace(b.String()), "\n") {
		if l != "" && !strings.Contains(l, "listening on") {
			out = append(out, l)
		}
	}
	return out
}

// waitLines waits until the log holds n lines (besides the start-up line)
// and returns them.
func (b *syncBuffer) waitLines(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := b.lines()
		if len(l) >= n {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("log has %d lines, want %d:\n%s", len(l), n, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeRestorer records what it is given and plays the restorer's part of
// the commit handshake.
type fakeRestorer struct {
	failBefore error         // returned before calling ready
	failAfter  error         // returned after a successful ready
	skipReady  bool          // return success without calling ready
	started    chan struct{} // closed (once) when Restore is entered, if set
	block      chan struct{} // Restore waits for it before ready, if set
	afterReady func()        // called after ready returned nil
	onJob      func(*Job)    // called with the job first, if set
	// lazy, for lazy jobs, plays the lazy-pages daemons after the
	// resume: Restore returns its error.
	lazy func(ctx context.Context, job *Job, daemons []*os.File) error

	mu       sync.Mutex
	calls    int
	as       string
	root     string
	files    map[string]string // extracted file -> sha256
	readyErr error
	resumed  bool
	killed   bool
	once     sync.Once
}

func (f *fakeRestorer) Restore(ctx context.Context, job *Job) (RestoreInfo, error) {
	dir, m, as, ready := job.Dir, job.Manifest, job.As, job.Ready
	if f.onJob != nil {
		f.onJob(job)
	}
	files, err := hashTree(dir)
	f.mu.Lock()
	f.calls++
	f.as, f.root, f.files = as, m.Root, files
	f.mu.Unlock()
	if err != nil {
		return RestoreInfo{}, err
	}
	if f.started != nil {
		f.once.Do(func() { close(f.started) })
	}
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			f.setKilled()
			return RestoreInfo{}, context.Cause(ctx)
		}
	}
	if f.failBefore != nil {
		return RestoreInfo{}, f.failBefore
	}
	// Lazy: a daemon per container, its socket carried to the sender.
	var daemons []*os.File
	if job.Lazy {
		for i := range m.Containers {
			ours, theirs := socketPair()
			defer theirs.Close()
			job.Pages(i, ours)
			daemons = append(daemons, theirs)
		}
	}
	info := RestoreInfo{Paths: []string{as}, Pids: map[string]int{as: 4242}}
	if f.skipReady {
		return info, nil
	}
	err = ready(info)
	f.mu.Lock()
	f.readyErr = err
	f.mu.Unlock()
	if err != nil {
		f.setKilled()
		return RestoreInfo{}, fmt.Errorf("restore %s: %w", as, err)
	}
	f.mu.Lock()
	f.resumed = true
	f.mu.Unlock()
	if f.afterReady != nil {
		f.afterReady()
	}
	if f.failAfter != nil {
		return RestoreInfo{}, f.failAfter
	}
	info.Elapsed = 5 * time.Millisecond
	if job.Lazy {
		job.Resumed(info)
		if f.lazy != nil {
			if err := f.lazy(ctx, job, daemons); err != nil {
				f.setKilled()
				return RestoreInfo{}, err
			}
		}
	}
	return info, nil
}

// socketPair returns the two ends of a unix stream socket pair; the first
// is non-blocking, as CRIU's sockets are on cr's side.
func socketPair() (*os.File, *os.File) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		panic(err)
	}
	syscall.SetNonblock(fds[0], true)
	return os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
}

func (f *fakeRestorer) setKilled() {
	f.mu.Lock()
	f.killed = true
	f.mu.Unlock()
}

func (f *fakeRestorer) snapshot() (calls int, resumed, killed bool, readyErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, f.resumed, f.killed, f.readyErr
}

// hashTree maps every regular file under dir to its sha256 and every
// directory to "dir".
func hashTree(dir string) (map[string]string, error) {
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out[rel] = "dir"
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	return out, err
}

// testServer is a Serve on 127.0.0.1 with a fake restorer.
type testServer struct {
	addr     string
	base     string // parent of the staging dir: nothing may appear here
	staging  string
	log      *syncBuffer
	restorer *fakeRestorer
}

// startServer runs Serve with cfg completed by test defaults (a token
// unless cfg.Auth is set) and stops it when the test ends.
func startServer(t *testing.T, cfg ServerConfig, r *fakeRestorer) *testServer {
	t.Helper()
	base := t.TempDir()
	ts := &testServer{base: base, staging: filepath.Join(base, "staging"), log: &syncBuffer{}, restorer: r}
	if cfg.StagingDir == "" {
		cfg.StagingDir = ts.staging
	}
	cfg.Restorer = r
	cfg.Log = ts.log
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, cfg) }()
	for !strings.Contains(ts.log.String(), "listening on") {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("Serve: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return ts
}

// assertClean checks that the staging dir is empty and that nothing else
// appeared next to it.
// The server cleans up after it told the sender the outcome: give it a
// moment.
func (ts *testServer) assertClean(t *testing.T) {
	t.Helper()
	var ents []os.DirEntry
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ents, err = os.ReadDir(ts.staging)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, e := range ents {
		t.Errorf("staging dir not clean: %s", e.Name())
	}
	ents, err = os.ReadDir(ts.base)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "staging" {
			t.Errorf("file outside the staging dir: %s", filepath.Join(ts.base, e.Name()))
		}
	}
}

// source is a fake checkpoint: a staging dir to archive.
type source struct {
	dir   string
	size  int64
	files map[string]string // as hashTree
}

func newSource(t *testing.T) *source {
	t.Helper()
	dir := t.TempDir()
	ck := filepath.Join(dir, "checkpoint")
	if err := os.Mkdir(ck, 0o755); err != nil {
		t.Fatal(err)
	}
	pages := make([]byte, 3<<20+123) // several DATA frames, incompressible
	rand.Read(pages)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(ck, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("pages-1.img", pages)
	write("core-1.img", []byte("core of pid 1\n"))
	files, err := hashTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &source{dir: dir, size: int64(len(pages)) + 14, files: files}
}

// migration returns a Migration of src whose hooks count their calls.
func (s *source) migration(req Request, hooks *hookCounts) Migration {
	return Migration{
		Request: req,
		Prepare: func(ctx context.Context) (int64, error) {
			hooks.prepare.Add(1)
			return s.size, nil
		},
		Body: func(ctx context.Context, w io.Writer) error {
			hooks.body.Add(1)
			m := &images.Manifest{Root: req.Root, Containers: []images.Container{{Path: "/", Dir: "checkpoint"}}}
			_, err := images.WriteArchive(ctx, w, s.dir, m, images.WriteOptions{})
			return err
		},
		OnReady: func(RestoreInfo) error {
			hooks.ready.Add(1)
			return nil
		},
		Pages:            func() map[int]*os.File { return nil },
		HandshakeTimeout: 5 * time.Second,
	}
}

type hookCounts struct{ prepare, body, ready atomic.Int32 }

// archive returns a valid archive of src.
func (s *source) archive(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	m := &images.Manifest{Root: "/a", Containers: []images.Container{{Path: "/", Dir: "checkpoint"}}}
	if _, err := images.WriteArchive(context.Background(), &buf, s.dir, m, images.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// assertMigrates checks that the server still completes a valid migration.
func assertMigrates(t *testing.T, ts *testServer, auth Auth, as string) {
	t.Helper()
	src := newSource(t)
	var hooks hookCounts
	info, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(Request{Root: "/a", As: as}, &hooks))
	if err != nil {
		t.Fatalf("valid migration after the failure: %v", err)
	}
	if len(info.Paths) != 1 || info.Paths[0] != as {
		t.Fatalf("valid migration: info %+v", info)
	}
	ts.restorer.mu.Lock()
	files := ts.restorer.files
	ts.restorer.mu.Unlock()
	if !equalMaps(files, src.files) {
		t.Fatalf("restorer got %v, want %v", files, src.files)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// rawClient authenticates with the real client code and then lets a test
// send whatever frames it likes.
func rawClient(t *testing.T, addr string, auth Auth) *client {
	t.Helper()
	creds, err := auth.load()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	cl := &client{counter: &countConn{Conn: nc}, idle: 5 * time.Second}
	cl.tc = tls.Client(cl.counter, creds.clientTLS("127.0.0.1"))
	cl.fc = newFrameConn(cl.tc)
	deadline := time.Now().Add(5 * time.Second)
	cl.fc.setDeadline(deadline)
	if err := cl.tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := cl.authenticate(context.Background(), creds, deadline); err != nil {
		t.Fatal(err)
	}
	cl.fc.setDeadline(time.Time{})
	return cl
}

// begin sends REQUEST and BEGIN and expects both accepted.
func (cl *client) begin(t *testing.T, req Request, size int64) {
	t.Helper()
	if err := cl.fc.sendJSON(msgRequest, req); err != nil {
		t.Fatal(err)
	}
	var acc acceptMsg
	if err := cl.expectAccept(context.Background(), time.Now().Add(5*time.Second), &acc); err != nil {
		t.Fatal(err)
	}
	if err := cl.fc.sendJSON(msgBegin, beginMsg{Size: size}); err != nil {
		t.Fatal(err)
	}
	if err := cl.expectAccept(context.Background(), time.Now().Add(5*time.Second), &acc); err != nil {
		t.Fatal(err)
	}
}

// sendData sends b as DATA frames, then END, ignoring write errors (the
// server may hang up first).
func (cl *client) sendData(b []byte, end bool) {
	dw := &dataWriter{f: cl.fc}
	for len(b) > 0 {
		n := min(len(b), 100<<10)
		if _, err := dw.Write(b[:n]); err != nil {
			return
		}
		b = b[n:]
	}
	if end {
		cl.fc.sendJSON(msgEnd, endMsg{Bytes: dw.n})
	}
}

// serverError reads frames until the connection ends and returns the
// reason of the server's ERROR ("" if none came).
func (cl *client) serverError() string {
	for {
		t, p, err := cl.fc.recv(maxControl, time.Now().Add(10*time.Second))
		if err != nil {
			return ""
		}
		if t == msgError {
			var m reasonMsg
			decode(t, p, &m)
			return m.Reason
		}
	}
}

func isAuthErr(err error) bool { return errors.Is(err, ErrAuth) }

// tarEntry is one entry of a hand-made archive.
type tarEntry struct {
	name, body, link string
	dir              bool
}

// tarOf returns a plain tar archive that starts like a cr image
// (cr-image.json) and goes on with entries.
func tarOf(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	all := append([]tarEntry{{name: images.HeaderFile, body: `{"format":"cr-image","version":1}` + "\n"}}, entries...)
	for _, e := range all {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		switch {
		case e.dir:
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tlsDial opens a TLS 1.3 connection to a token-mode server, which nobody
// authenticated yet.
func tlsDial(addr string) (*tls.Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return tc, nil
}

func tlsServer(nc net.Conn, cert tls.Certificate) *tls.Conn {
	return tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
}

// cutProxy forwards TCP connections to a target until cut.
type cutProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer p.wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

// cut closes every forwarded connection.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}
