// Shared pieces of the multi-head attention layer tests on GPUs (tests/gpu/test_mha_gpu.cc, tests/mpi/test_mha_gpu.cc):
// raw device bytes with upload / download / NaN poisoning, bf16 and fp32 host values widened to double, the outputs
// of one layer run in double, and one run of the host layer (the tests' fp64 reference and naive bf16 baseline).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/dtype.h"
#include "distattn/layers/multi_head_attention.h"

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

// One forward and backward of the host layer with config `cfg` (cfg.dtype: the storage of every activation and weight;
// cfg.host_precision: its arithmetic) on x, dy [B, S, E] and the weights wqkv [N, E], wo [E, HD], bqkv [N], bo [E],
// all given as values and stored into cfg.dtype. Returns y, dx and the weight gradients (the layer's grad_dtype())
// widened to double; the bias gradients only when cfg.bias. Throws what the layer throws.
inline MhaOutputs run_host_layer(const layers::MhaConfig& cfg, int64_t B, int64_t S, int64_t E,
                                 const std::vector<double>& x, const std::vector<double>& dy,
                                 const std::vector<double>& wqkv, const std::vector<double>& wo,
                                 const std::vector<double>& bqkv, const std::vector<double>& bo) {
  const DType dtype = cfg.dtype;
  layers::MultiHeadAttention layer(cfg, Device::kHost);
  const size_t es = dtype_size(dtype);
  auto buf = [&](const std::vector<double>& values) {
    std::vector<unsigned char> out(values.size() * es);
    for (size_t i = 0; i < values.size(); ++i) store_from_double(out.data(), static_cast<int64_t>(i), dtype, values[i]);
    return out;
  };
  std::vector<unsigned char> hx = buf(x), hdy = buf(dy), hwq = buf(wqkv), hwo = buf(wo), hbq = buf(bqkv), hbo = buf(bo);
  std::vector<unsigned char> hy(hx.size()), hdx(hx.size());
  const DType gt = layer.grad_dtype();
  const size_t gs = dtype_size(gt);
  std::vector<unsigned char> gq(wqkv.size() * gs), go(wo.size() * gs), gbq(bqkv.size() * gs), gbo(bo.size() * gs);
  layers::MhaWeights w{hwq.data(), cfg.bias ? hbq.data() : nullptr, hwo.data(), cfg.bias ? hbo.data() : nullptr};
  layers::MhaGrads g{gq.data(), cfg.bias ? gbq.data() : nullptr, go.data(), cfg.bias ? gbo.data() : nullptr};
  auto seq = [&](std::vector<unsigned char>& v) {
    return layers::SequenceView::packed(v.data(), dtype, Device::kHost, B, S, E);
  };
  layer.forward(w, seq(hx), seq(hy));
  layer.backward(w, seq(hx), seq(hdy), seq(hdx), g);
  auto dbl = [](const std::vector<unsigned char>& v, DType t) {
    std::vector<double> out(v.size() / dtype_size(t));
    for (size_t i = 0; i < out.size(); ++i) out[i] = load_as_double(v.data(), static_cast<int64_t>(i), t);
    return out;
  };
  MhaOutputs o;
  o.y = dbl(hy, dtype), o.dx = dbl(hdx, dtype);
  o.gwqkv = dbl(gq, gt), o.gwo = dbl(go, gt);
  if (cfg.bias) o.gbqkv = dbl(gbq, gt), o.gbo = dbl(gbo, gt);
  return o;
}

}  // namespace testing
}  // namespace distattn
