// Host-side tensors and comparisons for the benchmark's correctness checks (-c 1) and for the host-engine
// mode (no GPU). Independent of GoogleTest (tests/common has its own).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "distattn/core/tensor.h"

namespace distattn {
namespace bench {

// A packed [B, S, H, D] host tensor owning its storage.
struct HostTensor {
  std::vector<unsigned char> storage;
  TensorView view;

  HostTensor() = default;
  HostTensor(DType dtype, int64_t B, int64_t S, int64_t H, int64_t D);
  // Copies re-point the view at their own storage (moves keep the buffer, so the view stays valid).
  HostTensor(const HostTensor& o) : storage(o.storage), view(o.view) { view.data = storage.data(); }
  HostTensor& operator=(const HostTensor& o) {
    storage = o.storage;
    view = o.view;
    view.data = storage.data();
    return *this;
  }
  HostTensor(HostTensor&&) noexcept = default;
  HostTensor& operator=(HostTensor&&) noexcept = default;
  size_t bytes() const { return storage.size(); }
  void* data() { return storage.data(); }
};

// Heads [h0, h0 + count) of a view (same buffer and strides).
TensorView head_slice(const TensorView& t, int64_t h0, int64_t count);

// A packed copy of `src` (any strides, host) converted to `dtype` (values go through double).
HostTensor convert(const TensorView& src, DType dtype);

// Element i (packed order) = scale * random_value(seed, i) rounded to the dtype: the same values
// fill_random_device writes, so a host run sees what a GPU run would.
void fill_random_host(HostTensor& t, uint64_t seed, float scale = 1.0f);
void fill_nan_host(HostTensor& t);  // every element NaN
void fill_nan_host(std::vector<float>& v);

// A packed host copy of a device tensor (cudaMemcpy; the device buffer is packed [B, S, H, D]).
HostTensor download(const void* device_data, DType dtype, int64_t B, int64_t S, int64_t H, int64_t D);
std::vector<float> download_floats(const float* device_data, int64_t n);

// The LSE array [B, H, S] (fp32, packed) seen as a [B, S, H, 1] view, so the tensor comparisons apply.
TensorView lse_view(float* lse, int64_t B, int64_t S, int64_t H);

// max over elements of |got - ref| in logical order (an element where exactly one side is not finite, or
// both are NaN, counts as +inf; equal infinities count as 0).
double max_abs_diff(const TensorView& got, const TensorView& ref);
double max_abs(const TensorView& t);
// Elements with |got - ref| > tolerance (or not matching as above).
int64_t count_outside(const TensorView& got, const TensorView& ref, double tolerance);

// Calls fn(i) for i in [0, n) on up to `threads` threads; the first exception is rethrown after all join.
void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn);
int hardware_threads();  // >= 1

}  // namespace bench
}  // namespace distattn
