#!/bin/bash
# Session 6 (nvidia-h200-x2): checked bench runs after the dilated op moved to AttentionIo: dilated on one GPU and
# sharded over 2 (fwd, fwd+bwd, bwd; -c 1 against the fp64 host engine), a dense check, and the dilated timing at
# 16K / 64K on one GPU (peak memory column included).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=/tmp/s6d; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
B=$W/stage/distattn_bench
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-150}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s6d.tgz" -C $W logs'
export DISTATTN_COMM_TIMEOUT_S=60 DISTATTN_GIT_COMMIT=${C:-unknown} NCCL_NVLS_ENABLE=0
MPI="mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE -x DISTATTN_COMM_TIMEOUT_S -x DISTATTN_GIT_COMMIT"
step dil1_fwd 30 env CUDA_VISIBLE_DEVICES=0 $B -o dilated -b 2K -e 4K -f 2 --causal -c 1 -n 2 -w 1
step dil1_fwdbwd 30 env CUDA_VISIBLE_DEVICES=0 $B -o dilated -b 4K -e 4K --pass fwdbwd -c 1 -n 2 -w 1
step dil2_fwdbwd 40 $MPI $B -o dilated -b 4K -e 4K --causal --pass fwdbwd -c 1 -n 2 -w 1
step dil2_bwd 40 $MPI $B -o dilated -b 4K -e 4K --pass bwd -c 1 -n 2 -w 1
step dense_check 30 env CUDA_VISIBLE_DEVICES=0 $B -o dense -b 2K -e 2K --causal --pass fwdbwd -c 1 -n 2 -w 1
step dil1_time 40 env CUDA_VISIBLE_DEVICES=0 $B -o dilated -b 16K -e 64K -f 4 --causal -c 0 -n 10 -w 3
echo "total $(steps_elapsed)s status $steps_status"
