#!/bin/bash
# Session 12, call 5 (one H200): the positional study's forward rows at 8K and 16K (causal and not; none and RoPE)
# over seven interleaved rounds at the settled clock (WARMUP_MS 300 by default), for firmer medians than session 11's
# three. distattn_bench of main (library code as e5b5261).
set -u
W=/tmp/s12c5; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s12/binsD.tar.xz -C $W || exit 1
source bench/device_steps.sh
steps_begin $L 330
STEP_AFTER='tar czf $OUT/s12c5.tgz -C $W logs 2>/dev/null'
export DISTATTN_BENCH=$W/stage/distattn_bench DISTATTN_GIT_COMMIT=5ec07b5 SIZES="8K 16K" PASSES=fwd VARIANTS="none rope" ROUNDS=7
STEP_SUMMARY='overhead|^ *(8K|16K|8192|16384) ' step study 320 bench/run_positional_study.sh $L/study
