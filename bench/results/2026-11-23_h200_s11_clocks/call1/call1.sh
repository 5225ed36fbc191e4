#!/bin/bash
# Session 11, call 1 (one H200): (a) the forward's per-process speed split, inside one process: 4 buffer sets x 4 rounds
# (the last after a 500 ms idle gap), NVML sampled every ms; (b) the fused RoPE's 8K causal overhead taken apart:
# none / auto (fused) / prerotated (fused kernel, nothing to rotate) / separate, interleaved, and under ncu.
set -u
W=/tmp/s11c1; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsA.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench; P=$W/stage/distattn_probe_forward_spread
export DISTATTN_GIT_COMMIT=4b23e35+s11a
source bench/device_steps.sh
steps_begin $L 560
STEP_AFTER='tar czf $OUT/s11c1.tgz -C $W logs 2>/dev/null'
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm,power.limit,temperature.gpu --format=csv > $L/gpu.txt 2>&1
spread() {
  for i in 1 2 3 4 5 6; do echo "== process $i"; $P 8192 0 4 3 30 500; done
  for i in 1 2 3 4; do echo "== process 16K causal $i"; $P 16384 1 3 3 20 500; done
}
args="-o dense -B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0 -b 8K -e 8K --causal -n 40 -w 10"
ropeab() {
  for r in 1 2 3; do
    echo "none    $($B $args | grep -E '^ +[0-9]+ ')"
    for m in auto prerotated separate; do
      echo "$m $(DISTATTN_ROPE_FWD=$m $B $args --rope | grep -E '^ +[0-9]+ ')"
    done
  done
}
ncuab() {
  for m in none auto prerotated; do
    extra="--rope"; [ $m = none ] && extra=""
    DISTATTN_ROPE_FWD=${m/none/auto} ncu --clock-control none -k regex:"flash_fwd_hopper|rope_prepare" --launch-skip 20 --launch-count 4 \
      --section SpeedOfLight $B $args -n 30 -w 0 $extra > $L/ncu_$m.txt 2>&1
    echo "ncu $m: $(grep -E '^  [a-z_].*\(|Duration' $L/ncu_$m.txt | tr -s ' ' | tr '\n' ';')"
  done
}
export B P L args; export -f spread ropeab ncuab
STEP_SUMMARY='summary' step spread 200 bash -c spread
STEP_SUMMARY='^(none|auto|prerot|separ)' step ropeab 150 bash -c ropeab
STEP_SUMMARY='^ncu' step ncuab 150 bash -c ncuab
