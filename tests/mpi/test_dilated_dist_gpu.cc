// Distributed dilated (LongNet) attention on GPUs (NcclCommunicator + the CUDA engine) under mpirun (label gpu-mpi),
// against the single-process host DilatedAttention on the whole sequence (fp64; tests/mpi/test_dilated_dist_host.cc
// and tests/cpu/test_dilated.cc check that reference against a dense one built from the pattern definition).
//
// Every rank takes the GPU of its node-local rank; if any rank has no GPU of its own, every rank skips together.
// Every rank draws the SAME full bf16/fp16 Q, K, V, dO (seed printed), computes the references of the whole
// sequence on the host (fp64, and the naive kRoundIntermediates baseline), copies its shard [p*L, (p+1)*L) to
// its GPU, and runs the distributed class: forward (O, LSE poisoned with NaN), then backward fed the fp64 O
// (rounded to the dtype) and LSE on both sides, so its error is its own (dQ, dK, dV poisoned).
// Rule (tests/gpu/test_dilated_gpu.cc): on this rank's rows, error vs fp64 <= 2x the naive error + slack.
// Patterns per P: one local to a shard, one spanning 2 ranks (P = 4; all ranks when P = 2), one spanning every
// rank; the roles torchscale gets wrong (rank 0, first rank of a later segment, causal) are in every causal case.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/dilated/dilated_attention.h"
#include "distattn/dilated/distributed_dilated.h"
#include "mpi_gpu.h"
#include "mpi_gtest_main.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

constexpr double kCommTimeout = 120.0;
constexpr double kFwdSlack = 1e-4;

struct GpuCase {
  std::string name;
  DType dtype = DType::kBFloat16;
  int64_t L = 256, B = 1, Hq = 4, Hkv = 4, D = 64;
  std::vector<DilatedPattern> patterns;
  bool causal = false;
  bool alibi = false;
  int64_t head_pad = 0, row_pad = 0;  // shard padding in elements (multiples of 8: 16-byte aligned)
  bool ragged = false;                // config.ragged_rates
};

DilatedPattern span_all(int64_t L, int64_t r) { return {mpi_size() * L, r}; }
DilatedPattern span_two(int64_t L, int64_t r) { return {mpi_size() % 2 == 0 ? 2 * L : mpi_size() * L, r}; }

// Rows [row0, row0 + L) of a full host tensor, copied into a (padded) local tensor.
HostTensor shard_copy(const HostTensor& full, int64_t row0, int64_t L, int64_t head_pad = 0, int64_t row_pad = 0) {
  const TensorView& f = full.view;
  HostTensor t(f.dtype, f.batch(), L, f.heads(), f.head_dim(), head_pad, row_pad);
  for (int64_t b = 0; b < f.batch(); ++b)
    for (int64_t i = 0; i < L; ++i)
      for (int64_t h = 0; h < f.heads(); ++h)
        for (int64_t d = 0; d < f.head_dim(); ++d) t.set(b, i, h, d, full.get(b, row0 + i, h, d));
  return t;
}

std::vector<double> lse_rows(const std::vector<float>& full, int64_t B, int64_t H, int64_t S, int64_t row0, int64_t L) {
  std::vector<double> out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t l = 0; l < L; ++l) out.push_back(full[static_cast<size_t>((b * H + h) * S + row0 + l)]);
  return out;
}

