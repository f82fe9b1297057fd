package migrate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/rootfs"
	"github.com/cr-dev/cr/scratch"
)

// Layer announces one file system that the sender sends before the
// freeze (FS frame, docs/wire-protocol.md §10): the upper layer of the
// container at Path (relative to the migrated root, as the manifest's
// containers are: "/" is the root), or the lower Digest, as a layer
// archive (rootfs.WritePreCopy) whose regular files hold at most Size
// bytes.
type Layer struct {
	Kind   string `json:"kind"`
	Path   string `json:"path,omitempty"`
	Digest string `json:"digest,omitempty"`
	Size   int64  `json:"size"`
}

// Layer kinds.
const (
	LayerUpper = "upper"
	LayerLower = "lower"
)

// SendLayer sends one layer: body writes its archive.
type SendLayer func(l Layer, body func(w io.Writer) error) error

// preCopyPrefix names the receiver's pre-copy directories in its staging.
const preCopyPrefix = "precopy-"

// preCopy runs Migration.PreCopy when the receiver took the offer.
func (cl *client) preCopy(ctx context.Context, acc acceptMsg) error {
	mig := cl.mig
	if !mig.Request.PreCopy || !acc.PreCopy || mig.PreCopy == nil {
		return nil
	}
	// Only lowers the sender offered.
	var want []string
	for _, d := range acc.WantLowers {
		if slices.Contains(mig.Request.SendLowers, d) && !slices.Contains(want, d) {
			want = append(want, d)
		}
	}
	t0 := time.Now()
	err := mig.PreCopy(ctx, want, func(l Layer, body func(io.Writer) error) error {
		return cl.sendLayer(ctx, l, body)
	})
	cl.stats.PreCopy = time.Since(t0)
	return err
}

// sendLayer sends FS, waits for ACCEPT, streams the archive in DATA
// frames, sends FS_END and waits for ACCEPT: the layer is stored and
// verified there.
func (cl *client) sendLayer(ctx context.Context, l Layer, body func(io.Writer) error) error {
	if err := cl.fc.sendJSON(msgFS, l); err != nil {
		return cl.connError("send FS", ctx, err)
	}
	var acc acceptMsg
	if err := cl.expectAccept(ctx, time.Now().Add(cl.idle), &acc); err != nil {
		return err
	}
	dw := &dataWriter{f: cl.fc}
	bw := bufio.NewWriterSize(dw, 256<<10)
	err := body(bw)
	if err == nil {
		err = bw.Flush()
	}
	cl.stats.PreCopyBytes += dw.n
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("pre-copy: %w", context.Cause(ctx))
		}
		if dw.err != nil {
			// The connection failed: the receiver may have said why.
			if rerr := cl.expectAccept(ctx, time.Now().Add(time.Second), &acc); rerr != nil {
				var re *RemoteError
				if errors.As(rerr, &re) {
					return rerr
				}
			}
			return fmt.Errorf("pre-copy: %w", dw.err)
		}
		return fmt.Errorf("pre-copy: %w", err)
	}
	if err := cl.fc.sendJSON(msgFSEnd, endMsg{Bytes: dw.n}); err != nil {
		return cl.connError("send FS_END", ctx, err)
	}
	return cl.expectAccept(ctx, time.Now().Add(cl.idle), &acc)
}

// preCopy is a migration's pre-copy at the receiver: what arrived so far,
// in a scratch directory of its own in the staging area.
type preCopy struct {
	want  []string // the lowers asked for
	dir   *scratch.Entry
	got   rootfs.PreCopied
	bytes int64 // declared so far
}

// offerPreCopy decides whether the receiver takes the request's offer of
// a pre-copy, and which lowers it asks for: those its rootfs cache lacks.
func (s *server) offerPreCopy(req Request) *preCopy {
	if !req.PreCopy || req.Lazy || s.cfg.PreCopy == nil || s.cfg.PreCopy() != nil {
		return nil
	}
	pc := &preCopy{got: rootfs.PreCopied{Uppers: map[string]string{}, Lowers: map[string]string{}}}
	for _, d := range req.SendLowers {
		if (s.cfg.HasLower == nil || !s.cfg.HasLower(d)) && !slices.Contains(pc.want, d) {
			pc.want = append(pc.want, d)
		}
	}
	return pc
}

func (pc *preCopy) remove() {
	if pc != nil && pc.dir != nil {
		pc.dir.Remove()
	}
}

// received is what the restorer gets: nil when nothing arrived.
func (pc *preCopy) received() *rootfs.PreCopied {
	if pc == nil || len(pc.got.Uppers)+len(pc.got.Lowers) == 0 {
		return nil
	}
	return &pc.got
}

// nextBegin reads the frame that follows the ACCEPT of the request,
// receiving the pre-copy's layers first. A non-empty line means the
// conversation ended there (the layer was refused, or failed), and is
// the line to log.
func (c *conn) nextBegin(ctx context.Context, pc *preCopy) (t msgType, p []byte, line string, err error) {
	for {
		t, p, err = c.next(maxControl)
		if err != nil || t != msgFS {
			return t, p, "", err
		}
		if pc == nil {
			return t, p, c.fail(protocolErrorf("FS frame, but no pre-copy was agreed"), false), nil
		}
		if line := c.receiveLayer(ctx, pc, p); line != "" {
			return t, nil, line, nil
		}
	}
}

