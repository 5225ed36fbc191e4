#!/bin/bash
# Session 7, call 3 (nvidia-h200-x2): the library scratch pool (core/scratch_pool.h) on main + --sync-each-iter.
# GPU suite, gpu-mpi programs at np 2 that take pool scratch, then A/B of the pool (DISTATTN_SCRATCH_POOL=default is
# the old behaviour) with and without a synchronisation after every iteration.
set -u
ROOT=$(pwd)
W=/tmp/s7c3; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s7/bins3.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-330}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s7c3.tgz" -C $W logs'
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader > $L/gpu.txt
S=$W/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
step tests_gpu 120 $S/distattn_tests_gpu
step ring_gpu 70 "${MPI[@]}" $S/distattn_mpi_test_ring_gpu
step dilated_dist_gpu 60 "${MPI[@]}" $S/distattn_mpi_test_dilated_dist_gpu
step mha_gpu 60 "${MPI[@]}" $S/distattn_mpi_test_mha_gpu
R="-o ring -b 32K -e 32K -H 32 -d 128 --dtype bf16 --causal --layout zigzag --pass fwdbwd -n 8 -w 2 -c 0"
D="-o dense -b 8K -e 8K -H 32 -d 128 --dtype bf16 --causal --pass bwd -n 20 -w 5 -c 0"
for round in 1 2; do
  for pool in default library; do
    for sync in sync nosync; do
      f=""; [[ $sync == sync ]] && f="--sync-each-iter"
      step ring_${sync}_${pool}_$round 40 env DISTATTN_SCRATCH_POOL=$pool "${MPI[@]}" $S/distattn_bench $R $f -J $L/runs/ring_${sync}_${pool}_$round.json
      step dense_${sync}_${pool}_$round 30 env DISTATTN_SCRATCH_POOL=$pool $S/distattn_bench $D $f -J $L/runs/dense_${sync}_${pool}_$round.json
    done
  done
done
step ring_check 40 "${MPI[@]}" $S/distattn_bench -o ring -b 4K -e 4K -H 8 -d 128 --causal --rope --pass fwdbwd -n 2 -w 1 -c 1 --check-heads 2 --sync-each-iter
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections, statistics
d = sys.argv[1]; t = collections.defaultdict(list); e = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); k = f.rsplit('_', 1)[0]
    for r in j['rows']:
        t[k].append(r['time_ms'])
        if r.get('exposed_comm_pct') is not None: e[k].append(r['exposed_comm_pct'])
for k in sorted(t):
    print('%-24s time %s  exp%% %s' % (k, ['%.3f' % x for x in t[k]], ['%.1f' % x for x in e.get(k, [])]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
