// The engine contract: one struct describes one attention call, for every engine (CUDA and host).
//
// Shapes (each tensor with its own int64 element strides, head dim contiguous):
//   q  [B, Sq,  Hq,  D]     k, v  [B, Skv, Hkv, D]      Hq % Hkv == 0 (GQA / MQA: q head h reads kv head h / (Hq/Hkv))
//   o  [B, Sq,  Hq,  D]     lse   [B, Hq, Sq] fp32, natural log, row stride 1 (forward: lse_row_stride)
//
// Forward:    O = softmax(scale * Q K^T + bias, masked) V,   LSE = log sum_k exp(scale * q.k + bias)
//   bias = -slope_h * (pos_q - pos_k) (causal) or -slope_h * |pos_q - pos_k| (otherwise), computed from
//   the integer difference first, never with the per-row constant dropped (that would break LSE merges).
//
// Accumulate mode (ring steps, dilated patterns): `o` is an fp32 accumulator and `lse` its running
// log-sum-exp (start lse at -inf; o needs no clearing, see below). The call computes this block's
// (O_b, LSE_b) and merges:
//   L = logaddexp(lse, LSE_b);  o = o * exp(lse - L) + O_b * exp(LSE_b - L);  lse = L
// so no 16-bit round trip happens between steps; cast the accumulator once at the end.
// Rows whose running lse is -inf (nothing merged yet) never read o: callers start a fresh accumulation by
// filling lse with -inf only; o may hold anything there (garbage, NaN), it is overwritten.
//
// Final accumulate (accumulate with o_final set: the LAST step of an accumulation): the call merges exactly as
// above but writes the merged, normalised O to o_final in q's dtype (every row of it: rows where neither part
// saw a key get 0, lse -inf) and the merged LSE to lse; the fp32 o is only read (rows with finite lse), never
// written. This saves the fp32 write of the last step and the separate cast pass.
//
// Backward: dO, O, LSE in (O and LSE of the COMPLETE forward, e.g. after all ring steps); dQ, dK, dV out.
//   accumulate = true: dq, dk, dv are fp32 and this call's gradients are ADDED to them (ring steps);
//   accumulate = false: they are overwritten (dtype of q, or fp32).
// Variable-length batches (cu_seqlens) will extend this struct with optional offset arrays; every
// field here keeps its meaning.
#pragma once

#include <cstdint>
#include <string>

#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"

namespace distattn {

// Norms for AttnParams::alibi_merge, written by flash_attention_alibi_norms (sparse/flash_attention.h). The bound
// compares a far key's score with the own key's, so it needs the norms of both: this call's keys and the own keys
// (those at the q rows' own positions, in whichever merged call holds them).
struct AlibiMergeNorms {
  const float* q_norm_sq_max = nullptr;       // [B, Hq, ceil(Sq / 128)] fp32, device: max ||q row||^2 per 128-row tile
  const float* kv_norm_sq_max = nullptr;      // [B, Hkv] fp32, device: max ||k row||^2 over this call's kv rows
  const float* own_kv_norm_sq_max = nullptr;  // [B, Hkv] fp32, device: max ||k row||^2 over the own keys' rows
  bool set() const { return q_norm_sq_max != nullptr || kv_norm_sq_max != nullptr || own_kv_norm_sq_max != nullptr; }
};

struct AttnParams {
  TensorView q;  // [B, Sq, Hq, D]   bf16/fp16 (CUDA); also fp32/fp64 (host)
  TensorView k;  // [B, Skv, Hkv, D] same dtype as q
  TensorView v;  // [B, Skv, Hkv, D] same dtype as q
  TensorView o;  // [B, Sq, Hq, D]   dtype of q; fp32 in accumulate mode

  float* lse = nullptr;  // [B, Hq, Sq] fp32; may be null in plain mode (not written); required in accumulate mode
  int64_t lse_batch_stride = 0;  // elements between batches (0: Hq * Sq)
  int64_t lse_head_stride = 0;   // elements between heads (0: Sq)
  // Elements between consecutive q rows of lse (0: 1, the packed [B, Hq, Sq] layout); >= 0. Forward only (every
  // engine's forward honours it: entry (b, h, i) at lse + b*batch step + h*head step + i*row step, read and written in
  // accumulate mode); the backward requires row step 1 (validate_backward throws otherwise). Lets a caller whose q
  // rows are every r-th row of a longer sequence (dilated attention's rate-r classes) address its own [B, Hq, S] lse
  // with row stride r instead of compacting it. With a row step > 1 the head (batch) step must be at least
  // (Sq - 1) * row step + 1 when Hq > 1 (B > 1), so that no two entries coincide.
  int64_t lse_row_stride = 0;

  PositionMap q_pos;   // global position of each q row (length Sq)
  PositionMap kv_pos;  // global position of each kv row (length Skv)
  Mask mask;           // causal / window / block list, on global positions

