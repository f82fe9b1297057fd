package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/hostcheck"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/criuimg"
	"github.com/cr-dev/cr/nstree"
)

// Contract is what a source says of a subtree before it freezes it, for
// the destination to answer whether it can take it: the source's
// architecture and CRIU version, the lowers of its --rootfs containers
// that the image will not carry, and the files its other containers have
// open or mapped.
type Contract struct {
	Arch        string
	CRIUVersion int
	Lowers      []string
	Files       []hostcheck.File
	CPUInfo     []byte // criubin.CPUInfo of the source
}

// CheckContract refuses a subtree this host cannot take, listing every
// reason; empty fields are not checked.
func CheckContract(ctx context.Context, t *nstree.Tree, o Options, c Contract) error {
	var errs []error
	if c.Arch != "" && c.Arch != runtime.GOARCH {
		errs = append(errs, fmt.Errorf("%w: the source is %s, this host is %s", ErrIncompatible, c.Arch, runtime.GOARCH))
	}
	if c.CRIUVersion != 0 && o.CRIUVersion != 0 && c.CRIUVersion/100 > o.CRIUVersion/100 {
		errs = append(errs, fmt.Errorf("%w: the source has CRIU %s, this host the older %s", ErrIncompatible, ver(c.CRIUVersion), ver(o.CRIUVersion)))
	}
	if len(c.CPUInfo) > 0 && o.CRIU != "" {
		if err := criubin.CPUCheck(ctx, o.CRIU, c.CPUInfo); err != nil {
			errs = append(errs, fmt.Errorf("%w: %w", ErrIncompatible, err))
		}
	}
	if err := MissingDigests(t, c.Lowers); err != nil {
		errs = append(errs, err)
	}
	if err := hostcheck.Check(c.Files); err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", ErrIncompatible, err))
	}
	return errors.Join(errs...)
}

// HostFiles are the files the image's containers on the host's file
// system (not --rootfs; with --mount, those not on the tmpfs mounts of
// its namespace, whose content CRIU carries) need on this host, as CRIU
// recorded them: cr restore checks them (hostcheck.Check) before it
// creates anything.
func HostFiles(dir string, m *images.Manifest) ([]hostcheck.File, error) {
	var out []hostcheck.File
	for _, c := range m.Containers {
		if c.Empty || c.Rootfs != nil {
			continue
		}
		rf, err := criuimg.RegFiles(filepath.Join(dir, c.Dir))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", images.ErrCorrupt, c.Dir, err)
		}
		carried := map[int32]bool{}
		if slices.Contains(c.Namespaces, "mnt") {
			if carried, err = criuimg.TmpfsMounts(filepath.Join(dir, c.Dir)); err != nil {
				return nil, fmt.Errorf("%w: %s: %w", images.ErrCorrupt, c.Dir, err)
			}
		}
		for _, f := range rf {
			if hostcheck.Relevant(f.Path) && !carried[f.MntID] {
				out = append(out, hostcheck.File{Path: f.Path, Size: int64(f.Size)})
			}
		}
	}
	return out, nil
}

// checkCPU asks CRIU whether the image's tasks can run on this CPU (the
// cpuinfo.img CRIU wrote at the dump; images without one pass).
func checkCPU(ctx context.Context, dir string, m *images.Manifest, o Options) error {
	if o.CRIU == "" {
		return nil
	}
	for _, c := range m.Containers {
		if c.Empty {
			continue
		}
		img, err := os.ReadFile(filepath.Join(dir, c.Dir, criubin.CPUInfoFile))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := criubin.CPUCheck(ctx, o.CRIU, img); err != nil {
			return fmt.Errorf("%w: %w", ErrIncompatible, err)
		}
		return nil // one CPU dumped them all
	}
	return nil
}
