// Pre-pass of the backward's ALiBi underflow cutoff (flash_bwd_alibi.h): per tile of q rows the largest row
// norm and the smallest LSE (log2 units), per tile of kv rows the largest row norm (one read of Q, K and LSE),
// then the per-pair bound over all (q tile, kv tile) pairs of each head, reduced to the interval of q tiles
// each kv tile must still visit. Launched before the main kernel on the same stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "flash_bwd_alibi.h"
#include "mma_primitives.cuh"

namespace distattn {
namespace kernels {
namespace {

constexpr int kStatThreads = 256;  // 8 warps

// One launch covers one tensor (q or k). Index math: row r of head h of batch b starts at
// x + b * batch_stride + r * row_stride + h * head_stride (elements); lse[b, h, r] = lse + b * lse_batch_stride +
// h * lse_head_stride + r.
struct TileStatArgs {
  const void* x = nullptr;                                    // [B, rows, heads, D] 16-bit
  int64_t batch_stride = 0, row_stride = 0, head_stride = 0;  // x strides (elements)
  int rows = 0;                                               // rows per (batch, head)
  int tile_rows = 0;                                          // rows per tile (<= kStatThreads)
  int num_tiles = 0;                                          // ceil(rows / tile_rows)
  int heads = 0;                                              // heads of x
  int head_dim = 0;                                           // D (64 or 128)
  const float* lse = nullptr;                                 // [B, heads, rows] or null (k)
  int64_t lse_batch_stride = 0, lse_head_stride = 0;          // lse strides (row stride 1)
  float* norm_out = nullptr;                                  // [B, heads, num_tiles] (k) or null
  float2* stat_out = nullptr;                                 // [B, heads, num_tiles] {norm, lse2 min} (q) or null
};

// Grid: x = tile, y = head, z = batch. A row of D 16-bit values is read by D / 8 lanes with one 16-byte load
// each, its squared norm reduced over those lanes by shuffles (as in flash_fwd_kv_norm.cu).
template <typename T>
__global__ void __launch_bounds__(kStatThreads) bwd_alibi_tile_stat_kernel(const __grid_constant__ TileStatArgs a) {
  __shared__ float s_red[2][kStatThreads / 32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int lanes_per_row = a.head_dim / 8;
  const int rows_per_step = 32 / lanes_per_row;
  const int sub = lane / lanes_per_row;
  const int part = lane % lanes_per_row;
  const int row_begin = blockIdx.x * a.tile_rows;
  const int row_end = min(row_begin + a.tile_rows, a.rows);
  const T* base = static_cast<const T*>(a.x) + blockIdx.z * a.batch_stride + blockIdx.y * a.head_stride + part * 8;
  float mx = 0.f;
  for (int r0 = row_begin + warp * rows_per_step; r0 < row_end; r0 += (kStatThreads / 32) * rows_per_step) {
    const int r = r0 + sub;
    float nsq = 0.f;
    if (r < row_end) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(base + static_cast<int64_t>(r) * a.row_stride));
      nsq = (sq_sum2<T>(w.x) + sq_sum2<T>(w.y)) + (sq_sum2<T>(w.z) + sq_sum2<T>(w.w));
    }
    for (int off = lanes_per_row / 2; off >= 1; off /= 2) nsq += __shfl_xor_sync(0xffffffffu, nsq, off);
    if (!(nsq <= 3.4e38f)) nsq = INFINITY;  // NaN / inf -> +inf (fmaxf would drop a NaN)
    mx = fmaxf(mx, nsq);
  }
  // Smallest LSE_log2 of the tile's rows, formed exactly as the main kernel forms it (l * log2(e) in fp32);
  // -inf rows (no visible key: P = 0 there) are left out, a NaN row makes the result -inf (nothing cut).
  float mn = INFINITY;
  if (a.lse != nullptr && row_begin + static_cast<int>(threadIdx.x) < row_end) {
    const float l = a.lse[blockIdx.z * a.lse_batch_stride + blockIdx.y * a.lse_head_stride + row_begin + threadIdx.x];
    mn = l != l ? -INFINITY : l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
  }
  for (int off = 16; off >= 1; off /= 2) {
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, off));
  }
  if (lane == 0) s_red[0][warp] = mx, s_red[1][warp] = mn;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kStatThreads / 32; ++w) mx = fmaxf(mx, s_red[0][w]), mn = fminf(mn, s_red[1][w]);
    // Rounded up: the fp32 sum of D squares is within D * 2^-24 (relative) of the exact one; 2^-12 covers it
    // and sqrtf's rounding. inf stays inf.
    const float norm = sqrtf(mx) * (1.f + 0x1p-12f);
    const int64_t out = (static_cast<int64_t>(blockIdx.z) * a.heads + blockIdx.y) * a.num_tiles + blockIdx.x;
    if (a.stat_out != nullptr) a.stat_out[out] = make_float2(norm, mn);
    if (a.norm_out != nullptr) a.norm_out[out] = norm;
  }
}

