// Block-sparse ring attention and the ring's early end on GPUs (NcclCommunicator + the CUDA engine), under
// mpirun (label gpu-mpi, np 2 and 4); and NcclCommunicator::post_shift.
//
// Every rank takes the GPU of its node-local rank; if any rank has none, every rank skips together.
// Each case (ring_sparse_cases.h patterns; S = 2048, the same for every number of ranks):
//   - every rank draws the SAME full bf16 Q, K, V, dO (seed printed) and builds the SAME global layout;
//   - references for this rank's q rows against the full K, V: the host engine in fp64 and the naive
//     kRoundIntermediates baseline, both with the rows of the global layout (rows_of_layout); the partial dK, dV
//     over this rank's q rows are summed over ranks in fp64;
//   - the ring: forward (O bf16, poisoned), backward fed the reference O (bf16) and LSE (dQ, dK, dV poisoned);
//   - one GPU, the whole sequence with the global layout: flash_attention_forward / _backward;
//   - the ring's step and exchange counts against the step work derived from the element mask alone.
// Bounds (test_ring_gpu.cc): ring error vs fp64 <= 2x the naive error + slack, and <= 2x the one-GPU error + the
// same slack ("does not grow with the number of ranks").
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/ring/shard.h"
#include "distattn/sparse/block_layout.h"
#include "distattn/sparse/flash_attention.h"
#include "mpi_gpu.h"
#include "mpi_gtest_main.h"
#include "ring_gpu_check.h"
#include "ring_sparse_cases.h"
#include "ring_test_util.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

using ring::RingAttention;
using ring::RingConfig;
using ring::ShardLayout;

constexpr double kCommTimeout = 120.0;
constexpr int64_t kSeq = 2048;  // contiguous and zigzag chunks are whole blocks for P = 1, 2, 4, 8
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// What the ring did (identical on every rank except computed_steps).
struct RunInfo {
  int last_useful_step = -1;
  int kv_exchanges = -1;
  int grad_exchanges = -1;
};

