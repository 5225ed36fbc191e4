#!/bin/bash
# Session 8, call 8 (nvidia-h200): where LongNet's backward runs (diagnostic). Each pattern alone and the whole
# configuration, causal bwd at 64K, with the backward kernel auto (Hopper where supported) and forced mma.sync;
# plus dense causal bwd at 2K/4K batch-folded shapes for reference.
set -u
ROOT=$(pwd)
W=/tmp/s8c8; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s8/bins6.tar.xz -C $W stage/distattn_bench || { echo "untar failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-150}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c8.tgz" -C $W logs'
S=$W/stage
B="-H 32 -d 128 --dtype bf16 -c 0 -n 5 -w 2 -b 64K -e 64K --causal --pass bwd"
for k in auto mma; do
  for pat in "2K:1" "4K:2" "8K:4" "16K:6" "32K:12" "2K,4K,8K,16K,32K:1,2,4,6,12"; do
    seg=${pat%%:*}; rate=${pat##*:}; n=$(echo $seg | tr ',' '-')
    step ${k}_$n 30 env DISTATTN_BACKWARD_KERNEL=$k $S/distattn_bench -o dilated --dilated-segments $seg --dilated-rates $rate $B -J $L/runs/${k}_$n.json
  done
  step ${k}_dense2k 30 env DISTATTN_BACKWARD_KERNEL=$k $S/distattn_bench -o dense -b 2K -e 4K -f 2 -B 32 -H 32 -d 128 --causal --pass bwd -c 0 -n 10 -w 3
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
