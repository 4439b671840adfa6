#!/bin/bash
# The campaign's current run (README, "How it was trained": the run in progress), resumed the way every
# session resumes it:
#   bash training/resume.sh start   # in the background: nice 19, 2 threads, its pid in $PIDFILE
#   bash training/resume.sh save    # the portable state a fresh machine resumes from: commit it
#                                   # (start keeps it current after every epoch too: --keep-portable)
#   bash training/resume.sh status  # whether the trainer runs; epochs done, validation so far, time left
# start continues from this machine's checkpoint (<cache>/train/RUN/last.pt) where there is
# one, else from the committed portable state, and refuses while $PIDFILE names a live
# process: one trainer at a time.  Stop it by that pid only: kill "$(cat "$PIDFILE")".
# When a run ends and the next is declared, RUN and TRAIN below change with the README.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=cnv-w1a1-st1b
STATE=training/$RUN-state.npz
DATA=${DATA:-../shared/data/cifar10-train.tar.gz}
PYTHON=${PYTHON:-.venv/bin/python}
PIDFILE=${PIDFILE:-/tmp/octoray-train.pid}
LOG=${LOG:-/tmp/octoray-train.log}
TRAIN=(--data "$DATA" --run "$RUN" --threads 2 --weights real --init-from training/cnv-w1a1-st1-last.npz
       --teacher training/teacher2.npz --teacher-precision int8 --conv-gradients bf16 --kd-weight 0.9
       --kd-temperature 1 --epochs 150 --lr 0.005 --warmup-epochs 2)

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
start)
    if running; then
        echo "resume.sh: a trainer already runs: pid $(cat "$PIDFILE") ($PIDFILE)" >&2
        exit 1
    fi
    if ! "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "resume.sh: $PYTHON has no PyTorch: pip install -e '.[train]' first" >&2
        exit 1
    fi
    resume=()
    if [ -f "$STATE" ]; then
        resume=(--resume-from "$STATE")  # used only where this machine has no last.pt
    fi
    # nohup and nice exec the next program: $! is the trainer's own pid
    # --keep-portable: a session cut off before it saves still leaves its newest epoch in $STATE
    nohup nice -n 19 "$PYTHON" -m octoray.models.train "${TRAIN[@]}" --keep-portable "$STATE" "${resume[@]}" \
        >> "$LOG" 2>&1 &
    echo $! > "$PIDFILE"
    echo "resume.sh: $RUN resumed, pid $! in $PIDFILE, log $LOG"
    ;;
save)
    "$PYTHON" -m octoray.models.train --data "$DATA" --run "$RUN" --save-portable "$STATE"
    ;;
status)
    if running; then
        echo "resume.sh: the trainer runs: pid $(cat "$PIDFILE") ($PIDFILE), log $LOG"
    else
        echo "resume.sh: no trainer runs ($PIDFILE)"
    fi
    "$PYTHON" -m octoray.models.train --run "$RUN" --progress
    ;;
*)
    echo "usage: bash training/resume.sh start|save|status" >&2
    exit 2
    ;;
esac
