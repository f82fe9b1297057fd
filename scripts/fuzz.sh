#!/usr/bin/env bash
# fuzz.sh TIME [PKG...]: run every Go fuzz target (func FuzzXxx) of the
# packages (default: those that have any) for TIME each (a duration, 3s, or
# a count, 500x), one target at a time: `go test -fuzz` takes one package
# and one target per run. A crash stops the run; Go writes the input to
# PKG/testdata/fuzz/FuzzXxx/ and it then runs with every `go test` as a
# regular test. FUZZPARALLEL (default 1) is the number of fuzzing workers.
set -euo pipefail
GO=${GO:-go}
time=${1:?usage: fuzz.sh TIME [PKG...]}
shift
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
	pkgs=(./images ./images/store ./migrate ./events)
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for pkg in "${pkgs[@]}"; do
	for target in $("$GO" test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
		echo "fuzz $pkg $target for $time"
		# Minimizing each new input for long (the default is 60s) would
		# take most of a short run.
		if "$GO" test -run '^$' -fuzz "^$target\$" -fuzztime "$time" -fuzzminimizetime 100x \
			-parallel "${FUZZPARALLEL:-1}" "$pkg" >"$out" 2>&1; then
			cat "$out"
			continue
		fi
		# Go's fuzzing coordinator (up to 1.26) may report the end of a
		# -fuzztime duration itself as "context deadline exceeded" when a
		# worker is busy at that moment (go.dev/issue/75804): a failure
		# without a failing input, which is not one.
		if grep -qx '    context deadline exceeded' "$out" && ! grep -q 'Failing input written to' "$out"; then
			grep '^fuzz: elapsed' "$out" || true
			echo "fuzz $pkg $target: passed; Go reported the end of -fuzztime as a failure (go.dev/issue/75804), not a crash"
			continue
		fi
		cat "$out"
		exit 1
	done
done
