#!/bin/bash
# Session 8, call 2 (nvidia-h200-x2), binaries of f032b17: at S = 16K on 2 GPUs (the per-step shapes of 4 GPUs at
# 32K), A/B of the existing ring switches that move work off the backward's critical path: the pack on the side
# stream (DISTATTN_RING_PACK=side) and the own step in two parts (DISTATTN_RING_BWD_OWN=split), interleaved rounds.
set -u
ROOT=$(pwd)
W=/tmp/s8c2; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s8/bins1.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=120
export DISTATTN_GIT_COMMIT=f032b17
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-240}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c2.tgz" -C $W logs'
S=$W/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
R="-o ring -b 16K -e 32K -f 2 -H 32 -d 128 --dtype bf16 --layout zigzag -c 0 --causal --pass fwdbwd -n 20 -w 3"
for r in 1 2 3; do
  step base_$r 40 "${MPI[@]}" $S/distattn_bench $R -J $L/runs/base_$r.json
  step packside_$r 40 env DISTATTN_RING_PACK=side "${MPI[@]}" $S/distattn_bench $R -J $L/runs/packside_$r.json
  step ownsplit_$r 40 env DISTATTN_RING_BWD_OWN=split "${MPI[@]}" $S/distattn_bench $R -J $L/runs/ownsplit_$r.json
done
STEP_SUMMARY='bwd' step trace_split 30 env DISTATTN_RING_TRACE=1 DISTATTN_RING_BWD_OWN=split "${MPI[@]}" $S/distattn_bench -o ring -b 16K -e 16K -H 32 -d 128 --layout zigzag -c 0 --causal --pass fwdbwd -n 2 -w 1
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections
d = sys.argv[1]; t = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); k = f.rsplit('_', 1)[0]
    for r in j['rows']: t[(k, r['seq'])].append((r['time_ms'], r.get('exposed_comm_pct')))
for k in sorted(t): print('%-10s %6d ' % k + '  '.join('%.3f ms (%.1f%%)' % x for x in t[k]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
