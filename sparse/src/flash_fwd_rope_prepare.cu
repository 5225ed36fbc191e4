// rope_prepare (flash_fwd_rope_prepare.h): the fused RoPE's table and counters in one launch.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "distattn/positional/rope_math.cuh"
#include "flash_fwd_rope_prepare.h"

namespace distattn {
namespace detail {
namespace {

constexpr int kPairs = 64;  // head dim 128, the whole head rotated (NeoX pairs (i, i + 64))

// Entry e < rows * 64: row e / 64, pair e % 64. Threads e <= groups + 1 also set counter e.
__global__ void rope_prepare_kernel(float2* table, int64_t rows, PositionMap pos, const float* inv_freq, float scale,
                                    uint32_t* counters, int64_t groups, int64_t pre_groups, int64_t group_jobs) {
  const int64_t total = rows * kPairs;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total || e <= groups + 1; e += step) {
    if (e == 0) counters[0] = static_cast<uint32_t>(pre_groups * group_jobs);
    if (e >= 1 && e <= groups) counters[e] = e - 1 < pre_groups ? static_cast<uint32_t>(group_jobs) : 0u;
    if (e == groups + 1) counters[e] = 0u;  // producers done (the kernel's last one keeps its helpers claiming)
    if (e >= total) continue;
    const int64_t s = e / kPairs;
    const int i = static_cast<int>(e - s * kPairs);
    float c, sn;
    rope_math::cos_sin(rope_math::position_float(pos.position(s)), __ldg(inv_freq + i), scale, scale, &c, &sn);
    table[e] = make_float2(c, sn);  // forward rotation: sin multiplier +scale
  }
}

}  // namespace

void rope_prepare(float2* table, int64_t rows, const PositionMap& pos, const float* inv_freq, float scale,
                  uint32_t* counters, int64_t groups, int64_t pre_groups, int64_t group_jobs, cudaStream_t stream) {
  const int64_t work = std::max(rows * kPairs, groups + 2);
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t{65535} * 4);
  rope_prepare_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(table, rows, pos, inv_freq, scale,
                                                                              counters, groups, pre_groups, group_jobs);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace detail
}  // namespace distattn
