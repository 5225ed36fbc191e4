#!/bin/bash
# Session 9, call 3 (one H200): the Hopper forward's grid. Plain forward (and RoPE fused / separate at 8K) with the
# default rule (persistent up to 32 q tiles per head, one CTA per unit beyond), the persistent schedule forced
# (DISTATTN_HOPPER_PERSISTENT_M=100000: pair_units + L2 sections), and a 132-CTA snake without them
# (DISTATTN_HOPPER_GRID=132). bf16, B 1, H 32, D 128, fwd; two interleaved rounds.
set -u
ROOT=$(pwd)
W=/tmp/s9c3; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s9/binsC.tar.xz -C $W || exit 1
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader | tee $L/gpu.txt
n_of() { case $1 in 8K) echo 100;; 16K) echo 40;; 32K) echo 12;; 64K) echo 5;; esac; }
for r in 1 2; do
  for size in 8K 16K 32K 64K; do
    for mask in causal full; do
      for g in default persist g132; do
        env="X=1"
        [[ $g == persist ]] && env="DISTATTN_HOPPER_PERSISTENT_M=100000"
        [[ $g == g132 ]] && env="DISTATTN_HOPPER_GRID=132"
        args="-o dense -B 1 -H 32 -d 128 --dtype bf16 -b $size -e $size --pass fwd -n $(n_of $size) -w 5 -c 0"
        [[ $mask == causal ]] && args+=" --causal"
        printf "%s %-4s %-6s %-8s none  " $r $size $mask $g | tee -a $L/grid.txt
        env $env $S/distattn_bench $args 2>&1 | grep -E "^ +[0-9]+ " | awk '{print $7, $8}' | tee -a $L/grid.txt
        if [[ $size == 8K ]]; then
          for v in fused separate; do
            e2="$env"; [[ $v == separate ]] && e2="$env DISTATTN_ROPE_FWD=separate"
            printf "%s %-4s %-6s %-8s %-5s " $r $size $mask $g $v | tee -a $L/grid.txt
            env $e2 $S/distattn_bench $args --rope 2>&1 | grep -E "^ +[0-9]+ " | awk '{print $7, $8}' | tee -a $L/grid.txt
          done
        fi
      done
    done
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s9c3.tgz" -C $W logs
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader | tee -a $L/gpu.txt
