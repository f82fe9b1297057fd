package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"google.golang.org/protobuf/proto"
)

// A version 2 image read as a stream: the small entries extracted, the
// pages read one by one in the order a restore wants them, each checked.
func TestStreamPagesLast(t *testing.T) {
	files, dirs := testStaging()
	// pages-10 comes after pages-2 (by number, as CRIU restores them).
	files = append(files, stagingFile{"checkpoint/pages-10.img", 0o600, []byte("tenth")})
	src := makeStaging(t, files, dirs)
	for _, comp := range []string{CompressionZstd, CompressionS2, CompressionNone} {
		t.Run(comp, func(t *testing.T) {
			b := archiveBytes(t, src, testManifest(), comp)
			s, err := OpenStream(context.Background(), bytes.NewReader(b), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.Version() != 2 || s.Manifest() == nil {
				t.Fatalf("version %d, manifest %v", s.Version(), s.Manifest() != nil)
			}
			dst := t.TempDir()
			if err := s.ExtractWhile(dst, func(f File) bool { return !IsPages(f.Name) }); err != nil {
				t.Fatal(err)
			}
			want := map[string][]byte{}
			for _, f := range files {
				want[f.name] = f.data
			}
			for name, data := range want {
				got, err := os.ReadFile(filepath.Join(dst, name))
				switch {
				case IsPages(name) && err == nil:
					t.Errorf("%s extracted with the small entries", name)
				case !IsPages(name) && (err != nil || !bytes.Equal(got, data)):
					t.Errorf("%s: %v, content equal %v", name, err, bytes.Equal(got, data))
				}
			}
			var order []string
			for {
				f, r, err := s.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(r)
				if err != nil {
					t.Fatalf("%s: %v", f.Name, err)
				}
				if !bytes.Equal(got, want[f.Name]) {
					t.Errorf("%s: content differs", f.Name)
				}
				order = append(order, f.Name)
			}
			wantOrder := "checkpoint/pages-1.img checkpoint/pages-2.img checkpoint/pages-10.img containers/1/checkpoint/pages-1.img"
			if strings.Join(order, " ") != wantOrder {
				t.Errorf("pages in order %v, want %s", order, wantOrder)
			}
		})
	}
}

// One flipped byte in a pages entry: its reader fails at its end with the
// entry's name, never io.EOF; an entry skipped by the reader is checked
// too (by Next, on its way to the next one).
func TestStreamFlippedPageByte(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	b := archiveBytes(t, src, testManifest(), CompressionNone)
	// The first pages entry's content: find the heap text it starts with.
	i := bytes.Index(b, []byte("heap object 0123456789"))
	if i < 0 {
		t.Fatal("no pages content found")
	}
	b[i+100] ^= 1
	for _, how := range []string{"read", "copy", "skip"} {
		s, err := OpenStream(context.Background(), bytes.NewReader(b), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ExtractWhile(t.TempDir(), func(f File) bool { return !IsPages(f.Name) }); err != nil {
			t.Fatal(err)
		}
		f, r, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		switch how {
		case "read":
			_, err = io.ReadAll(r)
		case "copy": // WriteTo, hashing on its own goroutine
			_, err = io.Copy(io.Discard, r)
		default:
			_, _, err = s.Next()
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), f.Name+": sha256 mismatch") {
			t.Errorf("%s: got %v, want a checksum failure of %s", how, err, f.Name)
		}
		s.Close()
	}
}

// A version 1 image (the manifest last) is still read whole by ExtractAll.
func TestStreamVersion1(t *testing.T) {
	b := craft(t, []craftEntry{dir("checkpoint"), reg("checkpoint/pages-1.img", []byte("pages"))}, craftOptions{v1: true})
	s, err := OpenStream(context.Background(), bytes.NewReader(b), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Version() != 1 || s.Manifest() != nil {
		t.Fatalf("version %d, manifest before the end %v", s.Version(), s.Manifest() != nil)
	}
	if _, _, err := s.Next(); err == nil {
		t.Error("Next on a version 1 image")
	}
	dst := t.TempDir()
	m, err := s.ExtractAll(dst)
	if err != nil || m.Version != 1 {
		t.Fatalf("%v, manifest %+v", err, m)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "checkpoint/pages-1.img")); string(got) != "pages" {
		t.Errorf("extracted %q", got)
	}
}

// The pages image of SysV shared memory (which a pagemap-shmem image
// points to) comes first: CRIU restores it with the IPC namespace, before
// any process's memory.
func TestStreamOrderSharedMemoryFirst(t *testing.T) {
	head, err := proto.Marshal(&pagemap.PagemapHead{PagesId: proto.Uint32(5)})
	if err != nil {
		t.Fatal(err)
	}
	img := binary.LittleEndian.AppendUint32(nil, 0x56084025) // PAGEMAP_MAGIC
	img = binary.LittleEndian.AppendUint32(img, uint32(len(head)))
	img = append(img, head...)
	files := []stagingFile{{"checkpoint/pagemap-shmem-0.img", 0o600, img}}
	for _, n := range []string{"1", "2", "5", "10"} {
		files = append(files, stagingFile{"checkpoint/pages-" + n + ".img", 0o600, []byte("pages " + n)})
	}
	m := testManifest()
	m.Containers = m.Containers[:1]
	b := archiveBytes(t, makeStaging(t, files, []string{"checkpoint"}), m, CompressionNone)
	s, err := OpenStream(context.Background(), bytes.NewReader(b), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var order []string
	for _, f := range s.Manifest().Files {
		if IsPages(f.Name) {
			order = append(order, path.Base(f.Name))
		}
	}
	if got := strings.Join(order, " "); got != "pages-5.img pages-1.img pages-2.img pages-10.img" {
		t.Errorf("pages in the order %s", got)
	}
}
