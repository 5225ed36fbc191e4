#!/bin/bash
# Session 11, call 3 (one H200): (a) energy per call at the settled clock (probe, NVML energy counter): plain forward,
# fused RoPE, separate RoPE, prerotated; 8K causal, 8K non-causal, 16K causal; (b) the positional study's fwd+bwd rows
# (2K..128K, WARMUP_MS=300, one round: fwd+bwd processes agree within 0.2%) and the forward's 2K / 4K rows (3 rounds).
set -u
W=/tmp/s11c3; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsC.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench; P=$W/stage/distattn_probe_forward_spread
export DISTATTN_GIT_COMMIT=4b23e35+s11c
source bench/device_steps.sh
steps_begin $L 570
STEP_AFTER='tar czf $OUT/s11c3.tgz -C $W logs 2>/dev/null'
energy() {
  for shape in "8192 1 150" "8192 0 80" "16384 1 40"; do
    set -- $shape
    for r in 1 2; do
      echo "== plain $shape r$r"; $P $1 $2 1 3 $3 0 0 400
      for m in auto separate prerotated; do
        echo "== rope-$m $shape r$r"; DISTATTN_ROPE_FWD=$m $P $1 $2 1 3 $3 0 1 400
      done
    done
  done
}
study_fb() {
  DISTATTN_BENCH=$B SIZES="2K 4K 8K 16K 32K 64K 128K" PASSES=fwdbwd ROUNDS=1 WARMUP_MS=300 CHECK=0 MAX_SECONDS=300 \
    bash bench/run_positional_study.sh $L/study_fwdbwd
}
study_small() {
  DISTATTN_BENCH=$B SIZES="2K 4K" PASSES=fwd ROUNDS=3 WARMUP_MS=300 CHECK=1 MAX_SECONDS=120 \
    bash bench/run_positional_study.sh $L/study_fwd_small
}
export B P L; export -f energy study_fb study_small
STEP_SUMMARY='^== |summary' step energy 150 bash -c energy
STEP_SUMMARY='overhead at|worst' step study_fb 320 bash -c study_fb
STEP_SUMMARY='overhead at|worst' step study_small 130 bash -c study_small