  const float* alibi_slopes = nullptr;  // [Hq] fp32 on the engine's device, or null for no ALiBi
  float softmax_scale = 0.f;            // 0: 1 / sqrt(D)
  bool accumulate = false;              // merge into (o fp32, lse) instead of writing them
  // Accumulate mode only, optional (data null: off): [B, Sq, Hq, D] in q's dtype, the shape of o, not sharing
  // storage with q, k, v or o. Set: the merged result goes here, normalised, and o is not written (final step).
  TensorView o_final;
  // CUDA engine, scheduling only (results do not depend on it): a persistent launch of the Hopper forward uses at
  // most this many CTAs (0: one per SM), so calls enqueued on different streams at once can share the GPU from
  // their start instead of the later ones waiting for the first one's CTAs to finish. >= 0.
  int max_ctas = 0;
  // CUDA engine, scheduling only: the Hopper forward runs persistently (one CTA per SM walking the work units, every SM
  // held until the launch ends) when q has at most this many rows; -1: automatic (8192 in plain mode, 4096 in
  // accumulate mode). A caller whose communication kernels must find free SMs during the call (NCCL) keeps it low; one
  // whose exchanges run on the copy engine may raise it. >= -1.
  int64_t persistent_max_rows = -1;
  // CUDA engine, optional (both null: off): the ALiBi cutoff across merged calls. A caller that merges this call's (o,
  // lse) with other calls' by their LSE (accumulate mode, or its own merge) and guarantees that every q row's own
  // position (a key with pos_k == pos_q: bias 0, visible under every dense band) is among the keys of one of the
  // merged calls -- the ring's own step -- passes the norms of q, of this call's k and of the own keys
  // (flash_attention_alibi_norms, flash_attention.h). The Hopper forward then skips the kv tiles whose every score
  // lies more than 176 log2 units (a factor 2^-176) below that own key's score, by the kernels' ALiBi bound (slope *
  // |pos_q - pos_k| against |q| (|k| + |k_own|) scale, with the larger of the two key norms for both): the merged
  // result equals the unskipped one within fp32 rounding (not bit for bit). Requires
  // ALiBi and no block list; other engines and kernels compute every pair. Where this call alone already holds its
  // own keys (q_pos == kv_pos as one chunk) the exact single-call cutoff applies instead, with these norms.
  AlibiMergeNorms alibi_merge;

  float scale() const;             // softmax_scale or its default
  int64_t lse_batch_step() const;  // resolved lse_batch_stride
  int64_t lse_head_step() const;   // resolved lse_head_stride
  int64_t lse_row_step() const;    // resolved lse_row_stride (0 -> 1)
};

// The rotation of a RoPE (positional/rope.h defines it) in the form the fused attention calls take:
// - AttnBwdParams::rope_grad (the inverse of the gradients, below);
// - flash_attention_forward_rope (sparse/flash_attention.h): q and k rotated by +theta in place, then attended.
// validate_rope_angles checks the fields.
//
// Inverse RoPE of the gradients, fused into the CUDA backward (positional/rope.h defines the rotation).
// When AttnBwdParams::rope_grad points at one of these, dq and dk come out of the backward rotated back by
// -theta, exactly what rope_apply_cuda(..., inverse = true) would produce on the plain backward's dq and dk
// (same fp32 angle float(pos) * inv_freq[i], same accurate sincosf, same fmaf expressions, same rounding:
// the 16-bit gradient is rounded, rotated in fp32, rounded again; bit-identical). The positions are the
// backward's own q_pos (for dq) and kv_pos (for dk): global positions. dv is not touched.
// CUDA engine only, plain mode only (accumulate = false); the host engine rejects it (apply rope_apply_host).
struct RopeAngles {
  const float* inv_freq = nullptr;  // [rotary_dim / 2] fp32 on the engine's device (make_rope_frequencies)
  int64_t rotary_dim = 0;           // dims rotated: even, <= D; 0: D
  int style = 0;                    // distattn::RopeStyle value: 0 NeoX (x[i], x[i + rot/2]), 1 GPT-J (x[2i], x[2i+1])
  float scale = 1.0f;               // cos/sin multiplier (RopeFrequencies::scale; YaRN), finite
};
using RopeGradParams = RopeAngles;  // the name the backward's field was introduced with

struct AttnBwdParams {
  AttnParams fwd;   // q, k, v, o (the complete forward's output), lse (its final LSE), positions, mask, ALiBi, scale
  TensorView dout;  // [B, Sq, Hq, D]   dtype of q
  TensorView dq;    // [B, Sq, Hq, D]   dtype of q or fp32 (fp32 required when accumulate)
  TensorView dk;    // [B, Skv, Hkv, D] dtype of q or fp32 (fp32 required when accumulate)
  TensorView dv;    // [B, Skv, Hkv, D] dtype of q or fp32 (fp32 required when accumulate)
  bool accumulate = false;  // add into fp32 dq/dk/dv instead of overwriting
  // Accumulate mode only: dk and dv are WRITTEN (every row, zeros where no query sees a key) instead of added to,
  // while dq still accumulates. For calls whose dK, dV go into a fresh buffer each time -- a ring step computes its
  // dK|dV into a scratch that the ring then adds into the travelling accumulator -- so that buffer needs no clearing.
  bool overwrite_dk_dv = false;
  const float* delta = nullptr;  // optional rowsum(dO * O) [B, Hq, Sq] fp32 with the lse strides; null: computed
  const RopeGradParams* rope_grad = nullptr;  // optional: dq, dk rotated back by the inverse RoPE (see above)
};

// Checks everything an engine needs before it touches memory: tensor ranks and shapes against each
// other, dtypes, head-dim contiguity, GQA ratio, position maps (lengths equal Sq / Skv, range),
// window >= 0, block-list dimensions, lse presence in accumulate mode. `engine` selects the dtype
// rules (the CUDA engine takes bf16/fp16 only) and that every tensor's `device` matches.
// Throws distattn::Error naming the argument. Engine-specific limits (supported head dims,
// alignment, pointer residency) are checked by the engine on top of this.
void validate_forward(const AttnParams& p, Device engine);
// The fields of a RopeAngles for head dim `head_dim`; errors name `argument` + ".inv_freq" etc. (inv_freq non-null,
// rotary_dim even and in [0, head_dim] (0: head_dim), style 0 or 1, scale finite). inv_freq is not dereferenced.
void validate_rope_angles(const RopeAngles& rope, int64_t head_dim, const std::string& argument);
void validate_backward(const AttnBwdParams& p, Device engine);

}  // namespace distattn
