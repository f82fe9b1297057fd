package nstree

import (
	"fmt"
	"strings"
)

// MaxNameLen is the longest container name, in bytes.
const MaxNameLen = 64

// ValidateName reports whether s may name a container: 1 to 64 bytes of
// letters, digits and "_-.+@:", not starting with "." or "-". Names starting
// with a dot are reserved (".", "..", and cr's own files); a leading "-" would
// read as a flag.
func ValidateName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	case s == "." || s == "..":
		return fmt.Errorf("%w: %q is not a name", ErrInvalidName, s)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%w: %q is longer than %d bytes", ErrInvalidName, trunc(s), MaxNameLen)
	case s[0] == '.' || s[0] == '-':
		return fmt.Errorf("%w: %q: a name may not start with %q", ErrInvalidName, s, s[:1])
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("_-.+@:", r):
		case r == '/':
			return fmt.Errorf("%w: %q: a name may not contain '/'", ErrInvalidName, s)
		case r < 0x20 || r == 0x7f:
			return fmt.Errorf("%w: %q: control character in name", ErrInvalidName, s)
		default:
			return fmt.Errorf("%w: %q: character %q not allowed (use letters, digits and _-.+@:)", ErrInvalidName, s, r)
		}
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

// ParsePath parses a container path as a user typed it. Leading and trailing
// slashes are optional ("a/b", "/a/b" and "/a/b/" are the same path, relative
// to the viewer's root); every component must be a valid name. "/" (or "")
// is the viewer's root itself, returned as an empty slice.
func ParsePath(p string) ([]string, error) {
	if strings.ContainsAny(p, "\x00") {
		return nil, fmt.Errorf("%w: path contains a NUL byte", ErrInvalidName)
	}
	if strings.Contains(p, "//") {
		return nil, fmt.Errorf("%w: path %q has an empty name", ErrInvalidName, p)
	}
	s := strings.TrimSuffix(strings.TrimPrefix(p, "/"), "/")
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, "/")
	for _, c := range parts {
		if err := ValidateName(c); err != nil {
			return nil, fmt.Errorf("path %q: %w", p, err)
		}
	}
	return parts, nil
}

// Join makes an absolute path from components: Join() is "/".
func Join(parts ...string) string { return "/" + strings.Join(parts, "/") }

// Split is the inverse of Join for a clean absolute path.
func Split(abs string) []string {
	s := strings.Trim(abs, "/")
	if s == "" {
		return nil
	}
	return strings.Split(s, "/")
}

// Viewer is the container a process runs in, from whose point of view paths
// are named: its root ("/" for the host, "/vserver1" inside that container).
type Viewer struct {
	Root string // absolute host path of the viewer's container; "/" for the host
}

// HostViewer sees the whole tree.
var HostViewer = Viewer{Root: "/"}

// Resolve turns a path the viewer typed into an absolute host path. It can
// never name anything above the viewer's root: names are validated, so ".."
// is refused rather than followed.
func (v Viewer) Resolve(p string) (string, error) {
	parts, err := ParsePath(p)
	if err != nil {
		return "", err
	}
	return Join(append(Split(v.Root), parts...)...), nil
}

// Show turns an absolute host path into the path the viewer knows it by.
// ok is false if the path is outside the viewer's subtree.
func (v Viewer) Show(abs string) (string, bool) {
	if v.Root == "/" {
		return abs, true
	}
	if abs == v.Root {
		return "/", true
	}
	if strings.HasPrefix(abs, v.Root+"/") {
		return abs[len(v.Root):], true
	}
	return "", false
}

// Contains reports whether abs is the viewer's root or below it.
func (v Viewer) Contains(abs string) bool {
	_, ok := v.Show(abs)
	return ok
}

// IsBelow reports whether abs is strictly inside the subtree rooted at root.
func IsBelow(abs, root string) bool {
	if root == "/" {
		return abs != "/"
	}
	return strings.HasPrefix(abs, root+"/")
}
