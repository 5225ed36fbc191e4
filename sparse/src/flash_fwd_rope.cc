// flash_attention_forward_rope (sparse/flash_attention.h): RoPE on q and k in place, then the forward.
//
// Why fuse: the rotation is a memory-bound pass over q and k (read and write, 4 * B * S * (Hq + Hkv) * D bytes: 268 MB
// at S = 8K, H = 32, D = 128, ~75 us on an H200), 6-8% of an 8K causal forward when it runs before it. The forward is
// compute-bound and leaves the memory bandwidth mostly unused, and its producer warpgroup has three warps that do
// nothing (one thread issues every TMA load). With the fused path those warps rotate q and k tile by tile inside the
// forward's own launch (hopper/flash_fwd_hopper_kernel.cuh, "fused RoPE"), and a unit's loads wait until its kv group
// is rotated. Before the launch, a small kernel writes the (cos, sin) table and the job counters, and a plain RoPE
// launch rotates the groups the grid's first units need at once (flash_fwd_hopper.cu, launch_rope).
//
// Where the fused path does not apply (GPT-J pairing, partial rotary, head dim 64, ALiBi, Sq != Skv or q_pos !=
// kv_pos, a GPU or call the Hopper kernel does not take) the call rotates with rope_apply_cuda and then runs
// flash_attention_forward: the same result bit for bit either way. DISTATTN_ROPE_FWD=separate (read once; "auto" or
// unset: fused where it applies; anything else throws naming the variable) always takes the separate path, for A/B
// timings.
#include <cuda_runtime_api.h>

#include <algorithm>
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

bool rope_fwd_separate_from_env() {
  static const bool separate = env_choice("DISTATTN_ROPE_FWD", {"auto", "separate"}, 0) == 1;
  return separate;
}

// [first byte, one past the last byte) a view can touch (its shape and strides).
void byte_span(const TensorView& t, uintptr_t* lo, uintptr_t* hi) {
  *lo = reinterpret_cast<uintptr_t>(t.data);
  int64_t last = 0;
  for (int axis = 0; axis < 4; ++axis) last += (t.shape[axis] - 1) * t.stride[axis];
  *hi = *lo + static_cast<uintptr_t>(last + 1) * dtype_size(t.dtype);
}

// Whether two views may share an element. Disjoint byte ranges never do; views of one buffer with the same strides
// whose bases are a whole number of heads apart (head slices of a packed qkv buffer) share none when their head
// ranges do not meet and the addressing is unique (a head's D elements within the head stride, the heads of a row
// within the row stride, the rows of a batch within the batch stride). Anything else is taken as overlapping.
bool may_overlap(const TensorView& a, const TensorView& b) {
  uintptr_t alo, ahi, blo, bhi;
  byte_span(a, &alo, &ahi);
  byte_span(b, &blo, &bhi);
  if (alo >= bhi || blo >= ahi) return false;
  if (a.dtype != b.dtype || a.stride[3] != 1 || b.stride[3] != 1) return true;
  for (int axis = 0; axis < 4; ++axis) {
    if (a.stride[axis] != b.stride[axis]) return true;
    if (axis != 2 && a.shape[axis] != b.shape[axis]) return true;
  }
  const int64_t es = static_cast<int64_t>(dtype_size(a.dtype));
  const int64_t diff = static_cast<int64_t>(blo) - static_cast<int64_t>(alo);  // bytes from a's base to b's
  const int64_t hs = a.stride[2];
  if (hs <= 0 || diff % (es * hs) != 0) return true;
  const int64_t shift = diff / (es * hs);  // b's head h is a's head h + shift
  const int64_t first = std::min<int64_t>(0, shift), end = std::max<int64_t>(a.shape[2], shift + b.shape[2]);
  const bool unique = a.shape[3] <= hs && (end - first) * hs <= a.stride[1] &&
                      (a.shape[0] == 1 || a.shape[1] * a.stride[1] <= a.stride[0]);
  const bool apart = shift >= a.shape[2] || shift + b.shape[2] <= 0;
  return !(unique && apart);
}

}  // namespace

namespace detail {

void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, bool allow_fused,
                                  cudaStream_t stream) {
  // Everything is checked before q and k are touched.
  check_forward_cuda(params);
  validate_rope_angles(rope, params.q.head_dim(), "rope");
  check_device_pointer(rope.inv_freq, "rope.inv_freq");
  // q and k are written in place: they must not share bytes with each other or with what the forward reads / writes.
  DISTATTN_CHECK_ARG(!may_overlap(params.q, params.k), "k", "overlaps q in memory; both are rotated in place");
  DISTATTN_CHECK_ARG(!may_overlap(params.q, params.v), "v", "overlaps q in memory; q is rotated in place");
  DISTATTN_CHECK_ARG(!may_overlap(params.k, params.v), "v", "overlaps k in memory; k is rotated in place");
  DISTATTN_CHECK_ARG(!may_overlap(params.q, params.o) && !may_overlap(params.k, params.o), "o",
                     "overlaps q or k in memory; they are rotated in place");

  const int64_t D = params.q.head_dim();
  const int64_t rot = rope.rotary_dim == 0 ? D : rope.rotary_dim;
  const bool fused = allow_fused && !rope_fwd_separate_from_env() && D == 128 && rot == D &&
                     rope.style == static_cast<int>(RopeStyle::kNeoX) && forward_runs_hopper_rope(params);
  if (!fused) {
    RopeParams rp;
    rp.q = params.q;
    rp.k = params.k;
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
  FlashFwdOptions options;
  options.hopper_rope = &r;
  flash_attention_forward(params, options, stream);
}

}  // namespace detail

void flash_attention_forward_rope(const AttnParams& params, const RopeAngles& rope, cudaStream_t stream) {
  detail::flash_attention_forward_rope(params, rope, /*allow_fused=*/true, stream);
}

}  // namespace distattn
