package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cr-dev/cr/internal/treetest"
	"github.com/cr-dev/cr/nstree"
)

// Fuzz targets of the image reader and the manifest. `make fuzz` runs each
// for longer; `make test` for a few seconds; plain `go test` runs their
// seeds (the f.Add calls, images written by this package's writer and
// hand-made hostile ones, and testdata/fuzz/).

// fuzzLimits are small, so that inputs reach them.
var fuzzLimits = Limits{MaxBytes: 64 << 10, MaxFiles: 32, MaxEntry: 16 << 10}

// fuzzStaging is a small staging dir shaped like a two-container
// checkpoint.
func fuzzStaging(tb testing.TB) string {
	files := []stagingFile{
		{"checkpoint/pages-1.img", 0o600, bytes.Repeat([]byte("page"), 1000)},
		{"checkpoint/core-1.img", 0o640, []byte("core image")},
		{"checkpoint/empty.img", 0o600, nil},
		{"dump.log", 0o644, []byte("(00.000000) Dumping finished successfully\n")},
		{"containers/1/checkpoint/pstree.img", 0o600, []byte("child pstree")},
		{"containers/1/tool.sh", 0o755, []byte("#!/bin/sh\n")},
	}
	return makeStaging(tb, files, []string{"checkpoint", "containers/1/checkpoint", "containers/2"})
}

func fuzzManifest() *Manifest {
	m := testManifest()
	m.Containers[2].Dir = "containers/1/checkpoint"
	return m
}

// diskEntry is what a tree holds at one name.
type diskEntry = treetest.Entry

// scanTree returns every entry below dst by slash-separated name, failing
// unless parent holds only dst and dst only directories and regular files
// without special mode bits (see treetest.Scan, which makes directories
// 0700 and files 0600 as it goes, so that the next step can read them).
func scanTree(t *testing.T, parent, dst string) map[string]diskEntry {
	t.Helper()
	if ents, err := os.ReadDir(parent); err != nil || len(ents) != 1 || ents[0].Name() != filepath.Base(dst) {
		t.Fatalf("next to the destination: %v %v", ents, err)
	}
	return treetest.Scan(t, dst)
}

// assertTreeIsManifest fails unless tree holds exactly m's files, within l.
func assertTreeIsManifest(t *testing.T, tree map[string]diskEntry, m *Manifest, l Limits) {
	t.Helper()
	var total int64
	for _, f := range m.Files {
		got, ok := tree[f.Name]
		want := diskEntry{Dir: f.Dir, Mode: f.Mode, Size: f.Size, SHA256: f.SHA256}
		if !ok || got != want {
			t.Fatalf("%s: on disk %+v (present %v), manifest %+v", f.Name, got, ok, want)
		}
		total += f.Size
	}
	if len(tree) != len(m.Files) {
		t.Fatalf("%d entries on disk, %d in the manifest", len(tree), len(m.Files))
	}
	l = l.withDefaults()
	if total > l.MaxBytes || len(m.Files) > l.MaxFiles {
		t.Fatalf("extracted %d bytes in %d entries, limits %d bytes and %d entries", total, len(m.Files), l.MaxBytes, l.MaxFiles)
	}
	for _, c := range m.Containers {
		if c.Dir != "" && !tree[c.Dir].Dir {
			t.Fatalf("container %s: dir %q not extracted", c.Path, c.Dir)
		}
	}
}

// assertTreeNames fails unless m passes ValidateManifest and every name m
// brings into the tree follows the tree's own rules (nstree.ValidatePath),
// as names from every source must: its root, never "/" itself, and each
// container's path, alone and below the root.
func assertTreeNames(t *testing.T, m *Manifest) {
	t.Helper()
	if err := ValidateManifest(m); err != nil {
		t.Fatalf("accepted a manifest ValidateManifest refuses: %v", err)
	}
	if err := nstree.ValidatePath(m.Root); err != nil || m.Root == "/" {
		t.Fatalf("accepted root %q: %v", m.Root, err)
	}
	for _, c := range m.Containers {
		for _, p := range []string{c.Path, path.Join(m.Root, c.Path)} {
			if err := nstree.ValidatePath(p); err != nil {
				t.Fatalf("accepted container path %q: %v", p, err)
			}
		}
	}
}

