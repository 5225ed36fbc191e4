// The CUDA forward kernels' final accumulate mode (AttnParams::o_final) and the rule that rows whose running lse
// is -inf never read the fp32 accumulator, for the Hopper kernel (head dim 128, sm_90a) and the mma.sync kernel
// (head dims 64 and 128, forced with FlashFwdOptions::allow_hopper = false):
//   - o_final equals, bit for bit, the two-pass result (every part accumulated into a cleared fp32 accumulator, then
//     rounded to q's dtype on the host: the same round-to-nearest-even as the cast kernel), and the merged lse the
//     same float;
//   - an accumulator poisoned with NaN (lse = -inf) gives the same bits as a cleared one;
//   - rows with no key in any part: o_final 0, lse -inf; rows whose last part is empty: the accumulator rounded;
//   - o_final against the fp64 host engine over all keys: within 2x the error of the host engine's
//     same-precision run plus 1e-4 (the repository's rule);
//   - validation and unsupported layouts throw before anything is written.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../../sparse/src/flash_fwd_options.h"
#include "../../sparse/src/hopper/flash_fwd_hopper.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/sparse/flash_attention.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::DeviceArray;
using testing::DeviceTensor;
using testing::ErrorStats;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

enum class Kernel { kHopper, kMma };

struct Case {
  std::string name;
  Kernel kernel = Kernel::kHopper;
  DType dtype = DType::kBFloat16;
  int64_t B = 2, Sq = 300, Skv = 410, Hq = 4, Hkv = 2, D = 128;
  PositionMap q_pos, kv_pos;
  Mask mask;
  std::vector<int64_t> cuts;               // kv parts [cuts[i], cuts[i+1])
  int64_t o_head_pad = 8, o_row_pad = 16;  // o_final's padding (elements; 16-byte aligned strides)
};

TensorView kv_rows(const TensorView& t, int64_t begin, int64_t end) {
  TensorView s = t;
  s.data = static_cast<unsigned char*>(t.data) + begin * t.stride[1] * dtype_size(t.dtype);
  s.shape[1] = end - begin;
  return s;
}

bool hopper_here(const AttnParams& p) {
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  return flash_fwd_hopper_supported(p, device);
}

struct GpuRun {
  HostTensor acc, out;
  std::vector<float> lse;
};

