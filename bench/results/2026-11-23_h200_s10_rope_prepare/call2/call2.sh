#!/bin/bash
# Session 10, call 2 (one H200): the fused RoPE's table, counters and first-wave rotation in one launch
# (rope_prepare), the forward as its programmatic dependent. Tests; RoPE forward A/B at 8K/16K causal and non-causal
# (none / fused / separate with this build, fused with call 1's build = "oldfused"), three rounds; the 8K non-causal
# plain forward with one (b, h) pair per L2 section (what the fused launch uses); ncu kernel durations.
set -u
ROOT=$(pwd)
W=/tmp/s10c2; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s10/binsB.tar.xz -C $W && tar xJf build-s10/binsA.tar.xz -C $W/old stage/distattn_bench || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-500}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s10c2.tgz" -C $W logs'
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED|o vs fp64' step tests_rope_fwd 200 $S/distattn_tests_gpu --gtest_filter='RopeFwdFused*:FlashFwdHopper*:RopeGpu*'
step check_rope 40 $S/distattn_bench -o dense --rope -b 1K -e 4K -B 2 -H 8 -d 128 --causal --pass fwd -n 2 -w 1 -c 1
step check_rope_b3 40 $S/distattn_bench -o dense --rope -b 2K -e 2K -B 3 -H 8 -d 128 --pass fwd -n 2 -w 1 -c 1
for r in 1 2 3; do
  for mask in causal full; do
    for v in none fused separate oldfused l2one; do
      X=$S/distattn_bench; [[ $v == oldfused ]] && X=$W/old/stage/distattn_bench
      args="-o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 16K --pass fwd -n 30 -w 10 -c 0"
      [[ $mask == causal ]] && args+=" --causal"
      env=""
      [[ $v == fused || $v == separate || $v == oldfused ]] && args+=" --rope"
      [[ $v == separate ]] && env="DISTATTN_ROPE_FWD=separate"
      [[ $v == l2one ]] && env="DISTATTN_HOPPER_L2_MB=1"
      printf "%s %-6s %-8s " $r $mask $v | tee -a $L/rope_ab.txt
      env $env $X $args 2>&1 | grep -E "^ +[0-9]+ " | awk '{printf "%s:%s ", $1, $0} END {print ""}' | tee -a $L/rope_ab.txt
    done
  done
done
for v in fused none; do
  for mask in causal full; do
    args="-o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 8K --pass fwd -n 3 -w 1 -c 0"
    [[ $mask == causal ]] && args+=" --causal"
    [[ $v == fused ]] && args+=" --rope"
    step ncu_${v}_$mask 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv $S/distattn_bench $args
  done
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
