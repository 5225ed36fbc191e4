"""What every peer script shares with distattn_bench: sizes with K/M/G suffixes, the -b/-e/-f/-i sweep and the
flash-attention FLOP formula, and the CUDA-event timing loop. Importing it needs no torch (cuda_median_ms imports it
when called), so it is unit-tested on machines without a GPU stack."""

import os
import re
import sys


def _tool():
    return os.path.splitext(os.path.basename(sys.argv[0]))[0] or "peer"


def parse_size(text, option):
    """'4096', '2K', '1M', '1G' -> int; anything else exits naming the option."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise SystemExit(f"{_tool()}: argument '{option}': expected a size such as 4096, 2K or 1M, got '{text}'")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def sweep(args):
    """Sequence lengths from args.minseq to args.maxseq, times args.stepfactor (or plus args.stepseq)."""
    lo, hi = parse_size(args.minseq, "-b"), parse_size(args.maxseq, "-e")
    if lo < 1 or hi < lo:
        raise SystemExit(f"{_tool()}: bad sweep -b {lo} -e {hi}")
    inc = parse_size(args.stepseq, "-i") if args.stepseq else 0
    if not inc and args.stepfactor < 2:
        raise SystemExit(f"{_tool()}: -f must be >= 2 (got {args.stepfactor}) unless -i is given")
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s = s + inc if inc else s * args.stepfactor
    return sizes


def flops(B, S, H, D, causal, pass_):
    """flash-attention's count: 4*B*S^2*H*D, halved for causal; backward 2.5x, fwd+bwd 3.5x."""
    f = 4.0 * B * S * S * H * D * (0.5 if causal else 1.0)
    return f * {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}[pass_]


def cuda_median_ms(fn, iters, warmup):
    """Median of `iters` CUDA-event timings (ms) of fn() after `warmup` untimed calls, as distattn_bench times."""
    import torch

    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn()
        stops[i].record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) for s, e in zip(starts, stops))
    return t[len(t) // 2]
