// Package criubin owns cr's knowledge of the CRIU binary and of what the
// host lets it do: where CRIU is (Find), its version, `criu check` and the
// kernel features CRIU probes, the capabilities and pipe limits of the
// current process, and CRIU's own explanation of a failure, taken from its
// log (LogErrors, CRIUError).
package criubin

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// InstalledPath is where scripts/provision.sh installs CRIU for cr.
const InstalledPath = "/usr/local/libexec/cr/criu"

// EnvVar names the environment variable that points cr at a CRIU binary.
const EnvVar = "CR_CRIU"

// ErrNotFound means no executable CRIU binary was found.
var ErrNotFound = errors.New("criu not found")

// Find returns the CRIU binary to use, the first of: explicit (the --criu
// flag), $CR_CRIU, InstalledPath, "criu" on $PATH. A name without a slash is
// looked up on $PATH. When explicit or $CR_CRIU is set but is not an
// executable file, Find fails rather than fall back to another CRIU than the
// one asked for. The error wraps ErrNotFound and says where Find looked.
func Find(explicit string) (string, error) {
	return find(explicit, os.Getenv(EnvVar), InstalledPath)
}

func find(explicit, env, installed string) (string, error) {
	if explicit != "" {
		p, err := lookPath(explicit)
		if err != nil {
			return "", fmt.Errorf("%w: --criu %s: %v", ErrNotFound, explicit, err)
		}
		return p, nil
	}
	if env != "" {
		p, err := lookPath(env)
		if err != nil {
			return "", fmt.Errorf("%w: $%s=%s: %v", ErrNotFound, EnvVar, env, err)
		}
		return p, nil
	}
	var looked []string
	for _, c := range []struct{ name, where string }{
		{installed, installed},
		{"criu", "criu on $PATH"},
	} {
		p, err := lookPath(c.name)
		if err == nil {
			return p, nil
		}
		looked = append(looked, c.where)
	}
	return "", fmt.Errorf("%w (looked at --criu, $%s, %s): run scripts/provision.sh to install it",
		ErrNotFound, EnvVar, strings.Join(looked, ", "))
}

// lookPath is exec.LookPath with an absolute result and a shorter error.
func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		var e *exec.Error
		if errors.As(err, &e) {
			err = e.Err
		}
		return "", err
	}
	return filepath.Abs(p)
}
