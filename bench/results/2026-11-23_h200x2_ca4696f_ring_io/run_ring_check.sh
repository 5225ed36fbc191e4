#!/usr/bin/env bash
# One call on nvidia-h200-x2 for branch ring-io (bench/ops/ring.cc on AttentionIo; the ring's ALiBi cutoff across
# steps only at head dim 128). Run from the repo root with the binaries packed next to this script:
#
#   bash build-ringdev/run_ring_check.sh "$OUT"      (carry build-ringdev: this file and bins.tar.xz, ~8 MB)
#
#   bins.tar.xz: stage/distattn_bench_old (main 0d20300), stage/distattn_bench_new (ring-io),
#                stage/distattn_mpi_test_ring_gpu (ring-io), stage/COMMITS (the two commits)
# Steps (bench/device_steps.sh; each under its own limit, all under BUDGET_S, default 225 s):
#   1. test_ring_gpu at np 2 (every test; the gtest summary is printed)
#   2. the ring op, old and new binary interleaved (the order flips per configuration), causal zigzag, B 1, H 32,
#      D 128, bf16, 8K and 32K, --pass fwd / fwdbwd, without and with --rope, -n 10 -w 3 -c 0, JSON each
#   3. the new binary's check at 4K (causal, --rope, fwdbwd, H 8: 0 wrong expected)
#   4. old vs new per row: time, comp(ms), exp%, and the fields that must not differ and do (buffer / pool bytes,
#      steps, hops, exchange path; "none" when all agree)
# RING_SWEEP / CHECK_SWEEP override the sizes, heads and iterations of steps 2 / 3 (a dry run on a host without GPUs).
# Everything lands in ONE tarball, $OUT/ring_check.tgz (re-packed after every step, so a call cut short still
# brings back what ran).
set -u
OUT=${1:?OUT dir}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(pwd)
[ -x "$ROOT/launch/mpirun.sh" ] && [ -f "$ROOT/bench/device_steps.sh" ] || { echo "run me from the repo root"; exit 2; }
W=/tmp/ring_check
L=$W/logs
rm -rf "$W" && mkdir -p "$L/json" "$OUT"
tar xJf "$HERE/bins.tar.xz" -C "$W" || { echo "untar of $HERE/bins.tar.xz failed"; exit 2; }
B=$W/stage
OLD_C=$(sed -n 's/^old //p' "$B/COMMITS")
NEW_C=$(sed -n 's/^new //p' "$B/COMMITS")
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
MPI=("$ROOT/launch/mpirun.sh" -n 2)
# shellcheck source=bench/device_steps.sh
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${BUDGET_S:-225}"
STEP_AFTER='tar czf "$OUT/ring_check.tgz" -C "$W" logs'
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader > "$L/gpus.txt" 2>&1
cat "$L/gpus.txt" "$B/COMMITS"

# 1. The ring's GPU tests (incl. RingGpu.AlibiCutoffAcrossSteps with its D = 64 case).
STEP_SUMMARY='^\S*\[  (PASSED|FAILED) |FAILED  \]|suites? ran\.' step test_ring_gpu 100 \
  env DISTATTN_GIT_COMMIT="$NEW_C" "${MPI[@]}" "$B/distattn_mpi_test_ring_gpu"

# 2. Old / new interleaved.
# shellcheck disable=SC2206
A=(-o ring ${RING_SWEEP:--b 8K -e 32K -f 4 -H 32 -n 10 -w 3} -d 128 --dtype bf16 --causal --layout zigzag -c 0)
i=0
for pass in fwd fwdbwd; do
  for rope in none rope; do
    extra=()
    [ "$rope" = rope ] && extra=(--rope)
    order="old new"
    [ $((i % 2)) -eq 1 ] && order="new old"
    for v in $order; do
      c=$OLD_C
      [ "$v" = new ] && c=$NEW_C
      step "ring_${pass}_${rope}_$v" 45 env DISTATTN_GIT_COMMIT="$c" "${MPI[@]}" "$B/distattn_bench_$v" "${A[@]}" \
        --pass "$pass" ${extra[@]+"${extra[@]}"} -J "$L/json/ring_${pass}_${rope}_$v.json"
    done
    i=$((i + 1))
  done
done

# 3. The new binary's check on the GPU (upload, poison, download now through AttentionIo).
# shellcheck disable=SC2086
step check_new_4k 45 env DISTATTN_GIT_COMMIT="$NEW_C" "${MPI[@]}" "$B/distattn_bench_new" -o ring \
  ${CHECK_SWEEP:--b 4K -e 4K -H 8} -d 128 --causal --rope --pass fwdbwd -n 3 -w 1 -c 1 --check-heads 2

# 4. The comparison (also saved as logs/compare.txt).
python3 - "$L/json" > "$L/compare.txt" 2>&1 << 'EOF'
import json, os, sys
d = sys.argv[1]
def rows(path):
    try:
        return {r["seq"]: r for r in json.load(open(path))["rows"]}
    except Exception as e:
        return {}
print("%-12s %6s %9s %9s %7s %9s %9s %7s %6s %6s %s" % ("config", "seq", "old ms", "new ms", "d%", "old comp",
      "new comp", "d%", "oexp%", "nexp%", "differing fields"))
keys = ("buffer_bytes", "pool_high_bytes", "steps_computed_max", "kv_hops", "grad_hops", "kv_exchange", "local_seq")
for pass_ in ("fwd", "fwdbwd"):
    for rope in ("none", "rope"):
        k = "ring_%s_%s" % (pass_, rope)
        o, n = rows(os.path.join(d, k + "_old.json")), rows(os.path.join(d, k + "_new.json"))
        for s in sorted(set(o) | set(n)):
            if s not in o or s not in n:
                print("%-12s %6d missing in %s" % (k[5:], s, "old" if s not in o else "new"))
                continue
            a, b = o[s], n[s]
            diff = ",".join(f for f in keys if a.get(f) != b.get(f)) or "none"
            pct = lambda x, y: 100 * (y / x - 1) if x else float("nan")
            print("%-12s %6d %9.3f %9.3f %+6.1f%% %9.3f %9.3f %+6.1f%% %6.1f %6.1f %s" % (k[5:], s, a["time_ms"],
                  b["time_ms"], pct(a["time_ms"], b["time_ms"]), a["compute_ms"], b["compute_ms"],
                  pct(a["compute_ms"], b["compute_ms"]), a["exposed_comm_pct"], b["exposed_comm_pct"], diff))
EOF
cat "$L/compare.txt"
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
exit $steps_status
