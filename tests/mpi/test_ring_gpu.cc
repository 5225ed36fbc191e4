// Ring attention on GPUs (NcclCommunicator + the CUDA engine) under mpirun (label gpu-mpi), against the
// single-process host engine on the full sequence and against one GPU running the whole sequence.
//
// Every rank takes the GPU of its node-local rank; if any rank has no GPU of its own, every rank skips
// (agreed over MPI_Allreduce), so on CPU-only machines the program only checks that it links and skips.
//
// Each case (fixed global S, the same for every number of ranks, so the error table compares like with like):
//   - every rank draws the SAME full bf16 Q, K, V, dO (seed printed) and takes its shard;
//   - references, split over the ranks by q rows: each rank runs the host engine (fp64, and the naive
//     kRoundIntermediates baseline) for ITS q rows against the full K, V; O and LSE shards are all-gathered
//     into full tensors, the partial dK, dV (over this rank's q rows) are summed over ranks in fp64;
//   - the ring: forward (O bf16 poisoned with NaN, LSE poisoned), then backward fed the reference O (rounded to
//     bf16) and LSE, so its error is its own (dQ, dK, dV poisoned);
//   - one GPU, whole sequence: flash_attention_forward / _backward on the same inputs (the 1-rank baseline). The
//     backward runs twice, on the Hopper kernel and on the mma.sync kernel (detail::FlashBwdOptions): a ring step
//     takes the Hopper kernel only when its position chunks fall on 128-row tiles, so the ring may use the other
//     kernel than the one-GPU call; the baseline error of each gradient is the larger of the two kernels'.
//   Bounds (the GPU tests' rule, tests/gpu/test_flash_{fwd,bwd}.cc): ring error vs fp64 <= 2x the naive
//   error + slack; and, for "does not grow with the number of ranks", ring error <= 2x the one-GPU error +
//   the same slack. A table line per case (errors reduced over ranks) is printed on rank 0.
// RoPE: the ring API takes rotated q, k; each rank rotates its shards ON THE GPU with the shard's global
// positions (rope_apply_cuda), the reference rotates the full Q, K on the host with 0..S-1. RingConfig::rope (the
// ring rotating q, k itself and dq, dk back) must give the same bits as that caller's way: RopeInsideTheRing below.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../../sparse/src/flash_bwd_options.h"
#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/rope.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/ring/shard.h"
#include "distattn/sparse/flash_attention.h"
#include "mpi_gpu.h"
#include "mpi_gtest_main.h"
#include "ring_gpu_check.h"
#include "ring_test_util.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

using ring::GradTravel;
using ring::RingAttention;
using ring::RingConfig;
using ring::ShardLayout;

constexpr double kCommTimeout = 120.0;  // a hang becomes an Error on every rank before CTest's TIMEOUT

struct Case {
  ShardLayout layout = ShardLayout::kZigzag;
  int64_t S = 1544, B = 1, Hq = 4, Hkv = 2, D = 128;
  Mask mask;
  bool alibi = false;
  bool rope = false;
  GradTravel travel = GradTravel::kFloat32;
  bool fp32_outputs = false;          // o, dq, dk, dv in fp32 instead of bf16
  int64_t head_pad = 0, row_pad = 0;  // padded strides of the local shards (elements; rows stay 16-byte aligned)
  bool null_stream = false;           // run the ring on the legacy default stream
  int expect_alibi_merge = -1;        // 0 / 1: the forward's ALiBi cutoff across steps must be off / on; -1: either
  std::string name() const {
    std::string n = std::string(ring::layout_name(layout)) + (mask.causal ? "/causal" : "/full");
    if (mask.window > 0) n += "/win" + std::to_string(mask.window);
    if (alibi) n += "/alibi";
    if (rope) n += "/rope";
    n += "/B" + std::to_string(B) + "Hq" + std::to_string(Hq) + "Hkv" + std::to_string(Hkv) + "D" + std::to_string(D);
    if (travel == GradTravel::kBFloat16) n += "/bf16-grads";
    if (fp32_outputs) n += "/fp32-out";
    if (head_pad || row_pad) n += "/padded";
    if (null_stream) n += "/null-stream";
    return n;
  }
};

std::vector<float> make_slopes(int64_t H) {
  std::vector<float> s(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) s[static_cast<size_t>(h)] = std::pow(2.0f, -8.0f * (h + 1) / static_cast<float>(H));
  return s;
}

