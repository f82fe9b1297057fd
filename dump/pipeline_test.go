package dump

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/store"
	"github.com/cr-dev/cr/scratch"
)

// Settle decides the source's fate: resumed on a failure, untouched (left
// frozen) on a failure in doubt, untouched when it was left running.
func TestSettle(t *testing.T) {
	boom := errors.New("disk full")
	for _, tc := range []struct {
		name         string
		err          error
		leaveRunning bool
		resumed      bool
	}{
		{"failure", boom, false, true},
		{"failure left running", boom, true, true},
		{"in doubt", fmt.Errorf("%w: connection lost after commit", ErrInDoubt), false, false},
		{"success left running", nil, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Checkpoint{}
			err := c.Settle(tc.err, tc.leaveRunning)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Errorf("Settle = %v, want %v", err, tc.err)
			}
			if c.resumed != tc.resumed {
				t.Errorf("resumed %v, want %v", c.resumed, tc.resumed)
			}
		})
	}
}

// Every sink of the package is a Sink.
var _ = []Sink{&FileSink{}, &ArchiveSink{}, &StoreSink{}}

var _ StreamSink = &StoreSink{}

// The pages of a streamed dump left running go from CRIU's pipe through a
// spool into a StreamSink's writer, once the dump's gate opens (the
// source thawed), with no file in the spill directory but the spool's
// unlinked one; the snapshot then holds every byte, and nothing of the
// dump's own compressed pages (Precompressed) exists.
func TestPagesThroughSpoolIntoStore(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "store")
	st, _, err := store.OpenOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	sink := &StoreSink{Store: st, At: time.Unix(1000, 0)}
	if err := sink.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	defer sink.Abort()
	staging := t.TempDir()
	spill, err := scratch.Mkdir(t.TempDir(), spillPrefix)
	if err != nil {
		t.Fatal(err)
	}
	defer spill.Remove()
	c := &Checkpoint{Dir: staging}
	c.stream.spill = spill
	c.stream.gate = make(chan struct{})
	m := &member{ic: images.Container{Path: "/", Dir: "checkpoint"}}
	if err := os.MkdirAll(filepath.Join(staging, "checkpoint"), 0o700); err != nil {
		t.Fatal(err)
	}
	o := Options{Stream: true, LeaveRunning: true, pagesTo: sink.Pages}

	want := make([]byte, 5<<20+123)
	rand.Read(want[:len(want)/2]) // half incompressible, half zeros
	w, err := c.storeImage(o, m, filepath.Join(staging, "checkpoint"), "pages-1.img")
	if err != nil {
		t.Fatal(err)
	}
	pw, ok := w.(interface {
		ReadFromPipe(*os.File) (int64, error)
	})
	if !ok {
		t.Fatalf("the pages writer of a dump left running takes no pipe: %T", w)
	}
	r, wp, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		wp.Write(want)
		wp.Close()
	}()
	if n, err := pw.ReadFromPipe(r); err != nil || n != int64(len(want)) {
		t.Fatalf("ReadFromPipe = %d, %v", n, err)
	}
	r.Close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// CRIU is done, and nothing has gone into the store yet.
	ents, _ := os.ReadDir(spill.Path)
	for _, e := range ents {
		t.Errorf("spill directory holds %s", e.Name())
	}
	time.Sleep(100 * time.Millisecond)
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("%d chunks written before the gate opened (the source thawed)", len(ents))
	}
	close(c.stream.gate)
	if err := c.stream.wait(); err != nil {
		t.Fatal(err)
	}
	if len(c.Precompressed()) != 0 {
		t.Errorf("pages compressed into the spill directory too: %+v", c.Precompressed())
	}
	man := &images.Manifest{Root: "/job", Containers: []images.Container{m.ic}}
	if err := sink.Write(ctx, &Checkpoint{Dir: staging, Manifest: man}); err != nil {
		t.Fatal(err)
	}
	snap := sink.Snapshot
	sum := sha256.Sum256(want)
	var pages *store.FileRef
	for i, f := range snap.Files {
		if f.Name == "checkpoint/pages-1.img" {
			pages = &snap.Files[i]
		}
	}
	if pages == nil || pages.Size != int64(len(want)) || pages.SHA256 != hex.EncodeToString(sum[:]) || pages.Mode != 0o644 {
		t.Fatalf("pages in the snapshot: %+v", pages)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := st.Materialize(ctx, snap.ID, out); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(out, "checkpoint", "pages-1.img")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("restored pages differ (%v)", err)
	}
}

// A dump that fails leaves no snapshot: Take aborts the StreamSink,
// whose store is free for the next one.
func TestStoreSinkAbort(t *testing.T) {
	ctx := context.Background()
	st, _, err := store.OpenOrCreate(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	sink := &StoreSink{Store: st}
	if err := sink.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	w, err := sink.Pages("checkpoint/pages-1.img", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(make([]byte, 1<<20))
	sink.Abort()
	if list, err := st.List(""); err != nil || len(list) != 0 {
		t.Errorf("after Abort: %v, %v", list, err)
	}
	unlock, err := st.Lock(ctx, 0)
	if err != nil {
		t.Fatalf("the store's lock after Abort: %v", err)
	}
	unlock()
}
