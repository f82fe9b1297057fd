package cmd

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progress shows how a long operation (checkpoint, restore, migrate,
// snapshot) advances: on a terminal, one line on stderr that rewrites
// itself, "writing /lab: 120.0MiB of 480.0MiB (25%), 310.2MiB/s"; nothing
// when stderr is not a terminal, under --json or with -q. Its methods may
// be called from any goroutine.
type progress struct {
	w  io.Writer
	on bool

	mu    sync.Mutex
	label string
	total int64 // 0: unknown
	start time.Time
	last  time.Time // of the last line shown
	shown bool
}

// progressInterval is the least time between two lines.
const progressInterval = 100 * time.Millisecond

func newProgress(w io.Writer, g *Global, asJSON bool) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, on: ok && !asJSON && !g.Quiet && isTerminal(f)}
}

// phase starts a phase of the operation: label says what is done, total
// how many bytes it will take (0 when unknown).
func (p *progress) phase(label string, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.label, p.total, p.start, p.last = label, total, time.Now(), time.Time{}
}

// update says that done bytes of the phase are done.
func (p *progress) update(done int64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.show(done)
}

// updateOf is update that also sets the phase's total.
func (p *progress) updateOf(done, total int64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total = total
	p.show(done)
}

func (p *progress) show(done int64) {
	now := time.Now()
	if now.Sub(p.last) < progressInterval {
		return
	}
	p.last, p.shown = now, true
	fmt.Fprint(p.w, "\r\x1b[K"+progressLine(p.label, done, p.total, now.Sub(p.start)))
}

// done clears the line.
func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

// reader returns r, reporting the bytes read from it as the phase's
// progress.
func (p *progress) reader(r io.Reader) io.Reader {
	if !p.on {
		return r
	}
	return &progressReader{r: r, p: p}
}

type progressReader struct {
	r    io.Reader
	p    *progress
	done int64
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.done += int64(n)
	r.p.update(r.done)
	return n, err
}

// progressLine is what update shows.
func progressLine(label string, done, total int64, elapsed time.Duration) string {
	s := label + ": " + humanBytes(done)
	if total > 0 {
		pct := min(100*done/total, 100)
		s += fmt.Sprintf(" of %s (%d%%)", humanBytes(total), pct)
	}
	if secs := elapsed.Seconds(); secs > 0 {
		s += fmt.Sprintf(", %s/s", humanBytes(int64(float64(done)/secs)))
	}
	return s
}

// verbosef prints one line on w with -v.
func (g *Global) verbosef(w io.Writer, format string, a ...any) {
	if g.Verbose {
		fmt.Fprintf(w, "cr: "+format+"\n", a...)
	}
}
