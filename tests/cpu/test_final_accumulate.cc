// The engine contract's final accumulate mode (attn_params.h: AttnParams::o_final) and the rule that rows whose
// running lse is -inf never read the accumulator, on the host engine:
//   - o_final equals the two-pass result (accumulate the last part into fp32, then round to q's dtype) value for
//     value, and the merged lse is the same float;
//   - the accumulator, poisoned with NaN where lse = -inf, gives the same result as one cleared to 0;
//   - rows where neither part sees a key get o_final = 0 and lse = -inf; rows where only earlier parts see keys
//     get the accumulator's value rounded;
//   - against the fp64 plain forward over all keys at once, to the output dtype's rounding;
//   - validation names o_final for every misuse.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../common/test_util.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"

namespace distattn {
namespace {

using testing::compare;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;
using testing::test_seed;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct FinalCase {
  int64_t B = 2, Sq = 19, Skv = 45, Hq = 4, Hkv = 2, D = 8;
  DType dtype = DType::kBFloat16;
  PositionMap q_pos, kv_pos;
  bool causal = true;
  int64_t window = 0;
  std::vector<float> slopes;  // empty: no ALiBi
  std::vector<int64_t> cuts;  // kv parts [cuts[i], cuts[i+1])
};

struct Run {
  HostTensor acc;          // fp32 accumulator [B, Sq, Hq, D] (padded strides)
  HostTensor out;          // o_final in q's dtype
  std::vector<float> lse;  // [B, Hq, Sq]
};

class FinalAccumulate {
 public:
  FinalAccumulate(const FinalCase& s, uint64_t seed) : s_(s) {
    q_ = HostTensor(s.dtype, s.B, s.Sq, s.Hq, s.D, 1, 2);
    k_ = HostTensor(s.dtype, s.B, s.Skv, s.Hkv, s.D, 0, 3);
    v_ = HostTensor(s.dtype, s.B, s.Skv, s.Hkv, s.D, 2, 0);
    fill_normal(q_, seed);
    fill_normal(k_, seed + 1);
    fill_normal(v_, seed + 2);
  }

  AttnParams part(size_t i, const TensorView& o, float* lse) const {
    AttnParams p;
    p.q = q_.view;
    p.k = k_.view.rows(s_.cuts[i], s_.cuts[i + 1]);
    p.v = v_.view.rows(s_.cuts[i], s_.cuts[i + 1]);
    p.o = o;
    p.lse = lse;
    p.q_pos = s_.q_pos;
    p.kv_pos = s_.kv_pos.slice(s_.cuts[i], s_.cuts[i + 1]);
    p.mask.causal = s_.causal;
    p.mask.window = s_.window;
    p.alibi_slopes = s_.slopes.empty() ? nullptr : s_.slopes.data();
    p.accumulate = true;
    return p;
  }

  // Every part in accumulate mode; `fused`: the last one with o_final. `poison`: the accumulator starts as NaN
  // (else 0); lse starts at -inf either way.
  Run run(bool fused, bool poison) const {
    Run r;
    r.acc = HostTensor(DType::kFloat32, s_.B, s_.Sq, s_.Hq, s_.D, 1, 3);
    r.out = HostTensor(s_.dtype, s_.B, s_.Sq, s_.Hq, s_.D, 3, 1);
    fill_nan(r.out);
    if (poison) {
      fill_nan(r.acc);
    } else {
      for (int64_t b = 0; b < s_.B; ++b)
        for (int64_t i = 0; i < s_.Sq; ++i)
          for (int64_t h = 0; h < s_.Hq; ++h)
            for (int64_t d = 0; d < s_.D; ++d) r.acc.set(b, i, h, d, 0.0);
    }
    r.lse.assign(static_cast<size_t>(s_.B * s_.Hq * s_.Sq), kNegInf);
    const size_t parts = s_.cuts.size() - 1;
    for (size_t i = 0; i < parts; ++i) {
      AttnParams p = part(i, r.acc.view, r.lse.data());
      if (fused && i + 1 == parts) p.o_final = r.out.view;
      host_attention_forward(p, HostPrecision::kFloat64);
    }
    return r;
  }

  // Plain fp64 forward over all keys at once: o [B, Sq, Hq, D] (fp32: the widest o the contract allows), lse.
  void reference(HostTensor* o, std::vector<float>* lse) const {
    *o = HostTensor(DType::kFloat32, s_.B, s_.Sq, s_.Hq, s_.D);
    lse->assign(static_cast<size_t>(s_.B * s_.Hq * s_.Sq), 0.f);
    AttnParams p;
    p.q = q_.view;
    p.k = k_.view;
    p.v = v_.view;
    p.o = o->view;
    p.lse = lse->data();
    p.q_pos = s_.q_pos;
    p.kv_pos = s_.kv_pos;
    p.mask.causal = s_.causal;
    p.mask.window = s_.window;
    p.alibi_slopes = s_.slopes.empty() ? nullptr : s_.slopes.data();
    host_attention_forward(p, HostPrecision::kFloat64);
  }

