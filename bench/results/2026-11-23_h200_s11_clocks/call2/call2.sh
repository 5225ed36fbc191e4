#!/bin/bash
# Session 11, call 2 (one H200): (a) does --warmup-ms 300 remove the two speeds of forward-only processes? (b) the fused
# RoPE under ncu: plain / fused / prerotated kernels and rope_prepare; (c) RoPE A/B at the settled clock (--warmup-ms
# 300), three rounds; (d) the positional study's forward rows with WARMUP_MS=300, ROUNDS=3.
set -u
W=/tmp/s11c2; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsB.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
export DISTATTN_GIT_COMMIT=4b23e35+s11b
source bench/device_steps.sh
steps_begin $L 570
STEP_AFTER='tar czf $OUT/s11c2.tgz -C $W logs 2>/dev/null'
base="-o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0 -n 40 -w 10"
warmcheck() {
  for i in 1 2 3 4 5 6; do
    echo "plain  $($B $base -b 8K -e 8K | grep -E '^ +[0-9]+ ')"
    echo "w300   $($B $base -b 8K -e 8K --warmup-ms 300 | grep -E '^ +[0-9]+ ')"
  done
}
ncuab() {
  for m in none auto prerotated separate; do
    extra="--rope"; [ $m = none ] && extra=""
    DISTATTN_ROPE_FWD=${m/none/auto} ncu --clock-control none -k regex:"flash_fwd_hopper|rope_prepare|rope_kernel|rope_apply" \
      --launch-skip 20 --launch-count 4 --section SpeedOfLight \
      $B -o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0 -b 8K -e 8K --causal -n 30 -w 0 $extra > $L/ncu_$m.txt 2>&1
    echo "ncu $m: $(grep -E '^  [a-zA-Z_].*\(|Duration' $L/ncu_$m.txt | sed 's/(.*//' | tr -s ' ' | tr '\n' ';')"
  done
}
ropeab() {
  for shape in "-b 8K -e 8K --causal" "-b 16K -e 16K --causal" "-b 8K -e 8K"; do
    for r in 1 2 3; do
      echo "none       $($B $base $shape --warmup-ms 300 | grep -E '^ +[0-9]+ ')"
      for m in auto separate prerotated; do
        echo "$m $(DISTATTN_ROPE_FWD=$m $B $base $shape --warmup-ms 300 --rope | grep -E '^ +[0-9]+ ')"
      done
    done
  done
}
study() {
  DISTATTN_BENCH=$B SIZES="8K 16K 32K 64K 128K" PASSES=fwd ROUNDS=3 WARMUP_MS=300 CHECK=0 MAX_SECONDS=250 \
    bash bench/run_positional_study.sh $L/study_fwd
}
export B L base; export -f warmcheck ncuab ropeab study
STEP_SUMMARY='^(plain|w300)' step warmcheck 90 bash -c warmcheck
STEP_SUMMARY='^ncu' step ncuab 120 bash -c ncuab
STEP_SUMMARY='^(none|auto|prerot|separ)' step ropeab 150 bash -c ropeab
STEP_SUMMARY='overhead at|worst' step study 280 bash -c study