// sentinel returns which of the package's errors err wraps.
func sentinel(err error) error {
	for _, s := range []error{ErrNotImage, ErrCorrupt, ErrUnsupportedVersion, ErrUnsafeEntry, ErrTooLarge} {
		if errors.Is(err, s) {
			return s
		}
	}
	return nil
}

// assertWrittenWithin reads b into a directory that, unlike Extract's, is
// not emptied on failure, and fails unless what was written by then is
// within l: no more files, no larger file, no more bytes in all than l
// allows, whether the image turns out valid or not.
func assertWrittenWithin(t *testing.T, b []byte, l Limits) {
	t.Helper()
	parent := t.TempDir()
	dir := filepath.Join(parent, "partial")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	read(context.Background(), bytes.NewReader(b), l, &dirSink{root: root})
	l = l.withDefaults()
	var total int64
	tree := scanTree(t, parent, dir)
	for name, e := range tree {
		if e.Size > l.MaxEntry {
			t.Fatalf("wrote %s of %d bytes, limit %d per file", name, e.Size, l.MaxEntry)
		}
		total += e.Size
	}
	if total > l.MaxBytes || len(tree) > l.MaxFiles {
		t.Fatalf("wrote %d bytes in %d entries, limits %d bytes and %d entries", total, len(tree), l.MaxBytes, l.MaxFiles)
	}
}

// checkRead runs Verify and Extract on b and checks what they must agree
// on and leave behind. It returns Extract's manifest, the tree and its
// directory, or the error.
func checkRead(t *testing.T, b []byte, l Limits) (*Manifest, map[string]diskEntry, string, error) {
	t.Helper()
	ctx := context.Background()
	vm, verr := Verify(ctx, bytes.NewReader(b), l)
	parent := t.TempDir()
	dst := filepath.Join(parent, "staging")
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	src := &countReader{r: bytes.NewReader(b)}
	em, eerr := Extract(ctx, src, dst, l)
	tree := scanTree(t, parent, dst)
	assertWrittenWithin(t, b, l)
	if (verr == nil) != (eerr == nil) || sentinel(verr) != sentinel(eerr) {
		t.Fatalf("Verify and Extract disagree: %v / %v", verr, eerr)
	}
	if eerr != nil {
		if sentinel(eerr) == nil {
			t.Fatalf("error %v wraps none of the package's errors", eerr)
		}
		if len(tree) != 0 {
			t.Fatalf("Extract failed (%v) and left %d entries", eerr, len(tree))
		}
		return nil, nil, "", eerr
	}
	if src.n != int64(len(b)) {
		t.Fatalf("Extract succeeded after reading %d of %d bytes", src.n, len(b))
	}
	if manifestJSON(t, vm) != manifestJSON(t, em) {
		t.Fatal("Verify and Extract return different manifests")
	}
	assertTreeIsManifest(t, tree, em, l)
	assertTreeNames(t, em)
	// An accepted manifest decodes again after a round trip, unchanged.
	mb, err := json.Marshal(em)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DecodeManifest(mb)
	if err != nil {
		t.Fatalf("an accepted manifest does not decode after a round trip: %v", err)
	}
	if manifestJSON(t, again) != string(mb) {
		t.Fatal("manifest changed in a round trip")
	}
	return em, tree, dst, nil
}

