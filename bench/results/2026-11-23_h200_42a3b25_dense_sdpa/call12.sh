#!/bin/bash
# Session 8, call 12 (nvidia-h200): dense attention vs PyTorch SDPA (flash, cuDNN, efficient) with the current code,
# one command per pass group: fwd non-causal and causal at 16K and 128K, fwd+bwd causal at 16K.
set -u
ROOT=$(pwd)
W=/tmp/s8c12; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s8/binsF.tar.xz -C $W stage/distattn_bench || { echo "untar failed"; exit 1; }
export DISTATTN_GIT_COMMIT=${COMMIT:-unknown} PYTHONUNBUFFERED=1
t0=$(date +%s)
DISTATTN_BENCH=$W/stage/distattn_bench ITERS=3 WARMUP=1 CHECK=0 DENSE_SWEEP="-b 16K -e 128K -f 8" \
  JOBS="dense-fwd dense-fwd-causal" timeout 240 bash bench/run_side_by_side.sh $L/fwd > $L/fwd.log 2>&1
echo "fwd rc=$? $(( $(date +%s) - t0 ))s"
DISTATTN_BENCH=$W/stage/distattn_bench ITERS=5 WARMUP=2 CHECK=0 DENSE_SWEEP="-b 16K -e 16K" \
  JOBS="dense-fwdbwd-causal" timeout 120 bash bench/run_side_by_side.sh $L/fwdbwd > $L/fwdbwd.log 2>&1
echo "fwdbwd rc=$? $(( $(date +%s) - t0 ))s"
cat $L/fwd/table.txt $L/fwdbwd/table.txt 2>/dev/null
mkdir -p "$OUT" && tar czf "$OUT/s8c12.tgz" -C $W logs
