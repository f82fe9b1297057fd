package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Stream reads an image as it arrives, for a restore that begins before
// the whole image is read: a version 2 image has its manifest first, so
// that a reader knows every entry, its size and its checksum before any
// content (docs/image-format.md). Each entry is checked against the
// manifest as it ends; the end of the archive once the last one is read.
// Every check is the one Extract makes: a caller that used content before
// the end must still see Next return io.EOF (the whole image verified)
// before it trusts any of it.
//
// A Stream is not safe for concurrent use.
type Stream struct {
	rd  *reader
	cur *entryReader // the entry Next returned last, until read to its end
}

// OpenStream reads the head of the image read from r: cr-image.json and,
// for version 2, the manifest and its trailer, checked against l (before
// any content: an image over the limits is refused at once). A version 1
// image has no manifest until its end: Manifest then returns nil, and only
// ExtractAll reads it.
func OpenStream(ctx context.Context, r io.Reader, l Limits) (*Stream, error) {
	rd, err := openReader(ctx, r, l, nil)
	if err != nil {
		return nil, fmt.Errorf("read image: %w", err)
	}
	if rd.version >= 2 {
		if err := rd.readHead(); err != nil {
			rd.close()
			return nil, fmt.Errorf("read image: %w", err)
		}
	}
	return &Stream{rd: rd}, nil
}

// Version is the image's format version.
func (s *Stream) Version() int { return s.rd.version }

// Manifest is the image's manifest, verified against its trailer (nil for
// a version 1 image before ExtractAll).
func (s *Stream) Manifest() *Manifest { return s.rd.m }

// Close releases the decoder. It does not close the reader.
func (s *Stream) Close() { s.rd.close() }

// ExtractAll reads the rest of the image into dst, an existing empty
// directory, as Extract does, and returns the manifest. On error dst is
// left empty.
func (s *Stream) ExtractAll(dst string) (*Manifest, error) {
	m, err := s.extract(dst, func(File) bool { return true }, true)
	if err != nil {
		return nil, fmt.Errorf("extract image: %w", err)
	}
	return m, nil
}

// ExtractWhile reads the entries of a version 2 image into dst (an
// existing empty directory) for as long as keep says so of the next one,
// and stops before the first it refuses, which Next then returns. The
// directories get their modes when it stops. On error dst is left empty.
func (s *Stream) ExtractWhile(dst string, keep func(File) bool) error {
	if s.rd.version < 2 {
		return errors.New("extract image: a version 1 image is extracted whole")
	}
	if _, err := s.extract(dst, keep, false); err != nil {
		return fmt.Errorf("extract image: %w", err)
	}
	return nil
}

func (s *Stream) extract(dst string, keep func(File) bool, all bool) (*Manifest, error) {
	if s.cur != nil {
		return nil, errors.New("an entry is being read")
	}
	root, err := openEmptyRoot(dst)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	rd := s.rd
	rd.out = &dirSink{root: root}
	defer func() { rd.out = nil }()
	fail := func(err error) (*Manifest, error) {
		if cerr := empty(root); cerr != nil {
			return nil, errors.Join(err, fmt.Errorf("empty %s: %w", dst, cerr))
		}
		return nil, err
	}
	if rd.version < 2 {
		m, err := rd.readEntries()
		if err != nil {
			return fail(err)
		}
		rd.m = m
		return m, nil
	}
	for rd.next < len(rd.m.Files) && keep(rd.m.Files[rd.next]) {
		if err := rd.ctx.Err(); err != nil {
			return fail(err)
		}
		if err := rd.entryV2(); err != nil {
			return fail(err)
		}
	}
	if all {
		if err := rd.endV2(); err != nil {
			return fail(err)
		}
		return rd.m, nil
	}
	if err := rd.out.finish(rd.order); err != nil {
		return fail(err)
	}
	return rd.m, nil
}

