#!/bin/bash
# Session 6, final check (nvidia-h200-x2) of main (ring ALiBi cutoff across steps with the own-key norms, dilated head
# chains merged): every gpu-mpi program at np 2 and the 1-GPU suite (GPU 1, background); then on GPU 0 alone dense /
# dilated 16K and 64K, causal and non-causal, two interleaved rounds; then the ring (both GPUs): ALiBi against none at
# 8K-32K (fwd, fwd+bwd) and fwd+bwd causal 32K-128K (exposed communication).
set -u
C=${C:-unknown}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
W=/tmp/s6f; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
B=$W/stage
export DISTATTN_COMM_TIMEOUT_S=60 DISTATTN_GIT_COMMIT=$C NCCL_NVLS_ENABLE=0
MPI="mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE -x DISTATTN_COMM_TIMEOUT_S -x DISTATTN_GIT_COMMIT"
CAP=${CAP:-480}
el() { echo $(( $(date +%s) - T0 )); }
pack() { mkdir -p "$OUT" && tar czf "$OUT/s6f.tgz" -C $W logs; }
step() {
  local name=$1 to=$2; shift 2
  if [ "$(el)" -gt $((CAP - 15)) ]; then echo "== $name skipped (t=$(el)s)"; return; fi
  local left=$(( CAP - $(el) )); [ "$to" -gt "$left" ] && to=$left
  local s=$(date +%s)
  timeout "$to" "$@" > "$L/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s (t=$(el)s)"
  grep -hE "^\S*\[  (PASSED|FAILED) |FAILED  \]|Out of bounds|overhead at|^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ " "$L/$name.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -12
  pack
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader > $L/gpus.txt 2>&1; cat $L/gpus.txt
( CUDA_VISIBLE_DEVICES=1 timeout 240 $B/distattn_tests_gpu > $L/tests_gpu.log 2>&1; echo "rc=$?" >> $L/tests_gpu.log ) &
BG=$!
step ring_gpu 120 $MPI $B/distattn_mpi_test_ring_gpu
step ring_sparse_gpu 60 $MPI $B/distattn_mpi_test_ring_sparse_gpu
step ce_exchange_gpu 40 $MPI $B/distattn_mpi_test_ce_exchange_gpu
step mha_gpu 60 $MPI $B/distattn_mpi_test_mha_gpu
step dilated_dist_gpu 80 $MPI $B/distattn_mpi_test_dilated_dist_gpu
step nccl_comm 30 $MPI $B/distattn_mpi_test_nccl_comm
wait $BG; echo "== tests_gpu (t=$(el)s)"; grep -E "^\[  PASSED|^\[  FAILED|FAILED  \]|rc=" $L/tests_gpu.log | tail -12; pack
export CUDA_VISIBLE_DEVICES=0
for r in 1 2; do
  step dense_c_$r 30 $B/distattn_bench -o dense -b 16K -e 64K -f 4 --causal -c 0 -n 10 -w 3 -J $L/dense_causal_$r.json
  step dilated_c_$r 40 $B/distattn_bench -o dilated -b 16K -e 64K -f 4 --causal -c 0 -n 10 -w 3 -J $L/dilated_causal_$r.json
done
step dense_nc 30 $B/distattn_bench -o dense -b 16K -e 64K -f 4 -c 0 -n 10 -w 3 -J $L/dense_nc.json
step dilated_nc 40 $B/distattn_bench -o dilated -b 16K -e 64K -f 4 -c 0 -n 10 -w 3 -J $L/dilated_nc.json
step dilated_c_check 30 $B/distattn_bench -o dilated -b 4K -e 4K --causal -c 1 -n 2 -w 1
unset CUDA_VISIBLE_DEVICES
export DISTATTN_BENCH=$B/distattn_bench RING_LAUNCH="$ROOT/launch/mpirun.sh -n 2" OPS=ring MASKS=causal CHECK=0
step pos_ring 120 env SIZES="8K 16K 32K" PASSES="fwd fwdbwd" VARIANTS="none alibi" \
  bash "$ROOT/bench/run_positional_study.sh" $L/pos_ring
step ring_alibi_check 40 $MPI -x DISTATTN_RING_ALIBI_CUTOFF=on $B/distattn_bench -o ring --pass fwdbwd -b 4K -e 4K --causal --alibi -c 1 -n 2 -w 1
step ring_fwdbwd 60 $MPI $B/distattn_bench -o ring --pass fwdbwd -b 32K -e 128K -f 2 --causal -n 5 -w 2 -c 0 -J $L/ring_fwdbwd_causal.json
echo "total $(el)s"; pack; ls -la "$OUT"