// FuzzExtract feeds any bytes to Verify and Extract. They agree; a failed
// Extract leaves its destination empty, and never wrote more than the
// limits allow before failing; nothing ever appears outside the
// destination, and nothing but directories and regular files inside it;
// a successful one reads its input to the end and leaves exactly the
// manifest's files, within the limits, its manifest names only what the
// tree's rules allow and survives a round trip; the extracted tree written again as an image reads back with the
// same files.
func FuzzExtract(f *testing.F) {
	src := fuzzStaging(f)
	for _, c := range []string{CompressionNone, CompressionZstd} {
		f.Add(archiveBytes(f, src, fuzzManifest(), c))
	}
	ok := reg("checkpoint/ok", []byte("fine"))
	for _, entries := range [][]craftEntry{
		{dir("checkpoint"), ok},
		{dir("checkpoint"), ok, reg("../escape", []byte("x"))},
		{dir("checkpoint"), ok, reg("checkpoint/../../escape", []byte("x"))},
		{dir("checkpoint"), ok, reg("/tmp/abs-escape", []byte("x"))},
		{dir("checkpoint"), {tar.Header{Typeflag: tar.TypeSymlink, Name: "checkpoint/link", Linkname: "/"}, nil}, reg("checkpoint/link/escape", []byte("x"))},
		{dir("checkpoint"), {tar.Header{Typeflag: tar.TypeLink, Name: "checkpoint/hl", Linkname: "/etc/passwd"}, nil}},
		{dir("checkpoint"), {tar.Header{Typeflag: tar.TypeChar, Name: "checkpoint/mem", Devmajor: 1, Devminor: 1, Mode: 0o600}, nil}},
		{dir("checkpoint"), {tar.Header{Typeflag: tar.TypeReg, Name: "checkpoint/suid", Mode: 0o4755, Size: 1}, []byte("x")}},
		{dir("checkpoint"), {tar.Header{Typeflag: tar.TypeReg, Name: "checkpoint/sparse", Mode: 0o600, Size: 1, PAXRecords: map[string]string{"GNU.sparse.map": "0,1"}}, []byte("x")}},
		{dir("checkpoint"), ok, reg("checkpoint/ok", []byte("again"))},
		{reg("checkpoint/orphan", []byte("x"))},
		{dir("checkpoint"), reg("checkpoint/big", make([]byte, 20<<10))},
		{dir("checkpoint"), reg("checkpoint/"+strings.Repeat("é", 100), []byte("pax name"))},
	} {
		f.Add(craft(f, entries, craftOptions{plain: true}))
	}
	f.Add(craft(f, []craftEntry{dir("checkpoint"), ok}, craftOptions{plain: true, badTrailer: true}))
	f.Add(craft(f, []craftEntry{dir("checkpoint"), ok}, craftOptions{plain: true, afterTrailer: []craftEntry{reg("late", nil)}}))
	f.Add(craft(f, []craftEntry{dir("checkpoint"), ok}, craftOptions{plain: true, listed: func(m *Manifest) {
		m.Containers = []Container{{Path: "/", Dir: "../../etc"}}
	}}))
	f.Add(zeroFrame(1 << 20))
	f.Add([]byte("not an image"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, tree, dst, err := checkRead(t, b, fuzzLimits)
		if err != nil {
			return
		}
		// Write the extracted tree again (scanTree made it 0700 and
		// 0600): the writer accepts what the reader accepted, and the
		// image it writes reads back with the same files.
		var buf bytes.Buffer
		again := *m
		if _, err := WriteArchive(context.Background(), &buf, dst, &again, WriteOptions{Compression: CompressionNone}); err != nil {
			t.Fatalf("write the extracted tree: %v", err)
		}
		m2, err := Verify(context.Background(), &buf, fuzzLimits)
		if err != nil {
			t.Fatalf("verify the image of the extracted tree: %v", err)
		}
		if len(m2.Files) != len(tree) {
			t.Fatalf("the image of the extracted tree has %d files, the tree %d", len(m2.Files), len(tree))
		}
		for _, f := range m2.Files {
			e := tree[f.Name]
			e.Mode = 0o600
			if e.Dir {
				e.Mode = 0o700
			}
			if got := (diskEntry{Dir: f.Dir, Mode: f.Mode, Size: f.Size, SHA256: f.SHA256}); got != e {
				t.Fatalf("%s: %+v in the image of the extracted tree, %+v extracted", f.Name, got, e)
			}
		}
	})
}

// The structured input of FuzzExtractEntries: a flags byte, then entries
// of: kind, mode (2 bytes, big-endian), name length, name, body length,
// body (a regular file's content, a link's target).
const (
	flagZstd         = 1 << iota // compress
	flagOmitListed               // the manifest misses the last entry
	flagExtraListed              // the manifest lists a file that is not there
	flagModeListed               // the manifest has another mode for the first entry
	flagBadContainer             // the container's dir is not a directory of the archive
	flagGNU                      // tar format GNU rather than the default
	flagGarbage                  // bytes after the end-of-archive marker
)

// An entry's kind: the low 3 bits pick the type; bit 6 repeats the name 9
// times (long names).
var kindTypes = []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo, tar.TypeChar, tar.TypeRegA, tar.TypeReg}

type fuzzEntry struct {
	typ  byte
	mode int64
	name string // as the tar header holds it
	body []byte
}

