// The library's GPU scratch high-water mark over one run, for the ops' peak-memory columns.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>

namespace distattn {
namespace bench {

// Synchronises `stream`, restarts the high-water mark of the current device's scratch pool (core/scratch_pool.h:
// every stream-ordered scratch of the library lives there), runs fn(), synchronises again and returns the most
// bytes of that pool in use at once during fn(). Throws distattn::Error on a CUDA failure.
double scratch_high_bytes_during(cudaStream_t stream, const std::function<void()>& fn);

}  // namespace bench
}  // namespace distattn
