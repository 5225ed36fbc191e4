#!/bin/bash
# Session 13, call 3 (nvidia-h200-x2): the 16K rows, where the two earlier calls disagreed on ring vs caller (call 1:
# causal ring +2.25% vs caller +3.60%, call 2: +3.76% vs +2.66%), with a fourth variant "ringsep" (the ring's own RoPE
# with q always rotated in the k launch, DISTATTN_ROPE_FWD=separate) to tell whether the fused q path helps there;
# and fwd+bwd causal 8K over five rounds (call 2's three rounds spread +1.9..+4.8%). Same binaries as call 2.
set -u
ROOT=$(pwd)
W=/tmp/s13c3; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s13/binsB.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
export DISTATTN_GIT_COMMIT=${COMMIT:-s13} PYTHONUNBUFFERED=1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-400}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s13c3.tgz" -C $W logs'
B=$W/stage/distattn_bench
AB=$ROOT/bench/results/2026-11-23_h200x2_s13_ring_rope/ab_ring_rope.sh
STEP_SUMMARY='ovh|ring' step ab_16k_causal 170 env SIZES=16K MASKS=causal ROUNDS=7 VARIANTS="none ring ringsep caller" bash $AB $B $L/ab_16k_causal
STEP_SUMMARY='ovh|ring' step ab_16k_full 130 env SIZES=16K MASKS=full ROUNDS=4 VARIANTS="none ring ringsep caller" bash $AB $B $L/ab_16k_full
STEP_SUMMARY='ovh|ring' step ab_8k_fwdbwd 90 env SIZES=8K MASKS=causal PASSES=fwdbwd ROUNDS=5 bash $AB $B $L/ab_8k_fwdbwd
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
