#!/bin/bash
# Session 8, call 5 (nvidia-h200-x2), binaries of d101bfd: (a) ring vs PyTorch context_parallel on 2 GPUs, same
# global shapes, 32K and 128K, fwd and fwd+bwd causal; (b) the strong-scaling study on 1 and 2 GPUs (ring and LongNet,
# fwd and fwd+bwd causal), the current code's efficiency figures (issue 5 asks 1, 2, 4: x4 not lent).
set -u
ROOT=$(pwd)
W=/tmp/s8c5; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s8/bins3.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=120
export DISTATTN_GIT_COMMIT=d101bfd PYTHONUNBUFFERED=1
S=$W/stage
t0=$(date +%s)
NP=2 DISTATTN_BENCH=$S/distattn_bench RING_SWEEP="-b 32K -e 128K -f 4" ITERS=5 WARMUP=2 CHECK=0 \
  JOBS="fwd-causal fwdbwd-causal" timeout 200 bash bench/run_ring_side_by_side.sh $L/cp > $L/cp.log 2>&1
echo "cp rc=$? $(( $(date +%s) - t0 ))s"; tail -20 $L/cp.log
NPS="1 2" DISTATTN_BENCH=$S/distattn_bench MAX_SECONDS=240 RUN_TIMEOUT=150 RING_GROUPS="2K:32K:5:2 64K:128K:3:1 256K:512K:1:1" \
  timeout 300 bash bench/run_scaling_study.sh $L/scaling > $L/scaling.log 2>&1
echo "scaling rc=$? $(( $(date +%s) - t0 ))s"; tail -40 $L/scaling.log
mkdir -p "$OUT" && tar czf "$OUT/s8c5.tgz" -C $W logs
