#!/bin/bash
# Session 10, call 9 (one H200): the positional study with ROUNDS=3 (every variant three times, interleaved; the
# table takes the median), dense, 2K..128K, fwd and fwd+bwd, causal and not; main at 7887e40 (binary of f4fa5c2).
set -u
W=/tmp/s10c9
rm -rf $W && mkdir -p $W
tar xJf build-s10/binsG.tar.xz -C $W || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $W/gpu.txt
DISTATTN_GIT_COMMIT=7887e40 DISTATTN_BENCH=$W/stage/distattn_bench ROUNDS=3 MAX_SECONDS=${MAX_SECONDS:-520} \
  bash bench/run_positional_study.sh $W/positional > $W/positional_stdout.log 2>&1
echo "study rc=$?"
cat $W/positional/overhead.txt
mkdir -p "$OUT" && tar czf "$OUT/s10c9.tgz" -C $W positional positional_stdout.log gpu.txt