class Runner {
 public:
  Runner(const Case& c, uint64_t seed) : c_(c) {
    q_ = HostTensor(c.dtype, c.B, c.Sq, c.Hq, c.D);
    k_ = HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D, 8, 0);
    v_ = HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D, 0, 8);
    fill_normal(q_, seed);
    fill_normal(k_, seed + 1);
    fill_normal(v_, seed + 2);
    dq_ = DeviceTensor(q_);
    dk_ = DeviceTensor(k_);
    dv_ = DeviceTensor(v_);
  }

  AttnParams part(size_t i, const TensorView& o, float* lse, bool device) const {
    AttnParams p;
    p.q = device ? dq_.view() : q_.view;
    p.k = kv_rows(device ? dk_.view() : k_.view, c_.cuts[i], c_.cuts[i + 1]);
    p.v = kv_rows(device ? dv_.view() : v_.view, c_.cuts[i], c_.cuts[i + 1]);
    p.o = o;
    p.lse = lse;
    p.q_pos = c_.q_pos;
    p.kv_pos = c_.kv_pos.slice(c_.cuts[i], c_.cuts[i + 1]);
    p.mask = c_.mask;
    p.accumulate = true;
    return p;
  }

  void launch(const AttnParams& p) const {
    detail::FlashFwdOptions opt;
    opt.allow_hopper = c_.kernel == Kernel::kHopper;
    if (c_.kernel == Kernel::kHopper) {
      ASSERT_TRUE(hopper_here(p)) << "the Hopper kernel does not take this call";
    }
    detail::flash_attention_forward(p, opt, nullptr);
  }

  // Every part accumulated on the GPU; `fused`: the last with o_final; `poison`: the accumulator starts NaN.
  GpuRun run(bool fused, bool poison) const {
    GpuRun r;
    r.acc = HostTensor(DType::kFloat32, c_.B, c_.Sq, c_.Hq, c_.D, 0, 4);
    if (poison) {
      fill_nan(r.acc);
    } else {
      for (int64_t b = 0; b < c_.B; ++b)
        for (int64_t i = 0; i < c_.Sq; ++i)
          for (int64_t h = 0; h < c_.Hq; ++h)
            for (int64_t d = 0; d < c_.D; ++d) r.acc.set(b, i, h, d, 0.0);
    }
    r.out = HostTensor(c_.dtype, c_.B, c_.Sq, c_.Hq, c_.D, c_.o_head_pad, c_.o_row_pad);
    fill_nan(r.out);
    DeviceTensor d_acc(r.acc), d_out(r.out);
    DeviceArray<float> d_lse(std::vector<float>(static_cast<size_t>(c_.B * c_.Hq * c_.Sq), kNegInf));
    const size_t parts = c_.cuts.size() - 1;
    for (size_t i = 0; i < parts; ++i) {
      AttnParams p = part(i, d_acc.view(), d_lse.ptr, true);
      if (fused && i + 1 == parts) p.o_final = d_out.view();
      launch(p);
      if (::testing::Test::HasFatalFailure()) return r;
    }
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
    d_acc.download(r.acc);
    d_out.download(r.out);
    r.lse = d_lse.download();
    return r;
  }

  // Plain host forward over all keys (q's dtype inputs) at `precision`, o in `o_dtype`.
  void host_full(HostPrecision precision, DType o_dtype, HostTensor* o, std::vector<float>* lse) const {
    *o = HostTensor(o_dtype, c_.B, c_.Sq, c_.Hq, c_.D);
    lse->assign(static_cast<size_t>(c_.B * c_.Hq * c_.Sq), 0.f);
    AttnParams p;
    p.q = q_.view, p.k = k_.view, p.v = v_.view, p.o = o->view, p.lse = lse->data();
    p.q_pos = c_.q_pos, p.kv_pos = c_.kv_pos, p.mask = c_.mask;
    host_attention_forward(p, precision);
  }

  const Case& c() const { return c_; }

 private:
  Case c_;
  HostTensor q_, k_, v_;
  DeviceTensor dq_, dk_, dv_;
};

