#!/bin/bash
# Session 13, call 2 (nvidia-h200-x2): the ring RoPE test with dq held to a bound (call 1: dq differed from the caller's
# way only in the last bits: the backward's fp32 dQ atomics), the whole GPU suite, and the A/B of call 1 over more
# rounds (fwd, 8K / 16K causal and not, 5 rounds; 32K 3 rounds) plus fwd+bwd causal 8K / 16K (3 rounds).
set -u
ROOT=$(pwd)
W=/tmp/s13c2; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s13/binsB.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
export DISTATTN_GIT_COMMIT=${COMMIT:-s13} PYTHONUNBUFFERED=1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-570}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s13c2.tgz" -C $W logs'
S=$W/stage; B=$S/distattn_bench
MPI=("$ROOT/launch/mpirun.sh" -n 2)
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED|rope inside' step mpi_ring 150 "${MPI[@]}" $S/distattn_mpi_test_ring_gpu --gtest_brief=1
STEP_SUMMARY='PASSED|FAILED' step tests_gpu 170 $S/distattn_tests_gpu --gtest_brief=1
STEP_SUMMARY='ovh|ring' step ab_fwd 230 env SIZES="8K 16K" ROUNDS=5 bash $ROOT/bench/results/2026-11-23_h200x2_s13_ring_rope/ab_ring_rope.sh $B $L/ab_fwd
STEP_SUMMARY='ovh|ring' step ab_fwd32k 90 env SIZES="32K" ROUNDS=3 bash $ROOT/bench/results/2026-11-23_h200x2_s13_ring_rope/ab_ring_rope.sh $B $L/ab_fwd32k
STEP_SUMMARY='ovh|ring' step ab_fwdbwd 120 env SIZES="8K 16K" MASKS=causal PASSES=fwdbwd ROUNDS=3 bash $ROOT/bench/results/2026-11-23_h200x2_s13_ring_rope/ab_ring_rope.sh $B $L/ab_fwdbwd
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
