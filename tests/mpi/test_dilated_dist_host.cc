// Distributed dilated (LongNet) attention on CPU ranks (MpiCommunicator + host engine), run under mpirun -np 1..4.
//
// Every rank draws the SAME full Q, K, V, dO (fp64, same seed) of the global sequence (S = P * L rows), runs the
// distributed class on its shard [p*L, (p+1)*L) (views into the full tensors: batch stride S*H*D, not L*H*D),
// and compares its shard of O, LSE, dQ, dK, dV with two fp64 references of the WHOLE sequence:
//   (a) the single-process DilatedAttention (host engine, fp64);
//   (b) a dense attention whose element mask is built here from the pattern definition alone: pair (i, j) of
//       head h has multiplicity  mult = #{patterns (w, r): i/w == j/w, (i - g0) mod r == (j - g0) mod r == h mod r
//       with g0 = (i/w)*w the segment start (torchscale's rows s, s + r, ... < w; the same as i mod r when r
//       divides w, and the definition when it does not: ragged_rates), and j <= i when causal},  and the softmax runs
//       over the multiset (LSE_i = log sum_j mult_ij exp(s_ij)), which is the LSE mixing of the patterns. Its backward
//       is the analytic gradient of that softmax.
// The backward is fed reference (b)'s O and LSE, so its error is its own.
// Patterns are chosen per P so that one case has segments local to a shard, one spanning 2 ranks, one spanning
// every rank, and the rank roles the torchscale implementation gets wrong (rank 0 and the first rank of a later
// segment under causal: its own block must be attended) are asserted explicitly.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "distattn/comm/mpi_communicator.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/dilated/dilated_attention.h"
#include "distattn/dilated/distributed_dilated.h"
#include "mpi_gtest_main.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

constexpr double kCommTimeout = 30.0;  // a hang becomes an Error well before CTest's TIMEOUT
constexpr int64_t kL = 48;             // rows per rank (divisible by 1, 2, 3, 4, 6, 8, 12, 16, 24)

struct DistCase {
  std::string name;
  int64_t L = kL;
  int64_t B = 2, Hq = 4, Hkv = 4, D = 16;
  std::vector<DilatedPattern> patterns;
  bool causal = false;
  bool alibi = false;
  float scale = 0.f;
  DType dtype = DType::kFloat64;
  bool ragged = false;  // config.ragged_rates (rates not dividing their segments)
};

// --- pattern builders for the current world size (S = P * L) ---
DilatedPattern span_all(int64_t r) { return {mpi_size() * kL, r}; }
// A segment of two shards when P is even; with P = 3 (or 1) the whole sequence (S must be a multiple of w).
DilatedPattern span_two(int64_t r) { return {mpi_size() % 2 == 0 ? 2 * kL : mpi_size() * kL, r}; }
// A rate that divides S but not L (so phases and counts differ between ranks; P = 4: r > L, some ranks keep
// no row of some classes); P = 1: any.
int64_t rate_not_dividing_shard() {
  switch (mpi_size()) {
    case 2:
      return 32;  // S = 96,  L = 48: 48 mod 32 = 16
    case 3:
      return 36;  // S = 144: 48 mod 36 = 12
    case 4:
      return 64;  // S = 192: r > L
    default:
      return 3;
  }
}

// --- reference (b): dense fp64 attention with the multiplicity mask ---
int64_t multiplicity(const std::vector<DilatedPattern>& pats, bool causal, int64_t h, int64_t i, int64_t j) {
  if (causal && j > i) return 0;
  int64_t m = 0;
  for (const DilatedPattern& p : pats) {
    if (i / p.segment != j / p.segment) continue;
    const int64_t g0 = (i / p.segment) * p.segment;  // offsets inside the segment decide
    if ((i - g0) % p.rate != h % p.rate || (j - g0) % p.rate != h % p.rate) continue;
    ++m;
  }
  return m;
}

