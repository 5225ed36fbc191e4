#!/bin/bash
# Session 11, call 4 (one H200): why does the probe see no RoPE cost where distattn_bench sees ~6%? The same 8K causal
# forward through both tools, interleaved, and the probe's kernels listed by ncu.
set -u
W=/tmp/s11c4; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsC.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench; P=$W/stage/distattn_probe_forward_spread
export DISTATTN_GIT_COMMIT=4b23e35+s11c
source bench/device_steps.sh
steps_begin $L 400
STEP_AFTER='tar czf $OUT/s11c4.tgz -C $W logs 2>/dev/null'
nvidia-smi -q -d POWER > $L/power_q.txt 2>&1
both() {
  args="-o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0 -n 40 -w 10 -b 8K -e 8K --causal --warmup-ms 300"
  for r in 1 2; do
    echo "bench none     $($B $args | grep -E '^ +[0-9]+ ')"
    echo "bench separate $(DISTATTN_ROPE_FWD=separate $B $args --rope | grep -E '^ +[0-9]+ ')"
    echo "probe plain    $($P 8192 1 1 2 40 0 0 300 | grep -E '^ +[0-9]+ +0 ' | tr -s ' ' | tr '\n' '|')"
    echo "probe separate $(DISTATTN_ROPE_FWD=separate $P 8192 1 1 2 40 0 1 300 | grep -E '^ +[0-9]+ +0 ' | tr -s ' ' | tr '\n' '|')"
    echo "probe auto     $(DISTATTN_ROPE_FWD=auto $P 8192 1 1 2 40 0 1 300 | grep -E '^ +[0-9]+ +0 ' | tr -s ' ' | tr '\n' '|')"
  done
}
kernels() {
  DISTATTN_ROPE_FWD=separate ncu --section LaunchStats --launch-count 8 $P 8192 1 1 1 5 0 1 0 > $L/ncu_probe_sep.txt 2>&1
  grep -E "^  [a-zA-Z_].*\(" $L/ncu_probe_sep.txt | sed 's/(.*//' | sort | uniq -c
  ncu --section LaunchStats --launch-count 30 $B -o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0 -n 5 -w 1 -b 8K -e 8K --causal --rope > $L/ncu_bench_auto.txt 2>&1
  grep -E "^  [a-zA-Z_].*\(" $L/ncu_bench_auto.txt | sed 's/(.*//' | sort | uniq -c
}
export B P L; export -f both kernels
STEP_SUMMARY='^(bench|probe)' step both 200 bash -c both
STEP_SUMMARY='[0-9] ' step kernels 150 bash -c kernels
