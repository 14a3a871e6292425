#!/usr/bin/env bash
# An AICC cell on colour images, end to end (issue #31): Fashion-MNIST re-encoded as 3×32×32
# (`fashion-mnist?size=32x32&channels=3`: resized with Pillow, gray copied to 3 channels), K=2 G=1 CNN+CNN H_B,
# trained briefly on the CPU (fp32: this torch's oneDNN crashes in bf16 backward on colour stacks), then
#   1. `edgecc eval` on the full 10,000-image test set read in the model's shape (direct, and decoded from
#      every 2 of 3 workers),
#   2. `edgecc master` over 3 real worker processes on loopback (the collapsed affine H_B, torch-free path),
#      on the first 2,000 test images.
# Writes results/rgb32-aicc.json and the model to results/checkpoints/aicc-k2-cnn-cnn-hb-3x32x32.safetensors.
# Usage: benchmarks/rgb32_aicc.sh [LIMIT [EPOCHS]] (training images, default all 60,000; epochs, default 20 as the
# paper's protocol). Training is resumable: its per-epoch checkpoints stay in runs/rgb32-aicc/ (about 11 groups/s on
# one core of the 2-core VM: ~45 min per full epoch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LIMIT=${1:-60000}
EPOCHS=${2:-20}
DATA='fashion-mnist?size=32x32&channels=3'
MODEL=results/checkpoints/aicc-k2-cnn-cnn-hb-3x32x32.safetensors
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
if [ ! -f "$MODEL" ]; then
    $PY -m edgecc.cli train --data "$DATA" --kind aicc --K 2 --G 1 --encoder cnn --compute cnn --epochs "$EPOCHS" \
        --limit "$LIMIT" --threads 1 --seed 0 --out "$MODEL" --run-dir runs/rgb32-aicc --resume --quiet
fi
$PY -m edgecc.cli eval "$MODEL" --images "test?size=32x32&channels=3" --N 3 --json > "$TMP/eval.json"
export EDGECC_TOKEN=${EDGECC_TOKEN:-$($PY -c 'import secrets; print(secrets.token_hex(32))')}
ADDRS=""
for i in 0 1 2; do
    $PY -m edgecc.cli worker --listen 127.0.0.1:0 --port-file "$TMP/p$i" --log-level warning &
done
for i in 0 1 2; do
    for _ in $(seq 100); do [ -s "$TMP/p$i" ] && break; sleep 0.1; done
    ADDRS="$ADDRS${ADDRS:+,}127.0.0.1:$(cat "$TMP/p$i")"
done
$PY -m edgecc.cli master --workers "$ADDRS" --model "$MODEL" --images "test?size=32x32&channels=3" --limit 2000 --wait 60 --quiet \
    --json-out "$TMP/master.json"
$PY - "$TMP/eval.json" "$TMP/master.json" "$LIMIT" "$EPOCHS" <<'PYEOF'
import json, platform, sys
ev, ms = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
out = {"what": f"AICC K=2 G=1 CNN+CNN H_B on Fashion-MNIST re-encoded as 3x32x32, {sys.argv[4]} epoch(s) on the "
               f"first {sys.argv[3]} training images, seed 0, fp32",
       "command": f"benchmarks/rgb32_aicc.sh {sys.argv[3]} {sys.argv[4]}",
       "machine": platform.processor() or platform.machine(), "eval": ev, "master": ms}
open("results/rgb32-aicc.json", "w").write(json.dumps(out, indent=1) + "\n")
print({k: ev.get(k) for k in ("images", "accuracy_direct", "accuracy_decoded_min", "accuracy_decoded_max")},
      {k: ms.get(k) for k in ("images", "accuracy", "requests_failed")})
PYEOF
