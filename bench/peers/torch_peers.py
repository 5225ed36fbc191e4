#!/usr/bin/env python3
"""The PyTorch peers of distattn_bench: the same shapes, the same timing rule, the same JSON rows.

  dense: scaled_dot_product_attention with each backend forced through torch.nn.attention.sdpa_kernel
         (flash, cudnn, efficient), forward / backward / fwd+bwd, causal or not, GQA via enable_gqa;
         --alibi: ALiBi the way PyTorch users do it, an additive float bias tensor [1, H, S, S] (causal
         folded in as -inf), which only the efficient and math backends (and cuDNN where it accepts a
         bias) can run.
  rope:  rotate-half RoPE (HF style, cos/sin cached in the input dtype) on q and k, eager and
         torch.compile; --style gptj uses the interleaved pairing.

Timing: CUDA events around each iteration after warm-up, median (upper median for an even count) of -n
iterations; inputs random normal. TFLOPs: 4*B*S^2*H*D, x0.5 causal, bwd x2.5, fwdbwd x3.5 (as
distattn_bench). GB/s: 2*B*S*(H+Hkv)*D*elem (bytes read + written of q and k; cos/sin not counted).
A peer that refuses a shape is reported with an "error" field instead of a time.

Arguments mirror distattn_bench (-b -e -f -i -n -w -B -H --gqa -d --dtype --causal --alibi --pass -o
--rotary-dim --style -J). Example:
  python3 bench/peers/torch_peers.py -o dense -b 2K -e 32K -f 2 -H 32 -d 128 --causal -J peers.json
"""
import argparse
import sys

from peer_common import (add_pass_arg, add_shape_args, cuda_median_ms, error_text, flops, kv_heads, parse_size,
                         report_head, sweep, time_pass, torch_dtype, write_report)