// Worst (over ranks) max|err| of ring / one GPU / naive for O, LSE, dQ, dK, dV: the table line.
void report(const Case& c, uint64_t seed, const Triple (&t)[5]) {
  double worst[15];
  worst_over_ranks(t, worst);
  if (mpi_rank() == 0) {
    std::printf("[ring-gpu P=%d] %-44s S=%lld seed %llu | max|err| ring/1gpu/naive:", mpi_size(), c.name().c_str(),
                static_cast<long long>(c.S), static_cast<unsigned long long>(seed));
    print_error_columns(worst);
  }
}

struct RingRun {
  HostTensor o;            // the ring's O shard (as returned: bf16 or fp32)
  std::vector<float> lse;  // its LSE shard
  HostTensor o_single;     // the one-GPU O, this rank's rows
  std::vector<float> lse_single;
  ErrorStats o_single_err;  // the one-GPU O against fp64 on this rank's rows
};

// Runs one case; checks the bounds; prints the table line. Returns the ring's and the one-GPU forward outputs.
RingRun run_case(NcclCommunicator& comm, const Case& c) {
  const int P = mpi_size(), r = mpi_rank();
  const int64_t S = c.S, B = c.B, Hq = c.Hq, Hkv = c.Hkv, D = c.D, Sl = S / P;
  const uint64_t seed = test_seed() + 1000 * static_cast<uint64_t>(c.layout) + std::hash<std::string>()(c.name()) % 997;
  SCOPED_TRACE(::testing::Message() << c.name() << " S=" << S << " P=" << P << " rank " << r << " seed " << seed);
  const DType bf = DType::kBFloat16;
  const DType out_dt = c.fp32_outputs ? DType::kFloat32 : bf;

  // ---- inputs: the same full bf16 tensors on every rank -------------------------------------------------
  HostTensor Q(bf, B, S, Hq, D), K(bf, B, S, Hkv, D), V(bf, B, S, Hkv, D), dO(bf, B, S, Hq, D);
  fill_normal_each({&Q, &K, &V, &dO}, seed + 1);
  // This rank's unrotated shards (rotated on the GPU below) with the case's strides.
  HostTensor q = shard_of(Q, c.layout, P, r, c.head_pad, c.row_pad),
             k = shard_of(K, c.layout, P, r, c.head_pad, c.row_pad),
             v = shard_of(V, c.layout, P, r, c.head_pad, c.row_pad),
             dout = shard_of(dO, c.layout, P, r, c.head_pad, c.row_pad);
  RopeFrequencies freqs;
  RopeParams rope_host;
  if (c.rope) {
    RopeConfig rc;
    rc.head_dim = D;
    freqs = make_rope_frequencies(rc);
    rope_host.inv_freq = freqs.inv_freq.data();
    rope_host.scale = freqs.scale;
    rope_host.q = Q.view;
    rope_host.k = K.view;
    rope_host.q_pos = rope_host.k_pos = PositionMap::contiguous(0, S);
    rope_apply_host(rope_host);  // the reference's (and the one-GPU run's) inputs: rotated with 0..S-1
  }
  const PositionMap my_pos = ring::shard_positions(c.layout, S, P, r);
  const std::vector<float> slopes = make_slopes(Hq);
  const HostTensor q_ref = shard_of(Q, c.layout, P, r);  // rotated (if RoPE) shard, packed: the reference's q rows

  // ---- references for this rank's q rows (fp64 and naive), against the full K, V ---------------------------
  AttnParams hp;
  hp.q = q_ref.view;
  hp.k = K.view;
  hp.v = V.view;
  hp.q_pos = my_pos;
  hp.kv_pos = PositionMap::contiguous(0, S);
  hp.mask = c.mask;
  hp.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  // The complete forward's O rounded to bf16 (what a framework would keep) and its LSE feed every backward.
  const HostTensor dout_ref = shard_of(dO, c.layout, P, r);
  const RingHostRefs ref = ring_host_refs(hp, dout_ref.view, c.layout, S);
  const std::vector<float>& lse64 = ref.lse64;

  // ---- the ring ------------------------------------------------------------------------------------------
  cudaStream_t stream = nullptr;
  if (!c.null_stream) DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  DeviceArray<float> d_slopes(slopes);
  DeviceTensor d_q(q), d_k(k), d_v(v), d_dout(dout);
  if (c.rope) {
    DeviceArray<float> d_freq(freqs.inv_freq);
    RopeParams rp;
    rp.inv_freq = d_freq.ptr;
    rp.scale = freqs.scale;
    rp.q = d_q.view();
    rp.k = d_k.view();
    rp.q_pos = rp.k_pos = my_pos;  // the shard's GLOBAL positions
    rope_apply_cuda(rp, stream);
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    // The GPU rotation of the shard agrees with the host rotation of the full tensor (fp32 angles both;
    // at most an ulp of bf16 apart where sincos rounds differently).
    HostTensor q_rot = q;
    d_q.download(q_rot);
    const ErrorStats st = compare(q_rot.view, q_ref.view);
    EXPECT_EQ(st.non_finite, 0);
    EXPECT_LE(st.max_abs, 2.0 * std::ldexp(1.0, -8) * 5.0) << "RoPE on the shard: " << st.str();
    // From here on the ring gets exactly the reference's inputs (the host rotation): the GPU rotation differs
    // from it by up to an ulp of bf16 in places (bounded just above), and an ulp in q or k moves a score by
    // ~1e-2, which would blur the "error must not grow with the number of ranks" comparison below.
    HostTensor q_in = q, k_in = k;
    copy_values(q_in, q_ref);
    copy_values(k_in, shard_of(K, c.layout, P, r));
    d_q.upload(q_in);
    d_k.upload(k_in);
  }

  RingConfig cfg;
  cfg.layout = c.layout;
  cfg.seq_len = S;
  cfg.batch = B;
  cfg.q_heads = Hq;
  cfg.kv_heads = Hkv;
  cfg.head_dim = D;
  cfg.dtype = bf;
  cfg.mask = c.mask;
  cfg.alibi_slopes = c.alibi ? d_slopes.ptr : nullptr;
  cfg.grad_travel = c.travel;
  RingAttention ra(comm, cfg);
  EXPECT_EQ(ra.local_rows(), Sl);

  RingRun run;
  run.o = HostTensor(out_dt, B, Sl, Hq, D, c.head_pad, c.row_pad);
  ring_forward(ra, d_q, d_k, d_v, run.o, run.lse, lse64.size(), stream);
  if (c.expect_alibi_merge >= 0) EXPECT_EQ(ra.last_forward().alibi_merge_cutoff, c.expect_alibi_merge == 1);

  // Backward fed the reference's O (bf16) and LSE.
  HostTensor g[3];
  ring_backward(ra, d_dout, d_q, d_k, d_v, ref, c.layout, out_dt, c.head_pad, c.row_pad, g, stream);
  // With DISTATTN_RING_BWD_OWN=split the own step runs in two parts cut by kv rows whenever there are remote steps,
  // with heads cut by kv heads when there are two or more (ring_cuda.cc).
  const char* own_env = std::getenv("DISTATTN_RING_BWD_OWN");
  const std::string own_mode = own_env != nullptr ? own_env : "whole";
  if (P > 1 && own_mode == "split") {
    EXPECT_GT(ra.last_backward().own_split_row, 0);
    EXPECT_LT(ra.last_backward().own_split_row, Sl);
  } else {
    EXPECT_EQ(ra.last_backward().own_split_row, 0);
  }
  EXPECT_EQ(ra.last_backward().own_split_kv_head, P > 1 && own_mode == "heads" && Hkv >= 2 ? Hkv / 2 : 0);

  // ---- one GPU, the whole sequence (inputs rotated on the host: the reference's) ---------------------------
  AttnParams gp;
  gp.q_pos = gp.kv_pos = PositionMap::contiguous(0, S);
  gp.mask = c.mask;
  gp.alibi_slopes = c.alibi ? d_slopes.ptr : nullptr;
  // The backward runs on both kernels: the baseline error of each gradient is the larger of the two.
  const OneGpuRun one = one_gpu_run(gp, Q, K, V, dO, ref, out_dt, /*mma_too=*/true, stream);
  one_gpu_rows(one, c.layout, run.o_single, run.lse_single);
  if (stream != nullptr) cudaStreamDestroy(stream);

  // ---- errors on this rank's rows ---------------------------------------------------------------------------
  Triple t[5];
  ring_error_triples(t, ref, run.o, run.lse, g, run.o_single, run.lse_single, one, c.layout);
  run.o_single_err = t[0].single;
  // bf16 gradient travel rounds dK|dV at each of the P hops: that error grows with P by design (fp32 travel is the
  // default), so only dQ is held to the one-GPU error there.
  expect_ring_bounds(t, ref, /*dkdv_vs_single=*/c.travel == GradTravel::kFloat32);
  report(c, seed, t);
  return run;
}

