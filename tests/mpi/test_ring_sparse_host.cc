// Block-sparse ring attention and the ring's early end on CPU ranks (MpiCommunicator + host engine), under
// mpirun -np 1..4; and the communicator's shift exchange (post_shift).
//
// Every rank draws the SAME full fp64 Q, K, V, dO (seed printed), builds the SAME global block layout
// (ring_sparse_cases.h: strided, local band, block diagonal, global tokens, BigBird, random, a window band, a
// layout with empty rows; causal restriction or not), and compares its shard of the ring's O, LSE, dQ, dK, dV
// with its shard of two single-process fp64 references on the full sequence:
//   - the host engine with the global layout (mask = layout's band + its block list);
//   - a naive attention written here on an element mask derived from each pattern's definition.
// The ring's introspection (schedule().last_useful_step, computed_steps(), last_forward() / last_backward():
// steps run, K|V and dK|dV exchanges, the home shift) is checked against the step work derived from the element
// mask alone, and against hand-derived counts where the pattern makes them obvious (a causal local band on a
// contiguous layout needs 1 exchange, a block diagonal none, a causal window no wider than a shard 1).
// Outputs are poisoned with NaN before each run. Bounds: fp32 accumulation (see test_ring_host.cc).
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

#include "distattn/comm/mpi_communicator.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/ring/schedule.h"
#include "distattn/ring/shard.h"
#include "distattn/sparse/block_layout.h"
#include "mpi_gtest_main.h"
#include "ring_sparse_cases.h"
#include "ring_test_util.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

using ring::RingAttention;
using ring::RingConfig;
using ring::ShardLayout;

constexpr double kCommTimeout = 30.0;  // a hang becomes an Error well before CTest's TIMEOUT

// S = 2P blocks of 128 rows: contiguous ranks hold 2 blocks, zigzag ranks 2 chunks of 1 block.
int64_t seq_for(int P) { return 2 * P * kBlk; }
std::vector<double> to_dense(const HostTensor& t) {  // packed [B, S, H, D] doubles
  const TensorView& v = t.view;
  std::vector<double> out(static_cast<size_t>(v.numel()));
  size_t i = 0;
  for (int64_t b = 0; b < v.batch(); ++b)
    for (int64_t s = 0; s < v.seqlen(); ++s)
      for (int64_t h = 0; h < v.heads(); ++h)
        for (int64_t d = 0; d < v.head_dim(); ++d) out[i++] = t.get(b, s, h, d);
  return out;
}

void from_dense(const std::vector<double>& a, HostTensor& t) {
  const TensorView& v = t.view;
  size_t i = 0;
  for (int64_t b = 0; b < v.batch(); ++b)
    for (int64_t s = 0; s < v.seqlen(); ++s)
      for (int64_t h = 0; h < v.heads(); ++h)
        for (int64_t d = 0; d < v.head_dim(); ++d) t.set(b, s, h, d, a[i++]);
}

// Naive fp64 attention on an element mask vis[i * S + j] (B = 1), forward and backward, written from the
// definitions: s_ij = scale q_i.k_j + bias_ij (ALiBi: -slope (i - j) with the causal band, -slope |i - j|
// otherwise), P = softmax over visible j, O = P V, LSE = log sum exp; rows with nothing visible: O = 0,
// LSE = -inf. dS = P (dO.v_j - rowsum(dO O)); dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO.
struct Naive {
  HostTensor O, dQ, dK, dV;
  std::vector<double> lse;  // [Hq, S]
};

