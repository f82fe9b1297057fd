package rootfs

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// DigestPrefix starts every tree digest.
const DigestPrefix = "sha256:"

// Digest is the content digest of the tree at dir: the sha256 of one line
// per entry, in lexical walk order (parents first), of
//
//	name NUL type mode uid gid size NUL content NUL xattrs NUL "\n"
//
// where type is one of d f l h c b p, mode the octal permission and set-id
// bits, content the hex sha256 of a regular file's bytes (holes read as
// zeros), a symbolic link's target, a hard link's first name, or a device's
// "major,minor", and xattrs the sorted name=hex(value) pairs separated by
// commas. Modification times are left out: a copy of the tree (cp -r,
// an unpacked archive) has the same digest. Two trees with the same digest
// hold the same files, so a lower layer is named by it.
func Digest(dir string) (string, error) {
	h := sha256.New()
	links := map[[2]uint64]string{}
	err := walkTree(dir, func(rel, p string, s *unix.Stat_t) error {
		typ, content, size := "", "", int64(0)
		switch s.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			typ = "d"
		case unix.S_IFLNK:
			typ = "l"
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			content = t
		case unix.S_IFCHR, unix.S_IFBLK:
			typ = map[uint32]string{unix.S_IFCHR: "c", unix.S_IFBLK: "b"}[s.Mode&unix.S_IFMT]
			content = fmt.Sprintf("%d,%d", unix.Major(s.Rdev), unix.Minor(s.Rdev))
		case unix.S_IFIFO:
			typ = "p"
		case unix.S_IFREG:
			key := [2]uint64{s.Dev, s.Ino}
			if first, ok := links[key]; ok && s.Nlink > 1 {
				typ, content = "h", first
				break
			}
			links[key] = rel
			typ, size = "f", s.Size
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			fh := sha256.New()
			_, err = io.Copy(fh, f)
			f.Close()
			if err != nil {
				return err
			}
			content = hex.EncodeToString(fh.Sum(nil))
		default:
			return fmt.Errorf("%s: a socket in a root file system", p)
		}
		xs, err := xattrLine(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%s %o %d %d %d\x00%s\x00%s\x00\n", rel, typ, s.Mode&0o7777, s.Uid, s.Gid, size, content, xs)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("digest of %s: %w", dir, err)
	}
	return DigestPrefix + hex.EncodeToString(h.Sum(nil)), nil
}

func xattrLine(p string) (string, error) {
	var th tar.Header
	if err := readXattrs(p, &th); err != nil {
		return "", err
	}
	var parts []string
	for k, v := range th.PAXRecords {
		parts = append(parts, strings.TrimPrefix(k, paxXattr)+"="+hex.EncodeToString([]byte(v)))
	}
	sort.Strings(parts)
	return strings.Join(parts, ","), nil
}

// ValidDigest reports whether d is a digest as Digest writes it.
func ValidDigest(d string) bool {
	x, ok := strings.CutPrefix(d, DigestPrefix)
	if !ok || len(x) != 64 {
		return false
	}
	_, err := hex.DecodeString(x)
	return err == nil && strings.ToLower(x) == x
}
