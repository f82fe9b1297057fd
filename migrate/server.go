package migrate

import (
	"context"
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/rootfs"
	"github.com/cr-dev/cr/scratch"
)

// ServerConfig configures the receiver. Zero durations and counts take the
// defaults below.
type ServerConfig struct {
	// Listen is the address ListenAndServe listens on (":7400").
	Listen string
	// Auth is mandatory: Serve refuses to start without a complete mode.
	Auth Auth
	// StagingDir receives the images, one "incoming-*" directory per
	// migration (a scratch entry), removed when the migration ends. It is
	// created (0700) if missing; leftovers of a server that died are
	// removed at start.
	StagingDir string
	// Limits bound every received image. Limits.MaxBytes (default
	// images.DefaultMaxBytes) is the hard limit on the size a sender may
	// declare; the declared size then bounds that migration.
	Limits images.Limits
	// MaxConcurrent is the number of migrations received at once (default
	// 2); more are rejected as busy.
	MaxConcurrent int
	// IdleTimeout bounds the silence on an authenticated connection
	// (default 60s). Both sides send PING every quarter of it.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake and authentication (default
	// 10s).
	HandshakeTimeout time.Duration
	// ReadyTimeout bounds the wait for COMMIT after READY (default 30s).
	ReadyTimeout time.Duration
	// Restorer restores each received image.
	Restorer Restorer
	// Streamed: the Restorer takes the image as it arrives (Job.Image)
	// in a stop-and-copy migration, and restores while it is received.
	Streamed bool
	// Log receives one line per connection (nil: discarded).
	Log io.Writer
	// Check, if set, may refuse a request before anything is received
	// (for example: the target path exists). Its error's text is sent to
	// the sender as the reason.
	Check func(req Request) error
	// Lazy, if set, enables lazy migrations: it returns why this host
	// cannot do one now (no userfaultfd), or nil. Without it, or on its
	// error, a lazy request is rejected with ErrNoLazy's code.
	Lazy func() error
	// PreCopy, if set, enables the pre-copy of file systems before the
	// freeze (docs/wire-protocol.md §10): it returns why this host cannot
	// take one, or nil. HasLower says whether this host has a lower
	// already (it is then not asked for).
	PreCopy  func() error
	HasLower func(digest string) bool
}

// Server defaults.
const (
	DefaultPort             = "7400"
	DefaultMaxConcurrent    = 2
	DefaultIdleTimeout      = 60 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultReadyTimeout     = 30 * time.Second

	// lingerTime and lingerBytes bound how long and how much the server
	// reads and discards after its last message, so that the peer gets to
	// read that message instead of a connection reset.
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
	// stagingPrefix names the per-migration directories in StagingDir.
	stagingPrefix = "incoming-"
)

// ListenAndServe listens on cfg.Listen (":7400" when empty; a missing port
// is 7400) and calls Serve.
func ListenAndServe(ctx context.Context, cfg ServerConfig) error {
	s, err := newServer(cfg)
	if err != nil {
		return err
	}
	addr := cfg.Listen
	if addr == "" {
		addr = ":" + DefaultPort
	} else if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), DefaultPort)
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return s.serve(ctx, ln)
}