// Contiguous / striped: S = 1540 (385 rows per rank on 4 ranks: odd, not a multiple of any tile; 770 on 2).
// Zigzag: S = 1544 (chunks of 193 rows on 4 ranks, 386 on 2). The same S for every rank count, so the table
// lines of np 2 and np 4 compare like with like.
// A global length near `base` that `layout` can split over this run's ranks (zigzag: 2P chunks, the others: P
// shards): the nearest multiple. 1544 / 1540 stay as they are at 2 and 4 ranks (odd shards of 193 / 385 rows there);
// at 8 ranks they become 1552 / 1544 (zigzag chunks of 97 rows, shards of 193).
int64_t seq_near(int64_t base, ShardLayout layout) {
  const int64_t m = (layout == ShardLayout::kZigzag ? 2 : 1) * mpi_size();
  return (base + m / 2) / m * m;
}

int64_t seq_for(ShardLayout layout) { return seq_near(layout == ShardLayout::kZigzag ? 1544 : 1540, layout); }

class RingGpuLayouts : public ::testing::TestWithParam<ShardLayout> {};

// Every layout x {causal, non-causal (B = 2), causal window across rank boundaries, two-sided window + ALiBi,
// causal + ALiBi, causal + RoPE}; GQA 4:2 throughout; D = 128 and 64.
TEST_P(RingGpuLayouts, ForwardBackwardMatchFp64AndOneGpu) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  const ShardLayout layout = GetParam();
  Case c;
  c.layout = layout;
  c.S = seq_for(layout);
  std::vector<Case> cases;
  c.mask = Mask::make_causal();
  cases.push_back(c);
  c.mask = Mask::none();
  c.B = 2;
  cases.push_back(c);
  c.B = 1;
  c.D = 64;
  c.mask = Mask::make_causal(300);
  cases.push_back(c);
  c.mask = Mask::make_window(200);
  c.alibi = true;
  cases.push_back(c);
  c.D = 128;
  c.mask = Mask::make_causal();
  cases.push_back(c);
  c.alibi = false;
  c.rope = true;
  cases.push_back(c);
  for (const Case& x : cases) run_case(comm, x);
}

