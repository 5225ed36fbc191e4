#!/usr/bin/env python3
"""The FlexAttention peer of distattn_bench -o sparse: the same patterns, shapes, timing rule and JSON rows.

  torch.nn.attention.flex_attention compiled once (torch.compile(flex_attention)), the block mask built once
  per size with create_block_mask (BLOCK_SIZE 128, the layout block of distattn) outside the timed region,
  inputs (B, H, S, D) contiguous, GQA through enable_gqa.

Patterns (--sparse-pattern, as distattn_bench; positions 0..S-1, Sq = Skv = S):
  block-diagonal  q_idx // seg == kv_idx // seg                      (--sparse-block seg; --causal inside)
  sliding-window  0 <= q_idx - kv_idx < W with --causal, else |q_idx - kv_idx| < W   (--window W)
  strided         qb = q_idx // 128, kb = kv_idx // 128: (qb - kb) mod (--sparse-block / 128) == 0 or
                  |qb - kb| <= 1; --causal adds kv_idx <= q_idx
bigbird and random are not run here: their blocks are distattn's seeded draws (std::mt19937_64), which this
script does not reproduce; such rows carry an "error" field.

Timing: CUDA events around each iteration after warm-up, median (upper median for an even count) of -n
iterations. Useful TFLOPs: 4 * B * H * D * (visible pairs) / time, x2.5 bwd, x3.5 fwd+bwd -- the visible
pairs counted exactly here (visible_pairs()), by the same rule as distattn's BlockSparseAttention::visible_pairs.

Example:
  python3 bench/peers/flex_peers.py -b 16K -e 64K -f 4 -H 32 -d 128 --sparse-pattern sliding-window \\
      --window 2048 --causal -J flex.json
"""
import argparse
import sys

from peer_common import (add_pass_arg, add_shape_args, cuda_median_ms, error_text, kv_heads, parse_size, report_head,
                         sweep, time_pass, torch_dtype, write_report)

LAYOUT_BLOCK = 128
PATTERNS = ("block-diagonal", "sliding-window", "strided", "bigbird", "random")
RUNNABLE = ("block-diagonal", "sliding-window", "strided")
PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}


def band_pairs(S, lo, hi):
    """Pairs (i, j) in [0, S)^2 with lo <= i - j <= hi: diagonal d holds S - |d| pairs."""
    lo, hi = max(lo, -(S - 1)), min(hi, S - 1)
    return sum(S - abs(d) for d in range(lo, hi + 1)) if lo <= hi else 0


def _rows(b, S):
    """Rows of 128-block b of an S-row sequence (the last block may be short)."""
    return min(LAYOUT_BLOCK, S - b * LAYOUT_BLOCK)


def visible_pairs(pattern, S, block=2048, window=0, causal=False):
    """Exact visible (q, kv) pairs of one (batch, head) for the patterns run here."""
    if pattern == "block-diagonal":
        if block < 1:
            raise ValueError("block-diagonal: --sparse-block must be >= 1")
        total = 0
        for start in range(0, S, block):
            n = min(block, S - start)
            total += n * (n + 1) // 2 if causal else n * n
        return total
    if pattern == "sliding-window":
        if window < 1:
            raise ValueError("sliding-window: --window must be >= 1")
        return band_pairs(S, 0, window - 1) if causal else band_pairs(S, -(window - 1), window - 1)
    if pattern == "strided":
        stride = block // LAYOUT_BLOCK
        if stride < 1 or block % LAYOUT_BLOCK:
            raise ValueError("strided: --sparse-block must be a positive multiple of 128")
        nb = (S + LAYOUT_BLOCK - 1) // LAYOUT_BLOCK
        total = 0
        for qb in range(nb):
            rq = _rows(qb, S)
            for kb in range(nb):
                if (qb - kb) % stride and abs(qb - kb) > 1:
                    continue
                if not causal:
                    total += rq * _rows(kb, S)
                elif kb < qb:
                    total += rq * _rows(kb, S)
                elif kb == qb:
                    total += rq * (rq + 1) // 2  # square diagonal block (Sq == Skv): the causal triangle
        return total
    raise ValueError(f"pattern '{pattern}' is not run by the FlexAttention peer")


def pattern_label(pattern, block, window, causal, sparse_random=3):
    """The label distattn_bench prints in its 'pattern' column."""
    label = {"block-diagonal": f"bdiag{block}", "sliding-window": f"win{window}", "strided": f"stride{block}",
             "bigbird": f"bigbird{sparse_random}", "random": f"random{sparse_random}"}[pattern]
    return label + ("-c" if causal else "")


def useful_flops(B, H, D, pairs, pass_):
    return 4.0 * B * H * D * pairs * PASS_FACTOR[pass_]


