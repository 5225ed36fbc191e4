// Baseline probe (helper alibi-bwd): the backward WITHOUT ALiBi, timed once with the sources before the ALiBi
// cutoff (linked against objects built from HEAD~ = 44feaf9's flash_bwd_*) — to check that the cutoff's changes
// (an LDS per classified window, a branch, 256 B of smem) cost nothing when ALiBi is off. Same inputs and
// iteration counts as bwd_timing's "none" rows. Prints: S causal med_ms.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/sparse/flash_attention.h"

using namespace distattn;

__global__ void fill_random(__nv_bfloat16* x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = (z >> 40) * (1.0f / 16777216.0f);
    x[i] = __float2bfloat16((u - 0.5f) * 3.4641016f * scale);
  }
}

int main() {
  const int B = 1, H = 32, D = 128;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int S : {8192, 16384, 32768}) {
    const size_t n = size_t(B) * S * H * D;
    __nv_bfloat16* t[8];
    for (auto& p : t) DISTATTN_CUDA_CHECK(cudaMalloc(&p, n * 2));
    float* lse;
    DISTATTN_CUDA_CHECK(cudaMalloc(&lse, size_t(B) * H * S * 4));
    fill_random<<<1024, 256>>>(t[0], n, 1 + S, 1.f);
    fill_random<<<1024, 256>>>(t[1], n, 1000003 + S, 1.f);
    fill_random<<<1024, 256>>>(t[2], n, 7000001 + S, 1.f);
    fill_random<<<1024, 256>>>(t[3], n, 9000001 + S, 1.f);
    for (int causal : {1, 0}) {
      AttnParams p;
      p.q = TensorView::packed(t[0], DType::kBFloat16, Device::kCuda, B, S, H, D);
      p.k = TensorView::packed(t[1], DType::kBFloat16, Device::kCuda, B, S, H, D);
      p.v = TensorView::packed(t[2], DType::kBFloat16, Device::kCuda, B, S, H, D);
      p.o = TensorView::packed(t[4], DType::kBFloat16, Device::kCuda, B, S, H, D);
      p.lse = lse;
      p.q_pos = PositionMap::contiguous(0, S);
      p.kv_pos = PositionMap::contiguous(0, S);
      p.mask = causal ? Mask::make_causal() : Mask::none();
      flash_attention_forward(p, 0);
      AttnBwdParams b;
      b.fwd = p;
      b.dout = TensorView::packed(t[3], DType::kBFloat16, Device::kCuda, B, S, H, D);
      b.dq = TensorView::packed(t[5], DType::kBFloat16, Device::kCuda, B, S, H, D);
      b.dk = TensorView::packed(t[6], DType::kBFloat16, Device::kCuda, B, S, H, D);
      b.dv = TensorView::packed(t[7], DType::kBFloat16, Device::kCuda, B, S, H, D);
      const int iters = S <= 8192 ? 20 : S <= 16384 ? 10 : 5;
      flash_attention_backward(b, 0);
      std::vector<float> ms;
      for (int it = 0; it < iters; ++it) {
        cudaEventRecord(e0, 0);
        flash_attention_backward(b, 0);
        cudaEventRecord(e1, 0);
        DISTATTN_CUDA_CHECK(cudaEventSynchronize(e1));
        float x;
        cudaEventElapsedTime(&x, e0, e1);
        ms.push_back(x);
      }
      std::sort(ms.begin(), ms.end());
      printf("base-none %d %d %.3f\n", S, causal, ms[ms.size() / 2]);
    }
    for (auto& p : t) cudaFree(p);
    cudaFree(lse);
  }
  return 0;
}
