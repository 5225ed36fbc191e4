#!/usr/bin/env bash
# Device run 2 (helper alibi-bwd): tests of the split-form variant, memcheck on the cutoff tests, the timing
# program for the variant (bwd_timing) and the committed cutoff (bwd_timing_c), distattn_bench reps 2 and 3
# interleaved: none, alibi (variant), alibi (committed 0af1169 + guard, distattn_bench_c).
set -u
D=build-ab/dev
R=$OUT/r; mkdir -p $R
export DISTATTN_GIT_COMMIT=${DISTATTN_GIT_COMMIT:-working-tree}
pack() { tar czf $OUT/results.tgz -C $OUT r; }
left() { echo $(( 226 - SECONDS )); }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/device.txt
echo "=== tests"
timeout 100 $D/distattn_tests_gpu --gtest_filter='Flash*' > $R/tests.log 2>&1; echo "tests rc $? at ${SECONDS}s"
grep -E "^\[ *(FAILED|PASSED|SKIPPED) |Failure|tests ran" $R/tests.log | tail -20
echo "OK lines: $(grep -c '^\[       OK' $R/tests.log)"
pack
echo "=== memcheck: backward ALiBi cutoff tests"
timeout 50 compute-sanitizer --tool memcheck $D/distattn_tests_gpu --gtest_filter='FlashBwdAlibiCutoff.BitIdentical*' > $R/memcheck.log 2>&1
echo "memcheck rc $? at ${SECONDS}s"; tail -3 $R/memcheck.log
pack
echo "=== timing program: split-form variant"
timeout 60 $D/bwd_timing $R/bwd_timing_split.jsonl 1.0 > $R/bwd_timing_split.log 2>&1; echo "rc $? at ${SECONDS}s"
grep -E "^[0-9]" $R/bwd_timing_split.log; grep -c "identical YES, dV identical YES" $R/bwd_timing_split.log; grep "identical NO" $R/bwd_timing_split.log
echo "=== timing program: committed cutoff (0.6 iterations)"
timeout 45 $D/bwd_timing_c $R/bwd_timing_c.jsonl 0.6 > $R/bwd_timing_c.log 2>&1; echo "rc $? at ${SECONDS}s"
grep -E "^[0-9]" $R/bwd_timing_c.log | grep alibi
pack
echo "=== distattn_bench interleaved"
for rep in 2 3; do
  for pass in bwd fwdbwd; do
    for m in causal nc; do
      mf=""; [ $m = causal ] && mf="--causal"
      for a in none alibi alibic; do
        af=""; [ $a != none ] && af="--alibi"
        B=$D/distattn_bench; [ $a = alibic ] && B=$D/distattn_bench_c
        if [ $(left) -lt 10 ]; then echo "skip $pass $m $a rep $rep (time)"; continue; fi
        timeout $(left) $B -o dense -b 8K -e 32K -f 2 -H 32 -d 128 --dtype bf16 --pass $pass $mf $af \
          -n 8 -w 2 -c 0 -J $R/bench_${pass}_${m}_${a}_r$rep.json > $R/bench_${pass}_${m}_${a}_r$rep.log 2>&1
        echo "--- $pass $m $a rep $rep rc $? t=${SECONDS}s $(grep -E '^ +[0-9]+ ' $R/bench_${pass}_${m}_${a}_r$rep.log | awk '{printf "%s:%s ", $1, $7}')"
      done
    done
  done
  pack
done
rm -f $R/*.log.tmp; pack
