#!/bin/bash
# Session 9, call 12 (nvidia-h200-x2): check of main at the ring's never-persistent steps. GPU suite, the ring / mha /
# dilated gpu-mpi programs at np 2, checked ring runs, then ring timings against 42a3b25 (binsF, session 8's code):
# causal fwd and fwd+bwd and non-causal fwd at 8K, 16K, 32K on 2 GPUs, H 32 D 128 bf16, two alternating rounds.
set -u
ROOT=$(pwd)
W=/tmp/s9c12; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s9/binsK.tar.xz -C $W && tar xJf build-s8/binsF.tar.xz -C $W/old stage/distattn_bench || exit 1
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-330}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s9c12.tgz" -C $W logs'
S=$W/stage; B=$S/distattn_bench
MPI=("$ROOT/launch/mpirun.sh" -n 2)
STEP_SUMMARY='PASSED|FAILED' step tests_gpu 150 $S/distattn_tests_gpu --gtest_brief=1
for t in ring ring_sparse mha dilated_dist; do
  STEP_SUMMARY='PASSED|FAILED' step mpi_$t 90 "${MPI[@]}" $S/distattn_mpi_test_${t}_gpu --gtest_brief=1
done
step ring_check 40 "${MPI[@]}" $B -o ring -b 2K -e 8K -H 8 -d 128 --causal --pass fwdbwd --gqa 2 -c 1 -n 3 -w 1
step ring_check_nc 40 "${MPI[@]}" $B -o ring -b 2K -e 8K -H 8 -d 128 --pass fwdbwd --layout contiguous -c 1 -n 3 -w 1
for r in 1 2; do
  for v in new old; do
    X=$B; [[ $v == old ]] && X=$W/old/stage/distattn_bench
    for cfg in "--causal --pass fwd" "--pass fwd" "--causal --pass fwdbwd"; do
      printf "%s %-4s %-22s\n" $r $v "$cfg" >> $L/ring_ab.txt
      "${MPI[@]}" $X -o ring -b 8K -e 32K -H 32 -d 128 $cfg -n 10 -w 3 -c 0 2>&1 | grep -E "^ +[0-9]+ " >> $L/ring_ab.txt
    done
  done
done
cat $L/ring_ab.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