def alibi_slopes(n):
    """Press et al.: 2^(-8(h+1)/n) for a power of two; otherwise the closest power of two's slopes,
    then every other slope of the 2m-head rule (the same rule distattn's positional/alibi.h uses)."""
    def pow2(m):
        return [2.0 ** (-8.0 * (h + 1) / m) for h in range(m)]
    if n & (n - 1) == 0:
        return pow2(n)
    m = 1 << (n.bit_length() - 1)
    return pow2(m) + pow2(2 * m)[0::2][: n - m]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--op", default="dense", choices=["dense", "rope"])
    add_shape_args(p, "2K", "32K")
    p.add_argument("--alibi", action="store_true", help="dense: additive ALiBi bias tensor (efficient/math/cudnn)")
    p.add_argument("--alibi-max-seq", default="8K", help="largest S for the bias-tensor peers (memory: H*S^2*elem)")
    add_pass_arg(p)
    p.add_argument("--rotary-dim", type=int, default=0)
    p.add_argument("--style", default="neox", choices=["neox", "gptj"])
    p.add_argument("--peers", default="", help="comma list to run a subset (dense: flash,cudnn,efficient,math; "
                   "rope: eager,compile)")
    p.add_argument("-J", "--json", default=None)
    args = p.parse_args()

    import torch  # imported late so --help works without a GPU stack

    if not torch.cuda.is_available():
        raise SystemExit("torch_peers: no CUDA device (the peers run on the GPU only)")
    dev = torch.device("cuda")
    dtype = torch_dtype(args.dtype)
    B, H, D = args.batch, args.heads, args.headdim
    Hkv = kv_heads(args, "torch_peers")
    sizes = sweep(args)
    wanted = set(x for x in args.peers.split(",") if x)

    def time_fn(fn):
        return cuda_median_ms(fn, args.iters, args.warmup_iters, args.warmup_ms)

    rows = []

    def emit(row):
        rows.append(row)
        rate = row.get("tflops") if row.get("tflops") is not None else row.get("gbps")
        unit = "TFLOPs" if row.get("tflops") is not None else "GB/s"
        if "error" in row:
            print(f"  {row['peer']:>16} S={row['seq']:>7}: {row['error'][:120]}", flush=True)
        else:
            print(f"  {row['peer']:>16} S={row['seq']:>7}: {row['time_ms']:9.4f} ms {rate:9.2f} {unit}", flush=True)

    if args.op == "dense":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.functional as F

        backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                    "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        if args.alibi:
            names = ["efficient", "cudnn", "math"]
            alibi_max = parse_size(args.alibi_max_seq, "--alibi-max-seq")
        else:
            names = ["flash", "cudnn", "efficient"]
        if wanted:
            names = [n for n in names if n in wanted]
        slopes = torch.tensor(alibi_slopes(H), device=dev, dtype=torch.float32)
        for S in sizes:
            torch.manual_seed(1234 + S)
            # (B, H, S, D) contiguous: the layout SDPA users pass.
            q = torch.randn(B, H, S, D, device=dev, dtype=dtype, requires_grad=True)
            k = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype, requires_grad=True)
            v = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype, requires_grad=True)
            dout = torch.randn(B, H, S, D, device=dev, dtype=dtype)
            bias = None
            if args.alibi and S <= alibi_max:
                pos = torch.arange(S, device=dev)
                dist = (pos[:, None] - pos[None, :]).to(torch.float32)  # pos_q - pos_k
                if args.causal:
                    b = -slopes[:, None, None] * dist[None]
                    b = b.masked_fill(dist[None] < 0, float("-inf"))
                else:
                    b = -slopes[:, None, None] * dist.abs()[None]
                bias = b.to(dtype).unsqueeze(0)  # [1, H, S, S]
                del dist, b
            for name in names:
                row = {"peer": ("torch-alibi-" if args.alibi else "torch-") + name, "seq": S, "B": B, "H": H,
                       "Hkv": Hkv, "D": D, "causal": args.causal, "alibi": args.alibi, "pass": args.pass_,
                       "dtype": args.dtype, "gbps": None, "max_err": None, "wrong": None}
                if args.alibi and bias is None:
                    row["error"] = f"skipped: bias tensor [1,{H},{S},{S}] above --alibi-max-seq"
                    emit(row)
                    continue
                kw = {"enable_gqa": Hkv != H}
                if bias is not None:
                    kw["attn_mask"] = bias
                else:
                    kw["is_causal"] = args.causal

                def fwd():
                    return F.scaled_dot_product_attention(q, k, v, **kw)

                try:
                    with sdpa_kernel([backends[name]]):
                        t = time_pass(args.pass_, fwd, (q, k, v), dout, time_fn)
                    row["time_ms"] = t
                    row["tflops"] = flops(B, S, H, D, args.causal, args.pass_) / (t * 1e-3) / 1e12
                except Exception as e:  # a backend refusing a shape is a result, not a crash
                    row["error"] = error_text(e)
                    row["tflops"] = None
                    torch.cuda.synchronize()
                emit(row)
            del q, k, v, dout, bias
            torch.cuda.empty_cache()
    else:
        rot = args.rotary_dim or D
        if rot % 2 or rot > D:
            raise SystemExit("torch_peers: argument '--rotary-dim': must be even and <= head dim")
        gptj = args.style == "gptj"

        def rotate_half(x):
            x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
            return torch.cat((-x2, x1), dim=-1)

        def rotate_every_two(x):
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack((-x2, x1), dim=-1).flatten(-2)

        def apply_rope(q, k, cos, sin):
            rot_fn = rotate_every_two if gptj else rotate_half
            if rot == D:
                return q * cos + rot_fn(q) * sin, k * cos + rot_fn(k) * sin
            qr, qp = q[..., :rot], q[..., rot:]
            kr, kp = k[..., :rot], k[..., rot:]
            return (torch.cat((qr * cos + rot_fn(qr) * sin, qp), -1),
                    torch.cat((kr * cos + rot_fn(kr) * sin, kp), -1))

        impls = [("torch-rope-eager", apply_rope), ("torch-rope-compile", torch.compile(apply_rope, dynamic=False))]
        if wanted:
            impls = [(n, f) for n, f in impls if n.split("-")[-1] in wanted]
        elem = 2
        for S in sizes:
            torch.manual_seed(4321 + S)
            q = torch.randn(B, H, S, D, device=dev, dtype=dtype)  # HF layout (B, H, S, D)
            k = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype)
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, device=dev, dtype=torch.float32) / rot))
            ang = torch.arange(S, device=dev, dtype=torch.float32)[:, None] * inv_freq[None]  # [S, rot/2]
            emb = torch.repeat_interleave(ang, 2, dim=-1) if gptj else torch.cat((ang, ang), dim=-1)
            cos, sin = emb.cos().to(dtype)[None, None], emb.sin().to(dtype)[None, None]  # cached, like HF
            nbytes = 2.0 * B * S * (H + Hkv) * D * elem
            for name, fn in impls:
                row = {"peer": name, "seq": S, "B": B, "H": H, "Hkv": Hkv, "D": D, "hidden": H * D,
                       "rotary_dim": rot, "style": args.style, "dtype": args.dtype, "tflops": None,
                       "max_err": None, "wrong": None, "bytes": nbytes}
                try:
                    t = time_fn(lambda: fn(q, k, cos, sin))
                    row["time_ms"] = t
                    row["gbps"] = nbytes / (t * 1e-3) / 1e9
                except Exception as e:
                    row["error"] = error_text(e)
                    row["gbps"] = None
                emit(row)
            del q, k
            torch.cuda.empty_cache()

    report = report_head("torch", torch.cuda.get_device_name())
    report.update({
        "cudnn": torch.backends.cudnn.version(), "command_line": " ".join(sys.argv), "op": args.op,
        "options": {"batch": B, "heads": H, "kv_heads": Hkv, "head_dim": D, "dtype": args.dtype,
                    "causal": args.causal, "alibi": args.alibi, "pass": args.pass_, "iters": args.iters,
                    "warmup": args.warmup_iters, "warmup_ms": args.warmup_ms, "rotary_dim": args.rotary_dim,
                    "style": args.style},
        "rows": rows,
    })
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
