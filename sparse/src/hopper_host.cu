// Host-side helpers shared by the Hopper forward and backward launchers (hopper/hopper_host.h).
#include <cuda_runtime.h>

#include <mutex>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "hopper/hopper_host.h"

namespace distattn {
namespace hopper {

bool device_runs_sm90a_kernel(int device, const void* kernel, size_t smem_bytes) {
  cudaDeviceProp prop{};
  DISTATTN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major != 9 || prop.minor != 0) return false;
  int current = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) DISTATTN_CUDA_CHECK(cudaSetDevice(device));
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
  if (current != device) DISTATTN_CUDA_CHECK(cudaSetDevice(current));
  DISTATTN_CUDA_CHECK(e);
  return attr.binaryVersion == 90 && prop.sharedMemPerBlockOptin >= smem_bytes;
}

bool DeviceSupportCache::get(int device, const void* kernel, size_t smem_bytes) {
  if (device < 0 || device >= kMaxDevices) return false;
  if (known_[device].load()) return ok_[device].load() == 1;
  const bool ok = device_runs_sm90a_kernel(device, kernel, smem_bytes);
  ok_[device].store(ok ? 1 : 0);
  known_[device].store(true);
  return ok;
}

bool tma_addressable(const TensorView& t) {
  constexpr int64_t kElem = 2;
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0 || t.stride[3] != 1) return false;
  for (int axis = 0; axis < 3; ++axis) {
    if (t.shape[axis] == 1) continue;
    const int64_t bytes = t.stride[axis] * kElem;
    if (bytes <= 0 || bytes % 16 != 0 || bytes >= (int64_t{1} << 40)) return false;
  }
  return true;
}

bool tile_aligned_chunks(const PositionMap& m, int max_chunks, int tile_rows) {
  if (m.num_chunks < 1 || m.num_chunks > max_chunks) return false;
  int64_t row = 0;
  for (int c = 0; c + 1 < m.num_chunks; ++c) {
    row += m.chunks[c].length;
    if (row % tile_rows != 0) return false;
  }
  return true;
}

void fill_chunks(const PositionMap& m, int max_chunks, int* num, int* rows, int64_t* start, int64_t* stride) {
  *num = m.num_chunks;
  int64_t row = 0;
  for (int c = 0; c < m.num_chunks; ++c) {
    rows[c] = static_cast<int>(row);
    start[c] = m.chunks[c].start;
    stride[c] = m.chunks[c].stride;
    row += m.chunks[c].length;
  }
  for (int c = m.num_chunks; c <= max_chunks; ++c) rows[c] = static_cast<int>(row);
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q{};
    DISTATTN_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q));
    if (q == cudaDriverEntryPointSuccess) fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  });
  DISTATTN_CHECK(fn != nullptr, "the CUDA driver does not provide cuTensorMapEncodeTiled");
  return fn;
}

CUtensorMap make_tmap_16bit(const TensorView& t, int box_rows, const char* argument) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(t.shape[3]), static_cast<cuuint64_t>(t.shape[1]),
                              static_cast<cuuint64_t>(t.shape[2]), static_cast<cuuint64_t>(t.shape[0])};
  // Strides of dims 1..3 in bytes; a size-1 dimension gets a harmless valid stride.
  auto stride_bytes = [&](int axis) -> cuuint64_t {
    return t.shape[axis] == 1 ? 16 : static_cast<cuuint64_t>(t.stride[axis] * 2);
  };
  const cuuint64_t strides[3] = {stride_bytes(1), stride_bytes(2), stride_bytes(0)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dtype =
      t.dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = tensor_map_encoder()(&map, dtype, 4, t.data, dims, strides, box, elem_strides,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DISTATTN_CHECK_ARG(r == CUDA_SUCCESS, argument,
                     "cannot be described to the TMA engine (cuTensorMapEncodeTiled error ", static_cast<int>(r),
                     ") for ", describe(t));
  return map;
}

}  // namespace hopper
}  // namespace distattn
