#!/bin/bash
# Session 7, final check (nvidia-h200-x2) of main after all merges: GPU suite, every gpu-mpi program at np 2 (the ring
# also with DISTATTN_RING_PACK=side), bad environment values, checked bench runs, the pack main/side A/B, a probe.
set -u
ROOT=$(pwd)
W=/tmp/s7f; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s7/binsF.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-400}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s7final.tgz" -C $W logs'
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader > $L/gpu.txt
cat $S/COMMIT
MPI=("$ROOT/launch/mpirun.sh" -n 2)
step tests_gpu 120 $S/distattn_tests_gpu
for t in ring_gpu ring_sparse_gpu dilated_dist_gpu mha_gpu ce_exchange_gpu nccl_comm; do
  step mpi_$t 70 "${MPI[@]}" $S/distattn_mpi_test_$t
done
step mpi_ring_gpu_pack_side 70 env DISTATTN_RING_PACK=side "${MPI[@]}" $S/distattn_mpi_test_ring_gpu
# Bad values of two switches whose bad values used to be ignored: each run must fail with an Error naming the variable.
STEP_SUMMARY='argument|distattn:' step bad_env_grid 30 env DISTATTN_HOPPER_GRID=x $S/distattn_bench -o dense -b 2K -e 2K -n 1 -w 0 -c 0
STEP_SUMMARY='argument|distattn:' step bad_env_vec 30 env DISTATTN_RING_VEC=on "${MPI[@]}" $S/distattn_bench -o ring -b 4K -e 4K -n 1 -w 0 -c 0
step dense_check 60 $S/distattn_bench -o dense -b 2K -e 4K --causal --rope --pass fwdbwd -n 3 -w 1 -c 1 --check-max-seq 4K
step ring_check 60 "${MPI[@]}" $S/distattn_bench -o ring -b 4K -e 8K --causal --rope --pass fwdbwd -n 3 -w 1 -c 1 --check-max-seq 8K --check-heads 2
R="-o ring -b 32K -e 128K -f 2 -H 32 -d 128 --dtype bf16 --causal --layout zigzag -n 5 -w 2 -c 0"
for round in 1 2; do
  for pack in main side; do
    step pack_${pack}_fwdbwd_$round 60 env DISTATTN_RING_PACK=$pack "${MPI[@]}" $S/distattn_bench $R --pass fwdbwd -J $L/runs/pack_${pack}_fwdbwd_$round.json
    step pack_${pack}_fwd_$round 40 env DISTATTN_RING_PACK=$pack "${MPI[@]}" $S/distattn_bench $R --pass fwd -J $L/runs/pack_${pack}_fwd_$round.json
  done
done
step probe 40 $S/hopper_fwd_timing 5 8192
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections
d = sys.argv[1]; rows = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); k = f.rsplit('_', 1)[0]
    for r in j['rows']:
        rows[(k, r['seq'])].append((r['time_ms'], r['exposed_comm_pct'], r['tflops']))
for (k, s) in sorted(rows):
    v = rows[(k, s)]
    print('%-20s %7d  time %s  exp%% %s  TF %s' % (k, s, ['%.3f' % x[0] for x in v], ['%.1f' % x[1] for x in v], ['%.1f' % x[2] for x in v]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
