#!/bin/bash
# Session 11, call 12 (one H200): how much of the RoPE's +48 mJ per 8K causal call is moving q and k at all? Energy
# per call (blocks of 20000 calls, NVML energy counter) of the RoPE kernel alone (mode 2) and of a plain device copy
# of the same bytes (mode 3), two processes each, interleaved; one plain-forward process as the reference.
set -u
W=/tmp/s11c12; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsH.tar.xz -C $W || exit 1
P=$W/stage/distattn_probe_forward_spread
source bench/device_steps.sh
steps_begin $L 300
STEP_AFTER='tar czf $OUT/s11c12.tgz -C $W logs 2>/dev/null'
energy() {
  for r in 1 2; do
    echo "== rope-kernel r$r"; $P 8192 1 1 2 20000 0 2 500
    echo "== copy r$r"; $P 8192 1 1 2 20000 0 3 500
  done
  echo "== plain r1"; $P 8192 1 1 2 2000 0 0 500
}
export P L; export -f energy
STEP_SUMMARY='^== |^ +[0-9]+ +0 |summary' step energy 240 bash -c energy
