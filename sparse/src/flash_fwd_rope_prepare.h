// What the Hopper forward's fused RoPE (hopper/flash_fwd_hopper.h, FlashFwdHopperRope) needs before its launch, in one
// kernel on the launch's stream: the (cos, sin) table of the rows and the job counters.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/position_map.h"

namespace distattn {
namespace detail {

// table[s * 64 + i] = (scale cos, scale sin) of theta = float(pos(s)) * inv_freq[i] for s < rows, i < 64, computed by
// rope_math::cos_sin exactly as the RoPE kernel computes them (so the fused rotation is bit-identical). Counters
// (FlashFwdHopperParams, fused RoPE; 2 + groups of them): [0] = pre_groups * group_jobs (the first claimable job),
// [1 + g] = group_jobs for g < pre_groups (rotated before the launch), else 0; [1 + groups] = 0 (producers done).
// Device pointers; inv_freq [64]. One launch; throws distattn::Error when the launch fails.
void rope_prepare(float2* table, int64_t rows, const PositionMap& pos, const float* inv_freq, float scale,
                  uint32_t* counters, int64_t groups, int64_t pre_groups, int64_t group_jobs, cudaStream_t stream);

}  // namespace detail
}  // namespace distattn
