package criubin

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"golang.org/x/sys/unix"
)

// realCRIU returns the CRIU that scripts/provision.sh installs, skipping
// the test when it cannot run.
func realCRIU(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("CRIU needs root")
	}
	if _, err := exec.LookPath(InstalledPath); err != nil {
		t.Skipf("no CRIU at %s (run scripts/provision.sh): %v", InstalledPath, err)
	}
	return InstalledPath
}

func TestGetVersionReal(t *testing.T) {
	path := realCRIU(t)
	v, err := GetVersion(path)
	if err != nil {
		t.Fatalf("GetVersion: %v", err)
	}
	// Cross-check with the version CRIU reports over RPC.
	c := criu.MakeCriu()
	c.SetCriuPath(path)
	code, err := c.GetCriuVersion()
	if err != nil {
		t.Fatalf("go-criu GetCriuVersion: %v", err)
	}
	if v.Code() != code {
		t.Errorf("GetVersion = %s (code %d), CRIU's RPC says %d", v.Raw, v.Code(), code)
	}
}

func TestCheckReal(t *testing.T) {
	path := realCRIU(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := Check(ctx, path); err != nil {
		t.Errorf("Check: %v", err)
	}
}

// unprivileged returns a wrapper that runs the real CRIU as nobody, so
// that `criu check` really fails.
func unprivileged(t *testing.T, criu string) string {
	t.Helper()
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is needed to run CRIU unprivileged")
	}
	return writeExe(t, filepath.Join(t.TempDir(), "criu"),
		`exec `+setpriv+` --reuid=65534 --regid=65534 --clear-groups `+criu+` "$@"`)
}

func TestCheckFailsUnprivileged(t *testing.T) {
	wrapper := unprivileged(t, realCRIU(t))
	err := Check(t.Context(), wrapper)
	if !errors.Is(err, ErrCheckFailed) {
		t.Fatalf("Check as nobody: error %v, want ErrCheckFailed", err)
	}
	// CRIU's own explanation, on one line.
	if msg := err.Error(); !strings.Contains(msg, "CAP_SYS_ADMIN") || strings.Contains(msg, "\n") {
		t.Errorf("error %q does not carry CRIU's message on one line", msg)
	}

	if f, err := ProbeFeatures(t.Context(), wrapper); !errors.Is(err, ErrCheckFailed) {
		t.Errorf("ProbeFeatures as nobody = %+v, %v; want ErrCheckFailed, not features all missing", f, err)
	}
}

func TestCheckMessage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ script, want string }{
		{`echo "Error (criu/vdso.c:91): vdso: Unexpected rt vDSO area bounds" >&2; echo "Error (criu/cr-check.c:1): second" >&2; exit 1`,
			"criu check failed: vdso: Unexpected rt vDSO area bounds second"},
		{`echo "Running as non-root requires '--unprivileged'"; echo "Please consult the documentation"; exit 1`,
			"criu check failed: Running as non-root requires '--unprivileged' Please consult the documentation"},
		{`exit 3`, "criu check failed: exit status 3 without a message"},
	} {
		fake := writeExe(t, filepath.Join(dir, "criu"), tc.script)
		err := Check(t.Context(), fake)
		if !errors.Is(err, ErrCheckFailed) || err.Error() != tc.want {
			t.Errorf("Check(%s) = %v, want %q", tc.script, err, tc.want)
		}
	}
	if err := Check(t.Context(), filepath.Join(dir, "missing")); err == nil || errors.Is(err, ErrCheckFailed) {
		t.Errorf("Check of a missing binary = %v, want a run error", err)
	}
	ok := writeExe(t, filepath.Join(dir, "ok"), `echo "Looks good."`)
	if err := Check(t.Context(), ok); err != nil {
		t.Errorf("Check of a passing criu: %v", err)
	}
}