INSTANTIATE_TEST_SUITE_P(Layouts, RingGpuLayouts,
                         ::testing::Values(ShardLayout::kContiguous, ShardLayout::kZigzag, ShardLayout::kStriped),
                         [](const ::testing::TestParamInfo<ShardLayout>& i) {
                           return std::string(ring::layout_name(i.param));
                         });

TEST(RingGpu, MqaBf16GradTravelPaddedStridesNullStream) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  Case c;
  c.layout = ShardLayout::kZigzag;
  c.S = seq_near(1544, c.layout);
  c.Hq = 4, c.Hkv = 1, c.D = 64;
  c.mask = Mask::make_causal();
  c.alibi = true;
  c.travel = GradTravel::kBFloat16;
  run_case(comm, c);
  c.travel = GradTravel::kFloat32;
  c.layout = ShardLayout::kStriped;
  c.S = seq_near(1540, c.layout);
  c.Hkv = 2;
  c.head_pad = 8, c.row_pad = 16;  // 16 and 32 bytes
  c.null_stream = true;
  run_case(comm, c);
}

// The backward's home hop goes in pieces of the flattened [B * S/P] rows (ring_cuda.cc, kHomeSplit): with an odd batch
// a piece ends inside a batch, so the conversion out of the receive window splits it per batch. Packed dk, dv and
// padded ones (the strided conversion), both travel dtypes.
TEST(RingGpu, OddBatchHomeHopPiecesCutInsideABatch) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  Case c;
  c.layout = ShardLayout::kZigzag;
  c.S = seq_near(1544, c.layout);
  c.B = 3;
  c.Hq = 4, c.Hkv = 2, c.D = 128;
  c.mask = Mask::make_causal();
  run_case(comm, c);
  c.travel = GradTravel::kBFloat16;
  c.head_pad = 8, c.row_pad = 16;
  run_case(comm, c);
}

