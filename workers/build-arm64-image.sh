#!/usr/bin/env bash
# Build the worker image for arm64 (a Raspberry Pi's architecture) on an x86 host, through
# qemu-user binfmt_misc, on a local Debian 12 arm64 base (no registry needed), then check that
# the image runs aarch64 Python without torch. Writes a JSON record (default
# results/pi-arm64-image.json): build seconds (small when podman's layer cache is warm), size, arch.
#
# usage: sudo workers/build-arm64-image.sh [OUT.json]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
OUT=${1:-$ROOT/results/pi-arm64-image.json}
IMAGE=localhost/edgecc-worker:arm64
BASE=localhost/edgecc-base:bookworm-arm64

((EUID == 0)) || { echo "build-arm64-image: run as root (podman/buildah with chroot isolation)" >&2; exit 1; }
bash "$HERE/pi-standin.sh" base-arm64          # binfmt + the arm64 minbase, built once
ctx=$(mktemp -d)
name=edgecc-arm64-check-$$
trap 'rm -rf "$ctx"; buildah rm "$name" >/dev/null 2>&1 || true' EXIT
# the context holds only what the Containerfile copies
cp "$ROOT/pyproject.toml" "$ctx/" && cp -r "$ROOT/edgecc" "$ctx/edgecc"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
ca=()
# pip in the build trusts what pip here trusts (a TLS-inspecting proxy's CA, if any)
if [[ -n ${PIP_CERT:-} && -f $PIP_CERT ]]; then ca=(-v "$PIP_CERT:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem); fi
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
t0=$(date +%s.%N)
nice -n 10 podman build --isolation chroot --network host --platform linux/arm64 ${ca[@]+"${ca[@]}"} \
    --build-arg BASE="$BASE" -f "$ROOT/workers/Containerfile" -t "$IMAGE" "$ctx"
t1=$(date +%s.%N)
# the tag moved to the new build: drop the image it replaced rather than leave it untagged
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [[ -n $old_id && $old_id != "$new_id" ]]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
buildah from --name "$name" "$IMAGE" >/dev/null
check=$(buildah run --isolation chroot "$name" -- python -c "import json, platform, sys, importlib.util, numpy; print(json.dumps({'machine': platform.machine(), 'python': sys.version.split()[0], 'numpy': numpy.__version__, 'torch': importlib.util.find_spec('torch') is not None}))")
base_size=$(podman image inspect "$BASE" | python3 -c "import json, sys; print(json.load(sys.stdin)[0]['Size'])")
podman image inspect "$IMAGE" | python3 -c "
import json, sys
d = json.load(sys.stdin)[0]
rec = {'image': '$IMAGE', 'base': '$BASE', 'architecture': d['Architecture'], 'size_mib': round(d['Size'] / 2**20, 1),
       'base_size_mib': round($base_size / 2**20, 1),
       'build_s': round($t1 - $t0, 1), 'in_image': json.loads(sys.argv[1]),
       'command': 'podman build --isolation chroot --network host --platform linux/arm64 --build-arg BASE=$BASE -f workers/Containerfile -t $IMAGE CONTEXT',
       'note': 'built and run on x86-64 through qemu-user (emulated)'}
assert rec['in_image']['machine'] == 'aarch64' and not rec['in_image']['torch'], rec
open('$OUT', 'w').write(json.dumps(rec, indent=2) + '\n')
print(json.dumps(rec))
" "$check"
