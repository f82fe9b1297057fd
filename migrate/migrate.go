package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"
	"unicode"

	"github.com/cr-dev/cr/hostcheck"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
)

// Request is what the sender asks the receiver for, before it touches the
// source: restore the subtree checkpointed at Root under the path As (Root
// when empty).
type Request struct {
	Root      string `json:"root"`
	As        string `json:"as,omitempty"`
	Lazy      bool   `json:"lazy,omitempty"`
	CRVersion string `json:"cr_version,omitempty"`
	// Lowers are the digests of the lower layers of the subtree's
	// --rootfs containers that the image will not carry (no
	// --with-rootfs): the receiver refuses, before the source is frozen,
	// when it lacks one.
	Lowers []string `json:"lowers,omitempty"`
	// Arch and CRIUVersion are the source's (GOARCH; CRIU's version as
	// in the manifest), Files what the subtree's containers on the host's
	// file system have open or mapped: the host contract the receiver
	// checks before the source is frozen.
	Arch        string           `json:"arch,omitempty"`
	CRIUVersion int              `json:"criu_version,omitempty"`
	Files       []hostcheck.File `json:"files,omitempty"`
	// CPUInfo is the source's CPU as `criu cpuinfo dump` writes it
	// (cpuinfo.img, base64 in JSON).
	CPUInfo []byte `json:"cpuinfo,omitempty"`
	// Networks are the bridge addresses of the subtree's containers, with
	// their subnet's length ("10.88.0.5/16"): the receiver refuses them
	// unless its bridge has the same subnet and the addresses are free.
	Networks []string `json:"networks,omitempty"`
	// Published are the host ports the subtree's containers publish
	// (HOSTPORT:PORT/PROTO): the receiver refuses those in use there.
	Published []string `json:"published,omitempty"`
	// PreCopy offers to send the file systems of the subtree's --rootfs
	// containers before the freeze (FS frames); SendLowers are the
	// lowers the sender can send then (--with-rootfs).
	PreCopy    bool     `json:"precopy,omitempty"`
	SendLowers []string `json:"send_lowers,omitempty"`
}

// Bounds of Request.Lowers, Request.CPUInfo and Request.Networks.
const (
	maxLowers   = 1024
	maxCPUInfo  = 64 << 10
	maxNetworks = 4096
)

// Target is the path the tree is restored under: As, or Root.
func (r Request) Target() string {
	if r.As != "" {
		return r.As
	}
	return r.Root
}

