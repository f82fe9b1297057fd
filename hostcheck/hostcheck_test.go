package hostcheck

import (
	"errors"
	"os"
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
