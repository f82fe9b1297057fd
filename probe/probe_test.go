package probe

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

func TestStale(t *testing.T) {
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	dead := strconv.Itoa(c.Process.Pid)
	for name, want := range map[string]bool{
		"cr-probe-" + dead:                      true,
		"cr-probe-" + strconv.Itoa(os.Getpid()): false, // this process's own
		"cr-probe-1":                            false, // alive
		"cr-probe-0" + dead:                     false, // not as cr names them
		"cr-probe-":                             false,
		"cr-probe--5":                           false,
		"cr":                                    false,
		"cr-e2e-" + dead:                        false,
	} {
		if got := stale(name); got != want {
			t.Errorf("stale(%q) = %v, want %v", name, got, want)
		}
	}
}
