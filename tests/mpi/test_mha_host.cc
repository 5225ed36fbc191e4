// The multi-head attention layer across CPU ranks (MpiCommunicator + host engine) against the same layer in one
// process on the full sequence. Run under mpirun -np 1..4.
//
// Every rank draws the SAME full x, dy and weights (same seed), runs the single-process layer (dense core, fp64)
// on the full sequence as the reference, takes its shard of x and dy, and runs the distributed layer:
//   - ring core (each rank holds its sequence shard; zigzag / contiguous / striped): y and dx must equal the
//     reference's shard, the weight gradients (all-reduced over the ranks) the reference's full gradients;
//   - dilated core, sequence parallel (contiguous shards, segments inside a shard and spanning ranks): the same;
//   - dense core, data parallel (each rank holds one batch element): the all-reduced weight gradients equal the
//     single-process gradients over the whole batch.
// Tolerance: the ring keeps O, LSE and dK|dV in fp32 between steps (the engine's accumulate mode), so values
// carry ~1e-7 relative error after the merges, and the weight gradients sum T tokens of fp32-accurate terms in
// double. 2e-5 relative to max(1, max|ref|) is > 20x that; a wrong shard, position or missing all-reduce moves
// values by O(0.1) or by a factor of P.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "distattn/comm/mpi_communicator.h"
#include "distattn/core/error.h"
#include "distattn/layers/multi_head_attention.h"
#include "distattn/ring/shard.h"
#include "mha_names.h"
#include "mpi_gtest_main.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

using ring::ShardLayout;

constexpr double kCommTimeout = 30.0;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<double> normal(size_t n, std::mt19937_64& rng, double stddev) {
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Max |a - b| (with NaN counted as infinite).
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    m = std::isfinite(d) ? std::max(m, d) : std::numeric_limits<double>::infinity();
  }
  return m;
}

// A [B, S, E] activation as a 4-D view [B, S, 1, E] so ring::shard_host can cut it.
TensorView as_4d(std::vector<double>& v, int64_t B, int64_t S, int64_t E) {
  return TensorView::packed(v.data(), DType::kFloat64, Device::kHost, B, S, 1, E);
}

struct Weights {
  std::vector<double> wqkv, bqkv, wo, bo;
  MhaWeights view() {
    MhaWeights w;
    w.qkv_weight = wqkv.data();
    w.out_weight = wo.data();
    if (!bqkv.empty()) w.qkv_bias = bqkv.data(), w.out_bias = bo.data();
    return w;
  }
};

struct Grads {
  std::vector<double> wqkv, bqkv, wo, bo;
  Grads(const MhaConfig& c) {
    wqkv.assign(static_cast<size_t>(c.qkv_dim() * c.embed_dim), kNaN);
    wo.assign(static_cast<size_t>(c.embed_dim * c.attn_dim()), kNaN);
    if (c.bias) {
      bqkv.assign(static_cast<size_t>(c.qkv_dim()), kNaN);
      bo.assign(static_cast<size_t>(c.embed_dim), kNaN);
    }
  }
  MhaGrads view() {
    MhaGrads g;
    g.qkv_weight = wqkv.data();
    g.out_weight = wo.data();
    if (!bqkv.empty()) g.qkv_bias = bqkv.data(), g.out_bias = bo.data();
    return g;
  }
};

struct Case {
  ShardLayout layout = ShardLayout::kZigzag;
  int64_t rows_per_chunk = 3;  // zigzag: S = 2P * rows; else S = P * rows
  int64_t B = 2, E = 12, Hq = 4, Hkv = 2, D = 8;
  Mask mask;
  bool bias = true;
  bool rope = true;
  bool alibi = false;
  std::string name() const {
    std::string n = std::string(ring::layout_name(layout)) + (mask.causal ? "/causal" : "/full");
    if (mask.window) n += "/win" + std::to_string(mask.window);
    if (alibi) n += "/alibi";
    n += rope ? "/rope" : "";
    n += bias ? "/bias" : "";
    return n + "/E" + std::to_string(E) + "Hq" + std::to_string(Hq) + "Hkv" + std::to_string(Hkv);
  }
};

MhaConfig base_config(const Case& c) {
  MhaConfig cfg;
  cfg.embed_dim = c.E;
  cfg.q_heads = c.Hq;
  cfg.kv_heads = c.Hkv;
  cfg.head_dim = c.D;
  cfg.dtype = DType::kFloat64;
  cfg.bias = c.bias;
  cfg.rope = c.rope;
  cfg.mask = c.mask;
  if (c.alibi) {
    for (int64_t h = 0; h < c.Hq; ++h) cfg.alibi_slopes.push_back(std::pow(2.f, -8.f * (h + 1) / c.Hq));
  }
  return cfg;
}

