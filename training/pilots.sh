#!/bin/bash
# Short pilots that choose the long run's recipe: each fine-tunes the shipped run's weights
# (training/cnv-w1a1-epoch61.npz) for EPOCHS epochs on one short cosine, and prints its
# validation accuracy.  Needs the teacher file (python -m octoray.models.teacher ... --save).
#   nice -n 19 bash training/pilots.sh 2>&1 | tee pilots.log
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10-train.tar.gz}
TEACHER=${TEACHER:-training/teacher.npz}
EPOCHS=${EPOCHS:-2}
THREADS=${THREADS:-2}
pilot() {  # name, extra options
    local name=$1; shift
    python -m octoray.models.train --data "$DATA" --run "pilot-$name" --threads "$THREADS" \
        --init-from training/cnv-w1a1-epoch61.npz --epochs "$EPOCHS" --lr 0.003 --warmup-epochs 0.2 "$@" \
        | grep '^{' | tail -1 | sed "s/^/$name /"
}
pilot ce
pilot smooth --label-smoothing 0.1
pilot kd --teacher "$TEACHER"
pilot kd-approxsign --teacher "$TEACHER" --ste approxsign
