// CUDA helpers of dilated attention (dilated_kernels.h): memory-bound elementwise kernels, grid-stride loops.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
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

// One thread per 4 consecutive elements of src (packed [B, S, H, D], D % 4 == 0): element e = 4*v lies in row
// (b, s, h) = e / D and dims d .. d+3, d = e % D; dst element (b, s, h, d) at b*sb + s*ss + h*sh + d.
__global__ void cast_kernel(const float* src, void* dst, int dtype, int64_t S, int64_t H, int64_t D, int64_t nvec,
                            int64_t sb, int64_t ss, int64_t sh) {
  GRID_STRIDE(v, nvec) {
    const int64_t e = 4 * v, row = e / D, d = e - row * D;
    const int64_t h = row % H, bs = row / H, s = bs % S, b = bs / S;
    const int64_t o = b * sb + s * ss + h * sh + d;
    const float4 x = reinterpret_cast<const float4*>(src)[v];
    if (dtype == static_cast<int>(DType::kBFloat16)) {
      __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(dst) + o);
      out[0] = __floats2bfloat162_rn(x.x, x.y);
      out[1] = __floats2bfloat162_rn(x.z, x.w);
    } else if (dtype == static_cast<int>(DType::kFloat16)) {
      __half2* out = reinterpret_cast<__half2*>(static_cast<__half*>(dst) + o);
      out[0] = __floats2half2_rn(x.x, x.y);
      out[1] = __floats2half2_rn(x.z, x.w);
    } else {
      float* out = static_cast<float*>(dst) + o;
      out[0] = x.x, out[1] = x.y, out[2] = x.z, out[3] = x.w;
    }
  }
}

// Heads a move touches: every head (head_parity < 0), or the H / 2 heads h = 2*v + head_parity (H even: the head
// chains' condition). Thread t then walks the entries of those heads only: t = ((b*nseg + g)*Hv + v)*m_max + i.
struct HeadSel {
  int64_t Hv, step, first;
  __device__ int64_t head(int64_t v) const { return step * v + first; }
};
HeadSel head_sel(int64_t H, int head_parity) {
  return head_parity < 0 ? HeadSel{H, 1, 0} : HeadSel{H / 2, 2, head_parity};
}

// One thread per compacted entry ((b*nseg + g)*H + h)*m_max + i of pattern (w, r) of a selected head: row p = g*w + s +
// r*i with s = h mod r (skipped when s + r*i >= w: padding of a short class). to_compact: lse_c[entry] =
// lse[(b*H + h)*S + p]; otherwise the reverse.
__global__ void lse_move_kernel(float* lse, float* lse_c, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r,
                                bool to_compact, HeadSel sel) {
  const int64_t nseg = S / w, m_max = max_rows(w, r), n = B * nseg * sel.Hv * m_max;
  GRID_STRIDE(t, n) {
    const int64_t i = t % m_max, bgv = t / m_max, h = sel.head(bgv % sel.Hv), bg = bgv / sel.Hv;
    const int64_t off = h % r + r * i;
    if (off >= w) continue;
    const int64_t g = bg % nseg, b = bg / nseg;
    const int64_t e = (bg * H + h) * m_max + i;  // compact_index
    const int64_t l = (b * H + h) * S + g * w + off;
    if (to_compact) {
      lse_c[e] = lse[l];
    } else {
      lse[l] = lse_c[e];
    }
  }
}

// Thread t: scatter of pattern 1's entry t (t < n1) and gather of pattern 2's entry t (t < n2), counting the entries
// of the selected heads only; see cuda_lse_advance in dilated_kernels.h.
__global__ void lse_advance_kernel(const float* lse_c1, float* lse, float* lse_c2, int64_t B, int64_t S, int64_t H,
                                   int64_t w1, int64_t r1, int64_t w2, int64_t r2, HeadSel sel) {
  const int64_t nseg1 = S / w1, m1 = max_rows(w1, r1), n1 = B * nseg1 * sel.Hv * m1;
  const int64_t nseg2 = S / w2, m2 = max_rows(w2, r2), n2 = B * nseg2 * sel.Hv * m2;
  const int64_t n = n1 > n2 ? n1 : n2;
  GRID_STRIDE(t, n) {
    if (t < n1) {
      const int64_t i = t % m1, bgv = t / m1, h = sel.head(bgv % sel.Hv), bg = bgv / sel.Hv;
      const int64_t off = h % r1 + r1 * i;
      if (off < w1) {
        const int64_t g = bg % nseg1, b = bg / nseg1;
        lse[(b * H + h) * S + g * w1 + off] = lse_c1[(bg * H + h) * m1 + i];
      }
    }
    if (t < n2) {
      const int64_t i = t % m2, bgv = t / m2, h = sel.head(bgv % sel.Hv), bg = bgv / sel.Hv;
      const int64_t off = h % r2 + r2 * i;
      if (off < w2) {
        const int64_t g = bg % nseg2, b = bg / nseg2, p = g * w2 + off;
        lse_c2[(bg * H + h) * m2 + i] =
            kept(p, h, w1, r1) ? lse_c1[compact_index(b, p, h, S, H, w1, r1)] : lse[(b * H + h) * S + p];
      }
    }
  }
}

}  // namespace

void cuda_lse_advance(const float* lse_c1, float* lse, float* lse_c2, int64_t B, int64_t S, int64_t H, int64_t w1,
                      int64_t r1, int64_t w2, int64_t r2, cudaStream_t stream, int head_parity) {
  const HeadSel sel = head_sel(H, head_parity);
  const int64_t n = std::max(B * (S / w1) * sel.Hv * max_rows(w1, r1), B * (S / w2) * sel.Hv * max_rows(w2, r2));
  lse_advance_kernel<<<blocks_for(n), kThreads, 0, stream>>>(lse_c1, lse, lse_c2, B, S, H, w1, r1, w2, r2, sel);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_fill(float* p, int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, n, value);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_cast(const float* src, const TensorView& dst, cudaStream_t stream) {
  const int64_t nvec = dst.numel() / 4;
  if (nvec <= 0) return;
  cast_kernel<<<blocks_for(nvec), kThreads, 0, stream>>>(src, dst.data, static_cast<int>(dst.dtype), dst.shape[1],
                                                         dst.shape[2], dst.shape[3], nvec, dst.stride[0], dst.stride[1],
                                                         dst.stride[2]);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_lse_gather(const float* lse, float* lse_c, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r,
                     cudaStream_t stream, int head_parity) {
  const HeadSel sel = head_sel(H, head_parity);
  const int64_t n = B * (S / w) * sel.Hv * max_rows(w, r);
  lse_move_kernel<<<blocks_for(n), kThreads, 0, stream>>>(const_cast<float*>(lse), lse_c, B, S, H, w, r, true, sel);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void cuda_lse_scatter(const float* lse_c, float* lse, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r,
                      cudaStream_t stream, int head_parity) {
  const HeadSel sel = head_sel(H, head_parity);
  const int64_t n = B * (S / w) * sel.Hv * max_rows(w, r);
  lse_move_kernel<<<blocks_for(n), kThreads, 0, stream>>>(lse, const_cast<float*>(lse_c), B, S, H, w, r, false, sel);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace dilated_detail
}  // namespace distattn
