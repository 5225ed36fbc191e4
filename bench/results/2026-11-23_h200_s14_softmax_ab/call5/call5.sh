#!/bin/bash
# Session 14, call 5 (one GPU): two more knobs of the Hopper backward from call 3's ncu (the proxy fences after the dQ
# staging and dS stores): base = the committed kernel (STATS_EARLY); L = DQ_ARRIVE_LATE; D = DS_AFTER_DQ; LD = both.
# GPU suite on LD, then bwd and fwd+bwd, interleaved rounds.
set -u
ROOT=$(pwd)
W=/tmp/s14c5; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s14/bins5.tar.xz -C $W || { echo "untar failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-575}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s14c5.tgz" -C $W logs'
AB=$ROOT/bench/results/2026-11-23_h200_s14_softmax_ab/ab_variants.sh
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw,power.limit --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_LD 120 $W/bins/tests_LD --gtest_brief=1
STEP_SUMMARY='^(pass|bwd)|failed' step ab_bwd 220 env VARIANTS="base L D LD" ROUNDS=4 PASS=bwd \
  CASES="8K:causal 16K:causal 16K:full" bash $AB $W/bins $L/ab_bwd
STEP_SUMMARY='^(pass|fwdbwd)|failed' step ab_fwdbwd 120 env VARIANTS="base L D LD" ROUNDS=4 PASS=fwdbwd \
  CASES="16K:causal" bash $AB $W/bins $L/ab_fwdbwd
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
