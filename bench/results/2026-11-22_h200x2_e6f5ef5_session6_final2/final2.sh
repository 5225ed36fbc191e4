#!/bin/bash
# Session 6, second final check (nvidia-h200-x2) of main after the clean-ups and branch dilated-margin: every gpu-mpi
# program at np 2 and the 1-GPU suite (GPU 1, background); then on GPU 0 alone dense / dilated 16K and 64K causal,
# three interleaved rounds, and non-causal once; then the ring on both GPUs: ALiBi against none at 8K / 32K and the
# fwd+bwd causal sweep 32K-128K.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=/tmp/s6g; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
B=$W/stage
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-500}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s6g.tgz" -C $W logs'
export DISTATTN_COMM_TIMEOUT_S=60 DISTATTN_GIT_COMMIT=${C:-unknown} NCCL_NVLS_ENABLE=0
MPI="mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE -x DISTATTN_COMM_TIMEOUT_S -x DISTATTN_GIT_COMMIT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader > $L/gpus.txt 2>&1; cat $L/gpus.txt
( CUDA_VISIBLE_DEVICES=1 timeout 240 $B/distattn_tests_gpu > $L/tests_gpu.log 2>&1; echo "rc=$?" >> $L/tests_gpu.log ) &
BG=$!
for t in ring_gpu ring_sparse_gpu ce_exchange_gpu mha_gpu dilated_dist_gpu nccl_comm; do
  step $t 120 $MPI $B/distattn_mpi_test_$t
done
wait $BG; echo "== tests_gpu (t=$(steps_elapsed)s)"; grep -E "^\[  PASSED|^\[  FAILED|FAILED  \]|rc=" $L/tests_gpu.log | tail -12
eval "$STEP_AFTER"
export CUDA_VISIBLE_DEVICES=0
for r in 1 2 3; do
  step dense_c_$r 30 $B/distattn_bench -o dense -b 16K -e 64K -f 4 --causal -c 0 -n 10 -w 3 -J $L/dense_causal_$r.json
  step dilated_c_$r 40 $B/distattn_bench -o dilated -b 16K -e 64K -f 4 --causal -c 0 -n 10 -w 3 -J $L/dilated_causal_$r.json
done
step dense_nc 30 $B/distattn_bench -o dense -b 16K -e 64K -f 4 -c 0 -n 10 -w 3 -J $L/dense_nc.json
step dilated_nc 40 $B/distattn_bench -o dilated -b 16K -e 64K -f 4 -c 0 -n 10 -w 3 -J $L/dilated_nc.json
step dilated_c_check 30 $B/distattn_bench -o dilated -b 4K -e 4K --causal -c 1 -n 2 -w 1
unset CUDA_VISIBLE_DEVICES
export DISTATTN_BENCH=$B/distattn_bench RING_LAUNCH="$ROOT/launch/mpirun.sh -n 2" OPS=ring MASKS=causal CHECK=0
step pos_ring 100 env SIZES="8K 32K" PASSES="fwd fwdbwd" VARIANTS="none alibi" bash "$ROOT/bench/run_positional_study.sh" $L/pos_ring
step ring_fwdbwd 60 $MPI $B/distattn_bench -o ring --pass fwdbwd -b 32K -e 128K -f 2 --causal -n 5 -w 2 -c 0 -J $L/ring_fwdbwd_causal.json
echo "total $(steps_elapsed)s status $steps_status"
