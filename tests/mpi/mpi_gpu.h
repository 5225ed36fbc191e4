// For gpu-mpi tests: whether every rank has a GPU of its own, decided together so that all ranks
// run or all ranks skip (a lone skipping rank would leave the others waiting in a collective).
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

namespace distattn {
namespace testing {

// True on every rank iff every rank has a GPU of its own (node-local rank < visible devices).
inline bool every_rank_has_a_gpu() {
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int local_rank = 0;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_free(&local);
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    count = 0;
  }
  int mine = local_rank < count ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

}  // namespace testing
}  // namespace distattn

#define REQUIRE_GPU_PER_RANK()                                \
  if (!::distattn::testing::every_rank_has_a_gpu())           \
  GTEST_SKIP() << "needs one GPU per rank (every rank skips " \
                  "together)"