// Serve receives migrations on ln until ctx is cancelled, then closes ln,
// cancels the migrations in progress (an uncommitted one is aborted) and
// waits for them; it returns nil after such a shutdown. It refuses to start
// (ErrNoAuth) without authentication.
func Serve(ctx context.Context, ln net.Listener, cfg ServerConfig) error {
	s, err := newServer(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	return s.serve(ctx, ln)
}

type server struct {
	cfg   ServerConfig
	creds *credentials
	tls   *tls.Config
	log   *log.Logger

	slots chan struct{} // migrations in progress
	hs    *handshakes   // connections not yet authenticated

	mu      sync.Mutex
	targets map[string]bool // target paths being received
}

func newServer(cfg ServerConfig) (*server, error) {
	creds, err := cfg.Auth.load()
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	if cfg.Restorer == nil {
		return nil, errors.New("start server: no restorer")
	}
	if cfg.StagingDir == "" {
		return nil, errors.New("start server: no staging directory")
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	if cfg.Limits.MaxBytes <= 0 {
		cfg.Limits.MaxBytes = images.DefaultMaxBytes
	}
	if cfg.Limits.MaxFiles <= 0 {
		cfg.Limits.MaxFiles = images.DefaultMaxFiles
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	tcfg, err := creds.serverTLS()
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	if err := prepareStaging(cfg.StagingDir); err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	return &server{
		cfg:     cfg,
		creds:   creds,
		tls:     tcfg,
		log:     log.New(cfg.Log, "", log.LstdFlags),
		slots:   make(chan struct{}, cfg.MaxConcurrent),
		hs:      newHandshakes(maxHandshakes, maxHandshakesPerHost),
		targets: make(map[string]bool),
	}, nil
}

// prepareStaging creates the staging directory and removes what an earlier
// server left in it (the directories whose owner is gone: see package
// scratch).
func prepareStaging(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create staging directory: %w", err)
	}
	// Any incoming-* or precopy-* whose owner is gone, also those named
	// by an older cr.
	scratch.SweepMatch(dir, func(name string) bool {
		return strings.HasPrefix(name, stagingPrefix) || strings.HasPrefix(name, preCopyPrefix)
	}, scratch.Dirs, nil)
	return nil
}

func (s *server) serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		ln.Close()
		cancel()
		wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.log.Printf("listening on %s, %s authentication", ln.Addr(), s.creds.mode)
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, c)
		}()
	}
}

// conn is the server's side of one connection.
type conn struct {
	s      *server
	fc     *frameConn
	tc     *tls.Conn
	remote string // address, and the certificate's name in mTLS mode
	req    Request
	pre    *rootfs.PreCopied // what the pre-copy left, for the restorer
	// release frees the migration's slot and target; it runs before the
	// final message, so that a sender told the outcome may start again.
	release func()
	// linger: the final message was sent; close with lingerClose.
	linger bool
}

func (c *conn) logf(format string, a ...any) {
	who := c.remote
	if c.req.Root != "" {
		who += " " + c.req.Root
		if c.req.Target() != c.req.Root {
			who += " as " + c.req.Target()
		}
	}
	// Sanitized: reasons may quote a hostile sender's bytes.
	c.s.log.Printf("%s: %s", who, sanitize(fmt.Sprintf(format, a...)))
}

// busyReason is what a connection dropped from the handshake set is told
// when it got far enough to be told anything (past TLS).
const busyReason = "busy: too many connections are authenticating; try again"

func (s *server) handle(ctx context.Context, nc net.Conn) {
	defer nc.Close()
	c := &conn{s: s, remote: nc.RemoteAddr().String(), release: func() {}}
	pc := &pendingConn{host: hostKey(nc.RemoteAddr())}
	c.tc = tls.Server(&talkConn{Conn: nc, pc: pc}, s.tls)
	c.fc = newFrameConn(c.tc)
	c.fc.writeTTL = s.cfg.HandshakeTimeout
	pc.evict = func(tlsDone bool) {
		if !tlsDone {
			c.fc.kill()
			return
		}
		// Tell it, and let it read that before the connection closes.
		c.fc.sendJSON(msgError, reasonMsg{Reason: busyReason, Code: codeBusy})
		c.tc.CloseWrite()
		c.fc.setReadDeadline(time.Now().Add(lingerTime))
	}
	s.hs.enter(pc)
	defer s.hs.leave(pc)
	dropped := func() {
		c.logf("dropped before authenticating: more than %d connections authenticating from its address, or %d in all", maxHandshakesPerHost, maxHandshakes)
	}

	stop := context.AfterFunc(ctx, c.fc.kill)
	defer stop()

	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	c.fc.setDeadline(deadline)
	hctx, hcancel := context.WithDeadline(ctx, deadline)
	err := c.tc.HandshakeContext(hctx)
	hcancel()
	if err != nil {
		if !s.hs.leave(pc) {
			dropped()
			return
		}
		c.logf("authentication failed: %v", err)
		return
	}
	if !s.hs.passedTLS(pc) {
		dropped()
		return
	}
	if err := c.authenticate(deadline); err != nil {
		if !s.hs.leave(pc) {
			dropped()
			return
		}
		c.logf("authentication failed: %v", err)
		if c.linger {
			c.lingerClose()
		}
		return
	}
	if !s.hs.leave(pc) {
		dropped()
		return
	}

	c.fc.writeTTL = s.cfg.IdleTimeout
	c.fc.setDeadline(time.Time{})
	c.logf("%s", c.migrate(ctx))
	if c.linger {
		c.lingerClose()
	}
}

