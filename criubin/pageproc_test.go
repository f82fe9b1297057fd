package criubin

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeCRIU writes a shell script that stands for criu.
func fakeCRIU(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// A CRIU that says it is ready gets its socket: what cr writes comes
// back (the fake echoes), and closing cr's end ends it.
func TestPageProcReady(t *testing.T) {
	criu := fakeCRIU(t, `printf '\0' >&4; exec 4>&-; exec cat <&3 >&3`)
	p, err := StartPageProc(criu, "dump", []string{"dump"}, filepath.Join(t.TempDir(), "dump.log"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Conn.Write([]byte("pages")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	p.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(p.Conn, buf); err != nil || string(buf) != "pages" {
		t.Fatalf("read %q, %v", buf, err)
	}
	select {
	case <-p.done:
		t.Fatal("exited while its socket was open")
	default:
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// A CRIU that exits before it is ready: the error carries the reason from
// its log, and the log path.
func TestPageProcFails(t *testing.T) {
	log := filepath.Join(t.TempDir(), "lazy.log")
	criu := fakeCRIU(t, `echo "(00.000100) Error (criu/uffd.c:1417): uffd: kernel lacks it" > "`+log+`"; exit 1`)
	p, err := StartPageProc(criu, "lazy-pages", []string{"lazy-pages"}, log)
	var ce *CRIUError
	if p != nil || !errors.As(err, &ce) || ce.Reason != "uffd: kernel lacks it" || ce.LogPath != log || !strings.Contains(err.Error(), "criu lazy-pages failed") {
		t.Fatalf("StartPageProc = %v, %v; want CRIU's reason", p, err)
	}
	// Without a log, stderr says why.
	criu = fakeCRIU(t, `echo "no such option" >&2; exit 2`)
	_, err = StartPageProc(criu, "dump", nil, filepath.Join(t.TempDir(), "none.log"))
	if err == nil || !strings.Contains(err.Error(), "no such option") {
		t.Fatalf("StartPageProc without a log = %v, want its stderr", err)
	}
	// Exit 0 without a word is not readiness.
	criu = fakeCRIU(t, `exit 0`)
	if _, err = StartPageProc(criu, "dump", nil, filepath.Join(t.TempDir(), "none.log")); !errors.Is(err, ErrNotReady) {
		t.Fatalf("StartPageProc of a silent CRIU = %v, want ErrNotReady", err)
	}
}
