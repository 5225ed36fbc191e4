#!/bin/bash
# Session 7, call 5 (nvidia-h200-x2): AttnBwdParams::overwrite_dk_dv (ring steps write their dK|dV scratch, no clears).
# Old = 4518433's bench (clears), new = the working tree's. GPU backward tests, ring tests at np 2, then A/B.
set -u
ROOT=$(pwd)
W=/tmp/s7c5; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s7/bins5.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-270}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s7c5.tgz" -C $W logs'
S=$W/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
step tests_bwd 90 $S/distattn_tests_gpu --gtest_filter='BwdOverwrite*:*Bwd*:*bwd*'
step ring_gpu 70 "${MPI[@]}" $S/distattn_mpi_test_ring_gpu
step ring_sparse_gpu 50 "${MPI[@]}" $S/distattn_mpi_test_ring_sparse_gpu
step mha_gpu 40 "${MPI[@]}" $S/distattn_mpi_test_mha_gpu
R="-o ring -b 32K -e 64K -f 2 -H 32 -d 128 --dtype bf16 --causal --layout zigzag -n 8 -w 2 -c 0"
for round in 1 2; do
  for v in old new; do
    b=$S/distattn_bench; [[ $v == old ]] && b=$S/distattn_bench_old
    step fwdbwd_${v}_$round 45 "${MPI[@]}" $b $R --pass fwdbwd -J $L/runs/fwdbwd_${v}_$round.json
  done
done
step check_new 40 "${MPI[@]}" $S/distattn_bench -o ring -b 4K -e 4K -H 8 -d 128 --causal --pass fwdbwd -n 2 -w 1 -c 1 --check-heads 2
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections
d = sys.argv[1]; rows = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); k = f.rsplit('_', 1)[0]
    for r in j['rows']:
        rows[(k, r['seq'])].append((r['time_ms'], r['compute_ms'], r['exposed_comm_pct']))
for (k, s) in sorted(rows):
    print('%-12s %6d  time %s  comp %s  exp%% %s' % (k, s, ['%.3f' % x[0] for x in rows[(k, s)]], ['%.3f' % x[1] for x in rows[(k, s)]], ['%.1f' % x[2] for x in rows[(k, s)]]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
