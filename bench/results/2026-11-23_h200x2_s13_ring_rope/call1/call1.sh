#!/bin/bash
# Session 13, call 1 (nvidia-h200-x2): RingConfig::rope (the ring rotates q, k itself: k with the K|V send buffer, q in
# that launch or in the own step's forward launch; q-only fused RoPE in the Hopper forward; RopeParams::q_copy/k_copy).
# GPU tests of the touched code, every gpu-mpi program that uses it at np 2, checked bench runs, then the A/B of the
# ring's own RoPE against the caller's launch and against none (ring fwd, 8K / 16K, causal and not, interleaved rounds).
set -u
ROOT=$(pwd)
W=/tmp/s13c1; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s13/binsA.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
export DISTATTN_GIT_COMMIT=${COMMIT:-s13} PYTHONUNBUFFERED=1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-560}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s13c1.tgz" -C $W logs'
S=$W/stage; B=$S/distattn_bench
MPI=("$ROOT/launch/mpirun.sh" -n 2)
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_gpu_rope 150 $S/distattn_tests_gpu --gtest_brief=1 \
  --gtest_filter='Rope*:FlashForwardHopper*:FlashForward.*:MhaGpu*'
STEP_SUMMARY='PASSED|FAILED|rope inside' step mpi_ring 150 "${MPI[@]}" $S/distattn_mpi_test_ring_gpu --gtest_brief=1
STEP_SUMMARY='PASSED|FAILED' step mpi_mha 90 "${MPI[@]}" $S/distattn_mpi_test_mha_gpu --gtest_brief=1
C="-c 1 -n 3 -w 1"; R="-b 2K -e 4K -H 8 -d 128 $C"
step ring_rope_check 40 "${MPI[@]}" $B -o ring $R --causal --pass fwdbwd --rope --gqa 2
step ring_rope_check_caller 40 env DISTATTN_BENCH_RING_ROPE=caller "${MPI[@]}" $B -o ring $R --causal --pass fwdbwd --rope
step ring_rope_check_16k 60 "${MPI[@]}" $B -o ring -b 16K -e 16K -H 4 -d 128 -c 1 --check-max-seq 16K -n 2 -w 1 --causal --pass fwdbwd --rope
step mha_ring_rope 40 "${MPI[@]}" $B -o mha -b 2K -e 2K -H 4 -d 128 --core ring --pass fwdbwd --causal $C
STEP_SUMMARY='ovh|ring' step ab 300 env SIZES="8K 16K" ROUNDS=3 bash $ROOT/bench/results/2026-11-23_h200x2_s13_ring_rope/ab_ring_rope.sh $B $L/ab
cp $L/ab/*.log $L/runs/ 2>/dev/null
grep -l "Out of bounds values : [1-9]" $L/*.log > $L/checked_bad.txt
echo "checked runs with wrong elements: $(wc -l < $L/checked_bad.txt); OK lines: $(grep -h 'Out of bounds values : 0 OK' $L/*.log | wc -l)"
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
