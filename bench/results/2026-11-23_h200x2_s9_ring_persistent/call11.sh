#!/bin/bash
# Session 9, call 11 (nvidia-h200-x2): ring steps at the conservative persistent limit again (4K local rows; this
# tree) against 42a3b25 (binsF, before session 9) and the steps never persistent (DISTATTN_HOPPER_PERSISTENT_M=0):
# ring fwd and fwd+bwd causal at 8K and 16K on 2 GPUs, H 32 D 128 bf16, three alternating rounds.
set -u
ROOT=$(pwd)
W=/tmp/s9c11; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s9/binsJ.tar.xz -C $W && tar xJf build-s8/binsF.tar.xz -C $W/old stage/distattn_bench || exit 1
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
MPI=("$ROOT/launch/mpirun.sh" -n 2)
for r in 1 2 3; do
  for v in new old never; do
    X=$W/stage/distattn_bench; e="X=1"
    [[ $v == old ]] && X=$W/old/stage/distattn_bench
    [[ $v == never ]] && e="DISTATTN_HOPPER_PERSISTENT_M=0"
    for cfg in "--causal --pass fwd" "--causal --pass fwdbwd"; do
      printf "%s %-5s %-22s\n" $r $v "$cfg" | tee -a $L/ring_ab.txt
      env $e "${MPI[@]}" $X -o ring -b 8K -e 16K -H 32 -d 128 $cfg -n 20 -w 5 -c 0 2>&1 | grep -E "^ +[0-9]+ " | tee -a $L/ring_ab.txt
    done
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s9c11.tgz" -C $W logs
