#!/bin/bash
# Session 10, call 3 (one H200): rope_prepare with 2 pairs per thread (4x the threads of call 2's build, for the
# sincosf). The whole GPU suite; memcheck over the fused RoPE tests; RoPE forward A/B at 8K / 16K causal (none / fused
# / separate / call 2's fused = "c2fused" / call 1's = "c1fused"), three rounds; ncu kernel durations of the fused path.
set -u
ROOT=$(pwd)
W=/tmp/s10c3; L=$W/logs
rm -rf $W && mkdir -p $L $W/c1 $W/c2
tar xJf build-s10/binsC.tar.xz -C $W && tar xJf build-s10/binsA.tar.xz -C $W/c1 stage/distattn_bench &&
  tar xJf build-s10/binsB.tar.xz -C $W/c2 stage/distattn_bench || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-520}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s10c3.tgz" -C $W logs'
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_gpu 200 $S/distattn_tests_gpu --gtest_brief=1
STEP_SUMMARY='ERROR SUMMARY|PASSED|FAILED' step memcheck_rope 200 compute-sanitizer --tool memcheck $S/distattn_tests_gpu --gtest_brief=1 --gtest_filter='RopeFwdFused*'
for r in 1 2 3; do
  for v in none fused separate c2fused c1fused; do
    X=$S/distattn_bench; [[ $v == c2fused ]] && X=$W/c2/stage/distattn_bench; [[ $v == c1fused ]] && X=$W/c1/stage/distattn_bench
    args="-o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 16K --pass fwd -n 30 -w 10 -c 0 --causal"
    env=""
    [[ $v != none ]] && args+=" --rope"
    [[ $v == separate ]] && env="DISTATTN_ROPE_FWD=separate"
    printf "%s %-8s " $r $v | tee -a $L/rope_ab.txt
    env $env $X $args 2>&1 | grep -E "^ +[0-9]+ " | awk '{printf "%s:%s ", $1, $0} END {print ""}' | tee -a $L/rope_ab.txt
  done
done
step ncu_fused 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv $S/distattn_bench -o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 8K --pass fwd -n 3 -w 1 -c 0 --causal --rope
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
