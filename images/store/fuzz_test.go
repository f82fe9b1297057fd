package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/internal/treetest"
	"github.com/cr-dev/cr/nstree"
)

// Fuzz targets of the store's files: snapshot records (and the manifests
// they hold), what Materialize makes of a record, chunk files and the
// store's config. `make fuzz` runs each for longer; `make test` for a few
// seconds; plain `go test` runs their seeds (records and chunks written by
// Add, hand-made hostile ones, and testdata/fuzz/).

// fuzzStore is a store holding one snapshot of a small staging dir, and the
// record Add wrote for it.
func fuzzStore(f *testing.F) (*Store, []byte) {
	s, _, err := OpenOrCreate(filepath.Join(f.TempDir(), "store"))
	if err != nil {
		f.Fatal(err)
	}
	staging := f.TempDir()
	writeTree(f, staging, map[string]string{
		"checkpoint/pages-1.img":              strings.Repeat("page", 3000),
		"checkpoint/core-1.img":               "core",
		"checkpoint/empty.img":                "",
		"containers/1/checkpoint/pages-1.img": strings.Repeat("child", 100),
		"logs/":                               "",
	})
	snap, err := s.Add(context.Background(), staging, testManifest("/lab/job"), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		f.Fatal(err)
	}
	b, err := os.ReadFile(s.recordPath(snap.ID))
	if err != nil {
		f.Fatal(err)
	}
	return s, b
}

// editRecord returns the record b with edit applied, re-encoded.
func editRecord(f *testing.F, b []byte, edit func(r *record)) []byte {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		f.Fatal(err)
	}
	edit(&r)
	out, _, err := encodeRecord(&r)
	if err != nil {
		f.Fatal(err)
	}
	return out
}

// hostileRecords are seeds: the record b made unsafe in the ways a
// hostile store could be.
func hostileRecords(f *testing.F, b []byte) [][]byte {
	var out [][]byte
	for _, edit := range []func(r *record){
		func(r *record) { r.Files[1].Name = "../escape" },
		func(r *record) { r.Files[1].Name = "/etc/passwd" },
		func(r *record) { r.Files[1].Name = "checkpoint/../../x" },
		func(r *record) { r.Files[1].Mode = 0o4755 },
		func(r *record) { r.Files[1].Chunks = append(r.Files[1].Chunks, "../../../etc/passwd") },
		func(r *record) { r.Files = append(r.Files, r.Files[1]) },
		func(r *record) { r.Files[1].Size++; r.TotalBytes++ },
		func(r *record) {
			r.Files = append(r.Files, FileRef{Name: "x/y/z", Mode: 0o600, SHA256: emptySHA256})
		},
		func(r *record) {
			r.Manifest = json.RawMessage(`{"root":"/../x","containers":[{"path":"/","dir":"../../etc"}]}`)
		},
		func(r *record) { r.Manifest = json.RawMessage(`{"root":"/\u001b[8mhidden"}`) },
		func(r *record) { r.Path = "" },
		func(r *record) { r.Version = FormatVersion + 1 },
	} {
		out = append(out, editRecord(f, b, edit))
	}
	return out
}

// emptySHA256 is the sha256 of no bytes.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// recordID is the id a record's bytes name.
func recordID(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:idLen]
}

