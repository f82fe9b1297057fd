package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// inspectStats is the stats member of cr inspect --json.
type inspectStats struct {
	FrozenSeconds float64 `json:"frozen_seconds"`
	DumpSeconds   float64 `json:"dump_seconds"`
	WriteSeconds  float64 `json:"write_seconds"`
	RawBytes      int64   `json:"raw_bytes"`
	ImageBytes    int64   `json:"image_bytes"`
	PagesWritten  int64   `json:"pages_written"`
}

// The manifest's stats are filled by checkpoint, with and without
// --leave-running, and shown by cr inspect.
func TestCheckpointFillsStats(t *testing.T) {
	j := startJob(t, "/stats", "--mem", "16")
	j.ask(t)
	for _, leaveRunning := range []bool{true, false} {
		img := image(t)
		args := []string{"checkpoint", "--json", "/stats", "-o", img}
		if leaveRunning {
			args = append(args, "--leave-running")
		}
		var ck struct {
			FrozenSeconds float64 `json:"frozen_seconds"`
			RawBytes      int64   `json:"raw_bytes"`
			ImageBytes    int64   `json:"image_bytes"`
		}
		if err := json.Unmarshal([]byte(mustCr(t, args...)), &ck); err != nil {
			t.Fatal(err)
		}
		var rep struct {
			ImageBytes int64         `json:"image_bytes"`
			Stats      *inspectStats `json:"stats"`
		}
		if err := json.Unmarshal([]byte(mustCr(t, "inspect", "--json", img)), &rep); err != nil {
			t.Fatal(err)
		}
		s := rep.Stats
		if s == nil || s.FrozenSeconds <= 0 || s.DumpSeconds <= 0 || s.WriteSeconds <= 0 || s.PagesWritten <= 0 ||
			s.RawBytes <= 16<<20 || s.ImageBytes != rep.ImageBytes {
			t.Errorf("--leave-running=%v: stats %+v of an image of %d bytes; want every time, raw and image bytes", leaveRunning, s, rep.ImageBytes)
		} else if s.RawBytes != ck.RawBytes || s.FrozenSeconds > ck.FrozenSeconds {
			t.Errorf("--leave-running=%v: stats %+v, cr checkpoint reported %+v", leaveRunning, s, ck)
		}
		text := mustCr(t, "inspect", img)
		if !strings.Contains(text, "Dump:\tfrozen ") && !strings.Contains(text, "Dump:") {
			t.Errorf("cr inspect shows no dump statistics:\n%s", text)
		}
		if leaveRunning {
			if l := ls(t)["/stats"]; l.State != "running" {
				t.Fatalf("after --leave-running: %+v", l)
			}
		}
	}
}

// A state error names the way out; every command's errors under --json
// are one JSON object on stderr with the exit status.
func TestErrorsNameTheFix(t *testing.T) {
	start(t, "/sf/kid", "sleep", "1000")
	mustCr(t, "freeze", "/sf")
	defer cr(t, "thaw", "/sf")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"checkpoint", "/sf/kid", "-o", filepath.Join(t.TempDir(), "x.cr")}, 10,
			"Error: wrong container state: /sf is frozen: thaw /sf first, or checkpoint /sf instead\n"},
		{[]string{"enter", "/sf/kid", "--", "true"}, 10, "Error: wrong container state: /sf/kid is frozen: thaw /sf first\n"},
		{[]string{"ls", "/nothing"}, 3, "Error: no such container: /nothing\n"},
		{[]string{"run", "/sf/kid", "--", "true"}, 4, "Error: container exists: /sf/kid\n"},
		{[]string{"run", "/x"}, 2, "Error: missing command: cr run /x -- CMD [ARGS...]\n"},
		{[]string{"rename", "/sf/kid", "/other/kid"}, 2, "Error: /other/kid: a container cannot move under another parent; give a name, or a path in /sf\n"},
		{[]string{"snapshot", "/sf/kid"}, 2, "Error: required flag(s) \"store\" not set\n"},
		{[]string{"images", "rm", "--store", t.TempDir()}, 2, "Error: requires at least 1 arg(s), only received 0\n"},
	} {
		r := cr(t, tc.args...)
		if r.code != tc.code || r.err != tc.want || r.out != "" {
			t.Errorf("cr %s: %s\nwant exit %d and stderr %q", strings.Join(tc.args, " "), r, tc.code, tc.want)
		}
	}
	r := cr(t, "ls", "--json", "/nothing")
	var e struct {
		Error struct {
			Message string `json:"message"`
			Code    int    `json:"code"`
			Kind    string `json:"kind"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.err), &e); err != nil || r.code != 3 || r.out != "" ||
		e.Error.Message != "no such container: /nothing" || e.Error.Code != 3 || e.Error.Kind != "not_found" {
		t.Errorf("cr ls --json /nothing: %s (%v)", r, err)
	}
}

// -q prints only errors; -v adds each phase's time; neither shows a
// progress line when stderr is not a terminal.
func TestQuietVerboseCheckpoint(t *testing.T) {
	startJob(t, "/qv", "--mem", "8")
	img := image(t)
	r := cr(t, "checkpoint", "-q", "--leave-running", "/qv", "-o", img)
	if r.code != 0 || r.out != "" || r.err != "" {
		t.Errorf("cr checkpoint -q: %s; want nothing printed", r)
	}
	if _, err := os.Stat(img); err != nil {
		t.Errorf("cr checkpoint -q wrote no image: %v", err)
	}
	img2 := filepath.Join(t.TempDir(), "v.cr")
	r = cr(t, "checkpoint", "-v", "--leave-running", "/qv", "-o", img2)
	if r.code != 0 || !strings.HasPrefix(r.out, "checkpointed /qv (1 container) to "+img2+"\n") ||
		!strings.Contains(r.err, "cr: dumped /qv in ") || !strings.Contains(r.err, "cr: wrote "+img2+" in ") || strings.Contains(r.err, "\r") {
		t.Errorf("cr checkpoint -v: %s", r)
	}
}
