#!/bin/bash
# Session 11, call 14 (nvidia-h200-x2): the ring's 8K causal fwd+bwd RoPE overhead (one round read +3.84%):
# none / rope, five interleaved processes each, --warmup-ms 300, np 2.
set -u
W=/tmp/s11c14; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsI.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
export DISTATTN_GIT_COMMIT=19d073d
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
a="-o ring --pass fwdbwd -b 8K -e 8K --causal -c 0 -n 40 -w 10 --warmup-ms 300"
for r in 1 2 3 4 5; do
  echo "none $(launch/mpirun.sh -n 2 $B $a 2>&1 | grep -E '^ +8192 ')" | tee -a $L/ab.txt
  echo "rope $(launch/mpirun.sh -n 2 $B $a --rope 2>&1 | grep -E '^ +8192 ')" | tee -a $L/ab.txt
done
tar czf $OUT/s11c14.tgz -C $W logs