Naive naive_attention(const HostTensor& Qt, const HostTensor& Kt, const HostTensor& Vt, const HostTensor& dOt,
                      const std::vector<uint8_t>& vis, const std::vector<float>& slopes, bool causal_bias,
                      float scale_in) {
  const int64_t S = Qt.view.seqlen(), Hq = Qt.view.heads(), Hkv = Kt.view.heads(), D = Qt.view.head_dim();
  const double scale = scale_in > 0 ? scale_in : 1.0 / std::sqrt(static_cast<double>(D));
  const std::vector<double> Q = to_dense(Qt), K = to_dense(Kt), V = to_dense(Vt), dO = to_dense(dOt);
  std::vector<double> O(Q.size(), 0.0), dQ(Q.size(), 0.0), dK(K.size(), 0.0), dV(V.size(), 0.0);
  Naive n;
  n.lse.assign(static_cast<size_t>(Hq * S), -std::numeric_limits<double>::infinity());
  std::vector<double> p(static_cast<size_t>(S));
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t hk = h / (Hq / Hkv);
    for (int64_t i = 0; i < S; ++i) {
      const double* q = &Q[static_cast<size_t>((i * Hq + h) * D)];
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < S; ++j) {
        if (!vis[static_cast<size_t>(i * S + j)]) continue;
        const double* k = &K[static_cast<size_t>((j * Hkv + hk) * D)];
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
        double s = scale * dot;
        if (!slopes.empty()) {
          const double dist = causal_bias ? static_cast<double>(i - j) : std::fabs(static_cast<double>(i - j));
          s -= static_cast<double>(slopes[static_cast<size_t>(h)]) * dist;
        }
        p[static_cast<size_t>(j)] = s;
        mx = std::max(mx, s);
      }
      if (mx == -std::numeric_limits<double>::infinity()) continue;  // no visible key: O = 0, LSE = -inf
      double l = 0;
      for (int64_t j = 0; j < S; ++j)
        if (vis[static_cast<size_t>(i * S + j)]) l += std::exp(p[static_cast<size_t>(j)] - mx);
      const double lse = mx + std::log(l);
      n.lse[static_cast<size_t>(h * S + i)] = lse;
      double* o = &O[static_cast<size_t>((i * Hq + h) * D)];
      for (int64_t j = 0; j < S; ++j) {
        if (!vis[static_cast<size_t>(i * S + j)]) continue;
        p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - lse);
        const double* v = &V[static_cast<size_t>((j * Hkv + hk) * D)];
        for (int64_t d = 0; d < D; ++d) o[d] += p[static_cast<size_t>(j)] * v[d];
      }
      // Backward for row i.
      const double* g = &dO[static_cast<size_t>((i * Hq + h) * D)];
      double delta = 0;
      for (int64_t d = 0; d < D; ++d) delta += g[d] * o[d];
      double* dq = &dQ[static_cast<size_t>((i * Hq + h) * D)];
      for (int64_t j = 0; j < S; ++j) {
        if (!vis[static_cast<size_t>(i * S + j)]) continue;
        const size_t kj = static_cast<size_t>((j * Hkv + hk) * D);
        double dp = 0;
        for (int64_t d = 0; d < D; ++d) dp += g[d] * V[kj + d];
        const double pij = p[static_cast<size_t>(j)], ds = pij * (dp - delta);
        for (int64_t d = 0; d < D; ++d) {
          dq[d] += scale * ds * K[kj + d];
          dK[kj + d] += scale * ds * q[d];
          dV[kj + d] += pij * g[d];
        }
      }
    }
  }
  n.O = HostTensor(DType::kFloat64, 1, S, Hq, D);
  n.dQ = HostTensor(DType::kFloat64, 1, S, Hq, D);
  n.dK = HostTensor(DType::kFloat64, 1, S, Hkv, D);
  n.dV = HostTensor(DType::kFloat64, 1, S, Hkv, D);
  from_dense(O, n.O);
  from_dense(dQ, n.dQ);
  from_dense(dK, n.dK);
  from_dense(dV, n.dV);
  return n;
}

// What a case's ring did, for case-specific assertions (identical on every rank).
struct RunInfo {
  int last_useful_step = -1;
  int kv_exchanges = -1;
  int grad_exchanges = -1;
  int computed_steps = -1;  // this rank's
};

