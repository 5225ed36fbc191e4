// Host engine (core/host_engine.h) against an independent, deliberately simple implementation written
// here: an explicit visibility matrix built from positions, a dense softmax per row, no shared code with
// the engine beyond the tensor accessors. Then accumulate-mode merges, the backward against central finite
// differences, and the ordering of the reduced-precision modes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::compare;
using testing::compare_flat;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;
using testing::test_seed;

const double kInf = std::numeric_limits<double>::infinity();

// HostTensor's implicit copy keeps view.data pointing at the SOURCE's storage; this deep copy re-points it.
HostTensor clone(const HostTensor& t) {
  HostTensor c = t;
  c.view.data = c.storage.data();
  return c;
}

// ---------------------------------------------------------------------------------------------------
// Block list owned by the test, built from a dense matrix of block states (0: absent, 1: partial, 2: full).
struct TestBlocks {
  std::vector<int32_t> row_offset, col_index, col_offset, row_index;
  std::vector<uint8_t> row_partial, col_partial;
  std::vector<std::vector<int>> state;  // [nq][nkv]
  BlockListView view;

  TestBlocks(std::vector<std::vector<int>> st) : state(std::move(st)) {
    const int nq = static_cast<int>(state.size()), nkv = static_cast<int>(state[0].size());
    row_offset.push_back(0);
    for (int i = 0; i < nq; ++i) {
      for (int j = 0; j < nkv; ++j) {
        if (state[i][j] == 0) continue;
        col_index.push_back(j);
        row_partial.push_back(state[i][j] == 1);
      }
      row_offset.push_back(static_cast<int32_t>(col_index.size()));
    }
    col_offset.push_back(0);
    for (int j = 0; j < nkv; ++j) {
      for (int i = 0; i < nq; ++i) {
        if (state[i][j] == 0) continue;
        row_index.push_back(i);
        col_partial.push_back(state[i][j] == 1);
      }
      col_offset.push_back(static_cast<int32_t>(row_index.size()));
    }
    view.device = Device::kHost;
    view.num_q_blocks = nq;
    view.num_kv_blocks = nkv;
    view.nnz = static_cast<int64_t>(col_index.size());
    view.row_offset = row_offset.data();
    view.col_index = col_index.data();
    view.row_partial = row_partial.data();
    view.col_offset = col_offset.data();
    view.row_index = row_index.data();
    view.col_partial = col_partial.data();
  }
};

// One attention problem: its own tensors, positions, mask and slopes.
struct Problem {
  int64_t B = 1, Sq = 1, Skv = 1, Hq = 1, Hkv = 1, D = 8;
  DType dtype = DType::kFloat64;
  DType o_dtype = DType::kFloat64;
  int64_t head_pad = 0, row_pad = 0;  // non-trivial strides
  PositionMap q_pos, kv_pos;
  bool causal = false;
  int64_t window = 0;
  std::shared_ptr<TestBlocks> blocks;
  std::vector<float> slopes;  // empty: no ALiBi
  float softmax_scale = 0.f;

  HostTensor q, k, v, o;
  std::vector<float> lse;

  void make(uint64_t seed) {
    q = HostTensor(dtype, B, Sq, Hq, D, head_pad, row_pad);
    k = HostTensor(dtype, B, Skv, Hkv, D, head_pad, row_pad + 1);
    v = HostTensor(dtype, B, Skv, Hkv, D, head_pad + 1, row_pad);
    o = HostTensor(o_dtype, B, Sq, Hq, D, head_pad, row_pad);
    fill_normal(q, seed);
    fill_normal(k, seed + 1);
    fill_normal(v, seed + 2);
    fill_nan(o);
    lse.assign(static_cast<size_t>(B * Hq * Sq), std::nanf(""));
    if (q_pos.num_chunks == 0) q_pos = PositionMap::contiguous(0, Sq);
    if (kv_pos.num_chunks == 0) kv_pos = PositionMap::contiguous(0, Skv);
  }

  AttnParams params() {
    AttnParams p;
    p.q = q.view;
    p.k = k.view;
    p.v = v.view;
    p.o = o.view;
    p.lse = lse.data();
    p.q_pos = q_pos;
    p.kv_pos = kv_pos;
    p.mask.causal = causal;
    p.mask.window = window;
    p.mask.blocks = blocks ? &blocks->view : nullptr;
    p.alibi_slopes = slopes.empty() ? nullptr : slopes.data();
    p.softmax_scale = softmax_scale;
    return p;
  }
};

// Positions by walking the chunk definitions directly.
std::vector<int64_t> expand(const PositionMap& m) {
  std::vector<int64_t> pos;
  for (int c = 0; c < m.num_chunks; ++c)
    for (int64_t t = 0; t < m.chunks[c].length; ++t) pos.push_back(m.chunks[c].start + t * m.chunks[c].stride);
  return pos;
}