struct Dense {
  HostTensor o, dq, dk, dv;  // fp64 [B, S, H, D]
  std::vector<double> lse;   // [B, Hq, S]
};

Dense dense_reference(const DistCase& c, int64_t S, const HostTensor& Q, const HostTensor& K, const HostTensor& V,
                      const HostTensor& dO, const std::vector<float>& slopes) {
  const int64_t B = c.B, H = c.Hq, D = c.D, G = c.Hq / c.Hkv;
  const double scale = c.scale > 0 ? double(c.scale) : double(float(1.0 / std::sqrt(double(D))));
  Dense r;
  r.o = HostTensor(DType::kFloat64, B, S, H, D);
  r.dq = HostTensor(DType::kFloat64, B, S, H, D);
  r.dk = HostTensor(DType::kFloat64, B, S, c.Hkv, D);
  r.dv = HostTensor(DType::kFloat64, B, S, c.Hkv, D);
  r.lse.assign(static_cast<size_t>(B * H * S), -std::numeric_limits<double>::infinity());
  std::vector<double> dk(static_cast<size_t>(B * S * c.Hkv * D), 0.0), dv(dk.size(), 0.0);
  std::vector<double> sc(static_cast<size_t>(S)), p(static_cast<size_t>(S));
  std::vector<int64_t> mult(static_cast<size_t>(S));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / G;
      for (int64_t i = 0; i < S; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < S; ++j) {
          mult[j] = multiplicity(c.patterns, c.causal, h, i, j);
          if (mult[j] == 0) continue;
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += Q.get(b, i, h, d) * K.get(b, j, kh, d);
          s *= scale;
          if (!slopes.empty()) s -= double(slopes[h]) * (c.causal ? double(i - j) : std::fabs(double(i - j)));
          sc[j] = s;
          mx = std::max(mx, s);
        }
        if (mx == -std::numeric_limits<double>::infinity()) {  // no key: O = 0, LSE = -inf, no gradient
          for (int64_t d = 0; d < D; ++d) r.o.set(b, i, h, d, 0.0), r.dq.set(b, i, h, d, 0.0);
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < S; ++j)
          if (mult[j] > 0) sum += double(mult[j]) * std::exp(sc[j] - mx);
        const double lse = mx + std::log(sum);
        r.lse[static_cast<size_t>((b * H + h) * S + i)] = lse;
        for (int64_t j = 0; j < S; ++j) p[j] = mult[j] > 0 ? double(mult[j]) * std::exp(sc[j] - lse) : 0.0;
        // O_i = sum_j P_ij v_j;  delta_i = dO_i . O_i;  dS_ij = P_ij (dO_i . v_j - delta_i)
        double delta = 0;
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (int64_t j = 0; j < S; ++j)
            if (p[j] != 0) o += p[j] * V.get(b, j, kh, d);
          r.o.set(b, i, h, d, o);
          delta += o * dO.get(b, i, h, d);
        }
        std::vector<double> dqi(static_cast<size_t>(D), 0.0);
        for (int64_t j = 0; j < S; ++j) {
          if (p[j] == 0) continue;
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) dp += dO.get(b, i, h, d) * V.get(b, j, kh, d);
          const double ds = p[j] * (dp - delta);
          for (int64_t d = 0; d < D; ++d) {
            dqi[d] += scale * ds * K.get(b, j, kh, d);
            const size_t kidx = static_cast<size_t>(((b * S + j) * c.Hkv + kh) * D + d);
            dk[kidx] += scale * ds * Q.get(b, i, h, d);
            dv[kidx] += p[j] * dO.get(b, i, h, d);
          }
        }
        for (int64_t d = 0; d < D; ++d) r.dq.set(b, i, h, d, dqi[d]);
      }
    }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < S; ++j)
      for (int64_t kh = 0; kh < c.Hkv; ++kh)
        for (int64_t d = 0; d < D; ++d) {
          const size_t kidx = static_cast<size_t>(((b * S + j) * c.Hkv + kh) * D + d);
          r.dk.set(b, j, kh, d, dk[kidx]);
          r.dv.set(b, j, kh, d, dv[kidx]);
        }
  return r;
}

