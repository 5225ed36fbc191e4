#!/bin/bash
# Session 11, call 6 (nvidia-h200-x2): the time-based warm-up across ranks (--warmup-ms: ranks agree on batches and
# stop together) and torch_cp's; test_ring_gpu at np 2 on this commit; ring against PyTorch context_parallel on 2 GPUs
# at the settled clock (both tools --warmup-ms 300), 32K and 128K.
set -u
W=/tmp/s11c6; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsE.tar.xz -C $W || exit 1
S=$W/stage; B=$S/distattn_bench
export DISTATTN_GIT_COMMIT=d2b5716
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source bench/device_steps.sh
steps_begin $L 560
STEP_AFTER='tar czf $OUT/s11c6.tgz -C $W logs 2>/dev/null'
step ring_gpu_np2 170 launch/mpirun.sh -n 2 $S/distattn_mpi_test_ring_gpu --gtest_brief=1
step ring_warm 60 launch/mpirun.sh -n 2 $B -o ring -b 32K -e 32K --causal -c 0 -n 10 -w 2 --warmup-ms 300
sbs() {
  NP=2 DISTATTN_BENCH=$B ITERS=10 WARMUP=2 WARMUP_MS=300 CHECK=0 RING_SWEEP="-b 32K -e 128K -f 4" \
    JOBS="fwd-causal fwd fwdbwd-causal" bash bench/run_ring_side_by_side.sh $L/ring_cp_w300
}
export B L; export -f sbs
STEP_SUMMARY='ratio|torch|distattn|^ +[0-9]+K? ' step sbs 300 bash -c sbs