// validate checks the fields a hostile or broken sender controls. Root and
// As are container paths: they follow the tree's own name rules
// (nstree.ValidatePath), as every name that enters the tree does, and the
// target is never the root of the tree.
func (r Request) validate() error {
	for _, p := range []struct{ name, val string }{{"root", r.Root}, {"as", r.As}} {
		if p.val == "" && p.name == "as" {
			continue
		}
		if err := checkTreePath(p.val); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	if r.Target() == "/" {
		return errors.New("target \"/\" is not a container")
	}
	if len(r.CRVersion) > maxVersionLen || !printable(r.CRVersion) {
		return errors.New("cr_version: not a short printable string")
	}
	if len(r.Arch) > maxVersionLen || !printable(r.Arch) || r.CRIUVersion < 0 {
		return errors.New("arch, criu_version: not a short printable string and a version")
	}
	if len(r.CPUInfo) > maxCPUInfo {
		return errors.New("cpuinfo: too large")
	}
	if err := hostcheck.Validate(r.Files); err != nil {
		return fmt.Errorf("files: %w", err)
	}
	if len(r.Lowers) > maxLowers {
		return fmt.Errorf("lowers: more than %d", maxLowers)
	}
	if len(r.SendLowers) > maxLowers {
		return fmt.Errorf("send_lowers: more than %d", maxLowers)
	}
	for _, d := range append(r.Lowers, r.SendLowers...) {
		if !rootfs.ValidDigest(d) {
			return errors.New("lowers, send_lowers: not a sha256 digest")
		}
	}
	if len(r.Networks) > maxNetworks {
		return fmt.Errorf("networks: more than %d", maxNetworks)
	}
	if len(r.Published) > maxNetworks {
		return fmt.Errorf("published: more than %d", maxNetworks)
	}
	for _, p := range r.Published {
		if _, err := network.ParsePort(p); err != nil {
			return fmt.Errorf("published: %v", err)
		}
	}
	for _, n := range r.Networks {
		if p, err := netip.ParsePrefix(n); err != nil || !p.Addr().Is4() {
			return fmt.Errorf("networks: %q is not an IPv4 address with its prefix length", n)
		}
	}
	return nil
}

func checkTreePath(p string) error {
	if len(p) > maxPathLen {
		return fmt.Errorf("path longer than %d bytes", maxPathLen)
	}
	return nstree.ValidatePath(p)
}

func printable(s string) bool {
	for _, r := range s {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// RestoreInfo describes a restored tree, as the receiver reports it in READY
// and DONE.
type RestoreInfo struct {
	// Paths of the restored containers, in the receiver's tree.
	Paths []string `json:"paths,omitempty"`
	// Pids maps a container path to the host pid of its init.
	Pids map[string]int `json:"pids,omitempty"`
	// Elapsed is how long the restore took at the receiver.
	Elapsed time.Duration `json:"elapsed_ns,omitempty"`
}

// Job is one received image for the Restorer.
type Job struct {
	// Dir holds the extracted, verified image; it is removed when Restore
	// returns.
	Dir      string
	Manifest *images.Manifest
	// As is the path to restore under ("": the image's own root).
	As string
	// Image, when set (Config.Streamed, not lazy), is the image as it
	// arrives, instead of Dir and Manifest: the restorer reads it to its
	// end (io.EOF once the sender's END came and every byte counted),
	// verifies it, and calls Ready only then. Limits bound it.
	Image  io.Reader
	Limits images.Limits

	// Ready must be called exactly once, after the tree is restored and
	// before its tasks resume (CRIU's pre-resume notification). It sends
	// READY to the sender and waits for its decision: it returns nil when
	// the sender committed, and then the tasks must resume; it returns an
	// error when the sender aborted, vanished or did not answer in time,
	// and then Restore must kill what it restored and return an error.
	Ready func(RestoreInfo) error

	// PreCopy is what the sender's pre-copy left in the receiver's
	// staging (nil: none): the uppers the image's deltas apply to
	// (rootfs.ApplyDelta) and verified lowers. What Restore does not move
	// away is removed after it returns.
	PreCopy *rootfs.PreCopied

	// Lazy: the image's memory was kept back at the sender, and comes
	// through Pages while the restored tree runs.
	Lazy bool
	// Pages (lazy) carries the socket of manifest container i's CRIU
	// lazy-pages daemon to the sender's page server. Call it before the
	// daemon expects an answer.
	Pages func(i int, conn *os.File)
	// Resumed (lazy) must be called once the tree runs again, after the
	// commit: the sender learns (DONE) that its downtime is over. Restore
	// then returns once every page arrived, or, if they cannot all arrive
	// (the sender is lost: ctx is cancelled), kills the tree and returns
	// an error.
	Resumed func(RestoreInfo)
}

// Restorer restores a received image. The receiver calls Restore once per
// migration, after the image was extracted and verified.
//
// Restore returns an error only when nothing it restored is left running:
// the sender then resumes the source. ctx is cancelled when the server
// shuts down or when the sender's connection is lost before the commit
// (lazy: before the last page).
type Restorer interface {
	Restore(ctx context.Context, job *Job) (RestoreInfo, error)
}

// RestorerFunc adapts a function to the Restorer interface.
type RestorerFunc func(ctx context.Context, job *Job) (RestoreInfo, error)

// Restore calls f.
func (f RestorerFunc) Restore(ctx context.Context, job *Job) (RestoreInfo, error) {
	return f(ctx, job)
}

// Errors returned by Migrate. A *RemoteError carries the receiver's reason
// and unwraps to ErrAuth, ErrRejected or ErrRemote.
var (
	// ErrAuth: the peer failed authentication, or refused ours. Nothing was
	// sent beyond the handshake.
	ErrAuth = errors.New("authentication failed")
	// ErrRejected: the receiver refused the request (target exists, busy,
	// too large, ...) before any image byte was accepted.
	ErrRejected = errors.New("migration rejected")
	// ErrRemote: the receiver failed to receive or restore the image, and
	// nothing of it runs there.
	ErrRemote = errors.New("migration failed at destination")
	// ErrInDoubt: the connection failed after COMMIT was sent and before
	// DONE arrived. The tree may or may not run at the destination: the
	// source must stay frozen until someone checks.
	ErrInDoubt = errors.New("migration outcome unknown: connection lost after commit")
	// ErrNoLazy: the receiver cannot restore lazily (no userfaultfd, or
	// not enabled); it comes with ErrRejected, before the source is
	// touched, so a stop-and-copy migration may follow.
	ErrNoLazy = errors.New("receiver cannot do lazy migration")
	// ErrTargetExists: the receiver already has the target path; it comes
	// with ErrRejected, before the source is touched. A ServerConfig.Check
	// error that wraps it is sent with its code.
	ErrTargetExists = errors.New("target exists")
)

// REJECT codes: what a sender may act on.
const (
	codeNoLazy = "no-lazy" // ErrNoLazy
	codeExists = "exists"  // ErrTargetExists
	codeBusy   = "busy"    // ERROR before authentication: too many connections authenticating
)

// RemoteError is an error the receiver reported, with its reason.
type RemoteError struct {
	Kind   error // ErrAuth, ErrRejected, ErrRemote or ErrInDoubt
	Reason string
	Code   string // the receiver's code, if any (REJECT)
}

func (e *RemoteError) Error() string { return e.Kind.Error() + ": " + e.Reason }
func (e *RemoteError) Unwrap() error { return e.Kind }

// Is makes a rejection with a code match its error: ErrNoLazy,
// ErrTargetExists.
func (e *RemoteError) Is(target error) bool {
	return target == ErrNoLazy && e.Code == codeNoLazy || target == ErrTargetExists && e.Code == codeExists
}

// ClientStats measure a migration from the sender's side.
type ClientStats struct {
	// BytesSent counts the bytes written to the TCP connection: TLS
	// records, framing and the archive.
	BytesSent int64
	// ArchiveBytes counts the bytes of the archive stream (body's output).
	ArchiveBytes int64
	// Elapsed is the time from dialing to the end.
	Elapsed time.Duration
	// Prepare is the time spent in Migration.Prepare.
	Prepare time.Duration
	// Transfer is the time from BEGIN to END (body's streaming).
	Transfer time.Duration
	// Restore is the time from END to READY: the receiver's verification
	// and restore up to the pre-resume point.
	Restore time.Duration
	// Commit is the time from COMMIT to DONE.
	Commit time.Duration
	// PreCopy is the time the file systems took before the freeze;
	// PreCopyBytes counts their archives (FS DATA).
	PreCopy      time.Duration
	PreCopyBytes int64
	// Lazy only: Pages is the time from DONE to COMPLETE, while the
	// memory followed the running tree; PageBytes counts the page-server
	// bytes carried to the receiver.
	Pages     time.Duration
	PageBytes int64
}