RingConfig make_config(const SparseCase& c, int64_t S, const BlockLayout* g, const std::vector<float>& slopes) {
  RingConfig cfg;
  cfg.layout = c.layout;
  cfg.seq_len = S;
  cfg.batch = 1;
  cfg.q_heads = c.Hq;
  cfg.kv_heads = c.Hkv;
  cfg.head_dim = c.D;
  cfg.dtype = DType::kFloat64;
  cfg.mask = c.band();
  cfg.block_layout = g;
  cfg.alibi_slopes = slopes.empty() ? nullptr : slopes.data();
  cfg.softmax_scale = c.scale;
  return cfg;
}

RunInfo run_case(const SparseCase& c) {
  const int P = mpi_size(), r = mpi_rank();
  const int64_t S = seq_for(P), Sl = S / P;
  const uint64_t seed = test_seed() + 101 * static_cast<uint64_t>(c.pattern) + 7 * static_cast<uint64_t>(c.layout) +
                        (c.causal ? 3 : 0) + static_cast<uint64_t>(c.Hkv);
  SCOPED_TRACE(::testing::Message() << c.name() << " S=" << S << " P=" << P << " rank " << r << " seed " << seed);

  HostTensor Q(DType::kFloat64, 1, S, c.Hq, c.D), K(DType::kFloat64, 1, S, c.Hkv, c.D),
      V(DType::kFloat64, 1, S, c.Hkv, c.D), dO(DType::kFloat64, 1, S, c.Hq, c.D);
  fill_normal(Q, seed + 1);
  fill_normal(K, seed + 2);
  fill_normal(V, seed + 3);
  fill_normal(dO, seed + 4);
  std::vector<float> slopes;
  if (c.alibi)
    for (int64_t h = 0; h < c.Hq; ++h) slopes.push_back(std::pow(2.f, -8.f * (h + 1) / c.Hq));
  const std::unique_ptr<BlockLayout> g = make_global_layout(c, S);

  // Reference 1: the single-process fp64 host engine with the global layout.
  HostTensor O_ref(DType::kFloat64, 1, S, c.Hq, c.D), dQ_ref(DType::kFloat64, 1, S, c.Hq, c.D),
      dK_ref(DType::kFloat64, 1, S, c.Hkv, c.D), dV_ref(DType::kFloat64, 1, S, c.Hkv, c.D);
  std::vector<float> lse_ref(static_cast<size_t>(c.Hq * S));
  AttnParams p;
  p.q = Q.view, p.k = K.view, p.v = V.view, p.o = O_ref.view;
  p.lse = lse_ref.data();
  p.q_pos = p.kv_pos = PositionMap::contiguous(0, S);
  p.mask = g ? g->host_mask() : c.band();
  p.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  p.softmax_scale = c.scale;
  host_attention_forward(p);
  AttnBwdParams bp;
  bp.fwd = p;
  bp.dout = dO.view, bp.dq = dQ_ref.view, bp.dk = dK_ref.view, bp.dv = dV_ref.view;
  host_attention_backward(bp);

  // Reference 2: naive attention on the element mask written from the pattern's definition.
  const std::vector<uint8_t> vis = element_mask(c, g.get(), S);
  const Naive nv = naive_attention(Q, K, V, dO, vis, slopes, c.causal, c.scale);
  const ExpectedWork ew = expected_work(vis, c.layout, S, P);

  // The ring.
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  RingAttention ra(comm, make_config(c, S, g.get(), slopes));
  EXPECT_EQ(ra.schedule().block_sparse, g != nullptr);
  EXPECT_EQ(ra.schedule().last_useful_step, ew.last);
  EXPECT_EQ(ra.schedule().computed_steps(), ew.computed[static_cast<size_t>(r)]);
  EXPECT_EQ(ra.schedule().useful_steps, ew.useful);
  EXPECT_EQ(ra.schedule().kv_exchanges(), ew.exchanges());
  for (const ring::RingStep& st : ra.schedule().steps) {
    if (std::find(ew.useful.begin(), ew.useful.end(), st.step) == ew.useful.end())
      EXPECT_TRUE(st.skipped()) << "step " << st.step << " has no work on any rank";
    if (g) EXPECT_EQ(st.skipped(), st.listed_blocks == 0) << "step " << st.step;
  }

  const HostTensor q = shard_of(Q, c.layout, P, r), k = shard_of(K, c.layout, P, r), v = shard_of(V, c.layout, P, r),
                   dout = shard_of(dO, c.layout, P, r);
  HostTensor o(DType::kFloat64, 1, Sl, c.Hq, c.D, 0, 1);  // padded rows: strides honoured
  fill_nan(o);
  std::vector<float> lse(static_cast<size_t>(c.Hq * Sl), std::numeric_limits<float>::quiet_NaN());
  ra.forward(q.view, k.view, v.view, o.view, lse.data());
  EXPECT_EQ(ra.last_forward().steps_run, static_cast<int>(ew.useful.size()));
  EXPECT_EQ(ra.last_forward().kv_exchanges, ew.exchanges());
  EXPECT_EQ(ra.last_forward().computed_steps, ew.computed[static_cast<size_t>(r)]);

  const HostTensor o_ref = shard_of(O_ref, c.layout, P, r), o_nv = shard_of(nv.O, c.layout, P, r);
  std::vector<float> lse_ref_local(lse.size());
  ring::shard_lse_host(lse_ref.data(), lse_ref_local.data(), 1, c.Hq, c.layout, S, P, r);
  std::vector<float> lse_nv_f(nv.lse.begin(), nv.lse.end()), lse_nv_local(lse.size());
  ring::shard_lse_host(lse_nv_f.data(), lse_nv_local.data(), 1, c.Hq, c.layout, S, P, r);
  const std::vector<double> lse_ref_d(lse_ref_local.begin(), lse_ref_local.end());
  const std::vector<double> lse_nv_d(lse_nv_local.begin(), lse_nv_local.end());

  HostTensor dq(DType::kFloat64, 1, Sl, c.Hq, c.D), dk(DType::kFloat64, 1, Sl, c.Hkv, c.D, 2, 0),
      dv(DType::kFloat64, 1, Sl, c.Hkv, c.D);
  fill_nan(dq);
  fill_nan(dk);
  fill_nan(dv);
  ra.backward(dout.view, q.view, k.view, v.view, o_ref.view, lse_ref_local.data(), dq.view, dk.view, dv.view);
  EXPECT_EQ(ra.last_backward().steps_run, static_cast<int>(ew.useful.size()));
  EXPECT_EQ(ra.last_backward().kv_exchanges, ew.exchanges());
  EXPECT_EQ(ra.last_backward().grad_exchanges, ew.exchanges() + 1);
  EXPECT_EQ(ra.last_backward().grad_home_shift, ((-ew.last) % P + P) % P);
  EXPECT_EQ(ra.last_backward().computed_steps, ew.computed[static_cast<size_t>(r)]);

  // Bounds: as test_ring_host.cc (fp32 accumulators; the naive reference adds its own fp64 rounding only).
  const double f32 = std::ldexp(1.0, -24);
  const double tol_o = 8.0 * (P + 1) * f32 * std::max(1.0, max_abs_value(o_ref.view));
  const double tol_lse = 8.0 * (P + 1) * f32 * 16.0;
  const HostTensor dq_ref = shard_of(dQ_ref, c.layout, P, r), dk_ref = shard_of(dK_ref, c.layout, P, r),
                   dv_ref = shard_of(dV_ref, c.layout, P, r);
  const HostTensor dq_nv = shard_of(nv.dQ, c.layout, P, r), dk_nv = shard_of(nv.dK, c.layout, P, r),
                   dv_nv = shard_of(nv.dV, c.layout, P, r);
  const double tol_dq = 16.0 * (P + 1) * f32 * std::max(1.0, max_abs_value(dq_ref.view));
  const double tol_dk = 16.0 * (P + 1) * f32 * std::max(1.0, max_abs_value(dk_ref.view));
  const double tol_dv = 16.0 * (P + 1) * f32 * std::max(1.0, max_abs_value(dv_ref.view));
  struct Check {
    const char* what;
    ErrorStats st;
    double tol;
  };
  const int64_t nl = static_cast<int64_t>(lse.size());
  const Check checks[] = {
      {"O vs host engine", compare(o.view, o_ref.view), tol_o},
      {"O vs naive", compare(o.view, o_nv.view), tol_o},
      {"LSE vs host engine", compare_flat(lse.data(), lse_ref_d.data(), nl), tol_lse},
      {"LSE vs naive", compare_flat(lse.data(), lse_nv_d.data(), nl), tol_lse},
      {"dQ vs host engine", compare(dq.view, dq_ref.view), tol_dq},
      {"dQ vs naive", compare(dq.view, dq_nv.view), tol_dq},
      {"dK vs host engine", compare(dk.view, dk_ref.view), tol_dk},
      {"dK vs naive", compare(dk.view, dk_nv.view), tol_dk},
      {"dV vs host engine", compare(dv.view, dv_ref.view), tol_dv},
      {"dV vs naive", compare(dv.view, dv_nv.view), tol_dv},
  };
  double worst[5] = {0, 0, 0, 0, 0};
  for (int i = 0; i < 10; ++i) {
    const Check& ck = checks[i];
    EXPECT_EQ(ck.st.non_finite, 0) << ck.what << ": " << ck.st.str();
    EXPECT_LE(ck.st.max_abs, ck.tol) << ck.what << ": " << ck.st.str();
    EXPECT_GT(ck.st.count, 0) << ck.what;
    worst[i / 2] = std::max(worst[i / 2], ck.st.max_abs);
  }
  // Not a vacuous case: some key is visible somewhere, and not everywhere (unless dense).
  EXPECT_TRUE(std::any_of(lse_ref.begin(), lse_ref.end(), [](float x) { return std::isfinite(x); }));

  double all[5];
  MPI_Allreduce(worst, all, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  RunInfo info;
  info.last_useful_step = ra.schedule().last_useful_step;
  info.kv_exchanges = ra.last_forward().kv_exchanges;
  info.grad_exchanges = ra.last_backward().grad_exchanges;
  info.computed_steps = ra.last_forward().computed_steps;
  if (r == 0) {
    std::printf(
        "[ring-sparse P=%d] %-44s seed %llu density %.3f  last step %d  hops %d  max|err| O %.1e LSE %.1e dQ "
        "%.1e dK %.1e dV %.1e\n",
        P, c.name().c_str(), static_cast<unsigned long long>(seed), g ? g->density() : 1.0, info.last_useful_step,
        info.kv_exchanges, all[0], all[1], all[2], all[3], all[4]);
    std::fflush(stdout);
  }
  return info;
}

std::vector<SparseCase> cases_for(ShardLayout layout) {
  std::vector<SparseCase> v;
  SparseCase c;
  c.layout = layout;
  c.pattern = Pattern::kStrided;
  c.alibi = true;
  v.push_back(c);  // non-causal strided, ALiBi (|i - j| form)
  c.causal = true;
  c.alibi = false;
  c.Hq = 4, c.Hkv = 2;
  v.push_back(c);  // causal strided, GQA 4:2
  c.Hq = 2, c.Hkv = 2;
  c.pattern = Pattern::kGlobal;
  c.alibi = true;
  v.push_back(c);  // causal global tokens, ALiBi (causal form)
  c.pattern = Pattern::kBigBird;
  c.causal = false;
  c.alibi = false;
  c.Hq = 3, c.Hkv = 1, c.D = 5;
  c.scale = 0.3f;
  v.push_back(c);  // BigBird, MQA 3:1, odd head dim, custom scale
  c.causal = true;
  v.push_back(c);  // causal BigBird
  c.Hq = 2, c.Hkv = 2, c.D = 8;
  c.scale = 0.f;
  c.pattern = Pattern::kRandom;
  v.push_back(c);  // causal random
  c.causal = false;
  c.alibi = true;
  v.push_back(c);  // random, ALiBi
  c.alibi = false;
  c.pattern = Pattern::kWindowBand;
  c.causal = true;
  c.window = 200;
  v.push_back(c);  // causal window band layout (partial blocks mean "window")
  c.causal = false;
  c.window = 150;
  v.push_back(c);  // two-sided window band layout
  c.window = 0;
  c.pattern = Pattern::kLocalBand;
  v.push_back(c);  // local band: some steps empty
  c.pattern = Pattern::kHoles;
  v.push_back(c);  // rows with no key
  return v;
}

class RingSparseHostLayouts : public ::testing::TestWithParam<ShardLayout> {};

TEST_P(RingSparseHostLayouts, MatchesHostEngineAndElementMaskReference) {
  for (const SparseCase& c : cases_for(GetParam())) run_case(c);
}

INSTANTIATE_TEST_SUITE_P(Layouts, RingSparseHostLayouts,
                         ::testing::Values(ShardLayout::kContiguous, ShardLayout::kZigzag),
                         [](const ::testing::TestParamInfo<ShardLayout>& i) {
                           return std::string(ring::layout_name(i.param));
                         });

// Hand-derived step counts (P ranks, S = 2P blocks, contiguous: rank r holds blocks 2r, 2r+1).
TEST(RingSparseHost, EarlyEndCounts) {
  const int P = mpi_size();
  SparseCase c;
  c.layout = ShardLayout::kContiguous;
  // Causal local band: block 2r needs block 2r-1 (rank r-1, step 1) and nothing else outside the shard.
  c.pattern = Pattern::kLocalBand;
  c.causal = true;
  RunInfo i = run_case(c);
  EXPECT_EQ(i.last_useful_step, std::min(1, P - 1));
  EXPECT_EQ(i.kv_exchanges, std::min(1, P - 1));
  EXPECT_EQ(i.grad_exchanges, std::min(1, P - 1) + 1);
  // Block diagonal: every rank has only its own shard's blocks: no K|V exchange, gradients stay home.
  c.pattern = Pattern::kBlockDiagonal;
  c.causal = false;
  c.alibi = true;
  i = run_case(c);
  EXPECT_EQ(i.last_useful_step, 0);
  EXPECT_EQ(i.kv_exchanges, 0);
  EXPECT_EQ(i.grad_exchanges, 1);
  EXPECT_EQ(i.computed_steps, 1);
  // Two-sided local band: rank r needs r-1 (step 1) and r+1 (step P-1): the middle steps are empty for every
  // rank and are jumped over: 2 exchanges (steps 0 -> 1 -> P-1) instead of P - 1.
  const int three = std::min(2, P - 1);  // exchanges when steps {0, 1, P-1} are the useful ones
  c.pattern = Pattern::kLocalBand;
  c.alibi = false;
  i = run_case(c);
  EXPECT_EQ(i.last_useful_step, P - 1);
  EXPECT_EQ(i.kv_exchanges, three);
  EXPECT_EQ(i.grad_exchanges, three + 1);
  if (P >= 4) EXPECT_LE(i.computed_steps, 3);
  // Zigzag with a causal local band: chunk r needs chunk r-1 (rank r-1, step 1), chunk 2P-1-r needs chunk
  // 2P-2-r, held by rank r+1 (step P-1): the same three steps.
  c.layout = ShardLayout::kZigzag;
  c.causal = true;
  i = run_case(c);
  EXPECT_EQ(i.last_useful_step, P - 1);
  EXPECT_EQ(i.kv_exchanges, three);
}

// The dense ring's sliding window ends early too.
TEST(RingSparseHost, DenseSlidingWindowEndsEarly) {
  const int P = mpi_size();
  SparseCase c;
  c.layout = ShardLayout::kContiguous;
  c.pattern = Pattern::kDense;
  c.causal = true;
  c.window = 100;  // < 256 rows per rank: only the previous shard is ever needed
  c.alibi = true;
  c.Hq = 4, c.Hkv = 2;
  RunInfo i = run_case(c);
  EXPECT_EQ(i.last_useful_step, std::min(1, P - 1));
  EXPECT_EQ(i.kv_exchanges, std::min(1, P - 1));
  EXPECT_EQ(i.grad_exchanges, std::min(1, P - 1) + 1);
  c.window = 300;  // wider than a shard: two previous shards
  i = run_case(c);
  EXPECT_EQ(i.last_useful_step, std::min(2, P - 1));
  EXPECT_EQ(i.kv_exchanges, std::min(2, P - 1));
  c.causal = false;  // two-sided: the next shard is needed too (step P-1), the middle ones jumped over
  c.window = 100;
  i = run_case(c);
  EXPECT_EQ(i.last_useful_step, P - 1);
  EXPECT_EQ(i.kv_exchanges, std::min(2, P - 1));
  c.causal = true;  // causal without a window, zigzag: every step
  c.window = 0;
  c.layout = ShardLayout::kZigzag;
  i = run_case(c);
  EXPECT_EQ(i.last_useful_step, P - 1);
  EXPECT_EQ(i.kv_exchanges, P - 1);
  EXPECT_EQ(i.computed_steps, P);
}

// Bad input: an Error on EVERY rank naming the argument, no hang, and the communicator stays usable.
TEST(RingSparseHost, BadInputFailsOnEveryRank) {
  const int P = mpi_size(), r = mpi_rank();
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  const std::vector<float> none;
  SparseCase c;
  c.layout = ShardLayout::kContiguous;
  c.pattern = Pattern::kStrided;
  auto expect_arg = [&](const RingConfig& cfg, const char* arg) {
    try {
      RingAttention ra(comm, cfg);
      ADD_FAILURE() << "expected an Error naming " << arg;
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), std::string(arg)) << e.what();
    }
  };
  {
    // Chunks of 192 rows: not a multiple of 128.
    const int64_t S = P * 192;
    c.layout = ShardLayout::kContiguous;
    const std::unique_ptr<BlockLayout> g = make_global_layout(c, (S + kBlk - 1) / kBlk * kBlk);
    expect_arg(make_config(c, S, g.get(), none), "seq_len");
    // Zigzag chunks of 64 rows.
    c.layout = ShardLayout::kZigzag;
    expect_arg(make_config(c, 2 * P * 64, g.get(), none), "seq_len");
  }
  const int64_t S = seq_for(P);
  c.layout = ShardLayout::kContiguous;
  const std::unique_ptr<BlockLayout> g = make_global_layout(c, S);
  {
    RingConfig cfg = make_config(c, S, g.get(), none);
    cfg.layout = ShardLayout::kStriped;
    expect_arg(cfg, "layout");
    // Only rank 0 asks for striped: still an Error on every rank, naming the argument.
    cfg.layout = r == 0 ? ShardLayout::kStriped : ShardLayout::kContiguous;
    expect_arg(cfg, "layout");
  }
  {
    // A layout of the wrong size (half the sequence).
    const std::unique_ptr<BlockLayout> half = make_global_layout(c, S / 2 >= kBlk ? S / 2 : 2 * S);
    expect_arg(make_config(c, S, half.get(), none), "block_layout");
  }
  {
    // Mask band different from the layout's (causal layout, no mask).
    SparseCase cc = c;
    cc.causal = true;
    const std::unique_ptr<BlockLayout> gc = make_global_layout(cc, S);
    RingConfig cfg = make_config(cc, S, gc.get(), none);
    cfg.mask = Mask::none();
    expect_arg(cfg, "mask");
    // A block list in the mask instead of block_layout.
    const BlockListView view = gc->host_view();
    cfg.mask = gc->make_mask(view);
    expect_arg(cfg, "mask.blocks");
  }
  if (P >= 2) {
    // Ranks with different layouts (random draws with a per-rank seed; same sizes): the fingerprint.
    const BlockLayout mine = BlockLayout::random(S, S, 2, 777 + static_cast<uint64_t>(r));
    try {
      RingAttention ra(comm, make_config(c, S, &mine, none));
      ADD_FAILURE() << "ranks with different layouts were accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.argument().rfind("block_layout", 0), 0u) << e.what();
    }
    // Only rank 0 has a layout.
    try {
      RingAttention ra(comm, make_config(c, S, r == 0 ? g.get() : nullptr, none));
      ADD_FAILURE() << "a layout on rank 0 only was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.argument().rfind("block_layout", 0), 0u) << e.what();
    }
  }
  // The communicator is still healthy: a good configuration runs.
  EXPECT_FALSE(comm.broken());
  RingAttention ok(comm, make_config(c, S, g.get(), none));
  EXPECT_EQ(ok.local_rows(), S / P);
}

