#!/bin/bash
# Settles dilated-margin's open question: dense causal 16K, base (fb23693) against 9082a31, 10 interleaved rounds,
# -n 30. Usage on nvidia-h200: bash build-dmdev/dense_ab.sh   (~60 s; logs and JSON in $OUT/dense_ab.tgz)
set -u
HERE=$(cd "$(dirname "$0")" && pwd); W=/tmp/dmab; L=$W/logs
rm -rf $W && mkdir -p $L && tar xJf "$HERE/bins.tar.xz" -C $W || exit 1
for r in $(seq 1 10); do
  if [ $((r % 2)) = 0 ]; then ORDER="new base"; else ORDER="base new"; fi
  for who in $ORDER; do
    if [ $who = base ]; then C=fb23693; else C=9082a31; fi
    DISTATTN_GIT_COMMIT=$C timeout 30 $W/stage/$who/distattn_bench -o dense -b 16K -e 16K --causal -c 0 -n 30 -w 5 \
      -J $L/${who}_dense_causal16k_$r.json > $L/${who}_$r.log 2>&1
    echo "$who $r $(grep -E '^ +16384 ' $L/${who}_$r.log | tr -s ' ' | cut -d' ' -f8,9)"
  done
done
mkdir -p "$OUT" && tar czf "$OUT/dense_ab.tgz" -C $W logs
