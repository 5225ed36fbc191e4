#!/bin/bash
D=build-hbwd/dev3; R=$OUT/r; mkdir -p $R
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/gpu.txt
for pass in bwd fwdbwd; do for causal in "" "--causal"; do for k in hopper mma; do
  c=0; [ $k = hopper ] && c=1
  tag=${pass}${causal:+_causal}_$k
  DISTATTN_BACKWARD_KERNEL=$k timeout 60 $D/distattn_bench -o dense --pass $pass $causal -b 4K -e 64K -f 4 -n 10 -w 3 -c $c --check-heads 2 -J $R/$tag.json > $R/$tag.txt 2>&1
  echo "== $tag rc=$?"; grep -vE "^#|^$" $R/$tag.txt | tail -3
done; done; done
echo "== GQA 32/8 causal 16K bwd"
for k in hopper mma; do DISTATTN_BACKWARD_KERNEL=$k timeout 30 $D/distattn_bench -o dense --pass bwd --causal --gqa 8 -b 16K -e 16K -n 10 -w 3 -c 0 -J $R/bwd_causal_gqa8_$k.json > $R/bwd_causal_gqa8_$k.txt 2>&1; echo "$k rc=$?"; grep -vE "^#|^$" $R/bwd_causal_gqa8_$k.txt | tail -1; done
echo "== all GPU tests"
timeout 120 $D/distattn_tests_gpu > $R/tests_all.txt 2>&1; echo "rc=$?"
grep -E "^\[  (FAILED|PASSED) |FAILED  \]|tests ran" $R/tests_all.txt | head -20
echo "== memcheck"
timeout 60 compute-sanitizer --tool memcheck $D/distattn_tests_gpu --gtest_filter='FlashBwdHopper.Bf16OddLengthsCausalBottomAligned:FlashBwdHopper.Bf16PaddedStridesLargeScale:FlashBwdHopper.Fp16CausalGqa' > $R/memcheck.txt 2>&1; echo "rc=$?"
grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED)" $R/memcheck.txt | head
cd $OUT && tar czf $1.tgz r && rm -rf r
