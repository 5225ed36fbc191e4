// NcclCommunicator under mpirun: exchange, all-gather, reduce-scatter, split, and the timeout path, on
// device buffers. Every rank skips (all together, agreed over MPI) unless each rank of the node has a GPU
// of its own; so on CPU-only CI this program only checks that it links and skips cleanly.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "mpi_gpu.h"
#include "mpi_gtest_main.h"

namespace distattn {
namespace testing {
namespace {

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { DISTATTN_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T))); }
  ~Dev() { cudaFree(p); }
  void put(const std::vector<T>& h) {
    DISTATTN_CUDA_CHECK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> get() const {
    std::vector<T> h(n);
    DISTATTN_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

TEST(NcclComm, ExchangeAllGatherReduceScatterSplit) {
  REQUIRE_GPU_PER_RANK();
  const int P = mpi_size(), r = mpi_rank();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, 60.0);
  EXPECT_EQ(comm.device(), Device::kCuda);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  Dev<int> a(4096), b(4096);
  a.put(std::vector<int>(4096, r));
  for (int s = 0; s < P + 1; ++s) {
    ExchangeTicket t = comm.post_exchange("nccl test exchange", s, a.p, b.p, a.n * sizeof(int), stream);
    comm.wait_exchange(t, stream);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::vector<int> got = b.get();
    const int want = ((r - s - 1) % P + P) % P;
    ASSERT_EQ(got.front(), want) << "step " << s;
    ASSERT_EQ(got.back(), want) << "step " << s;
    std::swap(a.p, b.p);
  }
  Dev<float> one(3), all(static_cast<size_t>(3 * P));
  one.put({float(r), 10.f * r, -float(r)});
  comm.all_gather("nccl test all_gather", one.p, all.p, 3 * sizeof(float), stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<float> g = all.get();
  for (int q = 0; q < P; ++q) EXPECT_EQ(g[3 * q + 1], 10.f * q);
  Dev<float> send(static_cast<size_t>(2 * P)), recv(2);
  std::vector<float> hs(static_cast<size_t>(2 * P));
  for (int q = 0; q < P; ++q) hs[2 * q] = hs[2 * q + 1] = float(q + 1) * float(r + 1);
  send.put(hs);
  comm.reduce_scatter("nccl test reduce_scatter", send.p, recv.p, 2, DType::kFloat32, stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(recv.get()[0], float(r + 1) * float(P * (P + 1) / 2));
  std::unique_ptr<Communicator> sub = comm.split(r % 2, r);
  EXPECT_EQ(sub->size(), (P - r % 2 + 1) / 2);
  cudaStreamDestroy(stream);
}

TEST(NcclComm, RankThatSkipsAStepMakesTheOthersTimeOut) {
  REQUIRE_GPU_PER_RANK();
  const int P = mpi_size(), r = mpi_rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  {
    NcclCommunicator comm(MPI_COMM_WORLD, -1, 2.0);
    Dev<char> a(64), b(64);
    bool failed = false;
    std::string text;
    for (int s = 0; s <= P && !failed; ++s) {
      if (r == P - 1 && s >= 1) break;
      try {
        ExchangeTicket t = comm.post_exchange("nccl exchange", s, a.p, b.p, 64);
        comm.wait_exchange(t);
      } catch (const Error& e) {
        failed = true;
        text = e.what();
      }
    }
    if (r != P - 1) {
      EXPECT_TRUE(failed);
      EXPECT_NE(text.find("timed out"), std::string::npos) << text;
      EXPECT_NE(text.find("step"), std::string::npos) << text;
      EXPECT_NE(text.find("aborted"), std::string::npos) << text;
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
