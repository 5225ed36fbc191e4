// Device-side helpers of the benchmark: random fills (a small hash kernel, bench_random.h), NaN poisoning
// and the device-to-device copy bandwidth used as the memory-bound ceiling.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/dtype.h"

namespace distattn {
namespace bench {

// data[i] = scale * random_value(seed, i) rounded to `dtype` (bf16/fp16/fp32), i < n. Enqueued on `stream`.
void fill_random_device(void* data, int64_t n, DType dtype, uint64_t seed, float scale, cudaStream_t stream);

// Every byte 0xFF: each bf16/fp16/fp32 element reads as NaN, so an element the op forgets to write fails.
void poison_device(void* data, size_t bytes, cudaStream_t stream);

// Device-to-device cudaMemcpyAsync of `bytes` (two buffers allocated here): median of `iters` timed copies
// after warm-up; returns GB/s counting bytes read plus bytes written (2 * bytes / time).
double measure_copy_bandwidth_gbps(size_t bytes, int iters, cudaStream_t stream);

// Owning device allocation (cudaMalloc / cudaFree); throws distattn::Error on failure.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  void reset();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace bench
}  // namespace distattn