// post_shift: every shift (negative, zero, beyond the ring) moves each rank's buffer to peer(shift).
TEST(MpiShift, EveryShiftReachesThePeer) {
  const int P = mpi_size(), r = mpi_rank();
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  const size_t n = 1000 + 37;  // odd byte count
  for (int shift = -P - 1; shift <= P + 1; ++shift) {
    SCOPED_TRACE(::testing::Message() << "shift " << shift << " rank " << r);
    std::vector<unsigned char> send(n), recv(n, 0xEE);
    for (size_t i = 0; i < n; ++i) send[i] = static_cast<unsigned char>(r * 31 + i * 7 + shift);
    EXPECT_EQ(comm.peer(shift), ((r + shift) % P + P) % P);
    ExchangeTicket t = comm.post_shift("test shift", shift, send.data(), recv.data(), n, shift);
    comm.wait_exchange(t);
    const int from = ((r - shift) % P + P) % P;
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad += recv[i] != static_cast<unsigned char>(from * 31 + i * 7 + shift);
    EXPECT_EQ(bad, 0u) << "from rank " << from;
  }
  // Two shifts in flight at once (a ring hop and a shift home), waited in reverse order.
  std::vector<int> a(64, r), b(64, 100 + r), ra(64, -1), rb(64, -1);
  ExchangeTicket t1 = comm.post_exchange("test hop", 0, a.data(), ra.data(), a.size() * sizeof(int));
  ExchangeTicket t2 = comm.post_shift("test home", 0, b.data(), rb.data(), b.size() * sizeof(int), -2);
  comm.wait_exchange(t2);
  comm.wait_exchange(t1);
  EXPECT_EQ(ra[5], comm.prev());
  EXPECT_EQ(rb[5], 100 + comm.peer(2));
  // Bad arguments are refused before anything is posted.
  std::vector<unsigned char> buf(8);
  EXPECT_ERROR_ARG(comm.post_shift("bad", 0, nullptr, buf.data(), 8, 1), "send/recv");
  EXPECT_ERROR_ARG(comm.post_shift("bad", 0, buf.data(), buf.data(), 8, 1), "recv");
  EXPECT_FALSE(comm.broken());
}

