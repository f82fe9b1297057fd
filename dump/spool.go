package dump

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// spool sits between CRIU's pipe and the compressor when the source runs
// on after the dump (--leave-running): CRIU's writes never wait for the
// compressor, so the tasks are let go as soon as CRIU has written
// everything. The streamer hands it CRIU's pipe (ReadFromPipe), which it
// splices into file (unlinked, beside staging: tmpfs where /run is); a
// writer that has only bytes (Write) is held in memory up to memLimit,
// the rest in file too. The compressor (Read) takes it all in order and
// punches out of file what it has taken. The producer is one goroutine,
// the consumer another.
type spool struct {
	memLimit int64
	file     *os.File // unlinked; nil until needed
	newFile  func() (*os.File, error)

	mu     sync.Mutex
	cond   *sync.Cond
	segs   []segment
	mem    int64 // bytes held in memory
	woff   int64 // end of what was written to file
	closed bool  // by the producer: EOF after segs
	err    error // of the consumer: the producer's writes fail with it
	peak   int64 // most bytes held at once, memory and file
	held   int64
	count  *atomic.Int64 // if set, counts every byte received
}

// segment is a piece of the stream: in memory (b) or in the file at off.
type segment struct {
	b   []byte
	off int64
	n   int64
}

func newSpool(memLimit int64, newFile func() (*os.File, error)) *spool {
	s := &spool{memLimit: memLimit, newFile: newFile}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Write queues p: into memory while there is room, else into the file.
func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.err != nil {
		defer s.mu.Unlock()
		return 0, s.err
	}
	if s.mem+int64(len(p)) <= s.memLimit {
		s.segs = append(s.segs, segment{b: append([]byte(nil), p...), n: int64(len(p))})
		s.mem += int64(len(p))
		s.grew(int64(len(p)))
		s.mu.Unlock()
		return len(p), nil
	}
	if err := s.openFile(); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	off := s.woff
	s.mu.Unlock()
	// Only this goroutine writes past woff; the consumer reads below it.
	n, err := s.file.WriteAt(p, off)
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > 0 {
		if k := len(s.segs) - 1; k >= 0 && s.segs[k].b == nil && s.segs[k].off+s.segs[k].n == off {
			s.segs[k].n += int64(n)
		} else {
			s.segs = append(s.segs, segment{off: off, n: int64(n)})
		}
		s.woff += int64(n)
		s.grew(int64(n))
	}
	return n, err
}

// openFile creates the spool's file the first time a write needs it
// (Write past the memory limit, or ReadFromPipe); s.mu is held.
func (s *spool) openFile() error {
	if s.file != nil {
		return nil
	}
	f, err := s.newFile()
	if err != nil {
		return err
	}
	s.file = f
	return nil
}

// ReadFromPipe moves the pipe's content into the spool's file with
// splice(2), a copy inside the kernel, as fast as CRIU writing to tmpfs
// itself.
func (s *spool) ReadFromPipe(pipe *os.File) (int64, error) {
	s.mu.Lock()
	if err := s.openFile(); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	dst := int(s.file.Fd())
	s.mu.Unlock()
	rc, err := pipe.SyscallConn()
	if err != nil {
		return 0, err
	}
	var total int64
	for {
		if err := s.failed(); err != nil {
			return total, err
		}
		var n int64
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			off := s.woffNow()
			n, serr = unix.Splice(int(fd), nil, dst, &off, 1<<20, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			return serr != unix.EAGAIN
		})
		if err == nil {
			err = serr
		}
		if n > 0 {
			total += n
			s.mu.Lock()
			off := s.woff
			if k := len(s.segs) - 1; k >= 0 && s.segs[k].b == nil && s.segs[k].off+s.segs[k].n == off {
				s.segs[k].n += n
			} else {
				s.segs = append(s.segs, segment{off: off, n: n})
			}
			s.woff += n
			s.grew(n)
			s.mu.Unlock()
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil // the pipe ended
		}
	}
}

func (s *spool) woffNow() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.woff
}

func (s *spool) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *spool) grew(n int64) {
	if s.count != nil {
		s.count.Add(n)
	}
	s.held += n
	s.peak = max(s.peak, s.held)
	s.cond.Broadcast()
}

// Close ends the stream: Read returns io.EOF once it has taken the rest.
func (s *spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.cond.Broadcast()
	return nil
}

// Read takes the next bytes of the stream, waiting for them.
func (s *spool) Read(p []byte) (int, error) {
	s.mu.Lock()
	for len(s.segs) == 0 && !s.closed && s.err == nil {
		s.cond.Wait()
	}
	if s.err != nil {
		defer s.mu.Unlock()
		return 0, s.err
	}
	if len(s.segs) == 0 {
		s.mu.Unlock()
		return 0, io.EOF
	}
	seg := &s.segs[0]
	if seg.b != nil {
		n := copy(p, seg.b)
		seg.b, seg.n = seg.b[n:], seg.n-int64(n)
		s.mem -= int64(n)
		s.consumed(int64(n))
		s.mu.Unlock()
		return n, nil
	}
	off, want := seg.off, min(int64(len(p)), seg.n)
	f := s.file
	s.mu.Unlock()
	n, err := f.ReadAt(p[:want], off)
	if n > 0 {
		// Give tmpfs its pages back; only an optimization.
		_ = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, int64(n))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seg = &s.segs[0]
	seg.off, seg.n = seg.off+int64(n), seg.n-int64(n)
	s.consumed(int64(n))
	if err == io.EOF && n == int(want) {
		err = nil
	}
	return n, err
}

// consumed drops the head segment once it is empty (s.mu held).
func (s *spool) consumed(n int64) {
	s.held -= n
	if s.segs[0].n == 0 {
		s.segs = s.segs[1:]
	}
}

// fail makes the producer's writes fail (the consumer gave up) and
// releases the file.
func (s *spool) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
	s.cond.Broadcast()
}

// peakBytes is the most the spool held at once.
func (s *spool) peakBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// release closes the file; after the consumer is done.
func (s *spool) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	s.segs = nil
}

var errSpoolAbandoned = errors.New("compression abandoned")
