package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"

	"github.com/minio/minio-go/v7"
)

// Upload tuning: parts of PartSize, Threads of them in flight (so memory
// is about PartSize*Threads).
var (
	PartSize uint64 = 16 << 20
	Threads  uint   = 4
)

// Writer streams one object through a multipart upload: parts go up in
// parallel while the caller writes, and the object appears only when Commit
// completes the upload. Abort (or any failure) aborts it: no object, no
// parts left. A process killed mid-upload leaves an incomplete upload,
// which is no object; the next Writer of the same key aborts it.
type Writer struct {
	c    *Client
	key  string
	pw   *io.PipeWriter
	done chan struct{}
	info minio.UploadInfo
	err  error
	n    int64
	once sync.Once
}

// Create starts writing key. It fails at once with fs.ErrExist wrapped
// when the key exists and overwrite is false.
func (c *Client) Create(ctx context.Context, key string, overwrite bool) (*Writer, error) {
	if !overwrite {
		if err := c.CheckAbsent(ctx, key); err != nil {
			return nil, err
		}
	}
	// What a killed writer of this key left is garbage now.
	_ = c.mc.RemoveIncompleteUpload(ctx, c.bucket, key)
	pr, pw := io.Pipe()
	w := &Writer{c: c, key: key, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.info, w.err = c.mc.PutObject(ctx, c.bucket, key, pr, -1, minio.PutObjectOptions{
			ContentType: "application/octet-stream", PartSize: PartSize, NumThreads: Threads,
			ConcurrentStreamParts: true,
		})
		// A failed upload stops the writer too.
		pr.CloseWithError(errors.Join(w.err, errUploadEnded))
	}()
	return w, nil
}

var errUploadEnded = errors.New("upload ended")

// CheckAbsent fails with fs.ErrExist wrapped when key exists.
func (c *Client) CheckAbsent(ctx context.Context, key string) error {
	_, err := c.Stat(ctx, key)
	if err == nil {
		return fmt.Errorf("%s%s/%s: %w", Scheme, c.bucket, key, fs.ErrExist)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.pw.Write(p)
	w.n += int64(n)
	if err != nil {
		<-w.done
		if w.err != nil {
			return n, w.c.wrap(context.Background(), "upload", w.key, w.err)
		}
	}
	return n, err
}

// Commit completes the upload: the object exists once it returns nil
// (and a later Abort does nothing).
func (w *Writer) Commit() error {
	w.pw.Close()
	<-w.done
	if w.err != nil {
		return w.c.wrap(context.Background(), "upload", w.key, w.err)
	}
	if w.info.Size != w.n {
		w.Abort()
		return fmt.Errorf("upload %s: %d bytes stored of %d written", w.key, w.info.Size, w.n)
	}
	w.once.Do(func() {}) // committed: Abort is a no-op now
	return nil
}

// Abort ends the upload without an object: the parts sent are discarded.
// After a successful Commit it does nothing.
func (w *Writer) Abort() {
	w.once.Do(func() {
		w.pw.CloseWithError(errAborted)
		<-w.done
		if w.err == nil {
			// The upload completed before the abort reached it (all was
			// written): the caller did not want it.
			ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
			defer cancel()
			w.c.Remove(ctx, w.key)
		}
	})
}

var errAborted = errors.New("upload aborted")

// Reader reads one object from start to end, fetching ranges of it in
// parallel ahead of the caller.
type Reader struct {
	c      *Client
	key    string
	size   int64
	ctx    context.Context
	cancel context.CancelFunc
	parts  chan chan part
	cur    []byte
	err    error
}

type part struct {
	b   []byte
	err error
}

// Download tuning: ranges of ReadPart bytes, ReadAhead of them in flight.
var (
	ReadPart  int64 = 8 << 20
	ReadAhead       = 4
)

// Open starts reading key; fs.ErrNotExist wrapped when there is none.
func (c *Client) Open(ctx context.Context, key string) (*Reader, error) {
	size, err := c.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &Reader{c: c, key: key, size: size, ctx: ctx, cancel: cancel, parts: make(chan chan part, ReadAhead)}
	go r.fetch()
	return r, nil
}

// Size is the object's size.
func (r *Reader) Size() int64 { return r.size }

func (r *Reader) fetch() {
	defer close(r.parts)
	sem := make(chan struct{}, ReadAhead)
	for off := int64(0); off < r.size; off += ReadPart {
		ch := make(chan part, 1)
		select {
		case sem <- struct{}{}:
		case <-r.ctx.Done():
			return
		}
		select {
		case r.parts <- ch:
		case <-r.ctx.Done():
			return
		}
		end := min(off+ReadPart, r.size) - 1
		go func() {
			defer func() { <-sem }()
			ch <- r.getRange(off, end)
		}()
	}
}

func (r *Reader) getRange(off, end int64) part {
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, end); err != nil {
		return part{err: err}
	}
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		obj, err := r.c.mc.GetObject(r.ctx, r.c.bucket, r.key, opts)
		if err == nil {
			b := make([]byte, end-off+1)
			_, err = io.ReadFull(obj, b)
			obj.Close()
			if err == nil {
				return part{b: b}
			}
		}
		last = err
		if r.ctx.Err() != nil {
			break
		}
	}
	return part{err: r.c.wrap(r.ctx, "download", r.key, last)}
}

func (r *Reader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		ch, ok := <-r.parts
		if !ok {
			r.err = io.EOF
			if r.ctx.Err() != nil {
				r.err = r.ctx.Err()
			}
			continue
		}
		pt := <-ch
		if pt.err != nil {
			r.err = pt.err
			continue
		}
		r.cur = pt.b
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close stops the downloads.
func (r *Reader) Close() error {
	r.cancel()
	for ch := range r.parts {
		<-ch
	}
	return nil
}
