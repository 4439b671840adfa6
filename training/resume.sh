#!/bin/bash
# The campaign's current schedule (README, "How it was trained": the run in progress), resumed the
# way every session resumes it:
#   bash training/resume.sh start   # in the background: nice 19, 2 threads, its pid in $PIDFILE
#   bash training/resume.sh save    # the portable state a fresh machine resumes from: commit it
#                                   # (start keeps it current after every epoch too: --keep-portable)
#   bash training/resume.sh status  # whether it runs; epochs done, validation so far, time left
# A schedule is declared up front as stages (RUNS below), each starting from the one before's
# last epoch, after whatever they need first (prepare below: a teacher to train).  start runs
# what is left of them in order, in one background process: the open
# stage continues from this machine's checkpoint (<cache>/train/RUN/last.pt) where there is
# one, else from its committed portable state; when a stage ends, its last epoch is written to
# training/RUN-last.npz (commit it: a fresh machine then starts at the next stage) and the next
# stage begins at once.  start refuses while $PIDFILE names a live process: one trainer at a
# time.  Stop it by that pid only: kill "$(cat "$PIDFILE")" stops the stage that runs and the
# stages after it.  When a schedule ends and the next is declared, RUNS and stage_args change
# with the README.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=(cnv-w1a1-st2l)
DATA=${DATA:-../shared/data/cifar10-train.tar.gz}
PYTHON=${PYTHON:-.venv/bin/python}
PIDFILE=${PIDFILE:-/tmp/octoray-train.pid}
LOG=${LOG:-/tmp/octoray-train.log}
COMMON=(--data "$DATA" --threads 2 --conv-gradients bf16)

stage_args() {  # what stage $1 (counted from 0) adds to COMMON: docs/training.md, item 31
    local teach=(--teacher training/teacher2.npz --teacher-precision int8 --kd-weight 0.9 --kd-temperature 1)
    case $1 in
    0) ARGS=(--init-from training/cnv-w1a1-st1b-last.npz "${teach[@]}" --epochs 200 --lr 0.002
             --warmup-epochs 0.2 --keep-epochs-from 181 --keep-best "training/${RUNS[0]}-best.npz") ;;
    esac
}

prepare() {  # what the stages need before they start: nothing this schedule (teacher2 is committed)
    :
}

open_stage() {  # the first stage whose last epoch is not in the tree (the final one stays open)
    local i=0
    while (( i + 1 < ${#RUNS[@]} )) && [ -f "training/${RUNS[$i]}-last.npz" ]; do
        i=$((i + 1))
    done
    echo "$i"
}

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

run_stages() {  # the background process start leaves: the open stage, then each after it
    local child=
    trap '[ -n "$child" ] && kill "$child" 2>/dev/null; wait; exit 143' TERM INT
    prepare
    for ((i = $(open_stage); i < ${#RUNS[@]}; i++)); do
        local run=${RUNS[$i]} state=training/${RUNS[$i]}-state.npz resume=()
        [ -f "$state" ] && resume=(--resume-from "$state")  # used only where this machine has no last.pt
        stage_args "$i"
        # --keep-portable: a session cut off before it saves still leaves its newest epoch in $state
        "$PYTHON" -m octoray.models.train --run "$run" "${COMMON[@]}" "${ARGS[@]}" \
            --keep-portable "$state" "${resume[@]}" &
        child=$!
        wait "$child" || exit  # stopped or failed: the stages after it wait for the next start
        child=
        if (( i + 1 < ${#RUNS[@]} )); then
            "$PYTHON" -m octoray.models.train --data "$DATA" --run "$run" --save-portable "training/$run-last.npz"
            echo "resume.sh: $run ended; commit training/$run-last.npz (the next stage starts from it)"
        fi
    done
}

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
    # nohup and nice exec the next program, and the stages inherit nice 19: $! is the one pid to stop
    nohup nice -n 19 bash "$PWD/training/resume.sh" stages >> "$LOG" 2>&1 &
    echo $! > "$PIDFILE"
    echo "resume.sh: ${RUNS[$(open_stage)]} resumed, pid $! in $PIDFILE, log $LOG"
    ;;
stages)
    run_stages
    ;;
save)
    run=${RUNS[$(open_stage)]}
    "$PYTHON" -m octoray.models.train --data "$DATA" --run "$run" --save-portable "training/$run-state.npz"
    ;;
status)
    if running; then
        echo "resume.sh: the trainer runs: pid $(cat "$PIDFILE") ($PIDFILE), log $LOG"
    else
        echo "resume.sh: no trainer runs ($PIDFILE)"
    fi
    "$PYTHON" -m octoray.models.train --run "${RUNS[$(open_stage)]}" --progress
    ;;
*)
    echo "usage: bash training/resume.sh start|save|status" >&2
    exit 2
    ;;
esac
