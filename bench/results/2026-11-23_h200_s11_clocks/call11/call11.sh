#!/bin/bash
# Session 11, call 11 (one H200): energy per call of the RoPE paths at the settled clock. The probe times blocks of
# 3000 calls (~3 s) of the 8K causal forward: plain, fused (auto), separate, prerotated, two processes each
# (interleaved), with NVML's energy counter before / after each block and the power sampled every ms.
set -u
W=/tmp/s11c11; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsH.tar.xz -C $W || exit 1
P=$W/stage/distattn_probe_forward_spread
source bench/device_steps.sh
steps_begin $L 300
STEP_AFTER='tar czf $OUT/s11c11.tgz -C $W logs 2>/dev/null'
energy() {
  for r in 1 2; do
    echo "== plain r$r"; $P 8192 1 1 2 3000 0 0 500
    for m in auto separate prerotated; do echo "== rope-$m r$r"; DISTATTN_ROPE_FWD=$m $P 8192 1 1 2 3000 0 1 500; done
  done
}
export P L; export -f energy
STEP_SUMMARY='^== |^ +[0-9]+ +0 |summary' step energy 240 bash -c energy