// Rows [row0, row0 + L) of a full tensor as a view (no copy; the full tensor's strides).
TensorView rows_of(const HostTensor& t, int64_t row0, int64_t L) {
  TensorView v = t.view;
  v.data = static_cast<char*>(t.view.data) + row0 * t.view.stride[1] * static_cast<int64_t>(dtype_size(v.dtype));
  v.shape[1] = L;
  return v;
}

// LSE rows [row0, row0 + L) of a [B, H, S] array.
std::vector<double> lse_rows(const std::vector<double>& full, int64_t B, int64_t H, int64_t S, int64_t row0,
                             int64_t L) {
  std::vector<double> out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t l = 0; l < L; ++l) out.push_back(full[static_cast<size_t>((b * H + h) * S + row0 + l)]);
  return out;
}

// What this rank is for the widest distributed pattern: the roles torchscale gets wrong are named in failures.
std::string rank_role(const DistCase& c) {
  const int P = mpi_size(), p = mpi_rank();
  int64_t widest = 0;
  for (const DilatedPattern& pt : c.patterns) widest = std::max(widest, pt.segment);
  if (widest <= c.L) return "rank " + std::to_string(p) + " (every segment local)";
  const int64_t G = widest / c.L;
  std::string role = "rank " + std::to_string(p) + " = rank " + std::to_string(p % G) + " of segment " +
                     std::to_string(p / G) + " (" + std::to_string(G) + " ranks";
  role += G == P ? ", spanning ALL ranks)" : ")";
  if (p == 0) role += " [rank 0]";
  if (p % G == 0 && p > 0) role += " [first rank of a later segment]";
  return role;
}

struct Errs {
  double v[5] = {0, 0, 0, 0, 0};  // O, LSE, dQ, dK, dV (max over both references)
};

