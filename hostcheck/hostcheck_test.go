package hostcheck

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestCollectAndCheck(t *testing.T) {
	d := t.TempDir()
	ro, rw := filepath.Join(d, "ro"), filepath.Join(d, "rw")
	if err := os.WriteFile(ro, []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	f1, err := os.Open(ro)
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	f2, err := os.Create(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	files, err := Collect([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, f := range files {
		got[f.Path] = f.Size
	}
	exe, _ := os.Executable()
	if got[ro] != 5 || got[rw] != AnySize {
		t.Errorf("collected %v: want %s with 5 bytes, %s with any size", files, ro, rw)
	}
	if _, ok := got[exe]; !ok {
		t.Errorf("the mapped executable %s is not among %v", exe, files)
	}
	for p := range got {
		if filepath.Dir(p) == "/proc" || filepath.Dir(p) == "/dev" {
			t.Errorf("collected %s", p)
		}
	}
	if err := Check(files); err != nil {
		t.Errorf("the same host refuses: %v", err)
	}
	if err := os.WriteFile(ro, []byte("123"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(rw); err != nil {
		t.Fatal(err)
	}
	err = Check([]File{{Path: ro, Size: 5}, {Path: rw, Size: AnySize}})
	want := `files missing on this host: "` + ro + `" is 3 bytes, 5 at the source; "` + rw + `" is missing`
	if !errors.Is(err, ErrMissing) || err.Error() != want {
		t.Errorf("check: %v\nwant %s", err, want)
	}
	if Validate([]File{{Path: "rel", Size: 1}}) == nil || Validate([]File{{Path: "/x", Size: -2}}) == nil {
		t.Error("Validate accepts a relative path or a bad size")
	}
}

// For a process in a mount namespace of its own (cr run --mount), a file
// on a tmpfs mounted there is left out (CRIU carries it), a file on the
// host's file system is kept; for a process in the host's namespace, both
// are kept.
func TestCollectMountNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a mount namespace with a tmpfs")
	}
	d := t.TempDir()
	disk, tmp := filepath.Join(d, "disk"), filepath.Join(d, "tmp")
	if err := os.WriteFile(disk, []byte("on disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `mount -t tmpfs none "$1" && echo x > "$1/f" && exec 3<"$1/f" 4<"$2" && echo ready && exec sleep 100`
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", tmp, disk)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("unshare: %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid // unshare execs sh, which execs sleep
	paths := func(fs []File) map[string]bool {
		m := map[string]bool{}
		for _, f := range fs {
			m[f.Path] = true
		}
		return m
	}
	own, err := CollectAll(nil, []int{pid})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(own); !got[disk] || got[filepath.Join(tmp, "f")] {
		t.Errorf("own mount namespace: collected %v, want %s and not the tmpfs file", own, disk)
	}
	host, err := CollectAll([]int{pid}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(host); !got[disk] || !got[filepath.Join(tmp, "f")] {
		t.Errorf("host's mount namespace: collected %v, want both files", host)
	}
}
