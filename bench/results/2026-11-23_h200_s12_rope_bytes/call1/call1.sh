#!/bin/bash
# Session 12, call 1 (one H200): where the fused RoPE's +48 mJ per 8K causal forward go. A diagnostic build (patch
# ../rope_diag.patch, not on main) whose helpers skip parts of their work (DISTATTN_ROPE_DIAG bits: 1 no table load,
# 2 k only (no q heads), 4 no rotation arithmetic, 8 no store back); energy per call in blocks of 3000 calls.
set -u
W=/tmp/s12c1; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s12/binsA.tar.xz -C $W || exit 1
P=$W/stage/distattn_probe_forward_spread
source bench/device_steps.sh
steps_begin $L 300
STEP_AFTER='tar czf $OUT/s12c1.tgz -C $W logs 2>/dev/null'
energy() {
  nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv
  for r in 1 2; do
    echo "== plain r$r"; $P 8192 1 1 2 3000 0 0 500
    for d in 0 1 2 4 8 5 13 15; do echo "== diag-$d r$r"; DISTATTN_ROPE_DIAG=$d $P 8192 1 1 2 3000 0 1 500; done
  done
}
export P L; export -f energy
STEP_SUMMARY='^== |^ +[0-9]+ +0 |summary|H200' step energy 280 bash -c energy