// Dense visibility matrix [Sq][Skv] from the definitions in mask.h.
std::vector<std::vector<bool>> visibility(const Problem& pr) {
  const std::vector<int64_t> pq = expand(pr.q_pos), pk = expand(pr.kv_pos);
  std::vector<std::vector<bool>> m(pr.Sq, std::vector<bool>(pr.Skv));
  for (int64_t i = 0; i < pr.Sq; ++i)
    for (int64_t j = 0; j < pr.Skv; ++j) {
      const int64_t d = pq[i] - pk[j];
      bool vis = true;
      if (pr.causal && d < 0) vis = false;
      if (pr.window > 0) {
        if (pr.causal && d >= pr.window) vis = false;
        if (!pr.causal && std::llabs(d) >= pr.window) vis = false;
      }
      if (pr.blocks) {
        const int st = pr.blocks->state[i / kLayoutBlock][j / kLayoutBlock];
        vis = st == 2 || (st == 1 && vis);
      }
      m[i][j] = vis;
    }
  return m;
}

// Reference forward in double: O [B][Sq][Hq][D] and LSE [B][Hq][Sq] in dense vectors.
struct RefOut {
  std::vector<double> o, lse;
  int64_t Sq, Hq, D;
  double O(int64_t b, int64_t i, int64_t h, int64_t d) const { return o[((b * Sq + i) * Hq + h) * D + d]; }
  double L(int64_t b, int64_t h, int64_t i) const { return lse[(b * Hq + h) * Sq + i]; }
};

RefOut reference_forward(const Problem& pr) {
  const auto vis = visibility(pr);
  const std::vector<int64_t> pq = expand(pr.q_pos), pk = expand(pr.kv_pos);
  // The contract's scale is a float: softmax_scale, or 1/sqrt(D) rounded to float.
  const double scale = pr.softmax_scale > 0 ? pr.softmax_scale : static_cast<float>(1.0 / std::sqrt(double(pr.D)));
  RefOut r;
  r.Sq = pr.Sq;
  r.Hq = pr.Hq;
  r.D = pr.D;
  r.o.assign(pr.B * pr.Sq * pr.Hq * pr.D, 0.0);
  r.lse.assign(pr.B * pr.Hq * pr.Sq, -kInf);
  for (int64_t b = 0; b < pr.B; ++b)
    for (int64_t h = 0; h < pr.Hq; ++h) {
      const int64_t hk = h / (pr.Hq / pr.Hkv);
      for (int64_t i = 0; i < pr.Sq; ++i) {
        std::vector<double> s(pr.Skv, -kInf);
        double mx = -kInf;
        for (int64_t j = 0; j < pr.Skv; ++j) {
          if (!vis[i][j]) continue;
          double acc = 0;
          for (int64_t d = 0; d < pr.D; ++d) acc += pr.q.get(b, i, h, d) * pr.k.get(b, j, hk, d);
          s[j] = scale * acc;
          if (!pr.slopes.empty()) s[j] -= static_cast<double>(pr.slopes[h]) * std::fabs(double(pq[i] - pk[j]));
          mx = std::max(mx, s[j]);
        }
        if (mx == -kInf) continue;  // no visible key: O = 0, LSE = -inf
        double sum = 0;
        for (int64_t j = 0; j < pr.Skv; ++j)
          if (vis[i][j]) sum += std::exp(s[j] - mx);
        r.lse[(b * pr.Hq + h) * pr.Sq + i] = mx + std::log(sum);
        for (int64_t j = 0; j < pr.Skv; ++j) {
          if (!vis[i][j]) continue;
          const double pij = std::exp(s[j] - mx) / sum;
          for (int64_t d = 0; d < pr.D; ++d)
            r.o[((b * pr.Sq + i) * pr.Hq + h) * pr.D + d] += pij * pr.v.get(b, j, hk, d);
        }
      }
    }
  return r;
}

