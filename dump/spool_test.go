package dump

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// A producer that writes far more than the spool's memory never waits for
// a slow consumer; the consumer gets every byte in order, the overflow
// went through the file, and memory stayed within its bound.
func TestSpoolNeverBlocksTheProducer(t *testing.T) {
	want := make([]byte, 10<<20)
	rand.Read(want)
	dir := t.TempDir()
	files := 0
	s := newSpool(1<<20, func() (*os.File, error) {
		files++
		f, err := os.CreateTemp(dir, "spool-")
		if err == nil {
			os.Remove(f.Name())
		}
		return f, err
	})
	got := make(chan []byte)
	release := make(chan struct{})
	go func() {
		<-release // the consumer starts only once the producer is done
		var b bytes.Buffer
		buf := make([]byte, 300<<10)
		for {
			n, err := s.Read(buf)
			b.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Error(err)
				break
			}
		}
		got <- b.Bytes()
	}()
	for off := 0; off < len(want); off += 256 << 10 {
		if _, err := s.Write(want[off : off+256<<10]); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if s.mem > 1<<20 {
		t.Errorf("%d bytes in memory, bound 1 MiB", s.mem)
	}
	close(release)
	select {
	case b := <-got:
		if !bytes.Equal(b, want) {
			t.Errorf("the consumer read %d bytes, not the %d written in order", len(b), len(want))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("consumer did not finish")
	}
	if files != 1 || s.peakBytes() != int64(len(want)) {
		t.Errorf("%d spill files, peak %d", files, s.peakBytes())
	}
	s.release()
}

// A consumer that gives up makes the producer's next write fail, and a
// consumer waiting for data is woken by it.
func TestSpoolFail(t *testing.T) {
	s := newSpool(1<<20, func() (*os.File, error) { return nil, errors.New("no file") })
	done := make(chan error)
	go func() {
		_, err := s.Read(make([]byte, 10))
		done <- err
	}()
	boom := errors.New("boom")
	s.fail(boom)
	if err := <-done; !errors.Is(err, boom) {
		t.Errorf("Read = %v", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, boom) {
		t.Errorf("Write = %v", err)
	}
	s2 := newSpool(4, func() (*os.File, error) { return nil, errors.New("no file") })
	if _, err := s2.Write([]byte("12345")); err == nil || err.Error() != "no file" {
		t.Errorf("overflow without a file: %v", err)
	}
}

// A pipe spliced into the spool arrives whole and in order, and the
// bytes are counted as they come.
func TestSpoolReadFromPipe(t *testing.T) {
	want := make([]byte, 5<<20+123)
	rand.Read(want)
	dir := t.TempDir()
	s := newSpool(0, func() (*os.File, error) { return os.CreateTemp(dir, "spool-") })
	var count atomic.Int64
	s.count = &count
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		w.Write(want)
		w.Close()
	}()
	n, err := s.ReadFromPipe(r)
	r.Close()
	if err != nil || n != int64(len(want)) || count.Load() != n {
		t.Fatalf("ReadFromPipe = %d, %v (counted %d), want %d", n, err, count.Load(), len(want))
	}
	s.Close()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("read back %d bytes (%v), not the %d written", len(got), err, len(want))
	}
	s.release()
}
