#!/bin/bash
# Session 11, call 13 (nvidia-h200-x2): the positional study's ring rows at the settled clock (WARMUP_MS=300 default):
# ring over 2 GPUs, none / rope / alibi, fwd and fwd+bwd, causal and not, 8K..128K, one round.
set -u
W=/tmp/s11c13; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsI.tar.xz -C $W || exit 1
export DISTATTN_GIT_COMMIT=19d073d
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
DISTATTN_BENCH=$W/stage/distattn_bench OPS=ring RING_LAUNCH="$PWD/launch/mpirun.sh -n 2" SIZES="8K 16K 32K 64K 128K" \
  CHECK=0 MAX_SECONDS=440 bash bench/run_positional_study.sh $L/ring_pos > $L/study_stdout.log 2>&1
echo "study rc=$?"
tail -40 $L/ring_pos/overhead.txt
tar czf $OUT/s11c13.tgz -C $W logs
