#!/bin/bash
# Session 12, call 4 (one H200): two knobs of the fused RoPE forward at the settled clock, causal, B 1, H 32, D 128.
# (1) DISTATTN_ROPE_PRE_EXTRA=N (diagnostic build, ../rope_diag.patch): the set-up launch rotates N kv groups more than
# the first wave needs, so later units wait less for the helpers. (2) DISTATTN_HOPPER_PERSISTENT_M=128: the 16K call on
# the persistent grid (one CTA per SM; by default 16K runs one CTA per unit), for the plain and the fused forward.
set -u
W=/tmp/s12c4; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s12/binsC.tar.xz -C $W || exit 1
P=$W/stage/distattn_probe_forward_spread
source bench/device_steps.sh
steps_begin $L 330
STEP_AFTER='tar czf $OUT/s12c4.tgz -C $W logs 2>/dev/null'
knobs() {
  for r in 1 2; do
    echo "== S16384 plain r$r"; $P 16384 1 1 2 1000 0 0 500
    echo "== S16384 plain-pers r$r"; DISTATTN_HOPPER_PERSISTENT_M=128 $P 16384 1 1 2 1000 0 0 500
    echo "== S16384 fused r$r"; $P 16384 1 1 2 1000 0 1 500
    echo "== S16384 fused-pers r$r"; DISTATTN_HOPPER_PERSISTENT_M=128 $P 16384 1 1 2 1000 0 1 500
    echo "== S16384 fused-pre4 r$r"; DISTATTN_ROPE_PRE_EXTRA=4 $P 16384 1 1 2 1000 0 1 500
    echo "== S16384 fused-pre16 r$r"; DISTATTN_ROPE_PRE_EXTRA=16 $P 16384 1 1 2 1000 0 1 500
    echo "== S8192 plain r$r"; $P 8192 1 1 2 3000 0 0 500
    echo "== S8192 fused r$r"; $P 8192 1 1 2 3000 0 1 500
    echo "== S8192 fused-pre4 r$r"; DISTATTN_ROPE_PRE_EXTRA=4 $P 8192 1 1 2 3000 0 1 500
    echo "== S8192 fused-pre16 r$r"; DISTATTN_ROPE_PRE_EXTRA=16 $P 8192 1 1 2 3000 0 1 500
  done
}
export P L; export -f knobs
STEP_SUMMARY='^== |summary' step knobs 320 bash -c knobs
