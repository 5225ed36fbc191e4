#!/usr/bin/env bash
# Device run (helper alibi-bwd): GPU tests, the ALiBi backward timing program, the pre-cutoff baseline probe,
# distattn_bench interleaved. Results in $OUT/r (packed into $OUT/results.tgz too). Arg 1: which part (1 or 2).
set -u
D=build-ab/dev
R=$OUT/r; mkdir -p $R
PART=${1:-1}
export DISTATTN_GIT_COMMIT=${DISTATTN_GIT_COMMIT:-working-tree}
pack() { tar czf $OUT/results.tgz -C $OUT r; }
left() { echo $(( ${BUDGET:-228} - SECONDS )); }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/device.txt
if [ $PART = 1 ]; then
  echo "=== tests"
  timeout 100 $D/distattn_tests_gpu --gtest_filter='Flash*' > $R/tests.log 2>&1; echo "tests rc $? at ${SECONDS}s"
  grep -E "^\[ *(FAILED|PASSED|SKIPPED) |Failure|tests ran|pairs judged" $R/tests.log | tail -40
  echo "OK lines: $(grep -c '^\[       OK' $R/tests.log)"
  pack
  echo "=== baseline probe (pre-cutoff sources, no ALiBi)"
  timeout 40 $D/bwd_base_none > $R/bwd_base_none.log 2>&1; echo "rc $? at ${SECONDS}s"; cat $R/bwd_base_none.log
  echo "=== timing program"
  timeout 80 $D/bwd_timing $R/bwd_timing.jsonl 1.0 > $R/bwd_timing.log 2>&1; echo "rc $? at ${SECONDS}s"
  cat $R/bwd_timing.log
  pack
  REPS="1"
else
  REPS="2 3"
fi
echo "=== distattn_bench interleaved: per rep, per pass: causal none, causal alibi, nc none, nc alibi"
for rep in $REPS; do
  for pass in bwd fwdbwd; do
    for m in causal nc; do
      mf=""; [ $m = causal ] && mf="--causal"
      for a in none alibi; do
        af=""; [ $a = alibi ] && af="--alibi"
        if [ $(left) -lt 12 ]; then echo "skip $pass $m $a rep $rep (time)"; continue; fi
        timeout $(left) $D/distattn_bench -o dense -b 8K -e 32K -f 2 -H 32 -d 128 --dtype bf16 --pass $pass $mf $af \
          -n 8 -w 2 -c 0 -J $R/bench_${pass}_${m}_${a}_r$rep.json > $R/bench_${pass}_${m}_${a}_r$rep.log 2>&1
        echo "--- $pass $m $a rep $rep rc $? t=${SECONDS}s $(grep -E '^ +[0-9]+ ' $R/bench_${pass}_${m}_${a}_r$rep.log | awk '{printf "%s:%s ", $1, $7}')"
      done
    done
  done
  pack
done
pack