// Compares the engine's o/lse (in Problem) with the reference; returns the number of rows with no key.
int64_t expect_matches_reference(const Problem& pr, const RefOut& ref, double tol) {
  int64_t empty_rows = 0;
  double max_err = 0, max_lse_err = 0;
  for (int64_t b = 0; b < pr.B; ++b)
    for (int64_t h = 0; h < pr.Hq; ++h)
      for (int64_t i = 0; i < pr.Sq; ++i) {
        const double lr = ref.L(b, h, i);
        const double lg = pr.lse[(b * pr.Hq + h) * pr.Sq + i];
        if (std::isinf(lr)) {
          ++empty_rows;
          EXPECT_TRUE(std::isinf(lg) && lg < 0) << "row b=" << b << " h=" << h << " i=" << i << " lse " << lg;
        } else {
          EXPECT_TRUE(std::isfinite(lg)) << "row b=" << b << " h=" << h << " i=" << i;
          max_lse_err = std::max(max_lse_err, std::fabs(lg - lr));
        }
        for (int64_t d = 0; d < pr.D; ++d) {
          const double g = pr.o.get(b, i, h, d), r = ref.O(b, i, h, d);
          if (std::isnan(g)) {
            ADD_FAILURE() << "unwritten o at b=" << b << " i=" << i << " h=" << h << " d=" << d;
            return -1;
          }
          if (std::isinf(lr)) {
            EXPECT_EQ(g, 0.0) << "row with no visible key must be 0";
          }
          max_err = std::max(max_err, std::fabs(g - r));
        }
      }
  EXPECT_LE(max_err, tol);
  EXPECT_LE(max_lse_err, 4e-6);  // lse is fp32: half an ulp of values of order 10
  return empty_rows;
}

int64_t run_and_check(Problem& pr, uint64_t seed, double tol = 1e-12) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  pr.make(seed);
  host_attention_forward(pr.params(), HostPrecision::kFloat64);
  return expect_matches_reference(pr, reference_forward(pr), tol);
}

// ---------------------------------------------------------------------------------------------------
// (a) forward, fp64, against the reference

TEST(HostForward, DenseNoMaskOddSizes) {
  Problem pr;
  pr.B = 2, pr.Sq = 37, pr.Skv = 53, pr.Hq = 3, pr.Hkv = 3, pr.D = 13;
  EXPECT_EQ(run_and_check(pr, test_seed()), 0);
}

TEST(HostForward, CausalWithOffsetsAndEmptyRows) {
  // q rows at positions 10..46, kv rows at 20..72: the first 10 q rows see nothing.
  Problem pr;
  pr.Sq = 37, pr.Skv = 53, pr.Hq = 2, pr.Hkv = 1, pr.D = 16;
  pr.q_pos = PositionMap::contiguous(10, 37);
  pr.kv_pos = PositionMap::contiguous(20, 53);
  pr.causal = true;
  EXPECT_EQ(run_and_check(pr, test_seed() + 10), 2 * 10);
}

TEST(HostForward, CausalWindowZigzagGqa) {
  // Zigzag shard of rank 1 of 4 (8 chunks of 9): chunks 1 and 6; kv: the whole sequence with a gap.
  Problem pr;
  pr.B = 2, pr.Sq = 18, pr.Skv = 45, pr.Hq = 4, pr.Hkv = 2, pr.D = 8;
  pr.q_pos = PositionMap::contiguous(9, 9).add_chunk(54, 1, 9);
  pr.kv_pos = PositionMap::contiguous(0, 27).add_chunk(50, 1, 18);
  pr.causal = true;
  pr.window = 7;
  pr.head_pad = 3, pr.row_pad = 5;
  run_and_check(pr, test_seed() + 20);
}

TEST(HostForward, NonCausalWindowStridedMqa) {
  Problem pr;
  pr.Sq = 29, pr.Skv = 31, pr.Hq = 5, pr.Hkv = 1, pr.D = 7;
  pr.q_pos = PositionMap::strided(3, 4, 29);  // a dilated view: offset 3, rate 4
  pr.kv_pos = PositionMap::strided(1, 3, 31);
  pr.window = 10;
  pr.row_pad = 2;
  EXPECT_GT(run_and_check(pr, test_seed() + 30), -1);
}

TEST(HostForward, AlibiCausalAndNonCausal) {
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "non-causal");
    Problem pr;
    pr.Sq = 23, pr.Skv = 41, pr.Hq = 4, pr.Hkv = 2, pr.D = 16;
    pr.q_pos = PositionMap::contiguous(100, 23);
    pr.kv_pos = PositionMap::contiguous(90, 20).add_chunk(130, 2, 21);
    pr.causal = causal;
    pr.slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
    pr.softmax_scale = 0.3f;
    run_and_check(pr, test_seed() + 40);
  }
}

TEST(HostForward, BlockListFullAndPartial) {
  // 3 x 3 blocks of 128 (last ones ragged): full, partial (with a causal + window mask) and absent blocks,
  // and a q block whose row lists nothing (all its rows see nothing).
  Problem pr;
  pr.Sq = 300, pr.Skv = 290, pr.Hq = 2, pr.Hkv = 1, pr.D = 8;
  pr.q_pos = PositionMap::contiguous(5, 300);
  pr.kv_pos = PositionMap::contiguous(0, 290);
  pr.causal = true;
  pr.window = 150;
  pr.blocks = std::make_shared<TestBlocks>(std::vector<std::vector<int>>{{1, 0, 2}, {0, 0, 0}, {2, 1, 1}});
  // q block 1 (rows 128..255) lists nothing: 128 empty rows per head.
  EXPECT_EQ(run_and_check(pr, test_seed() + 50), 2 * 128);
}

