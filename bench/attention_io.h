// The tensors of one attention op of distattn_bench (dense, sparse; dilated and ring: this rank's rows, S = its row
// count): q, k, v, o, lse and, with a backward, dout, dq, dk, dv, all packed [B, S, H, D] (lse [B, H, S] fp32). On the
// GPU they live in device buffers, in host-engine mode in host tensors; the views below are the same either way, so an
// op's run and check code has one path for both. One implementation of what those ops did each on their own:
// allocation, random inputs (seeds seed + 0..3 for q, k, v, dout), NaN-poisoned outputs before a checked run, host
// copies for the references.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "device_fill.h"
#include "distattn/core/tensor.h"
#include "host_tensors.h"

namespace distattn {
namespace bench {

class AttentionIo {
 public:
  // Allocates q, o, dout, dq [B, S, H, D] and k, v, dk, dv [B, S, Hkv, D] in `dtype` (dout and the gradients only
  // with `bwd`) and lse [B, H, S] fp32, on the GPU (`on_gpu`) or the host; replaces what was there.
  void allocate(bool on_gpu, DType dtype, int64_t B, int64_t S, int64_t H, int64_t Hkv, int64_t D, bool bwd);
  void reset();  // frees everything

  // Random normal inputs q, k, v (and dout when allocated) from seeds seed + 0, 1, 2, 3 (enqueued on `stream` on the
  // GPU; the host fill is synchronous).
  void fill_inputs(uint64_t seed, cudaStream_t stream);
  // NaN into o and lse, and with `grads` into dq, dk, dv: what a run does not write stays NaN and fails the check.
  void poison_outputs(bool grads, cudaStream_t stream);

  // A host copy of one of the views below (device: downloaded, after the caller synchronised the stream).
  HostTensor to_host(const TensorView& t) const;
  std::vector<float> lse_to_host() const;
  // Copies a packed host tensor of t's shape and dtype into one of the views below (device: a synchronous upload).
  // Throws distattn::Error naming "src" when the sizes differ.
  void upload(const HostTensor& src, const TensorView& t);
  // Bytes held by every tensor (the peak-memory figures of the ops).
  size_t bytes() const;

  bool on_gpu() const { return on_gpu_; }
  bool has_grads() const { return has_grads_; }
  // Views of the tensors (device or host memory; empty views before allocate / for the gradients without bwd).
  TensorView q, k, v, o, dout, dq, dk, dv;
  float* lse = nullptr;

 private:
  TensorView make(DeviceBuffer& dev, HostTensor& host, int64_t heads);
  bool on_gpu_ = false, has_grads_ = false;
  DType dtype_ = DType::kBFloat16;
  int64_t B_ = 0, S_ = 0, H_ = 0, Hkv_ = 0, D_ = 0;
  DeviceBuffer dq_buf_, dk_buf_, dv_buf_, do_buf_, dout_buf_, ddq_buf_, ddk_buf_, ddv_buf_, lse_buf_;
  HostTensor hq_, hk_, hv_, ho_, hdout_, hdq_, hdk_, hdv_;
  std::vector<float> hlse_;
};

}  // namespace bench
}  // namespace distattn
