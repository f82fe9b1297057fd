#!/usr/bin/env bash
# provision.sh: install what cr needs on a fresh Debian machine of this kind.
#
#   - Go modules (go mod download)
#   - CRIU >= 4.2: if no working CRIU is found (CR_CRIU, the project-installed
#     one at $CR_CRIU_PREFIX/criu, or criu on PATH, each judged by `criu check`),
#     build CRIU 4.2.1 from Debian's source tarball, checksum verified, and
#     install it at $CR_CRIU_PREFIX/criu (default /usr/local/libexec/cr).
#     CRIU 4.1 cannot dump any IPv4/IPv6 socket on kernels >= 6.16 (they refuse
#     SO_PASSCRED on inet sockets), so 4.1 no longer counts as working.
#   - checkpointctl v1.6.0 (go install), to test image compatibility
#   - SeaweedFS (weed), the S3-compatible server the tests of S3 stores run on
#     loopback: built from its Go module source (go install refuses it for
#     the replace directives in its go.mod) into $CR_CRIU_PREFIX/weed, with
#     the version recorded in weed.build; a second run with the same version
#     does nothing (a few minutes on 2 cores the first time).
#   - iproute2 and util-linux (nsenter) for namespaces, used by cr and its tests.
#
# A second run finds everything in place and does nothing. Any failure stops
# with a message saying what failed.
set -euo pipefail

CRIU_VERSION=4.2.1
CRIU_DEB_VERSION=4.2.1-1
CRIU_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
# Debian's suite that has that version's source.
CRIU_SUITE=sid
PREFIX=${CR_CRIU_PREFIX:-/usr/local/libexec/cr}
# CRIU caches what it probed of the kernel (criu.kdat, ~30 ms a run) only on
# tmpfs, under the RUNDIR it was built with: /run is not tmpfs here, so the
# CRIU built here keeps it in cr's directory on /dev/shm, which cr prepares
# (root's, 0700; criubin.CacheDir). The build records that in criu.build;
# a CRIU of ours built without it is built again.
KDAT_DIR=/dev/shm/cr-criu
BUILD_ID="criu $CRIU_VERSION rundir=$KDAT_DIR"
CACHE=${CR_CACHE:-/var/cache/cr}
WEED_MODULE=github.com/seaweedfs/seaweedfs
WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6
WEED_BUILD_ID="seaweedfs $WEED_VERSION"
here=$(cd "$(dirname "$0")/.." && pwd)

say() { printf 'provision: %s\n' "$*" >&2; }
die() { printf 'provision: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (CRIU and cgroups need it)"

apt_updated=
apt_install() {
	local missing=()
	for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ -z "$apt_updated" ]; then say "apt-get update"; apt-get update -qq >/dev/null || die "apt-get update failed"; apt_updated=1; fi
	say "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# criu_ok BIN: BIN is CRIU >= 4.2 and `criu check` passes.
criu_ok() {
	local bin=$1 v
	[ -x "$bin" ] || return 1
	v=$("$bin" --version 2>/dev/null | sed -n 's/^Version: *//p')
	[ -n "$v" ] || return 1
	case "$v" in 0.*|1.*|2.*|3.*|4.0|4.0.*|4.1|4.1.*) say "$bin is CRIU $v, older than 4.2 (cannot dump inet sockets here)"; return 1 ;; esac
	"$bin" check >/dev/null 2>&1 || { say "$bin (CRIU $v): criu check fails"; return 1; }
	return 0
}

find_criu() {
	for c in "${CR_CRIU:-}" "$PREFIX/criu" "$(command -v criu 2>/dev/null || true)"; do
		[ -n "$c" ] || continue
		[ "$c" = "$stale" ] && continue
		criu_ok "$c" && { echo "$c"; return 0; }
	done
	return 1
}