// The backward's own step whole (the default, DISTATTN_RING_BWD_OWN=whole: the home hop in dk's dtype), in two parts
// cut by kv rows (split) and by kv heads (heads: GQA 2:1 with an odd kv head count, so the parts differ in size and
// each takes its kv heads' q heads; with one kv head it stays whole): all against fp64 and one GPU; contiguous causal
// leaves ranks with skipped remote steps.
TEST(RingGpu, OwnStepWholeAndSplit) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  const char* old = std::getenv("DISTATTN_RING_BWD_OWN");
  const std::string saved = old ? old : "";
  for (const char* mode : {"whole", "split", "heads"}) {
    setenv("DISTATTN_RING_BWD_OWN", mode, 1);  // read at construction, the same on every rank
    for (ShardLayout layout : {ShardLayout::kContiguous, ShardLayout::kZigzag}) {
      Case c;
      c.layout = layout;
      // Zigzag 1024 / 512 / 256 rows per rank at 2 / 4 / 8 ranks (cut at a tile multiple); contiguous 1026 / 513 / 257.
      c.S = seq_near(layout == ShardLayout::kZigzag ? 2048 : 2052, layout);
      c.Hq = 2, c.Hkv = 1, c.D = 128;
      c.mask = Mask::make_causal();
      SCOPED_TRACE(std::string("DISTATTN_RING_BWD_OWN=") + mode);
      run_case(comm, c);
      if (std::string(mode) == "heads") {
        c.Hq = 6, c.Hkv = 3;  // part A: kv head 0 (q heads 0, 1); part B: kv heads 1, 2 (q heads 2..5)
        c.alibi = true;       // per-q-head slopes: part B must read its own
        run_case(comm, c);
      }
    }
  }
  if (old) {
    setenv("DISTATTN_RING_BWD_OWN", saved.c_str(), 1);
  } else {
    unsetenv("DISTATTN_RING_BWD_OWN");
  }
}

TEST(RingGpu, Fp32OutputsLongerSequence) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  Case c;
  c.layout = ShardLayout::kZigzag;
  c.S = 4096;
  c.Hq = 4, c.Hkv = 2, c.D = 128;
  c.mask = Mask::make_causal();
  c.fp32_outputs = true;
  run_case(comm, c);
}

// The forward's ALiBi cutoff across steps (DISTATTN_RING_ALIBI_CUTOFF, read at construction; ring_cuda.cc): on at any
// length, and off, on layouts whose chunks fall on 128-row tiles (the Hopper kernel; S = 4096: zigzag chunks of
// 1024 / 512 rows at 2 / 4 ranks): against fp64 and one GPU like every case (skipping must stay within rounding), and
// the forward must report what it did (off at head dim 64 even with on). The kernel-level proof that tiles are skipped
// (NaN in far V rows stays out of O) is FlashForwardHopper.AlibiMergeCutoffAcrossRingSteps.
TEST(RingGpu, AlibiCutoffAcrossSteps) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  const char* old = std::getenv("DISTATTN_RING_ALIBI_CUTOFF");
  const std::string saved = old ? old : "";
  int major = 0;
  DISTATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, comm.cuda_device()));
  for (const char* mode : {"on", "off"}) {
    setenv("DISTATTN_RING_ALIBI_CUTOFF", mode, 1);  // the same on every rank
    SCOPED_TRACE(std::string("DISTATTN_RING_ALIBI_CUTOFF=") + mode);
    Case c;
    c.S = 4096;
    c.Hq = 4, c.Hkv = 2, c.D = 128;
    c.alibi = true;
    // D = 128: the head dim of the Hopper forward, the only kernel that uses the norms (alibi_merge_cutoff_wanted)
    c.expect_alibi_merge = std::string(mode) == "on" && major == 9 ? 1 : 0;
    c.layout = ShardLayout::kZigzag;
    c.mask = Mask::make_causal();
    run_case(comm, c);
    if (std::string(mode) == "off") continue;
    c.layout = ShardLayout::kStriped;  // one strided chunk per rank: the own step is the exact single-call cutoff
    c.mask = Mask::none();
    run_case(comm, c);
    // D = 64 even when asked for: the mma.sync forward ignores the norms, so the norm pass would be wasted work.
    c.layout = ShardLayout::kZigzag;
    c.mask = Mask::make_causal();
    c.D = 64;
    c.expect_alibi_merge = 0;
    run_case(comm, c);
  }
  if (old) {
    setenv("DISTATTN_RING_ALIBI_CUTOFF", saved.c_str(), 1);
  } else {
    unsetenv("DISTATTN_RING_ALIBI_CUTOFF");
  }
}

