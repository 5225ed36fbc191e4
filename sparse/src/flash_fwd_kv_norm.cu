// The ALiBi cutoff's pre-pass (flash_fwd_kernel.cuh, "ALiBi cutoff"): the largest squared key norm of each
// (batch, kv head). One read of K (~0.04 ms for 16K x 32 heads x 128 at ~3 TB/s), launched before the
// forward kernel on the same stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "flash_fwd_params.h"
#include "mma_primitives.cuh"

namespace distattn {
namespace kernels {
namespace {

constexpr int kNormThreads = 256;  // 8 warps
constexpr int kNormRows = 256;     // kv rows per CTA

// Grid: x = blocks of kNormRows kv rows, y = kv head, z = batch. A row of D 16-bit values is read by D / 8
// lanes with one 16-byte load each (D = 128: 16 lanes, two rows per warp step; D = 64: 8 lanes, four rows),
// its squared norm reduced over those lanes by shuffles; the CTA's max goes to out by an integer atomicMax,
// which orders non-negative floats (and +inf above them) like the floats.
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    kv_norm_sq_max_kernel(const __grid_constant__ FlashFwdParams p, float* out) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int lanes_per_row = p.head_dim / 8;      // 8 or 16: divides 32
  const int rows_per_step = 32 / lanes_per_row;  // rows one warp reads per step
  const int sub = lane / lanes_per_row;          // this lane's row within the step
  const int part = lane % lanes_per_row;         // this lane's 16-byte piece of the row
  const int row_begin = blockIdx.x * kNormRows;
  const int row_end = min(row_begin + kNormRows, p.seqlen_kv);
  // k[b, j, h, 8 part .. 8 part + 7] = k_ptr + b * k_batch_stride + j * k_row_stride + h * k_head_stride + 8 part
  const T* base =
      static_cast<const T*>(p.k_ptr) + blockIdx.z * p.k_batch_stride + blockIdx.y * p.k_head_stride + part * 8;
  float mx = 0.f;
  // r0 is warp-uniform: every lane takes part in each step's shuffles.
  for (int r0 = row_begin + warp * rows_per_step; r0 < row_end; r0 += (kNormThreads / 32) * rows_per_step) {
    const int r = r0 + sub;
    float nsq = 0.f;
    if (r < row_end) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(base + static_cast<int64_t>(r) * p.k_row_stride));
      nsq = (sq_sum2<T>(w.x) + sq_sum2<T>(w.y)) + (sq_sum2<T>(w.z) + sq_sum2<T>(w.w));
    }
    for (int off = lanes_per_row / 2; off >= 1; off /= 2) nsq += __shfl_xor_sync(0xffffffffu, nsq, off);
    if (!(nsq <= 3.4e38f)) nsq = __int_as_float(0x7f800000);  // NaN / inf -> +inf (fmaxf would drop a NaN)
    mx = fmaxf(mx, nsq);
  }
  for (int off = 16; off >= 1; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (lane == 0) atomicMax(reinterpret_cast<int*>(out + blockIdx.z * p.heads_kv + blockIdx.y), __float_as_int(mx));
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

template void run_kv_norm_sq_max<__nv_bfloat16>(const FlashFwdParams& params, float* out, cudaStream_t stream);
template void run_kv_norm_sq_max<__half>(const FlashFwdParams& params, float* out, cudaStream_t stream);

}  // namespace kernels
}  // namespace distattn
