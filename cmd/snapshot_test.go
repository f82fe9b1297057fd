package cmd

import (
	"testing"

	"github.com/spf13/pflag"

	"github.com/cr-dev/cr/images/store"
)

// TestRetentionFlags: every --keep-* flag reaches the policy, and a bad
// --keep-within is a usage error.
func TestRetentionFlags(t *testing.T) {
	parse := func(args ...string) (store.Policy, error) {
		var r RetentionOptions
		f := pflag.NewFlagSet("t", pflag.ContinueOnError)
		r.AddFlags(f)
		if err := f.Parse(args); err != nil {
			t.Fatal(err)
		}
		return r.policy()
	}
	p, err := parse("--keep-last", "1", "--keep-hourly", "2", "--keep-daily", "3", "--keep-weekly", "4",
		"--keep-monthly", "5", "--keep-yearly", "6", "--keep-within", "2y5m7d3h")
	want := store.Policy{Last: 1, Hourly: 2, Daily: 3, Weekly: 4, Monthly: 5, Yearly: 6,
		Within: store.Duration{Years: 2, Months: 5, Days: 7, Hours: 3}}
	if err != nil || p != want {
		t.Errorf("policy %+v, %v; want %+v", p, err, want)
	}
	if got := p.String(); got != "keep the last snapshot, 2 hourly, 3 daily, 4 weekly, 5 monthly, 6 yearly and all within 2y5m7d3h of the newest" {
		t.Errorf("policy reads %q", got)
	}
	for _, bad := range [][]string{{"--keep-within", "7w"}, {"--keep-monthly", "-1"}, {"--keep-yearly", "-2"}} {
		if _, err := parse(bad...); ExitCode(err) != ExitUsage {
			t.Errorf("%v: %v (exit %d), want a usage error", bad, err, ExitCode(err))
		}
	}
}
