#!/usr/bin/env bash
# Probe: how NCCL settings change the ring's K|V exchange and its exposed communication, one command on a multi-GPU
# node (builds nothing). Runs `distattn_bench -o ring --pass fwd` over the same sizes once per NCCL setting (VARIANTS)
# and prints, per setting and S, the exchange time, its busbw and the exposed communication. The JSON of each run
# is kept as OUT_DIR/<variant>.probe.jsonl (not *.json: the study tools' key does not hold NCCL settings, so these
# rows must not pool with the ordinary results).
#
#   NP=4 DISTATTN_BENCH=build/bench/distattn_bench bench/probe_ring_exchange.sh [OUT_DIR]
#
# Environment: NP (default: the GPUs nvidia-smi lists), SWEEP ["-b 32K -e 128K -f 4"], MASK ["--causal"],
# ITERS [5], WARMUP [2], MPIRUN [mpirun; may carry options, e.g. "mpirun --oversubscribe"], RUN_TIMEOUT [120],
# VARIANTS (a list of name=SETTINGS, SETTINGS a comma-separated list of NCCL_*=value; default below),
# PYTHON [python3]. Without a GPU it runs the host ring over MPI (the NCCL settings then change nothing).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${DISTATTN_BENCH:-$ROOT/build/bench/distattn_bench}
if [[ ! -x $BENCH ]]; then
  echo "probe_ring_exchange: distattn_bench not found at '$BENCH'; build it or set DISTATTN_BENCH" >&2
  exit 2
fi
NP=${NP:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
[[ $NP -ge 2 ]] 2>/dev/null || {
  echo "probe_ring_exchange: needs NP >= 2 (got '$NP')" >&2
  exit 2
}
OUT=${1:-$ROOT/bench/results/ring_exchange_probe_$(date -u +%Y%m%dT%H%M%SZ)}
SWEEP=${SWEEP:-"-b 32K -e 128K -f 4"}
MASK=${MASK---causal}
ITERS=${ITERS:-5}
WARMUP=${WARMUP:-2}
MPIRUN=${MPIRUN:-mpirun}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
PY=${PYTHON:-python3}
VARIANTS=${VARIANTS:-"default= chunk2m=NCCL_P2P_NVL_CHUNKSIZE=2097152 chunk8m=NCCL_P2P_NVL_CHUNKSIZE=8388608,NCCL_BUFFSIZE=16777216 ch16=NCCL_MIN_NCHANNELS=16 ch32=NCCL_MIN_NCHANNELS=32,NCCL_NCHANNELS_PER_PEER=8 nvb0=NCCL_NVB_DISABLE=1"}
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$OUT/logs"
status=0
for v in $VARIANTS; do
  name=${v%%=*}
  settings=${v#*=}
  envs=()
  xs=()
  IFS=, read -r -a kvs <<< "$settings"
  for kv in "${kvs[@]}"; do
    [[ -z $kv ]] && continue
    envs+=("$kv")
    xs+=(-x "${kv%%=*}")
  done
  echo "=== $name: ${settings:-NCCL defaults}"
  env "${envs[@]}" timeout "$RUN_TIMEOUT" $MPIRUN --bind-to none -np "$NP" -x NCCL_NVLS_ENABLE "${xs[@]}" \
    $( [[ $(id -u) == 0 ]] && echo --allow-run-as-root ) "$BENCH" -o ring $SWEEP $MASK --pass fwd -n "$ITERS" \
    -w "$WARMUP" -c 0 -J "$OUT/$name.json" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  ((rc == 0)) || {
    echo "    rc $rc (log: $OUT/logs/$name.log)"
    status=1
  }
  [[ -f $OUT/$name.json ]] && mv "$OUT/$name.json" "$OUT/$name.probe.jsonl"
done
"$PY" - "$OUT" << 'EOF'
import glob, json, os, sys
out = sys.argv[1]
print(f"{'variant':<10} {'seq':>8} {'time(ms)':>10} {'xchg(ms)':>9} {'busbw':>8} {'exp%':>6}")
for f in sorted(glob.glob(os.path.join(out, "*.probe.jsonl"))):
    name = os.path.basename(f)[: -len(".probe.jsonl")]
    with open(f) as fh:
        doc = json.load(fh)
    for r in doc.get("rows", []):
        print(f"{name:<10} {r['seq']:>8} {r.get('time_ms', 0):>10.3f} {r.get('exchange_ms') or 0:>9.3f} "
              f"{r.get('busbw_gbps') or 0:>8.1f} {r.get('exposed_comm_pct') or 0:>6.1f}")
EOF
exit $status
