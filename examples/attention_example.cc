// A minimal user of the installed library: causal attention with ALiBi over a sequence whose rows
// sit at global positions 1000.. (as a shard of a longer sequence would). Runs the host engine;
// when a GPU is present it runs the CUDA engine on the same inputs and compares.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/alibi.h"
#include "distattn/sparse/flash_attention.h"

using namespace distattn;

int main() {
  const int64_t B = 1, S = 256, H = 4, D = 64;
  const int64_t n = B * S * H * D;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> q(n), k(n), v(n), o(n);
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = float_to_bf16_bits(normal(gen));
  std::vector<float> slopes = alibi_slopes(H);
  std::vector<float> lse(B * H * S);

  AttnParams p;
  p.q = TensorView::packed(q.data(), DType::kBFloat16, Device::kHost, B, S, H, D);
  p.k = TensorView::packed(k.data(), DType::kBFloat16, Device::kHost, B, S, H, D);
  p.v = TensorView::packed(v.data(), DType::kBFloat16, Device::kHost, B, S, H, D);
  p.o = TensorView::packed(o.data(), DType::kBFloat16, Device::kHost, B, S, H, D);
  p.lse = lse.data();
  p.q_pos = PositionMap::contiguous(1000, S);
  p.kv_pos = PositionMap::contiguous(1000, S);
  p.mask = Mask::make_causal();
  p.alibi_slopes = slopes.data();
  try {
    host_attention_forward(p, HostPrecision::kFloat32);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::printf("host engine: O[0] = %f, LSE[0] = %f\n", bf16_bits_to_float(o[0]), lse[0]);

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: the CUDA engine is not exercised here\n");
    return 0;
  }
  try {
    void *dq, *dk, *dv, *dout;
    float *dlse, *dslopes;
    DISTATTN_CUDA_CHECK(cudaMalloc(&dq, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&dk, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&dv, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&dout, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dlse), lse.size() * 4));
    DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dslopes), slopes.size() * 4));
    DISTATTN_CUDA_CHECK(cudaMemcpy(dq, q.data(), n * 2, cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(dk, k.data(), n * 2, cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(dv, v.data(), n * 2, cudaMemcpyHostToDevice));
    DISTATTN_CUDA_CHECK(cudaMemcpy(dslopes, slopes.data(), slopes.size() * 4, cudaMemcpyHostToDevice));
    AttnParams g = p;
    g.q = TensorView::packed(dq, DType::kBFloat16, Device::kCuda, B, S, H, D);
    g.k = TensorView::packed(dk, DType::kBFloat16, Device::kCuda, B, S, H, D);
    g.v = TensorView::packed(dv, DType::kBFloat16, Device::kCuda, B, S, H, D);
    g.o = TensorView::packed(dout, DType::kBFloat16, Device::kCuda, B, S, H, D);
    g.lse = dlse;
    g.alibi_slopes = dslopes;
    flash_attention_forward(g, nullptr);
    std::vector<uint16_t> o_gpu(n);
    DISTATTN_CUDA_CHECK(cudaMemcpy(o_gpu.data(), dout, n * 2, cudaMemcpyDeviceToHost));
    double max_diff = 0;
    for (int64_t i = 0; i < n; ++i)
      max_diff = std::fmax(max_diff, std::fabs(bf16_bits_to_float(o_gpu[i]) - bf16_bits_to_float(o[i])));
    std::printf("CUDA engine: max |O_gpu - O_host| = %g\n", max_diff);
    for (void* ptr : {dq, dk, dv, dout, static_cast<void*>(dlse), static_cast<void*>(dslopes)}) cudaFree(ptr);
    return max_diff < 0.05 ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
