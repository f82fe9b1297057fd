package freeze

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// mkCgroup makes a directory standing in for a cgroup, with files.
func mkCgroup(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// replaceFile writes a file atomically, as the kernel's cgroup.events is
// never seen half-written.
func replaceFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// fakeV2Kernel plays the kernel for a v2 cgroup in a temp directory: when
// cgroup.freeze changes, it updates the "frozen" key of cgroup.events after
// delay. A stuck kernel never reports frozen 1 (a task that cannot freeze).
func fakeV2Kernel(t *testing.T, dir string, delay time.Duration, stuck bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := ""
		for ctx.Err() == nil {
			b, err := os.ReadFile(filepath.Join(dir, v2FreezeFile))
			if req := strings.TrimSpace(string(b)); err == nil && req != last && req != "" {
				last = req
				time.Sleep(delay)
				frozen := req
				if stuck {
					frozen = "0"
				}
				if err := replaceFile(filepath.Join(dir, v2EventsFile), "populated 1\nfrozen "+frozen+"\n"); err != nil {
					t.Errorf("fake kernel: %v", err)
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func newFakeV2(t *testing.T, delay time.Duration, stuck bool) Freezer {
	t.Helper()
	dir := mkCgroup(t, filepath.Join(t.TempDir(), "cg"), map[string]string{
		v2FreezeFile: "0\n",
		v2EventsFile: "populated 1\nfrozen 0\n",
	})
	fakeV2Kernel(t, dir, delay, stuck)
	f, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(*v2); !ok {
		t.Fatalf("New(%s) = %T, want the v2 freezer", dir, f)
	}
	return f
}

func wantState(t *testing.T, f Freezer, want State) {
	t.Helper()
	got, err := f.State()
	if err != nil {
		t.Fatalf("State(%s): %v", f.Path(), err)
	}
	if got != want {
		t.Fatalf("State(%s) = %s, want %s", f.Path(), got, want)
	}
}

func TestNewDetectsVersion(t *testing.T) {
	root := t.TempDir()
	v2dir := mkCgroup(t, filepath.Join(root, "v2"), map[string]string{v2FreezeFile: "0", v2EventsFile: "frozen 0"})
	v1dir := mkCgroup(t, filepath.Join(root, "v1"), map[string]string{v1StateFile: "THAWED"})
	none := mkCgroup(t, filepath.Join(root, "none"), map[string]string{"cgroup.procs": ""})

	if f, err := New(v2dir); err != nil {
		t.Errorf("New(v2): %v", err)
	} else if _, ok := f.(*v2); !ok || f.Path() != v2dir {
		t.Errorf("New(v2) = %T at %s, want *v2 at %s", f, f.Path(), v2dir)
	}
	if f, err := New(v1dir); err != nil {
		t.Errorf("New(v1): %v", err)
	} else if _, ok := f.(*v1); !ok || f.Path() != v1dir {
		t.Errorf("New(v1) = %T at %s, want *v1 at %s", f, f.Path(), v1dir)
	}
	if _, err := New(none); !errors.Is(err, ErrNoFreezer) {
		t.Errorf("New(no freezer files) error = %v, want ErrNoFreezer", err)
	}
	if _, err := New(filepath.Join(root, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("New(missing dir) error = %v, want ErrNotExist", err)
	}
}

func TestV2FreezeThaw(t *testing.T) {
	f := newFakeV2(t, 20*time.Millisecond, false)
	wantState(t, f, Thawed)

	start := time.Now()
	if err := f.Freeze(t.Context()); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	// Freeze must wait for the kernel, not return after the request.
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("Freeze returned after %v, before the kernel reported frozen", d)
	}
	if got := readTrim(t, filepath.Join(f.Path(), v2FreezeFile)); got != "1" {
		t.Errorf("cgroup.freeze = %q after Freeze, want 1", got)
	}
	wantState(t, f, Frozen)

	if err := f.Thaw(t.Context()); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if got := readTrim(t, filepath.Join(f.Path(), v2FreezeFile)); got != "0" {
		t.Errorf("cgroup.freeze = %q after Thaw, want 0", got)
	}
	wantState(t, f, Thawed)
}

func TestV2FreezeTimeoutThawsBack(t *testing.T) {
	f := newFakeV2(t, 0, true)
	ctx, cancel := WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := f.Freeze(ctx)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Freeze of a cgroup that never freezes: error = %v, want ErrTimeout", err)
	}
	if !strings.Contains(err.Error(), f.Path()) {
		t.Errorf("error %q does not name the cgroup", err)
	}
	if got := readTrim(t, filepath.Join(f.Path(), v2FreezeFile)); got != "0" {
		t.Errorf("cgroup.freeze = %q after a failed freeze, want 0 (thawed back)", got)
	}
	wantState(t, f, Thawed)
}

func TestV2FreezeCanceled(t *testing.T) {
	f := newFakeV2(t, 0, true)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := f.Freeze(ctx)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Fatalf("Freeze canceled: error = %v, want context.Canceled and not ErrTimeout", err)
	}
	if got := readTrim(t, filepath.Join(f.Path(), v2FreezeFile)); got != "0" {
		t.Errorf("cgroup.freeze = %q after a canceled freeze, want 0", got)
	}
}

func TestV2StateFreezing(t *testing.T) {
	dir := mkCgroup(t, filepath.Join(t.TempDir(), "cg"), map[string]string{
		v2FreezeFile: "1\n",
		v2EventsFile: "populated 1\nfrozen 0\n",
	})
	wantState(t, NewV2(dir), Freezing)
}

func TestV2ThawAncestorFrozen(t *testing.T) {
	root := t.TempDir()
	parent := mkCgroup(t, filepath.Join(root, "a"), map[string]string{v2FreezeFile: "1\n", v2EventsFile: "populated 1\nfrozen 1\n"})
	mid := mkCgroup(t, filepath.Join(parent, "b"), map[string]string{v2FreezeFile: "0\n", v2EventsFile: "populated 1\nfrozen 1\n"})
	child := mkCgroup(t, filepath.Join(mid, "c"), map[string]string{v2FreezeFile: "0\n", v2EventsFile: "populated 1\nfrozen 1\n"})

	f := NewV2(child)
	// The effective state, not the cgroup's own request.
	wantState(t, f, Frozen)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err := f.Thaw(ctx)
	if !errors.Is(err, ErrAncestorFrozen) {
		t.Fatalf("Thaw under a frozen ancestor: error = %v, want ErrAncestorFrozen", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Thaw took %v to notice the frozen ancestor", d)
	}
	if !strings.Contains(err.Error(), parent) {
		t.Errorf("error %q does not name the frozen ancestor %s", err, parent)
	}
}

func TestFreezeMissingCgroup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	for _, f := range []Freezer{NewV2(dir), NewV1(dir)} {
		if err := f.Freeze(t.Context()); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%T.Freeze of a missing cgroup: error = %v, want ErrNotExist", f, err)
		}
		if err := f.Thaw(t.Context()); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%T.Thaw of a missing cgroup: error = %v, want ErrNotExist", f, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%T created %s", f, dir)
		}
	}
}

