// Shared test utilities: host tensors with random contents, poisoning, error statistics in logical
// (b, s, h, d) order whatever the strides, device buffers, and the GPU-presence skip.
//
// Seeds: every random fill takes an explicit seed; tests derive it from test_seed() (fixed default,
// overridable with DISTATTN_TEST_SEED) and print it on failure through SCOPED_TRACE.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"

namespace distattn {
namespace testing {

uint64_t test_seed();  // DISTATTN_TEST_SEED or 20261122

// A host tensor owning its storage. Default layout packed [B, S, H, D]; `row_pad` extra elements per
// row (between s and s+1) and `head_pad` per head make the strides non-trivial on purpose.
struct HostTensor {
  std::vector<unsigned char> storage;
  TensorView view;

  HostTensor() = default;
  HostTensor(DType dtype, int64_t B, int64_t S, int64_t H, int64_t D, int64_t head_pad = 0, int64_t row_pad = 0);
  // Copies own their storage: the view is re-pointed at the copy's bytes (a member-wise copy would alias).
  HostTensor(const HostTensor& o) : storage(o.storage), view(o.view) { view.data = storage.data(); }
  HostTensor& operator=(const HostTensor& o) {
    storage = o.storage;
    view = o.view;
    view.data = storage.data();
    return *this;
  }
  HostTensor(HostTensor&& o) noexcept : storage(std::move(o.storage)), view(o.view) { view.data = storage.data(); }
  HostTensor& operator=(HostTensor&& o) noexcept {
    storage = std::move(o.storage);
    view = o.view;
    view.data = storage.data();
    return *this;
  }
  double get(int64_t b, int64_t s, int64_t h, int64_t d) const;
  void set(int64_t b, int64_t s, int64_t h, int64_t d, double v);
  size_t bytes() const { return storage.size(); }
};

// Normal(0, stddev) values rounded to the tensor's dtype (every element, padding included).
void fill_normal(HostTensor& t, uint64_t seed, double stddev = 1.0);
// fill_normal on each tensor in turn, the i-th (from 0) with seed first_seed + i.
void fill_normal_each(std::initializer_list<HostTensor*> tensors, uint64_t first_seed, double stddev = 1.0);
// Every byte of storage set so that each element reads NaN (poison before a run).
void fill_nan(HostTensor& t);
// Converts to another dtype / packed layout (values rounded to the new dtype).
HostTensor convert(const HostTensor& t, DType dtype);
// Copies the logical contents of src into dst of the same shape (any layouts, values rounded to dst's dtype).
void copy_values(HostTensor& dst, const HostTensor& src);
// a + b element by element in fp64 (a packed fp64 result; same shapes).
HostTensor sum_f64(const HostTensor& a, const HostTensor& b);
// Root mean square (0 for no elements) and largest magnitude of a host view's elements (any layout and dtype).
double rms_of(const TensorView& t);
double max_abs_value(const TensorView& t);
inline double rms_of(const HostTensor& t) { return rms_of(t.view); }
inline double max_abs_value(const HostTensor& t) { return max_abs_value(t.view); }
// Relative rounding unit of a dtype (one ulp at 1.0): 2^-7 bf16, 2^-10 fp16, 2^-23 fp32 and any other.
double ulp_rel(DType t);

struct ErrorStats {
  double max_abs = 0;      // max |got - ref|
  double rel_l2 = 0;       // ||got - ref|| / ||ref||
  double rmse = 0;         // sqrt(mean (got - ref)^2)
  int64_t non_finite = 0;  // elements of got that are NaN/inf where ref is finite
  int64_t count = 0;
  std::string str() const;
};
// Compares two host views of the same shape element by element in logical order.
ErrorStats compare(const TensorView& got, const TensorView& ref);
// Same for flat fp32/fp64 arrays (LSE). Matching -inf entries count as exact.
ErrorStats compare_flat(const float* got, const double* ref, int64_t n);

// Runs `stmt` and expects a distattn::Error whose argument() is `arg` (checked, with the message shown).
#define EXPECT_ERROR_ARG(stmt, arg)                                         \
  do {                                                                      \
    try {                                                                   \
      stmt;                                                                 \
      ADD_FAILURE() << "expected distattn::Error naming " << (arg);         \
    } catch (const ::distattn::Error& e) {                                  \
      EXPECT_EQ(e.argument(), std::string(arg)) << "message: " << e.what(); \
    }                                                                       \
  } while (0)

// --- GPU ---
bool has_gpu();
#define DISTATTN_REQUIRE_GPU()                                                  \
  do {                                                                          \
    if (!::distattn::testing::has_gpu()) GTEST_SKIP() << "no CUDA device here"; \
  } while (0)

// Device memory with the same bytes as a host tensor (same strides): view() points at the device copy.
struct DeviceTensor {
  void* ptr = nullptr;
  size_t bytes = 0;
  TensorView view_;
  DeviceTensor() = default;
  explicit DeviceTensor(const HostTensor& host);  // allocates and uploads
  ~DeviceTensor();
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& o) noexcept;
  DeviceTensor& operator=(DeviceTensor&& o) noexcept;
  const TensorView& view() const { return view_; }
  void download(HostTensor& host) const;  // same shape and strides
  void upload(const HostTensor& host);
};

// Raw device array (fp32 LSE, slopes, ...).
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  int64_t n = 0;
  DeviceArray() = default;
  explicit DeviceArray(const std::vector<T>& host);
  explicit DeviceArray(int64_t count);
  ~DeviceArray();
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  std::vector<T> download() const;
  void upload(const std::vector<T>& host);
};

}  // namespace testing
}  // namespace distattn
