#!/usr/bin/env python3
"""PyTorch's context parallelism (torch.distributed.tensor.experimental.context_parallel) as the peer of
`distattn_bench -o ring`: the same GLOBAL shapes sharded over the same ranks, the same timing rule, the same
JSON rows ("peer": "torch-context-parallel").

Each rank builds the FULL q, k, v, dout [B, H, S, D] from the same seed, hands them to context_parallel (which
shards them in place along dim 2 with its default head-tail load balancer: rank r keeps chunks r and 2N-1-r,
the same split as distattn's zigzag) and calls scaled_dot_product_attention under
sdpa_kernel(FLASH_ATTENTION) inside the context, which PyTorch turns into its ring attention.
PyTorch's load balancing needs is_causal=True: non-causal shapes raise there, and are reported as
"refused" rows (an "error" field, no time) instead of crashing. --no-load-balance turns PyTorch's
load balancing off (private option _cp_options.enable_load_balance) so non-causal shapes run; those rows
are named "torch-context-parallel-nolb".

Timing: CUDA events around each iteration on every rank after warm-up, median of -n iterations per rank,
then the MAX over ranks (as distattn_bench). TFLOPs per GPU: 4*B*S^2*H*D (x0.5 causal; bwd x2.5,
fwdbwd x3.5) on the global S, divided by the number of ranks.

Launch (one process per GPU): torchrun --nproc-per-node N bench/peers/torch_cp.py ...  or
  mpirun -np N python3 bench/peers/torch_cp.py ...   (reads OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK;
  MASTER_ADDR defaults to 127.0.0.1, MASTER_PORT to 29533).
Arguments mirror distattn_bench: -b -e -f -i -n -w -B -H --gqa -d --dtype --causal --pass -J.
"""
import argparse
import os
import sys
import traceback

from peer_common import (add_pass_arg, add_shape_args, cuda_median_ms, flops, kv_heads, report_head, sweep, time_pass,
                         torch_dtype, write_report)