// Next returns the next entry of a version 2 image and a reader of its
// content, after reading what is left of the previous one. The reader
// checks the content against the manifest at its end: it returns an
// error wrapping ErrCorrupt instead of io.EOF if the checksum differs.
// After the last entry Next checks the end of the archive and returns
// io.EOF: only then is the whole image verified.
func (s *Stream) Next() (File, io.Reader, error) {
	rd := s.rd
	if rd.version < 2 {
		return File{}, nil, errors.New("read image: a version 1 image is extracted whole")
	}
	if s.cur != nil {
		if _, err := io.CopyBuffer(io.Discard, onlyReaderW{s.cur}, rd.buf); err != nil {
			return File{}, nil, err
		}
		s.cur = nil
	}
	if err := rd.ctx.Err(); err != nil {
		return File{}, nil, err
	}
	if rd.next >= len(rd.m.Files) {
		if err := rd.endV2(); err != nil {
			return File{}, nil, fmt.Errorf("read image: %w", err)
		}
		return File{}, nil, io.EOF
	}
	f, err := rd.nextV2()
	if err != nil {
		return File{}, nil, fmt.Errorf("read image: %w", err)
	}
	if f.Dir {
		rd.record(f)
		return f, eofReader{}, nil
	}
	s.cur = &entryReader{rd: rd, f: f, left: f.Size, h: sha256.New()}
	return f, s.cur, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// entryReader reads one entry's content and checks it at its end.
type entryReader struct {
	rd   *reader
	f    File
	left int64
	h    hash.Hash
	err  error // sticky: io.EOF once checked, or the failure
}

func (e *entryReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left == 0 {
		if sum := hex.EncodeToString(e.h.Sum(nil)); sum != e.f.SHA256 {
			e.err = fmt.Errorf("read image: %w: %s: sha256 mismatch", ErrCorrupt, e.f.Name)
			return 0, e.err
		}
		e.rd.record(e.f)
		e.err = io.EOF
		return 0, io.EOF
	}
	if err := e.rd.ctx.Err(); err != nil {
		e.err = err
		return 0, err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.rd.tr.Read(p)
	e.h.Write(p[:n])
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		e.err = fmt.Errorf("read image: %w", e.rd.fail(e.f.Name, err))
		return n, e.err
	}
	return n, nil
}

// hashLanes is how many chunks of an entry may wait for the hasher.
const hashLanes = 4

// WriteTo copies the rest of the entry into w (io.Copy uses it), hashing
// on a goroutine of its own, so that the checksum, the costliest part of
// reading an image (SHA-256), overlaps with decompressing and writing.
// If w fails (CRIU closed its pipe: it read what it wanted), the rest is
// still read and checked; the checksum's failure is returned first, then
// w's.
func (e *entryReader) WriteTo(w io.Writer) (int64, error) {
	if e.err != nil {
		if e.err == io.EOF {
			return 0, nil
		}
		return 0, e.err
	}
	free := make(chan []byte, hashLanes)
	for range hashLanes {
		free <- make([]byte, 1<<20)
	}
	todo := make(chan []byte, hashLanes)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range todo {
			e.h.Write(b)
			free <- b[:cap(b)]
		}
	}()
	var n int64
	var werr, rerr error
	for e.left > 0 {
		if rerr = e.rd.ctx.Err(); rerr != nil {
			break
		}
		b := <-free
		k, err := io.ReadFull(e.rd.tr, b[:min(int64(len(b)), e.left)])
		e.left -= int64(k)
		if werr == nil && k > 0 {
			var m int
			m, werr = w.Write(b[:k])
			n += int64(m)
		}
		todo <- b[:k]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			rerr = fmt.Errorf("read image: %w", e.rd.fail(e.f.Name, err))
			break
		}
	}
	close(todo)
	<-hashed
	if rerr != nil {
		e.err = rerr
		return n, rerr
	}
	if _, err := e.Read(nil); err != io.EOF { // the check at the end
		return n, err
	}
	return n, werr
}
