// Package images owns cr's single-file checkpoint image format: a tar stream,
// zstd-compressed or plain, that holds the CRIU images of every container of a
// checkpointed subtree and a manifest with the size and sha256 of every file.
//
// The package writes images (streaming, hashing while it writes, atomically
// when the target is a file), verifies them, and extracts them with strict
// bounds, so that an image received from the network cannot escape its
// destination directory or exhaust the disk. docs/image-format.md is the
// byte-level specification.
package images

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
)

// FormatName and FormatVersion identify the image format in cr-image.json and
// in the manifest. A reader rejects a larger version with ErrUnsupportedVersion.
const (
	FormatName    = "cr-image"
	FormatVersion = 2
)

// Names of the archive entries that frame the staging directory's content.
const (
	HeaderFile   = "cr-image.json"
	ManifestFile = "manifest.json"
	TrailerFile  = "manifest.sha256"
)

// Errors returned (wrapped, with the detail) by the readers and writers.
var (
	// ErrNotImage: the input is neither a zstd stream nor a tar archive, or
	// its first entry is not cr-image.json naming the cr-image format.
	ErrNotImage = errors.New("not a cr image")
	// ErrCorrupt: a checksum or size mismatch, a truncated or undecodable
	// stream, a bad manifest or trailer, or an entry the manifest does not
	// list. The message names the file.
	ErrCorrupt = errors.New("corrupt image")
	// ErrUnsupportedVersion: the image was written by a newer format version.
	ErrUnsupportedVersion = errors.New("unsupported image version")
	// ErrUnsafeEntry: an entry that could escape the destination or is not a
	// regular file or directory (absolute name, "..", link, device,
	// duplicate name, special mode bits).
	ErrUnsafeEntry = errors.New("unsafe image entry")
	// ErrTooLarge: the image exceeds the reader's Limits.
	ErrTooLarge = errors.New("image exceeds limits")
)

// Manifest describes a checkpoint image. It is stored as manifest.json, the
// second-to-last entry of the archive.
type Manifest struct {
	Format  string    `json:"format"`
	Version int       `json:"version"`
	Created time.Time `json:"created"`

	CRVersion   string   `json:"cr_version"`
	CRIUVersion int      `json:"criu_version"` // 4.1.1 is 40101
	Kernel      string   `json:"kernel"`
	Arch        string   `json:"arch"`         // GOARCH of the dumping cr
	CPUFeatures []string `json:"cpu_features"` // flags from /proc/cpuinfo, informational

	// Root is the checkpointed path, absolute in the dumping host's tree.
	Root string `json:"root"`
	// Containers in tree order, parents before children; Containers[0] is
	// the root of the subtree.
	Containers []Container `json:"containers"`
	// Files lists every archive entry except cr-image.json, manifest.json
	// and manifest.sha256, in archive order.
	Files []File `json:"files"`
	// Stats are whole-checkpoint timings and sizes, filled by the dumper.
	Stats *Stats `json:"stats,omitempty"`
}

// Container is one node of the checkpointed subtree.
type Container struct {
	// Path is relative to Manifest.Root: "/" for the root container,
	// "/child", "/child/grandchild".
	Path string `json:"path"`
	// Dir is the archive directory that holds the node's CRIU images:
	// "checkpoint" for the root container, "containers/<n>/checkpoint" for
	// the others. Empty when the node has no images (Empty).
	Dir        string   `json:"dir,omitempty"`
	Command    []string `json:"command,omitempty"`
	Cwd        string   `json:"cwd,omitempty"`
	Env        []string `json:"env,omitempty"`
	Namespaces []string `json:"namespaces,omitempty"` // "pid", "ipc", "uts", "mnt", "net"
	OnEmpty    string   `json:"on_empty,omitempty"`   // "delete", "keep" or "notify"
	// OnEmptyExec is the shell command run when the container becomes
	// empty (cr run --on-empty-exec).
	OnEmptyExec string            `json:"on_empty_exec,omitempty"`
	Until       string            `json:"until,omitempty"` // "job" (or absent) or "empty"
	Limits      map[string]string `json:"limits,omitempty"`
	// Network is the container's bridge network, if it had one: the
	// restore gives it the same address.
	Network *Network  `json:"network,omitempty"`
	Created time.Time `json:"created"`
	// InitPid is the host pid of the container init at dump time
	// (informational).
	InitPid int `json:"init_pid,omitempty"`
	// Processes of the container at dump time, pids as seen inside it.
	Processes []Process  `json:"processes,omitempty"`
	Dump      *DumpStats `json:"dump,omitempty"`
	// Empty marks an intermediate node that had no job: it has no images.
	Empty bool `json:"empty,omitempty"`
	// Rootfs is the file system of a --rootfs container.
	Rootfs *Rootfs `json:"rootfs,omitempty"`
}

