// AttnBwdParams::overwrite_dk_dv on the CUDA backward (both kernels): in accumulate mode dk and dv are written, every
// row of them, while dq still accumulates. This is what lets a ring step compute its dK|dV into a scratch that nobody
// clears first.
//
// Per case, on the same random inputs (seeds printed), for the Hopper kernel (where it takes the case) and the
// mma.sync kernel (FlashBwdOptions::allow_hopper = false):
//   plain:      accumulate off, fp32 dq, dk, dv poisoned with NaN: the reference (plain mode is checked against the
//               fp64 host engine by test_flash_bwd*.cc);
//   overwrite:  accumulate + overwrite_dk_dv, dk and dv poisoned with NaN, dq prefilled with random values R:
//               dk, dv must equal the plain run's bit for bit (the same tile computations, only the store differs),
//               including kv rows that no query sees (zeros: a case has such rows), and dq must equal R + dq_plain
//               within fp32 rounding (its atomic adds run in another order);
//   add:        accumulate without the flag, dk, dv prefilled with R2: dk, dv must be fp32(R2 + plain) bit for bit (the
//               default is unchanged).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../sparse/src/flash_bwd_options.h"
#include "../../sparse/src/hopper/flash_bwd_hopper.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_check.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::DeviceArray;
using testing::DeviceTensor;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;

struct OCase {
  DType dtype = DType::kBFloat16;
  int64_t B = 1, Sq = 1000, Skv = 1000, Hq = 8, Hkv = 4, D = 128;
  Mask mask;
  int64_t q_start = 0;  // q rows at global positions q_start.., kv rows at 0..
};

// Elements of two fp32 host tensors of one layout whose bits differ.
int64_t differing_floats(const HostTensor& a, const HostTensor& b) {
  int64_t n = 0;
  for (size_t off = 0; off + 4 <= a.storage.size(); off += 4)
    n += std::memcmp(a.storage.data() + off, b.storage.data() + off, 4) != 0;
  return n;
}

// fp32 a + b element by element (packed fp32 tensors of one shape): what the kernel's fp32 add computes.
HostTensor add_f32(const HostTensor& a, const HostTensor& b) {
  HostTensor out = a;
  const size_t n = a.storage.size() / 4;
  for (size_t i = 0; i < n; ++i) {
    float x, y;
    std::memcpy(&x, a.storage.data() + 4 * i, 4);
    std::memcpy(&y, b.storage.data() + 4 * i, 4);
    const float z = x + y;
    std::memcpy(out.storage.data() + 4 * i, &z, 4);
  }
  return out;
}

struct Grads {
  HostTensor dq, dk, dv;
};