def env_init():
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; under mpirun take Open MPI's (or PMI's) variables."""
    if "RANK" not in os.environ:
        for rk, ws, lr in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                           ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID")):
            if rk in os.environ:
                os.environ["RANK"] = os.environ[rk]
                os.environ["WORLD_SIZE"] = os.environ[ws]
                os.environ["LOCAL_RANK"] = os.environ.get(lr, os.environ[rk])
                break
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def short(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, "32K", "128K")
    add_pass_arg(p)
    p.add_argument("--rotate", default="", choices=["", "allgather", "alltoall"],
                   help="PyTorch's K|V rotation (set_rotate_method); empty: PyTorch's default")
    p.add_argument("--no-load-balance", action="store_true",
                   help="turn PyTorch's load balancing off (lets non-causal run; rows 'torch-context-parallel-nolb')")
    p.add_argument("--backend", default="flash", choices=["flash", "cudnn", "efficient"],
                   help="SDPA backend forced inside the context (default flash)")
    p.add_argument("--timeout-s", type=int, default=600, help="process-group timeout (a stuck rank ends the job)")
    p.add_argument("-J", "--json", default=None)
    args = p.parse_args()

    rank, world, local_rank = env_init()
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        raise SystemExit("torch_cp: no CUDA device (context parallelism runs on GPUs only)")
    ndev = torch.cuda.device_count()
    torch.cuda.set_device(local_rank % ndev)
    dev = torch.device("cuda", local_rank % ndev)
    import datetime as _dt
    try:
        dist.init_process_group("nccl", timeout=_dt.timedelta(seconds=args.timeout_s), device_id=dev)
    except TypeError:  # older signature without device_id
        dist.init_process_group("nccl", timeout=_dt.timedelta(seconds=args.timeout_s))

    def log(msg):
        if rank == 0:
            print(msg, flush=True)

    rows = []
    meta_err = None
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental import context_parallel
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # the API moved: report it instead of a stack trace on every rank
        meta_err = f"context_parallel API unavailable: {short(e)}"
        log(f"torch_cp: {meta_err}")

    cp_mod = None
    if meta_err is None:
        for name in ("torch.distributed.tensor.experimental._context_parallel._attention",
                     "torch.distributed.tensor.experimental._attention"):
            try:
                cp_mod = __import__(name, fromlist=["_cp_options"])
                break
            except Exception:
                cp_mod = None
        if args.rotate:
            try:
                srm = getattr(cp_mod, "set_rotate_method", None)
                if srm is None:
                    from torch.distributed.tensor.experimental._attention import set_rotate_method as srm
                srm(args.rotate)
            except Exception as e:
                log(f"torch_cp: set_rotate_method('{args.rotate}') failed ({short(e)}); PyTorch's default is used")
        if args.no_load_balance:
            if cp_mod is not None and hasattr(cp_mod, "_cp_options"):
                cp_mod._cp_options.enable_load_balance = False
            else:
                log("torch_cp: --no-load-balance: PyTorch's _cp_options not found; load balancing stays on")

    dtype = torch_dtype(args.dtype)
    B, H, D = args.batch, args.heads, args.headdim
    Hkv = kv_heads(args, "torch_cp")
    peer = "torch-context-parallel" + ("-nolb" if args.no_load_balance else "")
    sizes = sweep(args)
    backend = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}[args.backend]
    mesh = None
    if meta_err is None:
        try:
            mesh = init_device_mesh("cuda", (world,), mesh_dim_names=("cp",))
        except Exception as e:
            meta_err = f"init_device_mesh failed: {short(e)}"
            log(f"torch_cp: {meta_err}")

    def disable_dispatcher():
        """context_parallel's generator has no try/finally: after an exception inside the context, the
        patched SDPA stays installed. Undo it (private API; best effort) so later sizes start clean."""
        for fn in ("_disable_context_parallel_dispatcher_impl", "_disable_context_parallel_dispatcher"):
            if cp_mod is not None and hasattr(cp_mod, fn):
                try:
                    getattr(cp_mod, fn)()
                    return
                except Exception:
                    pass

    def max_over_ranks(x):
        t = torch.tensor([x], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def all_done(flag):
        return -max_over_ranks(-1.0 if flag else 0.0) > 0.5  # MIN over ranks of the flags

    def time_fn(fn):
        return cuda_median_ms(fn, args.iters, args.warmup_iters, args.warmup_ms, all_done, max_over_ranks)

    refused = None  # the non-causal refusal is the same at every size: tried once
    for S in sizes:
        row = {"peer": peer, "seq": S, "B": B, "H": H, "Hkv": Hkv, "D": D, "causal": args.causal, "alibi": False,
               "window": 0, "pass": args.pass_, "dtype": args.dtype, "ranks": world, "layout": "head-tail",
               "local_seq": S // world, "gbps": None, "max_err": None, "wrong": None,
               "flops": flops(B, S, H, D, args.causal, args.pass_) / world,
               "flops_global": flops(B, S, H, D, args.causal, args.pass_)}
        if meta_err is not None or refused is not None:
            row["error"] = meta_err or refused
            row["tflops"] = None
            rows.append(row)
            log(f"  {peer:>24} S={S:>7}: {row['error'][:140]}")
            continue
        if S % (2 * world):
            row["error"] = f"skipped: S={S} is not a multiple of 2*ranks={2 * world} (load-balanced sharding)"
            row["tflops"] = None
            rows.append(row)
            log(f"  {peer:>24} S={S:>7}: {row['error']}")
            continue
        local_err = None
        q = k = v = dout = None
        t_local = float("nan")
        peak = 0
        torch.manual_seed(1234 + S)  # the same FULL tensors on every rank
        try:
            q = torch.randn(B, H, S, D, device=dev, dtype=dtype)
            k = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype)
            v = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype)
            dout = torch.randn(B, H, S, D, device=dev, dtype=dtype)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            kw = {"is_causal": args.causal}
            if Hkv != H:
                kw["enable_gqa"] = True
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                with context_parallel(mesh, buffers=[q, k, v, dout], buffer_seq_dims=[2, 2, 2, 2],
                                      no_restore_buffers={q, k, v, dout}):
                    try:
                        if args.pass_ != "fwd":
                            q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
                        t_local = time_pass(args.pass_, lambda: F.scaled_dot_product_attention(q, k, v, **kw),
                                            (q, k, v), dout, time_fn)
                    except BaseException:
                        disable_dispatcher()
                        raise
            peak = torch.cuda.max_memory_allocated(dev)
        except Exception as e:
            local_err = short(e)
            if rank == 0 and os.environ.get("TORCH_CP_TRACE"):
                traceback.print_exc()
            try:
                torch.cuda.synchronize()
            except Exception:
                pass
        # Every rank learns whether any rank failed (all ranks ran the same code, so a refusal is unanimous).
        failed = max_over_ranks(1.0 if local_err else 0.0)
        if failed:
            msg = local_err or "failed on another rank"
            if not args.causal and not args.no_load_balance and "causal" in msg.lower():
                msg = "refused: " + msg
                refused = msg
            row["error"] = msg
            row["tflops"] = None
        else:
            t = max_over_ranks(t_local)
            row["time_ms"] = t
            row["time_ms_min_rank"] = -max_over_ranks(-t_local)
            row["tflops"] = row["flops"] / (t * 1e-3) / 1e12
            # torch.cuda.max_memory_allocated since the full inputs existed: it INCLUDES their full-size
            # storage (context_parallel shards with an in-place resize_, which keeps the allocation), i.e.
            # full_input_bytes more than a caller that holds only shards would need.
            row["peak_mem_bytes"] = max_over_ranks(float(peak))
            row["peak_mem_mib"] = row["peak_mem_bytes"] / (1 << 20)
            row["full_input_bytes"] = float(2 * B * S * (2 * H + 2 * Hkv) * D)
        rows.append(row)
        if "error" in row:
            log(f"  {peer:>24} S={S:>7}: {row['error'][:140]}")
        else:
            log(f"  {peer:>24} S={S:>7}: {row['time_ms']:9.4f} ms {row['tflops']:9.2f} TFLOPs/GPU "
                f"peak {row['peak_mem_mib']:.0f} MiB")
        q = k = v = dout = None  # free this size's tensors before the next
        torch.cuda.empty_cache()

    if rank == 0:
        report = report_head("torch-context-parallel", torch.cuda.get_device_name(dev))
        report.update({
            "nccl": ".".join(
                str(x) for x in torch.cuda.nccl.version()) if hasattr(torch.cuda, "nccl") else None,
            "command_line": " ".join(sys.argv), "op": "ring", "ranks": world,
            "options": {"batch": B, "heads": H, "kv_heads": Hkv, "head_dim": D, "dtype": args.dtype,
                        "causal": args.causal, "pass": args.pass_, "iters": args.iters,
                        "warmup": args.warmup_iters, "warmup_ms": args.warmup_ms, "rotate": args.rotate or "default",
                        "load_balance": not args.no_load_balance, "sdpa_backend": args.backend},
            "rows": rows,
        })
        if args.json:
            write_report(report, args.json)
            print(f"# JSON written to {args.json}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
