#!/bin/bash
# Session 9, call 1 (one H200): the fused RoPE forward (rotation inside the Hopper forward's launch) and the dilated
# backward's overwrite-first. Tests (fused RoPE bit-identity, Hopper forward, dilated, mha), a checked B = 3 dilated
# run, the RoPE forward overhead at 8K / 16K (none / rope fused / rope separate, interleaved, two rounds), LongNet 64K
# bwd and fwd+bwd against 42a3b25's binary.
set -u
ROOT=$(pwd)
W=/tmp/s9c1; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s9/binsA.tar.xz -C $W && tar xJf build-s8/binsF.tar.xz -C $W/old stage/distattn_bench || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-500}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s9c1.tgz" -C $W logs'
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED|o vs fp64' step tests_rope_fwd 150 $S/distattn_tests_gpu --gtest_filter='RopeFwdFused*'
STEP_SUMMARY='PASSED|FAILED' step tests_fwd_dilated 200 $S/distattn_tests_gpu --gtest_filter='FlashFwdHopper*:*Dilated*:*Mha*:RopeBwd*:RopeGpu*'
step check_b3 40 $S/distattn_bench -o dilated --dilated-segments 1K,2K --dilated-rates 1,2 -b 4K -e 4K -B 3 -H 8 -d 128 --causal --pass fwdbwd -n 2 -w 1 -c 1
step check_rope 40 $S/distattn_bench -o dense --rope -b 1K -e 4K -B 2 -H 8 -d 128 --causal --pass fwd -n 2 -w 1 -c 1
# RoPE forward overhead: fused (auto) vs separate vs none, bf16 H 32 D 128 B 1.
for r in 1 2; do
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
for r in 1 2; do
  for v in new old; do
    X=$S; [[ $v == old ]] && X=$W/old/stage
    for p in bwd fwdbwd; do
      printf "%s %s %-7s " $r $v $p | tee -a $L/longnet_ab.txt
      $X/distattn_bench -o dilated -H 32 -d 128 --dtype bf16 -c 0 -n 5 -w 2 -b 64K -e 64K --causal --pass $p 2>&1 | grep "^ *65536" | tee -a $L/longnet_ab.txt
    done
  done
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
