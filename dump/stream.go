package dump

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cr-dev/cr/criubin/streamer"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/scratch"
)

// spillPrefix names the directory, beside the staging dir, that holds the
// pages of a streamed dump, compressed (see package scratch).
const spillPrefix = "ckpt-pages-"

// streamState is what a streamed dump adds to a Checkpoint: the
// compressed pages, outside the staging dir.
type streamState struct {
	spill    *scratch.Entry
	raw      atomic.Int64 // pages bytes received so far
	mu       sync.Mutex
	pre      []images.Precompressed
	nextFile int
	// With LeaveRunning: the compressors behind a spool each, still
	// running once CRIU is done.
	compressors sync.WaitGroup
	spools      []*spool
	err         error // the first compressor's failure
	peakSpooled int64
	gate        chan struct{} // closed when the last CRIU is done (Run)
	// compressing admits one spooled compressor at a time: each uses
	// every CPU already (images.EntryWriter's lanes), and a job of many
	// processes would otherwise hold every one's buffers at once.
	compressing sync.Mutex
}

// spoolMemory is what one spool holds in memory before it spills, for
// what is written to it rather than spliced (CRIU's pipes are spliced).
const spoolMemory = 32 << 20

// wait waits for the compressors of a LeaveRunning dump and returns the
// first failure.
func (s *streamState) wait() error {
	s.compressors.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// abort stops the compressors and waits for them.
func (s *streamState) abort(err error) {
	s.mu.Lock()
	for _, sp := range s.spools {
		sp.fail(err)
	}
	s.mu.Unlock()
	s.compressors.Wait()
}

// Precompressed lists the pages images of a streamed dump, hashed and
// compressed as CRIU wrote them (images.WriteOptions.Precompressed): they
// are not in Dir.
func (c *Checkpoint) Precompressed() []images.Precompressed {
	c.stream.mu.Lock()
	defer c.stream.mu.Unlock()
	return append([]images.Precompressed(nil), c.stream.pre...)
}

// isPages reports whether CRIU's image file name is one of a process's
// memory pages: the bulk of a dump, never staged uncompressed.
func isPages(name string) bool {
	return strings.HasPrefix(name, "pages-") && strings.HasSuffix(name, ".img")
}

// dumpStream dumps a container with criu dump --stream on CRIU's command
// line (the swrk RPC does not offer --stream), cr being the image
// streamer (package streamer): the small images go into the staging dir
// as CRIU names them, the pages are hashed and compressed on their way in
// (images.EntryWriter) into a file of the spill directory, so no
// uncompressed copy of the memory is ever written.
//
// CRIU runs in a process group of its own, so a Ctrl-C on the terminal
// never reaches it, and cr never kills it: when ctx ends, or storing a
// file fails, cr closes the streamer's socket and every pipe, CRIU's next
// write fails and CRIU ends its dump itself, letting go of the tasks
// (--leave-running: cr's own cut keeps them frozen until Resume or
// Finish). If cr dies, its pipes close and the same happens.
func (c *Checkpoint) dumpStream(ctx context.Context, o Options, m *member) (*images.DumpStats, error) {
	work := filepath.Join(c.Dir, m.dir)
	imgDir := filepath.Join(c.Dir, m.ic.Dir)
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return nil, err
	}
	if c.stream.spill == nil {
		sp, err := scratch.Mkdir(filepath.Dir(c.Dir), spillPrefix)
		if err != nil {
			return nil, fmt.Errorf("create staging area: %w", err)
		}
		c.stream.spill = sp
	}
	ln, err := streamer.ListenCapture(imgDir)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	// -D "." from imgDir: CRIU connects to the streamer's socket by a
	// path made from -D (see streamer.ListenIn).
	args := []string{"dump", "--stream", "-t", strconv.Itoa(m.node.InitPid), "-D", ".", "-W", work,
		"-o", "dump.log", "-v4", "--leave-running", "--freeze-cgroup", m.node.Leaf(), "--manage-cgroups",
		"--cgroup-dump-controller", c.tree.CRIUController(), "--file-locks"}
	// The same options as the swrk dump (dumpOne) gives CRIU.
	// criubin.CPUCapDefault (fpu, ins): CRIU then writes cpuinfo.img.
	args = append(args, "--cpu-cap=fpu,ins")
	if m.node.Rootfs != "" {
		for _, em := range rootfsExtMounts() {
			args = append(args, "--ext-mount-map", em.GetKey()+":"+em.GetVal())
		}
	}
	if c.netLock != "" {
		args = append(args, c.netLock.Args()...)
	}
	tcp, ext, err := c.criuNet(o, m)
	if err != nil {
		return nil, err
	}
	if tcp {
		args = append(args, "--tcp-established")
	}
	for _, e := range ext {
		args = append(args, "--external", e)
	}
	cmd := exec.Command(o.CRIU, args...)
	cmd.Dir = imgDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	log := filepath.Join(work, "dump.log")
	if err := cmd.Start(); err != nil {
		return nil, c.criuError("dump", m.node.Path, log, err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	captured := make(chan error, 1)
	go func() {
		captured <- ln.Capture(sctx, func(name string) (io.WriteCloser, error) { return c.storeImage(o, m, imgDir, name) })
	}()
	werr := cmd.Wait()
	if werr != nil {
		// CRIU failed: the capture may still wait for it to connect.
		stop()
	}
	cerr := <-captured
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case cerr != nil && !errors.Is(cerr, streamer.ErrCutShort) && !errors.Is(cerr, context.Canceled):
		// cr's side failed first (no space for the pages, say): CRIU then
		// failed only because its pipes were closed. (A capture cut short,
		// or stopped because CRIU had exited, says nothing of its own.)
		return nil, fmt.Errorf("dump %s: stream images: %w", m.node.Path, cerr)
	case werr != nil:
		if s := strings.TrimSpace(stderr.String()); s != "" {
			werr = fmt.Errorf("%w: %s", werr, s)
		}
		return nil, c.criuError("dump", m.node.Path, log, werr)
	case cerr != nil:
		return nil, fmt.Errorf("dump %s: stream images: %w", m.node.Path, cerr)
	}
	return dumpStats(work), nil
}

// storeImage is where one image file CRIU streams goes: a pages image
// into the spill directory, hashed and compressed; any other into the
// container's images directory, as CRIU would have written it (mode 0644).
func (c *Checkpoint) storeImage(o Options, m *member, imgDir, name string) (io.WriteCloser, error) {
	if !isPages(name) {
		return os.OpenFile(filepath.Join(imgDir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	}
	sf, err := c.pagesFile(o, m, name)
	if err != nil {
		return nil, err
	}
	if !o.LeaveRunning {
		// The source stays frozen until the image is written anyway:
		// CRIU may as well go at the compressor's pace.
		return sf, nil
	}
	dir := c.stream.spill.Path
	sp := newSpool(spoolMemory, func() (*os.File, error) {
		f, err := os.CreateTemp(dir, "spool-")
		if err == nil {
			os.Remove(f.Name())
		}
		return f, err
	})
	sp.count = &c.stream.raw
	c.stream.mu.Lock()
	c.stream.spools = append(c.stream.spools, sp)
	c.stream.mu.Unlock()
	gate := c.stream.gate
	c.stream.compressors.Go(func() {
		// The compressor starts once every CRIU is done: while CRIU
		// dumps, the tasks are frozen, and CRIU has the CPUs to itself.
		<-gate
		c.stream.compressing.Lock()
		defer c.stream.compressing.Unlock()
		_, err := copyPages(sf.uncounted(), sp)
		if err == nil {
			err = sf.Close()
		} else {
			sf.discard()
		}
		sp.fail(errSpoolAbandoned) // the producer, if still writing, stops
		c.stream.mu.Lock()
		if err != nil && c.stream.err == nil {
			c.stream.err = fmt.Errorf("compress %s: %w", name, err)
		}
		c.stream.peakSpooled = max(c.stream.peakSpooled, sp.peakBytes())
		c.stream.mu.Unlock()
		sp.release()
	})
	return &spoolWriter{c: c, sp: sp}, nil
}

// spoolWriter is CRIU's side of a spool: it counts the pages received.
type spoolWriter struct {
	c  *Checkpoint
	sp *spool
}

func (w *spoolWriter) ReadFromPipe(pipe *os.File) (int64, error) { return w.sp.ReadFromPipe(pipe) }

func (w *spoolWriter) Write(p []byte) (int, error) { return w.sp.Write(p) }

func (w *spoolWriter) Close() error { return w.sp.Close() }

// onlyWriter hides a writer's ReadFrom, so that io.CopyBuffer copies
// through its buffer.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

// copyPages copies a spool into a pages image's writer: an EntryWriter
// reads it straight into its compressor's buffers, any other writer
// through a buffer of 1 MiB.
func copyPages(w io.Writer, r io.Reader) (int64, error) {
	if ew, ok := w.(*images.EntryWriter); ok {
		return ew.ReadFrom(r)
	}
	return io.CopyBuffer(onlyWriter{w}, r, make([]byte, 1<<20))
}

// pagesFile is one pages image on its way: into the spill directory
// (spillFile) or into a StreamSink (sinkFile). Its Write counts the
// bytes received; uncounted is the same writer without the count, for
// behind a spool, which counts them; discard drops it after a failure.
type pagesFile interface {
	io.WriteCloser
	uncounted() io.Writer
	discard()
}

// pagesFile opens where the pages image name of m goes: hashed and
// compressed into the spill directory, or, for a StreamSink, the sink's
// writer (Options.pagesTo).
func (c *Checkpoint) pagesFile(o Options, m *member, name string) (pagesFile, error) {
	if o.pagesTo != nil {
		w, err := o.pagesTo(path.Join(m.ic.Dir, name), 0o644)
		if err != nil {
			return nil, err
		}
		return &sinkFile{c: c, w: w}, nil
	}
	c.stream.mu.Lock()
	c.stream.nextFile++
	n := c.stream.nextFile
	c.stream.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(c.stream.spill.Path, strconv.Itoa(n)+".zst"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	ew, err := images.NewEntryWriter(f, path.Join(m.ic.Dir, name), 0o644, o.Compression, 0)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &spillFile{c: c, f: f, ew: ew}, nil
}

// sinkFile is a pages image on its way into a StreamSink.
type sinkFile struct {
	c *Checkpoint
	w io.WriteCloser
}

func (s *sinkFile) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	s.c.stream.raw.Add(int64(n))
	return n, err
}

func (s *sinkFile) Close() error { return s.w.Close() }

func (s *sinkFile) uncounted() io.Writer { return s.w }

// discard leaves the image unfinished: the sink's Abort drops it.
func (s *sinkFile) discard() {}

// spillFile is a pages image on its way into the spill directory.
type spillFile struct {
	c       *Checkpoint
	f       *os.File
	ew      *images.EntryWriter
	aborted bool
}

func (s *spillFile) Write(p []byte) (int, error) {
	n, err := s.ew.Write(p)
	s.c.stream.raw.Add(int64(n))
	return n, err
}

func (s *spillFile) uncounted() io.Writer { return s.ew }

// discard ends an entry that will not be used (its goroutines and
// buffers).
func (s *spillFile) discard() {
	s.aborted = true
	s.ew.Abort()
	s.f.Close()
}

// ReadFromPipe reads CRIU's pipe straight into the compressor's buffers
// (streamer.PipeWriter); on a failure the entry is discarded.
func (s *spillFile) ReadFromPipe(pipe *os.File) (int64, error) {
	n, err := s.ew.ReadFrom(countReader{r: pipe, n: &s.c.stream.raw})
	if err != nil {
		s.discard()
	}
	return n, err
}

// countReader counts what it reads into n.
type countReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (s *spillFile) Close() error {
	if s.aborted {
		return errors.New("entry abandoned")
	}
	err := s.ew.Close()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	s.c.stream.mu.Lock()
	defer s.c.stream.mu.Unlock()
	s.c.stream.pre = append(s.c.stream.pre, s.ew.Entry())
	return nil
}

// errStreamLazy: a lazy dump keeps its pages in CRIU; it is never streamed.
var errStreamLazy = errors.New("a lazy dump cannot be streamed")
