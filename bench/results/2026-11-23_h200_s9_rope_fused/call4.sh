#!/bin/bash
# Session 9, call 4 (one H200): (a) the grid rule around 8K causal: default / persistent forced / 132-CTA snake at
# 4K, 6K, 8K, 12K causal (B 1 H 32), 8K causal B 2 H 16 and GQA 32/8; (b) RoPE at 8K causal, four interleaved rounds
# of {default, g132} x {none, fused, separate}. bf16 D 128 fwd.
set -u
ROOT=$(pwd)
W=/tmp/s9c4; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s9/binsC.tar.xz -C $W || exit 1
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader | tee $L/gpu.txt
envof() { case $1 in default) echo "X=1";; persist) echo "DISTATTN_HOPPER_PERSISTENT_M=100000";; g132) echo "DISTATTN_HOPPER_GRID=132";; esac; }
for r in 1 2; do
  for shape in "4K -B 1 -H 32" "6K -B 1 -H 32" "8K -B 1 -H 32" "12K -B 1 -H 32" "8K -B 2 -H 16" "8K -B 1 -H 32 --gqa 8"; do
    set -- $shape; size=$1; shift
    for g in default persist g132; do
      printf "%s %-4s %-22s %-8s " $r $size "$*" $g | tee -a $L/grid.txt
      env $(envof $g) $S/distattn_bench -o dense $* -d 128 --dtype bf16 -b $size -e $size --pass fwd -n 50 -w 10 -c 0 --causal 2>&1 | grep -E "^ +[0-9]+ " | awk '{print $7, $8}' | tee -a $L/grid.txt
    done
  done
done
for r in 1 2 3 4; do
  for g in default g132; do
    for v in none fused separate; do
      e="$(envof $g)"; a=""
      [[ $v != none ]] && a="--rope"
      [[ $v == separate ]] && e="$e DISTATTN_ROPE_FWD=separate"
      printf "%s 8K %-8s %-8s " $r $g $v | tee -a $L/rope.txt
      env $e $S/distattn_bench -o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 8K --pass fwd -n 50 -w 10 -c 0 --causal $a 2>&1 | grep -E "^ +[0-9]+ " | awk '{print $7, $8}' | tee -a $L/rope.txt
    done
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s9c4.tgz" -C $W logs
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader | tee -a $L/gpu.txt
