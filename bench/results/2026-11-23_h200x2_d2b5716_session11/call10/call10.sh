#!/bin/bash
# Session 11, call 10 (nvidia-h200-x2): the final bench binary (4705a94: one timing routine, warm_median_ms): dense on
# one GPU with and without --warmup-ms, the ring at np 2 with it (checked at 4K), fwd and fwd+bwd causal to 32K.
set -u
W=/tmp/s11c10; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsG.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
export DISTATTN_GIT_COMMIT=4705a94
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source bench/device_steps.sh
steps_begin $L 200
STEP_AFTER='tar czf $OUT/s11c10.tgz -C $W logs 2>/dev/null'
for r in 1 2 3; do
  step dense_w300_$r 30 env CUDA_VISIBLE_DEVICES=0 $B -o dense -b 8K -e 8K -n 40 -w 10 -c 0 --warmup-ms 300
done
step dense_check 30 env CUDA_VISIBLE_DEVICES=0 $B -o dense -b 2K -e 4K --causal -c 1 -n 3 -w 1 --warmup-ms 100
step ring_fwdbwd 60 launch/mpirun.sh -n 2 $B -o ring --pass fwdbwd -b 4K -e 32K -f 8 --causal -c 1 -n 3 -w 1 --warmup-ms 300
step ring_fwd 60 launch/mpirun.sh -n 2 $B -o ring -b 4K -e 32K -f 8 --causal -c 1 -n 10 -w 2 --warmup-ms 300
