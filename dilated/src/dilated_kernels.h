// CUDA helpers of dilated attention (dilated_attention.cc): fills, casts and the LSE compaction. Internal (not
// installed). All enqueue on `stream`, validate nothing (the caller validated its inputs), and check the launch.
// Layouts: accumulators packed fp32 [B, S, H, D]; LSE packed [B, H, S] or compacted (dilated_index.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/tensor.h"

namespace distattn {
namespace dilated_detail {

// p[0 .. n) = value.
void cuda_fill(float* p, int64_t n, float value, cudaStream_t stream);

// dst (a strided view, bf16/fp16/fp32, head dim a multiple of 4, 8-byte aligned rows) = src (packed fp32 with
// dst's shape). Four elements per thread (one float4 load).
void cuda_cast(const float* src, const TensorView& dst, cudaStream_t stream);

// Pattern (w, r)'s kept entries between the [B, H, S] LSE and its compacted form (dilated_index.h):
//   gather:  lse_c[compact_index(b, p, h)] = lse[(b*H + h)*S + p]     for every kept (b, p, h)
//   scatter: lse[(b*H + h)*S + p] = lse_c[compact_index(b, p, h)]
// One thread per compacted entry (padding entries of short classes are skipped). head_parity >= 0 (here and in
// cuda_lse_advance): only the entries of heads h with h % 2 == head_parity are moved (the forward's two head chains,
// DilatedAttention::set_head_chains, each move their own heads' rows; the others are left as they are).
void cuda_lse_gather(const float* lse, float* lse_c, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r,
                     cudaStream_t stream, int head_parity = -1);
void cuda_lse_scatter(const float* lse_c, float* lse, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r,
                      cudaStream_t stream, int head_parity = -1);

// Between two patterns: the scatter of pattern (w1, r1)'s compacted LSE and the gather of pattern (w2, r2)'s in one
// launch (lse_c1 and lse_c2 distinct arrays):
//   lse[(b*H + h)*S + p] = lse_c1[compact_index(b, p, h; w1, r1)]          for every (b, p, h) kept by pattern 1
//   lse_c2[compact_index(b, p, h; w2, r2)] = kept by pattern 1 ? lse_c1[...] : lse[(b*H + h)*S + p]
//                                                                           for every (b, p, h) kept by pattern 2
// The gather takes pattern 1's rows from lse_c1, so it never reads an element the scatter writes (no ordering
// inside the launch is needed). One thread per compacted entry of either pattern.
void cuda_lse_advance(const float* lse_c1, float* lse, float* lse_c2, int64_t B, int64_t S, int64_t H, int64_t w1,
                      int64_t r1, int64_t w2, int64_t r2, cudaStream_t stream, int head_parity = -1);

}  // namespace dilated_detail
}  // namespace distattn
