package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
)

// helperEnv selects a helper mode of the re-executed test binary.
const helperEnv = "CR_STORE_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines of the store still running after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines returns the stacks of goroutines still running code of
// this package, after giving them a moment to finish.
func leakedGoroutines() string {
	var leaked []string
	for range 50 {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = leaked[:0]
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "images/store.") && !strings.Contains(g, "store.TestMain") && !strings.Contains(g, "store.leakedGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		time.Sleep(20 * time.Millisecond)
	}
	return strings.Join(leaked, "\n\n")
}

// runHelper is the child side of the multi-process tests.
func runHelper(mode string) int {
	dir := os.Getenv("CR_STORE_DIR")
	s, _, err := OpenOrCreate(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	switch mode {
	case "lock":
		// Hold the lock until stdin closes.
		unlock, err := s.Lock(ctx, 10*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("locked")
		var b [1]byte
		os.Stdin.Read(b[:])
		unlock()
		return 0
	case "add":
		// One Add, killed by SIGKILL at the failpoint CR_STORE_CRASH_AT.
		at := os.Getenv("CR_STORE_CRASH_AT")
		failpointHook = func(name string) {
			if name == at {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
		if _, err := s.Add(ctx, os.Getenv("CR_STORE_STAGING"), testManifest("/crash"), time.Now()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "add-loop":
		// Add snapshots of a changing staging dir until killed.
		staging := os.Getenv("CR_STORE_STAGING")
		rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 7))
		mem := makeMemory(rng, 8<<20)
		for i := 0; ; i++ {
			changeMemory(rng, mem, 0.05, 2)
			if err := writeStaging(staging, mem, i); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			if _, err := s.Add(ctx, staging, testManifest("/loop"), time.Now()); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Println("added")
		}
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

func testManifest(root string) *images.Manifest {
	return &images.Manifest{
		Root:       root,
		Containers: []images.Container{{Path: "/", Dir: "checkpoint", Command: []string{"job"}}},
	}
}

func openStore(t testing.TB) *Store {
	t.Helper()
	s, _, err := OpenOrCreate(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeTree creates files (name -> content) under dir; names ending in "/"
// are directories.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// treeEntry is what compareTrees looks at: type, permissions and content.
type treeEntry struct {
	dir  bool
	mode fs.FileMode
	sum  string
}

func readTree(t testing.TB, dir string) map[string]treeEntry {
	t.Helper()
	out := make(map[string]treeEntry)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{dir: d.IsDir(), mode: fi.Mode().Perm()}
		if !d.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			e.sum = hex.EncodeToString(sum[:])
		}
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareTrees(t testing.TB, want, got string) {
	t.Helper()
	w, g := readTree(t, want), readTree(t, got)
	for name, we := range w {
		ge, ok := g[name]
		if !ok {
			t.Errorf("%s: missing from %s", name, got)
			continue
		}
		if ge != we {
			t.Errorf("%s: got %+v, want %+v", name, ge, we)
		}
	}
	for name := range g {
		if _, ok := w[name]; !ok {
			t.Errorf("%s: unexpected in %s", name, got)
		}
	}
}

// makeMemory returns n bytes that look like a process's pages: random
// (already compressed or encrypted) data, heap words with mostly small
// values and pointers, text, and zero pages.
func makeMemory(rng *rand.Rand, n int) []byte {
	mem := make([]byte, n)
	fillPages(rng, mem)
	return mem
}

const pageSize = 4096

func fillPages(rng *rand.Rand, b []byte) {
	words := []string{"checkpoint ", "restore ", "container ", "namespace ", "memory ", "page ", "the ", "of ", "and ", "0x7ffd "}
	for off := 0; off < len(b); off += pageSize {
		p := b[off:min(off+pageSize, len(b))]
		switch r := rng.IntN(10); {
		case r < 4: // random
			for i := 0; i+8 <= len(p); i += 8 {
				binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
			}
		case r < 7: // heap: small integers and pointers into a few regions
			for i := 0; i+8 <= len(p); i += 8 {
				var v uint64
				switch rng.IntN(3) {
				case 0:
					v = uint64(rng.IntN(256))
				case 1:
					v = 0x7f0000000000 + uint64(rng.IntN(1<<20))*8
				}
				binary.LittleEndian.PutUint64(p[i:], v)
			}
		case r < 9: // text
			i := 0
			for i < len(p) {
				i += copy(p[i:], words[rng.IntN(len(words))])
			}
		default:
			clear(p)
		}
	}
}

// changeMemory rewrites fraction of mem in regions contiguous page ranges.
func changeMemory(rng *rand.Rand, mem []byte, fraction float64, regions int) {
	pages := len(mem) / pageSize
	per := int(float64(pages)*fraction) / regions
	for range regions {
		start := rng.IntN(pages - per)
		fillPages(rng, mem[start*pageSize:(start+per)*pageSize])
	}
}

// writeStaging lays out a CRIU-like staging dir: a big pages image, small
// images that change every time, and a log.
func writeStaging(dir string, mem []byte, gen int) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	cp := filepath.Join(dir, "checkpoint")
	if err := os.MkdirAll(cp, 0o755); err != nil {
		return err
	}
	files := map[string][]byte{
		"pages-1.img":   mem,
		"pagemap-1.img": bytes.Repeat([]byte{1, 0, 0, 0, byte(gen)}, 400),
		"core-1.img":    fmt.Appendf(nil, "core of generation %d\n", gen),
		"inventory.img": []byte("inventory"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(cp, name), b, 0o600); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "stats"), fmt.Appendf(nil, "generation %d\n", gen), 0o644)
}

// chunkFiles returns the names of the chunk files on disk.
func chunkFiles(t testing.TB, s *Store) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(s.path(chunksDir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			names = append(names, d.Name())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// storeBytes is the space the chunks take.
func storeBytes(t testing.TB, s *Store) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(s.path(chunksDir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func snapshotChunks(snap *Snapshot) map[string]bool {
	set := make(map[string]bool)
	for _, f := range snap.Files {
		for _, c := range f.Chunks {
			set[c] = true
		}
	}
	return set
}
