// The two small kernels around the backward main kernel:
//   flash_bwd_delta_kernel     delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d]   (fp32)
//   flash_bwd_convert_dq_kernel  dq[b, i, h, :] (+)= dq_accum[b, h, i, :]  cast to dq's dtype (added in
//                                accumulate mode, dq fp32)
// Both are memory bound: one thread handles 8 consecutive head-dim elements (one 16-byte vector of a
// 16-bit tensor), D/8 neighbouring threads make one (b, i, h) row, rows are numbered with h fastest so
// that consecutive threads walk memory in order for packed tensors.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "flash_bwd_params.h"
#include "mma_primitives.cuh"

namespace distattn {
namespace kernels {

// 8 x 16-bit in one 16-byte vector -> 8 floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      const __nv_bfloat162 h = *reinterpret_cast<const __nv_bfloat162*>(&w[i]);
      const float2 x = __bfloat1622float2(h);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    } else {
      const __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
      const float2 x = __half22float2(h);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
}

// Grid: ceil(B * Sq * Hq * (D / 8) / blockDim.x) blocks. Thread -> (row r, lane-in-row c); r -> (b, i, h).
template <typename T, int kHeadDim>
__global__ void flash_bwd_delta_kernel(const __grid_constant__ FlashBwdParams p) {
  constexpr int kThreadsPerRow = kHeadDim / 8;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = tid / kThreadsPerRow;
  const int c = static_cast<int>(tid % kThreadsPerRow);
  const int64_t rows = static_cast<int64_t>(p.batch) * p.seqlen_q * p.heads_q;
  // Every thread of a row takes part in the shuffle reduction, so out-of-range threads compute 0.
  float sum = 0.f;
  int64_t b = 0, i = 0, h = 0;
  if (row < rows) {
    h = row % p.heads_q;
    i = (row / p.heads_q) % p.seqlen_q;
    b = row / (static_cast<int64_t>(p.heads_q) * p.seqlen_q);
    const int64_t o_off = b * p.o_batch_stride + i * p.o_row_stride + h * p.o_head_stride + c * 8;
    const T* d = static_cast<const T*>(p.dout) + b * p.dout_batch_stride + i * p.dout_row_stride +
                 h * p.dout_head_stride + c * 8;
    float fo[8], fd[8];
    if (p.o_fp32) {  // o may be the fp32 output of an accumulated forward
      const float4* o = reinterpret_cast<const float4*>(static_cast<const float*>(p.o) + o_off);
      const float4 x0 = __ldg(o), x1 = __ldg(o + 1);
      fo[0] = x0.x, fo[1] = x0.y, fo[2] = x0.z, fo[3] = x0.w, fo[4] = x1.x, fo[5] = x1.y, fo[6] = x1.z, fo[7] = x1.w;
    } else {
      unpack8<T>(__ldg(reinterpret_cast<const uint4*>(static_cast<const T*>(p.o) + o_off)), fo);
    }
    unpack8<T>(__ldg(reinterpret_cast<const uint4*>(d)), fd);
#pragma unroll
    for (int e = 0; e < 8; ++e) sum = fmaf(fo[e], fd[e], sum);
  }
  // kThreadsPerRow (8 or 16) consecutive lanes of one warp form a row: butterfly inside that group.
#pragma unroll
  for (int off = kThreadsPerRow / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (row < rows && c == 0) p.delta_out[b * p.delta_batch_stride + h * p.delta_head_stride + i] = sum;
}

// Grid like the delta kernel. dq_accum already holds scale * sum_j dS_ij K_j.
template <typename T, int kHeadDim>
__global__ void flash_bwd_convert_dq_kernel(const __grid_constant__ FlashBwdParams p) {
  constexpr int kThreadsPerRow = kHeadDim / 8;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = tid / kThreadsPerRow;
  const int c = static_cast<int>(tid % kThreadsPerRow);
  const int64_t rows = static_cast<int64_t>(p.batch) * p.seqlen_q * p.heads_q;
  if (row >= rows) return;
  const int64_t h = row % p.heads_q;
  const int64_t i = (row / p.heads_q) % p.seqlen_q;
  const int64_t b = row / (static_cast<int64_t>(p.heads_q) * p.seqlen_q);
  const float* src = p.dq_accum + b * p.dq_accum_batch_stride + i * kHeadDim + h * p.dq_accum_head_stride + c * 8;
  float4 x0 = *reinterpret_cast<const float4*>(src);
  float4 x1 = *reinterpret_cast<const float4*>(src + 4);
  const int64_t off = b * p.dq_batch_stride + i * p.dq_row_stride + h * p.dq_head_stride + c * 8;
  if (p.dq_fp32) {
    float* dst = static_cast<float*>(p.dq) + off;
    if (p.accumulate) {  // ring steps: this call's gradient is added to what dq holds
      const float4 o0 = *reinterpret_cast<const float4*>(dst), o1 = *reinterpret_cast<const float4*>(dst + 4);
      x0 = make_float4(x0.x + o0.x, x0.y + o0.y, x0.z + o0.z, x0.w + o0.w);
      x1 = make_float4(x1.x + o1.x, x1.y + o1.y, x1.z + o1.z, x1.w + o1.w);
    }
    *reinterpret_cast<float4*>(dst) = x0;
    *reinterpret_cast<float4*>(dst + 4) = x1;
  } else {
    uint4 out;
    out.x = pack2<T>(x0.x, x0.y);
    out.y = pack2<T>(x0.z, x0.w);
    out.z = pack2<T>(x1.x, x1.y);
    out.w = pack2<T>(x1.z, x1.w);
    *reinterpret_cast<uint4*>(static_cast<T*>(p.dq) + off) = out;
  }
}

}  // namespace kernels
}  // namespace distattn
