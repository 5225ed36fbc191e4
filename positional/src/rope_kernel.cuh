// The fused RoPE kernel: q and k rows in ONE launch, forward (theta) or backward (-theta).
//
// Work split. The grid's first `t[0].num_blocks` blocks take q rows, the rest k rows. A block owns
// `rows_per_block` consecutive flattened rows g = b * S + s of its tensor and runs two phases:
//   0. per row: (b, s), input/output offsets and float(position) into shared memory.
//   1. cos/sin table (after the first batch of phase 2's loads is issued, so their latency hides it):
//      for each of its rows r and pair i < rotary_dim / 2,
//        theta = float(pos(s)) * inv_freq[i]      (one fp32 multiply, accurate sincosf: NOT __sinf,
//                                                   whose error grows with |theta| past a few thousand)
//      stored pre-multiplied by `scale` (sin also by -1 for the backward) in shared memory. Each
//      (row, i) is computed exactly once and reused by every head of the row.
//   2. rotation: items (r, h, c) = row, head, "unit" c of the head. A unit is one kVec-element packet
//      (16 bytes on the vector path) of each operand of the pair set:
//        NeoX  unit c: x[c*kVec .. +kVec) and x[half + c*kVec .. +kVec), pairs i = c*kVec + e
//        GPT-J unit c: x[c*kVec .. +kVec), pairs i = c*kVec/2 + e of (x[2i], x[2i+1])
//      Each thread loads kUnroll items (2 or 1 packets each) before rotating and storing any, so
//      enough bytes are in flight to saturate HBM. In place every element is read and written by the
//      same thread, so no ordering between threads is needed.
//   3. out of place with rotary_dim < D: dims [rotary_dim, D) copied unchanged (element granularity
//      kTailVec).
// kCopy launches also write every rotated packet to the tensor's second output when it has one (t.copy), and phase 3
// copies the tail there: the input is read once for both outputs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "distattn/core/position_map.h"
#include "distattn/positional/rope.h"
#include "distattn/positional/rope_math.cuh"

