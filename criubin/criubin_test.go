package criubin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeExe writes an executable shell script.
func writeExe(t *testing.T, path, script string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFindPrecedence(t *testing.T) {
	root := t.TempDir()
	explicit := writeExe(t, filepath.Join(root, "explicit", "criu"), "")
	env := writeExe(t, filepath.Join(root, "env", "criu"), "")
	installed := writeExe(t, filepath.Join(root, "libexec", "criu"), "")
	onPath := writeExe(t, filepath.Join(root, "bin", "criu"), "")
	t.Setenv("PATH", filepath.Dir(onPath))

	for _, tc := range []struct {
		name                     string
		explicit, env, installed string
		want                     string
	}{
		{"explicit first", explicit, env, installed, explicit},
		{"then CR_CRIU", "", env, installed, env},
		{"then installed", "", "", installed, installed},
		{"then PATH", "", "", filepath.Join(root, "nope", "criu"), onPath},
		{"explicit name on PATH", "criu", env, installed, onPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := find(tc.explicit, tc.env, tc.installed)
			if err != nil || got != tc.want {
				t.Errorf("find(%q, %q, %q) = %q, %v; want %q", tc.explicit, tc.env, tc.installed, got, err, tc.want)
			}
		})
	}

	// Find reads CR_CRIU from the environment.
	t.Setenv(EnvVar, env)
	if got, err := Find(""); err != nil || got != env {
		t.Errorf("Find with $%s=%s = %q, %v", EnvVar, env, got, err)
	}
	if got, err := Find(explicit); err != nil || got != explicit {
		t.Errorf("Find(%s) with $%s set = %q, %v; want the explicit one", explicit, EnvVar, got, err)
	}
}

func TestFindRelativeIsAbsolute(t *testing.T) {
	dir := t.TempDir()
	writeExe(t, filepath.Join(dir, "criu"), "")
	t.Chdir(dir)
	got, err := find("./criu", "", "")
	if want := filepath.Join(dir, "criu"); err != nil || got != want {
		t.Errorf("find(./criu) = %q, %v; want %q", got, err, want)
	}
}

func TestFindNotFound(t *testing.T) {
	root := t.TempDir()
	notExec := filepath.Join(root, "criu-not-exec")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	onPath := writeExe(t, filepath.Join(root, "bin", "criu"), "")
	installed := filepath.Join(root, "libexec", "criu")

	// A CRIU asked for by name is never replaced by another one.
	t.Setenv("PATH", filepath.Dir(onPath))
	for _, tc := range []struct{ explicit, env, want string }{
		{notExec, "", "--criu " + notExec},
		{filepath.Join(root, "missing"), "", "--criu"},
		{"", notExec, "$CR_CRIU=" + notExec},
		{"", root, "$CR_CRIU"}, // a directory
	} {
		p, err := find(tc.explicit, tc.env, installed)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("find(%q, %q) = %q, %v; want ErrNotFound", tc.explicit, tc.env, p, err)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("find(%q, %q) error %q does not mention %q", tc.explicit, tc.env, err, tc.want)
		}
	}

	t.Setenv("PATH", filepath.Join(root, "empty"))
	_, err := find("", "", installed)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("find with no CRIU anywhere: %v, want ErrNotFound", err)
	}
	for _, want := range []string{installed, "$PATH", "$CR_CRIU", "--criu", "scripts/provision.sh"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want Version
		code int
	}{
		{"Version: 4.1.1\n", Version{4, 1, 1, "4.1.1"}, 40101},
		{"Version: 3.17\nGitID: v3.17-4-g1234567\n", Version{3, 17, 0, "3.17"}, 31700},
		{"Version: 4.0\n", Version{4, 0, 0, "4.0"}, 40000},
		{"Version: 3.17.1\n", Version{3, 17, 1, "3.17.1"}, 31701},
		{"Version: 4.1.1.1\n", Version{4, 1, 1, "4.1.1.1"}, 40101}, // CRIU_VERSION_EXTRA
		{"Version: 3.19-rc1\n", Version{3, 19, 0, "3.19-rc1"}, 31900},
		{"  Version:   4.2  \n", Version{4, 2, 0, "4.2"}, 40200},
	} {
		got, err := ParseVersion(tc.out)
		if err != nil || got != tc.want || got.Code() != tc.code {
			t.Errorf("ParseVersion(%q) = %+v (code %d), %v; want %+v (code %d)", tc.out, got, got.Code(), err, tc.want, tc.code)
		}
	}
	for _, out := range []string{"", "criu: unknown option\n", "Version: four\n", "Version: 4\n", "Version: 4.x\n", "Version: 4.100.0\n"} {
		if v, err := ParseVersion(out); err == nil {
			t.Errorf("ParseVersion(%q) = %+v, want an error", out, v)
		}
	}
}

func TestMinVersion(t *testing.T) {
	// Debian 12's 3.17.1 does not work on this kernel; 4.1.0 and later do.
	if v := (Version{Major: 3, Minor: 17, Sublevel: 1}); v.Code() >= MinVersion {
		t.Errorf("%s accepted", v)
	}
	if v := (Version{Major: 4, Minor: 1}); v.Code() < MinVersion {
		t.Errorf("%s refused", v)
	}
}

func TestGetVersionFake(t *testing.T) {
	dir := t.TempDir()
	count := filepath.Join(dir, "runs")
	criu := writeExe(t, filepath.Join(dir, "criu"), `echo x >>`+count+`; echo "Version: 3.17"; echo "GitID: v3.17"`)

	v, err := GetVersion(criu)
	if !errors.Is(err, ErrTooOld) {
		t.Errorf("GetVersion of 3.17: error %v, want ErrTooOld", err)
	}
	if v.Code() != 31700 {
		t.Errorf("GetVersion of 3.17 = %+v, want the parsed version along with ErrTooOld", v)
	}
	if err != nil && !strings.Contains(err.Error(), criu) {
		t.Errorf("error %q does not name the binary", err)
	}
	if _, err := GetVersion(criu); !errors.Is(err, ErrTooOld) {
		t.Errorf("cached GetVersion lost ErrTooOld: %v", err)
	}
	if n := runs(t, count); n != 1 {
		t.Errorf("criu --version ran %d times for two calls, want 1 (cached)", n)
	}

	// A rebuilt binary is asked again.
	writeExe(t, criu, `echo x >>`+count+`; echo "Version: 4.1.1"`)
	v, err = GetVersion(criu)
	if err != nil || v.Code() != 40101 {
		t.Errorf("GetVersion after rebuild = %+v, %v; want 4.1.1", v, err)
	}
	if n := runs(t, count); n != 2 {
		t.Errorf("criu --version ran %d times, want 2 after the binary changed", n)
	}

	bad := writeExe(t, filepath.Join(dir, "bad"), `echo "usage: criu"; exit 1`)
	if _, err := GetVersion(bad); err == nil {
		t.Error("GetVersion of a failing binary succeeded")
	}
	if _, err := GetVersion(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("GetVersion(missing) error = %v, want ErrNotExist", err)
	}
}

func runs(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "x")
}
