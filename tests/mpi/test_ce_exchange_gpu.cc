// Copy-engine exchange windows (NcclCommunicator::register_window, comm/src/ce_window.cc) under mpirun, one GPU per
// rank: the copy-engine path against the NCCL path bit for bit over many steps (shifts 1, -s and 0, both halves of
// the double buffer, fresh random data and travelling data, receive buffers poisoned before every step), the
// registration's agreement (one rank asking for NCCL, a pool-allocated window, different sizes), and the failure
// path (a rank that stops posting: every other rank gets an Error within the timeout instead of hanging).
// Every rank skips together unless each rank of the node has a GPU of its own.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "mpi_gpu.h"
#include "mpi_gtest_main.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

// Deterministic bytes of rank q at step s (every rank can recompute any rank's data for the expectation).
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
void fill_bytes(std::vector<unsigned char>& out, uint64_t seed, int rank, int step) {
  const uint64_t base = mix(seed ^ mix(static_cast<uint64_t>(rank) * 1000003ull + static_cast<uint64_t>(step)));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<unsigned char>(mix(base + i / 8) >> (8 * (i % 8)));
}

// The step's shift: 1 (the ring hop), -s (a travelling buffer sent home) and, every few steps, 0 (mod P).
int shift_of(int step, int P) {
  if (step % 5 == 4) return P;  // 0 mod P: a local copy
  return step % 2 == 0 ? 1 : -(step % P + 1);
}
bool fresh_data(int step) { return step % 3 != 1; }  // otherwise the buffer travels on (send what was received)