namespace distattn {
namespace rope {

// One operand (q or k) of a launch. Shapes [B, S, H, D]; strides in ELEMENTS, head dim contiguous.
struct RopeTensorArgs {
  const void* in = nullptr;  // input element (0, 0, 0, 0)
  void* out = nullptr;       // output element (0, 0, 0, 0); == in when in place
  int64_t in_stride_b = 0;   // elements between batches of the input
  int64_t in_stride_s = 0;   // elements between rows of the input
  int64_t in_stride_h = 0;   // elements between heads of the input
  int64_t out_stride_b = 0;  // same three for the output
  int64_t out_stride_s = 0;
  int64_t out_stride_h = 0;
  int64_t seqlen = 0;         // S (rows per batch); row s has global position pos.position(s)
  int64_t heads = 0;          // H
  int64_t rows = 0;           // B * S flattened rows
  int64_t num_blocks = 0;     // ceil(rows / rows_per_block); 0 for an absent k
  int copy_tail = 0;          // 1: out of place with rotary_dim < D, copy dims [rotary_dim, D)
  void* copy = nullptr;       // second output (RopeParams::q_copy / k_copy) element (0, 0, 0, 0), or null
  int64_t copy_stride_b = 0;  // its strides, elements
  int64_t copy_stride_s = 0;
  int64_t copy_stride_h = 0;
  PositionMap pos;  // global positions of the S rows
};

// Everything one launch needs (passed by value).
struct RopeKernelParams {
  RopeTensorArgs t[2];              // [0] = q, [1] = k
  const float* inv_freq = nullptr;  // [half] fp32 on the device
  int head_dim = 0;                 // D
  int rotary_dim = 0;               // even, <= D
  int half = 0;                     // rotary_dim / 2 = number of pairs
  int rows_per_block = 1;           // rows a block owns (its cos/sin table has rows_per_block * half entries)
  float scale = 1.0f;               // cos/sin multiplier
  int inverse = 0;                  // 1: rotate by -theta (backward)
};

// ---- element conversions ----
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

// Evict-first (.cs) loads and stores: every byte is touched once, so keeping it in L2 helps nobody.
// Measured on H100 (PEERS.md configs): 0.3-3% faster than plain loads/stores.
constexpr bool kStreamingHints = true;

// N consecutive elements in registers; one 16-byte access when kVector (N * sizeof(T) == 16 and the
// address 16-byte aligned, checked by the launcher), element accesses otherwise.
template <typename T, int N, bool kVector>
struct Packet {
  static_assert(!kVector || N * sizeof(T) == 16, "vector packets are 16 bytes");
  alignas(kVector ? 16 : alignof(T)) T v[N];
  __device__ __forceinline__ void load(const T* p) {
    if constexpr (kVector) {
      if constexpr (kStreamingHints) {
        *reinterpret_cast<uint4*>(v) = __ldcs(reinterpret_cast<const uint4*>(p));
      } else {
        *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(p);
      }
    } else {
#pragma unroll
      for (int e = 0; e < N; ++e) v[e] = p[e];
    }
  }
  __device__ __forceinline__ void store(T* p) const {
    if constexpr (kVector) {
      if constexpr (kStreamingHints) {
        __stcs(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(v));
      } else {
        *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(v);
      }
    } else {
#pragma unroll
      for (int e = 0; e < N; ++e) p[e] = v[e];
    }
  }
};

constexpr int kThreads = 256;  // threads per block
constexpr int kUnroll = 4;     // items in flight per thread
constexpr int kMinBlocks = 3;  // resident blocks per SM the register budget must allow (<= 85 registers)
// (kUnroll 2 with kMinBlocks 4 measured 0.5-1% slower on H100.)

// T: element type. kVec: elements per unit packet (16 / sizeof(T) on the vector path; 1 for NeoX and
// 2 for GPT-J otherwise). kVector: 16-byte accesses. kCopy: some operand has a second output.
template <typename T, RopeStyle kStyle, int kVec, bool kVector, bool kCopy>
__global__ void __launch_bounds__(kThreads, kMinBlocks) rope_kernel(const RopeKernelParams p) {
  // Shared memory: per row its input/output/copy offsets (int64) and position, then the cos/sin table.
  extern __shared__ int64_t smem[];
  const int R = p.rows_per_block;
  const int half = p.half;
  int64_t* s_in_off = smem;                               // [R] offset of (b, s, 0, 0) in the input
  int64_t* s_out_off = smem + R;                          // [R] same in the output
  int64_t* s_copy_off = smem + 2 * R;                     // [R] same in the second output (kCopy)
  float* s_cos = reinterpret_cast<float*>(smem + 3 * R);  // [R * half] scale * cos
  float* s_sin = s_cos + R * half;                        // [R * half] +-scale * sin
  float* s_pos = s_sin + R * half;                        // [R] float(global position)

  const bool is_k = blockIdx.x >= p.t[0].num_blocks;
  const RopeTensorArgs& t = p.t[is_k ? 1 : 0];
  const int64_t g0 = static_cast<int64_t>(is_k ? blockIdx.x - p.t[0].num_blocks : blockIdx.x) * R;
  const int64_t rows_left = t.rows - g0;
  const int nrows = rows_left < R ? static_cast<int>(rows_left) : R;

  // ---- phase 0: row g = g0 + r -> (b, s), offsets, position ----
  if (threadIdx.x < nrows) {
    const int64_t g = g0 + threadIdx.x;
    const int64_t b = g / t.seqlen;
    const int64_t s = g - b * t.seqlen;
    s_in_off[threadIdx.x] = b * t.in_stride_b + s * t.in_stride_s;
    s_out_off[threadIdx.x] = b * t.out_stride_b + s * t.out_stride_s;
    s_copy_off[threadIdx.x] = b * t.copy_stride_b + s * t.copy_stride_s;
    s_pos[threadIdx.x] = rope_math::position_float(t.pos.position(s));  // exact below 2^24, fp32-rounded above
  }
  __syncthreads();

  // ---- phase 2a: first batch of loads in flight before the table is computed ----
  // (their latency hides phase 1's sincosf; matters for small problems where a block's prologue shows)
  const T* in = static_cast<const T*>(t.in);
  T* out = static_cast<T*>(t.out);
  T* copy = static_cast<T*>(t.copy);
  const bool has_copy = kCopy && copy != nullptr;
  constexpr int kPairsPerUnit = kStyle == RopeStyle::kNeoX ? kVec : kVec / 2;
  const int units = kStyle == RopeStyle::kNeoX ? half / kVec : 2 * half / kVec;  // units per head
  const int units_per_row = static_cast<int>(t.heads) * units;  // < 2^31: heads * D checked by the launcher
  const int total = nrows * units_per_row;
  Packet<T, kVec, kVector> pa[kUnroll], pb[kUnroll];
  T* dst[kUnroll];
  T* dst2[kCopy ? kUnroll : 1];  // kCopy: the unit's place in the second output
  int table[kUnroll];            // index of the unit's first pair in the cos/sin table
  // Loads items base + u * kThreads (u < kUnroll) into registers.
  auto load_batch = [&](int base) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kThreads;
      if (j < total) {
        // j -> (r, h, c): c fastest so neighbouring threads touch neighbouring packets.
        const int r = j / units_per_row;
        const int rem = j - r * units_per_row;
        const int h = rem / units;
        const int c = rem - h * units;
        const T* src = in + s_in_off[r] + h * t.in_stride_h + c * kVec;
        dst[u] = out + s_out_off[r] + h * t.out_stride_h + c * kVec;
        if constexpr (kCopy) dst2[u] = has_copy ? copy + s_copy_off[r] + h * t.copy_stride_h + c * kVec : nullptr;
        table[u] = r * half + c * kPairsPerUnit;
        pa[u].load(src);
        if constexpr (kStyle == RopeStyle::kNeoX) pb[u].load(src + half);
      }
    }
  };
  if (threadIdx.x < total) load_batch(threadIdx.x);

