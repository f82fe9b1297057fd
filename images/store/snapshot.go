package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/cr-dev/cr/images"
)

// idLen is the number of hex digits of a snapshot id: the start of the
// sha256 of its record.
const idLen = 16

// Snapshot is one checkpoint of a subtree kept in the store.
type Snapshot struct {
	ID         string // first 16 hex digits of the sha256 of the record
	Path       string // the checkpointed container path (Manifest.Root)
	Host       string // the host that took it, "" when not recorded
	Time       time.Time
	Manifest   *images.Manifest
	Files      []FileRef
	AddedBytes int64 // compressed bytes of the chunks this snapshot added
	TotalBytes int64 // sum of the sizes of its files
}

// FileRef is one file or directory of a snapshot's staging dir.
type FileRef struct {
	Name   string   `json:"name"` // slash-separated, relative to the staging dir
	Size   int64    `json:"size"`
	Mode   uint32   `json:"mode"` // permission bits, at most 0o777
	Dir    bool     `json:"dir,omitempty"`
	SHA256 string   `json:"sha256,omitempty"` // of the whole content; empty for a dir
	Chunks []string `json:"chunks,omitempty"` // sha256 of each chunk's plaintext, in order
}

// record is the JSON content of snapshots/<id>.json.
type record struct {
	Version    int             `json:"version"`
	Path       string          `json:"path"`
	Host       string          `json:"host,omitempty"`
	Time       time.Time       `json:"time"`
	Manifest   json.RawMessage `json:"manifest"`
	Files      []FileRef       `json:"files"`
	AddedBytes int64           `json:"added_bytes"`
	TotalBytes int64           `json:"total_bytes"`
}

// encodeRecord returns the record's bytes and the id they name.
func encodeRecord(r *record) ([]byte, string, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, "", fmt.Errorf("encode snapshot record: %w", err)
	}
	b = append(b, '\n')
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])[:idLen], nil
}

// loadSnapshot reads and checks the record of id. A record that does not
// match its id or does not decode is a Damage.
func (s *Store) loadSnapshot(id string) (*Snapshot, error) {
	b, err := s.be.readRecord(context.Background(), id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", id, err)
	}
	snap, err := decodeRecord(id, b)
	if err != nil {
		return nil, err
	}
	return snap, nil
}

func decodeRecord(id string, b []byte) (*Snapshot, error) {
	damaged := func(format string, args ...any) error {
		return Damage{SnapshotID: id, Reason: "record: " + fmt.Sprintf(format, args...)}
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:])[:idLen] != id {
		return nil, damaged("hash mismatch")
	}
	var r record
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&r); err != nil {
		return nil, damaged("decode: %v", err)
	}
	if r.Version > FormatVersion {
		return nil, fmt.Errorf("snapshot %s: %w: record version %d", id, ErrUnsupportedVersion, r.Version)
	}
	if r.Version != FormatVersion {
		return nil, damaged("version %d", r.Version)
	}
	if r.Path == "" {
		return nil, damaged("no path")
	}
	m, err := images.DecodeManifest(r.Manifest)
	if errors.Is(err, images.ErrUnsupportedVersion) {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if err != nil {
		return nil, damaged("%v", err)
	}
	if r.Path != m.Root {
		return nil, damaged("path %q is not the manifest's root %q", r.Path, m.Root)
	}
	if err := checkManifestFiles(m, r.Files); err != nil {
		return nil, damaged("manifest: %v", err)
	}
	seen := make(map[string]bool, len(r.Files))
	var total int64
	for _, f := range r.Files {
		if err := checkFileRef(f); err != nil {
			return nil, damaged("file %q: %v", f.Name, err)
		}
		if seen[f.Name] {
			return nil, damaged("file %q listed twice", f.Name)
		}
		seen[f.Name] = true
		total += f.Size
	}
	if total != r.TotalBytes {
		return nil, damaged("total_bytes %d, files add up to %d", r.TotalBytes, total)
	}
	return &Snapshot{
		ID:         id,
		Path:       r.Path,
		Host:       r.Host,
		Time:       r.Time,
		Manifest:   m,
		Files:      r.Files,
		AddedBytes: r.AddedBytes,
		TotalBytes: r.TotalBytes,
	}, nil
}

// checkManifestFiles checks what a record's manifest says of its files
// against the record's own list, as the archive reader checks an image's
// manifest against its entries: the same entries in the same order, and
// every container's image dir one of its directories. With
// images.ValidateManifest (through images.DecodeManifest) this is the one
// validation both kinds of manifests get.
func checkManifestFiles(m *images.Manifest, files []FileRef) error {
	if len(m.Files) != len(files) {
		return fmt.Errorf("lists %d files, the record %d", len(m.Files), len(files))
	}
	dirs := make(map[string]bool)
	for i, f := range files {
		mf := m.Files[i]
		if mf.Name != f.Name || mf.Size != f.Size || mf.SHA256 != f.SHA256 || mf.Mode != f.Mode || mf.Dir != f.Dir {
			return fmt.Errorf("file %q differs from the record's %q", mf.Name, f.Name)
		}
		if f.Dir {
			dirs[f.Name] = true
		}
	}
	for _, c := range m.Containers {
		if c.Dir != "" && !dirs[c.Dir] {
			return fmt.Errorf("container %q: dir %q is not a directory of the snapshot", c.Path, c.Dir)
		}
	}
	return nil
}