func parseSpec(spec []byte) (byte, []fuzzEntry) {
	if len(spec) == 0 {
		return 0, nil
	}
	flags, spec := spec[0], spec[1:]
	next := func(n int) []byte {
		n = min(n, len(spec))
		b := spec[:n]
		spec = spec[n:]
		return b
	}
	var entries []fuzzEntry
	for len(spec) >= 5 && len(entries) < 64 {
		kind := next(1)[0]
		mode := int64(binary.BigEndian.Uint16(next(2)))
		name := string(next(int(next(1)[0])))
		if kind&0x40 != 0 {
			name = strings.Repeat(name, 9)
		}
		var body []byte
		if n := next(1); len(n) == 1 {
			body = next(int(n[0]))
		}
		e := fuzzEntry{typ: kindTypes[kind&7], mode: mode, name: name, body: body}
		if e.typ == tar.TypeDir {
			e.name += "/"
		}
		entries = append(entries, e)
	}
	return flags, entries
}

// spec encodes entries for the seeds.
func spec(flags byte, entries ...fuzzEntry) []byte {
	b := []byte{flags}
	for _, e := range entries {
		kind := bytes.IndexByte(kindTypes, e.typ)
		name := strings.TrimSuffix(e.name, "/")
		b = append(b, byte(kind), byte(e.mode>>8), byte(e.mode), byte(len(name)))
		b = append(b, name...)
		b = append(b, byte(len(e.body)))
		b = append(b, e.body...)
	}
	return b
}

// validName is the spec's rule for entry names (docs/image-format.md,
// "Entry names"), written again from the text.
func validName(name string) bool {
	if name == "" || len(name) > 1024 || !utf8.ValidString(name) || strings.ContainsRune(name, 0) || name[0] == '/' {
		return false
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" || c == "." || c == ".." || len(c) > 255 {
			return false
		}
	}
	return true
}

// expectAccepted says whether the spec requires a reader to accept an
// archive of these entries (as archive/tar reads them back), listed
// exactly by its manifest, within l.
func expectAccepted(hdrs []*tar.Header, l Limits) bool {
	seen := map[string]bool{} // name -> is a directory
	dirs := map[string]bool{}
	var total int64
	for _, h := range hdrs {
		name := h.Name
		switch h.Typeflag {
		case tar.TypeDir:
			name = strings.TrimSuffix(name, "/")
			if h.Size != 0 {
				return false
			}
		case tar.TypeReg:
			if h.Size > l.MaxEntry {
				return false
			}
			total += h.Size
		default:
			return false
		}
		if !validName(name) || reserved(name) || seen[name] || h.Mode&^0o777 != 0 {
			return false
		}
		if p := path.Dir(name); p != "." && !dirs[p] {
			return false
		}
		seen[name] = true
		dirs[name] = h.Typeflag == tar.TypeDir
	}
	return len(hdrs) <= l.MaxFiles && total <= l.MaxBytes
}