// FuzzRecord: decodeRecord refuses any record under another id, and refuses
// the rest with a Damage or ErrUnsupportedVersion; a record it accepts lists
// only names local to the destination, each once, permission bits only,
// well-formed chunk names, sizes that add up, and holds a manifest that
// passes images.ValidateManifest and agrees with it; and it is accepted again,
// the same, after a round trip through encodeRecord.
func FuzzRecord(f *testing.F) {
	_, valid := fuzzStore(f)
	f.Add(valid)
	for _, b := range hostileRecords(f, valid) {
		f.Add(b)
	}
	f.Add([]byte(`{"version":1,"path":"/x","manifest":{},"files":[],"added_bytes":0,"total_bytes":0}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id := recordID(b)
		other := strings.Repeat("0", idLen)
		if id == other {
			other = strings.Repeat("1", idLen)
		}
		if _, err := decodeRecord(other, b); !errors.Is(err, ErrDamaged) {
			t.Fatalf("a record under another id: %v, want a Damage", err)
		}
		snap, err := decodeRecord(id, b)
		if err != nil {
			var d Damage
			if !errors.As(err, &d) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("refused with %v: neither a Damage nor ErrUnsupportedVersion", err)
			}
			return
		}
		assertSafeSnapshot(t, snap)

		mb, err := json.Marshal(snap.Manifest)
		if err != nil {
			t.Fatalf("marshal an accepted manifest: %v", err)
		}
		r := &record{Version: FormatVersion, Path: snap.Path, Host: snap.Host, Time: snap.Time, Manifest: mb,
			Files: snap.Files, AddedBytes: snap.AddedBytes, TotalBytes: snap.TotalBytes}
		b2, id2, err := encodeRecord(r)
		if err != nil {
			t.Fatalf("encode an accepted record: %v", err)
		}
		again, err := decodeRecord(id2, b2)
		if err != nil {
			t.Fatalf("an accepted record is refused after a round trip: %v", err)
		}
		again.ID = snap.ID
		j1, _ := json.Marshal(snap)
		j2, _ := json.Marshal(again)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("round trip changed the snapshot:\n%s\n%s", j1, j2)
		}
	})
}

// assertSafeSnapshot checks what Materialize relies on in an accepted
// record.
func assertSafeSnapshot(t *testing.T, snap *Snapshot) {
	t.Helper()
	if snap.Path == "" || snap.Manifest == nil {
		t.Fatalf("accepted a snapshot without a path or manifest")
	}
	seen := map[string]bool{}
	var total int64
	for _, f := range snap.Files {
		if !filepath.IsLocal(f.Name) || path.Clean(f.Name) != f.Name || seen[f.Name] || f.Mode&^0o777 != 0 {
			t.Fatalf("accepted file %+v", f)
		}
		seen[f.Name] = true
		if f.Dir && (f.Size != 0 || len(f.Chunks) != 0 || f.SHA256 != "") {
			t.Fatalf("accepted a directory with content: %+v", f)
		}
		if f.Size < 0 || f.Size > int64(len(f.Chunks))*MaxChunk {
			t.Fatalf("accepted file %q of %d bytes in %d chunks", f.Name, f.Size, len(f.Chunks))
		}
		for _, c := range append([]string{f.SHA256}, f.Chunks...) {
			if f.Dir {
				break
			}
			if !isHash(c) {
				t.Fatalf("accepted file %q with hash %q", f.Name, c)
			}
		}
		total += f.Size
	}
	if total != snap.TotalBytes {
		t.Fatalf("accepted total_bytes %d for files of %d", snap.TotalBytes, total)
	}
	// Its manifest gets the validation an image's does, and agrees with
	// the record.
	m := snap.Manifest
	if err := images.ValidateManifest(m); err != nil {
		t.Fatalf("accepted a manifest ValidateManifest refuses: %v", err)
	}
	if err := nstree.ValidatePath(snap.Path); err != nil || m.Root != snap.Path {
		t.Fatalf("accepted path %q of a manifest of %q: %v", snap.Path, m.Root, err)
	}
	if len(m.Files) != len(snap.Files) {
		t.Fatalf("accepted a manifest of %d files for a record of %d", len(m.Files), len(snap.Files))
	}
	dirs := map[string]bool{}
	for i, f := range snap.Files {
		mf := m.Files[i]
		if mf.Name != f.Name || mf.Dir != f.Dir || mf.Size != f.Size || mf.SHA256 != f.SHA256 || mf.Mode != f.Mode {
			t.Fatalf("accepted manifest file %+v for record file %+v", mf, f)
		}
		dirs[f.Name] = f.Dir
	}
	for _, c := range m.Containers {
		if c.Dir != "" && !dirs[c.Dir] {
			t.Fatalf("accepted container %q in %q, not a directory of the record", c.Path, c.Dir)
		}
	}
}

// FuzzMaterialize stores any record in a store that holds the chunks of a
// real snapshot and materializes it. Nothing ever appears outside the
// destination, nor anything but directories and regular files inside it;
// a failure leaves the destination empty or absent; a success leaves
// exactly the record's files, with their sizes, checksums and modes (and
// the directories above them).
func FuzzMaterialize(f *testing.F) {
	s, valid := fuzzStore(f)
	f.Add(valid)
	for _, b := range hostileRecords(f, valid) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id := recordID(b)
		if err := os.WriteFile(s.recordPath(id), b, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(s.recordPath(id))
		parent := t.TempDir()
		dst := filepath.Join(parent, "staging")
		_, err := s.Materialize(context.Background(), id, dst)

		ents, rerr := os.ReadDir(parent)
		if rerr != nil || len(ents) > 1 || len(ents) == 1 && ents[0].Name() != "staging" {
			t.Fatalf("next to the destination: %v %v", ents, rerr)
		}
		tree := treetest.Scan(t, dst)
		if err != nil {
			if len(tree) != 0 {
				t.Fatalf("Materialize failed (%v) and left %d entries", err, len(tree))
			}
			return
		}
		snap, derr := decodeRecord(id, b)
		if derr != nil {
			t.Fatalf("Materialize accepted a record decodeRecord refuses: %v", derr)
		}
		listed := map[string]bool{}
		for _, f := range snap.Files {
			listed[f.Name] = true
			got, ok := tree[f.Name]
			want := treetest.Entry{Dir: f.Dir, Mode: f.Mode, Size: f.Size, SHA256: f.SHA256}
			if !ok || got != want {
				t.Fatalf("%s: on disk %+v (present %v), record %+v", f.Name, got, ok, want)
			}
		}
		for name, e := range tree {
			if listed[name] {
				continue
			}
			// Only the directories above a listed name may be extra.
			above := false
			for l := range listed {
				above = above || strings.HasPrefix(l, name+"/")
			}
			if !e.Dir || !above {
				t.Fatalf("%s: on disk, not in the record", name)
			}
		}
	})
}

// Kinds of FuzzStoreFile's input.
const (
	fileChunk  = 0
	fileConfig = 1
)

// maxBlock is the largest zstd block: the decoder checks its MaxChunk
// limit after each block, so a frame that lies about its size makes it
// decode at most one block more before it fails.
const maxBlock = 128 << 10

// TestChunkSizeLie (found by FuzzStoreFile): a chunk file whose zstd frame
// holds more than MaxChunk bytes, declaring MaxChunk or no size at all, is
// a chunkFault, and its decoding stops within a block of the limit,
// however much the frame holds.
func TestChunkSizeLie(t *testing.T) {
	s := openStore(t)
	name := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		header []byte
		total  int
	}{
		// Single segment, 4-byte content size MaxChunk, no checksum.
		{[]byte{0xa0, 0, 0, 4, 0}, MaxChunk + 1},
		{[]byte{0xa0, 0, 0, 4, 0}, 64 << 20},
		// No content size, a 128 KiB window.
		{[]byte{0x00, 7 << 3}, 64 << 20},
	} {
		total := tc.total
		// Then RLE blocks of zeros.
		frame := append([]byte{0x28, 0xb5, 0x2f, 0xfd}, tc.header...)
		for n := total; n > 0; {
			size := min(n, maxBlock)
			n -= size
			h := uint32(1<<1) | uint32(size)<<3
			if n == 0 {
				h |= 1
			}
			frame = append(frame, byte(h), byte(h>>8), byte(h>>16), 0)
		}
		p := s.chunkPath(name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, frame, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := s.readChunk(name, nil)
		var fault *chunkFault
		if !errors.As(err, &fault) || !strings.HasPrefix(fault.reason, "decode: ") {
			t.Errorf("a frame of %d bytes (header % x): %v, want a decode fault", total, tc.header, err)
		}
		if len(out) > MaxChunk+maxBlock {
			t.Errorf("a frame of %d bytes (header % x): decoded %d bytes", total, tc.header, len(out))
		}
	}
}

// FuzzStoreFile feeds any bytes to the store's other parsers. As a chunk
// file (stored under the name of a known chunk): readChunk returns that
// chunk's plaintext and nothing else, or a chunkFault, never decoding more
// than MaxChunk and a block (TestChunkSizeLie). As the config: Open accepts only the cr-store format at
// this version and refuses the rest with ErrNotStore or
// ErrUnsupportedVersion.
func FuzzStoreFile(f *testing.F) {
	plain := []byte(strings.Repeat("known chunk ", 1000))
	sum := sha256.Sum256(plain)
	name := hex.EncodeToString(sum[:])
	f.Add(byte(fileChunk), encoder().EncodeAll(plain, nil))
	f.Add(byte(fileChunk), encoder().EncodeAll(plain[:100], nil))
	f.Add(byte(fileChunk), encoder().EncodeAll(make([]byte, MaxChunk+1), nil))
	f.Add(byte(fileChunk), []byte("not zstd"))
	for _, c := range []config{{FormatName, FormatVersion, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, {FormatName, FormatVersion + 1, time.Time{}}, {"other", 1, time.Time{}}} {
		b, err := json.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(byte(fileConfig), b)
	}
	f.Add(byte(fileConfig), []byte(`{"format":"cr-store","version":1}{}`))
	s, _ := fuzzStore(f)
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		switch kind {
		case fileChunk:
			p := s.chunkPath(name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(p)
			out, err := s.readChunk(name, nil)
			var fault *chunkFault
			switch {
			case err != nil && !errors.As(err, &fault):
				t.Fatalf("readChunk: %v, want a chunkFault", err)
			case err == nil && !bytes.Equal(out, plain):
				t.Fatalf("readChunk returned %d bytes that are not the chunk", len(out))
			case len(out) > MaxChunk+maxBlock:
				t.Fatalf("readChunk decoded %d bytes, more than %d and a block", len(out), MaxChunk)
			}
		case fileConfig:
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, configFile), b, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir)
			var c config
			valid := json.Unmarshal(b, &c) == nil && c.Format == FormatName && c.Version == FormatVersion
			switch {
			case err == nil && !valid:
				t.Fatalf("opened a store with config %q", b)
			case err != nil && valid:
				t.Fatalf("refused config %q: %v", b, err)
			case err != nil && !errors.Is(err, ErrNotStore) && !errors.Is(err, ErrUnsupportedVersion):
				t.Fatalf("refused config %q with %v", b, err)
			}
		}
	})
}
