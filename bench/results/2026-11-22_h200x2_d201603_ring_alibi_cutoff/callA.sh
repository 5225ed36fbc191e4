#!/bin/bash
# Session 6, call A (nvidia-h200-x2): the ALiBi cutoff across ring steps (AttnParams::alibi_merge).
# 1. correctness: the 1-GPU suite on GPU 1 (background) and test_ring_gpu at np 2 (both GPUs);
# 2. the ring positional study on 2 GPUs (none / rope / alibi, fwd and fwd+bwd, causal) with the default (auto);
# 3. A/B: the same study's none / alibi rows with DISTATTN_RING_ALIBI_CUTOFF=off (fwd, 4K-32K).
set -u
C=${C:-unknown}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
W=/tmp/s6a; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
B=$W/stage
export DISTATTN_COMM_TIMEOUT_S=60 DISTATTN_GIT_COMMIT=$C NCCL_NVLS_ENABLE=0
MPI="mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE -x DISTATTN_COMM_TIMEOUT_S -x DISTATTN_GIT_COMMIT"
CAP=${CAP:-420}
el() { echo $(( $(date +%s) - T0 )); }
pack() { mkdir -p "$OUT" && tar czf "$OUT/s6a.tgz" -C $W logs; }
step() {
  local name=$1 to=$2; shift 2
  if [ "$(el)" -gt $((CAP - 15)) ]; then echo "== $name skipped (t=$(el)s)"; return; fi
  local left=$(( CAP - $(el) )); [ "$to" -gt "$left" ] && to=$left
  local s=$(date +%s)
  timeout "$to" "$@" > "$L/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s (t=$(el)s)"
  grep -hE "^\S*\[  (PASSED|FAILED) |FAILED  \]|^\[ring-gpu|Out of bounds|overhead at|^ +[0-9]+ +[0-9.]+ " "$L/$name.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -40
  pack
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader > $L/gpus.txt 2>&1; cat $L/gpus.txt
( CUDA_VISIBLE_DEVICES=1 timeout 220 $B/distattn_tests_gpu > $L/tests_gpu.log 2>&1; echo "rc=$?" >> $L/tests_gpu.log ) &
BG=$!
step ring_gpu 120 $MPI $B/distattn_mpi_test_ring_gpu
wait $BG; echo "== tests_gpu (t=$(el)s)"; grep -E "^\[  PASSED|^\[  FAILED|FAILED  \]|rc=" $L/tests_gpu.log | tail -12; pack
export DISTATTN_BENCH=$B/distattn_bench RING_LAUNCH="$ROOT/launch/mpirun.sh -n 2" OPS=ring MASKS=causal CHECK=0
step pos_ring 200 env SIZES="4K 8K 16K 32K 128K" PASSES="fwd fwdbwd" VARIANTS="none rope alibi" \
  bash "$ROOT/bench/run_positional_study.sh" $L/pos_ring
step pos_ring_off 80 env DISTATTN_RING_ALIBI_CUTOFF=off SIZES="4K 8K 16K 32K" PASSES="fwd" VARIANTS="none alibi" \
  bash "$ROOT/bench/run_positional_study.sh" $L/pos_ring_off
step alibi_check 40 $MPI $B/distattn_bench -o ring --pass fwdbwd -b 4K -e 4K --causal --alibi -c 1 -n 2 -w 1
echo "total $(el)s"; pack; ls -la "$OUT"
