// scratch_pool.h: one keep-everything stream-ordered pool per device.
#include "distattn/core/scratch_pool.h"

#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"

namespace distattn {
namespace {

// Every scratch allocation passes here: the device count is asked once per process (it cannot change in one).
int resolve_device(int device) {
  static const int count = [] {
    int n = 0;
    DISTATTN_CUDA_CHECK(cudaGetDeviceCount(&n));
    return n;
  }();
  if (device < 0) DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  DISTATTN_CHECK_ARG(device < count, "device", "is ", device, ", the process sees ", count, " CUDA device(s)");
  return device;
}

// DISTATTN_SCRATCH_POOL=default: the device's default pool instead (release threshold as the process left it; an A/B
// knob for the cost of re-mapping scratch after synchronisations). Unset or "library": the library's own pool. Read
// once; anything else throws naming the variable.
bool use_default_pool() {
  static const bool v = env_choice("DISTATTN_SCRATCH_POOL", {"library", "default"}, 0) == 1;
  return v;
}

}  // namespace

cudaMemPool_t scratch_pool(int device) {
  device = resolve_device(device);
  if (use_default_pool()) {
    cudaMemPool_t pool = nullptr;
    DISTATTN_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    return pool;
  }
  static std::mutex mutex;
  static std::vector<cudaMemPool_t> pools;  // by device ordinal
  std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<size_t>(device) >= pools.size()) pools.resize(static_cast<size_t>(device) + 1, nullptr);
  cudaMemPool_t& pool = pools[static_cast<size_t>(device)];
  if (pool == nullptr) {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t created = nullptr;
    DISTATTN_CUDA_CHECK(cudaMemPoolCreate(&created, &props));
    uint64_t keep_all = std::numeric_limits<uint64_t>::max();
    DISTATTN_CUDA_CHECK(cudaMemPoolSetAttribute(created, cudaMemPoolAttrReleaseThreshold, &keep_all));
    pool = created;  // never destroyed: destroying it at exit would race the CUDA runtime's own teardown
  }
  return pool;
}

void release_scratch_memory(int device) { DISTATTN_CUDA_CHECK(cudaMemPoolTrimTo(scratch_pool(device), 0)); }

ScratchPoolUsage scratch_pool_usage(int device, bool reset_high) {
  cudaMemPool_t pool = scratch_pool(device);
  ScratchPoolUsage u;
  uint64_t v = 0;
  DISTATTN_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &v));
  u.used = v;
  DISTATTN_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &v));
  u.used_high = v;
  DISTATTN_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v));
  u.reserved = v;
  if (reset_high) {
    uint64_t zero = 0;  // the only value the attribute accepts: restart the high-water mark from the current use
    DISTATTN_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  }
  return u;
}

void PooledScratch::allocate(size_t bytes, cudaStream_t stream) {
  reset();
  if (bytes == 0) return;
  void* p = nullptr;
  DISTATTN_CUDA_CHECK(cudaMallocFromPoolAsync(&p, bytes, scratch_pool(), stream));
  ptr_ = p;
  stream_ = stream;
}

void PooledScratch::reset() {
  if (ptr_ != nullptr) (void)cudaFreeAsync(ptr_, stream_);
  ptr_ = nullptr;
}

}  // namespace distattn