RunInfo run_case(NcclCommunicator& comm, const SparseCase& c) {
  const int P = mpi_size(), r = mpi_rank();
  const int64_t S = kSeq, Hq = c.Hq, Hkv = c.Hkv, D = c.D, Sl = S / P;
  const uint64_t seed = test_seed() + std::hash<std::string>()(c.name()) % 9973;
  SCOPED_TRACE(::testing::Message() << c.name() << " S=" << S << " P=" << P << " rank " << r << " seed " << seed);
  const DType bf = DType::kBFloat16;

  HostTensor Q(bf, 1, S, Hq, D), K(bf, 1, S, Hkv, D), V(bf, 1, S, Hkv, D), dO(bf, 1, S, Hq, D);
  fill_normal_each({&Q, &K, &V, &dO}, seed + 1);
  const HostTensor q = shard_of(Q, c.layout, P, r), k = shard_of(K, c.layout, P, r), v = shard_of(V, c.layout, P, r),
                   dout = shard_of(dO, c.layout, P, r);
  std::vector<float> slopes;
  if (c.alibi)
    for (int64_t h = 0; h < Hq; ++h) slopes.push_back(std::pow(2.f, -8.f * (h + 1) / static_cast<float>(Hq)));
  const std::unique_ptr<BlockLayout> g = make_global_layout(c, S);
  const PositionMap my_pos = ring::shard_positions(c.layout, S, P, r);

  // ---- references for this rank's q rows (fp64 and naive) against the full K, V ----------------------------
  BlockLayout rows;
  if (g) rows = rows_of_layout(*g, shard_blocks(c.layout, S, P, r));
  AttnParams hp;
  hp.q = q.view;
  hp.k = K.view;
  hp.v = V.view;
  hp.q_pos = my_pos;
  hp.kv_pos = PositionMap::contiguous(0, S);
  hp.mask = g ? rows.host_mask() : c.band();
  hp.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  hp.softmax_scale = c.scale;
  const RingHostRefs ref = ring_host_refs(hp, dout.view, c.layout, S);
  const std::vector<float>& lse64 = ref.lse64;
  const ExpectedWork ew = expected_work(element_mask(c, g.get(), S), c.layout, S, P);

  // ---- the ring --------------------------------------------------------------------------------------------
  cudaStream_t stream = nullptr;
  DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  DeviceArray<float> d_slopes(slopes.empty() ? std::vector<float>(1, 0.f) : slopes);
  DeviceTensor d_q(q), d_k(k), d_v(v), d_dout(dout);
  RingConfig cfg;
  cfg.layout = c.layout;
  cfg.seq_len = S;
  cfg.batch = 1;
  cfg.q_heads = Hq;
  cfg.kv_heads = Hkv;
  cfg.head_dim = D;
  cfg.dtype = bf;
  cfg.mask = c.band();
  cfg.block_layout = g.get();
  cfg.alibi_slopes = c.alibi ? d_slopes.ptr : nullptr;
  cfg.softmax_scale = c.scale;
  RingAttention ra(comm, cfg);
  EXPECT_EQ(ra.schedule().last_useful_step, ew.last);
  EXPECT_EQ(ra.schedule().useful_steps, ew.useful);
  EXPECT_EQ(ra.schedule().computed_steps(), ew.computed[static_cast<size_t>(r)]);

  HostTensor o(bf, 1, Sl, Hq, D);
  std::vector<float> lse;
  ring_forward(ra, d_q, d_k, d_v, o, lse, lse64.size(), stream);
  EXPECT_EQ(ra.last_forward().kv_exchanges, ew.exchanges());
  EXPECT_EQ(ra.last_forward().computed_steps, ew.computed[static_cast<size_t>(r)]);

  HostTensor gr[3];
  ring_backward(ra, d_dout, d_q, d_k, d_v, ref, c.layout, bf, 0, 0, gr, stream);
  EXPECT_EQ(ra.last_backward().kv_exchanges, ew.exchanges());
  EXPECT_EQ(ra.last_backward().grad_exchanges, ew.exchanges() + 1);
  EXPECT_EQ(ra.last_backward().grad_home_shift, ((-ew.last) % P + P) % P);

  // ---- one GPU, the whole sequence, the global layout ------------------------------------------------------
  AttnParams gp;
  gp.q_pos = gp.kv_pos = PositionMap::contiguous(0, S);
  gp.mask = g ? g->device_mask(stream) : c.band();
  gp.alibi_slopes = c.alibi ? d_slopes.ptr : nullptr;
  gp.softmax_scale = c.scale;
  const OneGpuRun one = one_gpu_run(gp, Q, K, V, dO, ref, bf, /*mma_too=*/false, stream);
  HostTensor o1_rows;
  std::vector<float> lse1;
  one_gpu_rows(one, c.layout, o1_rows, lse1);
  cudaStreamDestroy(stream);

  // ---- errors on this rank's rows ----------------------------------------------------------------------------
  Triple t[5];
  ring_error_triples(t, ref, o, lse, gr, o1_rows, lse1, one, c.layout);
  expect_ring_bounds(t, ref, /*dkdv_vs_single=*/true);

  double worst[15];
  worst_over_ranks(t, worst);
  RunInfo info{ra.schedule().last_useful_step, ra.last_forward().kv_exchanges, ra.last_backward().grad_exchanges};
  if (r == 0) {
    std::printf("[ring-sparse-gpu P=%d] %-40s seed %llu density %.3f last step %d | max|err| ring/1gpu/naive:", P,
                c.name().c_str(), static_cast<unsigned long long>(seed), g ? g->density() : 1.0, info.last_useful_step);
    print_error_columns(worst);
  }
  return info;
}

class RingSparseGpuLayouts : public ::testing::TestWithParam<ShardLayout> {};

// BigBird (causal and not, ALiBi), strided causal GQA, global tokens, random, causal window band, empty rows;
// D = 128 and 64.
TEST_P(RingSparseGpuLayouts, MatchFp64AndOneGpu) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  SparseCase c;
  c.layout = GetParam();
  c.Hq = 4, c.Hkv = 2, c.D = 128;
  std::vector<SparseCase> cases;
  c.pattern = Pattern::kBigBird;
  c.alibi = true;
  cases.push_back(c);
  c.causal = true;
  cases.push_back(c);
  c.alibi = false;
  c.pattern = Pattern::kStrided;
  cases.push_back(c);
  c.pattern = Pattern::kGlobal;
  c.D = 64;
  cases.push_back(c);
  c.pattern = Pattern::kRandom;
  c.causal = false;
  c.Hkv = 1;
  cases.push_back(c);
  c.pattern = Pattern::kWindowBand;
  c.causal = true;
  c.window = 300;
  c.Hkv = 2;
  cases.push_back(c);
  c.pattern = Pattern::kHoles;
  c.causal = false;
  c.window = 0;
  c.D = 128;
  cases.push_back(c);
  for (const SparseCase& x : cases) run_case(comm, x);
}