  // ---- phase 1: cos/sin of theta = float(pos) * inv_freq[i], once per (row, i) ----
  const float sin_scale = p.inverse ? -p.scale : p.scale;
  for (int e = threadIdx.x; e < nrows * half; e += kThreads) {
    const int r = e / half;
    const int i = e - r * half;
    // theta = float(pos) * inv_freq[i], accurate sincosf: rope_math.cuh (shared with the fused backward)
    rope_math::cos_sin(s_pos[r], __ldg(p.inv_freq + i), p.scale, sin_scale, &s_cos[e], &s_sin[e]);
  }
  __syncthreads();

  // ---- phase 2b: rotate the loaded batch, store, load the next ----
  for (int base = threadIdx.x; base < total; base += kThreads * kUnroll) {
    if (base != static_cast<int>(threadIdx.x)) load_batch(base);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u * kThreads < total) {
        if constexpr (kStyle == RopeStyle::kNeoX) {
          Packet<T, kVec, kVector> ya, yb;
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            const float c = s_cos[table[u] + e], sn = s_sin[table[u] + e];
            const float a = to_float(pa[u].v[e]), bb = to_float(pb[u].v[e]);
            float ra, rb;
            rope_math::rotate(a, bb, c, sn, &ra, &rb);  // a cos - b sin, a sin + b cos
            ya.v[e] = from_float<T>(ra);
            yb.v[e] = from_float<T>(rb);
          }
          ya.store(dst[u]);
          yb.store(dst[u] + half);
          if constexpr (kCopy) {
            if (has_copy) {
              ya.store(dst2[u]);
              yb.store(dst2[u] + half);
            }
          }
        } else {
          Packet<T, kVec, kVector> y;
#pragma unroll
          for (int e = 0; e < kVec / 2; ++e) {
            const float c = s_cos[table[u] + e], sn = s_sin[table[u] + e];
            const float a = to_float(pa[u].v[2 * e]), bb = to_float(pa[u].v[2 * e + 1]);
            float ra, rb;
            rope_math::rotate(a, bb, c, sn, &ra, &rb);
            y.v[2 * e] = from_float<T>(ra);
            y.v[2 * e + 1] = from_float<T>(rb);
          }
          y.store(dst[u]);
          if constexpr (kCopy) {
            if (has_copy) y.store(dst2[u]);
          }
        }
      }
    }
  }

  // ---- phase 3: out of place (or a second output), partial rotary: copy dims [rotary_dim, D) ----
  if (t.copy_tail || (has_copy && p.rotary_dim < p.head_dim)) {
    constexpr int kTailVec = kVector ? kVec : 1;
    const int tail_units = (p.head_dim - p.rotary_dim) / kTailVec;
    const int tail_per_row = static_cast<int>(t.heads) * tail_units;
    const int tail_total = nrows * tail_per_row;
    for (int j = threadIdx.x; j < tail_total; j += kThreads) {
      const int r = j / tail_per_row;
      const int rem = j - r * tail_per_row;
      const int h = rem / tail_units;
      const int d = p.rotary_dim + (rem - h * tail_units) * kTailVec;
      Packet<T, kTailVec, kVector> x;
      x.load(in + s_in_off[r] + h * t.in_stride_h + d);
      if (t.copy_tail) x.store(out + s_out_off[r] + h * t.out_stride_h + d);
      if (has_copy) x.store(copy + s_copy_off[r] + h * t.copy_stride_h + d);
    }
  }
}

// Launches one kernel for params built by rope_apply_cuda (already validated). `items_per_block`:
// target rotation units per block, which sets rows_per_block (exposed for tuning; 0: default).
void launch_rope_kernel(const RopeParams& params, int64_t rotary_dim, int64_t items_per_block, cudaStream_t stream);

}  // namespace rope
}  // namespace distattn