// FuzzExtractEntries builds an archive of any entries with a correct
// framing (header, manifest listing them, trailer), so that the fuzzer
// reaches the checks of each entry and of the manifest against the
// archive. On top of FuzzExtract's properties: an archive the spec says
// is valid is accepted, and one with an entry it forbids, or a manifest
// that does not match, is refused.
func FuzzExtractEntries(f *testing.F) {
	d := func(name string, mode int64) fuzzEntry {
		return fuzzEntry{typ: tar.TypeDir, mode: mode, name: name + "/"}
	}
	r := func(name, body string) fuzzEntry {
		return fuzzEntry{typ: tar.TypeReg, mode: 0o600, name: name, body: []byte(body)}
	}
	valid := []fuzzEntry{d("checkpoint", 0o700), r("checkpoint/core-1.img", "core"), r("checkpoint/pages-1.img", strings.Repeat("p", 200)), d("containers", 0o755), d("containers/1", 0o500), r("dump.log", "log\n")}
	f.Add(spec(0, valid...))
	f.Add(spec(flagZstd|flagGNU, valid...))
	for _, fl := range []byte{flagOmitListed, flagExtraListed, flagModeListed, flagBadContainer, flagGarbage} {
		f.Add(spec(fl, valid...))
	}
	for _, bad := range []fuzzEntry{
		r("../escape", "x"), r("checkpoint/../../escape", "x"), r("/tmp/escape", "x"), r("checkpoint//x", "x"),
		r("checkpoint/./x", "x"), r(HeaderFile, "x"), r("checkpoint", "x"), r("nodir/x", "x"),
		{typ: tar.TypeSymlink, mode: 0o777, name: "checkpoint/link", body: []byte("/")},
		{typ: tar.TypeLink, mode: 0o600, name: "checkpoint/hl", body: []byte("/etc/passwd")},
		{typ: tar.TypeFifo, mode: 0o600, name: "checkpoint/fifo"},
		{typ: tar.TypeChar, mode: 0o600, name: "checkpoint/mem"},
		{typ: tar.TypeReg, mode: 0o4755, name: "checkpoint/suid", body: []byte("x")},
		{typ: tar.TypeRegA, mode: 0o600, name: "checkpoint/old", body: []byte("x")},
		{typ: tar.TypeRegA, mode: 0o700, name: "checkpoint/olddir/"},
		r("checkpoint/\xff", "x"), r("checkpoint/a\x00b", "x"),
	} {
		f.Add(spec(0, append(valid[:2:2], bad)...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		flags, entries := parseSpec(in)
		var raw bytes.Buffer
		tw := tar.NewWriter(&raw)
		format := tar.FormatUnknown
		if flags&flagGNU != 0 {
			format = tar.FormatGNU
		}
		put := func(h *tar.Header, body []byte) error {
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			_, err := tw.Write(body)
			return err
		}
		modTime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		if err := put(&tar.Header{Typeflag: tar.TypeReg, Name: HeaderFile, Mode: 0o644, Size: int64(len(headerV1)), ModTime: modTime}, headerV1); err != nil {
			t.Fatal(err)
		}
		// The version 1 layout, content first: every entry reaches the
		// reader's checks whatever its manifest says (FuzzExtractV2 has
		// the manifest first).
		m := &Manifest{Format: FormatName, Version: 1, Root: "/x", Containers: []Container{{Path: "/", Empty: true}}}
		for _, e := range entries {
			h := &tar.Header{Typeflag: e.typ, Name: e.name, Mode: e.mode, ModTime: modTime, Format: format}
			var body []byte
			switch e.typ {
			case tar.TypeReg, tar.TypeRegA:
				h.Size, body = int64(len(e.body)), e.body
			case tar.TypeSymlink, tar.TypeLink:
				h.Linkname = string(e.body)
			}
			if err := put(h, body); err != nil {
				return // not an archive archive/tar writes
			}
			switch {
			case e.typ == tar.TypeDir || e.typ == tar.TypeRegA && strings.HasSuffix(e.name, "/"):
				name := strings.TrimSuffix(e.name, "/")
				m.Files = append(m.Files, File{Name: name, Mode: uint32(e.mode), Dir: true})
				if m.Containers[0].Empty {
					m.Containers[0] = Container{Path: "/", Dir: name}
				}
			case e.typ == tar.TypeReg || e.typ == tar.TypeRegA:
				s := sha256.Sum256(e.body)
				m.Files = append(m.Files, File{Name: e.name, Size: int64(len(e.body)), SHA256: hex.EncodeToString(s[:]), Mode: uint32(e.mode)})
			}
		}
		listedExactly := true
		switch {
		case flags&flagOmitListed != 0 && len(m.Files) > 0:
			m.Files = m.Files[:len(m.Files)-1]
			listedExactly = false
		case flags&flagExtraListed != 0:
			m.Files = append(m.Files, File{Name: "not-there", Size: 1, SHA256: strings.Repeat("ab", 32), Mode: 0o600})
			listedExactly = false
		case flags&flagModeListed != 0 && len(m.Files) > 0:
			m.Files[0].Mode ^= 0o100
			listedExactly = false
		case flags&flagBadContainer != 0:
			m.Containers = append(m.Containers, Container{Path: "/c", Dir: "not-a-dir"})
			listedExactly = false
		}
		mb, err := json.Marshal(m)
		if err != nil {
			return // names that are not UTF-8 do not survive JSON: covered by FuzzExtract
		}
		sum := sha256.Sum256(mb)
		for _, e := range []struct {
			name string
			b    []byte
		}{{ManifestFile, mb}, {TrailerFile, []byte(hex.EncodeToString(sum[:]) + "\n")}} {
			if err := put(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.b)), ModTime: modTime}, e.b); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		if flags&flagGarbage != 0 {
			raw.WriteString("garbage")
			listedExactly = false
		}

		// What the archive holds, read back with archive/tar: the
		// spec's verdict is on that.
		var hdrs []*tar.Header
		tr := tar.NewReader(bytes.NewReader(raw.Bytes()))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
				t.Fatalf("archive/tar cannot read what it wrote: %v", err)
			}
			hdrs = append(hdrs, h)
		}
		hdrs = hdrs[1 : len(hdrs)-2] // the content entries
		roundTrip := len(hdrs) == len(entries)
		for i := 0; roundTrip && i < len(hdrs); i++ {
			e := entries[i]
			roundTrip = hdrs[i].Name == e.name && hdrs[i].Mode == e.mode
		}

		b := raw.Bytes()
		if flags&flagZstd != 0 {
			b = compress(t, b)
		}
		got, _, _, err := checkRead(t, b, fuzzLimits)
		want := expectAccepted(hdrs, fuzzLimits.withDefaults())
		switch {
		case err == nil && !want:
			t.Fatalf("accepted an archive the spec forbids: %+v", hdrs)
		case err == nil && !listedExactly:
			t.Fatalf("accepted an archive its manifest does not list exactly (flags %#x)", flags)
		case err != nil && want && listedExactly && roundTrip:
			t.Fatalf("refused a valid archive: %v", err)
		case err == nil && manifestJSON(t, got) != string(mb):
			t.Fatalf("the manifest read is not the one written")
		}
	})
}

