// The ALiBi cutoff's pre-passes (flash_fwd_kernel.cuh and hopper/flash_fwd_hopper_plan.h, "ALiBi cutoff"): the
// largest squared key norm of each (batch, kv head), and for the Hopper kernel also the largest squared query norm of
// each 128-row q tile. One read of K (and Q) (~0.04 ms each for 16K x 32 heads x 128 at ~3 TB/s), launched before the
// forward kernel on the same stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "flash_fwd_norms.h"
#include "flash_fwd_params.h"
#include "mma_primitives.cuh"

namespace distattn {
namespace kernels {
namespace {

constexpr int kNormThreads = 256;  // 8 warps
constexpr int kNormRows = 256;     // kv rows per CTA

// Largest squared norm of rows [row_begin, row_end) of a [rows, D] slice (row stride in elements), over the
// rows this warp reads (warp w of kNormThreads / 32 takes every (kNormThreads / 32)-th step), returned in every lane.
// A row of D 16-bit values is read by D / 8 lanes with one 16-byte load each (D = 128: 16 lanes, two rows per warp
// step; D = 64: 8 lanes, four rows), its squared norm reduced over those lanes by shuffles. NaN / inf -> +inf (so the
// cutoff cuts nothing; fmaxf would drop a NaN).
template <typename T>
__device__ __forceinline__ float warp_norm_sq_max(const T* slice, int64_t row_stride, int row_begin, int row_end,
                                                  int head_dim) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int lanes_per_row = head_dim / 8;        // 8 or 16: divides 32
  const int rows_per_step = 32 / lanes_per_row;  // rows one warp reads per step
  const int sub = lane / lanes_per_row;          // this lane's row within the step
  const int part = lane % lanes_per_row;         // this lane's 16-byte piece of the row
  // row r, elements 8 part .. 8 part + 7: slice + r * row_stride + 8 part
  const T* base = slice + part * 8;
  float mx = 0.f;
  // r0 is warp-uniform: every lane takes part in each step's shuffles.
  for (int r0 = row_begin + warp * rows_per_step; r0 < row_end; r0 += (kNormThreads / 32) * rows_per_step) {
    const int r = r0 + sub;
    float nsq = 0.f;
    if (r < row_end) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(base + static_cast<int64_t>(r) * row_stride));
      nsq = (sq_sum2<T>(w.x) + sq_sum2<T>(w.y)) + (sq_sum2<T>(w.z) + sq_sum2<T>(w.w));
    }
    for (int off = lanes_per_row / 2; off >= 1; off /= 2) nsq += __shfl_xor_sync(0xffffffffu, nsq, off);
    if (!(nsq <= 3.4e38f)) nsq = __int_as_float(0x7f800000);
    mx = fmaxf(mx, nsq);
  }
  for (int off = 16; off >= 1; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  return mx;
}

// Grid: x = blocks of kNormRows kv rows, y = kv head, z = batch. Each warp's max goes to out by an integer atomicMax,
// which orders non-negative floats (and +inf above them) like the floats.
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    kv_norm_sq_max_kernel(const __grid_constant__ FlashFwdParams p, float* out) {
  const int row_begin = blockIdx.x * kNormRows;
  const int row_end = min(row_begin + kNormRows, p.seqlen_kv);
  // k[b, j, h, :] = k_ptr + b * k_batch_stride + j * k_row_stride + h * k_head_stride
  const T* slice = static_cast<const T*>(p.k_ptr) + blockIdx.z * p.k_batch_stride + blockIdx.y * p.k_head_stride;
  const float mx = warp_norm_sq_max<T>(slice, p.k_row_stride, row_begin, row_end, p.head_dim);
  if ((threadIdx.x & 31) == 0)
    atomicMax(reinterpret_cast<int*>(out + blockIdx.z * p.heads_kv + blockIdx.y), __float_as_int(mx));
}

// The Hopper pre-pass. Grid: x = 128-row blocks (q tiles; the same row blocks of K), y = q head, z = batch. CTA (m, h,
// b) folds q tile m of head h into q_out[(b * Hq + h) * M + m] and, when h < Hkv, kv rows [128 m, 128 m + 128) of kv
// head h into k_out[b * Hkv + h] (atomicMax per warp, as above; both zeroed before the launch).
constexpr int kQTileRows = 128;  // == the Hopper kernel's q tile (kBlockM)
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    qk_norm_sq_max_kernel(const __grid_constant__ FlashFwdParams p, float* k_out, float* q_out) {
  const int row_begin = blockIdx.x * kQTileRows;
  const int h = blockIdx.y, b = blockIdx.z;
  if (row_begin < p.seqlen_q) {
    // q[b, i, h, :] = q_ptr + b * q_batch_stride + i * q_row_stride + h * q_head_stride
    const T* slice = static_cast<const T*>(p.q_ptr) + b * p.q_batch_stride + h * p.q_head_stride;
    const float mx =
        warp_norm_sq_max<T>(slice, p.q_row_stride, row_begin, min(row_begin + kQTileRows, p.seqlen_q), p.head_dim);
    if ((threadIdx.x & 31) == 0)
      atomicMax(reinterpret_cast<int*>(q_out + (static_cast<int64_t>(b) * p.heads_q + h) * p.num_m_blocks + blockIdx.x),
                __float_as_int(mx));
  }
  if (h < p.heads_kv && row_begin < p.seqlen_kv) {
    const T* slice = static_cast<const T*>(p.k_ptr) + b * p.k_batch_stride + h * p.k_head_stride;
    const float mx =
        warp_norm_sq_max<T>(slice, p.k_row_stride, row_begin, min(row_begin + kQTileRows, p.seqlen_kv), p.head_dim);
    if ((threadIdx.x & 31) == 0)
      atomicMax(reinterpret_cast<int*>(k_out + static_cast<int64_t>(b) * p.heads_kv + h), __float_as_int(mx));
  }
}

}  // namespace

