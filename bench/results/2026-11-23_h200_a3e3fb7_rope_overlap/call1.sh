#!/bin/bash
# Session 7, call 2 (nvidia-h200): the fused RoPE forward's GPU tests, then its A/B against the plain sequence.
set -u
ROOT=$(pwd)
W=/tmp/s7; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s7/bins.tar.xz -C $W || { echo "untar failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-540}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s7c2.tgz" -C $W logs'
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader > $L/gpu.txt
step tests_rope 200 $W/stage/distattn_tests_gpu --gtest_filter='RopeFwd*:Rope*'
export W L
STEP_SUMMARY='FAIL' step bench_ab 420 bash build-s7/ab.sh
python3 build-s7/summarize.py $L/runs > $L/summary.txt 2>&1; cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
