#!/bin/bash
# Session 9, call 9 (nvidia-h200-x2): the ring backward's delta through the engine's kernel (1ee6672) against 42a3b25's
# binary (warp-per-row row_dot): ring fwd+bwd causal 32K and 64K on 2 GPUs, H 32, D 128, bf16, -n 5, three
# alternating rounds; time and exposed communication per row.
set -u
ROOT=$(pwd)
W=/tmp/s9c9; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s9/binsH.tar.xz -C $W stage/distattn_bench && tar xJf build-s8/binsF.tar.xz -C $W/old stage/distattn_bench || exit 1
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
for r in 1 2 3; do
  for v in new old; do
    X=$W/stage/distattn_bench; [[ $v == old ]] && X=$W/old/stage/distattn_bench
    printf "%s %s\n" $r $v | tee -a $L/ring_ab.txt
    "$ROOT/launch/mpirun.sh" -n 2 $X -o ring -b 32K -e 64K -H 32 -d 128 --causal --pass fwdbwd -n 5 -w 2 -c 0 2>&1 | grep -E "^ +[0-9]+ " | tee -a $L/ring_ab.txt
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s9c9.tgz" -C $W logs
