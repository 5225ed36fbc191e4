// The CUDA attention engine: flash-attention style fused forward and backward kernels.
//
// Contract: core/attn_params.h. Supported here: bf16 and fp16 inputs, head dims 64 and 128, any
// GQA ratio, any element strides with a contiguous head dim and 16-byte aligned rows, causal and
// window masks on global positions, block lists, ALiBi (exact form), accumulate mode.
// Every argument is validated before anything is launched; bad input throws distattn::Error and
// writes nothing. Work is enqueued on `stream`; the calls do not synchronise.
//
// Two forward kernels: on a Hopper GPU (compute capability 9.0, library built with sm_90a) the TMA + wgmma kernel
// takes every call it supports (bf16/fp16, head dim 128, position maps whose chunk boundaries fall on 128-row tiles;
// masks, block lists, ALiBi without block lists, accumulate mode and fp32 output included); the mma.sync kernel takes
// the rest. Both meet the same contract and tests. The environment variable DISTATTN_FORWARD_KERNEL=mma (read once per
// process; "auto" or unset: the default) forces the mma.sync kernel. The backward likewise has a Hopper kernel and an
// mma.sync kernel.
#pragma once

#include <cuda_runtime_api.h>

#include "distattn/core/attn_params.h"

namespace distattn {

// Head dims the CUDA engine has kernels for.
bool flash_supports_head_dim(int64_t head_dim);

void flash_attention_forward(const AttnParams& params, cudaStream_t stream);

// RoPE and the forward in one call: q and k are rotated IN PLACE by +theta at their global positions (params.q_pos,
// params.kv_pos; the rotation positional/rope.h defines, with `rope`'s frequencies, rotary dim, style and scale), then
// attended as flash_attention_forward does. Results are bit-identical to rope_apply_cuda on q and k followed by
// flash_attention_forward, and q and k hold the rotated values afterwards (what the backward reads; pass the same
// `rope` as AttnBwdParams::rope_grad to get dq, dk back in the unrotated frame). On the Hopper kernel with NeoX pairing
// over the whole head dim 128, no ALiBi, from 8192 rows on, the rotation runs inside the forward's launch, beside the
// attention (the producer warpgroup's idle warps; sparse/src/flash_fwd_rope.cc); otherwise, or with
// DISTATTN_ROPE_FWD=separate, the two calls run one after the other (DISTATTN_ROPE_FWD=fused: inside the launch at any
// size, for A/B runs). The fused path takes pooled scratch of 512 bytes
// per q row plus 4 * (2 + B * Hkv) bytes, freed on `stream`. q, k must not overlap each other, v or o. Throws
// distattn::Error naming the argument (the forward's checks, "rope.*" fields (validate_rope_angles), "k" / "v" / "o"
// for overlapping storage) before anything is launched or written.
void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, cudaStream_t stream);

// flash_attention_forward_rope for a caller that rotated k itself (e.g. while copying it elsewhere: the ring rotates
// its k into its send buffer and in place in one RoPE launch, RopeParams::k_copy): q alone is rotated IN PLACE by
// +theta at params.q_pos, k is read as it is. Same paths by the same rule (fused: the launch's helpers rotate q only),
// same checks and throws; bit-identical to rope_apply_cuda on q followed by flash_attention_forward.
void flash_attention_forward_rope_q(const AttnParams& params, const RopeAngles& rope, cudaStream_t stream);

// Whether flash_attention_forward_rope (and _q) would rotate inside the forward's launch for these arguments (the
// fused path: Hopper kernel, head dim 128 rotated whole, NeoX pairs, no ALiBi, self-attention positions, from 8192 q
// rows on; DISTATTN_ROPE_FWD=separate / fused override the size rule) rather than with a RoPE launch before it. Lets a
// caller that could also rotate q in a launch of its own choose. Checks nothing else; throws distattn::Error on a CUDA
// failure.
bool flash_attention_forward_rope_fuses(const AttnParams& params, const RopeAngles& rope);

// Floats that flash_attention_alibi_norms writes for q [B, Sq, Hq, D] and k [B, Skv, Hkv, D]:
// B * Hkv + B * Hq * ceil(Sq / 128).
int64_t alibi_merge_norms_floats(const TensorView& q, const TensorView& k);

// The norms of AttnParams::alibi_merge (the ALiBi cutoff across merged calls; its own_kv_norm_sq_max is the first part
// of the norms of the call that holds the own keys), one memset and one launch on `stream`:
// norms[b * Hkv + h] = max over kv rows j of ||k[b, j, h, :]||^2, then q_norm_sq_max = norms + B * Hkv with
// [(b * Hq + h) * M + m] = max over the q rows of tile m (rows [128 m, min(128 m + 128, Sq))) of ||q[b, row, h, :]||^2
// (M = ceil(Sq / 128)); fp32, +inf where a row's norm is not finite (the cutoff then cuts nothing). `norms`: device
// memory of alibi_merge_norms_floats(q, k) floats, 4-byte aligned. q, k: bf16 or fp16 CUDA views with head dim 64 or
// 128 and 16-byte aligned rows, the same batch and head dim. Throws distattn::Error naming the argument.
void flash_attention_alibi_norms(const TensorView& q, const TensorView& k, float* norms, cudaStream_t stream);

// delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d] (fp32, packed [B, H, S] like an LSE), the backward's row term,
// with the engine's own kernel: for a caller that runs several backward calls over the same rows (dilated attention's
// patterns) and passes each call its part as AttnBwdParams::delta (with the call's lse strides) instead of letting
// every call compute it again. o: bf16 / fp16 (dout's dtype) or fp32; dout: bf16 or fp16; both [B, S, H, D], D 64 or
// 128, CUDA views with 16-byte aligned rows; delta: B * H * S floats of device memory. One launch on `stream`. Throws
// distattn::Error naming the argument.
void flash_attention_backward_delta(const TensorView& o, const TensorView& dout, float* delta, cudaStream_t stream);

// Scratch: an fp32 dQ accumulator (unless dq is already fp32 with accumulate) and delta = rowsum(dO*O)
// (unless given) are taken from the library's scratch pool (core/scratch_pool.h: stream-ordered, kept mapped between
// calls) and freed on the stream.
void flash_attention_backward(const AttnBwdParams& params, cudaStream_t stream);

}  // namespace distattn