// authenticate runs HELLO, CHALLENGE, AUTH and AUTH_OK. On failure the
// client is told "authentication failed" and nothing more.
func (c *conn) authenticate(deadline time.Time) error {
	cs := c.tc.ConnectionState()
	if len(cs.PeerCertificates) > 0 {
		c.remote += " (" + sanitize(cs.PeerCertificates[0].Subject.CommonName) + ")"
	}
	fail := func(err error) error {
		c.fc.sendJSON(msgError, reasonMsg{Reason: ErrAuth.Error()})
		c.linger = true
		return err
	}
	var hello helloMsg
	if err := c.recvJSON(maxPreAuth, deadline, msgHello, &hello); err != nil {
		return fail(err)
	}
	if hello.Proto != ProtocolVersion {
		c.fc.sendJSON(msgError, reasonMsg{Reason: fmt.Sprintf("unsupported protocol version %d (this server speaks %d)", hello.Proto, ProtocolVersion)})
		c.linger = true
		return fmt.Errorf("protocol version %d", hello.Proto)
	}
	if hello.Mode != c.s.creds.mode {
		return fail(fmt.Errorf("client uses %q authentication, server %q", sanitize(hello.Mode), c.s.creds.mode))
	}
	if c.s.creds.mode == modeMTLS {
		// The TLS handshake verified the client's certificate.
		return c.fc.sendJSON(msgAuthOK, macMsg{})
	}
	if len(hello.Nonce) != nonceLen {
		return fail(protocolErrorf("HELLO nonce of %d bytes", len(hello.Nonce)))
	}
	ekm, err := channelBinding(cs)
	if err != nil {
		return fail(err)
	}
	serverNonce, err := newNonce()
	if err != nil {
		return fail(err)
	}
	if err := c.fc.sendJSON(msgChallenge, challengeMsg{Nonce: serverNonce}); err != nil {
		return err
	}
	var proof macMsg
	if err := c.recvJSON(maxPreAuth, deadline, msgAuth, &proof); err != nil {
		return fail(err)
	}
	want := tokenMAC(c.s.creds.token, macClient, ekm, hello.Nonce, serverNonce)
	if !hmac.Equal(proof.MAC, want) {
		return fail(errors.New("wrong token proof"))
	}
	return c.fc.sendJSON(msgAuthOK, macMsg{MAC: tokenMAC(c.s.creds.token, macServer, ekm, hello.Nonce, serverNonce)})
}

// recvJSON reads one frame that must be of type want and decodes it.
func (c *conn) recvJSON(limit uint32, deadline time.Time, want msgType, v any) error {
	t, p, err := c.fc.recv(limit, deadline)
	if err != nil {
		return err
	}
	if t != want {
		return protocolErrorf("%s frame, expected %s", t, want)
	}
	return decode(t, p, v)
}

// next reads the next frame other than PING within the idle timeout.
func (c *conn) next(limit uint32) (msgType, []byte, error) {
	for {
		t, p, err := c.fc.recv(limit, time.Now().Add(c.s.cfg.IdleTimeout))
		if err != nil || t != msgPing {
			return t, p, err
		}
		if err := expectEmpty(t, p); err != nil {
			return t, nil, err
		}
	}
}

// lingerClose ends the conversation so that the peer reads the last
// message: it closes the sending side, then discards what still arrives, for
// a bounded time and size, until the peer closes.
func (c *conn) lingerClose() {
	c.tc.CloseWrite()
	c.fc.setReadDeadline(time.Now().Add(lingerTime))
	io.CopyN(io.Discard, c.tc, lingerBytes)
}

// abortError is a sender's ABORT.
type abortError struct{ reason string }

func (e *abortError) Error() string { return "aborted by sender: " + e.reason }

