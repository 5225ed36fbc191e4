// CUDA kernels of the MHA layer's projections (projection.h): bias add and bias-gradient column sums.
// Both are memory-bound side paths (the GEMMs are cuBLAS); written for clarity and determinism.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "projection.h"

namespace distattn {
namespace layers {
namespace detail {
namespace {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// Grid-stride over every element i = (b * rows + r) * cols + c of the stack: out[b, r, c] += bias[c].
template <typename T>
__global__ void add_bias_kernel(T* out, const T* bias, int64_t total, int64_t rows, int64_t cols, int64_t row_stride,
                                int64_t batch_stride) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % cols, br = i / cols, r = br % rows, b = br / rows;
    T* p = out + b * batch_stride + r * row_stride + c;
    *p = from_float<T>(to_float<T>(*p) + to_float<T>(bias[c]));
  }
}

// Column sums of a [batch, rows, cols] stack: block (32 columns x kSlices row slices); thread (tx, ty) sums rows
// ty, ty + kSlices, ... of column c over every batch in fp32, then the slices are added in a fixed order in shared
// memory (deterministic: the same sum order every run).
constexpr int kSlices = 8;
template <typename T>
__global__ void column_sums_kernel(const T* in, float* sums, int64_t batch, int64_t rows, int64_t cols,
                                   int64_t row_stride, int64_t batch_stride) {
  __shared__ float part[kSlices][32];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float acc = 0.f;
  if (c < cols) {
    for (int64_t b = 0; b < batch; ++b) {
      const T* base = in + b * batch_stride + c;
      for (int64_t r = threadIdx.y; r < rows; r += kSlices) acc += to_float<T>(base[r * row_stride]);
    }
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.f;
    for (int s = 0; s < kSlices; ++s) total += part[s][threadIdx.x];
    sums[c] = total;
  }
}

}  // namespace

void launch_add_bias(const Mat& out, const void* bias, cudaStream_t stream) {
  const int64_t total = out.batch * out.rows * out.cols;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65535);
  if (out.dtype == DType::kBFloat16) {
    add_bias_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        static_cast<__nv_bfloat16*>(out.data), static_cast<const __nv_bfloat16*>(bias), total, out.rows, out.cols,
        out.row_stride, out.batch_stride);
  } else if (out.dtype == DType::kFloat16) {
    add_bias_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        static_cast<__half*>(out.data), static_cast<const __half*>(bias), total, out.rows, out.cols, out.row_stride,
        out.batch_stride);
  } else {
    DISTATTN_THROW("dtype", "bias add takes bf16 / fp16, got ", dtype_name(out.dtype));
  }
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void launch_column_sums(const Mat& in, float* sums, cudaStream_t stream) {
  const dim3 block(32, kSlices), grid(static_cast<unsigned>((in.cols + 31) / 32));
  if (in.dtype == DType::kBFloat16) {
    column_sums_kernel<<<grid, block, 0, stream>>>(static_cast<const __nv_bfloat16*>(in.data), sums, in.batch, in.rows,
                                                   in.cols, in.row_stride, in.batch_stride);
  } else if (in.dtype == DType::kFloat16) {
    column_sums_kernel<<<grid, block, 0, stream>>>(static_cast<const __half*>(in.data), sums, in.batch, in.rows,
                                                   in.cols, in.row_stride, in.batch_stride);
  } else {
    DISTATTN_THROW("dtype", "column sums take bf16 / fp16, got ", dtype_name(in.dtype));
  }
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace detail
}  // namespace layers
}  // namespace distattn
