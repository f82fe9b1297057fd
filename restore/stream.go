package restore

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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/klauspost/compress/s2"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/criubin/streamer"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
	"github.com/cr-dev/cr/scratch"
)

// spillPrefix names the staging entry that holds pages a streamed restore
// read past before CRIU asked for them, compressed: rarely (CRIU reads
// them mostly in the order the image has them, see images.IsPages; the
// children of a process restore theirs concurrently).
const spillPrefix = "rstspill-"

// FromStream restores the image read from r (name, for messages) while it
// arrives. A version 2 image has its manifest first: its small entries
// are extracted into staging, checked, then every container is restored
// by `criu restore --stream`, cr serving CRIU its images and, as CRIU asks
// for them, the pages straight from r as they are decompressed: no page is
// staged. Every byte is checked against the manifest before the restored
// tree resumes (CRIU holds it at post-restore, see criubin.Hook); any
// mismatch kills it and leaves no node, as FromDir does. A version 1 image
// (its manifest last) is extracted whole first. A lazy restore takes
// FromDir.
//
// target is where the image goes, decided from its manifest (Target, and
// the caller's checks) before anything is created.
func FromStream(ctx context.Context, t *nstree.Tree, r io.Reader, name string, target func(*images.Manifest) (string, error), o Options, ready func(*Result) error) (*Result, error) {
	if o.Pages != nil {
		// Its lazy-pages daemons read the extracted image after the
		// restore returns: FromDir.
		return nil, errors.New("a lazy restore is not streamed")
	}
	dir, err := scratch.Mkdir(o.StagingDir, stagingPrefix)
	if err != nil {
		return nil, fmt.Errorf("create staging area: %w", err)
	}
	defer dir.Remove()
	start := time.Now()
	lim := o.Limits
	if free, err := images.FreeSpace(dir.Path); err == nil {
		lim.Free = free
	}
	s, err := images.OpenStream(ctx, r, lim)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer s.Close()
	m := s.Manifest()
	if m == nil || o.Exe == "" {
		// The version 1 layout, or no cr binary for CRIU's action
		// script: extracted whole, restored through swrk.
		m, err := s.ExtractAll(dir.Path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		to, err := target(m)
		if err != nil {
			return nil, err
		}
		extracted := time.Since(start)
		res, err := FromDir(ctx, t, dir.Path, m, to, o, ready)
		if res != nil {
			res.Phases.Extract = extracted
		}
		return res, err
	}
	to, err := target(m)
	if err != nil {
		return nil, err
	}
	if err := Check(m, o); err != nil {
		return nil, err
	}
	if err := s.ExtractWhile(dir.Path, func(f images.File) bool { return !images.IsPages(f.Name) }); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	feed := &pageFeed{s: s, staging: o.StagingDir, listed: map[string]bool{}, spilled: map[string]string{}}
	for _, f := range m.Files {
		if !f.Dir && images.IsPages(f.Name) {
			feed.listed[f.Name] = true
		}
	}
	defer feed.close()
	feed.name = name
	extracted := time.Since(start)
	res, err := fromDir(ctx, t, dir.Path, m, to, o, ready, feed)
	if res != nil {
		res.Phases.Extract, res.Streamed = extracted, true
	}
	return res, err
}

// pageFeed serves the pages entries of an image stream to CRIU in the
// order CRIU asks for them: straight from the stream when the entry asked
// for is the next one (the image has them in CRIU's order), else after
// spilling what comes first to staging.
type pageFeed struct {
	mu       sync.Mutex
	name     string // the image's, for messages
	s        *images.Stream
	staging  string
	listed   map[string]bool   // pages entries of the manifest
	spilled  map[string]string // entry name -> spilled copy
	spill    *scratch.Entry
	nspilled int   // spill files made so far
	err      error // the first failure of the stream: sticky
	ended    bool  // the stream read to its verified end
}

// serve writes the pages entry name into w (CRIU's pipe). If CRIU closes
// the pipe early, the rest is still read and checked.
func (f *pageFeed) serve(name string, w io.Writer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if p, ok := f.spilled[name]; ok {
		delete(f.spilled, name)
		defer os.Remove(p)
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(w, s2.NewReader(src))
		return err
	}
	for {
		e, r, err := f.s.Next()
		if err == io.EOF {
			f.ended = true
			return fmt.Errorf("%s: not in the image", name)
		}
		if err != nil {
			f.err = fmt.Errorf("%s: %w", f.name, err)
			return f.err
		}
		if e.Dir {
			continue
		}
		if e.Name == name {
			_, werr := io.Copy(w, r)
			if werr != nil {
				// CRIU's end closed (it has what it wanted), or
				// the content failed its check.
				if _, err := io.Copy(io.Discard, r); err != nil {
					f.err = fmt.Errorf("%s: %w", f.name, err)
					return f.err
				}
				if errors.Is(werr, images.ErrCorrupt) {
					f.err = fmt.Errorf("%s: %w", f.name, werr)
					werr = f.err
				}
			}
			return werr
		}
		if err := f.spillEntry(e.Name, r); err != nil {
			f.err = fmt.Errorf("%s: %w", f.name, err)
			return f.err
		}
	}
}

// spillEntry keeps an entry CRIU has not asked for yet, checked and
// compressed.
func (f *pageFeed) spillEntry(name string, r io.Reader) error {
	if f.spill == nil {
		sp, err := scratch.Mkdir(f.staging, spillPrefix)
		if err != nil {
			return fmt.Errorf("create staging area: %w", err)
		}
		f.spill = sp
	}
	// Named by a counter, not by len(spilled): a spilled entry served
	// leaves the map, and a name taken from its size would come again.
	f.nspilled++
	p := filepath.Join(f.spill.Path, fmt.Sprint(f.nspilled))
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	// Compressed (S2: fast), so that no uncompressed copy of the pages
	// is written even then; checked on its way in.
	zw := s2.NewWriter(out)
	_, err = io.Copy(zw, r)
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return err
	}
	f.spilled[name] = p
	return nil
}

