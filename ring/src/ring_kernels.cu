// Device helpers of the ring's CUDA executor (ring_kernels.h). Memory-bound elementwise kernels:
// grid-stride loops over elements; one warp per row for the row dot product.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/sparse/flash_attention.h"
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
// addend (optional, fp32) is read at the source's offsets.
__global__ void convert_kernel(const void* src, int src_dtype, const float* addend, int64_t src_b, int64_t src_s,
                               int64_t src_h, void* dst, int dst_dtype, int64_t S, int64_t H, int64_t D, int64_t n,
                               int64_t sb, int64_t ss, int64_t sh) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t d = i % D, h = (i / D) % H, s = (i / (D * H)) % S, b = i / (D * H * S);
    const int64_t from = b * src_b + s * src_s + h * src_h + d;
    float v = load_f(src, from, src_dtype);
    if (addend != nullptr) v += addend[from];
    store_f(dst, b * sb + s * ss + h * sh + d, dst_dtype, v);
  }
}

// Four consecutive d of one (b, s, h) row per thread (D % 4 == 0, every stride and base 4-element aligned): the
// per-element kernel above spends its time in 64-bit index division and a dtype switch per element (measured
// ~0.7 TB/s on an H200); this one does the row arithmetic once per 4 elements in 32 bits (rows * D / 4 < 2^31) with
// the dtypes compiled in (offsets in 64 bits). Row r = (b * S + s) * H + h; vector j of the row covers d = 4j .. 4j
// + 3.
template <typename T>
struct Vec4Io;
template <>
struct Vec4Io<float> {
  static __device__ __forceinline__ float4 load(const float* p) { return *reinterpret_cast<const float4*>(p); }
  static __device__ __forceinline__ void store(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
};
template <>
struct Vec4Io<__nv_bfloat16> {
  static __device__ __forceinline__ float4 load(const __nv_bfloat16* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
  }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float4 v) {
    const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&a);
    u.y = *reinterpret_cast<const uint32_t*>(&b);
    *reinterpret_cast<uint2*>(p) = u;
  }
};
template <>
struct Vec4Io<__half> {
  static __device__ __forceinline__ float4 load(const __half* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
  }
  static __device__ __forceinline__ void store(__half* p, float4 v) {
    const __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&a);
    u.y = *reinterpret_cast<const uint32_t*>(&b);
    *reinterpret_cast<uint2*>(p) = u;
  }
};

template <typename Src, typename Dst>
__global__ void convert_vec4_kernel(const Src* src, const float* addend, int64_t src_b, int64_t src_s, int64_t src_h,
                                    Dst* dst, int64_t sb, int64_t ss, int64_t sh, uint32_t S, uint32_t H,
                                    uint32_t vecs_per_row, uint32_t n_vec) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += gridDim.x * blockDim.x) {
    const uint32_t row = i / vecs_per_row, d = (i - row * vecs_per_row) * 4;
    const uint32_t h = row % H, bs = row / H, s = bs % S, b = bs / S;
    const int64_t from = b * src_b + s * src_s + h * src_h + d;
    float4 v = Vec4Io<Src>::load(src + from);
    if (addend != nullptr) {
      const float4 a = Vec4Io<float>::load(addend + from);
      v.x += a.x, v.y += a.y, v.z += a.z, v.w += a.w;
    }
    Vec4Io<Dst>::store(dst + b * sb + s * ss + h * sh + d, v);
  }
}

// Calls f(Src*{}, Dst*{}) with the static types of the two dtypes (fp32, bf16, fp16); false for any other pair.
template <typename F>
bool dispatch_pair(DType a, DType b, F&& f) {
  auto inner = [&](auto tag_a) {
    switch (b) {
      case DType::kFloat32:
        f(tag_a, static_cast<float*>(nullptr));
        return true;
      case DType::kBFloat16:
        f(tag_a, static_cast<__nv_bfloat16*>(nullptr));
        return true;
      case DType::kFloat16:
        f(tag_a, static_cast<__half*>(nullptr));
        return true;
      default:
        return false;
    }
  };
  switch (a) {
    case DType::kFloat32:
      return inner(static_cast<float*>(nullptr));
    case DType::kBFloat16:
      return inner(static_cast<__nv_bfloat16*>(nullptr));
    case DType::kFloat16:
      return inner(static_cast<__half*>(nullptr));
    default:
      return false;
  }
}

// DISTATTN_RING_VEC=0 turns the vectorised kernels off (A/B timings against the per-element ones); "1" or unset: on.
// Read once per process; anything else throws naming it.
bool vec_enabled() {
  static const bool on = env_choice("DISTATTN_RING_VEC", {"0", "1"}, 1) == 1;
  return on;
}

bool aligned_vec4(const void* p, DType t, std::initializer_list<int64_t> strides) {
  if (!vec_enabled()) return false;
  const uintptr_t bytes = 4 * dtype_size(t);
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  for (int64_t st : strides)
    if (st % 4 != 0) return false;
  return true;
}

__global__ void travel_add_kernel(const void* incoming, int in_dtype, const float* mine, void* out, int out_dtype,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    float v = incoming != nullptr ? load_f(incoming, i, in_dtype) : 0.f;
    if (mine != nullptr) v += mine[i];
    store_f(out, i, out_dtype, v);
  }
}

// travel_add four elements per thread (n % 4 == 0, pointers 4-element aligned), dtypes compiled in.
template <typename In, typename Out>
__global__ void travel_add_vec4_kernel(const In* incoming, const float* mine, Out* out, int64_t n_vec) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n_vec; i += int64_t{gridDim.x} * blockDim.x) {
    float4 v = incoming != nullptr ? Vec4Io<In>::load(incoming + 4 * i) : make_float4(0.f, 0.f, 0.f, 0.f);
    if (mine != nullptr) {
      const float4 m = Vec4Io<float>::load(mine + 4 * i);
      v.x += m.x, v.y += m.y, v.z += m.z, v.w += m.w;
    }
    Vec4Io<Out>::store(out + 4 * i, v);
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
  sum_strided_to_view(src, src_dtype, nullptr, src_b, src_s, src_h, dst, stream);
}

