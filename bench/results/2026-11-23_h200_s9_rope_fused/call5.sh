#!/bin/bash
# Session 9, call 5 (one H200): the fused RoPE helpers' inner loop, scalar (32-bit words, HEAD 6ee5ead) against
# vectorised (16-byte chunks), with none and the separate RoPE, 8K and 16K causal fwd, bf16 B 1 H 32 D 128, four
# interleaved rounds (default grid: persistent at 8K since 6ee5ead).
set -u
ROOT=$(pwd)
W=/tmp/s9c5; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s9/binsD.tar.xz -C $W stage/distattn_bench && tar xJf build-s9/binsE_vec.tar.xz -C $W || exit 1
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | tee $L/gpu.txt
for r in 1 2 3 4; do
  for size in 8K 16K; do
    n=60; [[ $size == 16K ]] && n=25
    for v in none scalar vec separate; do
      X=$W/stage/distattn_bench; e="X=1"; a="--rope"
      [[ $v == none ]] && a=""
      [[ $v == vec ]] && X=$W/vec/distattn_bench
      [[ $v == separate ]] && e="DISTATTN_ROPE_FWD=separate"
      printf "%s %-4s %-8s " $r $size $v | tee -a $L/ab.txt
      env $e $X -o dense -B 1 -H 32 -d 128 --dtype bf16 -b $size -e $size --pass fwd -n $n -w 10 -c 0 --causal $a 2>&1 | grep -E "^ +[0-9]+ " | awk '{print $7, $8}' | tee -a $L/ab.txt
    done
  done
done
$W/vec/distattn_bench -o dense --rope -b 1K -e 4K -B 2 -H 8 -d 128 --causal --pass fwd -n 2 -w 1 -c 1 2>&1 | tail -3 | tee $L/vec_check.txt
mkdir -p "$OUT" && tar czf "$OUT/s9c5.tgz" -C $W logs