 private:
  FinalCase s_;
  HostTensor q_, k_, v_;
};

// Returns {rows with no key anywhere, rows whose last part is empty but an earlier one is not}.
std::pair<int64_t, int64_t> check_case(const FinalCase& s, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " dtype " << dtype_name(s.dtype));
  const FinalAccumulate fa(s, seed);
  const Run base = fa.run(/*fused=*/false, /*poison=*/false);  // the two-pass baseline (old contract: o = 0)
  const Run poisoned = fa.run(/*fused=*/false, /*poison=*/true);
  const Run fused = fa.run(/*fused=*/true, /*poison=*/true);
  HostTensor ref;
  std::vector<float> ref_lse;
  fa.reference(&ref, &ref_lse);

  // Where the last part alone sees nothing: its lse in isolation.
  const size_t last = s.cuts.size() - 2;
  HostTensor last_o(DType::kFloat32, s.B, s.Sq, s.Hq, s.D);
  std::vector<float> last_lse(base.lse.size());
  {
    AttnParams p = fa.part(last, last_o.view, last_lse.data());
    p.accumulate = false;
    host_attention_forward(p, HostPrecision::kFloat64);
  }

  int64_t empty = 0, last_empty = 0;
  double max_err = 0;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t i = 0; i < s.Sq; ++i) {
        const size_t n = static_cast<size_t>((b * s.Hq + h) * s.Sq + i);
        // The merged lse: the same float in all three runs, -inf exactly where the reference's is.
        EXPECT_EQ(std::isinf(base.lse[n]), std::isinf(ref_lse[n])) << "lse " << n;
        if (std::isfinite(base.lse[n])) {
          EXPECT_NEAR(base.lse[n], ref_lse[n], 4e-6 * std::max(1.f, std::fabs(ref_lse[n])));
          EXPECT_EQ(poisoned.lse[n], base.lse[n]) << "lse " << n;
          EXPECT_EQ(fused.lse[n], base.lse[n]) << "lse " << n;
        } else {
          ++empty;
          EXPECT_TRUE(std::isinf(poisoned.lse[n]) && poisoned.lse[n] < 0);
          EXPECT_TRUE(std::isinf(fused.lse[n]) && fused.lse[n] < 0);
        }
        if (std::isinf(last_lse[n]) && std::isfinite(base.lse[n])) ++last_empty;
        for (int64_t d = 0; d < s.D; ++d) {
          const double a = base.acc.get(b, i, h, d);
          // Two-pass: round the fp32 accumulator to q's dtype.
          HostTensor one(s.dtype, 1, 1, 1, 1);
          one.set(0, 0, 0, 0, a);
          const double two_pass = one.get(0, 0, 0, 0);
          const double got = fused.out.get(b, i, h, d);
          EXPECT_FALSE(std::isnan(got)) << "o_final unwritten or NaN at b=" << b << " i=" << i << " h=" << h;
          EXPECT_EQ(got, two_pass) << "b=" << b << " i=" << i << " h=" << h << " d=" << d;
          if (std::isinf(base.lse[n])) {
            EXPECT_EQ(got, 0.0) << "a row with no key anywhere must give 0";
          } else {
            // The poisoned accumulator was never read where lse was -inf: same value as the cleared one.
            EXPECT_EQ(poisoned.acc.get(b, i, h, d), a) << "b=" << b << " i=" << i << " h=" << h << " d=" << d;
          }
          max_err = std::max(max_err, std::fabs(got - ref.get(b, i, h, d)));
        }
      }
  // |O| <= max |v| ~ 4: bf16's half ulp at 4 is 2^-7 (fp16's 2^-9), plus the fp32 merges.
  EXPECT_LE(max_err, s.dtype == DType::kBFloat16 ? 1.6e-2 : 4e-3);
  return {empty, last_empty};
}

TEST(FinalAccumulate, WindowCausalGqaAlibiMatchesTwoPass) {
  // q at positions 30..48, window 6: the first kv part (0..14) is empty for every row, the last (30..44) sees most.
  FinalCase s;
  s.q_pos = PositionMap::contiguous(30, 19);
  s.kv_pos = PositionMap::contiguous(0, 45);
  s.window = 6;
  s.slopes = {0.3f, 0.2f, 0.1f, 0.05f};
  s.cuts = {0, 15, 30, 45};
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    s.dtype = t;
    check_case(s, test_seed() + 300);
  }
}

TEST(FinalAccumulate, LastPartEmptyAndRowsWithNoKey) {
  // Last part at positions 100..114: after every query (causal), so empty for all rows; window 10 leaves the late
  // q rows (pos > 39) with no key in any part: o_final 0, lse -inf; the others take the accumulator, rounded.
  FinalCase s;
  s.q_pos = PositionMap::contiguous(30, 19);
  s.kv_pos = PositionMap::contiguous(0, 30).add_chunk(100, 1, 15);
  s.window = 10;
  s.cuts = {0, 15, 30, 45};
  const auto [empty, last_empty] = check_case(s, test_seed() + 310);
  EXPECT_GT(empty, 0);       // the case has rows with no key at all
  EXPECT_GT(last_empty, 0);  // and rows only the earlier parts see
}

