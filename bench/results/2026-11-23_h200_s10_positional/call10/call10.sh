#!/bin/bash
# Session 10, call 10 (one H200): where the per-process spread of forward timings comes from. SM clock and power
# sampled every 20 ms beside 12 processes of the plain 8K non-causal forward and 8 of the 16K causal one (the same
# command each time), with each process's start / end time, so that each process's median can be set beside the
# clocks it ran at. Then one long process (-n 400) of the 8K non-causal forward.
set -u
W=/tmp/s10c10; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s10/binsG.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 20 > $L/clocks.csv 2>&1 &
SMI=$!
sleep 1
run() {
  local tag=$1; shift
  local t0 t1 line
  t0=$(date +%s.%N)
  line=$($B -o dense -H 32 -d 128 --dtype bf16 --pass fwd -c 0 "$@" 2>&1 | grep -E "^ +[0-9]+ " | tail -1)
  t1=$(date +%s.%N)
  printf "%s %s %s %s\n" "$tag" "$t0" "$t1" "$line" | tee -a $L/runs.txt
}
for i in $(seq 1 12); do run nc8k_$i -B 1 -b 8K -e 8K -n 40 -w 10; done
for i in $(seq 1 8); do run c16k_$i -B 1 -b 16K -e 16K -n 20 -w 3 --causal; done
run nc8k_long -B 1 -b 8K -e 8K -n 400 -w 10
kill $SMI
mkdir -p "$OUT" && tar czf "$OUT/s10c10.tgz" -C $W logs