func (c *conn) readAbort(p []byte) error {
	var m reasonMsg
	if err := decode(msgAbort, p, &m); err != nil {
		return err
	}
	return &abortError{reason: sanitize(m.Reason)}
}

// reject refuses the request and returns the log line.
func (c *conn) reject(reason string) string { return c.rejectCode(reason, "") }

func (c *conn) rejectCode(reason, code string) string {
	c.release()
	c.fc.sendJSON(msgReject, reasonMsg{Reason: reason, Code: code})
	c.linger = true
	return "rejected: " + reason
}

// fail reports a failure after ACCEPT and returns the log line.
func (c *conn) fail(err error, inDoubt bool) string {
	c.release()
	var ab *abortError
	if errors.As(err, &ab) {
		return ab.Error()
	}
	if errors.Is(err, errProtocol) || isNetError(err) {
		// The sender broke the protocol or the connection: telling it
		// is worth a try, waiting for it is not.
		c.fc.sendJSON(msgError, reasonMsg{Reason: err.Error()})
		return "failed: " + err.Error()
	}
	c.fc.sendJSON(msgError, reasonMsg{Reason: err.Error(), InDoubt: inDoubt})
	c.linger = true
	return "failed: " + err.Error()
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// migrate runs one migration on an authenticated connection and returns
// the line to log.
func (c *conn) migrate(ctx context.Context) string {
	t, p, err := c.next(maxControl)
	if err != nil {
		return "failed: waiting for request: " + err.Error()
	}
	switch t {
	case msgRequest:
	case msgAbort:
		return c.readAbort(p).Error()
	default:
		return c.fail(protocolErrorf("%s frame, expected REQUEST", t), false)
	}
	var req Request
	if err := decode(t, p, &req); err != nil {
		return c.fail(err, false)
	}
	if err := req.validate(); err != nil {
		return c.reject("invalid request: " + err.Error())
	}
	c.req = req
	if req.Lazy {
		reason := "lazy migration is not enabled on this receiver"
		if c.s.cfg.Lazy != nil {
			if err := c.s.cfg.Lazy(); err != nil {
				reason = "lazy migration impossible here: " + sanitize(err.Error())
			} else {
				reason = ""
			}
		}
		if reason != "" {
			return c.rejectCode(reason, codeNoLazy)
		}
	}
	if c.s.cfg.Check != nil {
		if err := c.s.cfg.Check(req); err != nil {
			code := ""
			if errors.Is(err, ErrTargetExists) {
				code = codeExists
			}
			return c.rejectCode(sanitize(err.Error()), code)
		}
	}
	target := req.Target()
	if !c.s.reserve(target) {
		return c.reject(fmt.Sprintf("busy: a migration to %s is in progress", target))
	}
	select {
	case c.s.slots <- struct{}{}:
	default:
		c.s.unreserve(target)
		return c.reject(fmt.Sprintf("busy: %d migrations in progress", c.s.cfg.MaxConcurrent))
	}
	c.release = sync.OnceFunc(func() {
		<-c.s.slots
		c.s.unreserve(target)
	})
	defer c.release()
	pc := c.s.offerPreCopy(req)
	defer pc.remove()
	acc := acceptMsg{IdleMillis: c.s.cfg.IdleTimeout.Milliseconds()}
	if pc != nil {
		acc.PreCopy, acc.WantLowers = true, pc.want
	}
	if err := c.fc.sendJSON(msgAccept, acc); err != nil {
		return "failed: " + err.Error()
	}
	stopPing := c.keepalive()
	defer stopPing()

	// The sender pre-copies its file systems (if agreed), freezes and
	// dumps the source, then declares the size.
	t, p, line, err := c.nextBegin(ctx, pc)
	if line != "" {
		stopPing()
		return line
	}
	if errors.Is(err, errProtocol) {
		stopPing()
		return c.fail(err, false)
	}
	if err != nil {
		return "failed: waiting for BEGIN: " + err.Error()
	}
	c.pre = pc.received()
	switch t {
	case msgBegin:
	case msgAbort:
		return c.readAbort(p).Error()
	default:
		return c.fail(protocolErrorf("%s frame, expected BEGIN", t), false)
	}
	var begin beginMsg
	if err := decode(t, p, &begin); err != nil {
		return c.fail(err, false)
	}
	if reason := c.checkSize(begin.Size); reason != "" {
		stopPing()
		return c.reject(reason)
	}
	staged, err := scratch.Mkdir(c.s.cfg.StagingDir, stagingPrefix)
	if err != nil {
		stopPing()
		return c.reject("create staging directory: " + err.Error())
	}
	defer staged.Remove()
	dir := staged.Path
	if err := c.fc.sendJSON(msgAccept, acceptMsg{IdleMillis: c.s.cfg.IdleTimeout.Milliseconds()}); err != nil {
		return "failed: " + err.Error()
	}

	t0 := time.Now()
	var r restored
	var n int64
	var received time.Duration
	if c.s.cfg.Streamed && !c.req.Lazy {
		// Restored while it arrives: the frames go into the restorer's
		// reader until END, and only then may COMMIT come.
		pr, pw := io.Pipe()
		recvd := make(chan error, 1)
		go func() {
			var err error
			n, err = c.receiveFrames(pw, begin.Size)
			received = time.Since(t0)
			pw.CloseWithError(err) // nil: io.EOF for the reader
			recvd <- err
		}()
		r, err = c.restore(ctx, streamJob(pr, c.s.cfg.Limits, begin.Size), target, recvd)
		// A restorer that stopped reading early lets the receiver go.
		pr.CloseWithError(errors.New("the restore ended"))
	} else {
		var m *images.Manifest
		m, n, err = c.receive(ctx, dir, begin.Size)
		if err != nil {
			stopPing()
			return c.fail(err, false)
		}
		received = time.Since(t0)
		r, err = c.restore(ctx, &Job{Dir: dir, Manifest: m}, target, nil)
	}
	stopPing()
	switch {
	case err != nil && r.doneSent:
		// Lazy, after DONE: the memory did not all arrive, and the
		// restorer killed the tree; the sender may resume the source.
		return c.fail(fmt.Errorf("after resuming: %w", err), false)
	case err != nil:
		return c.fail(fmt.Errorf("restore: %w", err), false)
	case !r.committed:
		// The restorer returned without asking for the commit: the
		// tree may run here while the sender still holds the source.
		return c.fail(errors.New("restore: restorer finished without asking for commit"), true)
	case c.req.Lazy && !r.doneSent:
		return c.fail(errors.New("restore: restorer finished without saying the tree resumed"), true)
	}
	c.release()
	containers := fmt.Sprintf("%d containers", len(r.info.Paths))
	if len(r.info.Paths) == 1 {
		containers = "1 container"
	}
	summary := fmt.Sprintf("%s received in %s, restored %s in %s",
		formatBytes(n), received.Round(time.Millisecond), containers, r.info.Elapsed.Round(time.Millisecond))
	if c.req.Lazy {
		if err := c.fc.sendJSON(msgComplete, completeMsg{Elapsed: r.pages}); err != nil {
			return fmt.Sprintf("done, but COMPLETE not delivered (%v): the sender is in doubt", err)
		}
		c.linger = true
		return fmt.Sprintf("done (lazy): %s, %s of pages in %s after resuming", summary, formatBytes(r.pageBytes), r.pages.Round(time.Millisecond))
	}
	if err := c.fc.sendJSON(msgDone, r.info); err != nil {
		return fmt.Sprintf("done, but DONE not delivered (%v): the sender is in doubt", err)
	}
	c.linger = true
	return "done: " + summary
}

// reserve marks target as being received; false if it already is.
func (s *server) reserve(target string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.targets[target] {
		return false
	}
	s.targets[target] = true
	return true
}

func (s *server) unreserve(target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.targets, target)
}

