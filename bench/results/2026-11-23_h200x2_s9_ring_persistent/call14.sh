#!/bin/bash
# Session 9, call 14 (nvidia-h200-x2): full-mask ring steps at session 8's persistent limit (4K local rows), banded
# steps never persistent (this tree): test_ring_gpu at np 2, a checked non-causal ring run, ring fwd non-causal and
# causal at 8K and 16K against 42a3b25 (binsF), two alternating rounds.
set -u
ROOT=$(pwd)
W=/tmp/s9c14; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s9/binsM.tar.xz -C $W && tar xJf build-s8/binsF.tar.xz -C $W/old stage/distattn_bench || exit 1
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-150}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s9c14.tgz" -C $W logs'
S=$W/stage; B=$S/distattn_bench
MPI=("$ROOT/launch/mpirun.sh" -n 2)
for t in ring; do
  STEP_SUMMARY='PASSED|FAILED' step mpi_$t 90 "${MPI[@]}" $S/distattn_mpi_test_${t}_gpu --gtest_brief=1
done
step ring_check_nc 40 "${MPI[@]}" $B -o ring -b 2K -e 4K -H 8 -d 128 --pass fwdbwd -c 1 -n 3 -w 1
for r in 1 2; do
  for v in new old; do
    X=$B; [[ $v == old ]] && X=$W/old/stage/distattn_bench
    for cfg in "--pass fwd" "--causal --pass fwd"; do
      printf "%s %-4s %-22s\n" $r $v "$cfg" >> $L/ring_ab.txt
      "${MPI[@]}" $X -o ring -b 8K -e 16K -H 32 -d 128 $cfg -n 10 -w 3 -c 0 2>&1 | grep -E "^ +[0-9]+ " >> $L/ring_ab.txt
    done
  done
done
cat $L/ring_ab.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
