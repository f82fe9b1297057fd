package migrate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
	"unicode"
)

// ProtocolVersion is the version of the wire protocol this package speaks,
// sent in HELLO. docs/wire-protocol.md describes version 1.
const ProtocolVersion = 1

// msgType is the first byte of a frame.
type msgType byte

// Frame types. The direction is client (C, the sender) to server (S, the
// receiver) or back.
const (
	msgHello     msgType = 0x01 // C→S {proto, mode, nonce}
	msgChallenge msgType = 0x02 // S→C {nonce} (token mode)
	msgAuth      msgType = 0x03 // C→S {mac} (token mode)
	msgAuthOK    msgType = 0x04 // S→C {mac} (mac in token mode)
	msgRequest   msgType = 0x10 // C→S Request
	msgAccept    msgType = 0x11 // S→C {idle_ms}
	msgReject    msgType = 0x12 // S→C {reason}
	msgBegin     msgType = 0x13 // C→S {size}
	msgFS        msgType = 0x14 // C→S Layer: a file system sent before the freeze (pre-copy)
	msgFSEnd     msgType = 0x15 // C→S {bytes}: the end of its DATA
	msgData      msgType = 0x20 // C→S raw archive bytes
	msgEnd       msgType = 0x21 // C→S {bytes}
	msgPages     msgType = 0x22 // either way: {channel, bytes} of CRIU's page server (lazy)
	msgReady     msgType = 0x30 // S→C RestoreInfo
	msgCommit    msgType = 0x31 // C→S empty
	msgDone      msgType = 0x32 // S→C RestoreInfo
	msgComplete  msgType = 0x33 // S→C {elapsed_ns} (lazy: every page arrived)
	msgPing      msgType = 0x40 // either way, empty
	msgAbort     msgType = 0x41 // C→S {reason}
	msgError     msgType = 0x42 // S→C {reason, in_doubt}
)

var msgNames = map[msgType]string{
	msgHello: "HELLO", msgChallenge: "CHALLENGE", msgAuth: "AUTH", msgAuthOK: "AUTH_OK",
	msgRequest: "REQUEST", msgAccept: "ACCEPT", msgReject: "REJECT", msgBegin: "BEGIN", msgFS: "FS", msgFSEnd: "FS_END",
	msgData: "DATA", msgEnd: "END", msgPages: "PAGES",
	msgReady: "READY", msgCommit: "COMMIT", msgDone: "DONE", msgComplete: "COMPLETE",
	msgPing: "PING", msgAbort: "ABORT", msgError: "ERROR",
}

func (t msgType) String() string {
	if s, ok := msgNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type 0x%02x", byte(t))
}

// Frame payload limits. Every length is checked against them before a byte
// of payload is read.
const (
	headerLen     = 5       // type byte + big-endian uint32 length
	maxPreAuth    = 1 << 10 // any frame before authentication succeeded
	maxControl    = 64 << 10
	maxData       = 1 << 20 // DATA and PAGES
	maxReasonLen  = 2000    // bytes of a reason kept from the peer
	maxPathLen    = 4096
	maxVersionLen = 128
)

// maxPayload is the largest payload a frame of type t may carry.
func maxPayload(t msgType) (uint32, bool) {
	switch t {
	case msgData, msgPages:
		return maxData, true
	}
	if _, ok := msgNames[t]; ok {
		return maxControl, true
	}
	return 0, false
}

// errProtocol marks a peer that broke the protocol: a malformed, oversized,
// unknown or unexpected frame.
var errProtocol = errors.New("protocol violation")

func protocolErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errProtocol, fmt.Sprintf(format, a...))
}

// Control message payloads (JSON).
type (
	helloMsg struct {
		Proto int    `json:"proto"`
		Mode  string `json:"mode"`            // "token" or "mtls"
		Nonce []byte `json:"nonce,omitempty"` // 32 bytes, token mode
	}
	challengeMsg struct {
		Nonce []byte `json:"nonce"` // 32 bytes
	}
	macMsg struct {
		MAC []byte `json:"mac,omitempty"` // 32 bytes, token mode
	}
	acceptMsg struct {
		IdleMillis int64 `json:"idle_ms,omitempty"`
		// PreCopy (answering a REQUEST that offers it): the receiver
		// takes the file systems before the freeze; WantLowers are the
		// lowers of the request's send_lowers that it lacks.
		PreCopy    bool     `json:"precopy,omitempty"`
		WantLowers []string `json:"want_lowers,omitempty"`
	}
	beginMsg struct {
		Size int64 `json:"size"`
	}
	endMsg struct {
		Bytes int64 `json:"bytes"`
	}
	reasonMsg struct {
		Reason  string `json:"reason"`
		InDoubt bool   `json:"in_doubt,omitempty"`
		// Code, in REJECT, says what a sender may act on: codeNoLazy.
		Code string `json:"code,omitempty"`
	}
	completeMsg struct {
		// Elapsed is the time from the tree's resumption to the last
		// page.
		Elapsed time.Duration `json:"elapsed_ns"`
	}
)