// checkSize returns why a declared size is refused, or "".
func (c *conn) checkSize(size int64) string {
	limit := c.s.cfg.Limits.MaxBytes
	switch {
	case size <= 0:
		return fmt.Sprintf("invalid size %d", size)
	case size > limit:
		return fmt.Sprintf("too large: image of %s, this server accepts at most %s", formatBytes(size), formatBytes(limit))
	}
	if err := images.CheckSpace(c.s.cfg.StagingDir, size); errors.Is(err, images.ErrTooLarge) {
		return "too large: " + strings.TrimPrefix(err.Error(), images.ErrTooLarge.Error()+": ")
	}
	return ""
}

// wireBudget bounds the bytes of an archive stream whose files hold at most
// size bytes: the content, tar's per-entry overhead, the manifest, and zstd's
// worst-case expansion of incompressible data. images.Extract enforces the
// exact limits; this one stops an endless stream that decompresses to
// nothing.
func wireBudget(size int64, lim images.Limits) int64 {
	const fixed = 80 << 20 // manifest, header, trailer, padding
	raw := size + int64(lim.MaxFiles+3)*4096 + fixed
	return images.MaxCompressed(raw)
}

// keepalive sends PING every quarter of the idle timeout until the returned
// function is called.
func (c *conn) keepalive() (stop func()) {
	return startPinger(c.fc, c.s.cfg.IdleTimeout/4)
}

