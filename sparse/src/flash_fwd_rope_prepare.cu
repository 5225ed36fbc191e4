// rope_prepare (flash_fwd_rope_prepare.h): the fused RoPE's table, its counters and the first wave's kv groups in one
// launch.
//
// Why one launch: the table needs cos_sin of every (row, pair), and the pre-rotation needs the same values. Two
// launches (the table, then rope_apply_cuda on the first groups) computed every sincosf twice and paid a launch gap and
// a small kernel's ramp and tail twice: 4.5 + 13.6 us under ncu at S = 8K, H = 32 causal; one launch: 12.2 us (with 2
// pairs per thread instead of 8: 14.5 us). In the benchmark's back-to-back forwards the difference stayed within
// noise (8K causal +4.8-5.0% over the plain forward either way; bench/results/2026-11-23_h200_s10_rope_prepare).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/positional/rope_math.cuh"
#include "flash_fwd_rope_prepare.h"
#include "mma_primitives.cuh"

namespace distattn {
namespace detail {
namespace {

constexpr int kPairs = 64;     // head dim 128, the whole head rotated (NeoX pairs (i, i + 64))
constexpr int kUnitPairs = 8;  // pairs per thread: one 16-byte packet of each half
constexpr int kUnitsPerRow = kPairs / kUnitPairs;
constexpr int kHeadsPerSlice = 8;  // head rows (one head of one batch of q or k) per blockIdx.y
constexpr int kHeadsInFlight = 4;  // packets loaded before any is rotated
constexpr int kThreads = 256;

// The pre-rotation's operands: head row j of batch b is q head j (j < hq) or k head j - hq. Strides in elements.
struct PreRotation {
  unsigned char* q = nullptr;
  unsigned char* k = nullptr;
  int64_t q_sb = 0, q_ss = 0, q_sh = 0;
  int64_t k_sb = 0, k_ss = 0, k_sh = 0;
  int64_t hq = 0, hk = 0, nb = 0;  // heads of q, of k, batches (0 heads: nothing to rotate)
};

using kernels::pack2;    // mma_primitives.cuh: two floats -> one 16-bit pair, round to nearest
using kernels::unpack2;  // its inverse

// Thread x = row s * 8 + unit c (pairs 8c .. 8c + 7 of row s); blockIdx.y = slice of up to 8 head rows. Slice 0 also
// writes the table and the counters.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rope_prepare_kernel(float2* table, int64_t rows, PositionMap pos, const float* inv_freq, float scale,
                        uint32_t* counters, int64_t groups, int64_t pre_groups, int64_t group_jobs, PreRotation pre) {
  // The forward may launch now: it waits (griddepcontrol.wait) for this whole grid before it reads anything, and it
  // can only take SMs once every block of this grid has started (so none of them is kept off the GPU).
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const int64_t x = blockIdx.x * int64_t{kThreads} + threadIdx.x;
  const int64_t x_threads = int64_t{gridDim.x} * kThreads;
  if (blockIdx.y == 0) {
    for (int64_t e = x; e <= groups + 1; e += x_threads) {
      if (e == 0) counters[0] = static_cast<uint32_t>(pre_groups * group_jobs);
      if (e >= 1 && e <= groups) counters[e] = e - 1 < pre_groups ? static_cast<uint32_t>(group_jobs) : 0u;
      if (e == groups + 1) counters[e] = 0u;  // producers done (the kernel's last one keeps its helpers claiming)
    }
  }
  if (x >= rows * kUnitsPerRow) return;
  const int64_t s = x / kUnitsPerRow;
  const int c = static_cast<int>(x - s * kUnitsPerRow);

  // Head rows of this slice: issue their loads first, so their latency hides the sincosf below.
  const int64_t head_rows = pre.nb * (pre.hq + pre.hk);
  const int64_t j0 = int64_t{blockIdx.y} * kHeadsPerSlice;
  const int n = static_cast<int>(std::min<int64_t>(kHeadsPerSlice, std::max<int64_t>(head_rows - j0, 0)));
  auto address = [&](int64_t j) -> uint4* {  // element (b, s, h, 8 c) of head row j
    const int64_t b = j / (pre.hq + pre.hk);
    const int64_t h = j - b * (pre.hq + pre.hk);
    unsigned char* base = h < pre.hq
                              ? pre.q + (b * pre.q_sb + s * pre.q_ss + h * pre.q_sh) * int64_t{sizeof(T)}
                              : pre.k + (b * pre.k_sb + s * pre.k_ss + (h - pre.hq) * pre.k_sh) * int64_t{sizeof(T)};
    return reinterpret_cast<uint4*>(base + c * kUnitPairs * int64_t{sizeof(T)});
  };
  uint4 lo[kHeadsInFlight], hi[kHeadsInFlight];  // elements 8c .. 8c + 7 and 64 + 8c .. 64 + 8c + 7
#pragma unroll
  for (int u = 0; u < kHeadsInFlight; ++u) {
    if (u < n) {
      const uint4* a = address(j0 + u);
      lo[u] = a[0];
      hi[u] = a[kPairs * sizeof(T) / 16];  // element + 64
    }
  }

  // cos / sin of the unit's 8 pairs: exactly the RoPE kernel's (rope_math::cos_sin on float(position)).
  float cs[kUnitPairs], sn[kUnitPairs];
  const float p = rope_math::position_float(pos.position(s));
#pragma unroll
  for (int e = 0; e < kUnitPairs; ++e)
    rope_math::cos_sin(p, __ldg(inv_freq + c * kUnitPairs + e), scale, scale, &cs[e], &sn[e]);
  if (blockIdx.y == 0) {
    float4* t = reinterpret_cast<float4*>(table + s * kPairs + c * kUnitPairs);  // 64 bytes, 16-byte aligned
#pragma unroll
    for (int e = 0; e < kUnitPairs; e += 2) t[e / 2] = make_float4(cs[e], sn[e], cs[e + 1], sn[e + 1]);
  }

  // Pair e of the packet: element e of each half, in word e / 2; (a, b) -> (a cos - b sin, a sin + b cos), one
  // rounding.
  auto rotate = [&](uint4& a4, uint4& b4) {
    uint32_t* a = reinterpret_cast<uint32_t*>(&a4);
    uint32_t* b = reinterpret_cast<uint32_t*>(&b4);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float2 fa = unpack2<T>(a[w]), fb = unpack2<T>(b[w]);
      float ya0, yb0, ya1, yb1;
      rope_math::rotate(fa.x, fb.x, cs[2 * w], sn[2 * w], &ya0, &yb0);
      rope_math::rotate(fa.y, fb.y, cs[2 * w + 1], sn[2 * w + 1], &ya1, &yb1);
      a[w] = pack2<T>(ya0, ya1);
      b[w] = pack2<T>(yb0, yb1);
    }
  };
  for (int u0 = 0; u0 < n; u0 += kHeadsInFlight) {
    if (u0 > 0) {
#pragma unroll
      for (int u = 0; u < kHeadsInFlight; ++u) {
        if (u0 + u < n) {
          const uint4* a = address(j0 + u0 + u);
          lo[u] = a[0];
          hi[u] = a[kPairs * sizeof(T) / 16];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kHeadsInFlight; ++u) {
      if (u0 + u < n) {
        rotate(lo[u], hi[u]);
        uint4* a = address(j0 + u0 + u);
        a[0] = lo[u];
        a[kPairs * sizeof(T) / 16] = hi[u];
      }
    }
  }
}

}  // namespace

void rope_prepare(float2* table, int64_t rows, const PositionMap& pos, const float* inv_freq, float scale,
                  uint32_t* counters, int64_t groups, int64_t pre_groups, int64_t group_jobs, const TensorView& pre_q,
                  const TensorView& pre_k, bool pre_rotate_k, cudaStream_t stream) {
  PreRotation pre;
  if (pre_groups > 0) {
    DISTATTN_CHECK_ARG(pre_q.dtype == pre_k.dtype && dtype_size(pre_q.dtype) == 2, "q",
                       "must be bf16 or fp16 like k for the fused RoPE");
    DISTATTN_CHECK_ARG(pre_q.batch() == pre_k.batch() && pre_q.seqlen() == rows && pre_k.seqlen() == rows, "q",
                       "and k must have ", rows, " rows in the same batches for the fused RoPE's pre-rotation");
    pre.q = static_cast<unsigned char*>(pre_q.data);
    pre.k = static_cast<unsigned char*>(pre_k.data);
    pre.q_sb = pre_q.stride[0], pre.q_ss = pre_q.stride[1], pre.q_sh = pre_q.stride[2];
    pre.k_sb = pre_k.stride[0], pre.k_ss = pre_k.stride[1], pre.k_sh = pre_k.stride[2];
    pre.hq = pre_q.heads();
    pre.hk = pre_rotate_k ? pre_k.heads() : 0;
    pre.nb = pre_q.batch();
  }
  const int64_t head_rows = pre.nb * (pre.hq + pre.hk);
  const int64_t slices = std::max<int64_t>(1, (head_rows + kHeadsPerSlice - 1) / kHeadsPerSlice);
  DISTATTN_CHECK_ARG(slices <= 65535, "q", "has too many heads for the fused RoPE's pre-rotation (", head_rows,
                     " head rows)");
  const int64_t x_work = std::max(rows * kUnitsPerRow, groups + 2);
  const int64_t blocks = std::min<int64_t>((x_work + kThreads - 1) / kThreads, int64_t{1} << 30);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(slices));
  if (pre.q == nullptr || pre_q.dtype == DType::kBFloat16)
    rope_prepare_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(table, rows, pos, inv_freq, scale, counters,
                                                                      groups, pre_groups, group_jobs, pre);
  else
    rope_prepare_kernel<__half><<<grid, kThreads, 0, stream>>>(table, rows, pos, inv_freq, scale, counters, groups,
                                                               pre_groups, group_jobs, pre);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace detail
}  // namespace distattn
