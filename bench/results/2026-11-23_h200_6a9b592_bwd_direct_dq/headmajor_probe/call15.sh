#!/bin/bash
# Session 8, call 15 (nvidia-h200-x2): the dilated backward's dQ accumulator head-major [Hq, B, S, D] (working tree on
# 1fb886e). Dilated / mha GPU tests (one GPU, and the distributed dilated + mha programs at np 2), then each LongNet
# pattern alone and the whole configuration, bwd at 64K, against 42a3b25 (packed accumulator), two rounds.
set -u
ROOT=$(pwd)
W=/tmp/s8c15; L=$W/logs
rm -rf $W && mkdir -p $L/runs $W/old
tar xJf build-s8/binsG.tar.xz -C $W && tar xJf build-s8/binsF.tar.xz -C $W/old stage/distattn_bench || exit 1
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-200}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c15.tgz" -C $W logs'
S=$W/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
STEP_SUMMARY='PASSED|FAILED' step tests_dilated 60 $S/distattn_tests_gpu --gtest_filter='*Dilated*:*Mha*:*Longnet*:*LongNet*'
STEP_SUMMARY='PASSED|FAILED' step mpi_dilated_dist 60 "${MPI[@]}" $S/distattn_mpi_test_dilated_dist_gpu --gtest_brief=1
STEP_SUMMARY='PASSED|FAILED' step mpi_mha 60 "${MPI[@]}" $S/distattn_mpi_test_mha_gpu --gtest_brief=1
for r in 1 2; do
  for v in new old; do
    X=$S; [[ $v == old ]] && X=$W/old/stage
    for pat in "2K:1" "8K:4" "32K:12" "2K,4K,8K,16K,32K:1,2,4,6,12"; do
      seg=${pat%%:*}; rate=${pat##*:}
      printf "%s %s %-28s " $r $v $pat | tee -a $L/ab.txt
      $X/distattn_bench -o dilated --dilated-segments $seg --dilated-rates $rate -H 32 -d 128 --dtype bf16 -c 0 -n 5 -w 2 -b 64K -e 64K --causal --pass bwd -B 2 2>&1 | grep "^ *65536" | awk '{print $9, $10, $12}' | tee -a $L/ab.txt
    done
  done
done
step check_b3 60 $S/distattn_bench -o dilated --dilated-segments 1K,2K --dilated-rates 1,2 -b 4K -e 4K -B 3 -H 8 -d 128 --causal --pass fwdbwd -n 2 -w 1 -c 1
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
