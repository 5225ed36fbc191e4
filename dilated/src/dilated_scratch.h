// Grow-only scratch of the single-device (dilated_attention.cc) and distributed (distributed_dilated.cc) dilated
// attention: one rule for every such buffer, on the host or on the CUDA device. Internal (not installed).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

#include "distattn/core/check_cuda.h"

namespace distattn {
namespace dilated_detail {

// Makes `ptr` hold at least `count` elements of T and returns it; what it held before is not kept. `capacity` is
// its size in elements. On the host (`on_host`) the storage is `host`; on the device a larger block is cudaMalloc'd
// after the old one is freed, and since kernels queued on `last_stream` (the stream of the last call that used the
// buffer) may still read the old block, that stream is synchronised first. Throws distattn::Error on a CUDA failure.
template <typename T, typename Count>
T* grow_scratch(bool on_host, cudaStream_t last_stream, Count count, T*& ptr, Count& capacity, std::vector<T>& host) {
  if (count <= capacity) return ptr;
  if (on_host) {
    host.resize(static_cast<size_t>(count));
    ptr = host.data();
  } else {
    if (ptr != nullptr) {
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(last_stream));
      DISTATTN_CUDA_CHECK(cudaFree(ptr));
      ptr = nullptr;
    }
    DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), static_cast<size_t>(count) * sizeof(T)));
  }
  capacity = count;
  return ptr;
}

}  // namespace dilated_detail
}  // namespace distattn