INSTANTIATE_TEST_SUITE_P(Layouts, RingSparseGpuLayouts,
                         ::testing::Values(ShardLayout::kContiguous, ShardLayout::kZigzag),
                         [](const ::testing::TestParamInfo<ShardLayout>& i) {
                           return std::string(ring::layout_name(i.param));
                         });

// The early end on GPUs: a causal local band, a two-sided one (the middle steps jumped over) and a block
// diagonal (contiguous), a causal sliding window on the dense ring (no wider than a shard).
TEST(RingSparseGpu, EarlyEnd) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  const int P = mpi_size();
  SparseCase c;
  c.layout = ShardLayout::kContiguous;
  c.Hq = 4, c.Hkv = 2, c.D = 128;
  c.pattern = Pattern::kLocalBand;
  c.causal = true;
  RunInfo i = run_case(comm, c);
  EXPECT_EQ(i.last_useful_step, std::min(1, P - 1));
  EXPECT_EQ(i.kv_exchanges, std::min(1, P - 1));
  // Two-sided local band: steps {0, 1, P-1}; on 4 ranks the K|V jump from step 1 to step 3 (a shift by 2).
  c.causal = false;
  i = run_case(comm, c);
  EXPECT_EQ(i.last_useful_step, P - 1);
  EXPECT_EQ(i.kv_exchanges, std::min(2, P - 1));
  c.pattern = Pattern::kBlockDiagonal;
  c.alibi = true;
  i = run_case(comm, c);
  EXPECT_EQ(i.last_useful_step, 0);
  EXPECT_EQ(i.kv_exchanges, 0);
  EXPECT_EQ(i.grad_exchanges, 1);
  c.pattern = Pattern::kDense;
  c.causal = true;
  c.window = 256;  // <= S/P for P <= 8
  i = run_case(comm, c);
  EXPECT_EQ(i.last_useful_step, std::min(1, P - 1));
  EXPECT_EQ(i.kv_exchanges, std::min(1, P - 1));
}

// NcclCommunicator::post_shift: every shift (negative, zero, beyond the ring) reaches peer(shift); a ring hop and
// a shift in flight together; bad arguments refused.
TEST(NcclShift, EveryShiftReachesThePeer) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  const int P = mpi_size(), r = mpi_rank();
  const int64_t n = 4099;  // odd element count
  cudaStream_t stream = nullptr;
  DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int shift = -P - 1; shift <= P + 1; ++shift) {
    SCOPED_TRACE(::testing::Message() << "shift " << shift << " rank " << r);
    std::vector<float> send(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) send[static_cast<size_t>(i)] = static_cast<float>(r * 100000 + i * 3 + shift);
    DeviceArray<float> d_send(send), d_recv(std::vector<float>(static_cast<size_t>(n), kNaN));
    ExchangeTicket t = comm.post_shift("test shift", shift, d_send.ptr, d_recv.ptr,
                                       static_cast<size_t>(n) * sizeof(float), shift, stream);
    comm.wait_exchange(t, stream);
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> got = d_recv.download();
    const int from = ((r - shift) % P + P) % P;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i)
      bad += got[static_cast<size_t>(i)] != static_cast<float>(from * 100000 + i * 3 + shift);
    EXPECT_EQ(bad, 0) << "from rank " << from;
  }
  DeviceArray<int> a(std::vector<int>(64, r)), b(std::vector<int>(64, 100 + r)), ra(std::vector<int>(64, -1)),
      rb(std::vector<int>(64, -1));
  ExchangeTicket t1 = comm.post_exchange("test hop", 0, a.ptr, ra.ptr, 64 * sizeof(int), stream);
  ExchangeTicket t2 = comm.post_shift("test home", 0, b.ptr, rb.ptr, 64 * sizeof(int), -2, stream);
  comm.wait_exchange(t2, stream);
  comm.wait_exchange(t1, stream);
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_EQ(ra.download()[5], comm.prev());
  EXPECT_EQ(rb.download()[5], 100 + comm.peer(2));
  EXPECT_ERROR_ARG(comm.post_shift("bad", 0, nullptr, rb.ptr, 8, 1, stream), "send/recv");
  EXPECT_ERROR_ARG(comm.post_shift("bad", 0, rb.ptr, rb.ptr, 8, 1, stream), "recv");
  EXPECT_FALSE(comm.broken());
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
