// Check macros for NCCL, cuBLAS and MPI. Include only where those libraries are used: each macro
// is defined only when its library's header has been included before this one.
#pragma once

#include "distattn/core/error.h"

#if defined(NCCL_H_) || defined(NCCL_MAJOR)
#define DISTATTN_NCCL_CHECK(expr)                                                                            \
  do {                                                                                                       \
    ncclResult_t distattn_status_ = (expr);                                                                  \
    if (distattn_status_ != ncclSuccess && distattn_status_ != ncclInProgress) {                             \
      throw ::distattn::Error(                                                                               \
          ::distattn::detail::make_message(#expr, " failed: ", ncclGetErrorString(distattn_status_), " (",   \
                                           ncclGetLastError(nullptr) ? ncclGetLastError(nullptr) : "", ")"), \
          "", __FILE__, __LINE__);                                                                           \
    }                                                                                                        \
  } while (0)
#endif

#if defined(CUBLAS_API_H_) || defined(CUBLAS_VER_MAJOR)
#define DISTATTN_CUBLAS_CHECK(expr)                                                                                    \
  do {                                                                                                                 \
    cublasStatus_t distattn_status_ = (expr);                                                                          \
    if (distattn_status_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
      throw ::distattn::Error(                                                                                         \
          ::distattn::detail::make_message(#expr, " failed: ", cublasGetStatusString(distattn_status_)), "", __FILE__, \
          __LINE__);                                                                                                   \
    }                                                                                                                  \
  } while (0)
#endif

#if defined(MPI_VERSION)
#define DISTATTN_MPI_CHECK(expr)                                                                                  \
  do {                                                                                                            \
    int distattn_status_ = (expr);                                                                                \
    if (distattn_status_ != MPI_SUCCESS) {                                                                        \
      char distattn_text_[MPI_MAX_ERROR_STRING] = {0};                                                            \
      int distattn_len_ = 0;                                                                                      \
      MPI_Error_string(distattn_status_, distattn_text_, &distattn_len_);                                         \
      throw ::distattn::Error(::distattn::detail::make_message(#expr, " failed: ", distattn_text_), "", __FILE__, \
                              __LINE__);                                                                          \
    }                                                                                                             \
  } while (0)
#endif
