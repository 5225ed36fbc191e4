#!/bin/bash
# Session 10, call 1 (one GPU): branch rope-fused-last-producer rebased on 6eb5a8f (the last producer keeps its
# helpers claiming; block lists back on the fused RoPE path). Tests RopeFwdFused* + FlashFwdHopper*, a checked
# block-sparse RoPE bench run, the 8K/16K RoPE forward A/B (none / fused / separate, 3 rounds), and an ncu breakdown
# of the fused path's kernels at 8K causal (rope_prepare, the pre-rotation, the forward) against the plain forward.
set -u
ROOT=$(pwd)
W=/tmp/s10c1; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s10/binsA.tar.xz -C $W || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-480}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s10c1.tgz" -C $W logs'
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED|o vs fp64' step tests_rope_fwd 200 $S/distattn_tests_gpu --gtest_filter='RopeFwdFused*:FlashFwdHopper*:RopeBwd*:RopeGpu*'
step check_rope 40 $S/distattn_bench -o dense --rope -b 1K -e 4K -B 2 -H 8 -d 128 --causal --pass fwd -n 2 -w 1 -c 1
for r in 1 2 3; do
  for mask in causal full; do
    for v in none fused separate; do
      args="-o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 16K --pass fwd -n 30 -w 10 -c 0"
      [[ $mask == causal ]] && args+=" --causal"
      env=""
      [[ $v != none ]] && args+=" --rope"
      [[ $v == separate ]] && env="DISTATTN_ROPE_FWD=separate"
      printf "%s %-6s %-8s " $r $mask $v | tee -a $L/rope_ab.txt
      env $env $S/distattn_bench $args 2>&1 | grep -E "^ +[0-9]+ " | awk '{printf "%s:%s ", $1, $0} END {print ""}' | tee -a $L/rope_ab.txt
    done
  done
done
# Kernel durations of one fused 8K causal forward and one plain one (ncu serialises kernels: no overlap here).
for v in fused none; do
  args="-o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 8K --pass fwd -n 3 -w 1 -c 0 --causal"
  [[ $v == fused ]] && args+=" --rope"
  step ncu_$v 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv $S/distattn_bench $args
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
