// Small device helpers of the ring's CUDA executor (ring_cuda.cc): fills, casts, the travelling
// gradient update and delta. Internal (not installed). All enqueue on `stream`, validate nothing
// (the executor validated its inputs), and check the launch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/tensor.h"

namespace distattn {
namespace ring {
namespace detail {

// p[0 .. n) = value (fp32).
void fill_f32(float* p, int64_t n, float value, cudaStream_t stream);

// dst (a strided [B, S, H, D] view of bf16/fp16/fp32) = src, a PACKED [B, S, H, D] buffer of src_dtype
// (fp32 or bf16), converted with round-to-nearest-even.
void convert_packed_to_view(const void* src, DType src_dtype, const TensorView& dst, cudaStream_t stream);

// Same with a strided source: element (b, s, h, d) of src at b * src_b + s * src_s + h * src_h + d
// (elements of src_dtype), e.g. a head-major [B, H, S, D] fp32 accumulator read as [B, S, H, D].
void convert_strided_to_view(const void* src, DType src_dtype, int64_t src_b, int64_t src_s, int64_t src_h,
                             const TensorView& dst, cudaStream_t stream);

// dst = src + addend: src as above, addend (nullable) fp32 at the SAME element offsets as src (e.g. two packed
// [B, S, H, D] buffers, or the same row range of both); the sum is formed in fp32 and rounded once.
void sum_strided_to_view(const void* src, DType src_dtype, const float* addend, int64_t src_b, int64_t src_s,
                         int64_t src_h, const TensorView& dst, cudaStream_t stream);

// out[i] = (incoming ? incoming[i] : 0) + (mine ? mine[i] : 0) for i < n; incoming of `in_dtype`, out of
// `out_dtype` (fp32, bf16 or fp16), mine fp32. The sum is formed in fp32 and rounded once.
void travel_add(const void* incoming, DType in_dtype, const float* mine, void* out, DType out_dtype, int64_t n,
                cudaStream_t stream);

// delta[b, h, i] = sum_d dout[b, i, h, d] * o[b, i, h, d] in fp32, delta packed [B, H, S]. 16-bit dout with head dim
// 64 or 128 and 16-byte aligned rows goes to the engine's kernel (flash_attention_backward_delta), anything else to a
// warp-per-row kernel.
void row_dot(const TensorView& dout, const TensorView& o, float* delta, cudaStream_t stream);

// Packs a strided [B, S, H, D] device view into a packed buffer of the same dtype (cudaMemcpy2DAsync:
// one 2-D copy per batch when the heads of a row are adjacent, else one per (batch, head)).
void pack_view(const TensorView& src, void* dst, cudaStream_t stream);

}  // namespace detail
}  // namespace ring
}  // namespace distattn