void run_case(NcclCommunicator& comm, const GpuCase& c) {
  const int P = mpi_size(), p = mpi_rank();
  const int64_t L = c.L, S = P * L, row0 = p * L;
  const uint64_t seed = test_seed() + std::hash<std::string>()(c.name) % 100000;
  SCOPED_TRACE(::testing::Message() << c.name << " S=" << S << " P=" << P << " rank " << p << " seed " << seed);
  DilatedConfig dc;
  dc.patterns = c.patterns;
  dc.causal = c.causal;
  dc.ragged_rates = c.ragged;
  if (c.alibi)
    for (int64_t h = 0; h < c.Hq; ++h) dc.alibi_slopes.push_back(std::pow(2.0f, -8.0f * (h + 1) / float(c.Hq)));
  DilatedConfig naive_cfg = dc;
  naive_cfg.host_precision = HostPrecision::kRoundIntermediates;

  HostTensor Q(c.dtype, c.B, S, c.Hq, c.D), K(c.dtype, c.B, S, c.Hkv, c.D), V(c.dtype, c.B, S, c.Hkv, c.D),
      dO(c.dtype, c.B, S, c.Hq, c.D);
  fill_normal(Q, seed);
  fill_normal(K, seed + 1);
  fill_normal(V, seed + 2);
  fill_normal(dO, seed + 3);
  const int64_t n_lse = c.B * c.Hq * S;

  // References of the whole sequence (host): fp64 and the naive same-precision baseline.
  HostTensor o64(DType::kFloat32, c.B, S, c.Hq, c.D), o_naive(c.dtype, c.B, S, c.Hq, c.D);
  std::vector<float> lse64(static_cast<size_t>(n_lse)), lse_naive(static_cast<size_t>(n_lse));
  dilated_attention_forward(dc, Q.view, K.view, V.view, o64.view, lse64.data(), Device::kHost);
  dilated_attention_forward(naive_cfg, Q.view, K.view, V.view, o_naive.view, lse_naive.data(), Device::kHost);
  HostTensor o_in(c.dtype, c.B, S, c.Hq, c.D);  // the fp64 forward's O in the dtype: the backward's input
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t i = 0; i < S; ++i)
      for (int64_t h = 0; h < c.Hq; ++h)
        for (int64_t d = 0; d < c.D; ++d) o_in.set(b, i, h, d, o64.get(b, i, h, d));
  HostTensor ref[3] = {HostTensor(DType::kFloat32, c.B, S, c.Hq, c.D), HostTensor(DType::kFloat32, c.B, S, c.Hkv, c.D),
                       HostTensor(DType::kFloat32, c.B, S, c.Hkv, c.D)};
  HostTensor nai[3] = {HostTensor(DType::kFloat32, c.B, S, c.Hq, c.D), HostTensor(DType::kFloat32, c.B, S, c.Hkv, c.D),
                       HostTensor(DType::kFloat32, c.B, S, c.Hkv, c.D)};
  dilated_attention_backward(dc, Q.view, K.view, V.view, o_in.view, lse64.data(), dO.view, ref[0].view, ref[1].view,
                             ref[2].view, Device::kHost);
  dilated_attention_backward(naive_cfg, Q.view, K.view, V.view, o_in.view, lse64.data(), dO.view, nai[0].view,
                             nai[1].view, nai[2].view, Device::kHost);

  // The distributed run on this rank's GPU.
  DistributedDilatedConfig cfg;
  cfg.dilated = dc;
  cfg.seq_len = S;
  cfg.batch = c.B;
  cfg.q_heads = c.Hq;
  cfg.kv_heads = c.Hkv;
  cfg.head_dim = c.D;
  cfg.dtype = c.dtype;
  // The stream outlives the object (its destructor synchronises the stream of the last call).
  cudaStream_t stream = nullptr;
  DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } stream_guard{stream};
  DistributedDilatedAttention dd(comm, cfg);
  const HostTensor q = shard_copy(Q, row0, L, c.head_pad, c.row_pad), k = shard_copy(K, row0, L, c.head_pad, c.row_pad),
                   v = shard_copy(V, row0, L, c.head_pad, c.row_pad), dout = shard_copy(dO, row0, L),
                   oin = shard_copy(o_in, row0, L);
  DeviceTensor d_q(q), d_k(k), d_v(v), d_dout(dout), d_oin(oin);
  HostTensor o(c.dtype, c.B, L, c.Hq, c.D, c.head_pad, c.row_pad);
  fill_nan(o);
  DeviceTensor d_o(o);
  DeviceArray<float> d_lse(std::vector<float>(static_cast<size_t>(c.B * c.Hq * L), std::nanf("")));
  dd.forward(d_q.view(), d_k.view(), d_v.view(), d_o.view(), d_lse.ptr, stream);
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  d_o.download(o);
  const std::vector<float> lse = d_lse.download();
  double worst[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // O, LSE, dQ, dK, dV errors; naive O, LSE (for the table)
  {
    const HostTensor r64 = shard_copy(o64, row0, L), rn = shard_copy(o_naive, row0, L);
    const ErrorStats e = compare(o.view, r64.view), en = compare(rn.view, r64.view);
    const std::vector<double> lref = lse_rows(lse64, c.B, c.Hq, S, row0, L);
    const std::vector<float> ln_f = [&] {
      std::vector<float> x;
      for (double y : lse_rows(lse_naive, c.B, c.Hq, S, row0, L)) x.push_back(static_cast<float>(y));
      return x;
    }();
    const ErrorStats l = compare_flat(lse.data(), lref.data(), static_cast<int64_t>(lse.size()));
    const ErrorStats ln = compare_flat(ln_f.data(), lref.data(), static_cast<int64_t>(lse.size()));
    SCOPED_TRACE("O gpu " + e.str() + " | naive " + en.str() + " || LSE gpu " + l.str() + " | naive " + ln.str());
    EXPECT_EQ(e.non_finite, 0);
    EXPECT_EQ(l.non_finite, 0);
    EXPECT_LE(e.rel_l2, 2 * en.rel_l2 + kFwdSlack);
    EXPECT_LE(e.max_abs, 2 * en.max_abs + kFwdSlack);
    EXPECT_LE(l.max_abs, 2 * ln.max_abs + kFwdSlack);
    worst[0] = e.max_abs;
    worst[1] = l.max_abs;
    worst[5] = en.max_abs;
    worst[6] = ln.max_abs;
  }

  // Backward, fed the fp64 forward's O (rounded) and LSE.
  std::vector<float> lse_in_local;
  for (double x : lse_rows(lse64, c.B, c.Hq, S, row0, L)) lse_in_local.push_back(static_cast<float>(x));
  DeviceArray<float> d_lse_in(lse_in_local);
  HostTensor out[3] = {HostTensor(c.dtype, c.B, L, c.Hq, c.D, c.head_pad, c.row_pad),
                       HostTensor(c.dtype, c.B, L, c.Hkv, c.D, c.head_pad, c.row_pad),
                       HostTensor(c.dtype, c.B, L, c.Hkv, c.D, c.head_pad, c.row_pad)};
  for (HostTensor& t : out) fill_nan(t);
  DeviceTensor g0(out[0]), g1(out[1]), g2(out[2]);
  dd.backward(d_q.view(), d_k.view(), d_v.view(), d_oin.view(), d_lse_in.ptr, d_dout.view(), g0.view(), g1.view(),
              g2.view(), stream);
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  g0.download(out[0]);
  g1.download(out[1]);
  g2.download(out[2]);
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    const HostTensor r = shard_copy(ref[i], row0, L), n = shard_copy(nai[i], row0, L);
    const ErrorStats e = compare(out[i].view, r.view), en = compare(n.view, r.view);
    const double rms = rms_of(r);
    SCOPED_TRACE(std::string(names[i]) + " gpu " + e.str() + " | naive " + en.str() + " | ref rms " +
                 std::to_string(rms));
    EXPECT_GT(rms, 0.0);
    EXPECT_EQ(e.non_finite, 0);
    EXPECT_LE(e.max_abs, 2 * en.max_abs + 1e-2 * rms + 1e-6);
    EXPECT_LE(e.rmse, 2 * en.rmse + 2e-3 * rms + 1e-7);
    worst[2 + i] = e.max_abs;
  }
  double all[8];
  MPI_Allreduce(worst, all, 8, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (p == 0) {
    std::printf("[dilated-gpu P=%d] %-34s max|err| O %.2e (naive %.2e) LSE %.2e (naive %.2e) dQ %.2e dK %.2e dV %.2e\n",
                P, c.name.c_str(), all[0], all[5], all[1], all[6], all[2], all[3], all[4]);
  }
}