// fakeV1State plays the kernel behind freezer.state: after a FROZEN
// request, reads say FREEZING freezingReads times (forever if negative)
// before FROZEN.
type fakeV1State struct {
	mu            sync.Mutex
	freezingReads int
	requested     string
	pending       int
	reads         int
	writes        []string
}

func (k *fakeV1State) write(s string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes = append(k.writes, s)
	if s == v1Frozen && k.requested != v1Frozen {
		k.pending = k.freezingReads
	}
	k.requested = s
	return nil
}

func (k *fakeV1State) read() (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reads++
	if k.requested == "" || k.requested == v1Thawed {
		return v1Thawed, nil
	}
	if k.pending != 0 {
		k.pending--
		return v1Freezing, nil
	}
	return v1Frozen, nil
}

func (k *fakeV1State) count(s string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, w := range k.writes {
		if w == s {
			n++
		}
	}
	return n
}

func newFakeV1(t *testing.T, freezingReads int) (*v1, *fakeV1State) {
	t.Helper()
	dir := mkCgroup(t, filepath.Join(t.TempDir(), "cg"), map[string]string{
		v1ParentFreezingFile: "0\n",
		v1SelfFreezingFile:   "0\n",
	})
	k := &fakeV1State{freezingReads: freezingReads}
	return &v1{path: dir, state: k}, k
}

