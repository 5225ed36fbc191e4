// Hopper (sm_90a) primitives of the wgmma backward kernel (flash_bwd_hopper_kernel.cuh), in addition to
// hopper_primitives.cuh (descriptors, the wgmma wrappers and WgmmaOps, mbarriers, TMA, setmaxnreg), which this
// header includes.
// Device code only for sm_90a (DISTATTN_HOPPER_DEVICE); other targets see the declarations vanish.
//
//   Named barriers of an explicit thread count, the async-proxy fence for shared memory written by ordinary
//   stores and read by wgmma, the vector fp32 reduction to global memory (sm_90), and the TMA reduce-add of a
//   shared-memory box into a global tensor (bulk groups).
#pragma once

#include <cstdint>

#include "hopper_primitives.cuh"

namespace distattn {
namespace hopper {

#ifdef DISTATTN_HOPPER_DEVICE

// Barrier `id` (1..15; 0 is __syncthreads) over `kCount` threads (a multiple of 32), all of which call it.
template <int kCount>
__device__ __forceinline__ void bwd_named_sync(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kCount) : "memory");
}

// Orders this thread's ordinary shared-memory stores before later reads by the async proxy (wgmma, TMA);
// followed by a barrier among the writers and the readers.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ptr[0] += a, ptr[1] += b as one fire-and-forget vector reduction (ptr 8-byte aligned, global memory).
__device__ __forceinline__ void red_add_f32x2(float* ptr, float a, float b) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(ptr), "f"(a), "f"(b) : "memory");
}

// TMA reduction: adds the box at shared `src` (the tensor map's swizzle layout) into the global tensor at
// coordinates (c0 innermost .. c3), element-wise with the map's data type (fp32 here); elements outside the tensor
// are skipped. Completion through the bulk-group mechanism of the issuing thread.
__device__ __forceinline__ void tma_reduce_add_4d(const void* tmap, uint32_t src, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(tmap)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until at most N bulk groups of this thread still read their shared-memory source (.read) or are still
// in flight at all.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif  // DISTATTN_HOPPER_DEVICE

}  // namespace hopper
}  // namespace distattn
