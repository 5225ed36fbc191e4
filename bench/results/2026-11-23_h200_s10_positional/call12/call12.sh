#!/bin/bash
# Session 10, call 12 (one H200): is the plain forward near a memory-side limit, and what differs between a fast and a
# slow process? Six processes of the 8K non-causal forward, each timed (-n 40), then each of six more profiled by ncu
# (SpeedOfLight + MemoryWorkloadAnalysis) on its 11th forward launch.
set -u
W=/tmp/s10c12; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s10/binsH.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
args="-o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0 -b 8K -e 8K"
for i in 1 2 3 4 5 6; do
  printf "time %s " $i | tee -a $L/times.txt
  $B $args -n 40 -w 10 2>&1 | grep -E "^ +[0-9]+ " | tee -a $L/times.txt
done
for i in 1 2 3 4 5 6; do
  ncu --clock-control none -k regex:flash_fwd_hopper --launch-skip 10 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section LaunchStats $B $args -n 12 -w 0 > $L/ncu_$i.txt 2>&1
  printf "ncu %s " $i | tee -a $L/times.txt
  grep -E "Duration|L2 Cache Throughput|DRAM Throughput|Compute \(SM\) Throughput|L1/TEX Hit|L2 Hit Rate|Mem Busy|Max Bandwidth" $L/ncu_$i.txt | tr -s ' ' | tr '\n' ';' | tee -a $L/times.txt
  echo | tee -a $L/times.txt
done
mkdir -p "$OUT" && tar czf "$OUT/s10c12.tgz" -C $W logs