TEST(DilatedDistGpu, LongNetLikeLocalSpanTwoSpanAll) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  for (bool causal : {false, true}) {
    GpuCase c{std::string("longnet") + (causal ? "/causal" : "")};
    c.patterns = {{128, 1}, span_two(c.L, 2), span_all(c.L, 4)};
    c.causal = causal;
    run_case(comm, c);
  }
}

TEST(DilatedDistGpu, Hdim128GqaAlibiBatch) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  for (bool causal : {false, true}) {
    GpuCase c{std::string("d128/gqa8:2/alibi") + (causal ? "/causal" : "")};
    c.D = 128;
    c.B = 2;
    c.Hq = 8;
    c.Hkv = 2;
    c.alibi = true;
    c.patterns = {{64, 1}, span_two(c.L, 2), span_all(c.L, 4), span_all(c.L, 8)};
    c.causal = causal;
    run_case(comm, c);
  }
}

TEST(DilatedDistGpu, HeadsNotDivisibleByRateFp16Padded) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  GpuCase c{"h6r4/fp16/padded/causal"};
  c.dtype = DType::kFloat16;
  c.Hq = c.Hkv = 6;
  c.head_pad = 8;
  c.row_pad = 16;
  c.causal = true;
  c.patterns = {{256, 1}, span_all(c.L, 4)};
  run_case(comm, c);
}

TEST(DilatedDistGpu, RateNotDividingTheShard) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  // L = 192: P = 2 (S = 384) r = 128; P = 4 (S = 768) r = 256 > L. Phases and counts differ between ranks.
  for (bool causal : {false, true}) {
    GpuCase c{std::string("rate-not-dividing-L") + (causal ? "/causal" : "")};
    c.L = 192;
    const int64_t r = mpi_size() == 4 ? 256 : (mpi_size() == 2 ? 128 : 3);
    c.patterns = {{64, 1}, span_all(c.L, r)};
    c.causal = causal;
    run_case(comm, c);
  }
}

// LongNet's own rates (r = 6, 12 on power-of-two segments: config.ragged_rates), local and spanning segments.
TEST(DilatedDistGpu, RaggedRatesLongNet) {
  REQUIRE_GPU_PER_RANK();
  NcclCommunicator comm(MPI_COMM_WORLD, -1, kCommTimeout);
  for (bool causal : {false, true}) {
    GpuCase c{std::string("ragged r6/r12") + (causal ? "/causal" : "")};
    c.ragged = true;
    c.D = 128;
    c.Hq = c.Hkv = 8;
    c.patterns = {{64, 1}, {128, 2}, {256, 6}, span_two(c.L, 6), span_all(c.L, 12)};
    c.causal = causal;
    run_case(comm, c);
  }
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
