// What the Hopper forward's fused RoPE (hopper/flash_fwd_hopper.h, FlashFwdHopperRope) needs before its launch, in one
// kernel on the launch's stream: the (cos, sin) table of the rows, the job counters, and the rotation of the kv groups
// that the grid's first units need (so that no unit of the first wave waits for the helpers).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"

namespace distattn {
namespace detail {

// table[s * 64 + i] = (scale cos, scale sin) of theta = float(pos(s)) * inv_freq[i] for s < rows, i < 64, computed by
// rope_math::cos_sin exactly as the RoPE kernel computes them (so the fused rotation is bit-identical). Counters
// (FlashFwdHopperParams, fused RoPE; 2 + groups of them): [0] = pre_groups * group_jobs (the first claimable job),
// [1 + g] = group_jobs for g < pre_groups (rotated here), else 0; [1 + groups] = 0 (producers done).
// pre_q, pre_k: the heads of the groups [0, pre_groups) ([nb, rows, hq, 128] and [nb, rows, hk, 128] views of q and k,
// 16-bit dtype, 16-byte aligned rows; hq = hk = 0 when pre_groups is 0; pre_k is left alone when `pre_rotate_k` is
// false: the fused RoPE's q-only mode), rotated in place by the same cos/sin values
// and rope_math::rotate with one rounding to the dtype, as rope_kernel rotates them (bit-identical).
// Device pointers; inv_freq [64]. One launch; the forward launched after it on the stream may start early
// (programmatic dependent launch: it waits for this grid before reading anything). Throws distattn::Error when the
// launch fails.
void rope_prepare(float2* table, int64_t rows, const PositionMap& pos, const float* inv_freq, float scale,
                  uint32_t* counters, int64_t groups, int64_t pre_groups, int64_t group_jobs, const TensorView& pre_q,
                  const TensorView& pre_k, bool pre_rotate_k, cudaStream_t stream);

}  // namespace detail
}  // namespace distattn
