#include "test_util.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

#include "distattn/core/check_cuda.h"

namespace distattn {
namespace testing {

uint64_t test_seed() {
  const char* env = std::getenv("DISTATTN_TEST_SEED");
  return env ? std::strtoull(env, nullptr, 10) : 20261122ull;
}

HostTensor::HostTensor(DType dtype, int64_t B, int64_t S, int64_t H, int64_t D, int64_t head_pad, int64_t row_pad) {
  const int64_t head_stride = D + head_pad;
  const int64_t row_stride = H * head_stride + row_pad;
  const int64_t batch_stride = S * row_stride;
  storage.assign(static_cast<size_t>(B * batch_stride) * dtype_size(dtype), 0);
  view.data = storage.data();
  view.dtype = dtype;
  view.device = Device::kHost;
  view.shape = {B, S, H, D};
  view.stride = {batch_stride, row_stride, head_stride, 1};
}

double HostTensor::get(int64_t b, int64_t s, int64_t h, int64_t d) const {
  return load_as_double(view.data, view.offset(b, s, h, d), view.dtype);
}
void HostTensor::set(int64_t b, int64_t s, int64_t h, int64_t d, double v) {
  store_from_double(view.data, view.offset(b, s, h, d), view.dtype, v);
}

void fill_normal(HostTensor& t, uint64_t seed, double stddev) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  const int64_t n = static_cast<int64_t>(t.storage.size() / dtype_size(t.view.dtype));
  for (int64_t i = 0; i < n; ++i) store_from_double(t.view.data, i, t.view.dtype, dist(gen));
}

void fill_normal_each(std::initializer_list<HostTensor*> tensors, uint64_t first_seed, double stddev) {
  uint64_t seed = first_seed;
  for (HostTensor* t : tensors) fill_normal(*t, seed++, stddev);
}

void fill_nan(HostTensor& t) {
  const int64_t n = static_cast<int64_t>(t.storage.size() / dtype_size(t.view.dtype));
  for (int64_t i = 0; i < n; ++i) store_from_double(t.view.data, i, t.view.dtype, std::nan(""));
}

HostTensor convert(const HostTensor& t, DType dtype) {
  HostTensor out(dtype, t.view.shape[0], t.view.shape[1], t.view.shape[2], t.view.shape[3]);
  for (int64_t b = 0; b < t.view.shape[0]; ++b)
    for (int64_t s = 0; s < t.view.shape[1]; ++s)
      for (int64_t h = 0; h < t.view.shape[2]; ++h)
        for (int64_t d = 0; d < t.view.shape[3]; ++d) out.set(b, s, h, d, t.get(b, s, h, d));
  return out;
}

std::string ErrorStats::str() const {
  std::ostringstream os;
  os << "max_abs=" << max_abs << " rel_l2=" << rel_l2 << " rmse=" << rmse << " non_finite=" << non_finite
     << " count=" << count;
  return os.str();
}

namespace {
// The running sums behind ErrorStats, fed one (got, ref) pair at a time by compare and compare_flat.
struct ErrorSums {
  ErrorStats st;
  double err2 = 0, ref2 = 0;
  // A pair that counts as exact without entering the sums (compare_flat's matching infinities).
  void exact() { ++st.count; }
  // One compared pair: a non-finite got is counted as such and adds nothing to the sums.
  void add(double g, double r) {
    ++st.count;
    if (!std::isfinite(g)) {
      ++st.non_finite;
      return;
    }
    const double e = std::fabs(g - r);
    st.max_abs = std::max(st.max_abs, e);
    err2 += e * e;
    ref2 += r * r;
  }
  ErrorStats result() {
    st.rmse = st.count ? std::sqrt(err2 / st.count) : 0;
    st.rel_l2 = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
    return st;
  }
};
}  // namespace

ErrorStats compare(const TensorView& got, const TensorView& ref) {
  if (got.shape != ref.shape) {
    ErrorStats st;
    st.non_finite = -1;
    return st;
  }
  ErrorSums sums;
  for (int64_t b = 0; b < got.shape[0]; ++b)
    for (int64_t s = 0; s < got.shape[1]; ++s)
      for (int64_t h = 0; h < got.shape[2]; ++h)
        for (int64_t d = 0; d < got.shape[3]; ++d)
          sums.add(load_as_double(got.data, got.offset(b, s, h, d), got.dtype),
                   load_as_double(ref.data, ref.offset(b, s, h, d), ref.dtype));
  return sums.result();
}

ErrorStats compare_flat(const float* got, const double* ref, int64_t n) {
  ErrorSums sums;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got[i], r = ref[i];
    if (std::isinf(r) && std::isinf(g) && (r < 0) == (g < 0)) {
      sums.exact();
      continue;
    }
    sums.add(g, r);
  }
  return sums.result();
}

bool has_gpu() {
  static const bool present = [] {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  }();
  return present;
}

