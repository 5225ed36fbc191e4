#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <vector>

#include "bench_random.h"
#include "device_fill.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"

namespace distattn {
namespace bench {
namespace {

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// Grid-stride loop: element i gets scale * random_value(seed, i).
template <typename T>
__global__ void fill_random_kernel(T* data, int64_t n, uint64_t seed, float scale) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    data[i] = from_float<T>(scale * random_value(seed, static_cast<uint64_t>(i)));
  }
}

}  // namespace

void fill_random_device(void* data, int64_t n, DType dtype, uint64_t seed, float scale, cudaStream_t stream) {
  DISTATTN_CHECK_ARG(data != nullptr || n == 0, "data", "null pointer for ", n, " elements");
  DISTATTN_CHECK_ARG(n >= 0, "n", "must be >= 0, got ", n);
  if (n == 0) return;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536));
  switch (dtype) {
    case DType::kBFloat16:
      fill_random_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(data), n, seed, scale);
      break;
    case DType::kFloat16:
      fill_random_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__half*>(data), n, seed, scale);
      break;
    case DType::kFloat32:
      fill_random_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(data), n, seed, scale);
      break;
    default:
      DISTATTN_THROW("dtype", "random fill supports bf16, fp16 and fp32, got ", dtype_name(dtype));
  }
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void poison_device(void* data, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  DISTATTN_CUDA_CHECK(cudaMemsetAsync(data, 0xFF, bytes, stream));
}

double measure_copy_bandwidth_gbps(size_t bytes, int iters, cudaStream_t stream) {
  DISTATTN_CHECK_ARG(bytes > 0, "bytes", "must be > 0");
  DISTATTN_CHECK_ARG(iters >= 1, "iters", "must be >= 1, got ", iters);
  DeviceBuffer src(bytes), dst(bytes);
  fill_random_device(src.get(), static_cast<int64_t>(bytes / 4), DType::kFloat32, 1, 1.0f, stream);
  cudaEvent_t start, stop;
  DISTATTN_CUDA_CHECK(cudaEventCreate(&start));
  DISTATTN_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  try {
    for (int i = 0; i < 3; ++i) {
      DISTATTN_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream));
    }
    for (int i = 0; i < iters; ++i) {
      DISTATTN_CUDA_CHECK(cudaEventRecord(start, stream));
      DISTATTN_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream));
      DISTATTN_CUDA_CHECK(cudaEventRecord(stop, stream));
      DISTATTN_CUDA_CHECK(cudaEventSynchronize(stop));
      float t = 0;
      DISTATTN_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  DISTATTN_CUDA_CHECK(cudaEventDestroy(start));
  DISTATTN_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  const double median_ms = ms[ms.size() / 2];
  return 2.0 * static_cast<double>(bytes) / (median_ms * 1e-3) / 1e9;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) DISTATTN_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() { reset(); }

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::reset() {
  if (ptr_ != nullptr) cudaFree(ptr_);  // in a destructor path: nothing useful to do with a failure
  ptr_ = nullptr;
  bytes_ = 0;
}

}  // namespace bench
}  // namespace distattn
