package restore

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/cr-dev/cr/images"
)

// TestCheck: the compatibility rule docs/image-format.md §11 states, and
// the messages it quotes.
func TestCheck(t *testing.T) {
	other := "arm64"
	if runtime.GOARCH == other {
		other = "amd64"
	}
	man := func(arch string, criu int) *images.Manifest {
		return &images.Manifest{Arch: arch, CRIUVersion: criu, Containers: []images.Container{{Path: "/"}}}
	}
	var msgs []string
	for _, tc := range []struct {
		m        *images.Manifest
		hostCRIU int
		ok       bool
	}{
		{man(runtime.GOARCH, 40201), 40201, true},
		{man(runtime.GOARCH, 40201), 40200, true}, // the sublevel does not count
		{man(runtime.GOARCH, 40201), 40300, true}, // an older image
		{man(runtime.GOARCH, 40101), 40201, true},
		{man(runtime.GOARCH, 40300), 40201, false},
		{man(runtime.GOARCH, 50000), 40201, false},
		{man(runtime.GOARCH, 0), 40201, true}, // unknown: not checked
		{man(runtime.GOARCH, 40300), 0, true},
		{man(other, 40201), 40201, false},
		{man("", 40201), 40201, false},
	} {
		err := Check(tc.m, Options{CRIUVersion: tc.hostCRIU})
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrIncompatible) {
			t.Errorf("image %s CRIU %d on CRIU %d: %v, want ok %v", tc.m.Arch, tc.m.CRIUVersion, tc.hostCRIU, err, tc.ok)
		}
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if err := Check(&images.Manifest{Arch: runtime.GOARCH}, Options{}); !errors.Is(err, images.ErrCorrupt) {
		t.Errorf("no root container: %v", err)
	}
	if err := Check(&images.Manifest{Arch: runtime.GOARCH, Containers: []images.Container{{Path: "/a"}}}, Options{}); !errors.Is(err, images.ErrCorrupt) {
		t.Errorf("first container not the root: %v", err)
	}
	doc, err := os.ReadFile("../docs/image-format.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(doc)), " ")
	quote := []string{"image not restorable here: ...", "image was dumped by CRIU 4.3.0, this host has the older 4.2.1"}
	if runtime.GOARCH == "amd64" {
		quote = append(quote, "image is for arm64, this host is amd64")
	}
	for _, q := range quote {
		found := false
		for _, m := range append(msgs, "image not restorable here: ...") {
			found = found || m == q || strings.HasSuffix(m, ": "+q)
		}
		if !found {
			t.Errorf("docs quote %q, which Check never says (it says %q)", q, msgs)
		}
		if !strings.Contains(text, "`"+q+"`") && !strings.Contains(text, q) {
			t.Errorf("docs/image-format.md does not quote %q", q)
		}
	}
}
