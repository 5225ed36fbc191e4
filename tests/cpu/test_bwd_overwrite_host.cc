// AttnBwdParams::overwrite_dk_dv on the host engine and in validate_backward: in accumulate mode dk and dv are
// written (every row; zeros for keys no query sees) while dq still accumulates; the flag outside accumulate mode is an
// error naming it. The CUDA kernels: tests/gpu/test_bwd_overwrite_dkdv_gpu.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distattn/core/attn_params.h"
#include "distattn/core/host_engine.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;

// Causal, q at positions 0..Sq-1 of Skv > Sq keys: kv rows Sq..Skv-1 get no gradient.
TEST(BwdOverwriteHost, WritesDkDvAndAddsDq) {
  const int64_t B = 2, Sq = 37, Skv = 53, Hq = 4, Hkv = 2, D = 16;
  const uint64_t seed = testing::test_seed() + 41;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  HostTensor q(DType::kFloat32, B, Sq, Hq, D), k(DType::kFloat32, B, Skv, Hkv, D), v(DType::kFloat32, B, Skv, Hkv, D),
      dout(DType::kFloat32, B, Sq, Hq, D), o(DType::kFloat32, B, Sq, Hq, D);
  fill_normal(q, seed + 1);
  fill_normal(k, seed + 2);
  fill_normal(v, seed + 3);
  fill_normal(dout, seed + 4);
  AttnParams f;
  f.q = q.view, f.k = k.view, f.v = v.view, f.o = o.view;
  std::vector<float> lse(static_cast<size_t>(B * Hq * Sq));
  f.lse = lse.data();
  f.q_pos = PositionMap::contiguous(0, Sq);
  f.kv_pos = PositionMap::contiguous(0, Skv);
  f.mask = Mask::make_causal();
  host_attention_forward(f);

  auto run = [&](bool accumulate, bool overwrite, HostTensor& dq, HostTensor& dk, HostTensor& dv) {
    AttnBwdParams b;
    b.fwd = f;
    b.dout = dout.view;
    b.dq = dq.view, b.dk = dk.view, b.dv = dv.view;
    b.accumulate = accumulate;
    b.overwrite_dk_dv = overwrite;
    host_attention_backward(b);
  };
  HostTensor dq0(DType::kFloat32, B, Sq, Hq, D), dk0(DType::kFloat32, B, Skv, Hkv, D),
      dv0(DType::kFloat32, B, Skv, Hkv, D);
  run(false, false, dq0, dk0, dv0);

  HostTensor r(DType::kFloat32, B, Sq, Hq, D), dq1 = r, dk1 = dk0, dv1 = dv0;
  fill_normal(r, seed + 5);
  dq1 = r;
  fill_nan(dk1);
  fill_nan(dv1);
  run(true, true, dq1, dk1, dv1);
  EXPECT_EQ(std::memcmp(dk1.storage.data(), dk0.storage.data(), dk0.bytes()), 0) << "dk differs from plain mode";
  EXPECT_EQ(std::memcmp(dv1.storage.data(), dv0.storage.data(), dv0.bytes()), 0) << "dv differs from plain mode";
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t d = 0; d < D; ++d) {
          const double want = r.get(b, i, h, d) + dq0.get(b, i, h, d);
          worst = std::max(worst, std::abs(dq1.get(b, i, h, d) - want) / (1.0 + std::abs(want)));
        }
  EXPECT_LE(worst, 1e-6) << "dq did not accumulate onto its start value";
  // Keys after every query: exact zeros (they started as NaN).
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = Sq; j < Skv; ++j)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t d = 0; d < D; ++d) {
          ASSERT_EQ(dk1.get(b, j, h, d), 0.0) << "row " << j;
          ASSERT_EQ(dv1.get(b, j, h, d), 0.0) << "row " << j;
        }
  // Without the flag, accumulate mode still adds into dk (start values R2).
  HostTensor r2(DType::kFloat32, B, Skv, Hkv, D), dq2 = r, dk2 = r2, dv2 = r2;
  fill_normal(r2, seed + 6);
  dk2 = r2;
  dv2 = r2;
  run(true, false, dq2, dk2, dv2);
  EXPECT_NEAR(dk2.get(1, 3, 1, 5), r2.get(1, 3, 1, 5) + dk0.get(1, 3, 1, 5), 1e-6);
  EXPECT_NEAR(dv2.get(0, 10, 0, 2), r2.get(0, 10, 0, 2) + dv0.get(0, 10, 0, 2), 1e-6);
}

TEST(BwdOverwriteHost, RequiresAccumulateMode) {
  AttnBwdParams b;  // the flag is checked first, before any tensor
  b.overwrite_dk_dv = true;
  EXPECT_ERROR_ARG(validate_backward(b, Device::kHost), "overwrite_dk_dv");
  EXPECT_ERROR_ARG(validate_backward(b, Device::kCuda), "overwrite_dk_dv");
}

}  // namespace
}  // namespace distattn