// Network is a container's bridge network.
type Network struct {
	Mode    string `json:"mode"`    // "bridge"
	Address string `json:"address"` // with the subnet's length: "10.88.0.5/16"
	// Publish are its published ports, HOSTPORT:PORT/PROTO.
	Publish []string `json:"publish,omitempty"`
}

// Process is one process of a container at dump time.
type Process struct {
	Pid     int    `json:"pid"` // inside the container's pid namespace
	PPid    int    `json:"ppid"`
	Command string `json:"command"`
}

// DumpStats are CRIU's statistics of one container's dump (its stats-dump
// file). Times are in microseconds.
type DumpStats struct {
	FreezingTime       uint32 `json:"freezing_time"`
	FrozenTime         uint32 `json:"frozen_time"`
	MemdumpTime        uint32 `json:"memdump_time"`
	MemwriteTime       uint32 `json:"memwrite_time"`
	PagesScanned       uint64 `json:"pages_scanned"`
	PagesSkippedParent uint64 `json:"pages_skipped_parent"`
	PagesWritten       uint64 `json:"pages_written"`
	PagesLazy          uint64 `json:"pages_lazy"`
}

// File is one archive entry: a regular file, or a directory (Dir, Size 0, no
// SHA256).
type File struct {
	Name   string `json:"name"`             // slash-separated, relative, without a trailing slash
	Size   int64  `json:"size"`             // bytes
	SHA256 string `json:"sha256,omitempty"` // lowercase hex of the content
	Mode   uint32 `json:"mode"`             // permission bits, at most 0o777
	Dir    bool   `json:"dir,omitempty"`
}

// Stats are whole-checkpoint timings and sizes.
type Stats struct {
	FrozenMicros int64 `json:"frozen_micros"`
	DumpMicros   int64 `json:"dump_micros"`
	WriteMicros  int64 `json:"write_micros"`
	RawBytes     int64 `json:"raw_bytes"`
	ImageBytes   int64 `json:"image_bytes"`
	PagesScanned int64 `json:"pages_scanned"`
	PagesWritten int64 `json:"pages_written"`
}

// header is the content of cr-image.json.
type header struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
}

// headerBytes is cr-image.json as the writer emits it.
var headerBytes = []byte(`{"format":"cr-image","version":2}` + "\n")

// Name limits: a whole entry name and one of its components.
const (
	maxNameLen      = 1024
	maxComponentLen = 255
)

// checkName reports whether name is a safe relative entry name: non-empty,
// valid UTF-8, slash-separated, without empty, "." or ".." components, NUL
// bytes or a leading or trailing slash.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > maxNameLen:
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	case !utf8.ValidString(name):
		return errors.New("name is not valid UTF-8")
	case strings.ContainsRune(name, 0):
		return errors.New("name contains NUL")
	case strings.HasPrefix(name, "/"):
		return errors.New("absolute name")
	}
	for c := range strings.SplitSeq(name, "/") {
		switch {
		case c == "":
			return errors.New("empty path component")
		case c == "." || c == "..":
			return fmt.Errorf("path component %q", c)
		case len(c) > maxComponentLen:
			return fmt.Errorf("path component longer than %d bytes", maxComponentLen)
		}
	}
	return nil
}

// reserved reports whether name is one of the entries that frame the content.
func reserved(name string) bool {
	return name == HeaderFile || name == ManifestFile || name == TrailerFile
}

// ValidateManifest checks a manifest's own consistency, as every reader
// does before anyone uses it (the archive readers through DecodeManifest,
// the snapshot store on its records): format and version, entry names that
// could escape a directory, the root and every container path under the
// tree's name rules (nstree.ValidatePath), and tree order. It does not
// compare Files with an archive.
func ValidateManifest(m *Manifest) error { return m.validate() }