Errs run_case(const DistCase& c) {
  const int P = mpi_size(), p = mpi_rank();
  const int64_t S = P * c.L, L = c.L;
  const uint64_t seed = test_seed() + std::hash<std::string>()(c.name) % 100000;
  SCOPED_TRACE(::testing::Message() << c.name << " S=" << S << " P=" << P << " " << rank_role(c) << " seed " << seed);
  HostTensor Q(c.dtype, c.B, S, c.Hq, c.D, 3, 5), K(c.dtype, c.B, S, c.Hkv, c.D, 1, 2), V(c.dtype, c.B, S, c.Hkv, c.D),
      dO(c.dtype, c.B, S, c.Hq, c.D);
  fill_normal(Q, seed + 1);
  fill_normal(K, seed + 2);
  fill_normal(V, seed + 3);
  fill_normal(dO, seed + 4);
  std::vector<float> slopes;
  if (c.alibi)
    for (int64_t h = 0; h < c.Hq; ++h) slopes.push_back(std::pow(2.f, -6.f * (h + 1) / c.Hq));

  DilatedConfig dc;
  dc.patterns = c.patterns;
  dc.causal = c.causal;
  dc.softmax_scale = c.scale;
  dc.alibi_slopes = slopes;
  dc.ragged_rates = c.ragged;

  // (b) dense reference, and (a) the single-process DilatedAttention on the whole sequence.
  const Dense ref = dense_reference(c, S, Q, K, V, dO, slopes);
  // fp32 outputs (allowed for every input dtype; the engine's accumulators are fp32 anyway).
  HostTensor O_a(DType::kFloat32, c.B, S, c.Hq, c.D), dQ_a(DType::kFloat32, c.B, S, c.Hq, c.D),
      dK_a(DType::kFloat32, c.B, S, c.Hkv, c.D), dV_a(DType::kFloat32, c.B, S, c.Hkv, c.D);
  std::vector<float> lse_a(static_cast<size_t>(c.B * c.Hq * S));
  HostTensor O_in(c.dtype, c.B, S, c.Hq, c.D);  // reference (b)'s O in the inputs' dtype: the backward's input
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t i = 0; i < S; ++i)
      for (int64_t h = 0; h < c.Hq; ++h)
        for (int64_t d = 0; d < c.D; ++d) O_in.set(b, i, h, d, ref.o.get(b, i, h, d));
  std::vector<float> lse_in(ref.lse.begin(), ref.lse.end());
  dilated_attention_forward(dc, Q.view, K.view, V.view, O_a.view, lse_a.data(), Device::kHost);
  dilated_attention_backward(dc, Q.view, K.view, V.view, O_in.view, lse_in.data(), dO.view, dQ_a.view, dK_a.view,
                             dV_a.view, Device::kHost);

  // The distributed run on this rank's shard.
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  DistributedDilatedConfig cfg;
  cfg.dilated = dc;
  cfg.seq_len = S;
  cfg.batch = c.B;
  cfg.q_heads = c.Hq;
  cfg.kv_heads = c.Hkv;
  cfg.head_dim = c.D;
  cfg.dtype = c.dtype;
  DistributedDilatedAttention dd(comm, cfg);
  EXPECT_EQ(dd.local_rows(), L);
  for (size_t i = 0; i < c.patterns.size(); ++i) {
    EXPECT_EQ(dd.plan(i).local, c.patterns[i].segment <= L) << "pattern " << i;
    EXPECT_EQ(dd.plan(i).group, std::max<int64_t>(1, c.patterns[i].segment / L)) << "pattern " << i;
  }
  const int64_t row0 = p * L;
  HostTensor o(c.dtype, c.B, L, c.Hq, c.D, 0, 3);  // padded rows: strides honoured
  std::vector<float> lse(static_cast<size_t>(c.B * c.Hq * L));
  // Twice (scratch reused): poisoned before each.
  for (int rep = 0; rep < 2; ++rep) {
    fill_nan(o);
    std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
    dd.forward(rows_of(Q, row0, L), rows_of(K, row0, L), rows_of(V, row0, L), o.view, lse.data());
  }
  HostTensor dq(c.dtype, c.B, L, c.Hq, c.D), dk(c.dtype, c.B, L, c.Hkv, c.D, 2, 0), dv(c.dtype, c.B, L, c.Hkv, c.D);
  fill_nan(dq);
  fill_nan(dk);
  fill_nan(dv);
  std::vector<float> lse_in_local;
  for (double x : lse_rows(ref.lse, c.B, c.Hq, S, row0, L)) lse_in_local.push_back(static_cast<float>(x));
  dd.backward(rows_of(Q, row0, L), rows_of(K, row0, L), rows_of(V, row0, L), rows_of(O_in, row0, L),
              lse_in_local.data(), rows_of(dO, row0, L), dq.view, dk.view, dv.view);

  // Tolerances: fp32 accumulators (engine contract) and, for fp32 inputs, fp32 outputs; a few merges per row.
  // A wrong position, phase, block or multiplicity moves O by O(1e-2 .. 1): far above these.
  const double eps = c.dtype == DType::kFloat64 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -23);
  const double npat = static_cast<double>(c.patterns.size());
  const TensorView ro = rows_of(ref.o, row0, L), rdq = rows_of(ref.dq, row0, L), rdk = rows_of(ref.dk, row0, L),
                   rdv = rows_of(ref.dv, row0, L);
  const double tol[5] = {16 * (npat + 2) * eps * std::max(1.0, max_abs_value(ro)), 64 * (npat + 2) * eps * 16.0,
                         64 * (npat + 2) * eps * std::max(1.0, max_abs_value(rdq)) * std::sqrt(double(S)),
                         64 * (npat + 2) * eps * std::max(1.0, max_abs_value(rdk)) * std::sqrt(double(S)),
                         64 * (npat + 2) * eps * std::max(1.0, max_abs_value(rdv)) * std::sqrt(double(S))};
  const char* names[5] = {"O", "LSE", "dQ", "dK", "dV"};
  Errs errs;
  const std::vector<double> lse_b = lse_rows(ref.lse, c.B, c.Hq, S, row0, L);
  std::vector<double> lse_a_local;
  for (double x : lse_rows(std::vector<double>(lse_a.begin(), lse_a.end()), c.B, c.Hq, S, row0, L))
    lse_a_local.push_back(x);
  const TensorView got[5] = {o.view, TensorView{}, dq.view, dk.view, dv.view};
  const TensorView ref_b[5] = {ro, TensorView{}, rdq, rdk, rdv};
  const TensorView ref_a[5] = {rows_of(O_a, row0, L), TensorView{}, rows_of(dQ_a, row0, L), rows_of(dK_a, row0, L),
                               rows_of(dV_a, row0, L)};
  for (int x = 0; x < 5; ++x) {
    ErrorStats eb, ea;
    if (x == 1) {
      eb = compare_flat(lse.data(), lse_b.data(), static_cast<int64_t>(lse.size()));
      ea = compare_flat(lse.data(), lse_a_local.data(), static_cast<int64_t>(lse.size()));
    } else {
      eb = compare(got[x], ref_b[x]);
      ea = compare(got[x], ref_a[x]);
    }
    EXPECT_EQ(eb.non_finite, 0) << names[x] << " vs dense: " << eb.str();
    EXPECT_LE(eb.max_abs, tol[x]) << names[x] << " vs dense: " << eb.str();
    EXPECT_EQ(ea.non_finite, 0) << names[x] << " vs single-process DilatedAttention: " << ea.str();
    EXPECT_LE(ea.max_abs, tol[x]) << names[x] << " vs single-process DilatedAttention: " << ea.str();
    errs.v[x] = std::max(eb.max_abs, ea.max_abs);
  }
  // -inf LSE exactly where the dense reference has no key (and finite elsewhere: compare_flat counts those).
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(lse_b[i])) {
      EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "LSE entry " << i << " = " << lse[i] << ", expected -inf";
    }
  }
  return errs;
}

