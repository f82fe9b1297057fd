package criubin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MinVersion is the oldest CRIU cr works with, as a Version.Code: 4.1.0.
// Older CRIU does not know the vDSO layout of current kernels.
const MinVersion = 40100

// ErrTooOld means the CRIU binary is older than MinVersion.
var ErrTooOld = errors.New("criu too old")

// Version is a CRIU release.
type Version struct {
	Major, Minor, Sublevel int
	// Raw is the version as CRIU printed it, e.g. "4.1.1" or "3.17".
	Raw string
}

// Code returns the version as one number, the way CRIU's RPC and go-criu
// report it: 4.1.1 is 40101.
func (v Version) Code() int {
	return v.Major*10000 + v.Minor*100 + v.Sublevel
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Sublevel)
}

// versionTimeout bounds `criu --version`.
const versionTimeout = 10 * time.Second

type versionKey struct {
	path  string
	mtime time.Time
	size  int64
}

// versionCacheDir holds the versions learnt by earlier cr commands
// (CacheDir; a test's own directory in tests).
var versionCacheDir = CacheDir

var versionCache struct {
	sync.Mutex
	m map[versionKey]Version
}

// GetVersion runs `criu --version` and parses it. The result is cached per
// binary (path, size and modification time, so a rebuilt CRIU is asked
// again), in memory and in CacheDir when that is ready (PrepareCache).
// When the version is below MinVersion it returns the version and an error
// wrapping ErrTooOld.
func GetVersion(path string) (Version, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Version{}, fmt.Errorf("get criu version: %w", err)
	}
	key := versionKey{path, fi.ModTime(), fi.Size()}
	versionCache.Lock()
	v, ok := versionCache.m[key]
	versionCache.Unlock()
	if !ok {
		dkey := versionKeyString(path, fi)
		known := readVersions(versionCacheDir)
		out, cached := known[dkey]
		if !cached {
			ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
			defer cancel()
			b, err := exec.CommandContext(ctx, path, "--version").Output()
			if err != nil {
				return Version{}, fmt.Errorf("get criu version: %s --version: %w", path, err)
			}
			out = string(b)
		}
		v, err = ParseVersion(out)
		if err == nil && !cached {
			saveVersion(versionCacheDir, known, dkey, out)
		}
		if err != nil {
			return Version{}, fmt.Errorf("get criu version of %s: %w", path, err)
		}
		versionCache.Lock()
		if versionCache.m == nil {
			versionCache.m = make(map[versionKey]Version)
		}
		versionCache.m[key] = v
		versionCache.Unlock()
	}
	if v.Code() < MinVersion {
		return v, fmt.Errorf("%w: %s is %s, cr needs %d.%d or newer",
			ErrTooOld, path, v.Raw, MinVersion/10000, MinVersion/100%100)
	}
	return v, nil
}

// ParseVersion parses the output of `criu --version`:
//
//	Version: 4.1.1
//	GitID: v4.1.1-3-g0123abc
//
// A missing sublevel ("Version: 3.17") is 0; anything after the third
// number (CRIU_VERSION_EXTRA) is kept only in Raw.
func ParseVersion(out string) (Version, error) {
	for line := range strings.Lines(out) {
		raw, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:")
		if !ok {
			continue
		}
		raw = strings.TrimSpace(raw)
		parts := strings.SplitN(raw, ".", 4)
		if len(parts) < 2 {
			return Version{}, fmt.Errorf("parse version %q: want MAJOR.MINOR[.SUBLEVEL]", raw)
		}
		nums := make([]int, 3)
		for i := 0; i < len(parts) && i < 3; i++ {
			// The last number may carry a suffix ("1-rc1").
			digits := parts[i]
			if i == len(parts)-1 || i == 2 {
				digits = digits[:len(digits)-len(strings.TrimLeft(digits, "0123456789"))]
			}
			n, err := strconv.Atoi(digits)
			if err != nil || i > 0 && n > 99 {
				return Version{}, fmt.Errorf("parse version %q: bad number %q", raw, parts[i])
			}
			nums[i] = n
		}
		return Version{Major: nums[0], Minor: nums[1], Sublevel: nums[2], Raw: raw}, nil
	}
	return Version{}, fmt.Errorf("parse version: no \"Version:\" line in %q", strings.TrimSpace(out))
}