func (m *Manifest) validate() error {
	if m.Format != FormatName {
		return fmt.Errorf("manifest format %q", m.Format)
	}
	if m.Version < 1 || m.Version > FormatVersion {
		return fmt.Errorf("manifest version %d", m.Version)
	}
	seen := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		if err := checkName(f.Name); err != nil {
			return fmt.Errorf("%w: manifest file %q: %w", ErrUnsafeEntry, f.Name, err)
		}
		if reserved(f.Name) {
			return fmt.Errorf("manifest lists reserved file %q", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("%w: manifest lists %q twice (duplicate entry)", ErrUnsafeEntry, f.Name)
		}
		seen[f.Name] = true
		if f.Mode&^0o777 != 0 {
			return fmt.Errorf("%w: manifest file %q: mode %#o", ErrUnsafeEntry, f.Name, f.Mode)
		}
		if f.Dir {
			if f.Size != 0 || f.SHA256 != "" {
				return fmt.Errorf("manifest dir %q has a size or checksum", f.Name)
			}
			continue
		}
		if f.Size < 0 {
			return fmt.Errorf("manifest file %q: size %d", f.Name, f.Size)
		}
		if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != 32 || strings.ToLower(f.SHA256) != f.SHA256 {
			return fmt.Errorf("manifest file %q: bad sha256 %q", f.Name, f.SHA256)
		}
	}
	if m.Root == "/" {
		return errors.New("manifest root is \"/\", not a container")
	}
	if err := nstree.ValidatePath(m.Root); err != nil {
		return fmt.Errorf("manifest root: %w", err)
	}
	paths := make(map[string]bool, len(m.Containers))
	dirs := make(map[string]bool, len(m.Containers))
	for i, c := range m.Containers {
		if err := nstree.ValidatePath(c.Path); err != nil {
			return fmt.Errorf("container path: %w", err)
		}
		if i == 0 && c.Path != "/" {
			return fmt.Errorf("first container is %q, not the root %q", c.Path, "/")
		}
		if i > 0 && !paths[path.Dir(c.Path)] {
			return fmt.Errorf("container %q listed before its parent", c.Path)
		}
		if paths[c.Path] {
			return fmt.Errorf("container %q listed twice", c.Path)
		}
		paths[c.Path] = true
		if err := c.Rootfs.validate(seen); err != nil {
			return fmt.Errorf("container %q: rootfs: %w", c.Path, err)
		}
		if n := c.Network; n != nil {
			if p, err := netip.ParsePrefix(n.Address); n.Mode != "bridge" || err != nil || !p.Addr().Is4() {
				return fmt.Errorf("container %q: bad network %q %q", c.Path, n.Mode, n.Address)
			}
			if len(n.Publish) > 1024 {
				return fmt.Errorf("container %q: %d published ports", c.Path, len(n.Publish))
			}
			for _, p := range n.Publish {
				if _, err := network.ParsePort(p); err != nil {
					return fmt.Errorf("container %q: %v", c.Path, err)
				}
			}
		}
		if c.Dir == "" {
			if !c.Empty {
				return fmt.Errorf("container %q has no image dir", c.Path)
			}
			continue
		}
		if err := checkName(c.Dir); err != nil {
			return fmt.Errorf("container %q: dir %q: %w", c.Path, c.Dir, err)
		}
		if dirs[c.Dir] {
			return fmt.Errorf("container %q: dir %q used twice", c.Path, c.Dir)
		}
		dirs[c.Dir] = true
	}
	return nil
}

// checkContainerDirs checks that every container's image dir is a directory
// entry of the archive.
func (m *Manifest) checkContainerDirs(isDir func(string) bool) error {
	for _, c := range m.Containers {
		if c.Dir != "" && !isDir(c.Dir) {
			return fmt.Errorf("container %q: dir %q not in archive", c.Path, c.Dir)
		}
	}
	return nil
}

// DecodeManifest parses manifest.json's bytes and checks their consistency.
// It is for callers that kept a manifest next to an image; the readers in
// this package use it on the archive's own manifest.
func DecodeManifest(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode manifest: trailing data")
	}
	if m.Format == FormatName && m.Version > FormatVersion {
		return nil, fmt.Errorf("%w: manifest version %d, this cr reads version %d", ErrUnsupportedVersion, m.Version, FormatVersion)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("check manifest: %w", err)
	}
	return &m, nil
}

// HostInfo returns what a manifest records about the dumping host: the
// kernel release, the GOARCH, and the CPU feature flags of /proc/cpuinfo's
// first processor ("flags" on x86, "Features" on arm64). Missing information
// is returned empty.
func HostInfo() (kernel, arch string, cpuFeatures []string) {
	arch = runtime.GOARCH
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return kernel, arch, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if k := strings.TrimSpace(key); k == "flags" || k == "Features" {
			return kernel, arch, strings.Fields(val)
		}
	}
	return kernel, arch, nil
}
