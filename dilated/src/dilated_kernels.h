// CUDA helpers of dilated attention (dilated_attention.cc): fills, the pattern merge, casts and the LSE
// compaction. Internal (not installed). All enqueue on `stream`, validate nothing (the caller validated its
// inputs), and check the launch. Layouts: acc / part packed fp32 [B, S, H, D]; lse_acc packed [B, H, S];
// lse_part compacted (dilated_index.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/tensor.h"

namespace distattn {
namespace dilated_detail {

// p[0 .. n) = value.
void cuda_fill(float* p, int64_t n, float value, cudaStream_t stream);

// Merges pattern (w, r)'s partial into the accumulator on the rows it keeps (accumulate-mode formula):
//   L = logaddexp(lse_acc, lse_part);  acc = acc * exp(lse_acc - L) + part * exp(lse_part - L);  lse_acc = L.
void cuda_merge(float* acc, float* lse_acc, const float* part, const float* lse_part, int64_t B, int64_t S, int64_t H,
                int64_t D, int64_t w, int64_t r, cudaStream_t stream);

// dst (a strided view, bf16/fp16/fp32) = src (packed fp32 with dst's shape).
void cuda_cast(const float* src, const TensorView& dst, cudaStream_t stream);

// lse_part[compact_index(b, p, h)] = lse[(b*H + h)*S + p] for every kept (b, p, h) of pattern (w, r).
void cuda_compact_lse(const float* lse, float* lse_part, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r,
                      cudaStream_t stream);

}  // namespace dilated_detail
}  // namespace distattn