// post_shift has post_exchange's watchdog: a rank that never posts its half makes the rank waiting for its data
// time out with an Error naming the operation, the step and the missing rank; that communicator is then broken.
TEST(MpiShift, MissingPeerTimesOutNamingIt) {
  const int P = mpi_size(), r = mpi_rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  const int absent = P - 1, shift = -1;
  const int waiter = ((absent + shift) % P + P) % P;  // receives from peer(-shift) = absent
  {
    MpiCommunicator comm(MPI_COMM_WORLD, 2.0);
    std::vector<char> a(64, static_cast<char>(r)), b(64);
    if (r != absent) {
      std::string text;
      try {
        ExchangeTicket t = comm.post_shift("test shift home", 5, a.data(), b.data(), a.size(), shift);
        comm.wait_exchange(t);
      } catch (const Error& e) {
        text = e.what();
      }
      if (r == waiter) {
        EXPECT_NE(text.find("timed out"), std::string::npos) << text;
        EXPECT_NE(text.find("test shift home step 5"), std::string::npos) << text;
        EXPECT_NE(text.find("rank " + std::to_string(absent)), std::string::npos) << text;
        EXPECT_TRUE(comm.broken());
        EXPECT_ERROR_ARG(comm.post_shift("later", 6, a.data(), b.data(), a.size(), 1), "");
      } else {
        EXPECT_TRUE(text.empty()) << text;  // its source posted; its (small, eager) send completes
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);  // everyone is past the failure before the communicator goes away
  }
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
