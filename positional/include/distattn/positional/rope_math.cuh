// The RoPE arithmetic of one pair, on the device: the ONE copy used by the RoPE kernel
// (positional/src/rope_kernel.cuh) and by the backward attention kernels that rotate dq, dk back in their
// epilogues (sparse/src/flash_bwd_preprocess.cuh, sparse/src/hopper/flash_bwd_hopper_kernel.cuh), so the fused
// inverse is bit-identical to rope_apply_cuda(inverse = true) by construction.
//
//   theta = float(pos) * inv_freq[i]            one fp32 multiply, round to nearest (as on the host)
//   c = cos(theta) * scale,  s = +-sin(theta) * scale   (accurate sincosf; - for the inverse rotation)
//   (a, b) -> (a c - b s, a s + b c)            each one fmaf of a product: fmaf(a, c, -(b s)), fmaf(a, s, b c)
//
// 16-bit tensors are rotated from their stored (rounded) values and rounded once more when stored: a caller that
// holds an fp32 value destined for a 16-bit tensor rounds it first (rope_round_trip) to reproduce the separate pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace distattn {
namespace rope_math {

// Position as the kernels see it: int64 -> fp32, round to nearest (exact below 2^24).
__device__ __forceinline__ float position_float(int64_t pos) { return static_cast<float>(pos); }

// cos / sin multipliers of one (position, frequency) pair. `sin_scale` is scale (forward) or -scale (inverse).
__device__ __forceinline__ void cos_sin(float pos, float inv_freq, float scale, float sin_scale, float* c, float* s) {
  const float theta = __fmul_rn(pos, inv_freq);  // one fp32 multiply, never contracted into anything
  float sv, cv;
  sincosf(theta, &sv, &cv);  // accurate (full range reduction); never the __sinf intrinsics
  *c = cv * scale;
  *s = sv * sin_scale;
}

// Rotates the pair (a, b) by the multipliers c, s: (a c - b s, a s + b c).
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float* ya, float* yb) {
  *ya = fmaf(a, c, -b * s);
  *yb = fmaf(a, s, b * c);
}

// x rounded to T and back (T = float: x itself): the value a separate RoPE pass would read from a T tensor.
template <typename T>
__device__ __forceinline__ float round_trip(float x);
template <>
__device__ __forceinline__ float round_trip<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float round_trip<__nv_bfloat16>(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}
template <>
__device__ __forceinline__ float round_trip<__half>(float x) {
  return __half2float(__float2half_rn(x));
}

}  // namespace rope_math
}  // namespace distattn