TEST(FinalAccumulate, SinglePartNonCausalOddSizes) {
  // One part: the final call merges into an untouched (NaN) accumulator: o_final = its own O rounded.
  FinalCase s;
  s.B = 1, s.Sq = 7, s.Skv = 13, s.Hq = 3, s.Hkv = 1, s.D = 6;
  s.q_pos = PositionMap::contiguous(0, 7);
  s.kv_pos = PositionMap::contiguous(0, 13);
  s.causal = false;
  s.cuts = {0, 13};
  s.dtype = DType::kFloat16;
  check_case(s, test_seed() + 320);
}

TEST(FinalAccumulate, FusedRunDoesNotWriteTheAccumulator) {
  FinalCase s;
  s.q_pos = PositionMap::contiguous(30, 19);
  s.kv_pos = PositionMap::contiguous(0, 45);
  s.cuts = {0, 20, 45};
  const FinalAccumulate fa(s, test_seed() + 330);
  // Accumulate the first part, snapshot the accumulator, run the last part in final mode: unchanged.
  HostTensor acc(DType::kFloat32, s.B, s.Sq, s.Hq, s.D, 1, 3);
  fill_nan(acc);
  std::vector<float> lse(static_cast<size_t>(s.B * s.Hq * s.Sq), kNegInf);
  host_attention_forward(fa.part(0, acc.view, lse.data()), HostPrecision::kFloat64);
  const HostTensor snapshot = acc;
  HostTensor out(s.dtype, s.B, s.Sq, s.Hq, s.D);
  fill_nan(out);
  AttnParams p = fa.part(1, acc.view, lse.data());
  p.o_final = out.view;
  host_attention_forward(p, HostPrecision::kFloat64);
  EXPECT_EQ(acc.storage, snapshot.storage);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t i = 0; i < s.Sq; ++i)
      for (int64_t h = 0; h < s.Hq; ++h)
        for (int64_t d = 0; d < s.D; ++d) ASSERT_TRUE(std::isfinite(out.get(b, i, h, d)));
}

TEST(FinalAccumulate, ValidationNamesOFinal) {
  FinalCase s;
  s.q_pos = PositionMap::contiguous(30, 19);
  s.kv_pos = PositionMap::contiguous(0, 45);
  s.cuts = {0, 45};
  const FinalAccumulate fa(s, test_seed() + 340);
  HostTensor acc(DType::kFloat32, s.B, s.Sq, s.Hq, s.D);
  std::vector<float> lse(static_cast<size_t>(s.B * s.Hq * s.Sq), kNegInf);
  HostTensor out(s.dtype, s.B, s.Sq, s.Hq, s.D);
  fill_nan(out);
  const std::vector<unsigned char> before = out.storage;
  {  // outside accumulate mode
    AttnParams p = fa.part(0, out.view, lse.data());
    p.accumulate = false;
    HostTensor other(s.dtype, s.B, s.Sq, s.Hq, s.D);
    p.o_final = other.view;
    EXPECT_ERROR_ARG(host_attention_forward(p, HostPrecision::kFloat64), "o_final");
  }
  {  // fp32 (not q's dtype)
    HostTensor f32(DType::kFloat32, s.B, s.Sq, s.Hq, s.D);
    AttnParams p = fa.part(0, acc.view, lse.data());
    p.o_final = f32.view;
    EXPECT_ERROR_ARG(host_attention_forward(p, HostPrecision::kFloat64), "o_final");
  }
  {  // shape of o differs
    HostTensor small(s.dtype, s.B, s.Sq - 1, s.Hq, s.D);
    AttnParams p = fa.part(0, acc.view, lse.data());
    p.o_final = small.view;
    EXPECT_ERROR_ARG(host_attention_forward(p, HostPrecision::kFloat64), "o_final");
  }
  {  // aliases o
    AttnParams p = fa.part(0, acc.view, lse.data());
    p.o_final = acc.view;
    p.o_final.dtype = s.dtype;
    EXPECT_ERROR_ARG(host_attention_forward(p, HostPrecision::kFloat64), "o_final");
  }
  {  // aliases q
    AttnParams p = fa.part(0, acc.view, lse.data());
    p.o_final = p.q;
    EXPECT_ERROR_ARG(host_attention_forward(p, HostPrecision::kFloat64), "o_final");
  }
  {  // stride 0 along an axis of size > 1
    AttnParams p = fa.part(0, acc.view, lse.data());
    p.o_final = out.view;
    p.o_final.stride[2] = 0;
    EXPECT_ERROR_ARG(host_attention_forward(p, HostPrecision::kFloat64), "o_final");
  }
  // Nothing was written by the rejected calls.
  EXPECT_EQ(out.storage, before);
  for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
}

}  // namespace
}  // namespace distattn
