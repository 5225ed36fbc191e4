#!/bin/bash
# Session 8, call 13 (nvidia-h200): where the dilated backward's time goes (diagnostic). ncu kernel durations of one
# LongNet-pattern backward (2K:1 at 64K, the pattern that is the same work as a batch-32 2K causal dense backward) and
# of that dense backward, one iteration each.
set -u
W=/tmp/s8c13; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s8/binsF.tar.xz -C $W stage/distattn_bench || { echo "untar failed"; exit 1; }
B=$W/stage/distattn_bench
NCU="ncu --clock-control none --metrics gpu__time_duration.sum --csv"
$NCU $B -o dilated --dilated-segments 2K --dilated-rates 1 -b 64K -e 64K -H 32 -d 128 --causal --pass bwd -n 1 -w 0 -c 0 > $L/dil.csv 2> $L/dil.err
$NCU $B -o dense -b 2K -e 2K -B 32 -H 32 -d 128 --causal --pass bwd -n 1 -w 0 -c 0 > $L/dense.csv 2> $L/dense.err
python3 - $L <<'PY'
import csv, sys, os, collections
for name in ("dil", "dense"):
    rows = [r for r in csv.reader(open(os.path.join(sys.argv[1], name + ".csv"))) if len(r) > 10]
    hdr = rows[0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value"); ui = hdr.index("Metric Unit")
    tot = collections.OrderedDict()
    for r in rows[1:]:
        try: v = float(r[vi].replace(",", ""))
        except ValueError: continue
        if r[ui] == "nsecond": v /= 1000.0
        elif r[ui] == "msecond": v *= 1000.0
        k = r[ki][:70]; tot[k] = tot.get(k, 0.0) + v
    print("==", name, "total %.1f us" % sum(tot.values()))
    for k, v in tot.items(): print("  %9.1f us  %s" % (v, k))
PY
mkdir -p "$OUT" && tar czf "$OUT/s8c13.tgz" -C $W logs