TEST(HostForward, MixedDtypesMatchFp64OfRoundedInputs) {
  // bf16 inputs and an fp32 output: the fp64 engine computes in double on the bf16 values.
  Problem pr;
  pr.Sq = 19, pr.Skv = 21, pr.Hq = 2, pr.Hkv = 2, pr.D = 8;
  pr.dtype = DType::kBFloat16;
  pr.o_dtype = DType::kFloat32;
  pr.causal = true;
  run_and_check(pr, test_seed() + 60, 1e-6);
}

TEST(HostForward, PlainModeWithoutLse) {
  Problem pr;
  pr.Sq = 11, pr.Skv = 13, pr.D = 4;
  const uint64_t seed = test_seed() + 70;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  pr.make(seed);
  AttnParams p = pr.params();
  p.lse = nullptr;
  host_attention_forward(p);
  const RefOut ref = reference_forward(pr);
  for (int64_t i = 0; i < pr.Sq; ++i)
    for (int64_t d = 0; d < pr.D; ++d) EXPECT_NEAR(pr.o.get(0, i, 0, d), ref.O(0, i, 0, d), 1e-12);
  for (float l : pr.lse) EXPECT_TRUE(std::isnan(l));  // not written
}

// ---------------------------------------------------------------------------------------------------
// (b) accumulate mode: the kv rows split into parts, merged into an fp32 accumulator.

void check_accumulate(Problem& pr, const std::vector<int64_t>& cuts, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  pr.o_dtype = DType::kFloat32;
  pr.make(seed);
  const RefOut ref = reference_forward(pr);

  // Accumulator starts at o = 0, lse = -inf.
  HostTensor acc(DType::kFloat32, pr.B, pr.Sq, pr.Hq, pr.D, 1, 3);
  for (int64_t b = 0; b < pr.B; ++b)
    for (int64_t i = 0; i < pr.Sq; ++i)
      for (int64_t h = 0; h < pr.Hq; ++h)
        for (int64_t d = 0; d < pr.D; ++d) acc.set(b, i, h, d, 0.0);
  std::vector<float> acc_lse(pr.lse.size(), -std::numeric_limits<float>::infinity());
  for (size_t part = 0; part + 1 < cuts.size(); ++part) {
    AttnParams p = pr.params();
    p.k = pr.k.view.rows(cuts[part], cuts[part + 1]);
    p.v = pr.v.view.rows(cuts[part], cuts[part + 1]);
    p.kv_pos = pr.kv_pos.slice(cuts[part], cuts[part + 1]);
    p.o = acc.view;
    p.lse = acc_lse.data();
    p.accumulate = true;
    host_attention_forward(p, HostPrecision::kFloat64);
  }
  int64_t empty = 0;
  double max_err = 0;
  for (int64_t b = 0; b < pr.B; ++b)
    for (int64_t h = 0; h < pr.Hq; ++h)
      for (int64_t i = 0; i < pr.Sq; ++i) {
        const double lr = ref.L(b, h, i), lg = acc_lse[(b * pr.Hq + h) * pr.Sq + i];
        if (std::isinf(lr)) {
          ++empty;
          EXPECT_TRUE(std::isinf(lg) && lg < 0);
        } else {
          EXPECT_NEAR(lg, lr, 4e-6 * std::max(1.0, std::fabs(lr)));
        }
        for (int64_t d = 0; d < pr.D; ++d)
          max_err = std::max(max_err, std::fabs(acc.get(b, i, h, d) - ref.O(b, i, h, d)));
      }
  // The accumulator is fp32 (the contract): each merge rounds to float, so agreement is to fp32 rounding.
  EXPECT_LE(max_err, 2e-6);
  EXPECT_GT(empty, -1);
}

TEST(HostForwardAccumulate, ThreePartsCausalZigzagWithEmptyParts) {
  // Zigzag kv positions; q rows at 40..60. The last part's positions (>= 70) are after every query:
  // under the causal mask it is empty for all rows, and for the early q rows the middle part is too.
  Problem pr;
  pr.B = 2, pr.Sq = 21, pr.Skv = 60, pr.Hq = 4, pr.Hkv = 2, pr.D = 8;
  pr.q_pos = PositionMap::contiguous(40, 21);
  pr.kv_pos = PositionMap::contiguous(0, 20).add_chunk(45, 1, 20).add_chunk(70, 1, 20);
  pr.causal = true;
  pr.slopes = {0.3f, 0.2f, 0.1f, 0.05f};
  check_accumulate(pr, {0, 20, 40, 60}, test_seed() + 100);
}

