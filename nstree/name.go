package nstree

import (
	"fmt"
	"strconv"
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

// ValidatePath checks a path that arrives already absolute from somewhere
// other than a user's command line (an image's manifest, a migration
// request, a snapshot record): it must be in the canonical form the tree
// stores, "/" or "/" followed by valid names (ValidateName) separated by
// single slashes, without a trailing slash. It is ParsePath without the
// leniency for what users type. Errors wrap ErrInvalidName.
func ValidatePath(abs string) error {
	if abs == "/" {
		return nil
	}
	if !strings.HasPrefix(abs, "/") || strings.HasSuffix(abs, "/") {
		return fmt.Errorf("%w: %s is not an absolute path", ErrInvalidName, Quote(abs))
	}
	parts, err := ParsePath(abs)
	if err != nil {
		return err
	}
	if Join(parts...) != abs {
		return fmt.Errorf("%w: %s is not a clean path", ErrInvalidName, Quote(abs))
	}
	return nil
}

// Quote returns a path or name as cr prints it: unchanged when every name in
// it is valid, else quoted with Go's escapes (strconv.Quote), so that a name
// read from disk or from an image can never forge a line, hide text or
// reorder it on a terminal.
func Quote(p string) string {
	if printablePath(p) {
		return p
	}
	return strconv.Quote(p)
}

func printablePath(p string) bool {
	if p == "/" {
		return true
	}
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if ValidateName(c) != nil {
			return false
		}
	}
	return true
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
