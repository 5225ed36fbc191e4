#!/bin/bash
# Session 14: builds of the Hopper forward kernel that differ in one compile-time knob (flash_fwd_hopper_kernel.cuh:
# SPLIT_CHAINS, MASK_EARLY, PACK_EARLY, POLY_EXP), each linked into its own distattn_bench, timed interleaved: for each
# case the variants run back to back, ROUNDS times, the order rotating each round; one process per run, --warmup-ms so
# every run times the clock the GPU keeps under load. The table: median time per variant, and its ratio to "base".
# Usage: ab_variants.sh BIN_DIR OUT_DIR   (BIN_DIR/bench_<variant>)
#   env: VARIANTS ["base A B C"] CASES ["16K:full 16K:causal 64K:full 8K:causal"] ROUNDS [3] WARMUP_MS [300]
#   PASS [fwd]; a case S:mask:alibi adds --alibi (its tag's mask reads e.g. "causalalibi")
set -u
BIN=$1; OUT=$2; mkdir -p "$OUT"
read -r -a variants <<<"${VARIANTS:-base A B C}"
CASES=${CASES:-"16K:full 16K:causal 64K:full 8K:causal"}; ROUNDS=${ROUNDS:-3}; WARMUP_MS=${WARMUP_MS:-300}
PASS=${PASS:-fwd}
nv=${#variants[@]}
combo=0
for c in $CASES; do
  IFS=: read -r S mask extra <<<"$c"
  mflag=""; [[ $mask == causal ]] && mflag="--causal"
  [[ ${extra:-} == alibi ]] && mflag="$mflag --alibi" && mask="${mask}alibi"
  case $S in 4K|8K) it="-n 40 -w 5" ;; 16K) it="-n 20 -w 3" ;; 32K) it="-n 8 -w 2" ;; *) it="-n 4 -w 1" ;; esac
  for ((round = 1; round <= ROUNDS; ++round)); do
    for ((j = 0; j < nv; ++j)); do
      v=${variants[$(((combo + round + j) % nv))]}
      tag=${PASS}_${mask}_${S}_${v}_r${round}
      env ${RUN_ENV:-} "$BIN/bench_$v" -o dense -b "$S" -e "$S" -B 1 -H 32 -d 128 --dtype bf16 --pass "$PASS" $it \
        --warmup-ms "$WARMUP_MS" -c 0 $mflag -J "$OUT/$tag.json" >"$OUT/$tag.log" 2>&1 || echo "run $tag failed (rc $?)"
    done
  done
  combo=$((combo + 1))
done
python3 - "$OUT" "${variants[@]}" <<'PY'
import glob, json, os, statistics, sys
out, order = sys.argv[1], sys.argv[2:]
t = {}
for f in glob.glob(os.path.join(out, "*.json")):
    pass_, mask, S, v, r = os.path.basename(f)[:-5].split("_")
    try:
        rows = json.load(open(f))["rows"]
    except Exception as e:
        print("unreadable", f, e); continue
    for row in rows:
        t.setdefault((pass_, mask, int(row["seq"])), {}).setdefault(v, []).append(row["time_ms"])
print("# median time over rounds (ms) and time / time(base) - 1 (negative: faster than base)")
print(f"{'pass':6} {'mask':6} {'seq':>7} " + " ".join(f"{v:>9}" for v in order) + "   " +
      " ".join(f"{v:>7}" for v in order[1:]))
for (p, m, s) in sorted(t):
    d = t[(p, m, s)]
    if not all(k in d for k in order): continue
    med = {k: statistics.median(d[k]) for k in d}
    print(f"{p:6} {m:6} {s:7d} " + " ".join(f"{med[v]:9.4f}" for v in order) + "   " +
          " ".join(f"{100*(med[v]/med['base']-1):+6.2f}%" for v in order[1:]))
PY