template <typename T>
void run_kv_norm_sq_max(const FlashFwdParams& params, float* out, cudaStream_t stream) {
  DISTATTN_CUDA_CHECK(
      cudaMemsetAsync(out, 0, static_cast<size_t>(params.batch) * params.heads_kv * sizeof(float), stream));
  const dim3 grid(static_cast<unsigned>((params.seqlen_kv + kNormRows - 1) / kNormRows),
                  static_cast<unsigned>(params.heads_kv), static_cast<unsigned>(params.batch));
  kv_norm_sq_max_kernel<T><<<grid, kNormThreads, 0, stream>>>(params, out);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

template <typename T>
void run_qk_norm_sq_max(const FlashFwdParams& params, float* k_out, float* q_out, cudaStream_t stream) {
  const int64_t nk = static_cast<int64_t>(params.batch) * params.heads_kv;
  const int64_t nq = static_cast<int64_t>(params.batch) * params.heads_q * params.num_m_blocks;
  DISTATTN_CHECK_ARG(q_out == k_out + nk, "q_out", "must follow k_out's B * Hkv floats (one scratch, one memset)");
  DISTATTN_CUDA_CHECK(cudaMemsetAsync(k_out, 0, static_cast<size_t>(nk + nq) * sizeof(float), stream));
  const int row_blocks = (std::max(params.seqlen_q, params.seqlen_kv) + kQTileRows - 1) / kQTileRows;
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(params.heads_q),
                  static_cast<unsigned>(params.batch));
  qk_norm_sq_max_kernel<T><<<grid, kNormThreads, 0, stream>>>(params, k_out, q_out);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

template void run_kv_norm_sq_max<__nv_bfloat16>(const FlashFwdParams& params, float* out, cudaStream_t stream);
template void run_kv_norm_sq_max<__half>(const FlashFwdParams& params, float* out, cudaStream_t stream);
template void run_qk_norm_sq_max<__nv_bfloat16>(const FlashFwdParams& params, float* k_out, float* q_out,
                                                cudaStream_t stream);
template void run_qk_norm_sq_max<__half>(const FlashFwdParams& params, float* k_out, float* q_out, cudaStream_t stream);

}  // namespace kernels
}  // namespace distattn
