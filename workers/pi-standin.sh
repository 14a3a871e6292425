#!/usr/bin/env bash
# Build (once, then reuse) the stand-ins that `./run.sh pi-test` deploys into:
#   CACHE/arm64-root/   a Debian 12 (bookworm) arm64 root: the same base as Raspberry Pi OS 12,
#                       run under qemu-user through binfmt_misc. It plays the board.
#   CACHE/wheels/       aarch64 wheels of what Debian 12 lacks: safetensors (not packaged), the
#                       oldest version pyproject allows, so setup-pi.sh's `pip install` runs
#                       offline (a Pi gets it from piwheels/PyPI)
#   CACHE/amd64-root/   (x86root, only for benchmarks/pi_standin.py) the same Debian 12 packages
#                       on amd64: the x86 side of the emulated-arm64 timings, same versions
#   CACHE/base-arm64.tar  (base-arm64, for the multi-arch build) the same minbase for arm64, imported
#                       as localhost/edgecc-base:bookworm-arm64
#   CACHE/base-amd64.tar  a Debian 12 minbase with python3, imported into podman as
#                       localhost/edgecc-base:bookworm: the container base where no registry is reachable
# CACHE is $EDGECC_PI_CACHE, default /var/cache/edgecc. Needs root, mmdebstrap, qemu-user-static
# (and podman for the base image), and pip for $PYTHON (default python3) to fetch the wheel.
# A part already built is kept; --rebuild starts over.
#
# usage: sudo workers/pi-standin.sh [--rebuild] [--check] [root|base|base-arm64|binfmt|x86root|all]
#   all: binfmt, root and base (what ./run.sh pi-test needs)
#   --check   build nothing: exit 0 when the requested parts are ready, else 1 with the reason
set -euo pipefail

CACHE=${EDGECC_PI_CACHE:-/var/cache/edgecc}
ROOTFS=$CACHE/arm64-root
WHEELS=$CACHE/wheels
BASE_TAR=$CACHE/base-amd64.tar
BASE_IMAGE=localhost/edgecc-base:bookworm
SUITE=bookworm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# What the board has before setup-pi.sh: Debian's packages for everything the worker imports
# (setup-pi.sh installs exactly these when missing; here they are in the image, so the test
# needs no Debian mirror), sudo for run.sh deploy, systemd for `systemctl enable`.
ROOT_PACKAGES=python3,python3-venv,python3-numpy,python3-msgpack,python3-click,python3-threadpoolctl,python3-uvloop,sudo,ca-certificates,systemd
# Bumped when the recipe changes, so an old cached root is rebuilt rather than reused.
RECIPE=2

say() { printf '==> %s\n' "$*"; }
die() { printf 'pi-standin: error: %s\n' "$*" >&2; exit 1; }

REBUILD=0 CHECK=0 WHAT=all
while (($#)); do
    case $1 in
        --rebuild) REBUILD=1 ;;
        --check) CHECK=1 ;;
        root|base|base-arm64|binfmt|x86root|all) WHAT=$1 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done