struct DevBuf {
  unsigned char* p = nullptr;
  explicit DevBuf(size_t bytes) { DISTATTN_CUDA_CHECK(cudaMalloc(&p, bytes)); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

// Runs `steps` exchanges on the double buffer [half0 | half1] (both halves `bytes`), consumer = a compute stream that
// copies every received half into hist[step] right after the wait (so the consumer's view is what is checked).
// No host synchronisation between steps except wait_exchange's own poll.
void run_steps(NcclCommunicator& comm, unsigned char* half0, unsigned char* half1, size_t bytes, int steps,
               unsigned char* hist, const std::vector<std::vector<unsigned char>>& fresh, cudaStream_t C) {
  unsigned char* half[2] = {half0, half1};
  int cur = 0;
  for (int s = 0; s < steps; ++s) {
    if (fresh_data(s)) {
      DISTATTN_CUDA_CHECK(
          cudaMemcpyAsync(half[cur], fresh[static_cast<size_t>(s)].data(), bytes, cudaMemcpyHostToDevice, C));
    }
    DISTATTN_CUDA_CHECK(cudaMemsetAsync(half[1 - cur], 0xFF, bytes, C));  // poisoned receive buffer
    ExchangeTicket t =
        comm.post_shift("ce test exchange", s, half[cur], half[1 - cur], bytes, shift_of(s, comm.size()), C);
    comm.wait_exchange(t, C);
    DISTATTN_CUDA_CHECK(
        cudaMemcpyAsync(hist + static_cast<size_t>(s) * bytes, half[1 - cur], bytes, cudaMemcpyDeviceToDevice, C));
    cur = 1 - cur;
  }
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(C));
}

bool ce_wanted() {
  const char* e = std::getenv("DISTATTN_RING_EXCHANGE");
  return e == nullptr || std::string(e) != "nccl";
}

TEST(CeExchange, MatchesNcclBitForBit) {
  REQUIRE_GPU_PER_RANK();
  const int P = mpi_size(), r = mpi_rank();
  const uint64_t seed = test_seed();
  if (r == 0) std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  NcclCommunicator comm(MPI_COMM_WORLD, -1, 60.0);
  const size_t bytes = 4 * 262147 + 3;  // odd: no alignment the copy could rely on
  const int steps = 4 * P + 9;
  // Fresh data of EVERY rank per step (host copies, for the host simulation) and this rank's pinned copies.
  std::vector<std::vector<std::vector<unsigned char>>> data(static_cast<size_t>(P));
  for (int q = 0; q < P; ++q) {
    data[static_cast<size_t>(q)].resize(static_cast<size_t>(steps));
    for (int s = 0; s < steps; ++s) {
      auto& d = data[static_cast<size_t>(q)][static_cast<size_t>(s)];
      d.resize(bytes);
      if (fresh_data(s)) fill_bytes(d, seed, q, s);
    }
  }
  cudaStream_t C;
  ASSERT_EQ(cudaStreamCreateWithFlags(&C, cudaStreamNonBlocking), cudaSuccess);
  // The window: ONE allocation [half0 | gap | half1] at a non-zero offset of the allocation (the registered base
  // need not be an allocation's start); the NCCL reference: two separate buffers.
  const size_t gap = 4096 + 16, lead = 256;
  DevBuf win_alloc(lead + 2 * bytes + gap), ref0(bytes), ref1(bytes);
  unsigned char* win = win_alloc.p + lead;
  const int id = comm.register_window(win, 2 * bytes + gap, "ce test window");
  if (ce_wanted()) {
    ASSERT_GE(id, 0) << "the copy-engine window was refused: " << comm.window_refusal();
    EXPECT_STREQ(comm.exchange_path(win, win + bytes + gap, bytes), "ce");
  } else {
    EXPECT_EQ(id, -1);
  }
  EXPECT_STREQ(comm.exchange_path(ref0.p, ref1.p, bytes), "nccl");
  DevBuf hist_ce(static_cast<size_t>(steps) * bytes), hist_nccl(static_cast<size_t>(steps) * bytes);
  run_steps(comm, win, win + bytes + gap, bytes, steps, hist_ce.p, data[static_cast<size_t>(r)], C);
  run_steps(comm, ref0.p, ref1.p, bytes, steps, hist_nccl.p, data[static_cast<size_t>(r)], C);
  // The same again on the window: the sequence numbers go on across runs.
  DevBuf hist_ce2(static_cast<size_t>(steps) * bytes);
  run_steps(comm, win, win + bytes + gap, bytes, steps, hist_ce2.p, data[static_cast<size_t>(r)], C);

  // Host simulation: state[q] = what rank q sends at step s.
  std::vector<std::vector<unsigned char>> state(static_cast<size_t>(P), std::vector<unsigned char>(bytes));
  std::vector<unsigned char> got_ce(bytes), got_nccl(bytes), got_ce2(bytes);
  for (int s = 0; s < steps; ++s) {
    if (fresh_data(s)) {
      for (int q = 0; q < P; ++q) state[static_cast<size_t>(q)] = data[static_cast<size_t>(q)][static_cast<size_t>(s)];
    }
    const int shift = shift_of(s, P);
    std::vector<std::vector<unsigned char>> next(static_cast<size_t>(P));
    for (int q = 0; q < P; ++q) {
      const int src = static_cast<int>(((q - int64_t{shift}) % P + P) % P);
      next[static_cast<size_t>(q)] = state[static_cast<size_t>(src)];
    }
    state.swap(next);
    ASSERT_EQ(cudaMemcpy(got_ce.data(), hist_ce.p + static_cast<size_t>(s) * bytes, bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(got_nccl.data(), hist_nccl.p + static_cast<size_t>(s) * bytes, bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(got_ce2.data(), hist_ce2.p + static_cast<size_t>(s) * bytes, bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    const std::vector<unsigned char>& want = state[static_cast<size_t>(r)];
    ASSERT_EQ(std::memcmp(got_nccl.data(), want.data(), bytes), 0) << "NCCL path, step " << s << " shift " << shift;
    ASSERT_EQ(std::memcmp(got_ce.data(), got_nccl.data(), bytes), 0) << "CE vs NCCL, step " << s << " shift " << shift;
    ASSERT_EQ(std::memcmp(got_ce2.data(), want.data(), bytes), 0) << "CE second run, step " << s << " shift " << shift;
  }
  comm.deregister_window(id);
  EXPECT_STREQ(comm.exchange_path(win, win + bytes + gap, bytes), "nccl");
  cudaStreamDestroy(C);
}

TEST(CeExchange, RegistrationAgreesAcrossRanks) {
  REQUIRE_GPU_PER_RANK();
  const int P = mpi_size(), r = mpi_rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  NcclCommunicator comm(MPI_COMM_WORLD, -1, 30.0);
  DevBuf a(1 << 16);
  {  // Rank 0 asks for NCCL: every rank falls back, naming rank 0.
    const char* old = std::getenv("DISTATTN_RING_EXCHANGE");
    const std::string saved = old ? old : "";
    if (r == 0) setenv("DISTATTN_RING_EXCHANGE", "nccl", 1);
    const int id = comm.register_window(a.p, 1 << 16, "ce test window");
    if (r == 0) {
      if (old)
        setenv("DISTATTN_RING_EXCHANGE", saved.c_str(), 1);
      else
        unsetenv("DISTATTN_RING_EXCHANGE");
    }
    EXPECT_EQ(id, -1);
    EXPECT_NE(comm.window_refusal().find("rank 0"), std::string::npos) << comm.window_refusal();
    EXPECT_STREQ(comm.exchange_path(a.p, a.p + (1 << 15), 1 << 15), "nccl");
  }
  {  // A stream-ordered pool allocation cannot be exported: every rank falls back.
    void* pool = nullptr;
    ASSERT_EQ(cudaMallocAsync(&pool, 1 << 16, nullptr), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
    const int id = comm.register_window(pool, 1 << 16, "ce test pool window");
    EXPECT_EQ(id, -1);
    if (id >= 0) comm.deregister_window(id);
    // Refused at export (cudaIpcGetMemHandle) or, at the latest, when the peers try to map it.
    const std::string& why = comm.window_refusal();
    if (ce_wanted()) EXPECT_TRUE(why.find("IPC") != std::string::npos || why.find("map") != std::string::npos) << why;
    ASSERT_EQ(cudaFreeAsync(pool, nullptr), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  }
  {  // Different sizes: an Error on every rank naming the field.
    bool threw = false;
    std::string text;
    try {
      comm.register_window(a.p, r == P - 1 ? 4096 : 8192, "ce test window");
    } catch (const Error& e) {
      threw = true;
      text = e.what();
    }
    EXPECT_TRUE(threw);
    EXPECT_NE(text.find("bytes"), std::string::npos) << text;
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(CeExchange, RankThatStopsPostingMakesTheOthersTimeOut) {
  REQUIRE_GPU_PER_RANK();
  const int P = mpi_size(), r = mpi_rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  if (!ce_wanted()) GTEST_SKIP() << "DISTATTN_RING_EXCHANGE=nccl";
  const size_t bytes = 1 << 20;
  DevBuf win(2 * bytes);  // freed after the communicator (declared first)
  {
    NcclCommunicator comm(MPI_COMM_WORLD, -1, 2.0);
    const int id = comm.register_window(win.p, 2 * bytes, "ce failure window");
    ASSERT_GE(id, 0) << comm.window_refusal();
    bool failed = false;
    std::string text;
    int cur = 0;
    for (int s = 0; s <= 2 * P && !failed; ++s) {
      if (r == P - 1 && s >= 1) break;  // the skipper stops posting after step 0
      try {
        ExchangeTicket t = comm.post_exchange("ce exchange", s, win.p + cur * bytes, win.p + (1 - cur) * bytes, bytes);
        comm.wait_exchange(t);
        cur = 1 - cur;
      } catch (const Error& e) {
        failed = true;
        text = e.what();
      }
    }
    if (r != P - 1) {
      EXPECT_TRUE(failed);
      EXPECT_NE(text.find("timed out"), std::string::npos) << text;
      EXPECT_NE(text.find("step"), std::string::npos) << text;
      EXPECT_NE(text.find("[rank " + std::to_string(r)), std::string::npos) << text;
      EXPECT_TRUE(comm.broken());
      // Broken: later calls fail at once.
      bool refused = false;
      try {
        comm.post_exchange("later", 99, win.p, win.p + bytes, bytes);
      } catch (const Error& e) {
        refused = std::string(e.what()).find("broken") != std::string::npos;
      }
      EXPECT_TRUE(refused);
    }
    // The released streams drain (no hang): the device finishes everything enqueued.
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    MPI_Barrier(MPI_COMM_WORLD);  // everyone past the failure before the windows go
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