void run_case(const OCase& c, uint64_t seed) {
  const int64_t D = c.D;
  HostTensor q(c.dtype, c.B, c.Sq, c.Hq, D), k(c.dtype, c.B, c.Skv, c.Hkv, D), v(c.dtype, c.B, c.Skv, c.Hkv, D),
      dout(c.dtype, c.B, c.Sq, c.Hq, D), o(c.dtype, c.B, c.Sq, c.Hq, D);
  fill_normal(q, seed + 1);
  fill_normal(k, seed + 2);
  fill_normal(v, seed + 3);
  fill_normal(dout, seed + 4);
  // The forward's O and LSE from the host (fp64, O rounded to the dtype): what the backward is given.
  AttnParams hf = testing::case_setup(PositionMap::contiguous(c.q_start, c.Sq), PositionMap(), c.Sq, c.Skv, c.mask);
  hf.q = q.view, hf.k = k.view, hf.v = v.view;
  std::vector<float> lse;
  testing::host_forward_rounded(hf, o, lse);

  HostTensor r_dq(DType::kFloat32, c.B, c.Sq, c.Hq, D), r_dk(DType::kFloat32, c.B, c.Skv, c.Hkv, D),
      r_dv(DType::kFloat32, c.B, c.Skv, c.Hkv, D);
  fill_normal(r_dq, seed + 5);
  fill_normal(r_dk, seed + 6);
  fill_normal(r_dv, seed + 7);

  DeviceTensor dq_in(q), dk_in(k), dv_in(v), ddo(dout), dov(o);
  DeviceArray<float> d_lse(lse);
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));

  for (const bool allow_hopper : {true, false}) {
    const char* kernel = allow_hopper ? "hopper" : "mma.sync";
    // mode 0: plain; 1: accumulate + overwrite_dk_dv (dq starts at R); 2: accumulate, dk / dv start at R2.
    Grads got[3];
    bool ran = true;
    for (int mode = 0; mode < 3 && ran; ++mode) {
      Grads g{HostTensor(DType::kFloat32, c.B, c.Sq, c.Hq, D), HostTensor(DType::kFloat32, c.B, c.Skv, c.Hkv, D),
              HostTensor(DType::kFloat32, c.B, c.Skv, c.Hkv, D)};
      fill_nan(g.dq);
      fill_nan(g.dk);
      fill_nan(g.dv);
      if (mode == 1) g.dq = r_dq;
      if (mode == 2) g.dq = r_dq, g.dk = r_dk, g.dv = r_dv;
      DeviceTensor ddq(g.dq), ddk(g.dk), ddv(g.dv);
      AttnBwdParams b;
      b.fwd = hf;
      b.fwd.q = dq_in.view(), b.fwd.k = dk_in.view(), b.fwd.v = dv_in.view(), b.fwd.o = dov.view();
      b.fwd.lse = d_lse.ptr;
      b.dout = ddo.view();
      b.dq = ddq.view(), b.dk = ddk.view(), b.dv = ddv.view();
      b.accumulate = mode > 0;
      b.overwrite_dk_dv = mode == 1;
      if (allow_hopper && !flash_bwd_hopper_supported(b, device)) {
        std::printf("  [hopper] does not take this case on this device: skipped\n");
        ran = false;
        break;
      }
      detail::FlashBwdOptions opt;
      opt.allow_hopper = allow_hopper;
      detail::flash_attention_backward(b, opt, 0);
      DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
      ddq.download(g.dq);
      ddk.download(g.dk);
      ddv.download(g.dv);
      got[mode] = g;
    }
    if (!ran) continue;
    SCOPED_TRACE(kernel);
    const Grads& plain = got[0];
    EXPECT_TRUE(std::isfinite(testing::max_abs_value(plain.dk)) && std::isfinite(testing::max_abs_value(plain.dv)))
        << "plain mode left non-finite dk / dv";
    // overwrite: dk, dv bit for bit; dq = R + plain within rounding.
    EXPECT_EQ(differing_floats(got[1].dk, plain.dk), 0) << "overwrite_dk_dv: dk differs from plain mode";
    EXPECT_EQ(differing_floats(got[1].dv, plain.dv), 0) << "overwrite_dk_dv: dv differs from plain mode";
    const HostTensor want_dq = add_f32(r_dq, plain.dq);
    const testing::ErrorStats e = testing::compare(got[1].dq.view, want_dq.view);
    EXPECT_EQ(e.non_finite, 0);
    EXPECT_LE(e.max_abs, 1e-5 * (1.0 + testing::max_abs_value(want_dq))) << e.str();
    // Keys after every query (causal): their rows started as NaN and must now be exact zeros.
    const int64_t first_unseen = c.mask.causal ? c.q_start + c.Sq : c.Skv;
    int64_t unseen_nonzero = 0;
    for (int64_t bb = 0; bb < c.B; ++bb)
      for (int64_t j = first_unseen; j < c.Skv; ++j)
        for (int64_t hk = 0; hk < c.Hkv; ++hk)
          for (int64_t d = 0; d < D; ++d)
            unseen_nonzero += got[1].dk.get(bb, j, hk, d) != 0.0 || got[1].dv.get(bb, j, hk, d) != 0.0;
    EXPECT_EQ(unseen_nonzero, 0) << "kv rows no query sees are not written as zeros";
    // add: the default accumulate mode still adds into dk, dv.
    EXPECT_EQ(differing_floats(got[2].dk, add_f32(r_dk, plain.dk)), 0) << "accumulate: dk is not R2 + plain";
    EXPECT_EQ(differing_floats(got[2].dv, add_f32(r_dv, plain.dv)), 0) << "accumulate: dv is not R2 + plain";
    std::printf("  [%s] dk, dv identical to plain mode; dq vs R + plain: %s\n", kernel, e.str().c_str());
  }
}

#define RUN_CASE(c)     \
  DISTATTN_LINE_SEED(); \
  run_case(c, seed)

TEST(BwdOverwriteDkDv, Bf16CausalGqaOddLength) {
  DISTATTN_REQUIRE_GPU();
  OCase c;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(BwdOverwriteDkDv, Fp16HeadDim64WindowBatch) {
  DISTATTN_REQUIRE_GPU();
  OCase c;
  c.dtype = DType::kFloat16;
  c.B = 2, c.Sq = c.Skv = 700, c.Hq = c.Hkv = 3, c.D = 64;
  c.mask = Mask::make_window(150);
  RUN_CASE(c);
}

// Keys after every query (causal, q at positions 0..383 of 1024 keys): kv rows 384..1023 get no gradient; overwrite
// mode must write them as zeros (they start as NaN).
TEST(BwdOverwriteDkDv, Bf16KeysNoQuerySees) {
  DISTATTN_REQUIRE_GPU();
  OCase c;
  c.Sq = 384, c.Skv = 1024, c.Hq = c.Hkv = 2;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

}  // namespace
}  // namespace distattn
