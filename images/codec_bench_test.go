package images

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// BenchmarkCodecs measures, without CRIU, what each compression costs
// on pages like the bench's memory job (a quarter zeros, half text, a
// quarter random): cr's EntryWriter (hashing included, as a streamed dump
// does it) on one lane and on every CPU, and for reference the libraries'
// own stream encoders and SHA-256 alone. MB/s is the input's over the
// wall time, MB/cpu-s over the CPU time the process used (steadier on a
// shared machine); ratio is input over output.
//
//	go test -run '^$' -bench Codecs -benchtime 8x ./images
func BenchmarkCodecs(b *testing.B) {
	data := pagesLike(64 << 20)
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer null.Close()
	lanes := []int{1, runtime.NumCPU()}
	for _, comp := range []string{CompressionZstd, CompressionS2, CompressionNone} {
		for _, n := range lanes {
			b.Run(fmt.Sprintf("cr=%s/lanes=%d", comp, n), func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				var stored int64
				cpu := cpuTime()
				for b.Loop() {
					w, err := NewEntryWriter(null, "pages-1.img", 0o644, comp, n)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := w.ReadFrom(bytes.NewReader(data)); err != nil {
						b.Fatal(err)
					}
					if err := w.Close(); err != nil {
						b.Fatal(err)
					}
					stored = w.Entry().Stored
				}
				reportCPU(b, cpu, len(data))
				b.ReportMetric(float64(len(data))/float64(stored), "ratio")
			})
		}
	}
	ref := map[string]func(w io.Writer, n int) io.WriteCloser{
		"zstd-stream": func(w io.Writer, n int) io.WriteCloser {
			e, _ := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(n),
				zstd.WithConcurrentBlocks(n > 1), zstd.WithEncoderCRC(true))
			return e
		},
		"s2-stream": func(w io.Writer, n int) io.WriteCloser { return s2.NewWriter(w, s2.WriterConcurrency(n)) },
		"s2-better-stream": func(w io.Writer, n int) io.WriteCloser {
			return s2.NewWriter(w, s2.WriterConcurrency(n), s2.WriterBetterCompression())
		},
	}
	for _, name := range []string{"zstd-stream", "s2-stream", "s2-better-stream"} {
		for _, n := range lanes {
			b.Run(fmt.Sprintf("ref=%s/lanes=%d", name, n), func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				out := &countWriter{w: io.Discard}
				cpu := cpuTime()
				for b.Loop() {
					out.n = 0
					w := ref[name](out, n)
					if _, err := io.Copy(w, bytes.NewReader(data)); err != nil {
						b.Fatal(err)
					}
					if err := w.Close(); err != nil {
						b.Fatal(err)
					}
				}
				reportCPU(b, cpu, len(data))
				b.ReportMetric(float64(len(data))/float64(out.n), "ratio")
			})
		}
	}
	b.Run("ref=sha256", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		cpu := cpuTime()
		for b.Loop() {
			sha256.Sum256(data)
		}
		reportCPU(b, cpu, len(data))
	})
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, since time.Duration, n int) {
	if d := cpuTime() - since; d > 0 {
		b.ReportMetric(float64(n)*float64(b.N)/1e6/d.Seconds(), "MB/cpu-s")
	}
}
