#!/bin/bash
# Session 8, call 3 (nvidia-h200-x2): the home hop in four pieces (working tree on f032b17). gpu-mpi ring programs
# at np 2, then A/B against f032b17's bench (old = two halves) at 16K (the per-step shapes of 4 GPUs at 32K) and
# 32K, fwd+bwd causal, interleaved rounds; a trace at 16K.
set -u
ROOT=$(pwd)
W=/tmp/s8c3; L=$W/logs
rm -rf $W && mkdir -p $L/runs $W/old
tar xJf build-s8/bins2.tar.xz -C $W || { echo "untar failed"; exit 1; }
tar xJf build-s8/bins1.tar.xz -C $W/old || { echo "untar old failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=120
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-330}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c3.tgz" -C $W logs'
S=$W/stage; O=$W/old/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
step ring_gpu 90 "${MPI[@]}" $S/distattn_mpi_test_ring_gpu
step ring_gpu_nccl 90 env DISTATTN_RING_EXCHANGE=nccl "${MPI[@]}" $S/distattn_mpi_test_ring_gpu --gtest_filter='*OddBatch*:*Mqa*:*Layouts*'
step ring_sparse_gpu 60 "${MPI[@]}" $S/distattn_mpi_test_ring_sparse_gpu
step mha_gpu 60 "${MPI[@]}" $S/distattn_mpi_test_mha_gpu
step ce_exchange_gpu 40 "${MPI[@]}" $S/distattn_mpi_test_ce_exchange_gpu
R="-o ring -b 16K -e 32K -f 2 -H 32 -d 128 --dtype bf16 --layout zigzag -c 0 --causal --pass fwdbwd -n 20 -w 3"
for r in 1 2 3 4; do
  step new_$r 40 env DISTATTN_GIT_COMMIT=pieces "${MPI[@]}" $S/distattn_bench $R -J $L/runs/new_$r.json
  step old_$r 40 env DISTATTN_GIT_COMMIT=f032b17 "${MPI[@]}" $O/distattn_bench $R -J $L/runs/old_$r.json
done
step check 40 "${MPI[@]}" $S/distattn_bench -o ring -b 2K -e 4K -f 2 -H 8 -d 128 --causal --pass fwdbwd -n 2 -w 1 -c 1 --check-heads 2 -B 3
STEP_SUMMARY='bwd' step trace16k 30 env DISTATTN_RING_TRACE=1 "${MPI[@]}" $S/distattn_bench -o ring -b 16K -e 16K -H 32 -d 128 --layout zigzag -c 0 --causal --pass fwdbwd -n 2 -w 1
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections, statistics
d = sys.argv[1]; t = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); k = f.rsplit('_', 1)[0]
    for r in j['rows']: t[(k, r['seq'])].append((r['time_ms'], r.get('exposed_comm_pct')))
for k in sorted(t):
    print('%-4s %6d median %.3f ms | ' % (k[0], k[1], statistics.median(x[0] for x in t[k])) + '  '.join('%.3f (%.1f%%)' % x for x in t[k]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