DeviceTensor::DeviceTensor(const HostTensor& host) : bytes(host.bytes()), view_(host.view) {
  DISTATTN_CUDA_CHECK(cudaMalloc(&ptr, bytes));
  view_.data = ptr;
  view_.device = Device::kCuda;
  upload(host);
}
DeviceTensor::~DeviceTensor() {
  if (ptr) cudaFree(ptr);
}
DeviceTensor::DeviceTensor(DeviceTensor&& o) noexcept : ptr(o.ptr), bytes(o.bytes), view_(o.view_) { o.ptr = nullptr; }
DeviceTensor& DeviceTensor::operator=(DeviceTensor&& o) noexcept {
  if (this != &o) {
    if (ptr) cudaFree(ptr);
    ptr = o.ptr;
    bytes = o.bytes;
    view_ = o.view_;
    o.ptr = nullptr;
  }
  return *this;
}
void DeviceTensor::download(HostTensor& host) const {
  DISTATTN_CHECK(host.bytes() == bytes, "download: host tensor has ", host.bytes(), " bytes, device ", bytes);
  DISTATTN_CUDA_CHECK(cudaMemcpy(host.storage.data(), ptr, bytes, cudaMemcpyDeviceToHost));
}
void DeviceTensor::upload(const HostTensor& host) {
  DISTATTN_CHECK(host.bytes() == bytes, "upload: host tensor has ", host.bytes(), " bytes, device ", bytes);
  DISTATTN_CUDA_CHECK(cudaMemcpy(ptr, host.storage.data(), bytes, cudaMemcpyHostToDevice));
}

template <typename T>
DeviceArray<T>::DeviceArray(const std::vector<T>& host) : n(static_cast<int64_t>(host.size())) {
  DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<int64_t>(n, 1) * sizeof(T)));
  upload(host);
}
template <typename T>
DeviceArray<T>::DeviceArray(int64_t count) : n(count) {
  DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<int64_t>(n, 1) * sizeof(T)));
}
template <typename T>
DeviceArray<T>::~DeviceArray() {
  if (ptr) cudaFree(ptr);
}
template <typename T>
std::vector<T> DeviceArray<T>::download() const {
  std::vector<T> out(static_cast<size_t>(n));
  if (n) DISTATTN_CUDA_CHECK(cudaMemcpy(out.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
  return out;
}
template <typename T>
void DeviceArray<T>::upload(const std::vector<T>& host) {
  DISTATTN_CHECK(static_cast<int64_t>(host.size()) == n, "upload: size mismatch");
  if (n) DISTATTN_CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
}

template struct DeviceArray<float>;
template struct DeviceArray<double>;
template struct DeviceArray<int32_t>;
template struct DeviceArray<uint8_t>;

void copy_values(HostTensor& dst, const HostTensor& src) {
  const auto& s = src.view.shape;
  for (int64_t b = 0; b < s[0]; ++b)
    for (int64_t i = 0; i < s[1]; ++i)
      for (int64_t h = 0; h < s[2]; ++h)
        for (int64_t d = 0; d < s[3]; ++d) dst.set(b, i, h, d, src.get(b, i, h, d));
}

HostTensor sum_f64(const HostTensor& a, const HostTensor& b) {
  const auto& s = a.view.shape;
  HostTensor out(DType::kFloat64, s[0], s[1], s[2], s[3]);
  for (int64_t i0 = 0; i0 < s[0]; ++i0)
    for (int64_t i1 = 0; i1 < s[1]; ++i1)
      for (int64_t i2 = 0; i2 < s[2]; ++i2)
        for (int64_t i3 = 0; i3 < s[3]; ++i3) out.set(i0, i1, i2, i3, a.get(i0, i1, i2, i3) + b.get(i0, i1, i2, i3));
  return out;
}

double rms_of(const TensorView& t) {
  double sum = 0;
  int64_t n = 0;
  for (int64_t b = 0; b < t.batch(); ++b)
    for (int64_t s = 0; s < t.seqlen(); ++s)
      for (int64_t h = 0; h < t.heads(); ++h)
        for (int64_t d = 0; d < t.head_dim(); ++d, ++n) {
          const double x = load_as_double(t.data, t.offset(b, s, h, d), t.dtype);
          sum += x * x;
        }
  return n ? std::sqrt(sum / n) : 0;
}

double max_abs_value(const TensorView& t) {
  double m = 0;
  for (int64_t b = 0; b < t.batch(); ++b)
    for (int64_t s = 0; s < t.seqlen(); ++s)
      for (int64_t h = 0; h < t.heads(); ++h)
        for (int64_t d = 0; d < t.head_dim(); ++d)
          m = std::max(m, std::fabs(load_as_double(t.data, t.offset(b, s, h, d), t.dtype)));
  return m;
}

double ulp_rel(DType t) {
  switch (t) {
    case DType::kBFloat16:
      return std::ldexp(1.0, -7);
    case DType::kFloat16:
      return std::ldexp(1.0, -10);
    default:
      return std::ldexp(1.0, -23);
  }
}

}  // namespace testing
}  // namespace distattn
