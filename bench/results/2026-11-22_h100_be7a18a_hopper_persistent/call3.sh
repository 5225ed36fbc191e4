#!/bin/bash
# Call 3 of helper hopper-persistent: final binaries (persistent for Sq <= 4096), tests, memcheck, before/after table.
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
timeout 100 ./distattn_tests_gpu --gtest_filter='FlashForwardHopper.*:FlashForward.*' > $OUT/t_hopper.log 2>&1; echo "tests rc=$?"
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]" $OUT/t_hopper.log | head -20
grep -B3 -A12 "Failure" $OUT/t_hopper.log | head -30
B="-c 0 -n 20 -w 5"
run() { # tag bin args...
  local tag=$1; shift; local bin=$1; shift
  timeout 60 ./$bin "$@" $B -J $OUT/$tag.json > $OUT/b_$tag.log 2>&1; echo "== $tag rc=$? :: $*"; grep -vE "^#|^$" $OUT/b_$tag.log | tail -3
}
for v in new old; do
  bin=distattn_bench; [ $v = old ] && bin=distattn_bench_old
  run ${v}_2kc $bin -o dense -b 2K -e 2K --causal -B 8
  run ${v}_dil $bin -o dilated -b 16K -e 64K -f 4 --causal
  run ${v}_dc $bin -o dense -b 4K -e 64K -f 4 --causal
  run ${v}_dn $bin -o dense -b 4K -e 64K -f 4
  run ${v}_bd $bin -o sparse -b 16K -e 64K -f 4
  run ${v}_sw $bin -o sparse --sparse-pattern sliding-window --window 2048 --causal -b 16K -e 64K -f 4
done
run new2_2kc distattn_bench -o dense -b 2K -e 2K --causal -B 8
run new2_dil distattn_bench -o dilated -b 16K -e 64K -f 4 --causal
timeout 70 compute-sanitizer --tool memcheck ./distattn_tests_gpu --gtest_filter='FlashForwardHopper.*' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$?"
grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head
cd $OUT && tar czf $OUT/call3.tgz *.log *.json && rm -f *.log *.json
