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
	pkgs=(./images ./images/store ./migrate)
fi
for pkg in "${pkgs[@]}"; do
	for target in $("$GO" test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
		echo "fuzz $pkg $target for $time"
		# Minimizing each new input for long (the default is 60s) would
		# take most of a short run.
		"$GO" test -run '^$' -fuzz "^$target\$" -fuzztime "$time" -fuzzminimizetime 100x \
			-parallel "${FUZZPARALLEL:-1}" "$pkg"
	done
done