// finish reads and checks what is left of the stream, to its end: nil
// means every byte of the image was verified.
func (f *pageFeed) finish() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.err == nil && !f.ended {
		_, _, err := f.s.Next()
		if err == io.EOF {
			f.ended = true
			break
		}
		if err != nil {
			f.err = fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return f.err
}

func (f *pageFeed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.spill != nil {
		f.spill.Remove()
	}
}

// lookup answers CRIU's requests for the images of container c: its pages
// from the feed, anything else from the extracted dir.
func (f *pageFeed) lookup(imgDir string, c images.Container) streamer.Lookup {
	return func(name string) (func(io.Writer) error, bool) {
		entry := path.Join(c.Dir, name)
		if f.listed[entry] {
			return func(w io.Writer) error { return f.serve(entry, w) }, true
		}
		p := filepath.Join(imgDir, name)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			return nil, false
		}
		return func(w io.Writer) error {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(w, src)
			return err
		}, true
	}
}

// restoreStreamed restores container c with `criu restore --stream` on
// CRIU's command line, cr being its image streamer (feed), and holds the
// restored tasks at post-restore (criubin.Hook) until onRestored returns.
// CRIU runs in a process group of its own and is never killed: when ctx
// ends or cr fails, cr closes the streamer's pipes (CRIU's next read fails
// and it kills what it restored) or answers its hook with a refusal.
func restoreStreamed(ctx context.Context, t *nstree.Tree, o Options, dir string, c images.Container, n *nstree.Node, l rootfs.Layout, hasRootfs bool, ep *network.Endpoint, feed *pageFeed, onRestored func(int32) error) error {
	imgDir := filepath.Join(dir, c.Dir)
	w, err := scratch.Mkdir(o.StagingDir, workPrefix)
	if err != nil {
		return err
	}
	defer w.Remove()
	log := filepath.Join(w.Path, "restore.log")
	opts, extra := criuOptions(t, o, c, n, l, hasRootfs, ep, 3) // ExtraFiles start at fd 3
	ln, err := streamer.ListenServe(imgDir)
	if err != nil {
		return err
	}
	defer ln.Close()
	// The root task joins the limits' v1 controllers before CRIU makes
	// its cgroup namespace (see nstree.JoinMirrors).
	join, err := nstree.PrepareMirrors(n.Leaf())
	if err != nil {
		return err
	}
	hook, err := criubin.ListenHook(w.Path, o.Exe, join)
	if err != nil {
		return err
	}
	defer hook.Close()
	// -D "." from imgDir: CRIU connects to the streamer's socket by a
	// path made from -D (see streamer.ListenIn).
	args := append([]string{"restore", "--stream", "--restore-detached", "-D", ".", "-W", w.Path,
		"--action-script", hook.Script}, criuArgs(opts)...)
	if o.netLock != "" {
		args = append(args, o.netLock.Args()...)
	}
	cmd := exec.Command(o.CRIU, args...)
	cmd.Dir = imgDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return criuError(t, n.Path, log, err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- ln.Serve(sctx, feed.lookup(imgDir, c)) }()
	held := make(chan error, 1)
	go func() { held <- hook.Serve(sctx, onRestored) }()
	werr := cmd.Wait()
	stop() // CRIU is done: nothing more to serve, nothing to hold
	serr, herr := <-served, <-held
	switch {
	case werr == nil:
		return nil
	case feed.failed() != nil:
		// The image failed its check: CRIU failed because cr cut it off.
		return feed.failed()
	case serr != nil && !errors.Is(serr, context.Canceled) && !errors.Is(serr, streamer.ErrCutShort):
		return fmt.Errorf("restore %s: stream images: %w", n.Path, serr)
	case herr != nil && !errors.Is(herr, context.Canceled) && !strings.Contains(herr.Error(), "wait for criu"):
		// cr refused to resume (another container failed, say): CRIU
		// killed the tree as asked.
		return herr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		werr = fmt.Errorf("%w: %s", werr, s)
	}
	return criuError(t, n.Path, log, werr)
}

func (f *pageFeed) failed() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// criuArgs are CRIU's command-line options for what opts (criuOptions)
// say, but for the network lock (NetLock.Args).
func criuArgs(opts *rpc.CriuOpts) []string {
	args := []string{"-o", opts.GetLogFile(), fmt.Sprintf("-v%d", opts.GetLogLevel())}
	if opts.GetManageCgroups() {
		args = append(args, "--manage-cgroups="+strings.ToLower(opts.GetManageCgroupsMode().String()))
	}
	for _, r := range opts.GetCgRoot() {
		args = append(args, "--cgroup-root", r.GetCtrl()+":"+r.GetPath())
	}
	if opts.GetFileLocks() {
		args = append(args, "--file-locks")
	}
	if opts.Root != nil {
		args = append(args, "--root", opts.GetRoot())
	}
	for _, e := range opts.GetExtMnt() {
		args = append(args, "--ext-mount-map", e.GetKey()+":"+e.GetVal())
	}
	if opts.GetTcpEstablished() {
		args = append(args, "--tcp-established")
	}
	for _, fd := range opts.GetInheritFd() {
		args = append(args, "--inherit-fd", fmt.Sprintf("fd[%d]:%s", fd.GetFd(), fd.GetKey()))
	}
	return args
}
