package criuimg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/checkpoint-restore/go-criu/v7/magic"
	"google.golang.org/protobuf/proto"
)

// maxImageFile bounds the size of one image file that Read loads into
// memory. The files it reads hold metadata (a pagemap of a huge, fragmented
// address space is the largest); page contents are never read.
const maxImageFile = 1 << 30

// magics maps CRIU's image magic names to their values.
var magics = sync.OnceValue(func() map[string]uint64 { return magic.LoadMagic().ByName })

// errMissing marks an image file that does not exist.
var errMissing = errors.New("missing")

// rawEntries returns the payloads of the entries of the image file name in
// dir, whose magic must be want ("PSTREE", "CORE", ...). An image file is
// an optional common magic (IMG_COMMON or IMG_SERVICE), the file's own
// magic, then entries of a little-endian uint32 size and that many bytes of
// protobuf. Unlike crit's decoder it checks every size against the file
// before using it.
func rawEntries(dir, name, want string) ([][]byte, error) {
	b, err := readBounded(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadImage, name, errMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadImage, name, fmt.Sprintf(format, a...))
	}
	m := magics()
	if len(b) < 4 {
		return nil, bad("no magic")
	}
	v := uint64(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if v == m["IMG_COMMON"] || v == m["IMG_SERVICE"] {
		if len(b) < 4 {
			return nil, bad("no magic")
		}
		v = uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
	}
	if v != m[want] {
		return nil, bad("magic %#x, want %s", v, want)
	}
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, bad("truncated entry size")
		}
		n := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return nil, bad("entry of %d bytes, %d left", n, len(b))
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out, nil
}

func readBounded(p string) ([]byte, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", fi.Name())
	}
	if fi.Size() > maxImageFile {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", fi.Name(), fi.Size(), maxImageFile)
	}
	return os.ReadFile(p)
}

// entries decodes every entry of the image file name into a new T.
func entries[T proto.Message](dir, name, want string, newT func() T) ([]T, error) {
	raw, err := rawEntries(dir, name, want)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(raw))
	for i, r := range raw {
		m := newT()
		if err := proto.Unmarshal(r, m); err != nil {
			return nil, fmt.Errorf("%w: %s: entry %d: %v", ErrBadImage, name, i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// one decodes an image file that holds exactly one entry.
func one[T proto.Message](dir, name, want string, newT func() T) (T, error) {
	es, err := entries(dir, name, want, newT)
	if err != nil {
		var zero T
		return zero, err
	}
	if len(es) != 1 {
		var zero T
		return zero, fmt.Errorf("%w: %s: %d entries, want 1", ErrBadImage, name, len(es))
	}
	return es[0], nil
}
