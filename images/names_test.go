package images

import (
	"strings"
	"testing"
)

// hostileRoots are manifest roots that would create a node no cr command
// can name, or that forge lines in cr ls.
var hostileRoots = []string{
	"/../x", "/\x1b[8mhidden", "/lab/.hidden", "/lab/new\nline", "/nul\x00byte", "/rlo\u202eexe.rc",
	"/" + strings.Repeat("x", 200), "/", "", "lab", "/lab/", "/lab//x", "/-flag", "/with space",
}

// TestManifestHostileRoot: the root an image names for itself goes through
// the tree's own name rules.
func TestManifestHostileRoot(t *testing.T) {
	for _, root := range hostileRoots {
		m := testManifest()
		m.Format, m.Version = FormatName, FormatVersion
		m.Root = root
		if err := ValidateManifest(m); err == nil {
			t.Errorf("root %q accepted", root)
		}
		if _, err := DecodeManifest([]byte(manifestJSON(t, m))); err == nil {
			t.Errorf("DecodeManifest: root %q accepted", root)
		}
	}
}

// TestManifestHostileContainerPath: so do the containers' paths below it.
func TestManifestHostileContainerPath(t *testing.T) {
	for _, p := range []string{"/.hidden", "/mid/\x1b[2Jx", "/mid/a b", "/mid/-y", "/mid/" + strings.Repeat("y", 65), "/mid/\u202e"} {
		m := testManifest()
		m.Format, m.Version = FormatName, FormatVersion
		m.Containers[2].Path = p
		if !strings.HasPrefix(p, "/mid/") {
			m.Containers = m.Containers[:2]
			m.Containers[1].Path = p
		}
		if err := ValidateManifest(m); err == nil {
			t.Errorf("container path %q accepted", p)
		}
	}
	m := testManifest()
	m.Format, m.Version = FormatName, FormatVersion
	if err := ValidateManifest(m); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
}
