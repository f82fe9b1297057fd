package cmd

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/criuimg"
)

func TestFileTarget(t *testing.T) {
	for _, tc := range []struct {
		f    criuimg.File
		want string
	}{
		{criuimg.File{Kind: "file", Path: "/var/log/x"}, "/var/log/x"},
		{criuimg.File{Kind: "eventfd"}, ""},
		{criuimg.File{Kind: "socket", Socket: &criuimg.Socket{Family: "unix", Type: "stream", State: "listen", Local: "/run/s"}}, "unix stream /run/s (listen)"},
		{criuimg.File{Kind: "socket", Socket: &criuimg.Socket{Family: "unix", Type: "stream", State: "established", Inode: 7, Peer: "@abs"}}, "unix stream socket:[7] -> @abs (established)"},
		{criuimg.File{Kind: "socket", Socket: &criuimg.Socket{Family: "inet", Type: "stream", Protocol: "tcp", State: "established", Local: "10.0.0.1:5555", Peer: "10.0.0.2:80"}}, "tcp 10.0.0.1:5555 -> 10.0.0.2:80 (established)"},
		{criuimg.File{Kind: "socket", Socket: &criuimg.Socket{Family: "inet6", Type: "stream", Protocol: "tcp", State: "listen", Local: "*:8080"}}, "tcp6 *:8080 (listen)"},
		{criuimg.File{Kind: "socket", Socket: &criuimg.Socket{Family: "netlink", Protocol: "0"}}, "netlink protocol 0"},
		{criuimg.File{Kind: "socket", Socket: &criuimg.Socket{Family: "packet", Type: "raw"}}, "packet raw"},
	} {
		if got := fileTarget(tc.f); got != tc.want {
			t.Errorf("fileTarget(%+v) = %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"sleep 1000":          "sleep 1000",
		"sh -c \nwhile :\tdo": `sh -c \nwhile :\tdo`,
		"a\x00b\x7f":          `a\x00b\x7f`,
		"ünï":                 "ünï",
	} {
		if got := oneLine(in); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWriteTrimmed(t *testing.T) {
	var b bytes.Buffer
	if err := writeTrimmed(&b, []byte("a  b   \n  \nc \nlast  ")); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "a  b\n\nc\nlast"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// The errors cr inspect returns map to the exit statuses its help promises.
func TestInspectExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("%w: x.cr", errNoImage), ExitNotFound},
		{fmt.Errorf("extract image x.cr: %w: pages-1.img: sha256 mismatch", images.ErrCorrupt), ExitImage},
		{fmt.Errorf("inspect /a: %w: pstree.img: missing", criuimg.ErrBadImage), ExitImage},
		{errors.New("other"), ExitFailure},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// A container on the bridge shows its network, address and published
// ports in cr inspect, and a hostile value stays on one line.
func TestInspectNetwork(t *testing.T) {
	var b bytes.Buffer
	printContainer(&b, InspectContainer{Path: "/", Original: "/web", Network: "bridge", Address: "10.88.0.5/16", Publish: []string{"8080:80/tcp", "53:53/udp"}})
	if want := "  network: bridge, address 10.88.0.5/16, publish 8080:80/tcp 53:53/udp\n"; !bytes.Contains(b.Bytes(), []byte(want)) {
		t.Errorf("cr inspect:\n%s\nwant a line %q", b.String(), want)
	}
	b.Reset()
	printContainer(&b, InspectContainer{Path: "/", Original: "/web"})
	if bytes.Contains(b.Bytes(), []byte("network:")) {
		t.Errorf("a container without a bridge address shows a network:\n%s", b.String())
	}
	b.Reset()
	printContainer(&b, InspectContainer{Path: "/", Original: "/web", Network: "bridge", Address: "10.88.0.5/16\n\x1b[2Jforged"})
	if bytes.Contains(b.Bytes(), []byte("\x1b")) || bytes.Count(b.Bytes(), []byte("network:")) != 1 {
		t.Errorf("hostile address printed as is:\n%q", b.String())
	}
}
