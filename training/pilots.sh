#!/bin/bash
# Short pilots that choose a long run's recipe: each fine-tunes the same weights ($INIT) for
# $EPOCHS epochs on one short cosine from $LR, and prints its last epoch (validation accuracy).
#   nice -n 19 bash training/pilots.sh [recipe|generalisation|binarize|guide|magnitude] 2>&1 | tee pilots.log
# recipe (2 December; INIT the epoch-61 weights, the first teacher): the loss and backward pass.
# generalisation (5 December; INIT stage two's best, the stronger teacher): what regularises
# a network that fits its training images 7 points better than the validation images, and
# cross-fitted teachers (each image's soft labels from a teacher that never trained on it).
# binarize (6 December; INIT stage one's real-weight model, the stronger teacher in 8 bits):
# binary weights at once, as stage two began, against annealed into binary over 4 epochs.
# guide (6 December; as binarize): binary at once, each hidden layer's sums also matched to
# stage one's own (--guide), the term weighted 1.
# magnitude (6 December; INIT the eighth schedule's stage one after its epoch 90): binary at once
# against the largest weights first, half of those still real every epoch, binary after 3.
set -euo pipefail
SET=${1:-recipe}
DATA=${DATA:-../shared/data/cifar10-train.tar.gz}
THREADS=${THREADS:-2}
pilot() {  # name, extra options
    local name=$1; shift
    python -m octoray.models.train --data "$DATA" --run "pilot-$name" --threads "$THREADS" \
        --init-from "$INIT" --epochs "$EPOCHS" --lr "$LR" --warmup-epochs 0.2 "$@" \
        | grep '^{' | tail -1 | sed "s/^/$name /"
}
case "$SET" in
recipe)
    INIT=${INIT:-training/cnv-w1a1-epoch61.npz} LR=${LR:-0.003} EPOCHS=${EPOCHS:-2}
    TEACHER=${TEACHER:-training/teacher.npz}
    pilot ce
    pilot smooth --label-smoothing 0.1
    pilot kd --teacher "$TEACHER"
    pilot kd-approxsign --teacher "$TEACHER" --ste approxsign
    ;;
generalisation)
    INIT=${INIT:-training/cnv-w1a1-st2-best.npz} LR=${LR:-0.002} EPOCHS=${EPOCHS:-5}
    TEACHER=${TEACHER:-training/teacher2.npz}
    pilot g-kd --teacher "$TEACHER"
    pilot g-cutout --teacher "$TEACHER" --cutout 16
    pilot g-mixup --teacher "$TEACHER" --mixup
    # the teachers of two folds (python -m octoray.models.teacher --fold K/2 --epochs 20, docs/training.md)
    pilot g-crossfit --teacher training/teacher-fold1-of2.npz --teacher training/teacher-fold2-of2.npz
    ;;
binarize)
    INIT=${INIT:-training/cnv-w1a1-st1-last.npz} LR=${LR:-0.002} EPOCHS=${EPOCHS:-5}
    TEACHER=${TEACHER:-training/teacher2.npz}
    pilot b-hard --teacher "$TEACHER" --teacher-precision int8 --conv-gradients bf16
    pilot b-anneal --teacher "$TEACHER" --teacher-precision int8 --conv-gradients bf16 --binarize-over 4
    ;;
guide)
    INIT=${INIT:-training/cnv-w1a1-st1-last.npz} LR=${LR:-0.002} EPOCHS=${EPOCHS:-5}
    TEACHER=${TEACHER:-training/teacher2.npz}
    pilot b-guide1 --teacher "$TEACHER" --teacher-precision int8 --conv-gradients bf16 --guide "$INIT" --guide-weight 1
    ;;
magnitude)
    : "${INIT:?the weights to start from: git show ef6b61a:training/cnv-w1a1-st1b-state.npz > st1b-epoch90.npz}"
    LR=${LR:-0.002} EPOCHS=${EPOCHS:-5}
    TEACHER=${TEACHER:-training/teacher2.npz}
    pilot m-hard --teacher "$TEACHER" --teacher-precision int8 --conv-gradients bf16
    pilot m-magnitude --teacher "$TEACHER" --teacher-precision int8 --conv-gradients bf16 \
        --binarize-over 3 --binarize-order magnitude
    ;;
*)
    echo "usage: bash training/pilots.sh [recipe|generalisation|binarize|guide|magnitude]" >&2
    exit 2
    ;;
esac