func TestProbeFeaturesReal(t *testing.T) {
	path := realCRIU(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	f, err := ProbeFeatures(ctx, path)
	if err != nil {
		t.Fatalf("ProbeFeatures: %v", err)
	}
	t.Logf("features: %+v", f)

	// Each answer matches `criu check --feature NAME` run on its own.
	for name, got := range map[string]bool{
		FeatureUffd:          f.UserFaultFD,
		FeatureUffdNoncoop:   f.UffdNoncoop,
		FeatureMemDirtyTrack: f.MemDirtyTrack,
		FeaturePidfdStore:    f.PidfdStore,
		FeatureNftablesLock:  f.NftablesLock,
	} {
		out, err := exec.CommandContext(ctx, path, "check", "--feature", name).CombinedOutput()
		if want := err == nil; got != want {
			t.Errorf("feature %s = %v, but criu check --feature %s says %v: %s", name, got, name, want, out)
		}
		if strings.Contains(string(out), "Unknown feature") {
			t.Errorf("CRIU does not know feature %s", name)
		}
	}

	// And the soft-dirty answer matches the kernel's.
	if sd := softDirty(t); f.MemDirtyTrack != sd {
		t.Errorf("MemDirtyTrack = %v, but the kernel's pagemap soft-dirty bit works: %v", f.MemDirtyTrack, sd)
	}
	if f.UffdNoncoop && !f.UserFaultFD {
		t.Errorf("uffd-noncoop without uffd: %+v", f)
	}
}

// softDirty reports whether the kernel tracks soft-dirty pages: after
// clearing the bits (clear_refs 4), a written page must show bit 55 in
// /proc/self/pagemap, as CRIU's own probe checks.
func softDirty(t *testing.T) bool {
	t.Helper()
	pageSize := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	mem[0] = 1
	if err := os.WriteFile("/proc/self/clear_refs", []byte("4"), 0); err != nil {
		t.Fatalf("clear soft-dirty bits: %v", err)
	}
	mem[0] = 2
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	var entry [8]byte
	off := int64(uintptr(unsafe.Pointer(&mem[0])) / uintptr(pageSize) * 8)
	if _, err := pm.ReadAt(entry[:], off); err != nil {
		t.Fatal(err)
	}
	v := uint64(entry[0]) | uint64(entry[1])<<8 | uint64(entry[2])<<16 | uint64(entry[3])<<24 |
		uint64(entry[4])<<32 | uint64(entry[5])<<40 | uint64(entry[6])<<48 | uint64(entry[7])<<56
	if v&(1<<63) == 0 {
		t.Fatalf("page not present after writing it: pagemap %#x", v)
	}
	return v&(1<<55) != 0
}

func TestCapabilities(t *testing.T) {
	caps, err := Capabilities()
	if err != nil {
		t.Fatal(err)
	}
	// Cross-check with capget(2).
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	if len(caps) != len(capabilityBits) {
		t.Errorf("Capabilities has %d entries, want %d", len(caps), len(capabilityBits))
	}
	for name, bit := range capabilityBits {
		want := data[bit/32].Effective&(1<<(bit%32)) != 0
		if got, ok := caps[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), capget says %v", name, got, ok, want)
		}
	}
}

func TestCapabilitiesFrom(t *testing.T) {
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	// CAP_SYS_ADMIN (21) and CAP_CHECKPOINT_RESTORE (40) only.
	data := "Name:\tcr\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000010000200000\n"
	if err := os.WriteFile(status, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	caps, err := capabilitiesFrom(status)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"CAP_SYS_ADMIN": true, "CAP_CHECKPOINT_RESTORE": true,
		"CAP_SYS_PTRACE": false, "CAP_SYS_RESOURCE": false, "CAP_NET_ADMIN": false}
	for k, v := range want {
		if caps[k] != v {
			t.Errorf("%s = %v, want %v", k, caps[k], v)
		}
	}
	for _, bad := range []string{"Name:\tcr\n", "CapEff:\tzz\n"} {
		if err := os.WriteFile(status, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := capabilitiesFrom(status); err == nil {
			t.Errorf("capabilitiesFrom(%q) succeeded", bad)
		}
	}
}

// TestPipeMaxSize checks the value against what the kernel enforces: a
// pipe can grow to it, and without CAP_SYS_RESOURCE not beyond.
func TestPipeMaxSize(t *testing.T) {
	size, err := PipeMaxSize()
	if err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, size); err != nil {
		t.Errorf("grow a pipe to pipe-max-size %d: %v", size, err)
	}
	caps, err := Capabilities()
	if err != nil {
		t.Fatal(err)
	}
	if caps["CAP_SYS_RESOURCE"] {
		return
	}
	if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, 2*size); !errors.Is(err, unix.EPERM) {
		t.Errorf("grow a pipe past pipe-max-size %d without CAP_SYS_RESOURCE: %v, want EPERM", size, err)
	}
	err = CheckLazyPipes()
	if want := size < LazyPipeMaxSize; errors.Is(err, ErrPipeMaxSize) != want {
		t.Errorf("CheckLazyPipes with pipe-max-size %d and no CAP_SYS_RESOURCE = %v", size, err)
	}
}

func TestLazyPipes(t *testing.T) {
	for _, tc := range []struct {
		cap  bool
		size int
		ok   bool
	}{
		{false, 1 << 20, false},
		{false, LazyPipeMaxSize - 1, false},
		{false, LazyPipeMaxSize, true},
		{true, 1 << 20, true},
	} {
		err := lazyPipes(tc.cap, tc.size)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrPipeMaxSize) {
			t.Errorf("lazyPipes(%v, %d) = %v, want ok=%v", tc.cap, tc.size, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "echo 16777216 > /proc/sys/fs/pipe-max-size") {
			t.Errorf("error %q does not say how to fix it", err)
		}
	}
}