// FuzzDecodeManifest: a manifest DecodeManifest accepts names only local
// paths (files and container dirs), a root and container paths the tree's
// name rules allow (assertTreeNames), in tree order, each once; and it
// decodes again, unchanged, after a marshal round trip.
func FuzzDecodeManifest(f *testing.F) {
	good := fuzzManifest()
	good.Format, good.Version = FormatName, FormatVersion
	good.Files = []File{
		{Name: "checkpoint", Mode: 0o700, Dir: true},
		{Name: "checkpoint/core-1.img", Size: 4, SHA256: strings.Repeat("0a", 32), Mode: 0o600},
		{Name: "containers", Mode: 0o700, Dir: true},
		{Name: "containers/1", Mode: 0o700, Dir: true},
		{Name: "containers/1/checkpoint", Mode: 0o700, Dir: true},
	}
	add := func(edit func(m *Manifest)) {
		m := *good
		m.Containers = append([]Container(nil), good.Containers...)
		m.Files = append([]File(nil), good.Files...)
		edit(&m)
		b, err := json.MarshalIndent(&m, "", "  ")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	add(func(*Manifest) {})
	for _, root := range []string{"/../x", "/\x1b[8mhidden", "/lab/.hidden", "/a\nb", "/a\x00b", "/a\u202eb", "/" + strings.Repeat("n", 200), "", "rel"} {
		add(func(m *Manifest) { m.Root = root })
	}
	add(func(m *Manifest) { m.Containers[1].Path = "/mid/../.." })
	add(func(m *Manifest) { m.Containers[2].Dir = "../../etc" })
	add(func(m *Manifest) { m.Containers[2].Dir = "checkpoint" })
	add(func(m *Manifest) { m.Files[1].Name = "/etc/passwd" })
	add(func(m *Manifest) { m.Files[1].SHA256 = strings.ToUpper(m.Files[1].SHA256) })
	add(func(m *Manifest) { m.Version = 2 })
	f.Add([]byte(`{"format":"cr-image","version":1}{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			return
		}
		assertTreeNames(t, m)
		paths := map[string]bool{}
		for i, c := range m.Containers {
			if !strings.HasPrefix(c.Path, "/") || path.Clean(c.Path) != c.Path || paths[c.Path] {
				t.Fatalf("accepted container path %q", c.Path)
			}
			if i == 0 && c.Path != "/" || i > 0 && !paths[path.Dir(c.Path)] {
				t.Fatalf("accepted container %q out of tree order", c.Path)
			}
			paths[c.Path] = true
			if c.Dir != "" && (!filepath.IsLocal(c.Dir) || !validName(c.Dir)) {
				t.Fatalf("accepted container dir %q", c.Dir)
			}
		}
		for _, f := range m.Files {
			if !filepath.IsLocal(f.Name) || !validName(f.Name) || reserved(f.Name) || f.Mode&^0o777 != 0 {
				t.Fatalf("accepted file %+v", f)
			}
		}
		mb, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal an accepted manifest: %v", err)
		}
		again, err := DecodeManifest(mb)
		if err != nil {
			t.Fatalf("an accepted manifest does not decode after a round trip: %v\n%s", err, mb)
		}
		if b2, _ := json.Marshal(again); !bytes.Equal(b2, mb) {
			t.Fatalf("round trip changed the manifest:\n%s\n%s", mb, b2)
		}
	})
}
