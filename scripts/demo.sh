#!/usr/bin/env bash
# demo.sh CR: a short tour of cr's main job: a tree of containers, frozen,
# thawed, checkpointed into one file, restored with its pids, and removed.
# It works in a tree of its own (its own state dir and cgroup parent) and
# removes everything it made.
set -euo pipefail
CR=$(realpath "${1:-bin/cr}")
tmp=$(mktemp -d /tmp/cr-demo.XXXXXX)
export CR_STATE_DIR=$tmp/state CR_CGROUP_PARENT=cr-demo-$$ CR_BIN_DIR=$tmp/bin
cleanup() {
	"$CR" kill --grace 1s /demo >/dev/null 2>&1 || true
	# The parent in every hierarchy: cr's own, and the v1 controllers'
	# (memory, pids, blkio, ...) where its limits' mirrors live.
	for d in /sys/fs/cgroup/$CR_CGROUP_PARENT /sys/fs/cgroup/*/$CR_CGROUP_PARENT; do
		[ -d "$d" ] && rmdir "$d" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$CR" check
step "$CR" run /demo/calculate_pi -- sh -c 'i=0; while :; do i=$((i+1)); echo "step $i"; sleep 0.1; done'
step "$CR" run /demo/web -- sleep 100000
sleep 1
step "$CR" ls -r
step "$CR" ps /demo/calculate_pi
step "$CR" freeze /demo
step "$CR" ls -r /demo
step "$CR" thaw /demo
step "$CR" checkpoint /demo -o "$tmp/demo.cr"
step "$CR" ls -r
step "$CR" restore "$tmp/demo.cr"
sleep 0.5
step "$CR" ps /demo/calculate_pi
echo "(the job's pids inside its container are the ones it had before)"
step "$CR" logs /demo/calculate_pi
step "$CR" kill /demo
step "$CR" ls -r
printf '\ndemo done: a tree of containers was frozen, checkpointed to one file, restored with its pids, and removed.\n'