TEST(HostForwardAccumulate, TwoPartsWindowRowsSeeingNothingAtAll) {
  // Window 4, q positions 100.. far beyond the kv rows of the first part; some q rows see nothing anywhere.
  Problem pr;
  pr.Sq = 17, pr.Skv = 30, pr.Hq = 2, pr.Hkv = 1, pr.D = 5;
  pr.q_pos = PositionMap::contiguous(100, 17);
  pr.kv_pos = PositionMap::contiguous(0, 15).add_chunk(95, 1, 15);
  pr.causal = true;
  pr.window = 4;
  check_accumulate(pr, {0, 15, 30}, test_seed() + 110);
}

TEST(HostForwardAccumulate, NonCausalDenseThreeUnevenParts) {
  Problem pr;
  pr.Sq = 13, pr.Skv = 31, pr.Hq = 3, pr.Hkv = 3, pr.D = 6;
  check_accumulate(pr, {0, 1, 17, 31}, test_seed() + 120);
}

// ---------------------------------------------------------------------------------------------------
// (c) backward, fp64, against central finite differences of L = sum(dO * O).

struct BwdCase {
  Problem pr;
  HostTensor dout, dq, dk, dv;
};

double loss(Problem& pr, const HostTensor& dout) {
  host_attention_forward(pr.params(), HostPrecision::kFloat64);
  double l = 0;
  for (int64_t b = 0; b < pr.B; ++b)
    for (int64_t i = 0; i < pr.Sq; ++i)
      for (int64_t h = 0; h < pr.Hq; ++h)
        for (int64_t d = 0; d < pr.D; ++d) l += dout.get(b, i, h, d) * pr.o.get(b, i, h, d);
  return l;
}

AttnBwdParams bwd_params(BwdCase& c) {
  AttnBwdParams bp;
  bp.fwd = c.pr.params();
  bp.dout = c.dout.view;
  bp.dq = c.dq.view;
  bp.dk = c.dk.view;
  bp.dv = c.dv.view;
  return bp;
}

void setup_bwd(BwdCase& c, uint64_t seed, DType grad_dtype = DType::kFloat64) {
  Problem& pr = c.pr;
  pr.make(seed);
  c.dout = HostTensor(pr.dtype, pr.B, pr.Sq, pr.Hq, pr.D, 0, 1);
  fill_normal(c.dout, seed + 7);
  c.dq = HostTensor(grad_dtype, pr.B, pr.Sq, pr.Hq, pr.D, 1, 0);
  c.dk = HostTensor(grad_dtype, pr.B, pr.Skv, pr.Hkv, pr.D, 0, 2);
  c.dv = HostTensor(grad_dtype, pr.B, pr.Skv, pr.Hkv, pr.D, 2, 0);
  fill_nan(c.dq);
  fill_nan(c.dk);
  fill_nan(c.dv);
  host_attention_forward(pr.params(), HostPrecision::kFloat64);  // the complete forward's O and LSE
}

// Checks every entry of `grad` against (L(x+e) - L(x-e)) / 2e for the matching entry of `x`.
// The floor is the contract's fp32 LSE: P = exp(S - LSE) carries a relative error of ~|LSE| * 2^-24
// (measured ~1e-7 here, against ~1e-10 for the difference quotient itself), hence the 1e-6 bound.
void check_fd(BwdCase& c, HostTensor& x, const HostTensor& grad, const char* name) {
  SCOPED_TRACE(name);
  const double eps = 1e-5;
  double err2 = 0, ref2 = 0, max_err = 0;
  const auto& s = x.view.shape;
  for (int64_t b = 0; b < s[0]; ++b)
    for (int64_t i = 0; i < s[1]; ++i)
      for (int64_t h = 0; h < s[2]; ++h)
        for (int64_t d = 0; d < s[3]; ++d) {
          const double x0 = x.get(b, i, h, d);
          x.set(b, i, h, d, x0 + eps);
          const double lp = loss(c.pr, c.dout);
          x.set(b, i, h, d, x0 - eps);
          const double lm = loss(c.pr, c.dout);
          x.set(b, i, h, d, x0);
          const double fd = (lp - lm) / (2 * eps), g = grad.get(b, i, h, d);
          ASSERT_TRUE(std::isfinite(g)) << name << " unwritten at " << b << "," << i << "," << h << "," << d;
          err2 += (g - fd) * (g - fd);
          ref2 += fd * fd;
          max_err = std::max(max_err, std::fabs(g - fd));
        }
  EXPECT_GT(ref2, 0.0);
  EXPECT_LE(std::sqrt(err2 / ref2), 1e-6) << "max abs error " << max_err;
  EXPECT_LE(max_err, 1e-6 * std::max(1.0, std::sqrt(ref2)));
}