func TestV1FreezeRetriesWhileFreezing(t *testing.T) {
	const freezing = 10
	f, k := newFakeV1(t, freezing)
	if err := f.Freeze(t.Context()); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	if k.reads < freezing+1 {
		t.Errorf("Freeze read freezer.state %d times, want at least %d (it must wait through FREEZING)", k.reads, freezing+1)
	}
	if n := k.count(v1Frozen); n < 2 {
		t.Errorf("Freeze wrote FROZEN %d times, want it rewritten while FREEZING", n)
	}
	if n := k.count(v1Thawed); n != 0 {
		t.Errorf("successful Freeze wrote THAWED %d times", n)
	}
	wantState(t, f, Frozen)

	if err := f.Thaw(t.Context()); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	wantState(t, f, Thawed)
}

func TestV1FreezeTimeoutThawsBack(t *testing.T) {
	f, k := newFakeV1(t, -1)
	ctx, cancel := WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := f.Freeze(ctx)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Freeze stuck in FREEZING: error = %v, want ErrTimeout", err)
	}
	if last := k.writes[len(k.writes)-1]; last != v1Thawed {
		t.Errorf("last write to freezer.state = %s after a failed freeze, want THAWED", last)
	}
	wantState(t, f, Thawed)
}

func TestV1ThawAncestorFrozen(t *testing.T) {
	root := t.TempDir()
	parent := mkCgroup(t, filepath.Join(root, "a"), map[string]string{
		v1StateFile: "FROZEN\n", v1SelfFreezingFile: "1\n", v1ParentFreezingFile: "0\n",
	})
	child := mkCgroup(t, filepath.Join(parent, "b"), map[string]string{
		v1StateFile: "FROZEN\n", v1SelfFreezingFile: "0\n", v1ParentFreezingFile: "1\n",
	})
	f, err := New(child)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(*v1); !ok {
		t.Fatalf("New(%s) = %T, want the v1 freezer", child, f)
	}
	// The fake file keeps whatever is written, so make it read FROZEN
	// after Thaw's THAWED, as the kernel does under a frozen parent.
	f.(*v1).state = stuckFrozen{cgroupStateFile(child)}
	wantState(t, f, Frozen)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err = f.Thaw(ctx)
	if !errors.Is(err, ErrAncestorFrozen) {
		t.Fatalf("Thaw under a frozen parent: error = %v, want ErrAncestorFrozen", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Thaw took %v to notice the frozen ancestor", d)
	}
	if !strings.Contains(err.Error(), parent) {
		t.Errorf("error %q does not name the frozen ancestor %s", err, parent)
	}
}

type stuckFrozen struct{ cgroupStateFile }

func (stuckFrozen) read() (string, error) { return v1Frozen, nil }

func TestV1StateUnexpected(t *testing.T) {
	dir := mkCgroup(t, filepath.Join(t.TempDir(), "cg"), map[string]string{v1StateFile: "BOGUS\n"})
	if s, err := NewV1(dir).State(); err == nil {
		t.Errorf("State of a freezer.state saying BOGUS = %s, want an error", s)
	}
}

func TestWithTimeout(t *testing.T) {
	for _, tc := range []struct {
		in, want time.Duration
	}{{0, DefaultTimeout}, {-1, DefaultTimeout}, {3 * time.Second, 3 * time.Second}} {
		ctx, cancel := WithTimeout(context.Background(), tc.in)
		dl, ok := ctx.Deadline()
		cancel()
		if left := time.Until(dl); !ok || left > tc.want || left < tc.want-time.Second {
			t.Errorf("WithTimeout(%v): deadline in %v, want about %v", tc.in, left, tc.want)
		}
	}
	// Freeze and Thaw bound a context without a deadline themselves.
	ctx, cancel := bounded(context.Background())
	defer cancel()
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > DefaultTimeout {
		t.Errorf("bounded: deadline %v (set %v), want within %v", dl, ok, DefaultTimeout)
	}
}
