// Shared pieces of the multi-head attention layer tests on GPUs (tests/gpu/test_mha_gpu.cc, tests/mpi/test_mha_gpu.cc):
// raw device bytes with upload / download / NaN poisoning, bf16 and fp32 host values widened to double, and the
// outputs of one layer run in double.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/dtype.h"

namespace distattn {
namespace testing {

// `bytes` bytes of device memory (cudaMalloc) with host copies in and out of the same size.
struct DeviceBytes {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DeviceBytes(size_t n) : bytes(n) { DISTATTN_CUDA_CHECK(cudaMalloc(&p, n)); }
  ~DeviceBytes() { cudaFree(p); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  void upload(const void* h) { DISTATTN_CUDA_CHECK(cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice)); }
  void download(void* h) const { DISTATTN_CUDA_CHECK(cudaMemcpy(h, p, bytes, cudaMemcpyDeviceToHost)); }
  void poison() { DISTATTN_CUDA_CHECK(cudaMemset(p, 0xFF, bytes)); }  // every byte 0xFF: NaN in bf16 and fp32
};

// bf16 bits to their exact values.
inline std::vector<double> bf16_to_double(const std::vector<uint16_t>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_bits_to_float(v[i]);
  return out;
}

// fp32 values widened.
inline std::vector<double> f32_to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Host outputs of one layer run, in double: y and dx (activations, packed [B, rows, E]) and the weight gradients.
struct MhaOutputs {
  std::vector<double> y, dx, gwqkv, gwo, gbqkv, gbo;
};

}  // namespace testing
}  // namespace distattn
