#!/bin/bash
# Session 12, call 6 (two H200s): the positional study's ring forward rows at 8K and 16K (causal and not; none and
# RoPE) over five interleaved rounds at the settled clock (WARMUP_MS 300 by default); session 11 had one round.
# distattn_bench of main (library code as e5b5261), launch/mpirun.sh -n 2.
set -u
W=/tmp/s12c6; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s12/binsD.tar.xz -C $W || exit 1
source bench/device_steps.sh
steps_begin $L 330
STEP_AFTER='tar czf $OUT/s12c6.tgz -C $W logs 2>/dev/null'
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
export DISTATTN_BENCH=$W/stage/distattn_bench DISTATTN_GIT_COMMIT=5ec07b5 SIZES="8K 16K" PASSES=fwd VARIANTS="none rope"
export ROUNDS=5 OPS=ring RING_LAUNCH="launch/mpirun.sh -n 2" MAX_SECONDS=290
STEP_SUMMARY='overhead|MISSED|met' step study 320 bench/run_positional_study.sh $L/study
