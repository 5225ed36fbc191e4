// The two small kernels around the backward main kernel:
//   flash_bwd_delta_kernel     delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d]   (fp32)
//   flash_bwd_convert_dq_kernel  dq[b, i, h, :] (+)= dq_accum[b, h, i, :]  cast to dq's dtype (added in
//                                accumulate mode, dq fp32)
//   flash_bwd_convert_dq_rope_kernel  the conversion with the fused inverse RoPE (AttnBwdParams::rope_grad):
//                                dq[b, i, h, :] = R(-theta(q_pos(i))) dq_accum[b, h, i, :] (cast, rotated)
// Both are memory bound: one thread handles 8 consecutive head-dim elements (one 16-byte vector of a
// 16-bit tensor), D/8 neighbouring threads make one (b, i, h) row, rows are numbered with h fastest so
// that consecutive threads walk memory in order for packed tensors.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "distattn/positional/rope_math.cuh"
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

// ---- dQ conversion with the inverse RoPE -------------------------------------------------------------------
// 8 floats of the accumulator -> 8 values of TOut (16-byte store for 16-bit, two for fp32).
template <typename TOut>
__device__ __forceinline__ void store8(TOut* dst, const float (&v)[8]) {
  if constexpr (std::is_same<TOut, float>::value) {
    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(dst + 4) = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint4 out;  // pack2: round to nearest, as rope_kernel.cuh's from_float
    out.x = pack2<TOut>(v[0], v[1]);
    out.y = pack2<TOut>(v[2], v[3]);
    out.z = pack2<TOut>(v[4], v[5]);
    out.w = pack2<TOut>(v[6], v[7]);
    *reinterpret_cast<uint4*>(dst) = out;
  }
}
__device__ __forceinline__ void load8(const float* src, float (&v)[8]) {
  const float4 x0 = *reinterpret_cast<const float4*>(src), x1 = *reinterpret_cast<const float4*>(src + 4);
  v[0] = x0.x, v[1] = x0.y, v[2] = x0.z, v[3] = x0.w, v[4] = x1.x, v[5] = x1.y, v[6] = x1.z, v[7] = x1.w;
}

constexpr int kConvertRopeThreads = 256;

