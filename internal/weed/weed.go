// Package weed finds the SeaweedFS binary that the end-to-end tests and the
// bench run as their S3 server (test and bench support only).
package weed

import (
	"errors"
	"os"
	"os/exec"
)

// Installed is where scripts/provision.sh installs SeaweedFS.
const Installed = "/usr/local/libexec/cr/weed"

// Find returns $CR_WEED, the provisioned binary, or weed on PATH, in that
// order.
func Find() (string, error) {
	for _, c := range []string{os.Getenv("CR_WEED"), Installed} {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(c); err == nil && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	if p, err := exec.LookPath("weed"); err == nil {
		return p, nil
	}
	return "", errors.New("no SeaweedFS: " + Installed + " is missing (make provision builds it)")
}
