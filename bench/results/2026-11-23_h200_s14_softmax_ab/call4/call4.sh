#!/bin/bash
# Session 14, call 4 (one H200): the Hopper backward's STATS_EARLY knob (LSE and delta read from shared memory before
# the waits for S^T and dP^T; bench_new, tests_new = the committed default) against the old order (bench_base: the
# same tree built with DISTATTN_HOPPER_BWD_STATS_EARLY=0): GPU suite, then bwd and fwd+bwd, five interleaved rounds.
set -u
ROOT=$(pwd)
W=/tmp/s14c4; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s14/bins4.tar.xz -C $W || { echo "untar failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-575}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s14c4.tgz" -C $W logs'
AB=$ROOT/bench/results/2026-11-23_h200_s14_softmax_ab/ab_variants.sh
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw,power.limit --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_new 120 $W/bins/tests_new --gtest_brief=1
STEP_SUMMARY='^(pass|bwd)|failed' step ab_bwd 200 env VARIANTS="base new" ROUNDS=5 PASS=bwd \
  CASES="8K:causal 16K:causal 16K:full 64K:causal" bash $AB $W/bins $L/ab_bwd
STEP_SUMMARY='^(pass|fwdbwd)|failed' step ab_fwdbwd 150 env VARIANTS="base new" ROUNDS=5 PASS=fwdbwd \
  CASES="8K:causal 16K:causal 16K:full" bash $AB $W/bins $L/ab_fwdbwd
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
