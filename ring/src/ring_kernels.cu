// Device helpers of the ring's CUDA executor (ring_kernels.h). Memory-bound elementwise kernels:
// grid-stride loops over elements; one warp per row for the row dot product.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "ring_kernels.h"

namespace distattn {
namespace ring {
namespace detail {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

__device__ __forceinline__ float load_f(const void* p, int64_t i, int dtype) {
  switch (dtype) {
    case static_cast<int>(DType::kFloat16):
      return __half2float(static_cast<const __half*>(p)[i]);
    case static_cast<int>(DType::kBFloat16):
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case static_cast<int>(DType::kFloat64):
      return static_cast<float>(static_cast<const double*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_f(void* p, int64_t i, int dtype, float v) {
  switch (dtype) {
    case static_cast<int>(DType::kFloat16):
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    case static_cast<int>(DType::kBFloat16):
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    case static_cast<int>(DType::kFloat64):
      static_cast<double*>(p)[i] = v;
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

__global__ void fill_kernel(float* p, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = value;
}

// Logical element i = ((b*S + s)*H + h)*D + d; source at b*src_b + s*src_s + h*src_h + d, destination at
// b*sb + s*ss + h*sh + d (both in elements of their dtype).
__global__ void convert_kernel(const void* src, int src_dtype, int64_t src_b, int64_t src_s, int64_t src_h, void* dst,
                               int dst_dtype, int64_t S, int64_t H, int64_t D, int64_t n, int64_t sb, int64_t ss,
                               int64_t sh) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t d = i % D, h = (i / D) % H, s = (i / (D * H)) % S, b = i / (D * H * S);
    store_f(dst, b * sb + s * ss + h * sh + d, dst_dtype,
            load_f(src, b * src_b + s * src_s + h * src_h + d, src_dtype));
  }
}

__global__ void travel_add_kernel(const void* incoming, int in_dtype, const float* mine, void* out, int out_dtype,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    float v = incoming != nullptr ? load_f(incoming, i, in_dtype) : 0.f;
    if (mine != nullptr) v += mine[i];
    store_f(out, i, out_dtype, v);
  }
}

// One warp per (b, h, s) row: delta[(b*H + h)*S + s] = sum_d dout * o.
__global__ void row_dot_kernel(const void* dout, int dout_dtype, int64_t dob, int64_t dos, int64_t doh, const void* o,
                               int o_dtype, int64_t ob, int64_t os, int64_t oh, float* delta, int64_t B, int64_t S,
                               int64_t H, int64_t D) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; row < B * H * S; row += warps) {
    const int64_t s = row % S, h = (row / S) % H, b = row / (S * H);
    float acc = 0.f;
    for (int64_t d = lane; d < D; d += 32) {
      acc +=
          load_f(dout, b * dob + s * dos + h * doh + d, dout_dtype) * load_f(o, b * ob + s * os + h * oh + d, o_dtype);
    }
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) delta[row] = acc;
  }
}

}  // namespace

void fill_f32(float* p, int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, n, value);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void convert_strided_to_view(const void* src, DType src_dtype, int64_t src_b, int64_t src_s, int64_t src_h,
                             const TensorView& dst, cudaStream_t stream) {
  const int64_t n = dst.numel();
  if (n <= 0) return;
  convert_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
      src, static_cast<int>(src_dtype), src_b, src_s, src_h, dst.data, static_cast<int>(dst.dtype), dst.seqlen(),
      dst.heads(), dst.head_dim(), n, dst.stride[0], dst.stride[1], dst.stride[2]);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void convert_packed_to_view(const void* src, DType src_dtype, const TensorView& dst, cudaStream_t stream) {
  const int64_t S = dst.seqlen(), H = dst.heads(), D = dst.head_dim();
  convert_strided_to_view(src, src_dtype, S * H * D, H * D, D, dst, stream);
}

void travel_add(const void* incoming, DType in_dtype, const float* mine, void* out, DType out_dtype, int64_t n,
                cudaStream_t stream) {
  if (n <= 0) return;
  travel_add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(incoming, static_cast<int>(in_dtype), mine, out,
                                                            static_cast<int>(out_dtype), n);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void row_dot(const TensorView& dout, const TensorView& o, float* delta, cudaStream_t stream) {
  const int64_t rows = dout.batch() * dout.heads() * dout.seqlen();
  if (rows <= 0) return;
  const int64_t warps_per_block = kThreads / 32;
  const int64_t blocks64 = (rows + warps_per_block - 1) / warps_per_block;
  const int blocks = static_cast<int>(blocks64 < 65535 * 8 ? blocks64 : 65535 * 8);
  row_dot_kernel<<<blocks, kThreads, 0, stream>>>(dout.data, static_cast<int>(dout.dtype), dout.stride[0],
                                                  dout.stride[1], dout.stride[2], o.data, static_cast<int>(o.dtype),
                                                  o.stride[0], o.stride[1], o.stride[2], delta, dout.batch(),
                                                  dout.seqlen(), dout.heads(), dout.head_dim());
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void pack_view(const TensorView& src, void* dst, cudaStream_t stream) {
  const size_t es = dtype_size(src.dtype);
  const int64_t S = src.seqlen(), H = src.heads(), D = src.head_dim();
  char* out = static_cast<char*>(dst);
  const char* in = static_cast<const char*>(src.data);
  // cudaMemcpy2D wants a source pitch >= the row width even for a single row, where the stride is free.
  auto pitch = [&](int64_t width_elems) { return static_cast<size_t>(S == 1 ? width_elems : src.stride[1]) * es; };
  if ((H == 1 || src.stride[2] == D) && (S == 1 || src.stride[1] >= H * D)) {
    // Heads adjacent within a row: one 2-D copy per batch (rows of H*D elements, source pitch stride[1]).
    for (int64_t b = 0; b < src.batch(); ++b) {
      DISTATTN_CUDA_CHECK(cudaMemcpy2DAsync(out + b * S * H * D * es, H * D * es, in + b * src.stride[0] * es,
                                            pitch(H * D), H * D * es, S, cudaMemcpyDeviceToDevice, stream));
    }
    return;
  }
  // General strides: one 2-D copy per (batch, head) (rows of D elements, destination pitch H*D).
  for (int64_t b = 0; b < src.batch(); ++b)
    for (int64_t h = 0; h < H; ++h) {
      DISTATTN_CUDA_CHECK(cudaMemcpy2DAsync(out + (b * S * H + h) * D * es, H * D * es,
                                            in + (b * src.stride[0] + h * src.stride[2]) * es, pitch(D), D * es, S,
                                            cudaMemcpyDeviceToDevice, stream));
    }
}

}  // namespace detail
}  // namespace ring
}  // namespace distattn
