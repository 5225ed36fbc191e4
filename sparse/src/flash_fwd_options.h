// Internal switches of the CUDA forward (not part of the public contract): tests and timing programs use them
// to run the same kernel with and without an optimisation and compare the results bit for bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/attn_params.h"
#include "hopper/flash_fwd_hopper.h"

namespace distattn {
namespace detail {

struct FlashFwdOptions {
  // ALiBi underflow cutoff (flash_fwd_kernel.cuh, "ALiBi cutoff"): skip kv tiles whose exp2 is exactly 0 for
  // every element. Applied only where its premises hold (no block list, q_pos == kv_pos as one chunk, ALiBi
  // on); non-causal calls then also walk their tiles diagonal-first. false: the kernel as without ALiBi cutoff.
  bool alibi_cutoff = true;
  // false (with alibi_cutoff): the same walk order and set-up, but no tile skipped: the reference that the
  // cutoff must match bit for bit (non-causal calls walk in another order when alibi_cutoff is false).
  bool alibi_cutoff_skip = true;
  // false: never the Hopper kernel (hopper/flash_fwd_hopper.h), always the mma.sync kernel: tests that compare the
  // two, and the mma.sync kernel's own tests on a Hopper GPU.
  bool allow_hopper = true;
  // The Hopper kernel applies its ALiBi cutoff (with alibi_cutoff, where the premises hold) from this many keys on; -1:
  // the default (DISTATTN_HOPPER_CUTOFF_MIN_KV, else 4096: below, the pre-pass costs about what it saves). Tests set 0.
  int64_t hopper_cutoff_min_kv = -1;
  // Fused RoPE (flash_attention_forward_rope): the Hopper kernel rotates q, k in place with these tables (the caller
  // checked forward_runs_hopper_rope; no ALiBi). Null: a plain forward.
  const FlashFwdHopperRope* hopper_rope = nullptr;
};

// Every check flash_attention_forward makes before it launches anything (validate_forward on the CUDA engine, device
// pointers, head dim, the CUDA engine's size limits). Throws distattn::Error naming the argument.
void check_forward_cuda(const AttnParams& params);

// Which path flash_attention_forward_rope takes. kAuto: the public call's rule (fused where it applies, from 8192 rows
// on; DISTATTN_ROPE_FWD=separate / fused override it); kFused: fused wherever it applies, any size, whatever the
// environment (the tests); kSeparate: rotate with rope_apply_cuda, then attend (the tests' reference);
// kFusedPrerotated: the fused launch wherever it applies, but its set-up kernel rotates every kv group, so the kernel
// has nothing to rotate or wait for (the diagnostic DISTATTN_ROPE_FWD=prerotated: the fused kernel's own cost).
enum class RopeFwdPath { kAuto, kFused, kSeparate, kFusedPrerotated };

// flash_attention_forward_rope (distattn/sparse/flash_attention.h) on the given path. Same checks and throws.
void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, RopeFwdPath path,
                                  cudaStream_t stream);
// The same with `rotate_k` false: q alone is rotated in place, k is taken as it is (already rotated by the caller at
// kv_pos; the ring rotates its k while packing the send buffer). Fused or not by the same rule; the fused launch's
// helpers then rotate q only (FlashFwdHopperRope::q_only). Bit-identical to rope_apply_cuda on q followed by
// flash_attention_forward.
void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, RopeFwdPath path, bool rotate_k,
                                  cudaStream_t stream);
// Whether flash_attention_forward_rope on `path` rotates inside the forward's launch (fused) rather than with a
// RoPE launch before it: kFused / kFusedPrerotated, or kAuto from kFusedMinRows rows on (DISTATTN_ROPE_FWD), AND head
// dim 128 rotated whole with NeoX pairs AND forward_runs_hopper_rope. Throws distattn::Error on a CUDA failure (and
// for a bad DISTATTN_ROPE_FWD).
bool forward_rope_fuses(const AttnParams& params, const RopeAngles& rope, RopeFwdPath path);

// Whether flash_attention_forward with FlashFwdOptions::hopper_rope can run `params` on the current device: the
// Hopper kernel takes it (DISTATTN_FORWARD_KERNEL is not "mma") and flash_fwd_hopper_rope_supported. Throws
// distattn::Error on a CUDA failure.
bool forward_runs_hopper_rope(const AttnParams& params);

// flash_attention_forward (distattn/sparse/flash_attention.h) with explicit options; same shapes, same throws.
// The ALiBi cutoff takes B * Hkv floats of scratch from cudaMallocAsync on `stream` (freed on it).
void flash_attention_forward(const AttnParams& params, const FlashFwdOptions& options, cudaStream_t stream);

}  // namespace detail
}  // namespace distattn
