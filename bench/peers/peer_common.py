"""What every peer script shares with distattn_bench: sizes with K/M/G suffixes, the -b/-e/-f/-i sweep and the
flash-attention FLOP formula, the options that mirror distattn_bench's, the CUDA-event timing loop and the timing of
one pass (fwd / bwd / fwdbwd), the error text of a refused shape and the head of the JSON report. Importing it needs
no torch (the functions that use it import it when called), so it is unit-tested on machines without a GPU stack."""

import math
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


def warm_up_for_ms(fn, ms, all_done=None, max_over_ranks=None, sync=None):
    """distattn_bench's --warmup-ms: calls fn() until `ms` of wall time have passed; returns the number of calls.
    Between checks, batches of ~10 ms (from the first call's time). Several ranks: all_done(flag) -> True only when
    every rank's flag is (an all-reduce MIN) and max_over_ranks(x) -> the largest x (so that every rank runs the same
    batches and the collectives inside fn pair up). sync() waits for the GPU (default torch.cuda.synchronize)."""
    import time

    if sync is None:
        import torch

        sync = torch.cuda.synchronize
    t0 = time.perf_counter()
    fn()
    sync()
    first_ms = (time.perf_counter() - t0) * 1e3
    if max_over_ranks is not None:
        first_ms = max_over_ranks(first_ms)
    batch = int(min(10000, max(1, math.ceil(10.0 / max(first_ms, 1e-3)))))
    calls = 1
    while True:
        done = (time.perf_counter() - t0) * 1e3 >= ms
        if all_done is not None:
            done = all_done(done)
        if done:
            return calls
        for _ in range(batch):
            fn()
        sync()
        calls += batch


def cuda_median_ms(fn, iters, warmup, warmup_ms=0, all_done=None, max_over_ranks=None):
    """Median of `iters` CUDA-event timings (ms) of fn() after `warmup` untimed calls and, with warmup_ms > 0, more
    until that many ms have passed (warm_up_for_ms, whose multi-rank hooks all_done and max_over_ranks are), as
    distattn_bench times."""
    import torch

    for _ in range(warmup):
        fn()
    if warmup_ms > 0:
        warm_up_for_ms(fn, warmup_ms, all_done, max_over_ranks)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn()
        stops[i].record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) for s, e in zip(starts, stops))
    return t[len(t) // 2]


def add_shape_args(p, minseq, maxseq):
    """The options every peer mirrors from distattn_bench, in its order: -b -e -f -i (sweep; defaults `minseq`,
    `maxseq`), -n -w --warmup-ms (timing), -B -H --gqa -d --dtype (shape), --causal."""
    p.add_argument("-b", "--minseq", default=minseq)
    p.add_argument("-e", "--maxseq", default=maxseq)
    p.add_argument("-f", "--stepfactor", type=int, default=2)
    p.add_argument("-i", "--stepseq", default=None)
    p.add_argument("-n", "--iters", type=int, default=20)
    p.add_argument("-w", "--warmup_iters", type=int, default=5)
    p.add_argument("--warmup-ms", dest="warmup_ms", type=int, default=0,
                   help="after -w, warm up until this many ms have passed (distattn_bench's --warmup-ms)")
    p.add_argument("-B", "--batch", type=int, default=1)
    p.add_argument("-H", "--heads", type=int, default=32)
    p.add_argument("--gqa", type=int, default=0, help="key/value heads (0: as many as -H)")
    p.add_argument("-d", "--headdim", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--causal", action="store_true")


def add_pass_arg(p):
    """--pass fwd | bwd | fwdbwd (args.pass_), as distattn_bench's."""
    p.add_argument("--pass", dest="pass_", default="fwd", choices=["fwd", "bwd", "fwdbwd"])


def kv_heads(args, tool):
    """The key/value heads of --gqa (0: -H); exits naming `tool` and --gqa when they do not divide -H."""
    H, Hkv = args.heads, args.gqa or args.heads
    if H % Hkv:
        raise SystemExit(f"{tool}: argument '--gqa': {Hkv} does not divide -H {H}")
    return Hkv


def torch_dtype(name):
    """'bf16' -> torch.bfloat16, otherwise torch.float16 (--dtype's choices)."""
    import torch

    return torch.bfloat16 if name == "bf16" else torch.float16


def error_text(e):
    """A refused shape's "error" field: the exception's type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def time_pass(pass_, fwd, inputs, dout, time_fn):
    """time_fn's time (ms) of one pass through fwd() (which returns the output): "fwd" under no_grad; "bwd" the
    gradients w.r.t. `inputs` of one saved forward's output (retain_graph, the forward not timed); "fwdbwd" a
    forward and its gradients each iteration. `dout` is the output's gradient."""
    import torch

    if pass_ == "fwd":
        with torch.no_grad():
            return time_fn(fwd)
    if pass_ == "bwd":
        out = fwd()
        return time_fn(lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True))
    return time_fn(lambda: torch.autograd.grad(fwd(), inputs, dout))


def write_report(report, path):
    """The JSON report (indent 1) to `path` (-J); nothing without a path."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(report, f, indent=1)


def report_head(suite, device):
    """The first keys of a peer's JSON report, in order: peer_suite, device, date (UTC), torch_version, cuda."""
    import datetime

    import torch

    return {"peer_suite": suite, "device": device,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "torch_version": torch.__version__, "cuda": torch.version.cuda}
