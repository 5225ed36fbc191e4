# PyTorch SDPA (cuDNN and flash backends) at the hopper probe's shapes: B=1, H=32, D=128, bf16, random inputs,
# CUDA events, median of N after 3 warm-ups; TFLOPs = 4 S^2 H D (x0.5 causal, S(S+1)/2 pairs).
import json, sys, torch
from torch.nn.attention import sdpa_kernel, SDPBackend
import torch.nn.functional as F
rows = []
for S in (4096, 16384, 65536):
    q, k, v = (torch.randn(1, 32, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for causal in (False, True):
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            reps = 5 if S == 65536 else 20
            try:
                with sdpa_kernel(be):
                    for _ in range(3):
                        F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    ts = []
                    for _ in range(reps):
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record(); F.scaled_dot_product_attention(q, k, v, is_causal=causal); b.record()
                        torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
                ms = sorted(ts)[len(ts) // 2]
                pairs = S * (S + 1) / 2 if causal else S * S
                rows.append(dict(S=S, causal=causal, backend=name, ms=ms, tflops=4 * pairs * 32 * 128 / ms / 1e9))
            except Exception as e:  # a backend may refuse a shape
                rows.append(dict(S=S, causal=causal, backend=name, error=str(e)[:200]))
            print(json.dumps(rows[-1]), flush=True)
json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "torch_sdpa.json", "w"), indent=1)