// receiveLayer checks an FS frame, receives its layer into the pre-copy
// directory and answers ACCEPT; else it ends the conversation and returns
// the line to log.
func (c *conn) receiveLayer(ctx context.Context, pc *preCopy, p []byte) string {
	var l Layer
	if err := decode(msgFS, p, &l); err != nil {
		return c.fail(err, false)
	}
	lim := c.s.cfg.Limits
	var rel string
	switch l.Kind {
	case LayerUpper:
		if err := checkTreePath(l.Path); err != nil {
			return c.fail(protocolErrorf("FS: path: %v", err), false)
		}
		if _, dup := pc.got.Uppers[l.Path]; dup {
			return c.fail(protocolErrorf("FS: the upper of %s sent twice", l.Path), false)
		}
		if len(pc.got.Uppers) >= lim.MaxFiles {
			return c.fail(protocolErrorf("FS: more than %d uppers", lim.MaxFiles), false)
		}
		rel = filepath.Join("upper", strconv.Itoa(len(pc.got.Uppers)))
	case LayerLower:
		if !rootfs.ValidDigest(l.Digest) || !slices.Contains(pc.want, l.Digest) {
			return c.fail(protocolErrorf("FS: lower %q was not asked for", sanitize(l.Digest)), false)
		}
		if _, dup := pc.got.Lowers[l.Digest]; dup {
			return c.fail(protocolErrorf("FS: lower %s sent twice", l.Digest), false)
		}
		rel = filepath.Join("lower", strings.TrimPrefix(l.Digest, rootfs.DigestPrefix))
	default:
		return c.fail(protocolErrorf("FS: unknown kind %q", sanitize(l.Kind)), false)
	}
	if l.Size < 0 || l.Size > lim.MaxBytes-pc.bytes {
		return c.reject(fmt.Sprintf("too large: file systems of more than %s, this server accepts at most %s", formatBytes(pc.bytes+l.Size), formatBytes(lim.MaxBytes)))
	}
	if err := images.CheckSpace(c.s.cfg.StagingDir, l.Size); errors.Is(err, images.ErrTooLarge) {
		return c.reject("too large: " + strings.TrimPrefix(err.Error(), images.ErrTooLarge.Error()+": "))
	}
	if pc.dir == nil {
		d, err := scratch.Mkdir(c.s.cfg.StagingDir, preCopyPrefix)
		if err != nil {
			return c.reject("create staging directory: " + err.Error())
		}
		pc.dir = d
	}
	dir := filepath.Join(pc.dir.Path, rel)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return c.fail(fmt.Errorf("pre-copy: %w", err), false)
	}
	pc.bytes += l.Size
	if err := c.fc.sendJSON(msgAccept, acceptMsg{IdleMillis: c.s.cfg.IdleTimeout.Milliseconds()}); err != nil {
		return "failed: " + err.Error()
	}
	if err := c.receiveLayerData(ctx, dir, l); err != nil {
		return c.fail(fmt.Errorf("pre-copy of %s: %w", layerName(l), err), false)
	}
	if l.Kind == LayerUpper {
		pc.got.Uppers[l.Path] = dir
	} else {
		pc.got.Lowers[l.Digest] = dir
	}
	if err := c.fc.sendJSON(msgAccept, acceptMsg{IdleMillis: c.s.cfg.IdleTimeout.Milliseconds()}); err != nil {
		return "failed: " + err.Error()
	}
	return ""
}

func layerName(l Layer) string {
	if l.Kind == LayerLower {
		return "the lower " + l.Digest
	}
	return "the upper of " + l.Path
}

// receiveLayerData reads DATA frames up to FS_END into the layer reader,
// within the layer's declared size; a lower must then have its digest.
func (c *conn) receiveLayerData(ctx context.Context, dir string, l Layer) error {
	lim := c.s.cfg.Limits
	budget := wireBudget(l.Size, lim)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := rootfs.ReadLayerLimited(pr, dir, rootfs.Limits{MaxBytes: l.Size, MaxFiles: lim.MaxFiles})
		if err == nil {
			// Nothing may follow the archive's end.
			if n, _ := io.Copy(io.Discard, pr); n > 0 {
				err = errors.New("data after the layer archive")
			}
		}
		pr.CloseWithError(err)
		done <- err
	}()
	fail := func(err error) error {
		pw.CloseWithError(err)
		<-done
		return err
	}
	var n int64
	for {
		if ctx.Err() != nil {
			return fail(context.Cause(ctx))
		}
		t, p, err := c.next(maxData)
		if err != nil {
			return fail(err)
		}
		switch t {
		case msgData:
			if n += int64(len(p)); n > budget {
				return fail(fmt.Errorf("more than %s for a declared size of %s", formatBytes(budget), formatBytes(l.Size)))
			}
			if _, err := pw.Write(p); err != nil {
				if rerr := <-done; rerr != nil {
					return rerr
				}
				return err
			}
		case msgFSEnd:
			var end endMsg
			if err := decode(t, p, &end); err != nil {
				return fail(err)
			}
			if end.Bytes != n {
				return fail(protocolErrorf("FS_END counts %d bytes, %d were received", end.Bytes, n))
			}
			pw.Close()
			if err := <-done; err != nil {
				return err
			}
			if l.Kind == LayerLower {
				got, err := rootfs.Digest(dir)
				if err != nil {
					return err
				}
				if got != l.Digest {
					return fmt.Errorf("content has digest %s", got)
				}
			}
			return nil
		case msgAbort:
			return fail(c.readAbort(p))
		default:
			return fail(protocolErrorf("%s frame while receiving a file system", t))
		}
	}
}
