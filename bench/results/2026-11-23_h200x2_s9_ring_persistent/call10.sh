#!/bin/bash
# Session 9, call 10 (nvidia-h200-x2): ring steps persistent up to 8K local rows when the K|V hops run on the copy
# engine (AttnParams::persistent_max_rows; this tree) against d467deb (binsH: only the first, plain-mode step
# persistent at 8K local). Ring fwd and fwd+bwd causal and fwd non-causal at 16K (8K per GPU: the per-step shapes of 4
# GPUs at 32K) and 8K, H 32 D 128 bf16, three alternating rounds. Then test_ring_gpu at np 2.
set -u
ROOT=$(pwd)
W=/tmp/s9c10; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s9/binsI.tar.xz -C $W && tar xJf build-s9/binsH.tar.xz -C $W/old stage/distattn_bench || exit 1
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
MPI=("$ROOT/launch/mpirun.sh" -n 2)
for r in 1 2 3; do
  for v in new old; do
    X=$W/stage/distattn_bench; [[ $v == old ]] && X=$W/old/stage/distattn_bench
    for cfg in "--causal --pass fwd" "--pass fwd" "--causal --pass fwdbwd"; do
      printf "%s %s %-22s\n" $r $v "$cfg" | tee -a $L/ring_ab.txt
      "${MPI[@]}" $X -o ring -b 8K -e 16K -H 32 -d 128 $cfg -n 20 -w 5 -c 0 2>&1 | grep -E "^ +[0-9]+ " | tee -a $L/ring_ab.txt
    done
  done
done
timeout 120 "${MPI[@]}" $W/stage/distattn_mpi_test_ring_gpu --gtest_brief=1 > $L/mpi_ring.log 2>&1; echo "mpi_ring rc=$?"; grep -E "PASSED|FAILED" $L/mpi_ring.log | tail -3
mkdir -p "$OUT" && tar czf "$OUT/s9c10.tgz" -C $W logs
