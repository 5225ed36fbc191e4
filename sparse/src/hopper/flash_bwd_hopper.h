// Hopper (sm_90a) fast path of the CUDA backward attention: TMA + wgmma, warp-specialised
// (hopper/flash_bwd_hopper_kernel.cuh). The dispatcher (flash_bwd_api.cu) calls flash_bwd_hopper_supported() and,
// when it says yes, flash_bwd_hopper() instead of the mma.sync kernel, with the same scratch (delta, fp32 dQ
// accumulator) and the same preprocess / dQ conversion kernels around it.
//
// Shapes: q, o, dout, dq [B, Sq, Hq, 128]; k, v, dk, dv [B, Skv, Hkv, 128]; lse, delta [B, Hq, Sq] fp32. Same results
// contract as flash_attention_backward (core/attn_params.h).
#pragma once

#include <cuda_runtime_api.h>

#include "../flash_bwd_params.h"
#include "distattn/core/attn_params.h"

namespace distattn {

// True when the Hopper backward kernel handles `p` on CUDA device `device`: the device is compute capability 9.0
// and the library holds sm_90a code for the kernel; q (k, v, dout) bf16 or fp16 with head dim 128, Hq a multiple of
// Hkv; dk, dv in q's dtype or fp32; no ALiBi (that stays on the mma.sync kernel, with its exact cutoff); block lists
// (Mask::blocks, device arrays with the column lists) walked per kv tile; q_pos and kv_pos
// of up to 8 chunks each whose boundaries (the sequence end excepted) are multiples of 128 rows; any causal / window
// band; q, k, v, dout with positive row / head / batch strides below 2^40 bytes; Sq, Skv >= 1, Hkv and B <= 65535.
// Otherwise false (nothing throws for an unsupported case; CUDA errors while querying the device throw
// distattn::Error).
bool flash_bwd_hopper_supported(const AttnBwdParams& p, int device);

// True when the Hopper kernel's epilogue rotates dK back itself for this inverse RoPE (`rope` validated, head dim
// 128): GPT-J, or NeoX with (rotary_dim / 2) % 8 == 0. Otherwise the caller rotates dk with a separate pass.
bool flash_bwd_hopper_fuses_rope_dk(const RopeGradParams& rope);

// Runs the backward on `stream`: the delta preprocess (when kp.delta_out is set), the Hopper main kernel (dK, dV
// written or added; dQ * scale added into kp.dq_accum), and the dQ conversion (when kp.dq_accum != kp.dq). `p` must
// have passed validate_backward, the CUDA operand checks of flash_attention_backward and
// flash_bwd_hopper_supported() on the current device; `kp` is the mma.sync parameter set flash_bwd_api.cu built for
// the same call (scratch included, the dQ accumulator zeroed or dq itself). With p.rope_grad set and
// kp.rope_dk_epilogue (flash_bwd_hopper_fuses_rope_dk() and the options agreed), dk comes out rotated back (the dQ
// conversion rotates dq when kp says so). Throws distattn::Error when a TMA descriptor cannot be built (argument "q",
// "k", "v" or "dout") or a CUDA call fails.
void flash_bwd_hopper(const AttnBwdParams& p, const kernels::FlashBwdParams& kp, cudaStream_t stream);

}  // namespace distattn
