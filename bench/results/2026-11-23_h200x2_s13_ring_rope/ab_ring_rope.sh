#!/bin/bash
# Session 13: the ring's own RoPE (RingConfig::rope, the bench's default for -o ring --rope) against the caller's way
# (DISTATTN_BENCH_RING_ROPE=caller: one RoPE launch on q, k before the ring) and against no RoPE, interleaved: for each
# (S, mask, pass) the three variants run back to back, ROUNDS times, the order rotating each round; the table takes the
# median time of each variant (one process per run). Usage: ab_ring_rope.sh BENCH OUT_DIR
#   env: SIZES ["8K 16K 32K"] MASKS ["causal full"] PASSES [fwd] ROUNDS [5] NP [2] WARMUP_MS [300]
#   VARIANTS ["none ring caller"]; also "ringsep": the ring's own RoPE with DISTATTN_ROPE_FWD=separate (q rotated in
#   the launch that rotates k, never inside the own step's forward launch)
set -u
BENCH=$1; OUT=$2; mkdir -p "$OUT"
SIZES=${SIZES:-"8K 16K 32K"}; MASKS=${MASKS:-"causal full"}; PASSES=${PASSES:-fwd}; ROUNDS=${ROUNDS:-5}
NP=${NP:-2}; WARMUP_MS=${WARMUP_MS:-300}
read -r -a variants <<<"${VARIANTS:-none ring caller}"
nv=${#variants[@]}
combo=0
for S in $SIZES; do
  case $S in 8K) it="-n 40 -w 10" ;; 16K) it="-n 20 -w 3" ;; *) it="-n 10 -w 2" ;; esac
  for mask in $MASKS; do
    mflag=""; [[ $mask == causal ]] && mflag="--causal"
    for pass in $PASSES; do
      for ((round = 1; round <= ROUNDS; ++round)); do
        for ((j = 0; j < nv; ++j)); do
          v=${variants[$(((combo + round + j) % nv))]}
          tag=${pass}_${mask}_${S}_${v}_r${round}
          rope=""; envv="DISTATTN_BENCH_RING_ROPE=ring"
          [[ $v != none ]] && rope="--rope"
          [[ $v == caller ]] && envv="DISTATTN_BENCH_RING_ROPE=caller"
          [[ $v == ringsep ]] && envv="DISTATTN_ROPE_FWD=separate"
          env $envv launch/mpirun.sh -n "$NP" "$BENCH" -o ring -b "$S" -e "$S" -B 1 -H 32 -d 128 \
            --dtype bf16 --pass "$pass" $it --warmup-ms "$WARMUP_MS" -c 0 --layout zigzag $mflag $rope \
            -J "$OUT/$tag.json" >"$OUT/$tag.log" 2>&1 || echo "run $tag failed (rc $?)"
        done
      done
      combo=$((combo + 1))
    done
  done
done
python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
t = {}
for f in glob.glob(os.path.join(out, "*.json")):
    pass_, mask, S, v, r = os.path.basename(f)[:-5].split("_")
    try:
        rows = json.load(open(f))["rows"]
    except Exception as e:
        print("unreadable", f, e); continue
    for row in rows:
        t.setdefault((pass_, mask, int(row["seq"])), {}).setdefault(v, []).append(row["time_ms"])
print("# ring RoPE A/B: median time over rounds (ms); overhead = time / time(none) - 1")
print("# ring: RingConfig::rope (the ring rotates: k with the send buffer, q there or in the own step); ringsep: the same")
print("# with DISTATTN_ROPE_FWD=separate (q always in the k launch); caller: one RoPE launch before the ring")
order = [v for v in ("none", "ring", "ringsep", "caller") if any(v in d for d in t.values())]
print(f"{'pass':6} {'mask':6} {'seq':>7} " + " ".join(f"{v:>9}" for v in order) + " " +
      " ".join(f"{v + ' ovh':>12}" for v in order[1:]) + "  per round (ring ovh)")
for (p, m, s) in sorted(t):
    d = t[(p, m, s)]
    if not all(k in d for k in order): continue
    med = {k: statistics.median(d[k]) for k in d}
    each = " ".join(f"{100*(x/med['none']-1):+.1f}" for x in d.get("ring", []))
    print(f"{p:6} {m:6} {s:7d} " + " ".join(f"{med[v]:9.4f}" for v in order) + " " +
          " ".join(f"{100*(med[v]/med['none']-1):+11.2f}%" for v in order[1:]) + "  " + each)
PY
