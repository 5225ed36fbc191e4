#!/bin/bash
# Session 9, call 7 (one H200): what the fused-RoPE helpers cost beside the attention (probe build, results WRONG in
# modes 1-3; timing only): 1 = load and store each tile unchanged (no rotation math), 2 = load and rotate, no store,
# 3 = no table load (rotate with whatever the table holds, store), 4 = everything rotated by the RoPE kernel before the
# launch (helpers idle). 8K causal fwd bf16 B 1 H 32 D 128, default grid (persistent), three rounds.
set -u
W=/tmp/s9c7; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s9/binsG_probe.tar.xz -C $W || exit 1
X=$W/probe/distattn_bench
for r in 1 2 3; do
  for v in none fused p1 p2 p3 p4 separate; do
    e="X=1"; a="--rope"
    [[ $v == none ]] && a=""
    [[ $v == p? ]] && e="DISTATTN_ROPE_PROBE=${v#p}"
    [[ $v == separate ]] && e="DISTATTN_ROPE_FWD=separate"
    printf "%s %-8s " $r $v | tee -a $L/probe.txt
    env $e $X -o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 8K --pass fwd -n 60 -w 10 -c 0 --causal $a 2>&1 | grep -E "^ +[0-9]+ " | awk '{print $7}' | tee -a $L/probe.txt
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s9c7.tgz" -C $W logs