// The bound of one (q tile m, kv tile n) pair of head hq (see flash_bwd_kernel.cuh, "ALiBi cutoff"): every
// exp2 argument x = S scale_log2 - LSE_log2 + bias of the pair satisfies
//   x <= |scale_log2| Qmax Kmax - slope log2(e) dist_min - min_rows LSE_log2
// (Cauchy-Schwarz; rows with LSE -inf have P = 0 whatever x and are left out of the min; dist_min: the smallest
// |pos_q - pos_k| between the tiles' position ranges). Margins: 2^-10 relative on the product (the mma's fp32
// accumulation error is below 2^-16 |q||k| for D <= 128; the norms are rounded up); 2^-16 relative on the sum of
// the magnitudes the main loop forms (S scale_log2, LSE_log2, and the bias parts, at most slope log2(e) times
// dist_min + both tiles' position spans in the split form) plus 1 absolute, for the fp32 roundings of x (three
// at most) and of this bound; alibi_cut_log2 is the dtype's underflow threshold plus 3. True: the pair is cut;
// false on NaN.
__device__ __forceinline__ bool bwd_alibi_pair_cut(float abs_scale_log2, float slope2, float2 qs, float kn,
                                                   int64_t dist, int64_t spans, float cut_log2) {
  const float s_max = abs_scale_log2 * qs.x * kn * (1.f + 0x1p-10f);
  const float bias_max = slope2 * static_cast<float>(dist);
  const float bound = s_max + bias_max - qs.y;
  const float slack = 0x1p-16f * (s_max + fabsf(slope2) * static_cast<float>(dist + spans) + fabsf(qs.y)) + 1.f;
  return bound + slack < -cut_log2;
}

