// CUDA helpers of the distributed dilated attention (distributed_dilated_kernels.h): memory-bound elementwise
// kernels, grid-stride loops, 64-bit indices.
#include <cuda_runtime.h>

#include <cmath>

#include "dilated_index.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/dtype.h"
#include "distattn/core/error.h"
#include "distributed_dilated_kernels.h"

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

// One thread per element (row, c, b, t, d) of the class's part, i = ((((row*2 + c)*B + b)*KH + t)*D + d, written to
// row*row_elems + (i mod 2*B*KH*D).
// T: an unsigned integer of the element's size (a plain bit copy).
template <typename T>
__global__ void pack_kernel(const T* k, const T* v, T* send, int64_t B, int64_t KH, int64_t D, KeptClass kc, int64_t kb,
                            int64_t ks, int64_t kh, int64_t vb, int64_t vs, int64_t vh) {
  const int64_t n = kc.n_max * 2 * B * KH * D;
  GRID_STRIDE(i, n) {
    const int64_t d = i % D, t = (i / D) % KH, b = (i / (D * KH)) % B, c = (i / (D * KH * B)) % 2,
                  row = i / (D * KH * B * 2);
    T* dst = send + row * kc.row_elems + ((c * B + b) * KH + t) * D + d;
    if (row >= kc.count) {
      *dst = T(0);
      continue;
    }
    const int64_t l = kc.phase + kc.r * row, e = dist_kv_head(t, kc.s, kc.r, kc.gqa);
    *dst = c == 0 ? k[b * kb + l * ks + e * kh + d] : v[b * vb + l * vs + e * vh + d];
  }
}

// One thread per destination element (c, row i < count, b, kv head e, d) of dk_acc / dv_acc: sums the entries
// t whose kv head is e (in t order), so repeated kv heads never race.
__global__ void scatter_add_kernel(const float* own, float* dk, float* dv, int64_t B, int64_t L, int64_t Hkv, int64_t D,
                                   KeptClass kc) {
  const int64_t n = 2 * kc.count * B * Hkv * D;
  GRID_STRIDE(j, n) {
    const int64_t d = j % D, e = (j / D) % Hkv, b = (j / (D * Hkv)) % B, row = (j / (D * Hkv * B)) % kc.count,
                  c = j / (D * Hkv * B * kc.count);
    float add = 0.f;
    bool any = false;
    for (int64_t t = 0; t < kc.KH; ++t) {
      if (dist_kv_head(t, kc.s, kc.r, kc.gqa) != e) continue;
      add += own[row * kc.row_elems + ((c * B + b) * kc.KH + t) * D + d];
      any = true;
    }
    if (!any) continue;
    const int64_t l = kc.phase + kc.r * row;
    float* dst = c == 0 ? dk : dv;
    dst[((b * L + l) * Hkv + e) * D + d] += add;
  }
}

// Phase 1 of the merge, one thread per element (b, l, h, d) of acc: rescale with the OLD lse_acc.
__global__ void merge_dist_values_kernel(float* acc, const float* lse_acc, const float* part, const float* lse_part,
                                         int64_t B, int64_t L, int64_t H, int64_t D, int64_t r, int64_t base,
                                         int64_t n_max) {
  const int64_t n = B * L * H * D;
  GRID_STRIDE(i, n) {
    const int64_t h = (i / D) % H, l = (i / (D * H)) % L, b = i / (D * H * L);
    const int64_t phase = dist_phase(h % r, base, r);
    if ((l - phase) % r != 0 || l < phase) continue;
    const float la = lse_acc[(b * H + h) * L + l];
    const float lp = lse_part[dist_lse_index(b, h, (l - phase) / r, H, n_max)];
    const float hi = fmaxf(la, lp);
    if (hi == -INFINITY) continue;
    const float Lm = hi + log1pf(expf(fminf(la, lp) - hi));
    acc[i] = acc[i] * expf(la - Lm) + part[i] * expf(lp - Lm);
  }
}