def make_mask_mod(pattern, block, window, causal):
    """The flex mask_mod of a pattern (tensor arithmetic only: it is traced by create_block_mask)."""
    if pattern == "block-diagonal":
        def mod(b, h, q_idx, kv_idx):
            same = (q_idx // block) == (kv_idx // block)
            return same & (kv_idx <= q_idx) if causal else same
    elif pattern == "sliding-window":
        def mod(b, h, q_idx, kv_idx):
            d = q_idx - kv_idx
            return (d >= 0) & (d < window) if causal else (d < window) & (d > -window)
    elif pattern == "strided":
        stride = block // LAYOUT_BLOCK

        def mod(b, h, q_idx, kv_idx):
            db = q_idx // LAYOUT_BLOCK - kv_idx // LAYOUT_BLOCK
            listed = ((db % stride) == 0) | ((db <= 1) & (db >= -1))
            return listed & (kv_idx <= q_idx) if causal else listed
    else:
        raise ValueError(f"pattern '{pattern}' is not run by the FlexAttention peer")
    return mod


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, "16K", "64K")
    p.add_argument("--window", default="0")
    add_pass_arg(p)
    p.add_argument("--sparse-pattern", default="block-diagonal", choices=PATTERNS)
    p.add_argument("--sparse-block", default="2048")
    p.add_argument("--sparse-random", type=int, default=3)
    p.add_argument("-J", "--json", default=None)
    args = p.parse_args(argv)
    args.window = parse_size(args.window, "--window")
    args.sparse_block = parse_size(args.sparse_block, "--sparse-block")
    if args.sparse_pattern == "sliding-window" and args.window < 1:
        raise SystemExit("flex_peers: argument '--window': sliding-window needs --window W > 0")
    if args.sparse_pattern != "sliding-window" and args.window:
        raise SystemExit("flex_peers: argument '--window': applies to --sparse-pattern sliding-window only")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch  # imported late: the pure parts above are unit-tested without torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if not torch.cuda.is_available():
        raise SystemExit("flex_peers: no CUDA device (the peer runs on the GPU only)")
    dev = torch.device("cuda")
    dtype = torch_dtype(args.dtype)
    B, H, D = args.batch, args.heads, args.headdim
    Hkv = kv_heads(args, "flex_peers")
    sizes = sweep(args)
    flex = torch.compile(flex_attention, dynamic=False)
    label = pattern_label(args.sparse_pattern, args.sparse_block, args.window, args.causal, args.sparse_random)

    def time_fn(fn):
        return cuda_median_ms(fn, args.iters, args.warmup_iters, args.warmup_ms)

    rows = []
    for S in sizes:
        row = {"peer": "flex-compiled", "seq": S, "B": B, "H": H, "Hkv": Hkv, "D": D, "causal": args.causal,
               "window": args.window, "pass": args.pass_, "dtype": args.dtype, "pattern": args.sparse_pattern,
               "pattern_label": label, "sparse_block": args.sparse_block, "gbps": None, "max_err": None,
               "wrong": None}
        if args.sparse_pattern not in RUNNABLE:
            row["error"] = "not run: the pattern's blocks are distattn's seeded draws"
            row["tflops"] = None
            rows.append(row)
            print(f"  {'flex-compiled':>16} S={S:>7}: {row['error']}", flush=True)
            continue
        pairs = visible_pairs(args.sparse_pattern, S, args.sparse_block, args.window, args.causal)
        row["visible_pairs"] = pairs
        row["dense_fraction"] = pairs / float(S * S)
        try:
            torch.manual_seed(1234 + S)
            q = torch.randn(B, H, S, D, device=dev, dtype=dtype, requires_grad=True)
            k = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype, requires_grad=True)
            v = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype, requires_grad=True)
            dout = torch.randn(B, H, S, D, device=dev, dtype=dtype)
            # Built once per size, outside the timed region (as a model builds it once).
            bm = create_block_mask(make_mask_mod(args.sparse_pattern, args.sparse_block, args.window, args.causal),
                                   B=None, H=None, Q_LEN=S, KV_LEN=S, device=dev, BLOCK_SIZE=LAYOUT_BLOCK)
            kw = {"block_mask": bm, "enable_gqa": Hkv != H}

            def fwd():
                return flex(q, k, v, **kw)

            t = time_pass(args.pass_, fwd, (q, k, v), dout, time_fn)
            row["time_ms"] = t
            row["tflops"] = useful_flops(B, H, D, pairs, args.pass_) / (t * 1e-3) / 1e12
            row["block_mask_sparsity_pct"] = float(bm.sparsity())
            del q, k, v, dout, bm
        except Exception as e:  # a refusal is a result, not a crash
            row["error"] = error_text(e)
            row["tflops"] = None
            torch.cuda.synchronize()
        torch.cuda.empty_cache()
        rows.append(row)
        if "error" in row:
            print(f"  {'flex-compiled':>16} S={S:>7}: {row['error'][:160]}", flush=True)
        else:
            print(f"  {'flex-compiled':>16} S={S:>7} {label}: {row['time_ms']:9.4f} ms {row['tflops']:9.2f} "
                  f"useful TFLOPs ({100 * row['dense_fraction']:.3f}% of dense pairs)", flush=True)

    report = report_head("flex", torch.cuda.get_device_name())
    report.update({
        "command_line": " ".join(sys.argv), "op": "sparse",
        "options": {"batch": B, "heads": H, "kv_heads": Hkv, "head_dim": D, "dtype": args.dtype,
                    "causal": args.causal, "window": args.window, "pass": args.pass_, "iters": args.iters,
                    "warmup": args.warmup_iters, "warmup_ms": args.warmup_ms, "sparse_pattern": args.sparse_pattern,
                    "sparse_block": args.sparse_block, "sparse_random": args.sparse_random},
        "rows": rows,
    })
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
