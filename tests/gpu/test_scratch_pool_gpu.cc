// core/scratch_pool.h: the library's scratch pool keeps its memory mapped across synchronisations (the reason it
// exists), trims on request, tracks its high-water mark, and PooledScratch returns memory on its stream.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/scratch_pool.h"
#include "test_util.h"

namespace distattn {
namespace {

TEST(ScratchPool, KeepsMemoryAcrossSynchronisationAndTrimsOnRequest) {
  DISTATTN_REQUIRE_GPU();
  const char* knob = std::getenv("DISTATTN_SCRATCH_POOL");
  if (knob != nullptr && std::string(knob) == "default")
    GTEST_SKIP() << "DISTATTN_SCRATCH_POOL=default: the device's pool";
  cudaStream_t stream = nullptr;
  DISTATTN_CUDA_CHECK(cudaStreamCreate(&stream));
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  release_scratch_memory();
  const ScratchPoolUsage before = scratch_pool_usage(-1, /*reset_high=*/true);
  EXPECT_EQ(before.used, 0u) << "scratch of an earlier test still in use";
  constexpr size_t kBytes = size_t{64} << 20;
  {
    PooledScratch a(kBytes, stream);
    ASSERT_NE(a.get(), nullptr);
    // The memory is usable on the stream: write a pattern and read it back.
    DISTATTN_CUDA_CHECK(cudaMemsetAsync(a.get(), 0x5a, kBytes, stream));
    std::vector<unsigned char> host(4096);
    DISTATTN_CUDA_CHECK(cudaMemcpyAsync(host.data(), a.get<unsigned char>() + kBytes - host.size(), host.size(),
                                        cudaMemcpyDeviceToHost, stream));
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (unsigned char c : host) ASSERT_EQ(c, 0x5a);
    EXPECT_GE(scratch_pool_usage().used, kBytes);
  }                                                    // freed on the stream
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));  // the default pool would hand its memory back here
  const ScratchPoolUsage after_sync = scratch_pool_usage();
  EXPECT_EQ(after_sync.used, 0u);
  EXPECT_GE(after_sync.used_high, kBytes);
  EXPECT_GE(after_sync.reserved, kBytes) << "the pool released its memory at a synchronisation";
  release_scratch_memory();
  EXPECT_LT(scratch_pool_usage().reserved, kBytes) << "release_scratch_memory did not trim the pool";
  // After a reset the high-water mark restarts from the current use (0 here).
  EXPECT_EQ(scratch_pool_usage(-1, true).used_high, after_sync.used_high);
  EXPECT_EQ(scratch_pool_usage().used_high, 0u);
  DISTATTN_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(ScratchPool, ZeroBytesAndBadDevice) {
  DISTATTN_REQUIRE_GPU();
  PooledScratch none(0, nullptr);
  EXPECT_EQ(none.get(), nullptr);
  int count = 0;
  DISTATTN_CUDA_CHECK(cudaGetDeviceCount(&count));
  EXPECT_ERROR_ARG(scratch_pool(count), "device");
  EXPECT_ERROR_ARG(release_scratch_memory(count + 3), "device");
}

}  // namespace
}  // namespace distattn