void run_case(const Case& c) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = testing::test_seed() + std::hash<std::string>()(c.name) % 100000;
  SCOPED_TRACE("case " + c.name + " seed " + std::to_string(seed));
  const Runner rn(c, seed);
  if (c.kernel == Kernel::kHopper) {
    // Skip cleanly where the Hopper kernel is not available (not an sm_90 device / build).
    HostTensor probe(DType::kFloat32, c.B, c.Sq, c.Hq, c.D);
    DeviceTensor d_probe(probe);
    DeviceArray<float> d_lse(c.B * c.Hq * c.Sq);
    if (!hopper_here(rn.part(0, d_probe.view(), d_lse.ptr, true))) GTEST_SKIP() << "no sm_90 device / sm_90a build";
  }
  const GpuRun base = rn.run(/*fused=*/false, /*poison=*/false);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  const GpuRun poisoned = rn.run(false, true);
  const GpuRun fused = rn.run(true, true);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());

  int64_t no_key = 0, mismatches = 0, acc_mismatches = 0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t i = 0; i < c.Sq; ++i) {
        const size_t n = static_cast<size_t>((b * c.Hq + h) * c.Sq + i);
        const bool empty = std::isinf(base.lse[n]);
        no_key += empty ? 1 : 0;
        ASSERT_FALSE(std::isnan(base.lse[n])) << "lse " << n;
        // lse: the same float (or -inf) in the three runs.
        ASSERT_TRUE(poisoned.lse[n] == base.lse[n]) << "lse " << n << " " << poisoned.lse[n] << " " << base.lse[n];
        ASSERT_TRUE(fused.lse[n] == base.lse[n]) << "lse " << n << " " << fused.lse[n] << " " << base.lse[n];
        for (int64_t d = 0; d < c.D; ++d) {
          const double a = base.acc.get(b, i, h, d);
          HostTensor one(c.dtype, 1, 1, 1, 1);
          one.set(0, 0, 0, 0, a);  // round to nearest even, as __floats2bfloat162_rn / __floats2half2_rn
          const double got = fused.out.get(b, i, h, d);
          if (!(got == one.get(0, 0, 0, 0))) ++mismatches;
          if (empty && got != 0.0) ++mismatches;
          if (!empty && !(poisoned.acc.get(b, i, h, d) == a)) ++acc_mismatches;
        }
      }
  EXPECT_EQ(mismatches, 0) << "o_final elements that differ from the two-pass result (or non-zero on empty rows)";
  EXPECT_EQ(acc_mismatches, 0) << "accumulator elements that differ between a NaN-poisoned and a cleared start";

  // Against fp64 over all keys, the 2x same-precision rule.
  HostTensor o64, o_naive;
  std::vector<float> lse64, lse_naive;
  rn.host_full(HostPrecision::kFloat64, DType::kFloat32, &o64, &lse64);
  rn.host_full(HostPrecision::kRoundIntermediates, c.dtype, &o_naive, &lse_naive);
  const ErrorStats e = testing::compare(fused.out.view, o64.view), en = testing::compare(o_naive.view, o64.view);
  const std::vector<double> ref(lse64.begin(), lse64.end());
  const int64_t n_lse = static_cast<int64_t>(ref.size());
  const ErrorStats l = testing::compare_flat(fused.lse.data(), ref.data(), n_lse);
  const ErrorStats ln = testing::compare_flat(lse_naive.data(), ref.data(), n_lse);
  SCOPED_TRACE("O final " + e.str() + " | naive " + en.str() + " || LSE " + l.str() + " | naive " + ln.str());
  std::printf("  %s: O final max %.3g naive %.3g | LSE max %.3g naive %.3g | rows without key %lld\n", c.name.c_str(),
              e.max_abs, en.max_abs, l.max_abs, ln.max_abs, static_cast<long long>(no_key));
  EXPECT_EQ(e.non_finite, 0);
  EXPECT_EQ(l.non_finite, 0);
  EXPECT_LE(e.rel_l2, 2 * en.rel_l2 + 1e-4);
  EXPECT_LE(e.max_abs, 2 * en.max_abs + 1e-4);
  EXPECT_LE(l.max_abs, 2 * ln.max_abs + 1e-4);
  for (size_t n = 0; n < lse64.size(); ++n) ASSERT_EQ(std::isinf(fused.lse[n]), std::isinf(lse64[n])) << "lse " << n;
}

// q at positions 0..299, kv at 150..559 in parts [0, 100) (positions 150..249) and [100, 410) (250..559), causal:
// q rows 0..149 see no key at all, rows 150..249 only the first part (the final part is empty for them), rows
// 250..299 both.
Case causal_case(const std::string& name, Kernel kernel, DType dtype, int64_t D) {
  Case c;
  c.name = name;
  c.kernel = kernel;
  c.dtype = dtype;
  c.D = D;
  c.q_pos = PositionMap::contiguous(0, c.Sq);
  c.kv_pos = PositionMap::contiguous(150, c.Skv);
  c.mask = Mask::make_causal();
  c.cuts = {0, 100, 410};
  return c;
}

// Non-causal, three parts (the middle one starting off a tile boundary for the mma.sync kernel), GQA 2.
Case dense_case(const std::string& name, Kernel kernel, DType dtype, int64_t D) {
  Case c;
  c.name = name;
  c.kernel = kernel;
  c.dtype = dtype;
  c.D = D;
  c.B = 1, c.Sq = 257, c.Skv = 384, c.Hq = 6, c.Hkv = 3;
  c.q_pos = PositionMap::contiguous(0, c.Sq);
  c.kv_pos = PositionMap::contiguous(0, c.Skv);
  c.cuts = {0, 128, 256, 384};
  return c;
}

TEST(FinalAccumulateGpu, HopperCausalEmptyRowsBothDtypes) {
  run_case(causal_case("final_hopper_causal_bf16", Kernel::kHopper, DType::kBFloat16, 128));
  run_case(causal_case("final_hopper_causal_fp16", Kernel::kHopper, DType::kFloat16, 128));
}

TEST(FinalAccumulateGpu, HopperDenseThreeParts) {
  run_case(dense_case("final_hopper_dense_bf16", Kernel::kHopper, DType::kBFloat16, 128));
}

