#!/bin/bash
# Session 10, call 13 (one H200): final check of main (the session's last code commit): the whole GPU suite, memcheck
# over the fused RoPE and RoPE tests, checked bench runs of the dense op with RoPE at 2K (separate path) and 8K (fused),
# and the 8K / 16K RoPE A/B once more (three rounds, none / auto / separate).
set -u
ROOT=$(pwd)
W=/tmp/s10c13; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s10/binsI.tar.xz -C $W || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-400}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s10c13.tgz" -C $W logs'
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_gpu 200 $S/distattn_tests_gpu --gtest_brief=1
STEP_SUMMARY='ERROR SUMMARY|PASSED|FAILED' step memcheck_rope 200 compute-sanitizer --tool memcheck $S/distattn_tests_gpu --gtest_brief=1 --gtest_filter='RopeFwdFused*:RopeGpu*'
step check_rope_2k 40 $S/distattn_bench -o dense --rope -b 2K -e 2K -B 2 -H 8 --causal --pass fwdbwd -n 2 -w 1 -c 1
step check_rope_8k 90 $S/distattn_bench -o dense --rope -b 8K -e 8K -B 1 -H 4 --causal --pass fwd -n 2 -w 1 -c 1 --check-max-seq 8K
for r in 1 2 3; do
  for v in none auto separate; do
    env=""; extra="--rope"; [[ $v == none ]] && extra=""; [[ $v == separate ]] && env="DISTATTN_ROPE_FWD=separate"
    printf "%s %-8s " $r $v | tee -a $L/rope_ab.txt
    env $env $S/distattn_bench -o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd --causal -n 30 -w 10 -c 0 -b 8K -e 16K $extra 2>&1 |
      grep -E "^ +[0-9]+ " | awk '{printf "%s ", $0} END {print ""}' | tee -a $L/rope_ab.txt
  done
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
