// bench/host_reference: the check's fp64 and naive references, exercised on the CPU with the naive run on
// (in distattn_bench that branch runs only on a GPU machine).
#include <gtest/gtest.h>

#include <cmath>

#include "distattn/core/host_engine.h"
#include "host_reference.h"

namespace distattn {
namespace bench {
namespace {

AttnParams causal_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         float* lse) {
  AttnParams p;
  p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse;
  p.q_pos = PositionMap::contiguous(100, q.shape[1]);
  p.kv_pos = PositionMap::contiguous(100, k.shape[1]);
  p.mask = Mask::make_causal();
  return p;
}

bool all_finite(const TensorView& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(load_as_double(t.data, i, t.dtype))) return false;
  return true;
}

TEST(BenchReference, ForwardBackwardWithNaiveMatchTheEngineAndWriteEverything) {
  const int64_t B = 1, S = 70, Hc = 4, Kc = 2, D = 16;
  HostTensor q(DType::kBFloat16, B, S, Hc, D), k(DType::kBFloat16, B, S, Kc, D), v(DType::kBFloat16, B, S, Kc, D),
      dout(DType::kBFloat16, B, S, Hc, D);
  fill_random_host(q, 11), fill_random_host(k, 12), fill_random_host(v, 13), fill_random_host(dout, 14);

  const HostReferences r = compute_host_references(q.view, k.view, v.view, &dout.view, true, causal_params);

  // The fp64 reference is exactly the engine run with the caller's params (mask and positions passed through).
  HostTensor q64 = convert(q.view, DType::kFloat64), k64 = convert(k.view, DType::kFloat64),
             v64 = convert(v.view, DType::kFloat64), o64(DType::kFloat64, B, S, Hc, D);
  std::vector<float> lse64(static_cast<size_t>(B * Hc * S));
  host_attention_forward(causal_params(q64.view, k64.view, v64.view, o64.view, lse64.data()), HostPrecision::kFloat64);
  EXPECT_EQ(max_abs_diff(r.o.view, o64.view), 0.0);
  EXPECT_EQ(max_abs_diff(lse_view(const_cast<float*>(r.lse.data()), B, S, Hc), lse_view(lse64.data(), B, S, Hc)), 0.0);

  // Every output written, in the right shapes; the naive run differs from fp64 by bf16 rounding, not more.
  for (const HostTensor* t : {&r.o, &r.naive_o, &r.dq, &r.dk, &r.dv, &r.naive_dq, &r.naive_dk, &r.naive_dv})
    EXPECT_TRUE(all_finite(t->view));
  EXPECT_EQ(r.dk.view.shape[2], Kc);
  EXPECT_EQ(r.naive_dv.view.shape[2], Kc);
  EXPECT_EQ(r.naive_o.view.dtype, DType::kBFloat16);
  for (auto pair : {std::make_pair(&r.naive_o, &r.o), std::make_pair(&r.naive_dq, &r.dq),
                    std::make_pair(&r.naive_dk, &r.dk), std::make_pair(&r.naive_dv, &r.dv)}) {
    const double err = max_abs_diff(pair.first->view, pair.second->view);
    EXPECT_GT(err, 0.0);
    EXPECT_LT(err, 0.1 * std::max(1.0, max_abs(pair.second->view)));
  }
}

TEST(BenchReference, ForwardOnlyWithoutNaiveLeavesTheRestEmpty) {
  HostTensor q(DType::kFloat16, 2, 33, 2, 8), k(DType::kFloat16, 2, 33, 1, 8), v(DType::kFloat16, 2, 33, 1, 8);
  fill_random_host(q, 1), fill_random_host(k, 2), fill_random_host(v, 3);
  const HostReferences r = compute_host_references(q.view, k.view, v.view, nullptr, false, causal_params);
  EXPECT_TRUE(all_finite(r.o.view));
  EXPECT_EQ(r.naive_o.view.data, nullptr);
  EXPECT_EQ(r.dq.view.data, nullptr);
  ASSERT_EQ(r.naive_lse.size(), r.lse.size());  // sized for uniform slicing, but never written
  for (float x : r.naive_lse) EXPECT_TRUE(std::isnan(x));
}

}  // namespace
}  // namespace bench
}  // namespace distattn
