#!/bin/bash
# Session 14, call 2 (one H200): MASK_EARLY as the default (bench_new, tests_new: the library as committed) against
# main's kernel (bench_base of call 1): the GPU suite, five interleaved rounds, and an ncu profile of main's kernel
# at 16K (what bounds it: the pipes and the warps' stall reasons).
set -u
ROOT=$(pwd)
W=/tmp/s14c2; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s14/bins2.tar.xz -C $W || { echo "untar failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-575}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s14c2.tgz" -C $W logs'
AB=$ROOT/bench/results/2026-11-23_h200_s14_softmax_ab/ab_variants.sh
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw,power.limit --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_new 120 $W/bins/tests_new --gtest_brief=1
STEP_SUMMARY='^(pass|fwd)|failed' step ab 300 env VARIANTS="base new" ROUNDS=5 \
  CASES="16K:full 64K:full 16K:causal 8K:causal 16K:causal:alibi 32K:full" bash $AB $W/bins $L/ab
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}" | tee $L/ncu_path.txt
if [ -n "$NCU" ]; then
  STEP_SUMMARY='Throughput|Busy|Stall|Issued|Active' step ncu 120 $NCU --set full --import-source no \
    -k regex:flash_fwd_hopper -c 1 -o $L/ncu_16k $W/bins/bench_base -o dense -b 16K -e 16K -n 1 -w 0 -c 0
  step ncu_details 30 $NCU --import $L/ncu_16k.ncu-rep --page details
  step ncu_raw 30 $NCU --import $L/ncu_16k.ncu-rep --page raw --csv
  step ncu_source 40 $NCU --import $L/ncu_16k.ncu-rep --page source --csv --print-source sass
fi
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
