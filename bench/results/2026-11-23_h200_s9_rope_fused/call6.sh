#!/bin/bash
# Session 9, call 6 (one H200): probe build of the vectorised fused-RoPE helpers that counts the producers' waits for
# kv groups (units that spun, and their total wait in cycles) every 10th call; 8K and 16K causal, persistent (default
# at 8K) and one CTA per unit (DISTATTN_HOPPER_PERSISTENT_M=32 at 8K).
set -u
W=/tmp/s9c6; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s9/binsF_probe.tar.xz -C $W || exit 1
X=$W/probe/distattn_bench
for r in 1 2; do
  for size in 8K 16K; do
    for g in default units; do
      e="DISTATTN_ROPE_PROBE_PRINT=1"; [[ $g == units ]] && e="$e DISTATTN_HOPPER_PERSISTENT_M=32"
      [[ $g == units && $size == 16K ]] && continue
      echo "== $r $size $g" | tee -a $L/probe.txt
      env $e $X -o dense -B 1 -H 32 -d 128 --dtype bf16 -b $size -e $size --pass fwd -n 40 -w 10 -c 0 --causal --rope 2>&1 | grep -E "rope probe|^ +[0-9]+ " | sort | uniq -c | sort -rn | head -8 | tee -a $L/probe.txt
    done
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s9c6.tgz" -C $W logs
