#!/bin/bash
# Session 8, call 14 (nvidia-h200): each LongNet pattern alone, bwd at 64K: f032b17 (dQ through the scratch) vs
# 42a3b25 (dQ reduced straight into the packed fp32 dq; delta once), two rounds.
set -u
W=/tmp/s8c14; L=$W/logs
rm -rf $W && mkdir -p $L $W/old
tar xJf build-s8/binsF.tar.xz -C $W stage/distattn_bench && tar xJf build-s8/bins1.tar.xz -C $W/old stage/distattn_bench || exit 1
for r in 1 2; do
  for v in new old; do
    X=$W/stage; [[ $v == old ]] && X=$W/old/stage
    for pat in "2K:1" "8K:4" "32K:12"; do
      seg=${pat%%:*}; rate=${pat##*:}
      printf "%s %s %-7s " $r $v $pat
      $X/distattn_bench -o dilated --dilated-segments $seg --dilated-rates $rate -H 32 -d 128 --dtype bf16 -c 0 -n 5 -w 2 -b 64K -e 64K --causal --pass bwd 2>&1 | grep "^ *65536" | awk '{print $9, $10}'
    done
  done
done
