#!/usr/bin/env bash
# Device call 1: GPU tests (block layout + block sparse), quick timings, flex smoke test.
set -u
D=build-bs/dev
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > $OUT/gpu.txt 2>&1
echo "== tests"; timeout 150 $D/distattn_tests_gpu --gtest_filter='BlockLayoutGpu*:BlockSparseGpu*' > $OUT/gpu_tests.log 2>&1; echo "tests rc $?"
grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |tests ran|Failure" $OUT/gpu_tests.log | tail -30
echo "== timings"
B="timeout 60 $D/distattn_bench -H 32 -d 128 --dtype bf16 -n 10 -w 3"
$B -o sparse --sparse-pattern block-diagonal --sparse-block 2048 -b 4K -e 16K -f 4 -J $OUT/t_bdiag.json 2>&1 | grep -v "^#  *$" | tail -4
$B -o sparse --sparse-pattern sliding-window --window 2048 --causal -b 4K -e 16K -f 4 -J $OUT/t_win.json 2>&1 | grep -v "^#  *$" | tail -4
$B -o dense -b 16K -e 16K 2>&1 | tail -3
$B -o sparse --sparse-pattern bigbird -b 4K -e 4K --pass fwdbwd 2>&1 | tail -3
$B -o sparse --sparse-pattern sliding-window --window 1000 --causal -b 4K -e 4K --pass fwdbwd 2>&1 | tail -3
echo "== flex smoke"
timeout 100 python3 bench/peers/flex_peers.py -b 16K -e 16K -n 10 -w 3 --sparse-pattern block-diagonal --sparse-block 2048 -J $OUT/flex_smoke.json 2>&1 | tail -5