// RingConfig::rope: the ring rotates q, k itself (k in one RoPE launch that also writes the K|V send buffer; q in that
// launch, or inside the own step's forward launch from 8192 local rows on) and dq, dk back. Claim: the same bits as
// the caller's way -- rope_apply_cuda on the shards at their global positions, the ring without RoPE, the inverse
// rotation of dq, dk -- for o, lse, the rotated q and k, dk and dv (dq: below) (the caller's way is held to fp64 in
// ForwardBackwardMatchFp64AndOneGpu). Cases: zigzag and contiguous, causal and not, GQA 4:2, odd small shards (the
// RoPE launch rotates q too), GPT-J with partial rotary (never fused), and 8192-row shards (on a Hopper GPU q is then
// rotated in the own step's launch: RingCallStats::rope_q_in_own_step). Every output is poisoned first and must come
// out finite, so equal bytes cannot be two unwritten buffers.
TEST(RingGpu, RopeInsideTheRingEqualsTheCallersRotation) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  const int P = mpi_size(), r = mpi_rank();
  int device = 0, major = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  DISTATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  const bool env_free =
      std::getenv("DISTATTN_ROPE_FWD") == nullptr && std::getenv("DISTATTN_FORWARD_KERNEL") == nullptr;
  struct RCase {
    ShardLayout layout;
    int64_t S;
    Mask mask;
    RopeStyle style;
    int64_t rotary_dim;
    bool expect_fused;  // on a Hopper GPU (and no environment override)
  };
  const std::vector<RCase> cases = {
      {ShardLayout::kZigzag, seq_near(1544, ShardLayout::kZigzag), Mask::make_causal(), RopeStyle::kNeoX, 0, false},
      {ShardLayout::kContiguous, seq_near(1540, ShardLayout::kContiguous), Mask::none(), RopeStyle::kGptJ, 64, false},
      {ShardLayout::kZigzag, 8192 * P, Mask::make_causal(), RopeStyle::kNeoX, 0, true},
      {ShardLayout::kContiguous, 8192 * P, Mask::none(), RopeStyle::kNeoX, 0, true},
  };
  const DType bf = DType::kBFloat16;
  for (const RCase& rc : cases) {
    const int64_t B = 1, Hq = 4, Hkv = 2, D = 128, S = rc.S, Sl = S / P;
    const uint64_t seed = test_seed() + 131 * static_cast<uint64_t>(S) + (rc.mask.causal ? 1 : 0) + 1000 * r;
    SCOPED_TRACE(::testing::Message() << ring::layout_name(rc.layout) << (rc.mask.causal ? "/causal" : "/full")
                                      << (rc.style == RopeStyle::kGptJ ? "/gptj" : "/neox") << " rot " << rc.rotary_dim
                                      << " S=" << S << " P=" << P << " rank " << r << " seed " << seed);
    // This rank's shards (random per rank: both ways get the same bytes, no global reference is needed).
    HostTensor q(bf, B, Sl, Hq, D), k(bf, B, Sl, Hkv, D), v(bf, B, Sl, Hkv, D), dout(bf, B, Sl, Hq, D);
    fill_normal_each({&q, &k, &v, &dout}, seed);
    RopeConfig rcfg;
    rcfg.head_dim = D;
    rcfg.rotary_dim = rc.rotary_dim;
    rcfg.style = rc.style;
    const RopeFrequencies freqs = make_rope_frequencies(rcfg);
    DeviceArray<float> d_freq(freqs.inv_freq);
    const PositionMap pos = ring::shard_positions(rc.layout, S, P, r);
    cudaStream_t stream = nullptr;
    DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

    // Everything one way leaves: o, lse, q and k afterwards, dq, dk, dv.
    struct Outputs {
      HostTensor t[6];  // o, q, k, dq, dk, dv
      std::vector<float> lse;
      bool fused = false;
    };
    auto run = [&](bool inside) {
      Outputs out;
      DeviceTensor d_q(q), d_k(k), d_v(v), d_dout(dout);
      RingConfig cfg;
      cfg.layout = rc.layout;
      cfg.seq_len = S;
      cfg.batch = B;
      cfg.q_heads = Hq;
      cfg.kv_heads = Hkv;
      cfg.head_dim = D;
      cfg.dtype = bf;
      cfg.mask = rc.mask;
      RopeParams rp;
      rp.q = d_q.view(), rp.k = d_k.view();
      rp.q_pos = rp.k_pos = pos;
      rp.rotary_dim = rc.rotary_dim;
      rp.style = rc.style;
      rp.inv_freq = d_freq.ptr;
      rp.scale = freqs.scale;
      if (inside) {
        cfg.rope.inv_freq = d_freq.ptr;
        cfg.rope.rotary_dim = rc.rotary_dim;
        cfg.rope.style = static_cast<int>(rc.style);
        cfg.rope.scale = freqs.scale;
      }
      RingAttention ra(comm, cfg);
      if (!inside) rope_apply_cuda(rp, stream);  // the caller's way: rotate, then the ring
      HostTensor o(bf, B, Sl, Hq, D), g0(bf, B, Sl, Hq, D), g1(bf, B, Sl, Hkv, D), g2(bf, B, Sl, Hkv, D);
      for (HostTensor* t : {&o, &g0, &g1, &g2}) fill_nan(*t);
      DeviceTensor d_o(o), d_dq(g0), d_dk(g1), d_dv(g2);
      DeviceArray<float> d_lse(std::vector<float>(static_cast<size_t>(B * Hq * Sl), std::nanf("")));
      ra.forward(d_q.view(), d_k.view(), d_v.view(), d_o.view(), d_lse.ptr, stream);
      out.fused = ra.last_forward().rope_q_in_own_step;
      ra.backward(d_dout.view(), d_q.view(), d_k.view(), d_v.view(), d_o.view(), d_lse.ptr, d_dq.view(), d_dk.view(),
                  d_dv.view(), stream);
      if (!inside) {  // the caller's way: the gradients back to the unrotated frame
        rp.q = d_dq.view(), rp.k = d_dk.view();
        rp.inverse = true;
        rope_apply_cuda(rp, stream);
      }
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
      out.t[0] = o, out.t[1] = q, out.t[2] = k, out.t[3] = g0, out.t[4] = g1, out.t[5] = g2;
      for (HostTensor& t : out.t) t.view.data = t.storage.data();  // own storage (HostTensor's copy keeps the pointer)
      d_o.download(out.t[0]);
      d_q.download(out.t[1]);
      d_k.download(out.t[2]);
      d_dq.download(out.t[3]);
      d_dk.download(out.t[4]);
      d_dv.download(out.t[5]);
      out.lse = d_lse.download();
      return out;
    };
    // dq is reduced across the backward's kv tiles by fp32 atomics (the Hopper backward), in an order that changes
    // from run to run: two runs of the SAME call may differ in its last bits, and after the bf16 rounding by an ulp in
    // places. So dq is held to a bound (2^-7 of max|dq|: a wrong angle, position or sign moves it by O(max|dq|)), next
    // to the caller's way run twice (the run-to-run spread, printed); everything else must match bit for bit.
    const Outputs caller = run(false), inside = run(true), caller2 = run(false);
    DISTATTN_CUDA_CHECK(cudaStreamDestroy(stream));
    const char* names[6] = {"o", "q (rotated)", "k (rotated)", "dq", "dk", "dv"};
    int64_t bad = 0;
    double dq_diff = 0, dq_spread = 0;
    for (int i = 0; i < 6; ++i) {
      const HostTensor& a = inside.t[i];
      const HostTensor& b = caller.t[i];
      int64_t non_finite = 0;
      for (int64_t e = 0; e < a.view.numel(); ++e)
        non_finite += std::isfinite(load_as_double(a.view.data, e, bf)) ? 0 : 1;
      EXPECT_EQ(non_finite, 0) << names[i] << ": non-finite elements (unwritten?)";
      if (i == 3) {
        double max_ref = 0;
        for (int64_t e = 0; e < b.view.numel(); ++e) {
          const double x = load_as_double(b.view.data, e, bf), y = load_as_double(a.view.data, e, bf);
          const double z = load_as_double(caller2.t[3].view.data, e, bf);
          max_ref = std::max(max_ref, std::fabs(x));
          dq_diff = std::max(dq_diff, std::fabs(y - x));
          dq_spread = std::max(dq_spread, std::fabs(z - x));
        }
        const bool close = dq_diff <= std::ldexp(max_ref, -7);
        EXPECT_TRUE(close) << "dq: max|inside - caller| " << dq_diff
                           << " above 2^-7 max|dq| = " << std::ldexp(max_ref, -7)
                           << " (caller run to run: " << dq_spread << ")";
        bad += close ? 0 : 1;
        continue;
      }
      const bool same = a.storage.size() == b.storage.size() &&
                        std::memcmp(a.storage.data(), b.storage.data(), a.storage.size()) == 0;
      EXPECT_TRUE(same) << names[i] << " differs from the caller's rotation";
      bad += same ? 0 : 1;
    }
    // The rotation happened: q afterwards differs from the unrotated input.
    EXPECT_NE(std::memcmp(inside.t[1].storage.data(), q.storage.data(), q.storage.size()), 0) << "q was not rotated";
    EXPECT_EQ(inside.lse.size(), caller.lse.size());
    EXPECT_EQ(std::memcmp(inside.lse.data(), caller.lse.data(), inside.lse.size() * sizeof(float)), 0) << "lse differs";
    for (float x : inside.lse) {
      if (!std::isfinite(x)) {
        ADD_FAILURE() << "lse holds a non-finite value";
        break;
      }
    }
    if (env_free && major == 9) EXPECT_EQ(inside.fused, rc.expect_fused) << "q rotated in the own step's launch";
    EXPECT_FALSE(caller.fused);
    int fused_any = inside.fused ? 1 : 0, fused_all = 0;
    MPI_Allreduce(&fused_any, &fused_all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (r == 0)
      std::printf(
          "[ring-gpu P=%d] rope inside the ring: %s/%s/%s rot %lld S=%lld: %s (dq max|diff| %.2e, caller run to "
          "run %.2e); q in the own step's launch: %s\n",
          P, ring::layout_name(rc.layout), rc.mask.causal ? "causal" : "full",
          rc.style == RopeStyle::kGptJ ? "gptj" : "neox", static_cast<long long>(rc.rotary_dim),
          static_cast<long long>(S), bad == 0 ? "o, lse, q, k, dk, dv bit-identical, dq within bound" : "DIFFERS",
          dq_diff, dq_spread, fused_all ? "yes" : "no");
  }
}

