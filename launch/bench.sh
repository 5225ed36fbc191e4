#!/usr/bin/env bash
# The main job: set-up, build, then the benchmark.
#   GPU present and PyTorch importable: distattn and the PyTorch peers side by side (bench/run_side_by_side.sh),
#   GPU present, no PyTorch: distattn_bench's default sweep alone,
#   no GPU: distattn_bench runs the host engine on small sizes (it says so).
# Extra arguments go to distattn_bench (when run alone). Results (JSON) land in $DISTATTN_BUILD_DIR/results/.
# On a GPU every timing is taken at the clock the GPU keeps under load: 300 ms of warm-up per size (WARMUP_MS, also for
# the peers; distattn_bench --warmup-ms unless the extra arguments give it), because an H200 drops from its boost clock
# ~60-100 ms into a load (bench/README.md, "Clocks and warm-up").
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DISTATTN_BUILD_DIR:-$here/build}
"$here/launch/setup.sh"
mkdir -p "$build/results"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  warmup_ms=${WARMUP_MS:-300}
  if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    WARMUP_MS=$warmup_ms DISTATTN_BENCH="$build/bench/distattn_bench" exec "$here/bench/run_side_by_side.sh" \
      "$build/results"
  fi
  warm=(--warmup-ms "$warmup_ms")
  for a in "$@"; do [[ $a == --warmup-ms* ]] && warm=(); done
  exec "$build/bench/distattn_bench" -o dense -b 2K -e 32K -f 2 "${warm[@]}" -J "$build/results/dense.json" "$@"
fi
exec "$build/bench/distattn_bench" -o dense -J "$build/results/dense_host.json" "$@"