void run_fd(BwdCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  setup_bwd(c, seed);
  host_attention_backward(bwd_params(c), HostPrecision::kFloat64);
  check_fd(c, c.pr.q, c.dq, "dq");
  check_fd(c, c.pr.k, c.dk, "dk");
  check_fd(c, c.pr.v, c.dv, "dv");
}

TEST(HostBackward, FiniteDifferencesCausalGqaAlibiOffsets) {
  BwdCase c;
  Problem& pr = c.pr;
  pr.Sq = 7, pr.Skv = 9, pr.Hq = 4, pr.Hkv = 2, pr.D = 5;
  pr.q_pos = PositionMap::contiguous(3, 4).add_chunk(12, 1, 3);  // zigzag-like; rows 0..1 see nothing
  pr.kv_pos = PositionMap::contiguous(5, 9);
  pr.causal = true;
  pr.slopes = {0.5f, 0.25f, 0.2f, 0.1f};
  pr.row_pad = 1;
  run_fd(c, test_seed() + 200);
}

TEST(HostBackward, FiniteDifferencesNonCausalWindowMqaBatch) {
  BwdCase c;
  Problem& pr = c.pr;
  pr.B = 2, pr.Sq = 6, pr.Skv = 8, pr.Hq = 3, pr.Hkv = 1, pr.D = 4;
  pr.q_pos = PositionMap::strided(2, 2, 6);
  pr.kv_pos = PositionMap::contiguous(0, 8);
  pr.window = 3;
  pr.slopes = {0.3f, 0.2f, 0.1f};
  pr.softmax_scale = 0.7f;
  run_fd(c, test_seed() + 210);
}

TEST(HostBackward, FiniteDifferencesBlockList) {
  // Two q blocks x two kv blocks (130 rows: the second block has 2 rows): full, partial and absent blocks.
  BwdCase c;
  Problem& pr = c.pr;
  pr.Sq = 130, pr.Skv = 131, pr.Hq = 1, pr.Hkv = 1, pr.D = 2;
  pr.causal = true;
  pr.blocks = std::make_shared<TestBlocks>(std::vector<std::vector<int>>{{1, 0}, {2, 1}});
  run_fd(c, test_seed() + 220);
}

TEST(HostBackward, GivenDeltaMatchesComputedAndEmptyRowsGiveZero) {
  BwdCase c;
  Problem& pr = c.pr;
  pr.Sq = 9, pr.Skv = 10, pr.Hq = 2, pr.Hkv = 1, pr.D = 6;
  pr.q_pos = PositionMap::contiguous(0, 9);
  pr.kv_pos = PositionMap::contiguous(4, 10);  // q rows 0..3 see nothing under causal
  pr.causal = true;
  const uint64_t seed = test_seed() + 230;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  setup_bwd(c, seed);
  host_attention_backward(bwd_params(c));
  const HostTensor dq1 = clone(c.dq), dk1 = clone(c.dk), dv1 = clone(c.dv);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t d = 0; d < pr.D; ++d) EXPECT_EQ(c.dq.get(0, i, h, d), 0.0);

  std::vector<float> delta(pr.lse.size());
  for (int64_t h = 0; h < pr.Hq; ++h)
    for (int64_t i = 0; i < pr.Sq; ++i) {
      double s = 0;
      for (int64_t d = 0; d < pr.D; ++d) s += c.dout.get(0, i, h, d) * pr.o.get(0, i, h, d);
      delta[h * pr.Sq + i] = static_cast<float>(s);
    }
  fill_nan(c.dq);
  fill_nan(c.dk);
  fill_nan(c.dv);
  AttnBwdParams bp = bwd_params(c);
  bp.delta = delta.data();
  host_attention_backward(bp);
  EXPECT_LE(compare(c.dq.view, dq1.view).max_abs, 1e-6);  // delta given in fp32
  EXPECT_LE(compare(c.dk.view, dk1.view).max_abs, 1e-6);
  EXPECT_LE(compare(c.dv.view, dv1.view).max_abs, 1e-12);  // dV does not depend on delta
  EXPECT_EQ(compare(c.dq.view, dq1.view).non_finite, 0);
}

// ---------------------------------------------------------------------------------------------------
// (d) backward accumulate mode adds into fp32 gradients.

