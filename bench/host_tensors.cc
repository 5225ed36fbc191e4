#include "host_tensors.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

#include "bench_random.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"

namespace distattn {
namespace bench {

HostTensor::HostTensor(DType dtype, int64_t B, int64_t S, int64_t H, int64_t D) {
  storage.resize(static_cast<size_t>(B * S * H * D) * dtype_size(dtype));
  view = TensorView::packed(storage.data(), dtype, Device::kHost, B, S, H, D);
}

TensorView head_slice(const TensorView& t, int64_t h0, int64_t count) {
  DISTATTN_CHECK_ARG(h0 >= 0 && count >= 1 && h0 + count <= t.heads(), "head_slice", "heads [", h0, ", ", h0 + count,
                     ") outside [0, ", t.heads(), ")");
  return t.head_range(h0, h0 + count);
}

namespace {
// Visits every (b, s, h, d) of `t` in logical (packed) order with its element offset.
template <typename Fn>
void for_each_offset(const TensorView& t, Fn fn) {
  int64_t i = 0;
  for (int64_t b = 0; b < t.shape[0]; ++b)
    for (int64_t s = 0; s < t.shape[1]; ++s)
      for (int64_t h = 0; h < t.shape[2]; ++h) {
        const int64_t base = t.offset(b, s, h, 0);
        for (int64_t d = 0; d < t.shape[3]; ++d) fn(i++, base + d);
      }
}

double diff(double g, double r) {
  if (std::isfinite(g) && std::isfinite(r)) return std::fabs(g - r);
  if (!std::isnan(g) && !std::isnan(r) && g == r) return 0.0;  // the same infinity (-inf LSE of an empty row)
  return std::numeric_limits<double>::infinity();
}

void check_same_shape(const TensorView& got, const TensorView& ref) {
  DISTATTN_CHECK_ARG(got.shape == ref.shape, "got", "shape ", describe(got), " differs from the reference's ",
                     describe(ref));
}
}  // namespace

HostTensor convert(const TensorView& src, DType dtype) {
  HostTensor out(dtype, src.shape[0], src.shape[1], src.shape[2], src.shape[3]);
  for_each_offset(src, [&](int64_t i, int64_t off) {
    store_from_double(out.storage.data(), i, dtype, load_as_double(src.data, off, src.dtype));
  });
  return out;
}

void fill_random_host(HostTensor& t, uint64_t seed, float scale) {
  const int64_t n = t.view.numel();
  for (int64_t i = 0; i < n; ++i) {
    // Same float arithmetic as the device kernel, then the same round-to-nearest-even conversion.
    const float v = scale * random_value(seed, static_cast<uint64_t>(i));
    store_from_double(t.storage.data(), i, t.view.dtype, static_cast<double>(v));
  }
}

void fill_nan_host(HostTensor& t) {
  const int64_t n = t.view.numel();
  for (int64_t i = 0; i < n; ++i)
    store_from_double(t.storage.data(), i, t.view.dtype, std::numeric_limits<double>::quiet_NaN());
}

void fill_nan_host(std::vector<float>& v) {
  for (float& x : v) x = std::numeric_limits<float>::quiet_NaN();
}

HostTensor download(const void* device_data, DType dtype, int64_t B, int64_t S, int64_t H, int64_t D) {
  HostTensor t(dtype, B, S, H, D);
  DISTATTN_CUDA_CHECK(cudaMemcpy(t.storage.data(), device_data, t.bytes(), cudaMemcpyDeviceToHost));
  return t;
}

std::vector<float> download_floats(const float* device_data, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  DISTATTN_CUDA_CHECK(cudaMemcpy(v.data(), device_data, v.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return v;
}

TensorView lse_view(float* lse, int64_t B, int64_t S, int64_t H) {
  // lse[b, h, s] at b*H*S + h*S + s  ==  view element (b, s, h, 0)
  TensorView t;
  t.data = lse;
  t.dtype = DType::kFloat32;
  t.device = Device::kHost;
  t.shape = {B, S, H, 1};
  t.stride = {H * S, 1, S, 1};
  return t;
}

namespace {

// Calls fn(g, r) for every element (b, s, h, d) of got and ref (same shape; throws otherwise), both loaded as double
// and walked in logical order: their strides may differ.
template <typename Fn>
void for_each_pair(const TensorView& got, const TensorView& ref, Fn fn) {
  check_same_shape(got, ref);
  for (int64_t b = 0; b < got.shape[0]; ++b)
    for (int64_t s = 0; s < got.shape[1]; ++s)
      for (int64_t h = 0; h < got.shape[2]; ++h)
        for (int64_t d = 0; d < got.shape[3]; ++d)
          fn(load_as_double(got.data, got.offset(b, s, h, d), got.dtype),
             load_as_double(ref.data, ref.offset(b, s, h, d), ref.dtype));
}

}  // namespace

double max_abs_diff(const TensorView& got, const TensorView& ref) {
  double m = 0;
  for_each_pair(got, ref, [&](double g, double r) {
    const double e = diff(g, r);
    if (!(e <= m)) m = e;
  });
  return m;
}

double max_abs(const TensorView& t) {
  double m = 0;
  for_each_offset(t, [&](int64_t, int64_t off) {
    const double v = std::fabs(load_as_double(t.data, off, t.dtype));
    if (std::isfinite(v) && v > m) m = v;
  });
  return m;
}

int64_t count_outside(const TensorView& got, const TensorView& ref, double tolerance) {
  int64_t n = 0;
  for_each_pair(got, ref, [&](double g, double r) { n += !(diff(g, r) <= tolerance); });
  return n;
}

void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  std::atomic<int64_t> next{0};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto worker = [&]() {
    for (int64_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        next = n;  // stop handing out work
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

}  // namespace bench
}  // namespace distattn