// checkFileRef checks what Materialize relies on: a name that stays inside
// the destination, and well-formed chunk names.
func checkFileRef(f FileRef) error {
	if !fs.ValidPath(f.Name) || f.Name == "." {
		return errors.New("bad name")
	}
	if f.Mode&^0o777 != 0 {
		return fmt.Errorf("mode %#o", f.Mode)
	}
	if f.Dir {
		if f.Size != 0 || f.SHA256 != "" || len(f.Chunks) != 0 {
			return errors.New("directory with content")
		}
		return nil
	}
	if f.Size < 0 || (f.Size > 0) != (len(f.Chunks) > 0) || f.Size > int64(len(f.Chunks))*MaxChunk {
		return fmt.Errorf("size %d with %d chunks", f.Size, len(f.Chunks))
	}
	if !isHash(f.SHA256) {
		return fmt.Errorf("bad sha256 %q", f.SHA256)
	}
	for _, c := range f.Chunks {
		if !isHash(c) {
			return fmt.Errorf("bad chunk name %q", c)
		}
	}
	return nil
}

// isHash reports whether s is 64 lowercase hex digits.
func isHash(s string) bool {
	return len(s) == 2*sha256.Size && isLowerHex(s)
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ids returns the ids of every snapshot record, sorted.
func (s *Store) ids() ([]string, error) {
	ids, err := s.be.recordIDs(context.Background())
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	slices.Sort(ids)
	return ids, nil
}

// List returns the snapshots of path, or all snapshots when path is "",
// oldest first (ties by id). A damaged record makes List fail with a Damage
// naming it: Verify reports them all, Remove deletes one.
func (s *Store) List(path string) ([]*Snapshot, error) {
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	var snaps []*Snapshot
	for _, id := range ids {
		snap, err := s.loadSnapshot(id)
		if errors.Is(err, ErrNotFound) {
			continue // removed since ReadDir
		}
		if err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
		if path == "" || snap.Path == path {
			snaps = append(snaps, snap)
		}
	}
	sortSnapshots(snaps)
	return snaps, nil
}

func sortSnapshots(snaps []*Snapshot) {
	slices.SortStableFunc(snaps, func(a, b *Snapshot) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// resolve returns the one id that starts with prefix.
func (s *Store) resolve(prefix string) (string, error) {
	p := strings.ToLower(prefix)
	if p == "" || len(p) > idLen || !isLowerHex(p) {
		return "", fmt.Errorf("%w: %q", ErrNotFound, prefix)
	}
	ids, err := s.ids()
	if err != nil {
		return "", err
	}
	var match []string
	for _, id := range ids {
		if strings.HasPrefix(id, p) {
			match = append(match, id)
		}
	}
	switch len(match) {
	case 0:
		return "", fmt.Errorf("%w: %q", ErrNotFound, prefix)
	case 1:
		return match[0], nil
	default:
		return "", fmt.Errorf("%w: %q matches %s", ErrAmbiguous, prefix, strings.Join(match, ", "))
	}
}

// Get returns the snapshot whose id is idOrPrefix or the only one that
// starts with it: ErrNotFound when none does, ErrAmbiguous when several do.
func (s *Store) Get(idOrPrefix string) (*Snapshot, error) {
	id, err := s.resolve(idOrPrefix)
	if err != nil {
		return nil, fmt.Errorf("get snapshot: %w", err)
	}
	snap, err := s.loadSnapshot(id)
	if err != nil {
		return nil, fmt.Errorf("get snapshot: %w", err)
	}
	return snap, nil
}

// Latest returns the newest snapshot of path ("" for any path), or
// ErrNotFound.
func (s *Store) Latest(path string) (*Snapshot, error) {
	return s.LatestFrom(path, "")
}

// LatestFrom returns the newest snapshot of path ("" for any path) taken
// by host ("" for any host), or ErrNotFound.
func (s *Store) LatestFrom(path, host string) (*Snapshot, error) {
	all, err := s.List(path)
	if err != nil {
		return nil, err
	}
	snaps := all
	if host != "" {
		snaps = nil
		for _, sn := range all {
			if sn.Host == host {
				snaps = append(snaps, sn)
			}
		}
		if len(snaps) == 0 {
			what := "store"
			if path != "" {
				what = path
			}
			return nil, fmt.Errorf("latest snapshot: %w: none of %s from host %s", ErrNotFound, what, host)
		}
	}
	if len(snaps) == 0 {
		if path == "" {
			return nil, fmt.Errorf("latest snapshot: %w: store is empty", ErrNotFound)
		}
		return nil, fmt.Errorf("latest snapshot: %w: none of %s", ErrNotFound, path)
	}
	return snaps[len(snaps)-1], nil
}

// Remove deletes the records of the given snapshots (ids or unique
// prefixes; all are resolved before any is removed). Their chunks stay until
// Prune, so a crash between the two leaves only garbage.
func (s *Store) Remove(ids ...string) error {
	unlock, err := s.hold(context.Background(), false)
	if err != nil {
		return fmt.Errorf("remove snapshots: %w", err)
	}
	defer unlock()
	return s.remove(ids)
}

func (s *Store) remove(ids []string) error {
	full := make([]string, 0, len(ids))
	for _, p := range ids {
		id, err := s.resolve(p)
		if err != nil {
			return fmt.Errorf("remove snapshot: %w", err)
		}
		full = append(full, id)
	}
	if err := s.be.removeRecords(context.Background(), full); err != nil {
		return fmt.Errorf("remove snapshots: %w", err)
	}
	return nil
}