TEST(FinalAccumulateGpu, MmaCausalEmptyRowsHdim64And128) {
  run_case(causal_case("final_mma_causal_bf16_d64", Kernel::kMma, DType::kBFloat16, 64));
  run_case(causal_case("final_mma_causal_fp16_d128", Kernel::kMma, DType::kFloat16, 128));
}

TEST(FinalAccumulateGpu, MmaDenseThreeParts) {
  Case c = dense_case("final_mma_dense_fp16_d64", Kernel::kMma, DType::kFloat16, 64);
  c.cuts = {0, 100, 300, 384};  // parts not on 128-row tiles
  run_case(c);
}

// The persistent Hopper schedule (many short problems, as the dilated path issues them): 2K-like segments folded
// into the batch, causal, strided positions; one part accumulated first, the last in final mode.
TEST(FinalAccumulateGpu, HopperPersistentManySegments) {
  Case c;
  c.name = "final_hopper_persistent";
  c.kernel = Kernel::kHopper;
  c.B = 24, c.Sq = 256, c.Skv = 256, c.Hq = 4, c.Hkv = 4, c.D = 128;
  c.q_pos = PositionMap::strided(0, 2, c.Sq);
  c.kv_pos = PositionMap::strided(0, 2, c.Skv);
  c.mask = Mask::make_causal();
  c.cuts = {0, 128, 256};
  run_case(c);
}

TEST(FinalAccumulateGpu, BadOFinalThrowsBeforeWriting) {
  DISTATTN_REQUIRE_GPU();
  Case c = causal_case("final_bad", Kernel::kMma, DType::kBFloat16, 128);
  const Runner rn(c, testing::test_seed() + 777);
  HostTensor acc(DType::kFloat32, c.B, c.Sq, c.Hq, c.D);
  fill_nan(acc);
  HostTensor out(c.dtype, c.B, c.Sq, c.Hq, c.D);
  fill_nan(out);
  DeviceTensor d_acc(acc), d_out(out);
  DeviceArray<float> d_lse(std::vector<float>(static_cast<size_t>(c.B * c.Hq * c.Sq), kNegInf));
  HostTensor host_out(c.dtype, c.B, c.Sq, c.Hq, c.D);
  for (bool hopper : {true, false}) {
    detail::FlashFwdOptions opt;
    opt.allow_hopper = hopper;
    {  // not accumulate mode
      AttnParams p = rn.part(0, d_out.view(), d_lse.ptr, true);
      p.accumulate = false;
      DeviceTensor other(out);
      p.o_final = other.view();
      EXPECT_ERROR_ARG(detail::flash_attention_forward(p, opt, nullptr), "o_final");
    }
    {  // fp32
      AttnParams p = rn.part(0, d_acc.view(), d_lse.ptr, true);
      p.o_final = d_acc.view();
      EXPECT_ERROR_ARG(detail::flash_attention_forward(p, opt, nullptr), "o_final");
    }
    {  // host memory
      AttnParams p = rn.part(0, d_acc.view(), d_lse.ptr, true);
      p.o_final = host_out.view;
      p.o_final.device = Device::kCuda;
      EXPECT_ERROR_ARG(detail::flash_attention_forward(p, opt, nullptr), "o_final");
    }
    {  // row stride not a multiple of 16 bytes
      AttnParams p = rn.part(0, d_acc.view(), d_lse.ptr, true);
      p.o_final = d_out.view();
      p.o_final.shape[1] -= 1;  // keep it in bounds
      p.o_final.stride[1] -= 1;
      p.q.shape[1] -= 1, p.o.shape[1] -= 1;
      p.q_pos = PositionMap::contiguous(0, c.Sq - 1);
      EXPECT_ERROR_ARG(detail::flash_attention_forward(p, opt, nullptr), "o_final");
    }
  }
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  HostTensor acc_after = acc, out_after = out;
  d_acc.download(acc_after);
  d_out.download(out_after);
  EXPECT_EQ(acc_after.storage, acc.storage);
  EXPECT_EQ(out_after.storage, out.storage);
  for (float x : d_lse.download()) ASSERT_TRUE(std::isinf(x) && x < 0);
}

}  // namespace
}  // namespace distattn