TEST(HostBackward, AccumulateAddsTwice) {
  BwdCase c;
  Problem& pr = c.pr;
  pr.Sq = 11, pr.Skv = 14, pr.Hq = 4, pr.Hkv = 2, pr.D = 8;
  pr.causal = true;
  pr.kv_pos = PositionMap::contiguous(0, 7).add_chunk(20, 1, 7);
  pr.q_pos = PositionMap::contiguous(5, 11);
  const uint64_t seed = test_seed() + 300;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  setup_bwd(c, seed, DType::kFloat32);
  host_attention_backward(bwd_params(c));  // plain: G
  const HostTensor g_q = clone(c.dq), g_k = clone(c.dk), g_v = clone(c.dv);

  // Start from random values R and accumulate twice: R + 2G.
  fill_normal(c.dq, seed + 1);
  fill_normal(c.dk, seed + 2);
  fill_normal(c.dv, seed + 3);
  const HostTensor r_q = clone(c.dq), r_k = clone(c.dk), r_v = clone(c.dv);
  AttnBwdParams bp = bwd_params(c);
  bp.accumulate = true;
  host_attention_backward(bp);
  host_attention_backward(bp);
  const struct {
    const HostTensor *got, *r, *g;
  } sets[3] = {{&c.dq, &r_q, &g_q}, {&c.dk, &r_k, &g_k}, {&c.dv, &r_v, &g_v}};
  for (const auto& s : sets) {
    const auto& sh = s.got->view.shape;
    double max_err = 0, max_g = 0;
    for (int64_t b = 0; b < sh[0]; ++b)
      for (int64_t i = 0; i < sh[1]; ++i)
        for (int64_t h = 0; h < sh[2]; ++h)
          for (int64_t d = 0; d < sh[3]; ++d) {
            const double want = s.r->get(b, i, h, d) + 2 * s.g->get(b, i, h, d);
            max_err = std::max(max_err, std::fabs(s.got->get(b, i, h, d) - want));
            max_g = std::max(max_g, std::fabs(s.g->get(b, i, h, d)));
          }
    EXPECT_GT(max_g, 0.1);
    EXPECT_LE(max_err, 1e-5);
  }
}

// ---------------------------------------------------------------------------------------------------
// (e) reduced precisions: error against fp64 small but non-zero, and fp32 < rounded intermediates.

struct PrecisionErrors {
  double o_f32, o_round, dq_f32, dq_round, dk_f32, dk_round, dv_f32, dv_round;
};

PrecisionErrors precision_errors(DType dtype, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " dtype " << dtype_name(dtype));
  BwdCase c;
  Problem& pr = c.pr;
  pr.Sq = 97, pr.Skv = 113, pr.Hq = 2, pr.Hkv = 1, pr.D = 32;
  pr.dtype = dtype;
  pr.o_dtype = DType::kFloat32;
  pr.q_pos = PositionMap::contiguous(20, 97);
  pr.causal = true;
  pr.slopes = {0.1f, 0.05f};
  setup_bwd(c, seed, DType::kFloat32);  // fp64 forward into fp32 o
  host_attention_backward(bwd_params(c), HostPrecision::kFloat64);
  const HostTensor o64 = clone(pr.o), dq64 = clone(c.dq), dk64 = clone(c.dk), dv64 = clone(c.dv);

  auto run = [&](HostPrecision prec, double* eo, double* edq, double* edk, double* edv) {
    fill_nan(pr.o);
    host_attention_forward(pr.params(), prec);
    *eo = compare(pr.o.view, o64.view).rel_l2;
    EXPECT_EQ(compare(pr.o.view, o64.view).non_finite, 0);
    // The backward takes the reference O and LSE so only its own arithmetic differs.
    pr.o = clone(o64);
    host_attention_forward(pr.params(), HostPrecision::kFloat64);
    fill_nan(c.dq);
    fill_nan(c.dk);
    fill_nan(c.dv);
    host_attention_backward(bwd_params(c), prec);
    *edq = compare(c.dq.view, dq64.view).rel_l2;
    *edk = compare(c.dk.view, dk64.view).rel_l2;
    *edv = compare(c.dv.view, dv64.view).rel_l2;
    EXPECT_EQ(compare(c.dq.view, dq64.view).non_finite, 0);
  };
  PrecisionErrors e{};
  run(HostPrecision::kFloat32, &e.o_f32, &e.dq_f32, &e.dk_f32, &e.dv_f32);
  run(HostPrecision::kRoundIntermediates, &e.o_round, &e.dq_round, &e.dk_round, &e.dv_round);
  std::printf("%s rel_l2 vs fp64: fp32 o %.2e dq %.2e dk %.2e dv %.2e | rounded o %.2e dq %.2e dk %.2e dv %.2e\n",
              dtype_name(dtype), e.o_f32, e.dq_f32, e.dk_f32, e.dv_f32, e.o_round, e.dq_round, e.dk_round, e.dv_round);
  return e;
}