func startPinger(fc *frameConn, every time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if fc.send(msgPing, nil) != nil {
					return
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

// receive reads DATA frames up to END into images.Extract through a pipe, so
// that receiving and writing overlap, and returns the manifest and the
// number of archive bytes received. On error, dir is left empty.
func (c *conn) receive(ctx context.Context, dir string, size int64) (*images.Manifest, int64, error) {
	lim := c.s.cfg.Limits
	lim.MaxBytes = min(lim.MaxBytes, size)
	pr, pw := io.Pipe()
	type result struct {
		m   *images.Manifest
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := images.Extract(ctx, pr, dir, lim)
		if err != nil {
			pr.CloseWithError(err) // the writer's next write fails with it
		} else {
			pr.Close()
		}
		done <- result{m, err}
	}()
	n, err := c.receiveFrames(pw, size)
	if err != nil {
		// Extract's own reason when it stopped early (the write failed
		// with it), else the sender's or the connection's.
		pw.CloseWithError(err)
		<-done
		return nil, 0, err
	}
	pw.Close()
	r := <-done
	if r.err != nil {
		return nil, 0, r.err
	}
	return r.m, n, nil
}

// streamJob is the Job of an image restored as it arrives.
func streamJob(r io.Reader, lim images.Limits, size int64) *Job {
	lim.MaxBytes = min(lim.MaxBytes, size)
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = size
	}
	return &Job{Image: r, Limits: lim}
}

// receiveFrames writes the content of DATA frames up to END into w and
// returns the number of bytes received. A write error (the reader stopped)
// is returned as it is.
func (c *conn) receiveFrames(w io.Writer, size int64) (int64, error) {
	lim := c.s.cfg.Limits
	lim.MaxBytes = min(lim.MaxBytes, size)
	budget := wireBudget(size, lim)
	var n int64
	for {
		t, p, err := c.next(maxData)
		if err != nil {
			return n, fmt.Errorf("receive image: %w", err)
		}
		switch t {
		case msgData:
			n += int64(len(p))
			if n > budget {
				return n, fmt.Errorf("receive image: more than %s for a declared size of %s", formatBytes(budget), formatBytes(size))
			}
			if _, err := w.Write(p); err != nil {
				return n, err
			}
		case msgEnd:
			var end endMsg
			if err := decode(t, p, &end); err != nil {
				return n, err
			}
			if end.Bytes != n {
				return n, protocolErrorf("END counts %d bytes, %d were received", end.Bytes, n)
			}
			return n, nil
		case msgAbort:
			return n, c.readAbort(p)
		default:
			return n, protocolErrorf("%s frame while receiving the image", t)
		}
	}
}

type frame struct {
	t   msgType
	p   []byte
	err error
}

// restored is how a Restorer's run ended.
type restored struct {
	info      RestoreInfo
	committed bool
	doneSent  bool          // lazy: DONE was sent when the tree resumed
	pages     time.Duration // lazy: from DONE to the last page
	pageBytes int64
}

// restore runs the Restorer. A goroutine reads the sender's frames
// meanwhile: before the commit, losing the sender cancels the restore; the
// ready callback takes COMMIT or ABORT from it. In a lazy migration it
// also hands PAGES to the page channels, and losing the sender before the
// last page cancels the restore too.
// recvd, for an image restored as it arrives (job.Image), says when the
// receiver is done with the frames (and how): only then does this
// goroutine read them.
func (c *conn) restore(ctx context.Context, job *Job, target string, recvd <-chan error) (restored, error) {
	rctx, rcancel := context.WithCancelCause(ctx)
	defer rcancel(nil)
	var readySent, committed atomic.Bool
	var mux *pageMux
	limit := uint32(maxControl)
	if c.req.Lazy {
		mux = newPageMux(c.fc)
		defer mux.close()
		limit = maxData
	}
	frames := make(chan frame, 1)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if recvd != nil {
			select {
			case err := <-recvd:
				if err != nil {
					rcancel(fmt.Errorf("receive image: %w", err))
					return
				}
			case <-quit:
				return
			}
		}
		for {
			t, p, err := c.next(limit)
			if err == nil && t == msgPages && mux != nil {
				if err = mux.deliver(p); err == nil {
					continue
				}
			}
			switch {
			case committed.Load() && mux != nil && err != nil:
				// Lazy: the pages can no longer arrive.
				rcancel(fmt.Errorf("sender lost before the last page: %w", err))
				return
			case committed.Load():
				// After the commit the restore goes on whatever the
				// sender does.
			case err == nil && t == msgCommit && readySent.Load() && len(p) == 0:
				committed.Store(true)
			case err != nil:
				rcancel(fmt.Errorf("sender lost before commit: %w", err))
			case t == msgAbort:
				rcancel(c.readAbort(p))
			default:
				rcancel(notCommit(t, p, readySent.Load()))
			}
			f := frame{t: t, p: append([]byte(nil), p...), err: err}
			select {
			case frames <- f:
			case <-quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		close(quit)
		c.fc.stopReads()
		wg.Wait()
		c.fc.resumeReads()
	}()

	var called atomic.Bool
	ready := func(info RestoreInfo) error {
		if !called.CompareAndSwap(false, true) {
			return errors.New("ready called twice")
		}
		readySent.Store(true)
		if err := c.fc.sendJSON(msgReady, info); err != nil {
			return err
		}
		timer := time.NewTimer(c.s.cfg.ReadyTimeout)
		defer timer.Stop()
		for {
			select {
			case f := <-frames:
				switch {
				case f.err != nil:
					return fmt.Errorf("sender lost before commit: %w", f.err)
				case f.t == msgCommit && committed.Load():
					return nil
				case f.t == msgAbort:
					return c.readAbort(f.p)
				default:
					return notCommit(f.t, f.p, true)
				}
			case <-timer.C:
				return fmt.Errorf("no commit from the sender within %s", c.s.cfg.ReadyTimeout)
			case <-rctx.Done():
				if committed.Load() {
					return nil
				}
				return fmt.Errorf("wait for commit: %w", context.Cause(rctx))
			}
		}
	}
	var r restored
	var resumedAt time.Time
	job.As, job.Ready, job.Lazy, job.PreCopy = target, ready, c.req.Lazy, c.pre
	if mux != nil {
		job.Pages = func(i int, conn *os.File) { mux.attach(uint16(i), conn) }
		job.Resumed = func(info RestoreInfo) {
			if !committed.Load() || r.doneSent {
				return
			}
			r.doneSent = true
			resumedAt = time.Now()
			c.fc.sendJSON(msgDone, info)
		}
	}
	start := time.Now()
	info, err := c.s.cfg.Restorer.Restore(rctx, job)
	if info.Elapsed == 0 {
		info.Elapsed = time.Since(start)
	}
	r.info, r.committed = info, committed.Load()
	if mux != nil && r.doneSent {
		r.pages = time.Since(resumedAt)
		r.pageBytes = mux.in.Load()
	}
	return r, err
}

func formatBytes(n int64) string { return images.FormatBytes(n) }

// notCommit says why a frame that came while the restore runs is not the
// COMMIT the receiver waits for.
func notCommit(t msgType, p []byte, readySent bool) error {
	switch {
	case t == msgCommit && !readySent:
		return protocolErrorf("COMMIT frame before READY")
	case t == msgCommit:
		return protocolErrorf("COMMIT frame with a %d-byte payload, expected none", len(p))
	}
	return protocolErrorf("%s frame, expected COMMIT", t)
}
