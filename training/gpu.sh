#!/bin/bash
# Train CNV-W1A1 from scratch on a lent CUDA machine in one command, and leave the portable
# training state, its history and learning curve in $OUT (the only files that come back).
#
# Here, once:   mkdir -p .data && cp ../shared/data/cifar10-train.tar.gz .data/
#               echo /.data/ >> .git/info/exclude
# On the GPU:   bash training/gpu.sh   (carry .data; the command's limit is 10 minutes)
# Back here:    python -m octoray.models.export --data ../shared/data/cifar10-train.tar.gz \
#                   --from-portable FILE --plot docs/learning-curve.png
#               (FILE, renamed training/cnv-w1a1-<run>-epochN.npz, then becomes the benchmark's
#               float model: benchmarks/torch_classify.py DEFAULT_WEIGHTS, checked by the tests)
#
# MINUTES bounds the training: after the first epoch the cosine schedule shrinks to the
# epochs that fit (train --minutes), so the run anneals however fast the GPU turns out to be.
# ARGS adds train options: the staged recipe's binary stage (docs/training.md, item 9) from
# stage one's weights with the stronger teacher run live, say:
#   ARGS="--init-from training/cnv-w1a1-st1-last.npz --teacher training/teacher2.npz
#         --kd-weight 0.9 --lr 0.005 --warmup-epochs 2" bash training/gpu.sh
set -euo pipefail
MINUTES=${MINUTES:-8}
EPOCHS=${EPOCHS:-500}
DATA=${DATA:-.data/cifar10-train.tar.gz}
OUT=${OUT:-/tmp/octoray-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OCTORAY_CACHE=/tmp/octoray-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# shellcheck disable=SC2086 # ARGS is a list of options
python3 -m octoray.models.train --data "$DATA" --device cuda --run gpu --threads 8 \
    --epochs "$EPOCHS" --minutes "$MINUTES" ${ARGS:-} 2>&1 | tee "$OUT/train.log"
python3 -m octoray.models.train --data "$DATA" --run gpu --save-portable "$OUT/cnv-w1a1-gpu.npz"
cp "$OCTORAY_CACHE/train/gpu/history.json" "$OCTORAY_CACHE/train/gpu/learning-curve.png" "$OUT/"
