// Timing probe (not part of the library, not a test): the Hopper forward kernel next to the existing
// forward (flash_attention_forward, mma.sync) on the same random inputs, B = 1, H = 32, D = 128, bf16.
// CUDA events, median of `reps` runs after 3 warm-ups. TFLOPs = 4 * visible pairs * H * D / time, pairs
// counted exactly (dense S^2, causal S(S+1)/2, causal window W: sum_q min(q + 1, W), block-diagonal L: S L).
// Also prints max |O_hopper - O_old| over the whole output (a sanity check; the tests are the real check).
// Build: see notes/hopper_kernel.md (links libdistattn.a). Usage: hopper_fwd_timing [reps] [max_S]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../flash_fwd_hopper.h"
#include "distattn/core/check_cuda.h"
#include "distattn/sparse/flash_attention.h"
#include "timing_common.cuh"

using namespace distattn;

using probe::fill_random;
using probe::median_ms;

int main(int argc, char** argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 20;
  const int max_s = argc > 2 ? atoi(argv[2]) : 65536;
  const int H = 32, D = 128;
  cudaStream_t stream;
  DISTATTN_CUDA_CHECK(cudaStreamCreate(&stream));
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  DISTATTN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  printf("device %s\n", prop.name);
  printf("%-7s %-14s %10s %8s %10s %8s %8s %10s\n", "S", "mask", "hopper_ms", "TF", "old_ms", "TF", "speedup",
         "max|diff|");
  for (int S : {4096, 16384, 65536}) {
    if (S > max_s) continue;
    const size_t n = size_t(S) * H * D;
    __nv_bfloat16 *q, *k, *v, *o_new, *o_old;
    float* lse;
    DISTATTN_CUDA_CHECK(cudaMalloc(&q, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&k, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&v, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&o_new, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&o_old, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&lse, size_t(S) * H * 4));
    fill_random<<<1024, 256, 0, stream>>>(q, n, 1);
    fill_random<<<1024, 256, 0, stream>>>(k, n, 2);
    fill_random<<<1024, 256, 0, stream>>>(v, n, 3);
    DISTATTN_CUDA_CHECK_LAUNCH();
    // Block-diagonal 2048: q block i (128 rows) lists the 16 kv blocks of its 2048-token segment, all FULL.
    const int nb = S / 128, seg = 2048 / 128;
    std::vector<int32_t> ro(nb + 1), ci, co(nb + 1), ri;
    std::vector<uint8_t> rp, cp;
    for (int i = 0; i < nb; ++i) {
      ro[i] = static_cast<int32_t>(ci.size());
      for (int j = (i / seg) * seg; j < (i / seg + 1) * seg; ++j) {
        ci.push_back(j);
        rp.push_back(0);
      }
    }
    ro[nb] = static_cast<int32_t>(ci.size());
    for (int j = 0; j < nb; ++j) {  // the transpose (same by symmetry)
      co[j] = static_cast<int32_t>(ri.size());
      for (int i = (j / seg) * seg; i < (j / seg + 1) * seg; ++i) {
        ri.push_back(i);
        cp.push_back(0);
      }
    }
    co[nb] = static_cast<int32_t>(ri.size());
    int32_t *d_ro, *d_ci, *d_co, *d_ri;
    uint8_t *d_rp, *d_cp;
    DISTATTN_CUDA_CHECK(cudaMalloc(&d_ro, ro.size() * 4));
    DISTATTN_CUDA_CHECK(cudaMalloc(&d_ci, ci.size() * 4));
    DISTATTN_CUDA_CHECK(cudaMalloc(&d_co, co.size() * 4));
    DISTATTN_CUDA_CHECK(cudaMalloc(&d_ri, ri.size() * 4));
    DISTATTN_CUDA_CHECK(cudaMalloc(&d_rp, rp.size()));
    DISTATTN_CUDA_CHECK(cudaMalloc(&d_cp, cp.size()));
    DISTATTN_CUDA_CHECK(cudaMemcpy(d_ro, ro.data(), ro.size() * 4, cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(d_ci, ci.data(), ci.size() * 4, cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(d_co, co.data(), co.size() * 4, cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(d_ri, ri.data(), ri.size() * 4, cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(d_rp, rp.data(), rp.size(), cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(d_cp, cp.data(), cp.size(), cudaMemcpyHostToDevice));
    BlockListView blocks;
    blocks.device = Device::kCuda;
    blocks.num_q_blocks = blocks.num_kv_blocks = nb;
    blocks.nnz = static_cast<int64_t>(ci.size());
    blocks.row_offset = d_ro;
    blocks.col_index = d_ci;
    blocks.row_partial = d_rp;
    blocks.col_offset = d_co;
    blocks.row_index = d_ri;
    blocks.col_partial = d_cp;

    struct MaskCase {
      const char* name;
      Mask mask;
      double pairs;
    };
    double win_pairs = 0;
    for (int64_t i = 0; i < S; ++i) win_pairs += static_cast<double>(std::min<int64_t>(i + 1, 2048));
    const MaskCase cases[] = {
        {"dense", Mask::none(), double(S) * S},
        {"causal", Mask::make_causal(), double(S) * (S + 1) / 2},
        {"causal_win2048", Mask::make_causal(2048), win_pairs},
        {"blockdiag2048", Mask{false, 0, &blocks}, double(S) * 2048},
    };
    for (const MaskCase& mc : cases) {
      AttnParams p;
      p.q = TensorView::packed(q, DType::kBFloat16, Device::kCuda, 1, S, H, D);
      p.k = TensorView::packed(k, DType::kBFloat16, Device::kCuda, 1, S, H, D);
      p.v = TensorView::packed(v, DType::kBFloat16, Device::kCuda, 1, S, H, D);
      p.o = TensorView::packed(o_new, DType::kBFloat16, Device::kCuda, 1, S, H, D);
      p.lse = lse;
      p.q_pos = p.kv_pos = PositionMap::contiguous(0, S);
      p.mask = mc.mask;
      validate_forward(p, Device::kCuda);
      if (!flash_fwd_hopper_supported(p, device)) {
        printf("hopper kernel not supported here\n");
        return 1;
      }
      const int r = S >= 65536 ? std::max(3, reps / 4) : reps;
      const double t_new = median_ms([&] { flash_fwd_hopper(p, stream); }, r, stream);
      AttnParams p_old = p;
      p_old.o.data = o_old;
      const double t_old = median_ms([&] { flash_attention_forward(p_old, stream); }, r, stream);
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
      double max_diff = -1;
      if (S <= 16384) {
        std::vector<__nv_bfloat16> a(n), b(n);
        DISTATTN_CUDA_CHECK(cudaMemcpy(a.data(), o_new, n * 2, cudaMemcpyDeviceToHost));
        DISTATTN_CUDA_CHECK(cudaMemcpy(b.data(), o_old, n * 2, cudaMemcpyDeviceToHost));
        max_diff = 0;
        for (size_t i = 0; i < n; ++i) {
          const double d = std::fabs(double(__bfloat162float(a[i])) - double(__bfloat162float(b[i])));
          if (!(d <= max_diff)) max_diff = std::isnan(d) ? INFINITY : d;
        }
      }
      const double flops = 4.0 * mc.pairs * H * D;
      printf("%-7d %-14s %10.3f %8.1f %10.3f %8.1f %8.2f %10.2e\n", S, mc.name, t_new, flops / t_new / 1e9, t_old,
             flops / t_old / 1e9, t_old / t_new, max_diff);
      fflush(stdout);
    }
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o_new), cudaFree(o_old), cudaFree(lse);
    cudaFree(d_ro), cudaFree(d_ci), cudaFree(d_co), cudaFree(d_ri), cudaFree(d_rp), cudaFree(d_cp);
  }
  return 0;
}
