#!/usr/bin/env bash
# The ResNet-18 base of results/schemes-resnet18.md (issue #31): a centralized ResNet-18 (edgecc/nets/resnet.py)
# trained on Fashion-MNIST by the paper recipe (Adam 1e-3, batch 64, no augmentation, bf16 autocast on an AVX-512
# BF16 CPU), stored as the repository stores big checkpoints (edgecc.reproduce._compact: float16, or int8 "q8"
# where float16 is still over GIT_LIMIT = 20 MB; 11.2 M parameters are 22 MB in float16, so q8), then
# ApproxIFER, replication and uncoded over it at K = 2, 4, 8, S = 1 on the Fashion-MNIST test set.
#
# Run from the repository root:  bash benchmarks/train_resnet18_fmnist.sh
# EPOCHS (default 2) and LIMIT (default 30000: the first half of the 60,000 training images; LIMIT= for all) size
# the training; THREADS its torch threads. The committed model is the defaults' run: 2482 s of training on one
# shared core, run as EPOCHS=1 (test accuracy 87.00 after it) and then resumed with EPOCHS=2 (88.89).
# Resumable: the run keeps a checkpoint after every epoch in runs/resnet18-fmnist/run (the paper recipe's lr is
# constant, so a finished run continues with a larger EPOCHS and epoch e's weights do not depend on EPOCHS).
#
# Measured on the 2-core AMD EPYC (AVX-512 BF16) VM, shared with other jobs, batch 64:
#   1 thread:  1.17 s/step bf16, 2.54 s/step fp32;  2 threads: 6.7 s/step bf16 (the other core was busy)
# i.e. ~18 min per 60,000-image epoch on an idle core; under the load of the day it ran at 19-29 images/s,
# 17-24 min per 30,000-image epoch, plus ~3 min for each epoch's test pass (10,000 images).
set -euo pipefail
EPOCHS=${EPOCHS:-2}
THREADS=${THREADS:-1}
LIMIT=${LIMIT-30000}
PY=${PY:-.venv/bin/python}
RUN=runs/resnet18-fmnist${LIMIT:+-$LIMIT}
OUT=results/checkpoints/centralized-resnet18.safetensors
mkdir -p "$RUN"

# 0. the step time (a few steps of random images of the run's batch shape; nothing is trained)
$PY -c "
from edgecc.train import TrainConfig, time_training
r = time_training('centralized-resnet18', None, TrainConfig(threads=$THREADS), steps=3)
print(f\"{r['step_seconds']:.2f} s/step of {r['batch']} images, {r['epoch_seconds'] / 60:.0f} min per 60,000-image epoch\")"

# 1. train (seed 0); the model file is written when the last epoch is done
nice -n 5 $PY -m edgecc.cli train --kind centralized-resnet18 --epochs "$EPOCHS" --threads "$THREADS" --seed 0 \
  ${LIMIT:+--limit "$LIMIT"} --out "$RUN/centralized-resnet18.safetensors" --run-dir "$RUN/run" --resume

# 2. store it as the repository stores big checkpoints (q8 here), and evaluate from the stored file
mkdir -p "$(dirname "$OUT")"
cp "$RUN/centralized-resnet18.safetensors" "$OUT"
$PY -c "
from pathlib import Path
from edgecc.reproduce import _compact
p = Path('$OUT')
print(p, _compact(p), p.stat().st_size, 'bytes')"

# 3. the rows: ApproxIFER (workers at cos(iπ/N)), replication and uncoded at K = 2, 4, 8 (N = K + 1), S = 1, worst
#    straggler set, full test set (10,000 images); the model alone is always computed ('rel.'). One torch thread
#    (two oversubscribe a shared 2-core VM). Cells are cached in runs/schemes/resnet18-<file id>/: rerunning resumes.
ONLY=()
for K in 8 2 4; do
  for s in approxifer replication uncoded; do ONLY+=(--only "$s-resnet18-K$K-S1"); done
done
OMP_NUM_THREADS=$THREADS nice -n 5 $PY -m edgecc.cli compare --base "$OUT" --images test "${ONLY[@]}"