void sum_strided_to_view(const void* src, DType src_dtype, const float* addend, int64_t src_b, int64_t src_s,
                         int64_t src_h, const TensorView& dst, cudaStream_t stream) {
  const int64_t n = dst.numel();
  if (n <= 0) return;
  const int64_t S = dst.seqlen(), H = dst.heads(), D = dst.head_dim();
  if (D % 4 == 0 && n / 4 < (int64_t{1} << 31) && aligned_vec4(src, src_dtype, {src_b, src_s, src_h}) &&
      (addend == nullptr || aligned_vec4(addend, DType::kFloat32, {})) &&
      aligned_vec4(dst.data, dst.dtype, {dst.stride[0], dst.stride[1], dst.stride[2]})) {
    const bool launched = dispatch_pair(src_dtype, dst.dtype, [&](auto* src_tag, auto* dst_tag) {
      using Src = std::remove_pointer_t<decltype(src_tag)>;
      using Dst = std::remove_pointer_t<decltype(dst_tag)>;
      const uint32_t n_vec = static_cast<uint32_t>(n / 4);
      convert_vec4_kernel<Src, Dst><<<blocks_for(n_vec), kThreads, 0, stream>>>(
          static_cast<const Src*>(src), addend, src_b, src_s, src_h, static_cast<Dst*>(dst.data), dst.stride[0],
          dst.stride[1], dst.stride[2], static_cast<uint32_t>(S), static_cast<uint32_t>(H),
          static_cast<uint32_t>(D / 4), n_vec);
    });
    if (launched) {
      DISTATTN_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  convert_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
      src, static_cast<int>(src_dtype), addend, src_b, src_s, src_h, dst.data, static_cast<int>(dst.dtype),
      dst.seqlen(), dst.heads(), dst.head_dim(), n, dst.stride[0], dst.stride[1], dst.stride[2]);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

void convert_packed_to_view(const void* src, DType src_dtype, const TensorView& dst, cudaStream_t stream) {
  const int64_t S = dst.seqlen(), H = dst.heads(), D = dst.head_dim();
  convert_strided_to_view(src, src_dtype, S * H * D, H * D, D, dst, stream);
}

void travel_add(const void* incoming, DType in_dtype, const float* mine, void* out, DType out_dtype, int64_t n,
                cudaStream_t stream) {
  if (n <= 0) return;
  if (n % 4 == 0 && aligned_vec4(incoming, in_dtype, {}) && aligned_vec4(mine, DType::kFloat32, {}) &&
      aligned_vec4(out, out_dtype, {})) {
    const bool launched = dispatch_pair(in_dtype, out_dtype, [&](auto* in_tag, auto* out_tag) {
      using In = std::remove_pointer_t<decltype(in_tag)>;
      using Out = std::remove_pointer_t<decltype(out_tag)>;
      travel_add_vec4_kernel<In, Out><<<blocks_for(n / 4), kThreads, 0, stream>>>(static_cast<const In*>(incoming),
                                                                                  mine, static_cast<Out*>(out), n / 4);
    });
    if (launched) {
      DISTATTN_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  travel_add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(incoming, static_cast<int>(in_dtype), mine, out,
                                                            static_cast<int>(out_dtype), n);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

namespace {

// True when the engine's vectorised delta kernel (flash_attention_backward_delta) takes the pair: 16-bit dout, o of
// dout's dtype or fp32, head dim 64 or 128, 16-byte aligned rows (base and the batch, row and head strides).
bool engine_delta_ok(const TensorView& dout, const TensorView& o) {
  if (!vec_enabled()) return false;
  if (dout.dtype != DType::kBFloat16 && dout.dtype != DType::kFloat16) return false;
  if (o.dtype != dout.dtype && o.dtype != DType::kFloat32) return false;
  if (dout.head_dim() != 64 && dout.head_dim() != 128) return false;
  if (dout.stride[3] != 1 || o.stride[3] != 1) return false;
  auto rows_aligned = [](const TensorView& t) {
    const int64_t es = static_cast<int64_t>(dtype_size(t.dtype));
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
    for (int axis = 0; axis < 3; ++axis)
      if (t.shape[axis] > 1 && (t.stride[axis] * es) % 16 != 0) return false;
    return true;
  };
  return rows_aligned(dout) && rows_aligned(o);
}

}  // namespace

void row_dot(const TensorView& dout, const TensorView& o, float* delta, cudaStream_t stream) {
  const int64_t rows = dout.batch() * dout.heads() * dout.seqlen();
  if (rows <= 0) return;
  // The engine's kernel reads 16 bytes per thread; the warp-per-row kernel below (one element per lane and load,
  // the dtype switched per element) is the fallback for fp32 dout, other head dims and unaligned views, and for
  // DISTATTN_RING_VEC=0.
  if (engine_delta_ok(dout, o)) {
    flash_attention_backward_delta(o, dout, delta, stream);
    return;
  }
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
  if ((H == 1 || src.stride[2] == D) && (S == 1 || src.stride[1] == H * D) &&
      (src.batch() == 1 || src.stride[0] == S * H * D)) {
    // Packed already: one linear copy (the 2-D copy below ran at about a third of the copy bandwidth).
    DISTATTN_CUDA_CHECK(
        cudaMemcpyAsync(out, in, static_cast<size_t>(src.numel()) * es, cudaMemcpyDeviceToDevice, stream));
    return;
  }
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
