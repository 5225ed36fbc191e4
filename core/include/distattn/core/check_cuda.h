// Check macros for the CUDA runtime and cuBLAS: a failing call becomes a distattn::Error with the
// call's text, the library's error string and file:line.
#pragma once

#include <cuda_runtime_api.h>

#include "distattn/core/error.h"

#define DISTATTN_CUDA_CHECK(expr)                                                                                      \
  do {                                                                                                                 \
    cudaError_t distattn_status_ = (expr);                                                                             \
    if (distattn_status_ != cudaSuccess) {                                                                             \
      throw ::distattn::Error(::distattn::detail::make_message(#expr, " failed: ", cudaGetErrorName(distattn_status_), \
                                                               " (", cudaGetErrorString(distattn_status_), ")"),       \
                              "", __FILE__, __LINE__);                                                                 \
    }                                                                                                                  \
  } while (0)

// After a kernel launch: picks up launch-configuration errors without synchronising.
#define DISTATTN_CUDA_CHECK_LAUNCH() DISTATTN_CUDA_CHECK(cudaGetLastError())
