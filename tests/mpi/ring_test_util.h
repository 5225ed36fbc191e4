// Host-side helpers of the ring tests under mpirun (test_ring_*.cc, test_ring_sparse_*.cc): this rank's shard of a
// full tensor, the full tensor or LSE gathered from every rank's shard, and a sum over ranks (norms: test_util.h).
// Every MPI return code is checked (a failure is a test failure on that rank).
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distattn/ring/shard.h"
#include "mpi_gtest_main.h"
#include "test_util.h"

namespace distattn {
namespace testing {

// Rank r's shard [B, S/P, H, D] of the full [B, S, H, D] under `layout` (optionally with padded head / row strides).
inline HostTensor shard_of(const HostTensor& full, ring::ShardLayout layout, int P, int r, int64_t head_pad = 0,
                           int64_t row_pad = 0) {
  const TensorView& f = full.view;
  HostTensor local(f.dtype, f.batch(), f.seqlen() / P, f.heads(), f.head_dim(), head_pad, row_pad);
  ring::shard_host(f, local.view, layout, P, r);
  return local;
}

// The full [B, S, H, D] tensor from every rank's local shard (all-gathered packed shards, unsharded).
inline HostTensor gather_full(const HostTensor& local, ring::ShardLayout layout, int64_t S) {
  const int P = mpi_size();
  const HostTensor packed = convert(local, local.view.dtype);  // packed copy
  const size_t bytes = packed.bytes();
  std::vector<unsigned char> all(bytes * static_cast<size_t>(P));
  EXPECT_EQ(MPI_Allgather(packed.storage.data(), static_cast<int>(bytes), MPI_BYTE, all.data(), static_cast<int>(bytes),
                          MPI_BYTE, MPI_COMM_WORLD),
            MPI_SUCCESS);
  const TensorView& l = local.view;
  HostTensor full(l.dtype, l.batch(), S, l.heads(), l.head_dim());
  for (int r = 0; r < P; ++r) {
    const TensorView piece = TensorView::packed(all.data() + bytes * static_cast<size_t>(r), l.dtype, Device::kHost,
                                                l.batch(), l.seqlen(), l.heads(), l.head_dim());
    ring::unshard_host(piece, full.view, layout, P, r);
  }
  return full;
}

// The full LSE [B, H, S] from every rank's [B, H, S/P].
inline std::vector<float> gather_lse(const std::vector<float>& local, int64_t B, int64_t H, ring::ShardLayout layout,
                                     int64_t S) {
  const int P = mpi_size();
  std::vector<float> all(local.size() * static_cast<size_t>(P)), full(static_cast<size_t>(B * H * S));
  EXPECT_EQ(MPI_Allgather(local.data(), static_cast<int>(local.size()), MPI_FLOAT, all.data(),
                          static_cast<int>(local.size()), MPI_FLOAT, MPI_COMM_WORLD),
            MPI_SUCCESS);
  for (int r = 0; r < P; ++r) ring::unshard_lse_host(all.data() + local.size() * r, full.data(), B, H, layout, S, P, r);
  return full;
}

// Sum over ranks (fp64) of a full-length tensor; packed fp64 result.
inline HostTensor sum_over_ranks(const HostTensor& part) {
  const TensorView& t = part.view;
  HostTensor out(DType::kFloat64, t.batch(), t.seqlen(), t.heads(), t.head_dim());
  std::vector<double> mine(static_cast<size_t>(t.numel())), sum(mine.size());
  int64_t i = 0;
  for (int64_t b = 0; b < t.batch(); ++b)
    for (int64_t s = 0; s < t.seqlen(); ++s)
      for (int64_t h = 0; h < t.heads(); ++h)
        for (int64_t d = 0; d < t.head_dim(); ++d) mine[static_cast<size_t>(i++)] = part.get(b, s, h, d);
  EXPECT_EQ(MPI_Allreduce(mine.data(), sum.data(), static_cast<int>(mine.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
            MPI_SUCCESS);
  std::memcpy(out.storage.data(), sum.data(), sum.size() * sizeof(double));
  return out;
}

}  // namespace testing
}  // namespace distattn