// The order every reduced dtype must show: fp32 accumulation (rounding of float sums only) errs in (0, 1e-5), the
// dtype's rounded intermediates in (round_lo, round_hi), and each fp32 error is at least 10x below the rounded one.
void expect_errors_ordered(const PrecisionErrors& e, double round_lo, double round_hi) {
  for (double x : {e.o_f32, e.dq_f32, e.dk_f32, e.dv_f32}) {
    EXPECT_GT(x, 0.0);
    EXPECT_LT(x, 1e-5);
  }
  for (double x : {e.o_round, e.dq_round, e.dk_round, e.dv_round}) {
    EXPECT_GT(x, round_lo);
    EXPECT_LT(x, round_hi);
  }
  EXPECT_LT(e.o_f32 * 10, e.o_round);
  EXPECT_LT(e.dq_f32 * 10, e.dq_round);
  EXPECT_LT(e.dk_f32 * 10, e.dk_round);
  EXPECT_LT(e.dv_f32 * 10, e.dv_round);
}

TEST(HostPrecisionModes, Bf16ErrorsOrdered) {
  // bf16 intermediates (8-bit mantissa): errors of order 2^-9 .. a few percent.
  expect_errors_ordered(precision_errors(DType::kBFloat16, test_seed() + 400), 1e-4, 5e-2);
}

TEST(HostPrecisionModes, Fp16ErrorsOrdered) {
  // fp16 (11-bit mantissa): about 8x smaller than bf16.
  expect_errors_ordered(precision_errors(DType::kFloat16, test_seed() + 410), 1e-5, 1e-2);
}

}  // namespace
}  // namespace distattn

namespace distattn {
namespace {

// ---------------------------------------------------------------------------------------------------
// Threads: units are independent, and the backward's fused and split schedules accumulate every sum in
// the same order, so any thread count gives the same numbers (to the last bit, unless the compiler
// contracts multiply-adds differently at the two sites: hence a 1e-13 bound rather than equality).

struct ScopedEnv {
  std::string name;
  ScopedEnv(const char* n, const char* value) : name(n) { setenv(n, value, 1); }
  ~ScopedEnv() { unsetenv(name.c_str()); }
};

void check_thread_invariance(BwdCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Problem& pr = c.pr;
  std::vector<HostTensor> outs;
  std::vector<std::vector<float>> lses;
  for (const char* threads : {"1", "3"}) {
    ScopedEnv env("DISTATTN_HOST_THREADS", threads);
    setup_bwd(c, seed);  // runs the forward
    host_attention_backward(bwd_params(c));
    outs.push_back(clone(pr.o));
    outs.push_back(clone(c.dq));
    outs.push_back(clone(c.dk));
    outs.push_back(clone(c.dv));
    lses.push_back(pr.lse);
  }
  for (int t = 0; t < 4; ++t) {
    const testing::ErrorStats st = compare(outs[t].view, outs[t + 4].view);
    EXPECT_LE(st.max_abs, 1e-13) << "tensor " << t;
    EXPECT_EQ(st.non_finite, 0) << "tensor " << t;
  }
  EXPECT_EQ(std::memcmp(lses[0].data(), lses[1].data(), lses[0].size() * sizeof(float)), 0);
}

TEST(HostThreads, FusedBackwardSchedule) {
  // B * Hkv = 4 units >= 3 threads: the fused backward, threaded. ~1.3e7 multiply-adds: above the threshold.
  BwdCase c;
  Problem& pr = c.pr;
  pr.B = 2, pr.Sq = 200, pr.Skv = 260, pr.Hq = 4, pr.Hkv = 2, pr.D = 32;
  pr.causal = true;
  pr.q_pos = PositionMap::contiguous(60, 200);
  pr.slopes = {0.1f, 0.2f, 0.3f, 0.4f};
  check_thread_invariance(c, test_seed() + 500);
}

TEST(HostThreads, SplitBackwardScheduleMqa) {
  // MQA, batch 1: one kv head, fewer units than threads: the split backward (dK/dV by kv chunks, dQ by
  // q chunks) against the fused one on 1 thread. A window and ALiBi make the chunks' row lists uneven.
  BwdCase c;
  Problem& pr = c.pr;
  pr.B = 1, pr.Sq = 201, pr.Skv = 263, pr.Hq = 3, pr.Hkv = 1, pr.D = 64;
  pr.window = 90;
  pr.q_pos = PositionMap::contiguous(60, 100).add_chunk(300, 1, 101);
  pr.slopes = {0.1f, 0.2f, 0.3f};
  check_thread_invariance(c, test_seed() + 510);
}

}  // namespace
}  // namespace distattn
