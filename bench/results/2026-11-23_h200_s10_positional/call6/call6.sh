#!/bin/bash
# Session 10, call 6 (one H200): the positional study (none / RoPE / ALiBi; dense; fwd and fwd+bwd; causal and not;
# 2K..128K) with main at e022fb3 (code of 8266dcd: fused RoPE forward with its one-launch set-up, Hopper ALiBi cutoff,
# fused RoPE backward, persistent forward up to 8K).
set -u
ROOT=$(pwd)
W=/tmp/s10c6
rm -rf $W && mkdir -p $W
tar xJf build-s10/binsF.tar.xz -C $W || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $W/gpu.txt
DISTATTN_GIT_COMMIT=e022fb3 DISTATTN_BENCH=$W/stage/distattn_bench MAX_SECONDS=${MAX_SECONDS:-470} \
  bash bench/run_positional_study.sh $W/positional > $W/positional_stdout.log 2>&1
echo "study rc=$?"
tail -80 $W/positional/overhead.txt
mkdir -p "$OUT" && tar czf "$OUT/s10c6.tgz" -C $W positional positional_stdout.log gpu.txt
