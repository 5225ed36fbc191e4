#!/bin/bash
R=$OUT/r; mkdir -p $R; W=/tmp/w; mkdir -p $W
tar xzf build-hbwd/dev2/bins.tgz -C $W
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/gpu.txt
for v in v10 v11; do
  echo "== $v tests"
  timeout 100 $W/$v/distattn_tests_gpu --gtest_filter='FlashBwdHopper*:FlashBwd.*' > $R/tests_$v.txt 2>&1; echo "rc=$?"
  grep -E "^\[  (FAILED|PASSED) |FAILED  \]" $R/tests_$v.txt | head -20
done
echo "== v11 memcheck"
timeout 80 compute-sanitizer --tool memcheck $W/v11/distattn_tests_gpu --gtest_filter='FlashBwdHopper.Bf16Causal:FlashBwdHopper.Bf16ZigzagDiagonalStepAccumulate:FlashBwdHopper.SingleQueryRow' > $R/memcheck_v11.txt 2>&1; echo "rc=$?"
grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED)" $R/memcheck_v11.txt | head
echo "== v10 memcheck"
timeout 40 compute-sanitizer --tool memcheck $W/v10/distattn_tests_gpu --gtest_filter='FlashBwdHopper.Bf16ThreeChunksStridedWindow' > $R/memcheck_v10.txt 2>&1; echo "rc=$?"
grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED)" $R/memcheck_v10.txt | head
for causal in "" "--causal"; do for v in v00 v10 v11; do
  c=0; [ $v != v00 ] && c=1
  tag=bwd${causal:+_causal}_$v
  timeout 60 $W/$v/distattn_bench -o dense --pass bwd $causal -b 4K -e 64K -f 4 -n 10 -w 3 -c $c --check-heads 2 -J $R/$tag.json > $R/$tag.txt 2>&1
  echo "== $tag rc=$?"; grep -vE "^#|^$" $R/$tag.txt | tail -3
done; done
cd $OUT && tar czf $1.tgz r && rm -rf r