# --- binfmt_misc: aarch64 ELF files run through qemu-aarch64-static -------------------------
# The F flag in Debian's qemu-aarch64.conf makes the kernel open the interpreter at registration,
# so the root needs no copy of qemu inside it.
binfmt_ready() { [[ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; }
ensure_binfmt() {
    binfmt_ready && return 0
    ((CHECK)) && die "aarch64 binfmt handler not registered (run: sudo $0 binfmt)"
    ((EUID == 0)) || die "registering the aarch64 binfmt handler needs root"
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [[ -r $conf ]] || die "$conf not found: apt-get install qemu-user-static"
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        say "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    say "registering qemu-aarch64 with binfmt_misc"
    cat "$conf" >/proc/sys/fs/binfmt_misc/register
    binfmt_ready || die "qemu-aarch64 did not register"
}

root_ready() { [[ -f $ROOTFS/.edgecc-standin && $(<"$ROOTFS/.edgecc-standin") == "recipe $RECIPE" ]]; }

build_root() {
    if ((!REBUILD)) && root_ready; then
        ((CHECK)) || provision_root
        say "arm64 root ready: $ROOTFS"
        return 0
    fi
    ((CHECK)) && die "no arm64 stand-in root in $ROOTFS (build it: sudo ./run.sh pi-test, or sudo $0 root)"
    for t in mmdebstrap qemu-aarch64-static; do command -v "$t" >/dev/null || die "$t not found: apt-get install mmdebstrap qemu-user-static"; done
    mkdir -p "$CACHE"
    local tmp=$ROOTFS.partial
    rm -rf "$tmp"
    say "building a Debian $SUITE arm64 root in $ROOTFS (several minutes: package scripts run under qemu)"
    local t0=$SECONDS
    nice -n 10 mmdebstrap --mode=root --architectures=arm64 --include="$ROOT_PACKAGES" "$SUITE" "$tmp"
    echo "recipe $RECIPE" >"$tmp/.edgecc-standin"
    rm -rf "$ROOTFS"
    mv "$tmp" "$ROOTFS"
    provision_root
    say "arm64 root built in $((SECONDS - t0)) s: $(du -sh "$ROOTFS" | cut -f1)"
}

# What turns the Debian root into the stand-in board; cheap, so it is redone on every call
# (a changed systemctl front or wheel reaches an already cached root).
provision_root() {
    # A board has a resolv.conf of its own; the stand-in shares the host's network.
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    # The stand-in's systemctl: what systemd (PID 1) would do with start/stop/restart/is-active
    # of the worker unit is done by the host-side service runner (tests/pi_board.py); everything
    # else (daemon-reload, enable, ...) goes to Debian's systemctl, which works offline in a root.
    # sudo's secure_path puts /usr/local/sbin first, so setup-pi.sh and run.sh deploy reach it.
    install -m 0755 "$HERE/standin-systemctl" "$ROOTFS/usr/local/sbin/systemctl"
    local req name
    for req in 'safetensors==0.4.0'; do
        name=${req%%=*}
        compgen -G "$WHEELS/$name-*aarch64*.whl" >/dev/null && continue
        say "downloading the aarch64 wheel $req into $WHEELS"
        mkdir -p "$WHEELS"
        nice -n 10 "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_aarch64 \
            --python-version 3.11 --implementation cp -d "$WHEELS" "$req"
    done
    # pip on the board finds safetensors offline, as Raspberry Pi OS's own /etc/pip.conf points pip at piwheels
    rm -rf "$ROOTFS/srv/wheels"
    install -d -m 0755 "$ROOTFS/srv/wheels"
    cp "$WHEELS"/*.whl "$ROOTFS/srv/wheels/"
    printf '[global]\nno-index = true\nfind-links = /srv/wheels\n' >"$ROOTFS/etc/pip.conf"
}

X86ROOT=$CACHE/amd64-root
build_x86root() {
    if ((!REBUILD)) && [[ -f $X86ROOT/.edgecc-standin && $(<"$X86ROOT/.edgecc-standin") == "recipe $RECIPE" ]]; then
        say "amd64 root ready: $X86ROOT"; return 0
    fi
    ((CHECK)) && die "no amd64 comparison root in $X86ROOT (sudo $0 x86root)"
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"
    rm -rf "$X86ROOT.partial"
    say "building a Debian $SUITE amd64 root in $X86ROOT (the x86 side of the comparison)"
    nice -n 10 mmdebstrap --mode=root --architectures=amd64 --include="$ROOT_PACKAGES" "$SUITE" "$X86ROOT.partial"
    echo "recipe $RECIPE" >"$X86ROOT.partial/.edgecc-standin"
    rm -rf "$X86ROOT"
    mv "$X86ROOT.partial" "$X86ROOT"
}

base_ready() { command -v podman >/dev/null && podman image exists "$BASE_IMAGE" 2>/dev/null; }

build_base() {
    if ((!REBUILD)) && base_ready; then say "container base ready: $BASE_IMAGE"; return 0; fi
    ((CHECK)) && die "no container base image $BASE_IMAGE (build it: sudo ./run.sh pi-test, or sudo $0 base)"
    command -v podman >/dev/null || die "podman not found: apt-get install podman buildah"
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"
    mkdir -p "$CACHE"
    say "building a Debian $SUITE minbase with python3 as $BASE_IMAGE"
    # passwd: useradd for the image's edgecc user (python:*-slim has it; minbase does not)
    nice -n 10 mmdebstrap --mode=root --variant=minbase --include=python3,python3-venv,passwd \
        "$SUITE" "$CACHE/base-amd64.partial.tar"
    mv "$CACHE/base-amd64.partial.tar" "$BASE_TAR"
    podman import "$BASE_TAR" "$BASE_IMAGE" >/dev/null
    say "imported $BASE_IMAGE ($(du -h "$BASE_TAR" | cut -f1) tar)"
}

build_base_arm64() {
    local image=localhost/edgecc-base:bookworm-arm64 tar=$CACHE/base-arm64.tar
    if ((!REBUILD)) && podman image exists "$image" 2>/dev/null; then say "container base ready: $image"; return 0; fi
    ((CHECK)) && die "no container base image $image (sudo $0 base-arm64)"
    mkdir -p "$CACHE"
    say "building a Debian $SUITE arm64 minbase with python3 as $image (package scripts run under qemu)"
    nice -n 10 mmdebstrap --mode=root --architectures=arm64 --variant=minbase --include=python3,python3-venv,passwd \
        "$SUITE" "$CACHE/base-arm64.partial.tar"
    mv "$CACHE/base-arm64.partial.tar" "$tar"
    podman import --arch arm64 --variant v8 "$tar" "$image" >/dev/null
    say "imported $image ($(du -h "$tar" | cut -f1) tar)"
}

case $WHAT in
    binfmt) ensure_binfmt ;;
    root) ensure_binfmt; build_root ;;
    base) build_base ;;
    base-arm64) ensure_binfmt; build_base_arm64 ;;
    x86root) build_x86root ;;
    all) ensure_binfmt; build_root; build_base ;;
esac
