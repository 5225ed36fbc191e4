#!/bin/bash
# Session 9, call 2 (one H200): where the fused RoPE forward's remaining 4% at 8K causal goes. Probe builds
# (DISTATTN_ROPE_PROBE, not committed): 1 = the kRope kernel variant and the table launch only (nothing rotated),
# 2 = + every unit's readiness wait, 3 = helpers rotating everything with no waits (results wrong: timing only).
# Also the persistent grid (DISTATTN_HOPPER_GRID=132). Then the fused-RoPE tests again (qkv overlap check fixed).
set -u
ROOT=$(pwd)
W=/tmp/s9c2; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s9/binsB.tar.xz -C $W || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-400}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s9c2.tgz" -C $W logs'
S=$W/stage
STEP_SUMMARY='PASSED|FAILED' step tests_rope_fwd 150 $S/distattn_tests_gpu --gtest_filter='RopeFwdFused*'
for r in 1 2 3; do
  for mask in causal full; do
    for v in none fused p1 p2 p3 separate none_g132 fused_g132; do
      args="-o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 8K --pass fwd -n 40 -w 10 -c 0"
      [[ $mask == causal ]] && args+=" --causal"
      env="X=1"
      [[ $v != none* ]] && args+=" --rope"
      [[ $v == separate ]] && env="DISTATTN_ROPE_FWD=separate"
      [[ $v == p? ]] && env="DISTATTN_ROPE_PROBE=${v#p}"
      [[ $v == *_g132 ]] && env="DISTATTN_HOPPER_GRID=132"
      printf "%s %-6s %-10s " $r $mask $v | tee -a $L/probe.txt
      env $env $S/distattn_bench $args 2>&1 | grep -E "^ +[0-9]+ " | awk '{print $7}' | tee -a $L/probe.txt
    done
  done
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