// Phase 2, one thread per row (b, h, l): lse_acc = logaddexp(lse_acc, lse_part).
__global__ void merge_dist_lse_kernel(float* lse_acc, const float* lse_part, int64_t B, int64_t L, int64_t H, int64_t r,
                                      int64_t base, int64_t n_max) {
  const int64_t n = B * H * L;
  GRID_STRIDE(i, n) {
    const int64_t l = i % L, h = (i / L) % H, b = i / (L * H);
    const int64_t phase = dist_phase(h % r, base, r);
    if ((l - phase) % r != 0 || l < phase) continue;
    const float la = lse_acc[i];
    const float lp = lse_part[dist_lse_index(b, h, (l - phase) / r, H, n_max)];
    const float hi = fmaxf(la, lp);
    if (hi == -INFINITY) continue;
    lse_acc[i] = hi + log1pf(expf(fminf(la, lp) - hi));
  }
}

__global__ void compact_lse_dist_kernel(const float* lse, float* lse_part, int64_t B, int64_t L, int64_t H, int64_t r,
                                        int64_t base, int64_t n_max) {
  const int64_t n = B * H * L;
  GRID_STRIDE(i, n) {
    const int64_t l = i % L, h = (i / L) % H, b = i / (L * H);
    const int64_t phase = dist_phase(h % r, base, r);
    if ((l - phase) % r != 0 || l < phase) continue;
    lse_part[dist_lse_index(b, h, (l - phase) / r, H, n_max)] = lse[i];
  }
}

template <typename T>
void launch_pack(const TensorView& k, const TensorView& v, void* send, const KeptClass& kc, cudaStream_t stream) {
  const int64_t B = k.shape[0], D = k.shape[3];
  const int64_t n = kc.n_max * 2 * B * kc.KH * D;
  pack_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      static_cast<const T*>(k.data), static_cast<const T*>(v.data), static_cast<T*>(send), B, kc.KH, D, kc, k.stride[0],
      k.stride[1], k.stride[2], v.stride[0], v.stride[1], v.stride[2]);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace

void cuda_pack_kept(const TensorView& k, const TensorView& v, void* send, const KeptClass& kc, cudaStream_t stream) {
  switch (dtype_size(k.dtype)) {
    case 2:
      launch_pack<uint16_t>(k, v, send, kc, stream);
      break;
    case 4:
      launch_pack<uint32_t>(k, v, send, kc, stream);
      break;
    case 8:
      launch_pack<unsigned long long>(k, v, send, kc, stream);
      break;
    default:
      DISTATTN_THROW("k", "has dtype ", dtype_name(k.dtype), ", which the K|V packing does not handle");
  }
}

void cuda_scatter_add_kept(const float* own, float* dk_acc, float* dv_acc, int64_t B, int64_t L, int64_t Hkv, int64_t D,
                           const KeptClass& kc, cudaStream_t stream) {
  const int64_t n = 2 * kc.count * B * Hkv * D;
  if (n <= 0) return;
  scatter_add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(own, dk_acc, dv_acc, B, L, Hkv, D, kc);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_merge_dist(float* acc, float* lse_acc, const float* part, const float* lse_part, int64_t B, int64_t L,
                     int64_t H, int64_t D, int64_t r, int64_t base, int64_t n_max, cudaStream_t stream) {
  merge_dist_values_kernel<<<blocks_for(B * L * H * D), kThreads, 0, stream>>>(acc, lse_acc, part, lse_part, B, L, H, D,
                                                                               r, base, n_max);
  DISTATTN_CUDA_CHECK_LAUNCH();
  merge_dist_lse_kernel<<<blocks_for(B * H * L), kThreads, 0, stream>>>(lse_acc, lse_part, B, L, H, r, base, n_max);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_compact_lse_dist(const float* lse, float* lse_part, int64_t B, int64_t L, int64_t H, int64_t r, int64_t base,
                           int64_t n_max, cudaStream_t stream) {
  compact_lse_dist_kernel<<<blocks_for(B * H * L), kThreads, 0, stream>>>(lse, lse_part, B, L, H, r, base, n_max);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace dilated_detail
}  // namespace distattn
