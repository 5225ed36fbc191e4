#!/bin/bash
# Session 8, call 4 (nvidia-h200-x2): the own step cut by kv heads (DISTATTN_RING_BWD_OWN=heads) + the home hop in
# four pieces (working tree on f032b17). test_ring_gpu at np 2 (whole / split / heads inside), ring_sparse, mha; then
# fwd+bwd causal at 16K (the per-step shapes of 4 GPUs at 32K), 32K and 64K: whole vs heads vs f032b17, interleaved.
set -u
ROOT=$(pwd)
W=/tmp/s8c4; L=$W/logs
rm -rf $W && mkdir -p $L/runs $W/old
tar xJf build-s8/bins3.tar.xz -C $W || { echo "untar failed"; exit 1; }
tar xJf build-s8/bins1.tar.xz -C $W/old || { echo "untar old failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=120
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-400}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c4.tgz" -C $W logs'
S=$W/stage; O=$W/old/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
step ring_gpu 90 "${MPI[@]}" $S/distattn_mpi_test_ring_gpu
step ring_gpu_heads 90 env DISTATTN_RING_BWD_OWN=heads "${MPI[@]}" $S/distattn_mpi_test_ring_gpu --gtest_filter='*Layouts*:*Mqa*:*OddBatch*:*Fp32*'
step ring_gpu_heads_nccl 60 env DISTATTN_RING_BWD_OWN=heads DISTATTN_RING_EXCHANGE=nccl "${MPI[@]}" $S/distattn_mpi_test_ring_gpu --gtest_filter='*Layouts*zigzag*:*Fp32*'
step mha_gpu_heads 60 env DISTATTN_RING_BWD_OWN=heads "${MPI[@]}" $S/distattn_mpi_test_mha_gpu
step ring_sparse_gpu 60 "${MPI[@]}" $S/distattn_mpi_test_ring_sparse_gpu
R="-o ring -b 16K -e 64K -f 2 -H 32 -d 128 --dtype bf16 --layout zigzag -c 0 --causal --pass fwdbwd -n 10 -w 2"
for r in 1 2 3; do
  step heads_$r 60 env DISTATTN_RING_BWD_OWN=heads DISTATTN_GIT_COMMIT=heads "${MPI[@]}" $S/distattn_bench $R -J $L/runs/heads_$r.json
  step whole_$r 60 env DISTATTN_GIT_COMMIT=pieces "${MPI[@]}" $S/distattn_bench $R -J $L/runs/whole_$r.json
  step old_$r 60 env DISTATTN_GIT_COMMIT=f032b17 "${MPI[@]}" $O/distattn_bench $R -J $L/runs/old_$r.json
done
step check_heads 40 env DISTATTN_RING_BWD_OWN=heads "${MPI[@]}" $S/distattn_bench -o ring -b 2K -e 4K -f 2 -H 8 -d 128 --causal --pass fwdbwd -n 2 -w 1 -c 1 --check-heads 2 -B 3
STEP_SUMMARY='bwd' step trace16k_heads 30 env DISTATTN_RING_TRACE=1 DISTATTN_RING_BWD_OWN=heads "${MPI[@]}" $S/distattn_bench -o ring -b 16K -e 16K -H 32 -d 128 --layout zigzag -c 0 --causal --pass fwdbwd -n 2 -w 1
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections, statistics
d = sys.argv[1]; t = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); k = f.rsplit('_', 1)[0]
    for r in j['rows']: t[(r['seq'], k)].append((r['time_ms'], r.get('exposed_comm_pct')))
for k in sorted(t):
    print('%6d %-6s median %.3f ms | ' % (k[0], k[1], statistics.median(x[0] for x in t[k])) + '  '.join('%.3f (%.1f%%)' % x for x in t[k]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