void run_and_report(const DistCase& c) {
  const Errs e = run_case(c);
  double worst[5];
  MPI_Allreduce(e.v, worst, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (mpi_rank() == 0) {
    std::printf("[dilated P=%d] %-36s max|err| O %.2e  LSE %.2e  dQ %.2e  dK %.2e  dV %.2e\n", mpi_size(),
                c.name.c_str(), worst[0], worst[1], worst[2], worst[3], worst[4]);
  }
}

TEST(DilatedDistHost, SegmentsLocalToShards) {
  for (bool causal : {false, true}) {
    DistCase c{std::string("local") + (causal ? "/causal" : "")};
    c.patterns = {{16, 1}, {kL, 2}};
    c.causal = causal;
    run_and_report(c);
  }
}

TEST(DilatedDistHost, SegmentSpanningTwoRanks) {
  for (bool causal : {false, true}) {
    DistCase c{std::string("span2") + (causal ? "/causal" : "")};
    c.patterns = {{16, 1}, span_two(2)};
    c.causal = causal;
    run_and_report(c);
  }
}

TEST(DilatedDistHost, LongNetLikeSegmentSpanningAllRanks) {
  for (bool causal : {false, true}) {
    DistCase c{std::string("longnet/all") + (causal ? "/causal" : "")};
    c.patterns = {{16, 1}, span_two(2), span_all(4)};
    c.causal = causal;
    run_and_report(c);
  }
}

TEST(DilatedDistHost, HeadsNotDivisibleByRateAlibi) {
  for (bool causal : {false, true}) {
    DistCase c{std::string("h6r4/alibi") + (causal ? "/causal" : "")};
    c.Hq = c.Hkv = 6;
    c.patterns = {{24, 1}, span_two(4), span_all(8)};
    c.alibi = true;
    c.causal = causal;
    run_and_report(c);
  }
}

TEST(DilatedDistHost, GqaPerHeadAndStridedHeadPaths) {
  // Hq = 6, Hkv = 2 (ratio 3): r = 2 is per head (q heads 0, 2, 4 read kv heads 0, 0, 1: a repeated entry),
  // r = 3 one strided call, r = 1 the whole kv tensor with the ratio.
  for (bool causal : {false, true}) {
    DistCase c{std::string("gqa6:2") + (causal ? "/causal" : "")};
    c.Hq = 6;
    c.Hkv = 2;
    c.patterns = {{16, 1}, span_two(2), span_all(3), span_all(1)};
    c.alibi = true;
    c.causal = causal;
    run_and_report(c);
  }
}

TEST(DilatedDistHost, RateNotDividingTheShard) {
  // Phases and counts differ between ranks (P = 4: r = 64 > L, ranks without a row of some classes);
  // alone, the pattern leaves rows without keys (O = 0, LSE = -inf); with a local r = 1 pattern, every row has one.
  for (bool with_local : {false, true}) {
    for (bool causal : {false, true}) {
      DistCase c{std::string("r") + std::to_string(rate_not_dividing_shard()) + (with_local ? "+local" : "") +
                 (causal ? "/causal" : "")};
      c.B = 1;
      c.Hq = 5;
      c.Hkv = 5;
      c.patterns = {span_all(rate_not_dividing_shard())};
      if (with_local) c.patterns.push_back({16, 1});
      c.causal = causal;
      run_and_report(c);
    }
  }
}

// Rates that do not divide their segments (config.ragged_rates: class s keeps rows s, s + r, ... < w of each
// segment, classes of unequal length): local segments, segments spanning two ranks and all ranks (each rank's
// shard starts at a segment offset that is not a multiple of r), H % r != 0, GQA on the strided and per-head paths.
TEST(DilatedDistHost, RaggedRates) {
  for (bool causal : {false, true}) {
    DistCase c{std::string("ragged") + (causal ? "/causal" : "")};
    c.ragged = true;
    c.Hq = c.Hkv = 6;
    c.patterns = {{16, 1}, {24, 5}, span_two(7), span_all(5)};  // 24 | L; 5 and 7 divide none of 48P, 96
    c.causal = causal;
    run_and_report(c);
  }
  DistCase c{"ragged/gqa/alibi/causal"};
  c.ragged = true;
  c.B = 1;
  c.Hq = 6;
  c.Hkv = 3;                             // ratio 2: r = 10 strided kv heads, r = 3 one call per head
  c.patterns = {{16, 3}, span_all(10)};  // 16 mod 3 = 1; 48P mod 10 != 0; no rate-1 pattern: rows without keys
  c.causal = true;
  c.alibi = true;
  run_and_report(c);
}

TEST(DilatedDistHost, Fp32InputsCustomScaleMqa) {
  DistCase c{"fp32/mqa/scale"};
  c.dtype = DType::kFloat32;
  c.Hq = 4;
  c.Hkv = 1;
  c.D = 24;
  c.scale = 0.31f;
  c.causal = true;
  c.patterns = {{8, 2}, span_two(1), span_all(2)};
  run_and_report(c);
}

// The cases torchscale gets wrong, asserted on the exact rows: under causal, the FIRST kept row of a segment
// (global row g*w + s for class s) has exactly one key, itself. So O = v_row and LSE = scale * q.k there, on
// rank 0 and on the first rank of every later segment; dropping a rank's own block would give O = 0, LSE = -inf.
TEST(DilatedDistHost, CausalFirstRowOfEverySegmentAttendsToItself) {
  const int P = mpi_size(), p = mpi_rank();
  const int64_t L = kL, S = P * L, B = 1, H = 4, D = 16;
  for (const DilatedPattern pat : {span_two(1), span_all(1), span_all(2)}) {
    SCOPED_TRACE("pattern (" + std::to_string(pat.segment) + ", " + std::to_string(pat.rate) + ") rank " +
                 std::to_string(p));
    HostTensor Q(DType::kFloat64, B, S, H, D), K(DType::kFloat64, B, S, H, D), V(DType::kFloat64, B, S, H, D);
    fill_normal(Q, test_seed() + 11);
    fill_normal(K, test_seed() + 12);
    fill_normal(V, test_seed() + 13);
    MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
    DistributedDilatedConfig cfg;
    cfg.dilated.patterns = {pat};
    cfg.dilated.causal = true;
    cfg.seq_len = S;
    cfg.batch = B;
    cfg.q_heads = cfg.kv_heads = H;
    cfg.head_dim = D;
    cfg.dtype = DType::kFloat64;
    DistributedDilatedAttention dd(comm, cfg);
    HostTensor o(DType::kFloat64, B, L, H, D);
    fill_nan(o);
    std::vector<float> lse(static_cast<size_t>(B * H * L), std::nanf(""));
    dd.forward(rows_of(Q, p * L, L), rows_of(K, p * L, L), rows_of(V, p * L, L), o.view, lse.data());
    const int64_t G = std::max<int64_t>(1, pat.segment / L);
    if (p % G != 0) continue;  // only the first rank of a segment holds its first rows
    const double scale = double(float(1.0 / std::sqrt(double(D))));
    for (int64_t h = 0; h < H; ++h) {
      const int64_t l = h % pat.rate;  // the segment's first kept row of class h mod r (segment starts at row 0)
      double qk = 0;
      for (int64_t d = 0; d < D; ++d) qk += Q.get(0, p * L + l, h, d) * K.get(0, p * L + l, h, d);
      EXPECT_NEAR(lse[static_cast<size_t>(h * L + l)], scale * qk, 1e-5) << "head " << h << " local row " << l;
      for (int64_t d = 0; d < D; ++d)
        EXPECT_NEAR(o.get(0, l, h, d), V.get(0, p * L + l, h, d), 1e-6) << "head " << h << " d " << d;
    }
  }
}

// --- bad input: an Error on EVERY rank (no hang), naming the argument ---
DistributedDilatedConfig small_config(std::vector<DilatedPattern> pats) {
  DistributedDilatedConfig cfg;
  cfg.dilated.patterns = std::move(pats);
  cfg.seq_len = mpi_size() * kL;
  cfg.batch = 1;
  cfg.q_heads = cfg.kv_heads = 4;
  cfg.head_dim = 16;
  cfg.dtype = DType::kFloat64;
  return cfg;
}

void expect_construction_error(const DistributedDilatedConfig& cfg, const std::string& arg) {
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  EXPECT_ERROR_ARG(DistributedDilatedAttention dd(comm, cfg), arg);
  EXPECT_FALSE(comm.broken());
}

TEST(DilatedDistHost, BadSegmentOrRateIsAnErrorOnEveryRank) {
  const int P = mpi_size();
  const int64_t S = P * kL;
  expect_construction_error(small_config({{16, 1}, {S + 1, 1}}), "config.patterns[1].segment");  // w does not divide S
  expect_construction_error(small_config({{16, 1}, {S, 5}}), "config.patterns[1].rate");         // 5 does not divide S
  {  // ... unless ragged rates are asked for
    DistributedDilatedConfig cfg = small_config({{16, 1}, {S, 5}});
    cfg.dilated.ragged_rates = true;
    MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
    EXPECT_NO_THROW(DistributedDilatedAttention dd(comm, cfg));
  }
  if (P >= 2) {
    // w < L not dividing L: a segment would straddle two ranks (32 divides S = 96, 144, 192 but not 48).
    if (S % 32 == 0) expect_construction_error(small_config({{32, 1}}), "config.patterns[0].segment");
    if (P == 3) expect_construction_error(small_config({{36, 1}}), "config.patterns[0].segment");
    // w > L with L not dividing w (P = 3: 72; P = 4: 64).
    if (P == 3) expect_construction_error(small_config({{72, 2}}), "config.patterns[0].segment");
    if (P == 4) expect_construction_error(small_config({{64, 2}}), "config.patterns[0].segment");
  }
  // Rows kept by no pattern with error_if_query_without_key: a global property (row p of head h is kept by rate r
  // iff p mod r == h mod r), decided before any shard is touched.
  {
    DistributedDilatedConfig cfg = small_config({span_all(4)});
    cfg.dilated.error_if_query_without_key = true;
    expect_construction_error(cfg, "config.patterns");
    cfg.dilated.patterns.push_back({16, 1});  // now every row has a key: constructs
    MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
    EXPECT_NO_THROW(DistributedDilatedAttention dd(comm, cfg));
  }
  // S not divisible by P.
  if (P >= 2) {
    DistributedDilatedConfig cfg = small_config({{1, 1}});
    cfg.seq_len = P * kL + 1;
    expect_construction_error(cfg, "seq_len");
  }
}

TEST(DilatedDistHost, RanksDisagreeingOnPatternsIsAnErrorOnEveryRank) {
  if (mpi_size() < 2) GTEST_SKIP() << "needs two ranks";
  // Rank 0 has rate 2 where the others have 1: each is valid alone; the fingerprint catches it.
  DistributedDilatedConfig cfg = small_config({{16, mpi_rank() == 0 ? 2 : 1}, span_all(2)});
  expect_construction_error(cfg, "config.patterns");
  // Different ALiBi slopes on the last rank.
  DistributedDilatedConfig a = small_config({{16, 1}});
  a.dilated.alibi_slopes = {0.5f, 0.25f, 0.125f, mpi_rank() == mpi_size() - 1 ? 0.1f : 0.0625f};
  expect_construction_error(a, "config.alibi_slopes");
}

TEST(DilatedDistHost, BadShardOnOneRankIsAnErrorOnEveryRankAndWritesNothing) {
  const int P = mpi_size(), p = mpi_rank();
  const int64_t L = kL;
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  DistributedDilatedAttention dd(comm, small_config({{16, 1}, span_all(2)}));
  HostTensor q(DType::kFloat64, 1, L, 4, 16), k(DType::kFloat64, 1, L, 4, 16), v(DType::kFloat64, 1, L, 4, 16);
  HostTensor bad(DType::kFloat64, 1, L - 1, 4, 16);
  fill_normal(q, 1);
  fill_normal(k, 2);
  fill_normal(v, 3);
  fill_normal(bad, 4);
  HostTensor o(DType::kFloat64, 1, L, 4, 16);
  fill_nan(o);
  std::vector<float> lse(static_cast<size_t>(4 * L), std::nanf(""));
  const bool me_bad = p == P - 1;
  EXPECT_ERROR_ARG(dd.forward(q.view, me_bad ? bad.view : k.view, v.view, o.view, lse.data()), "k");
  for (float x : lse) EXPECT_TRUE(std::isnan(x)) << "lse written on bad input";
  EXPECT_TRUE(std::isnan(o.get(0, 0, 0, 0)));
  // fp32 q with an fp64 configuration on rank 0.
  HostTensor q32(DType::kFloat32, 1, L, 4, 16);
  fill_normal(q32, 5);
  EXPECT_ERROR_ARG(dd.forward(p == 0 ? q32.view : q.view, k.view, v.view, o.view, lse.data()), "q");
  EXPECT_FALSE(comm.broken());
  // Still usable afterwards.
  dd.forward(q.view, k.view, v.view, o.view, lse.data());
  EXPECT_FALSE(std::isnan(o.get(0, 0, 0, 0)));
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