// frameConn reads and writes frames on an authenticated (or authenticating)
// connection. Writes are serialized, so a keepalive goroutine may send PING
// while another goroutine streams DATA. Deadlines go through it so that a
// cancelled context, which sets a deadline in the past, cannot be undone by a
// later deadline.
type frameConn struct {
	c net.Conn

	wmu  sync.Mutex
	wbuf []byte

	rhdr [headerLen]byte
	rbuf []byte

	dmu      sync.Mutex
	killed   bool // all I/O must fail
	wkilled  bool // writes must fail
	rstopped bool // reads must fail until resumeReads
	writeTTL time.Duration
}

func newFrameConn(c net.Conn) *frameConn {
	return &frameConn{c: c, writeTTL: 30 * time.Second}
}

var pastTime = time.Unix(1, 0)

// kill makes every pending and future read and write fail.
func (f *frameConn) kill() {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	f.killed, f.wkilled = true, true
	f.c.SetDeadline(pastTime)
}

// killWrites makes every pending and future write fail.
func (f *frameConn) killWrites() {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	f.wkilled = true
	f.c.SetWriteDeadline(pastTime)
}

// stopReads makes pending and future reads fail until resumeReads, to
// stop a goroutine that reads frames.
func (f *frameConn) stopReads() {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	f.rstopped = true
	f.c.SetReadDeadline(pastTime)
}

func (f *frameConn) resumeReads() {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	f.rstopped = false
	if !f.killed {
		f.c.SetReadDeadline(time.Time{})
	}
}

func (f *frameConn) setReadDeadline(t time.Time) {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	if f.killed || f.rstopped {
		return
	}
	f.c.SetReadDeadline(t)
}

func (f *frameConn) setDeadline(t time.Time) {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	if f.killed {
		return
	}
	if !f.rstopped {
		f.c.SetReadDeadline(t)
	}
	if !f.wkilled {
		f.c.SetWriteDeadline(t)
	}
}

// send writes one frame, header and payload in a single write.
func (f *frameConn) send(t msgType, payload []byte) error {
	if lim, ok := maxPayload(t); !ok || uint64(len(payload)) > uint64(lim) {
		return fmt.Errorf("send %s: payload of %d bytes", t, len(payload))
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.dmu.Lock()
	if !f.wkilled && f.writeTTL > 0 {
		f.c.SetWriteDeadline(time.Now().Add(f.writeTTL))
	}
	f.dmu.Unlock()
	n := headerLen + len(payload)
	if cap(f.wbuf) < n {
		f.wbuf = make([]byte, n)
	}
	b := f.wbuf[:n]
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:headerLen], uint32(len(payload)))
	copy(b[headerLen:], payload)
	if _, err := f.c.Write(b); err != nil {
		return fmt.Errorf("send %s: %w", t, err)
	}
	return nil
}

func (f *frameConn) sendJSON(t msgType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("send %s: %w", t, err)
	}
	return f.send(t, b)
}

// recv reads one frame whose payload is at most limit bytes, waiting until
// deadline (none if zero). The payload is valid until the next recv.
func (f *frameConn) recv(limit uint32, deadline time.Time) (msgType, []byte, error) {
	f.setReadDeadline(deadline)
	if _, err := io.ReadFull(f.c, f.rhdr[:]); err != nil {
		return 0, nil, err
	}
	t := msgType(f.rhdr[0])
	n := binary.BigEndian.Uint32(f.rhdr[1:])
	lim, ok := maxPayload(t)
	if !ok {
		return t, nil, protocolErrorf("unknown frame %s", t)
	}
	if n > min(lim, limit) {
		return t, nil, protocolErrorf("%s frame of %d bytes exceeds the limit of %d", t, n, min(lim, limit))
	}
	if cap(f.rbuf) < int(n) {
		f.rbuf = make([]byte, n, max(n, 4<<10))
	}
	p := f.rbuf[:n]
	if _, err := io.ReadFull(f.c, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return t, nil, err
	}
	return t, p, nil
}

// decode parses a control payload into v: one JSON value, nothing after it.
// Unknown fields are ignored, for additions within a protocol version.
func decode(t msgType, p []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(p))
	if err := dec.Decode(v); err != nil {
		return protocolErrorf("decode %s: %v", t, err)
	}
	if dec.More() {
		return protocolErrorf("decode %s: trailing data", t)
	}
	return nil
}

// expectEmpty checks that a frame which carries nothing has no payload.
func expectEmpty(t msgType, p []byte) error {
	if len(p) != 0 {
		return protocolErrorf("%s frame with a payload", t)
	}
	return nil
}

// sanitize makes a string from the peer safe to print: at most maxReasonLen
// bytes, valid UTF-8, control characters replaced.
func sanitize(s string) string {
	if len(s) > maxReasonLen {
		s = s[:maxReasonLen] + "..."
	}
	s = strings.ToValidUTF8(s, "?")
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// dataWriter turns the archive stream into DATA frames of at most maxData
// bytes, counting what it sent and remembering a connection failure.
type dataWriter struct {
	f   *frameConn
	n   int64
	err error // first send error: the connection failed
}

func (w *dataWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxData)]
		if err := w.f.send(msgData, chunk); err != nil {
			w.err = err
			return written, err
		}
		w.n += int64(len(chunk))
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// countConn counts the bytes written to the network.
type countConn struct {
	net.Conn
	mu      sync.Mutex
	written int64
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.written += int64(n)
	c.mu.Unlock()
	return n, err
}

func (c *countConn) bytesWritten() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written
}