Weights draw_weights(const MhaConfig& cfg, std::mt19937_64& rng) {
  Weights w;
  w.wqkv = normal(static_cast<size_t>(cfg.qkv_dim() * cfg.embed_dim), rng, 1.0 / std::sqrt(double(cfg.embed_dim)));
  w.wo = normal(static_cast<size_t>(cfg.embed_dim * cfg.attn_dim()), rng, 1.0 / std::sqrt(double(cfg.attn_dim())));
  if (cfg.bias) {
    w.bqkv = normal(static_cast<size_t>(cfg.qkv_dim()), rng, 0.5);
    w.bo = normal(static_cast<size_t>(cfg.embed_dim), rng, 0.5);
  }
  return w;
}

void expect_close(const char* what, const std::vector<double>& got, const std::vector<double>& ref, double* worst) {
  const double tol = 2e-5 * std::max(1.0, max_abs(ref));
  const double d = max_diff(got, ref);
  EXPECT_LE(d, tol) << what << " (tol " << tol << ")";
  *worst = std::max(*worst, d / std::max(1.0, max_abs(ref)));
}

void run_ring_case(const Case& c) {
  const int P = mpi_size(), r = mpi_rank();
  const int64_t S = (c.layout == ShardLayout::kZigzag ? 2 * P : P) * c.rows_per_chunk, Sl = S / P;
  const int64_t B = c.B, E = c.E;
  const uint64_t seed = test_seed() + 17 * static_cast<uint64_t>(c.layout) + static_cast<uint64_t>(c.mask.causal);
  SCOPED_TRACE(::testing::Message() << c.name() << " S=" << S << " P=" << P << " rank " << r << " seed " << seed);
  std::mt19937_64 rng(seed);
  const MhaConfig cfg = base_config(c);
  Weights w = draw_weights(cfg, rng);
  std::vector<double> x = normal(static_cast<size_t>(B * S * E), rng, 1.0);
  std::vector<double> dy = normal(static_cast<size_t>(B * S * E), rng, 1.0);

  // Reference: one process, the full sequence, dense core.
  std::vector<double> y_ref(x.size(), kNaN), dx_ref(x.size(), kNaN);
  Grads g_ref(cfg);
  {
    MultiHeadAttention ref(cfg, Device::kHost);
    ref.forward(w.view(), SequenceView::packed(x.data(), DType::kFloat64, Device::kHost, B, S, E),
                SequenceView::packed(y_ref.data(), DType::kFloat64, Device::kHost, B, S, E));
    ref.backward(w.view(), SequenceView::packed(x.data(), DType::kFloat64, Device::kHost, B, S, E),
                 SequenceView::packed(dy.data(), DType::kFloat64, Device::kHost, B, S, E),
                 SequenceView::packed(dx_ref.data(), DType::kFloat64, Device::kHost, B, S, E), g_ref.view());
  }
  auto shard = [&](std::vector<double>& full) {
    std::vector<double> local(static_cast<size_t>(B * Sl * E));
    ring::shard_host(as_4d(full, B, S, E), as_4d(local, B, Sl, E), c.layout, P, r);
    return local;
  };
  std::vector<double> xl = shard(x), dyl = shard(dy), yl(xl.size(), kNaN), dxl(xl.size(), kNaN);

  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  MhaConfig rc = cfg;
  rc.core = AttentionCore::kRing;
  rc.ring_layout = c.layout;
  MultiHeadAttention layer(rc, Device::kHost, &comm);
  auto seq = [&](std::vector<double>& v) {
    return SequenceView::packed(v.data(), DType::kFloat64, Device::kHost, B, Sl, E);
  };
  layer.forward(w.view(), seq(xl), seq(yl));
  EXPECT_EQ(layer.positions().length(), Sl);
  Grads g(cfg);
  layer.backward(w.view(), seq(xl), seq(dyl), seq(dxl), g.view());

  double worst = 0;
  expect_close("y", yl, shard(y_ref), &worst);
  expect_close("dx", dxl, shard(dx_ref), &worst);
  expect_close("dWqkv", g.wqkv, g_ref.wqkv, &worst);
  expect_close("dWo", g.wo, g_ref.wo, &worst);
  if (c.bias) {
    expect_close("dbqkv", g.bqkv, g_ref.bqkv, &worst);
    expect_close("dbo", g.bo, g_ref.bo, &worst);
  }
  double all = 0;
  MPI_Allreduce(&worst, &all, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (r == 0) {
    std::printf("[mha ring P=%d] %-44s S %3lld seed %llu  max rel err (y, dx, grads) %.2e\n", P, c.name().c_str(),
                static_cast<long long>(S), static_cast<unsigned long long>(seed), all);
  }
}

TEST(MhaRingHost, ZigzagCausalGqaRopeBias) {
  Case c;
  c.mask = Mask::make_causal();
  run_ring_case(c);
}

TEST(MhaRingHost, ContiguousWindowAlibiMqa) {
  Case c;
  c.layout = ShardLayout::kContiguous;
  c.rows_per_chunk = 5;
  c.mask = Mask::make_window(4);  // two-sided window across rank boundaries
  c.alibi = true;
  c.Hkv = 1;
  c.E = 11;
  run_ring_case(c);
}

TEST(MhaRingHost, StripedCausalNoBiasOddRows) {
  Case c;
  c.layout = ShardLayout::kStriped;
  c.rows_per_chunk = 7;
  c.mask = Mask::make_causal();
  c.bias = false;
  c.B = 1;
  run_ring_case(c);
}

// Dilated core, sequence parallel (DistributedDilatedAttention over the ranks, contiguous shards of L = 8 rows):
// patterns inside a shard (4, 8) and one spanning every rank (S = 8P, rate 4), causal, GQA, against the
// single-process layer with the single-device dilated core on the full sequence.
TEST(MhaDilatedHost, DistributedEqualsSingleProcess) {
  const int P = mpi_size(), r = mpi_rank();
  Case c;
  c.mask = Mask::make_causal();
  const int64_t L = 8, S = L * P, B = 2, E = c.E;
  MhaConfig cfg = base_config(c);
  cfg.core = AttentionCore::kDilated;
  cfg.dilated_patterns = {{4, 1}, {8, 2}, {S, 4}};
  const uint64_t seed = test_seed() + 5150;
  SCOPED_TRACE(::testing::Message() << "S=" << S << " P=" << P << " rank " << r << " seed " << seed);
  std::mt19937_64 rng(seed);
  Weights w = draw_weights(cfg, rng);
  std::vector<double> x = normal(static_cast<size_t>(B * S * E), rng, 1.0);
  std::vector<double> dy = normal(static_cast<size_t>(B * S * E), rng, 1.0);
  auto full = [&](std::vector<double>& v) {
    return SequenceView::packed(v.data(), DType::kFloat64, Device::kHost, B, S, E);
  };
  std::vector<double> y_ref(x.size()), dx_ref(x.size());
  Grads g_ref(cfg);
  {
    MultiHeadAttention ref(cfg, Device::kHost);
    ref.forward(w.view(), full(x), full(y_ref));
    ref.backward(w.view(), full(x), full(dy), full(dx_ref), g_ref.view());
  }
  auto shard = [&](std::vector<double>& v) {
    std::vector<double> local(static_cast<size_t>(B * L * E));
    ring::shard_host(as_4d(v, B, S, E), as_4d(local, B, L, E), ShardLayout::kContiguous, P, r);
    return local;
  };
  std::vector<double> xl = shard(x), dyl = shard(dy), yl(xl.size(), kNaN), dxl(xl.size(), kNaN);
  auto loc = [&](std::vector<double>& v) {
    return SequenceView::packed(v.data(), DType::kFloat64, Device::kHost, B, L, E);
  };
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  MultiHeadAttention layer(cfg, Device::kHost, &comm);
  layer.forward(w.view(), loc(xl), loc(yl));
  EXPECT_EQ(layer.positions().position(0), r * L);  // global positions of a contiguous shard
  Grads g(cfg);
  layer.backward(w.view(), loc(xl), loc(dyl), loc(dxl), g.view());
  double worst = 0;
  expect_close("y", yl, shard(y_ref), &worst);
  expect_close("dx", dxl, shard(dx_ref), &worst);
  expect_close("dWqkv", g.wqkv, g_ref.wqkv, &worst);
  expect_close("dWo", g.wo, g_ref.wo, &worst);
  expect_close("dbqkv", g.bqkv, g_ref.bqkv, &worst);
  expect_close("dbo", g.bo, g_ref.bo, &worst);
  double all = 0;
  MPI_Allreduce(&worst, &all, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (r == 0)
    std::printf("[mha dilated P=%d] S %lld seed %llu  max rel err (y, dx, grads) %.2e\n", P, (long long)S,
                (unsigned long long)seed, all);
}

// Data parallel with the dense core: rank r holds batch element r of a batch of P sequences; the all-reduced
// weight gradients equal the gradients of the whole batch in one process, y and dx equal its rows.
TEST(MhaHost, DenseDataParallelGradsAllReduced) {
  const int P = mpi_size(), r = mpi_rank();
  Case c;
  c.mask = Mask::make_causal();
  const int64_t S = 9, E = c.E;
  const MhaConfig cfg = base_config(c);
  const uint64_t seed = test_seed() + 4242;
  SCOPED_TRACE(::testing::Message() << "P=" << P << " rank " << r << " seed " << seed);
  std::mt19937_64 rng(seed);
  Weights w = draw_weights(cfg, rng);
  std::vector<double> x = normal(static_cast<size_t>(P * S * E), rng, 1.0);
  std::vector<double> dy = normal(static_cast<size_t>(P * S * E), rng, 1.0);
  std::vector<double> y_ref(x.size()), dx_ref(x.size());
  Grads g_ref(cfg);
  {
    MultiHeadAttention ref(cfg, Device::kHost);
    auto full = [&](std::vector<double>& v) {
      return SequenceView::packed(v.data(), DType::kFloat64, Device::kHost, P, S, E);
    };
    ref.forward(w.view(), full(x), full(y_ref));
    ref.backward(w.view(), full(x), full(dy), full(dx_ref), g_ref.view());
  }
  auto mine = [&](std::vector<double>& v) {
    return SequenceView::packed(v.data() + r * S * E, DType::kFloat64, Device::kHost, 1, S, E);
  };
  std::vector<double> y(x.size(), kNaN), dx(x.size(), kNaN);
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  MultiHeadAttention layer(cfg, Device::kHost, &comm);
  layer.forward(w.view(), mine(x), mine(y));
  Grads g(cfg);
  layer.backward(w.view(), mine(x), mine(dy), mine(dx), g.view());
  auto rows = [&](const std::vector<double>& v) {
    return std::vector<double>(v.begin() + r * S * E, v.begin() + (r + 1) * S * E);
  };
  double worst = 0;
  expect_close("y", rows(y), rows(y_ref), &worst);
  expect_close("dx", rows(dx), rows(dx_ref), &worst);
  expect_close("dWqkv", g.wqkv, g_ref.wqkv, &worst);
  expect_close("dWo", g.wo, g_ref.wo, &worst);
  expect_close("dbqkv", g.bqkv, g_ref.bqkv, &worst);
  expect_close("dbo", g.bo, g_ref.bo, &worst);

  // Without the all-reduce each rank keeps only its own tokens' gradient (differs from the total when P > 1).
  MhaConfig local_cfg = cfg;
  local_cfg.all_reduce_weight_grads = false;
  MultiHeadAttention local(local_cfg, Device::kHost, &comm);
  local.forward(w.view(), mine(x), mine(y));
  Grads gl(cfg);
  local.backward(w.view(), mine(x), mine(dy), mine(dx), gl.view());
  if (P > 1) EXPECT_GT(max_diff(gl.wo, g_ref.wo), 1e-3 * max_abs(g_ref.wo)) << "local grads equal the total?";
}

// One rank's bad input becomes an Error on EVERY rank (nobody waits in the ring), naming the argument.
TEST(MhaRingHost, BadInputOnOneRankThrowsEverywhere) {
  const int P = mpi_size(), r = mpi_rank();
  Case c;
  c.mask = Mask::make_causal();
  MhaConfig cfg = base_config(c);
  cfg.core = AttentionCore::kRing;
  std::mt19937_64 rng(test_seed());
  Weights w = draw_weights(cfg, rng);
  const int64_t Sl = 6, E = c.E;
  std::vector<double> x = normal(static_cast<size_t>(2 * Sl * E), rng, 1.0), y(x.size(), kNaN);
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  MultiHeadAttention layer(cfg, Device::kHost, &comm);
  MhaWeights wv = w.view();
  if (r == P - 1) wv.out_weight = nullptr;  // the last rank forgot a weight
  EXPECT_ERROR_ARG(layer.forward(wv, SequenceView::packed(x.data(), DType::kFloat64, Device::kHost, 2, Sl, E),
                                 SequenceView::packed(y.data(), DType::kFloat64, Device::kHost, 2, Sl, E)),
                   "weights.out_weight");
  for (double v : y) ASSERT_TRUE(std::isnan(v)) << "y written on bad input";
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
