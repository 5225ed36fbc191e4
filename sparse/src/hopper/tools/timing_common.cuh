// What the Hopper timing probes (hopper_fwd_timing.cu, hopper_zigzag_timing.cu) share: random bf16 inputs and the
// median of CUDA-event timings. Not part of the library; the probes are built by hand (notes/hopper_kernel.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "distattn/core/check_cuda.h"

namespace distattn {
namespace probe {

// x[i] = uniform in [-1.7, 1.7), from a splitmix64 hash of (i + seed), rounded to bf16 (any grid size).
__global__ void fill_random(__nv_bfloat16* x, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = (z >> 40) * (1.0f / 16777216.0f);
    x[i] = __float2bfloat16((u - 0.5f) * 3.4f);
  }
}

// Median over `reps` runs of f() (after 3 warm-ups), each timed alone with an event pair on stream s, in ms.
template <typename F>
double median_ms(F&& f, int reps, cudaStream_t s) {
  cudaEvent_t e0, e1;
  DISTATTN_CUDA_CHECK(cudaEventCreate(&e0));
  DISTATTN_CUDA_CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    DISTATTN_CUDA_CHECK(cudaEventRecord(e0, s));
    f();
    DISTATTN_CUDA_CHECK(cudaEventRecord(e1, s));
    DISTATTN_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    DISTATTN_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  DISTATTN_CUDA_CHECK(cudaEventDestroy(e0));
  DISTATTN_CUDA_CHECK(cudaEventDestroy(e1));
  return t[t.size() / 2];
}

}  // namespace probe
}  // namespace distattn
