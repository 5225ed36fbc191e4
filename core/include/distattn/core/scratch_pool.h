// The library's per-call GPU scratch: one stream-ordered memory pool per device that keeps its memory mapped.
//
// Every CUDA call of the library that needs temporary device memory (the ring's fp32 accumulators and dK|dV
// scratch, the backward's fp32 dQ accumulator, the ALiBi cutoff's norms, ...) takes it from this pool with
// cudaMallocFromPoolAsync and returns it with cudaFreeAsync on the same stream, so consecutive calls on a stream reuse
// the same bytes without any synchronisation. Why a pool of our own rather than the device's default pool: the
// default pool's release threshold is 0, so at every synchronisation (cudaStreamSynchronize, cudaEventSynchronize,
// cudaDeviceSynchronize) it hands its unused memory back, and the next call maps it again -- a training loop that
// synchronises once per step (reading the loss) would pay for mapping ~1.3 GB at every ring backward at 32K tokens on
// 2 ranks, and 0.1 ms per call for the ALiBi cutoff's few floats (measured on an H100 in session 4). This pool's
// release threshold is unlimited: it holds the high-water mark of the scratch that was in flight at once, until
// release_scratch_memory() trims it. The device's default pool and the caller's own allocator are not touched.
// DISTATTN_SCRATCH_POOL=default (read once per process) makes every call below use the device's default pool instead
// (A/B timings of the re-mapping cost; what the library did before session 7).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace distattn {

// The pool of `device` (-1: the current device), created on first use and kept for the process (thread-safe).
// Throws distattn::Error naming "device" for an ordinal that is out of range.
cudaMemPool_t scratch_pool(int device = -1);

// Gives the memory the pool holds but no allocation uses back to the driver (cudaMemPoolTrimTo(pool, 0)); memory of
// allocations still pending on a stream is kept. Call it after synchronising when the memory is needed elsewhere.
void release_scratch_memory(int device = -1);

// What the pool of `device` holds: bytes in use by allocations now, the most in use at once since the last reset
// (reset_high: restart that count from the current use), and the bytes it keeps mapped.
struct ScratchPoolUsage {
  uint64_t used = 0;
  uint64_t used_high = 0;
  uint64_t reserved = 0;
};
ScratchPoolUsage scratch_pool_usage(int device = -1, bool reset_high = false);

// Scratch of one call: `bytes` from the current device's pool, ordered on `stream`, returned to it on `stream` when
// the object goes out of scope (also when the call throws after allocating). bytes == 0: no allocation, get() null.
class PooledScratch {
 public:
  PooledScratch() = default;
  PooledScratch(size_t bytes, cudaStream_t stream) { allocate(bytes, stream); }
  ~PooledScratch() { reset(); }
  PooledScratch(const PooledScratch&) = delete;
  PooledScratch& operator=(const PooledScratch&) = delete;
  // Allocates (after returning what this object held). Throws distattn::Error on a CUDA failure.
  void allocate(size_t bytes, cudaStream_t stream);
  // Returns the memory on the stream it was allocated on (cudaFreeAsync; errors ignored: destructors do not throw).
  void reset();
  template <typename T = unsigned char>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace distattn
