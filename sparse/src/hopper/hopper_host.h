// Host-side helpers shared by the Hopper forward and backward launchers (flash_fwd_hopper.cu,
// flash_bwd_hopper.cu): device capability, TMA descriptors, position-map checks and copies. Internal.
#pragma once

#include <cuda.h>          // CUtensorMap
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"

namespace distattn {
namespace hopper {

// True when `device` is compute capability 9.0, `kernel` (any instantiation of the caller's kernel) holds sm_90a
// code (a build without it keeps the kernel with an empty body for another target: binaryVersion says so) and the
// device offers `smem_bytes` of opt-in shared memory per block. The attribute query runs on `device` (the current
// device is restored). Throws distattn::Error when a CUDA call fails.
bool device_runs_sm90a_kernel(int device, const void* kernel, size_t smem_bytes);

// Per-device cache of device_runs_sm90a_kernel for one kernel family (the answer cannot change in a process).
class DeviceSupportCache {
 public:
  static constexpr int kMaxDevices = 64;
  bool get(int device, const void* kernel, size_t smem_bytes);

 private:
  std::atomic<int> ok_[kMaxDevices] = {};  // 1 yes, 0 no (valid when known_)
  std::atomic<bool> known_[kMaxDevices] = {};
};

// A 16-bit tensor the TMA engine can address: 16-byte aligned base, head dim contiguous, row / head / batch strides
// positive multiples of 16 bytes below 2^40 bytes (a size-1 dimension's stride is never used).
bool tma_addressable(const TensorView& t);

// 1..max_chunks chunks whose boundaries (prefix sums of the lengths, the last excepted) are multiples of
// `tile_rows`: every tile of that many rows lies in one chunk, so its positions are affine.
bool tile_aligned_chunks(const PositionMap& m, int max_chunks, int tile_rows);

// A validated position map (at most max_chunks chunks) into a kernel's chunk arrays: rows[c] = first local row of
// chunk c (prefix sums of the lengths; rows[num .. max_chunks] = the total), start[c], stride[c].
void fill_chunks(const PositionMap& m, int max_chunks, int* num, int* rows, int64_t* start, int64_t* stride);

// The driver's cuTensorMapEncodeTiled (looked up once). Throws distattn::Error when the driver lacks it.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder();

// TMA descriptor of a [B, S, H, 128] 16-bit tensor: dims (innermost first) {128, S, H, B}, box {64, box_rows, 1, 1},
// 128-byte swizzle (the layout the wgmma descriptors expect), zeros for rows past S. Throws distattn::Error naming
// `argument` when the driver refuses it.
CUtensorMap make_tmap_16bit(const TensorView& t, int box_rows, const char* argument);

}  // namespace hopper
}  // namespace distattn
