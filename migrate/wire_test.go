package migrate

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// pipeConn is one end of a net.Pipe, with the other end returned.
func pipeConns(t *testing.T) (*frameConn, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return newFrameConn(a), b
}

func TestFrameFormat(t *testing.T) {
	fc, peer := pipeConns(t)
	go fc.sendJSON(msgBegin, beginMsg{Size: 42})
	got := make([]byte, headerLen+len(`{"size":42}`))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0x13, 0, 0, 0, 11}, `{"size":42}`...)
	if !bytes.Equal(got, want) {
		t.Errorf("frame % x, want % x", got, want)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w, r := newFrameConn(a), newFrameConn(b)
	data := bytes.Repeat([]byte{7}, maxData)
	go func() {
		w.send(msgPing, nil)
		w.send(msgData, data)
		w.sendJSON(msgEnd, endMsg{Bytes: int64(len(data))})
	}()
	deadline := time.Now().Add(5 * time.Second)
	if typ, p, err := r.recv(maxControl, deadline); err != nil || typ != msgPing || len(p) != 0 {
		t.Fatalf("PING: %v %v %v", typ, p, err)
	}
	if typ, p, err := r.recv(maxData, deadline); err != nil || typ != msgData || !bytes.Equal(p, data) {
		t.Fatalf("DATA: %v %d bytes %v", typ, len(p), err)
	}
	typ, p, err := r.recv(maxControl, deadline)
	var end endMsg
	if err != nil || typ != msgEnd || decode(typ, p, &end) != nil || end.Bytes != maxData {
		t.Fatalf("END: %v %q %v", typ, p, err)
	}
	if err := w.send(msgData, make([]byte, maxData+1)); err == nil {
		t.Error("sent a DATA frame over the limit")
	}
	if err := w.send(msgType(0x99), nil); err == nil {
		t.Error("sent an unknown frame type")
	}
}

// TestFrameLimits: a length over the limit is refused from the header
// alone, before any payload is read or allocated.
func TestFrameLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header []byte
		limit  uint32
		want   string
	}{
		{"control over 64 KiB", []byte{byte(msgRequest), 0, 1, 0, 1}, maxData, "exceeds the limit of 65536"},
		{"data over 1 MiB", []byte{byte(msgData), 0, 0x10, 0, 1}, maxData, "exceeds the limit of 1048576"},
		{"4 GiB", []byte{byte(msgData), 0xff, 0xff, 0xff, 0xff}, maxData, "exceeds the limit"},
		{"data before auth", []byte{byte(msgData), 0, 0, 4, 1}, maxPreAuth, "exceeds the limit of 1024"},
		{"unknown type", []byte{0x00, 0, 0, 0, 0}, maxData, "unknown frame"},
	} {
		fc, peer := pipeConns(t)
		go peer.Write(tc.header) // and nothing after it
		_, _, err := fc.recv(tc.limit, time.Now().Add(5*time.Second))
		if !errors.Is(err, errProtocol) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestDecodeStrict(t *testing.T) {
	var m beginMsg
	for _, bad := range []string{``, `{"size":1}{"size":2}`, `{"size":"x"}`, `[1]`} {
		if err := decode(msgBegin, []byte(bad), &m); !errors.Is(err, errProtocol) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	if err := decode(msgBegin, []byte(`{"size":3,"later":true}`), &m); err != nil || m.Size != 3 {
		t.Errorf("unknown field: %v %+v", err, m)
	}
}

func TestSanitize(t *testing.T) {
	if got := sanitize("line1\nline2\x1b[31m\xff"); got != "line1 line2 [31m?" {
		t.Errorf("sanitize = %q", got)
	}
	if got := sanitize(strings.Repeat("x", 5000)); len(got) != maxReasonLen+3 {
		t.Errorf("sanitize kept %d bytes", len(got))
	}
}

func TestRequestValidate(t *testing.T) {
	for _, ok := range []Request{{Root: "/a"}, {Root: "/a/b", As: "/c"}, {Root: "/", As: "/b", CRVersion: "v1.0.0"}, {Root: "/a", Networks: []string{"10.88.0.5/16"}, Published: []string{"8080:80/tcp"}}} {
		if err := ok.validate(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, bad := range []Request{{}, {Root: "a"}, {Root: "/a/"}, {Root: "/a/../b"}, {Root: "/a", As: "rel"},
		{Root: "/a\x00"}, {Root: "/" + strings.Repeat("a", maxPathLen)}, {Root: "/a", CRVersion: "v\n1"}, {Root: "/"}, {Root: "/a", As: "/"}, {Root: "/a", As: "/x/-y"},
		{Root: "/a", Networks: []string{"10.88.0.5"}}, {Root: "/a", Networks: []string{"fd00::1/64"}}, {Root: "/a", Networks: []string{"x\n"}},
		{Root: "/a", Networks: make([]string, maxNetworks+1)}, {Root: "/a", Published: []string{"80"}}} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v: valid", bad)
		}
	}
	if (Request{Root: "/a"}).Target() != "/a" || (Request{Root: "/a", As: "/b"}).Target() != "/b" {
		t.Error("Target")
	}
}

func TestWithPort(t *testing.T) {
	for in, want := range map[string]string{
		"host":          "host:7400",
		"host:1":        "host:1",
		"192.0.2.1":     "192.0.2.1:7400",
		"[2001:db8::1]": "[2001:db8::1]:7400",
		"2001:db8::1":   "[2001:db8::1]:7400",
		"[::1]:9":       "[::1]:9",
	} {
		if got := withPort(in); got != want {
			t.Errorf("withPort(%q) = %q, want %q", in, got, want)
		}
	}
}
