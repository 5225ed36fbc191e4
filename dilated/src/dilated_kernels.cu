// CUDA helpers of dilated attention (dilated_kernels.h): memory-bound elementwise kernels, grid-stride loops.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "dilated_index.h"
#include "dilated_kernels.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"

namespace distattn {
namespace dilated_detail {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); i += int64_t{gridDim.x} * blockDim.x)

__global__ void fill_kernel(float* p, int64_t n, float value) { GRID_STRIDE(i, n) p[i] = value; }

// Phase 1, one thread per element (b, p, h, d) of acc, i = ((b*S + p)*H + h)*D + d: rescale with the OLD
// lse_acc (phase 2 updates it afterwards, so no thread reads a half-updated row).
__global__ void merge_values_kernel(float* acc, const float* lse_acc, const float* part, const float* lse_part,
                                    int64_t B, int64_t S, int64_t H, int64_t D, int64_t w, int64_t r) {
  const int64_t n = B * S * H * D;
  GRID_STRIDE(i, n) {
    const int64_t h = (i / D) % H, p = (i / (D * H)) % S, b = i / (D * H * S);
    if (!kept(p, h, r)) continue;
    const float la = lse_acc[(b * H + h) * S + p];
    const float lp = lse_part[compact_index(b, p, h, S, H, w, r)];
    const float hi = fmaxf(la, lp);
    if (hi == -INFINITY) continue;  // neither side has any key: stays 0
    const float L = hi + log1pf(expf(fminf(la, lp) - hi));
    acc[i] = acc[i] * expf(la - L) + part[i] * expf(lp - L);
  }
}

// Phase 2, one thread per row (b, h, p): lse_acc = logaddexp(lse_acc, lse_part).
__global__ void merge_lse_kernel(float* lse_acc, const float* lse_part, int64_t B, int64_t S, int64_t H, int64_t w,
                                 int64_t r) {
  const int64_t n = B * H * S;
  GRID_STRIDE(i, n) {
    const int64_t p = i % S, h = (i / S) % H, b = i / (S * H);
    if (!kept(p, h, r)) continue;
    const float la = lse_acc[i];
    const float lp = lse_part[compact_index(b, p, h, S, H, w, r)];
    const float hi = fmaxf(la, lp);
    if (hi == -INFINITY) continue;
    lse_acc[i] = hi + log1pf(expf(fminf(la, lp) - hi));
  }
}

__global__ void cast_kernel(const float* src, void* dst, int dtype, int64_t S, int64_t H, int64_t D, int64_t n,
                            int64_t sb, int64_t ss, int64_t sh) {
  GRID_STRIDE(i, n) {
    const int64_t d = i % D, h = (i / D) % H, s = (i / (D * H)) % S, b = i / (D * H * S);
    const int64_t o = b * sb + s * ss + h * sh + d;
    const float v = src[i];
    if (dtype == static_cast<int>(DType::kBFloat16)) {
      static_cast<__nv_bfloat16*>(dst)[o] = __float2bfloat16_rn(v);
    } else if (dtype == static_cast<int>(DType::kFloat16)) {
      static_cast<__half*>(dst)[o] = __float2half_rn(v);
    } else {
      static_cast<float*>(dst)[o] = v;
    }
  }
}

__global__ void compact_lse_kernel(const float* lse, float* lse_part, int64_t B, int64_t S, int64_t H, int64_t w,
                                   int64_t r) {
  const int64_t n = B * H * S;
  GRID_STRIDE(i, n) {
    const int64_t p = i % S, h = (i / S) % H, b = i / (S * H);
    if (kept(p, h, r)) lse_part[compact_index(b, p, h, S, H, w, r)] = lse[i];
  }
}

}  // namespace

void cuda_fill(float* p, int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, n, value);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_merge(float* acc, float* lse_acc, const float* part, const float* lse_part, int64_t B, int64_t S, int64_t H,
                int64_t D, int64_t w, int64_t r, cudaStream_t stream) {
  merge_values_kernel<<<blocks_for(B * S * H * D), kThreads, 0, stream>>>(acc, lse_acc, part, lse_part, B, S, H, D, w,
                                                                          r);
  DISTATTN_CUDA_CHECK_LAUNCH();
  merge_lse_kernel<<<blocks_for(B * H * S), kThreads, 0, stream>>>(lse_acc, lse_part, B, S, H, w, r);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_cast(const float* src, const TensorView& dst, cudaStream_t stream) {
  const int64_t n = dst.numel();
  cast_kernel<<<blocks_for(n), kThreads, 0, stream>>>(src, dst.data, static_cast<int>(dst.dtype), dst.shape[1],
                                                      dst.shape[2], dst.shape[3], n, dst.stride[0], dst.stride[1],
                                                      dst.stride[2]);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_compact_lse(const float* lse, float* lse_part, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r,
                      cudaStream_t stream) {
  compact_lse_kernel<<<blocks_for(B * H * S), kThreads, 0, stream>>>(lse, lse_part, B, S, H, w, r);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace dilated_detail
}  // namespace distattn