build_criu() {
	apt_install build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler \
		protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev \
		libgnutls28-dev uuid-dev libnftables-dev dpkg-dev xz-utils
	mkdir -p "$CACHE"
	local tarball="$CACHE/criu_${CRIU_VERSION}.orig.tar.xz"
	if [ ! -f "$tarball" ] || ! echo "$CRIU_SHA256  $tarball" | sha256sum -c --status; then
		rm -f "$tarball"
		# Debian 12 ships CRIU 3.17, which fails on this kernel; take the source
		# from the $CRIU_SUITE suite of the machine's own Debian mirror.
		local uri
		uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
		[ -n "$uri" ] || uri=$(sed -n 's/^deb \(http[^ ]*\) .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n1)
		[ -n "$uri" ] || die "cannot find the Debian mirror in /etc/apt/sources.list.d/debian.sources"
		local src=/etc/apt/sources.list.d/cr-$CRIU_SUITE-src.sources
		cat >"$src" <<EOT
Types: deb-src
URIs: $uri
Suites: $CRIU_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
		say "fetching Debian's criu_${CRIU_VERSION} source"
		apt-get update -qq >/dev/null || { rm -f "$src"; die "apt-get update (with the $CRIU_SUITE deb-src entry) failed"; }
		# apt-get source exits non-zero when the .debian.tar.xz part is missing on
		# the mirror; the orig tarball, all we need, arrives anyway.
		(cd "$CACHE" && apt-get source --download-only "criu=$CRIU_DEB_VERSION" >/dev/null 2>&1) || true
		rm -f "$src"; apt-get update -qq >/dev/null || true
		[ -f "$tarball" ] || die "download of criu_${CRIU_VERSION}.orig.tar.xz failed"
		echo "$CRIU_SHA256  $tarball" | sha256sum -c --status ||
			{ rm -f "$tarball"; die "checksum mismatch for criu_${CRIU_VERSION}.orig.tar.xz (expected $CRIU_SHA256)"; }
	fi
	local build="$CACHE/build"
	rm -rf "$build"; mkdir -p "$build"
	tar -xJf "$tarball" -C "$build"
	say "building CRIU $CRIU_VERSION (about a minute)"
	(cd "$build/criu-$CRIU_VERSION" && make -j"$(nproc)" criu RUNDIR="$KDAT_DIR" >"$CACHE/build.log" 2>&1) ||
		{ tail -n 30 "$CACHE/build.log" >&2; die "CRIU build failed (full log: $CACHE/build.log)"; }
	install -D -m 0755 "$build/criu-$CRIU_VERSION/criu/criu" "$PREFIX/criu"
	echo "$BUILD_ID" >"$PREFIX/criu.build"
	rm -rf "$build"
	criu_ok "$PREFIX/criu" || die "the CRIU just built at $PREFIX/criu fails criu check"
	say "installed CRIU $CRIU_VERSION at $PREFIX/criu"
}

apt_install iproute2 util-linux
# busybox-static: the small static root file system of the --rootfs e2e tests.
apt_install busybox-static
# redis-server: the e2e test of a daemonizing service (it runs its own, in a
# container). Debian starts a system redis when it installs one: not ours.
if ! dpkg-query -W -f='${Status}' redis-server 2>/dev/null | grep -q 'install ok installed'; then
	apt_install redis-server
	if command -v systemctl >/dev/null; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi
command -v go >/dev/null || die "go is not installed (expected Go >= 1.25 at /usr/local/go)"
[ -f "$here/go.mod" ] && { (cd "$here" && go mod download) || die "go mod download failed"; }

# CRIU's cache directory, as cr prepares it (cr makes it again if it goes).
[ -d "$KDAT_DIR" ] && [ ! -L "$KDAT_DIR" ] && [ "$(stat -c %u:%a "$KDAT_DIR")" = "0:700" ] ||
	{ rm -rf "$KDAT_DIR"; install -d -m 0700 "$KDAT_DIR" 2>/dev/null || true; }
# A CRIU of ours from before criu.build existed works, but without its cache.
stale=
if [ -x "$PREFIX/criu" ] && [ "$(cat "$PREFIX/criu.build" 2>/dev/null)" != "$BUILD_ID" ]; then
	stale=$PREFIX/criu
fi
if c=$(find_criu); then
	say "CRIU ok: $c ($("$c" --version | sed -n 's/^Version: *//p'))"
elif [ -n "$stale" ] && criu_ok "$stale"; then
	say "$stale was built without its kernel-feature cache on tmpfs; building it again"
	# A failed rebuild keeps the working CRIU (it only runs slower).
	(build_criu) || say "warning: the rebuild failed; keeping $stale, which probes the kernel on every run"
else
	build_criu
fi
# SeaweedFS for the S3 tests: weed.build records the version built.
build_weed() {
	local build="$CACHE/seaweedfs-build" json dir
	mkdir -p "$build"
	say "fetching the source of SeaweedFS $WEED_VERSION"
	json=$(cd / && go mod download -json "$WEED_MODULE@$WEED_VERSION" 2>"$build/dl.err") ||
		{ cat "$build/dl.err" >&2; die "go mod download $WEED_MODULE@$WEED_VERSION failed"; }
	dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[ -n "$dir" ] && [ -d "$dir" ] || die "go mod download gave no source directory for $WEED_MODULE"
	# The module cache is read-only; go build wants a writable tree.
	rm -rf "$build/src"
	cp -r "$dir" "$build/src" && chmod -R u+w "$build/src" || die "copying the SeaweedFS source failed"
	say "building SeaweedFS (several minutes on 2 cores)"
	(cd "$build/src" && go build -o "$build/weed" ./weed >"$build/build.log" 2>&1) ||
		{ tail -n 30 "$build/build.log" >&2; die "SeaweedFS build failed (full log: $build/build.log)"; }
	install -D -m 0755 "$build/weed" "$PREFIX/weed"
	echo "$WEED_BUILD_ID" >"$PREFIX/weed.build"
	rm -rf "$build/src"
	"$PREFIX/weed" version >/dev/null 2>&1 || die "the weed just built at $PREFIX/weed does not run"
	say "installed SeaweedFS at $PREFIX/weed"
}
if [ -x "$PREFIX/weed" ] && [ "$(cat "$PREFIX/weed.build" 2>/dev/null)" = "$WEED_BUILD_ID" ]; then
	say "SeaweedFS ok: $PREFIX/weed ($WEED_VERSION)"
else
	build_weed
fi
# checkpointctl reads single-container images; the tests check that it can.
gobin=$(go env GOPATH)/bin
if [ ! -x "$gobin/checkpointctl" ] && ! command -v checkpointctl >/dev/null; then
	say "installing checkpointctl v1.6.0"
	go install github.com/checkpoint-restore/checkpointctl@v1.6.0 || say "warning: checkpointctl could not be installed; its compatibility test will be skipped"
fi
# CRIU's lazy-pages and page pipes grow pipes beyond the default limit, which
# needs CAP_SYS_RESOURCE; this sandbox lacks it, so raise the limit instead.
if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt 16777216 ]; then
	echo 16777216 >/proc/sys/fs/pipe-max-size 2>/dev/null && say "raised fs.pipe-max-size to 16 MiB" || true
fi
