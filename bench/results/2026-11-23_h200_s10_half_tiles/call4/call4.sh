#!/bin/bash
# Session 10, call 4 (one H200): half-width tiles in the Hopper forward (a consumer warpgroup whose 64 q rows see
# nothing in a kv tile's second 64 rows runs that tile's S and / or P V at half width). The whole GPU suite (default:
# both products); the forward tests again with DISTATTN_HOPPER_HALF_TILES=pv; then A/B, three rounds interleaved:
# call 3's build ("old") against this one with DISTATTN_HOPPER_HALF_TILES = 0 / pv / 1, dense causal forward at 2K, 4K
# (B 8) and 8K, 16K (B 1), LongNet dilated causal forward at 16K, 64K.
set -u
ROOT=$(pwd)
W=/tmp/s10c4; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s10/binsD.tar.xz -C $W && tar xJf build-s10/binsC.tar.xz -C $W/old stage/distattn_bench || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-540}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s10c4.tgz" -C $W logs'
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_gpu 200 $S/distattn_tests_gpu --gtest_brief=1
DISTATTN_HOPPER_HALF_TILES=pv STEP_SUMMARY='PASSED|FAILED' step tests_fwd_pv 120 $S/distattn_tests_gpu --gtest_brief=1 --gtest_filter='FlashForward*:Dilated*:FinalAccumulate*:BlockSparse*:RopeFwd*'
step check_dense 60 $S/distattn_bench -o dense -b 1K -e 4K -f 2 -B 2 -H 8 --causal --pass fwd -n 2 -w 1 -c 1
step check_dilated 60 $S/distattn_bench -o dilated --dilated-segments 1K,2K --dilated-rates 1,2 -b 4K -e 4K -B 3 -H 8 --causal --pass fwd -n 2 -w 1 -c 1
for r in 1 2 3; do
  for v in old 0 pv 1; do
    X=$S/distattn_bench; [[ $v == old ]] && X=$W/old/stage/distattn_bench
    env=""; [[ $v != old ]] && env="DISTATTN_HOPPER_HALF_TILES=$v"
    for cfg in "-o dense -B 8 -b 2K -e 4K -f 2" "-o dense -B 1 -b 8K -e 16K -f 2" "-o dilated -B 1 -b 16K -e 64K -f 4"; do
      printf "%s %-4s %-34s " $r $v "$cfg" | tee -a $L/half_ab.txt
      env $env $X $cfg -H 32 -d 128 --dtype bf16 --causal --pass fwd -n 20 -w 5 -c 0 2>&1 | grep -E "^ +[0-9]+ " |
        awk '{printf "%s ", $0} END {print ""}' | tee -a $L/half_ab.txt
    done
  done
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
