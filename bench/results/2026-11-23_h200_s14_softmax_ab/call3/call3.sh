#!/bin/bash
# Session 14, call 3 (one H200): dense attention against PyTorch SDPA with the committed code (MASK_EARLY), both tools
# at the settled clock (WARMUP_MS=300): forward 16K and 128K, causal and not; fwd+bwd 16K, causal and not. Then an ncu
# profile of the Hopper backward at 16K causal (what bounds it, for the next structural work).
set -u
ROOT=$(pwd)
W=/tmp/s14c3; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s14/bins3.tar.xz -C $W || { echo "untar failed"; exit 1; }
export DISTATTN_GIT_COMMIT=${COMMIT:-unknown} PYTHONUNBUFFERED=1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-575}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s14c3.tgz" -C $W logs'
B=$W/stage/distattn_bench
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw,power.limit --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='x\)|ratio|distattn' step sbs_fwd 260 env DISTATTN_BENCH=$B ITERS=3 WARMUP=1 WARMUP_MS=300 CHECK=0 \
  DENSE_SWEEP="-b 16K -e 128K -f 8" JOBS="dense-fwd dense-fwd-causal" bash bench/run_side_by_side.sh $L/fwd
STEP_SUMMARY='x\)|ratio|distattn' step sbs_fwdbwd 150 env DISTATTN_BENCH=$B ITERS=5 WARMUP=2 WARMUP_MS=300 CHECK=0 \
  DENSE_SWEEP="-b 16K -e 16K" JOBS="dense-fwdbwd dense-fwdbwd-causal" bash bench/run_side_by_side.sh $L/fwdbwd
STEP_SUMMARY='Throughput|Busy' step ncu_bwd 90 /usr/local/cuda/bin/ncu --set full -k regex:flash_bwd_hopper -c 1 \
  -o $L/ncu_bwd16k $B -o dense --pass bwd --causal -b 16K -e 16K -n 1 -w 0 -c 0
step ncu_bwd_details 30 /usr/local/cuda/bin/ncu --import $L/ncu_bwd16k.ncu-rep --page details
step ncu_bwd_source 40 /usr/local/cuda/bin/ncu --import $L/ncu_bwd16k.ncu-rep --page source --csv --print-source sass
rm -f $L/ncu_bwd16k.ncu-rep
eval "$STEP_AFTER"
cat $L/fwd/table.txt $L/fwdbwd/table.txt 2>/dev/null
echo "total $(steps_elapsed)s status $steps_status"
