#!/bin/bash
# Session 10, call 11 (one H200): do the two speeds of forward-only processes follow the buffers' addresses?
# DISTATTN_BENCH_PAD_MB holds N MiB before the run's buffers; four processes per pad (0, 1, 64, 1024, 4096), the plain
# 8K non-causal forward, interleaved over the pads; then the same for 16K causal.
set -u
W=/tmp/s10c11; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s10/binsH.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
for cfg in "-b 8K -e 8K -n 40 -w 10" "-b 16K -e 16K -n 20 -w 3 --causal"; do
  for r in 1 2 3 4; do
    for pad in 0 1 64 1024 4096; do
      printf "%-40s r%s pad %5s " "$cfg" $r $pad | tee -a $L/pad.txt
      DISTATTN_BENCH_PAD_MB=$pad $B -o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0 $cfg 2>&1 |
        grep -E "^ +[0-9]+ " | tail -1 | tee -a $L/pad.txt
    done
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s10c11.tgz" -C $W logs