// Block = p.rope_rows_per_block (R) consecutive flattened q rows g = b * Sq + i, every head of each.
//   phase 1: cos/sin of every (row r, pair j < half) once, into dynamic shared memory (2 R half floats): theta =
//            float(q_pos(i)) * inv_freq[j], multipliers scale cos, -scale sin (rope_math::cos_sin, the RoPE kernel's
//            own arithmetic), reused by all Hq heads of the row.
//   phase 2: items (r, h, u), u fastest: 8-element units of head h of row r
//     NeoX  u < half / 8:  elements [8u, 8u + 8) (a side) and [half + 8u, +8) (b side), pairs j = 8u + e
//     GPT-J u < rot / 8:   elements [8u, 8u + 8), pairs j = 4u + e of (x[2j], x[2j + 1])
//     tail  the remaining (D - rot) / 8 units: cast only.
//   Each thread's first item is loaded before phase 1, so the table's sincosf hides behind those loads.
//   Each value is first rounded to TOut and back (rope_math::round_trip: what a separate RoPE pass would read from
//   dq), rotated in fp32, and rounded to TOut once more: bit-identical to convert + rope_apply_cuda(inverse).
// kStyle: 0 NeoX, 1 GPT-J. TOut: dq's element type (T, or float for an fp32 dq). Plain mode only (no accumulate).
template <typename T, typename TOut, int kHeadDim, int kStyle>
__global__ void __launch_bounds__(kConvertRopeThreads)
    flash_bwd_convert_dq_rope_kernel(const __grid_constant__ FlashBwdParams p) {
  extern __shared__ float rope_table[];
  const int R = p.rope_rows_per_block;
  const int half = p.rope_half;
  float* s_cos = rope_table;             // [R][half]  scale * cos(theta)
  float* s_sin = rope_table + R * half;  // [R][half]  -scale * sin(theta)
  const int64_t rows = static_cast<int64_t>(p.batch) * p.seqlen_q;
  const int64_t g0 = static_cast<int64_t>(blockIdx.x) * R;
  const int nrows = static_cast<int>(rows - g0 < R ? rows - g0 : R);

  const int rot_units = kStyle == 0 ? half / 8 : p.rope_rotary_dim / 8;  // units rotated per head
  const int units = rot_units + (kHeadDim - p.rope_rotary_dim) / 8;      // + units copied per head
  const int per_row = p.heads_q * units;                                 // < 2^31: Hq <= 2^31 / 16 (API)
  const int total = nrows * per_row;

  // Item it -> row r, unit u, first column col (a side / the 8 elements), accumulator and dq row pointers; its
  // loads (x: [col, col + 8), xb: NeoX b side [half + col, +8)) are issued by fetch.
  int r = 0, u = 0, col = 0;
  const float* src = nullptr;
  TOut* dst = nullptr;
  float x[8], xb[8];
  auto fetch = [&](int it) {
    r = it / per_row;
    const int rem = it - r * per_row;
    const int h = rem / units;
    u = rem - h * units;
    const int64_t g = g0 + r;
    const int64_t b = g / p.seqlen_q;
    const int64_t i = g - b * p.seqlen_q;
    // accumulator row (b, h, i): dq_accum + b * batch stride + h * head stride + i * D
    src = p.dq_accum + b * p.dq_accum_batch_stride + static_cast<int64_t>(h) * p.dq_accum_head_stride + i * kHeadDim;
    dst = static_cast<TOut*>(p.dq) + b * p.dq_batch_stride + i * p.dq_row_stride +
          static_cast<int64_t>(h) * p.dq_head_stride;
    col = u >= rot_units ? p.rope_rotary_dim + 8 * (u - rot_units) : 8 * u;
    load8(src + col, x);
    if (kStyle == 0 && u < rot_units) load8(src + half + col, xb);
  };
  // The first item's loads go out before the table is computed, so their latency hides the sincosf (as in the RoPE
  // kernel).
  if (static_cast<int>(threadIdx.x) < total) fetch(threadIdx.x);

  for (int e = threadIdx.x; e < nrows * half; e += kConvertRopeThreads) {
    const int rr = e / half;
    const int j = e - rr * half;
    const int64_t i = (g0 + rr) % p.seqlen_q;
    rope_math::cos_sin(rope_math::position_float(p.q_pos.position(i)), __ldg(p.rope_inv_freq + j), p.rope_scale,
                       -p.rope_scale, &s_cos[e], &s_sin[e]);
  }
  __syncthreads();

  for (int it = threadIdx.x; it < total; it += kConvertRopeThreads) {
    if (it != static_cast<int>(threadIdx.x)) fetch(it);
    const float* cs = s_cos + r * half;
    const float* sn = s_sin + r * half;
    float y[8];
    if (u >= rot_units) {  // dims [rot, D): cast only
      store8<TOut>(dst + col, x);
    } else if (kStyle == 0) {  // a side [col, col + 8), b side [half + col, +8): pairs col + e
      float yb[8];
#pragma unroll
      for (int e = 0; e < 8; ++e)
        rope_math::rotate(rope_math::round_trip<TOut>(x[e]), rope_math::round_trip<TOut>(xb[e]), cs[col + e],
                          sn[col + e], &y[e], &yb[e]);
      store8<TOut>(dst + col, y);
      store8<TOut>(dst + half + col, yb);
    } else {  // elements [col, col + 8): pairs col / 2 + e of (x[2e], x[2e + 1])
#pragma unroll
      for (int e = 0; e < 4; ++e)
        rope_math::rotate(rope_math::round_trip<TOut>(x[2 * e]), rope_math::round_trip<TOut>(x[2 * e + 1]),
                          cs[col / 2 + e], sn[col / 2 + e], &y[2 * e], &y[2 * e + 1]);
      store8<TOut>(dst + col, y);
    }
  }
}

}  // namespace kernels
}  // namespace distattn