// The ring's forward (fp32 O) against one GPU's flash_attention_forward (fp32 O) on the full sequence: equal
// to within the engine's own rounding. A ring step normalises its partial softmax with its own row maximum,
// so P is rounded to bf16 against a different maximum than in the one-GPU pass; the difference is therefore
// of the size of the engine's error, and no larger: |ring - 1 GPU| <= 2 * |1 GPU - fp64| + slack (3x for the
// maximum, which may sit on different elements). LSE involves no bf16 rounding: agreement to 1e-4.
TEST(RingGpu, ForwardEqualsOneGpuWithinRounding) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  for (ShardLayout layout : {ShardLayout::kContiguous, ShardLayout::kZigzag}) {
    for (bool causal : {false, true}) {
      Case c;
      c.layout = layout;
      c.S = seq_for(layout);
      c.mask = causal ? Mask::make_causal() : Mask::none();
      c.alibi = causal;
      c.fp32_outputs = true;
      SCOPED_TRACE(c.name());
      const RingRun run = run_case(comm, c);
      const ErrorStats d = compare(run.o.view, run.o_single.view);
      std::vector<double> l1(run.lse_single.begin(), run.lse_single.end());
      const ErrorStats dl = compare_flat(run.lse.data(), l1.data(), static_cast<int64_t>(l1.size()));
      const ErrorStats& e1 = run.o_single_err;
      EXPECT_EQ(d.non_finite, 0);
      EXPECT_EQ(dl.non_finite, 0);
      EXPECT_LE(dl.max_abs, 1e-4) << "LSE ring vs 1 GPU: " << dl.str();
      EXPECT_LE(d.rel_l2, 2 * e1.rel_l2 + 1e-5) << "O ring vs 1 GPU: " << d.str() << " | 1 GPU vs fp64: " << e1.str();
      EXPECT_LE(d.max_abs, 3 * e1.max_abs + 1e-4) << "O ring vs 1 GPU: " << d.str() << " | 1 GPU vs fp64: " << e1.str();
      double m[2] = {d.max_abs, d.rel_l2}, w[2];
      MPI_Allreduce(m, w, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (mpi_rank() == 0)
        std::printf("[ring-gpu P=%d] %-44s ring vs 1 GPU (fp32 O): max|diff| %.2e rel_l2 %.2e\n", mpi_size(),
                    c.name().c_str(), w[0], w[1]);
    }
  }
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