// Grid: x = kv tile n, y = q head, z = batch. Thread i judges q tiles i, i + 256, ...; the CTA keeps the first
// and last tile it could not cut.
__global__ void __launch_bounds__(kStatThreads)
    bwd_alibi_keep_kernel(const __grid_constant__ FlashBwdParams p, int block_m, int block_n, const float2* q_stat,
                          const float* k_norm, uint32_t* keep) {
  __shared__ int s_lo, s_hi;
  const int n = blockIdx.x, hq = blockIdx.y, b = blockIdx.z;
  if (threadIdx.x == 0) s_lo = p.num_q_tiles, s_hi = -1;
  __syncthreads();
  const float slope = p.alibi_slopes[hq];
  // A slope that is not a positive finite number cuts nothing (a negative one makes the bias grow with distance).
  const bool usable = slope > 0.f && slope <= 3.4e38f;
  const float slope2 = -slope * 1.4426950408889634f;  // as the main kernel forms it
  const float kn = k_norm[(static_cast<int64_t>(b) * p.heads_kv + hq / p.group) * p.num_kv_tiles + n];
  int64_t k_min, k_max;
  p.kv_pos.range(static_cast<int64_t>(n) * block_n, min(static_cast<int64_t>(n + 1) * block_n, int64_t{p.seqlen_kv}),
                 &k_min, &k_max);
  const float2* qs_row = q_stat + (static_cast<int64_t>(b) * p.heads_q + hq) * p.num_q_tiles;
  int lo = p.num_q_tiles, hi = -1;
  for (int m = threadIdx.x; m < p.num_q_tiles; m += kStatThreads) {
    int64_t q_min, q_max;
    p.q_pos.range(static_cast<int64_t>(m) * block_m, min(static_cast<int64_t>(m + 1) * block_m, int64_t{p.seqlen_q}),
                  &q_min, &q_max);
    int64_t dist = k_min - q_max;
    if (q_min - k_max > dist) dist = q_min - k_max;
    if (dist < 0) dist = 0;
    const bool cut = usable && bwd_alibi_pair_cut(fabsf(p.scale_log2), slope2, qs_row[m], kn, dist,
                                                  (q_max - q_min) + (k_max - k_min), p.alibi_cut_log2);
    if (!cut) lo = min(lo, m), hi = max(hi, m);
  }
  if (hi >= 0) {
    atomicMin(&s_lo, lo);
    atomicMax(&s_hi, hi);
  }
  __syncthreads();
  // [first, last + 1) packed as first | (last + 1) << 16 (the host enables the cutoff for num_q_tiles < 2^16)
  if (threadIdx.x == 0) {
    keep[(static_cast<int64_t>(b) * p.heads_q + hq) * p.num_kv_tiles + n] =
        static_cast<uint32_t>(s_lo) | (static_cast<uint32_t>(s_hi + 1) << 16);
  }
}

}  // namespace

template <typename T>
void run_flash_bwd_alibi_prepass(const FlashBwdParams& p, int block_m, int block_n, float2* q_stat, float* k_norm,
                                 uint32_t* keep, cudaStream_t stream) {
  TileStatArgs q;
  q.x = p.q;
  q.batch_stride = p.q_batch_stride, q.row_stride = p.q_row_stride, q.head_stride = p.q_head_stride;
  q.rows = p.seqlen_q;
  q.tile_rows = block_m;
  q.num_tiles = (p.seqlen_q + block_m - 1) / block_m;
  q.heads = p.heads_q;
  q.head_dim = p.head_dim;
  q.lse = p.lse;
  q.lse_batch_stride = p.lse_batch_stride, q.lse_head_stride = p.lse_head_stride;
  q.stat_out = q_stat;
  bwd_alibi_tile_stat_kernel<T><<<dim3(q.num_tiles, q.heads, p.batch), kStatThreads, 0, stream>>>(q);
  DISTATTN_CUDA_CHECK_LAUNCH();

  TileStatArgs k;
  k.x = p.k;
  k.batch_stride = p.k_batch_stride, k.row_stride = p.k_row_stride, k.head_stride = p.k_head_stride;
  k.rows = p.seqlen_kv;
  k.tile_rows = block_n;
  k.num_tiles = (p.seqlen_kv + block_n - 1) / block_n;
  k.heads = p.heads_kv;
  k.head_dim = p.head_dim;
  k.norm_out = k_norm;
  bwd_alibi_tile_stat_kernel<T><<<dim3(k.num_tiles, k.heads, p.batch), kStatThreads, 0, stream>>>(k);
  DISTATTN_CUDA_CHECK_LAUNCH();

  bwd_alibi_keep_kernel<<<dim3(p.num_kv_tiles, p.heads_q, p.batch), kStatThreads, 0, stream>>>(p, block_m, block_n,
                                                                                               q_stat, k_norm, keep);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

template void run_flash_bwd_alibi_prepass<__nv_bfloat16>(const FlashBwdParams&, int, int, float2*, float*, uint32_t*,
                                                         cudaStream_t);
template void run_flash_bwd_alibi_prepass<__half>(const FlashBwdParams&, int, int, float2*, float*, uint32_t*,
                                                  cudaStream_t);

}  // namespace kernels
}  // namespace distattn
