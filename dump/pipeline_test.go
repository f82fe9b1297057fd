package dump

import (
	"errors"
	"fmt"
	"testing"
)

// Settle decides the source's fate: resumed on a failure, untouched (left
// frozen) on a failure in doubt, untouched when it was left running.
func TestSettle(t *testing.T) {
	boom := errors.New("disk full")
	for _, tc := range []struct {
		name         string
		err          error
		leaveRunning bool
		resumed      bool
	}{
		{"failure", boom, false, true},
		{"failure left running", boom, true, true},
		{"in doubt", fmt.Errorf("%w: connection lost after commit", ErrInDoubt), false, false},
		{"success left running", nil, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Checkpoint{}
			err := c.Settle(tc.err, tc.leaveRunning)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Errorf("Settle = %v, want %v", err, tc.err)
			}
			if c.resumed != tc.resumed {
				t.Errorf("resumed %v, want %v", c.resumed, tc.resumed)
			}
		})
	}
}

// Every sink of the package is a Sink.
var _ = []Sink{&FileSink{}, &ArchiveSink{}, &StoreSink{}}
