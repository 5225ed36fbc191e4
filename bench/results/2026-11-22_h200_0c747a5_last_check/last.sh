#!/bin/bash
# Session 6, last check (nvidia-h200): the GPU suite of the final main (after the WgmmaOps and test clean-ups).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=/tmp/s6l; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-200}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s6l.tgz" -C $W logs'
nvidia-smi --query-gpu=name --format=csv,noheader > $L/gpu.txt
step tests_gpu 180 $W/stage/distattn_tests_gpu
echo "total $(steps_elapsed)s status $steps_status"
