#!/usr/bin/env bash
# The final device command (run from the repo root on one H100, binaries carried in build-hp/dev/):
#   distattn_tests_gpu (CMake build of 745e88e + the test file): FlashForwardHopper.* and the existing FlashForward.*,
#   compute-sanitizer memcheck on three Hopper tests, the timing probe (hopper vs existing kernel), PyTorch SDPA.
set -u
R=bench/results/2026-11-22_h100_745e88e_hopper
D=build-hp/dev
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/device.txt
cuobjdump -sass $D/hopper_fwd_timing | grep -oE "HGMMA\.[A-Za-z0-9_.]+|USETMAXREG[A-Z0-9_.]*|UTMALDG[A-Z0-9_.]*" | sort | uniq -c > $OUT/sass_summary.txt
timeout 150 $D/distattn_tests_gpu --gtest_also_run_disabled_tests --gtest_filter='FlashForwardHopper.*:FlashForward.*' > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
timeout 60 compute-sanitizer --tool memcheck $D/distattn_tests_gpu --gtest_filter='FlashForwardHopper.DenseOdd*:FlashForwardHopper.BlockLists:FlashForwardHopper.Strided*' > $OUT/memcheck.log 2>&1
timeout 100 $D/hopper_fwd_timing 20 65536 > $OUT/timing.log 2>&1
timeout 100 python3 $R/torch_sdpa.py $OUT/torch_sdpa.json > $OUT/torch_sdpa.log 2>&1
grep -E "PASSED|FAILED|tests rc" $OUT/tests.log; tail -1 $OUT/memcheck.log; cat $OUT/sass_summary.txt $OUT/timing.log; cat $OUT/torch_sdpa.log
