#!/bin/bash
# Call 2 of helper hopper-persistent: tests after the cross-unit pingpong; L2 section sweep; old binary alongside.
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
timeout 150 ./distattn_tests_gpu --gtest_filter='FlashForwardHopper.*:FlashForward.*' > $OUT/t_hopper.log 2>&1; echo "tests rc=$?"
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|tests ran" $OUT/t_hopper.log | head -30
grep -B3 -A12 "Failure" $OUT/t_hopper.log | head -40
B="-c 0 -n 20 -w 5"
run() { # tag bin args...
  local tag=$1; shift; local bin=$1; shift
  timeout 60 ./$bin "$@" $B > $OUT/b_$tag.log 2>&1; echo "== $tag rc=$? :: $*"; grep -vE "^#|^$" $OUT/b_$tag.log | tail -3
}
set_cases() {
  local v=$1 bin=$2
  run ${v}_2kc $bin -o dense -b 2K -e 2K --causal -B 8
  run ${v}_dil $bin -o dilated -b 16K -e 16K --causal
  run ${v}_dc $bin -o dense -b 4K -e 16K -f 4 --causal
  run ${v}_dn $bin -o dense -b 4K -e 16K -f 4
  run ${v}_bd $bin -o sparse -b 16K -e 16K
  run ${v}_sw $bin -o sparse --sparse-pattern sliding-window --window 2048 --causal -b 16K -e 16K
}
set_cases old distattn_bench_old
for mb in 8 1 32; do DISTATTN_HOPPER_L2_MB=$mb set_cases new$mb distattn_bench; done
DISTATTN_HOPPER_L2_MB=4 run new4_2kc distattn_bench -o dense -b 2K -e 2K --causal -B 8
DISTATTN_HOPPER_L2_MB=4 run new4_dil distattn_bench -o dilated -b 16K -e 16K --causal
run new_dil64 distattn_bench -o dilated -b 64K -e 64K --causal
run old_dil64 distattn_bench_old -o dilated -b 64K -e 64K --causal
timeout 75 ./distattn_tests_gpu --gtest_filter='-FlashForwardHopper.*:FlashForward.*' > $OUT/t_rest.log 2>&1; echo "rest tests rc=$?"
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|tests ran" $OUT/t_rest.log | head -20; tail -3 $OUT/t_rest.log
timeout 50 compute-sanitizer --tool memcheck ./distattn_tests_gpu --gtest_filter='FlashForwardHopper.Persistent*:FlashForwardHopper.BlockLists:FlashForwardHopper.AlibiMultiChunk' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$?"
grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head
cd $OUT && tar czf $OUT/call2.tgz *.log && rm -f *.log
