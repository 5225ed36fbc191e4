// flash_attention_forward_rope (sparse/flash_attention.h): RoPE on q and k in place, then the forward.
//
// Why fuse: the rotation is a memory-bound pass over q and k (read and write, 4 * B * S * (Hq + Hkv) * D bytes: 268 MB
// at S = 8K, H = 32, D = 128, ~75 us on an H200), 6-8% of an 8K causal forward when it runs before it. The forward is
// compute-bound and leaves the memory bandwidth mostly unused, and its producer warpgroup has three warps that do
// nothing (one thread issues every TMA load). With the fused path those warps rotate q and k tile by tile inside the
// forward's own launch (hopper/flash_fwd_hopper_kernel.cuh, "fused RoPE"), and a unit's loads wait until its kv group
// is rotated. Before the launch, one small kernel writes the (cos, sin) table and the job counters and rotates the
// groups the grid's first units need at once (flash_fwd_rope_prepare.cu; the forward starts as its programmatic
// dependent: flash_fwd_hopper.cu, launch_rope).
//
// Where the fused path does not apply (GPT-J pairing, partial rotary, head dim 64, ALiBi, Sq != Skv or q_pos !=
// kv_pos, a GPU or call the Hopper kernel does not take), and below kFusedMinRows rows, the call rotates with
// rope_apply_cuda and then runs flash_attention_forward: the same result bit for bit either way.
// Why a size limit: the rotation grows with S and the attention with S^2, so at small S the helpers cannot rotate the
// kv groups as fast as the units consume them, and the units wait. Measured on an H200 (bf16, H 32, causal forward,
// over the plain forward; bench/results/2026-11-23_h200_s10_positional, ..._s10_rope_prepare): 2K (B 8) fused +44%
// against separate +23%; 4K (B 1) fused +23% against +13.5%, (B 8) about equal; 8K fused +4.6-5.2% against
// +7.1-7.4%; 16K +2.9% against +3.5%.
// DISTATTN_ROPE_FWD (read once): "auto" or unset: fused where it applies from kFusedMinRows rows on; "separate": never
// fused; "fused": fused wherever it applies, any size (A/B runs); "prerotated" (diagnostic): the fused launch at any
// size, but its set-up kernel rotates every kv group, so the kernel only carries the fused path's code (no helper work,
// no waits); anything else throws naming the variable.

#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/operand_checks.h"
#include "distattn/core/scratch_pool.h"
#include "distattn/positional/rope.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_fwd_options.h"

namespace distattn {
namespace {

constexpr int64_t kFusedMinRows = 8192;

// DISTATTN_ROPE_FWD: 0 auto, 1 separate, 2 fused at any size, 3 fused with every group rotated by the set-up kernel.
int rope_fwd_mode_from_env() {
  static const int mode = env_choice("DISTATTN_ROPE_FWD", {"auto", "separate", "fused", "prerotated"}, 0);
  return mode;
}

}  // namespace

namespace detail {

bool forward_rope_fuses(const AttnParams& params, const RopeAngles& rope, RopeFwdPath path) {
  const int64_t D = params.q.head_dim();
  const int64_t rot = rope.rotary_dim == 0 ? D : rope.rotary_dim;
  bool wanted = path == RopeFwdPath::kFused || path == RopeFwdPath::kFusedPrerotated;
  if (path == RopeFwdPath::kAuto) {
    const int mode = rope_fwd_mode_from_env();
    wanted = mode >= 2 || (mode == 0 && params.q.seqlen() >= kFusedMinRows);
  }
  return wanted && D == 128 && rot == D && rope.style == static_cast<int>(RopeStyle::kNeoX) &&
         forward_runs_hopper_rope(params);
}

void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, RopeFwdPath path,
                                  cudaStream_t stream) {
  flash_attention_forward_rope(params, rope, path, /*rotate_k=*/true, stream);
}

void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, RopeFwdPath path, bool rotate_k,
                                  cudaStream_t stream) {
  // Everything is checked before q and k are touched.
  check_forward_cuda(params);
  validate_rope_angles(rope, params.q.head_dim(), "rope");
  check_device_pointer(rope.inv_freq, "rope.inv_freq");
  check_rope_in_place(params.q, params.k, params.v, params.o, rotate_k);  // q (and k) are written in place

  const bool rotate_all_before =
      path == RopeFwdPath::kFusedPrerotated || (path == RopeFwdPath::kAuto && rope_fwd_mode_from_env() == 3);
  const bool fused = forward_rope_fuses(params, rope, path);
  if (!fused) {
    RopeParams rp;
    rp.q = params.q;
    if (rotate_k) rp.k = params.k;
    rp.q_pos = params.q_pos;
    rp.k_pos = params.kv_pos;
    rp.rotary_dim = rope.rotary_dim;
    rp.style = static_cast<RopeStyle>(rope.style);
    rp.inv_freq = rope.inv_freq;
    rp.scale = rope.scale;
    rope_apply_cuda(rp, stream);  // validates, then launches (nothing is written when it throws)
    flash_attention_forward(params, stream);
    return;
  }

  // The table [S][64] float2, then the counters, in one pooled allocation.
  const int64_t n_counters = flash_fwd_hopper_rope_counters(params);
  const size_t table_bytes = static_cast<size_t>(params.q.seqlen()) * 64 * sizeof(float2);
  PooledScratch scratch(table_bytes + static_cast<size_t>(n_counters) * sizeof(uint32_t), stream);
  FlashFwdHopperRope r;
  r.inv_freq = rope.inv_freq;
  r.scale = rope.scale;
  r.table = scratch.get<float2>();
  r.counters = reinterpret_cast<uint32_t*>(scratch.get() + table_bytes);
  r.rotate_all_before = rotate_all_before;
  r.q_only = !rotate_k;
  FlashFwdOptions options;
  options.hopper_rope = &r;
  flash_attention_forward(params, options, stream);
}

}  // namespace detail

void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, cudaStream_t stream) {
  detail::flash_attention_forward_rope(params, rope, detail::RopeFwdPath::kAuto, stream);
}

void flash_attention_forward_rope_q(const AttnParams& params, const RopeAngles& rope, cudaStream_t stream) {
  detail::flash_attention_forward_rope(params, rope, detail::RopeFwdPath::kAuto, /*rotate_k=*/false, stream);
}

bool flash_attention_forward_rope_fuses(const AttnParams& params, const RopeAngles& rope) {
  return detail::forward_rope_fuses(params, rope, detail::RopeFwdPath::kAuto);
}

}  // namespace distattn
