// The inverse RoPE of dq, dk fused into the CUDA backward (AttnBwdParams::rope_grad): the dQ conversion kernel
// (flash_bwd_convert_dq_rope_kernel) and the Hopper kernel's dK epilogue rotate the gradients back themselves; the
// mma.sync kernel's dk and the rotary dims the fused code does not cover go through rope_apply_cuda inside the call.
//
// Every case runs on the same random inputs (seeds printed), once per backward kernel (Hopper where supported, the
// mma.sync kernel with FlashBwdOptions::allow_hopper = false, i.e. what DISTATTN_BACKWARD_KERNEL=mma selects):
//   separate: outputs poisoned with NaN, the plain backward, then rope_apply_cuda(inverse) on dq and dk;
//   fused:    outputs poisoned with NaN, the backward with rope_grad set.
// Claim tested: bit-identical. dk and dv are deterministic, so they must match bit for bit in every case. dq is
// summed in fp32 by reductions from several CTAs whose order varies between runs when Skv > 128 (several kv tiles
// add into one dq element); cases with Skv <= 128 (one kv tile: one addition per element) are deterministic and dq
// must match bit for bit too; with Skv > 128 dq must agree within 4 ulp of the dtype times max|dq| (the
// reassociation of the fp32 sum before the rounding), and the number of differing elements is printed.
// End to end: the fused dq, dk, dv against the fp64 host backward with its dq, dk rotated back by the host RoPE;
// bound as in test_flash_bwd_hopper.cc: max and RMS error at most twice those of the host's kRoundIntermediates
// backward (rounded to the dtype and rotated in it) plus a small slack relative to the gradient's RMS.
// Bad input: each bad rope_grad field throws distattn::Error naming it, and nothing is written.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../sparse/src/flash_bwd_options.h"
#include "../../sparse/src/hopper/flash_bwd_hopper.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/rope.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_check.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

struct RCase {
  DType dtype = DType::kBFloat16;
  int64_t B = 1, Sq = 300, Skv = 300, Hq = 2, Hkv = 2, D = 128;
  Mask mask;
  PositionMap q_pos, kv_pos;  // num_chunks == 0: contiguous from 0
  int64_t rotary_dim = 0;     // 0: D
  RopeStyle style = RopeStyle::kNeoX;
  RopeScaling scaling = RopeScaling::kNone;  // kYarn: scale != 1
  bool grads_fp32 = false;                   // dq, dk, dv fp32
  bool dk_epilogue = true;                   // FlashBwdOptions::rope_dk_in_epilogue of the fused run
};

// Elements whose bytes differ (packed tensors of one dtype: the storage is the elements).
int64_t differing_elements(const HostTensor& a, const HostTensor& b) {
  const size_t e = dtype_size(a.view.dtype);
  int64_t n = 0;
  for (size_t off = 0; off + e <= a.storage.size(); off += e)
    if (std::memcmp(a.storage.data() + off, b.storage.data() + off, e) != 0) ++n;
  return n;
}

RopeFrequencies frequencies(const RCase& c) {
  RopeConfig cfg;
  cfg.head_dim = c.D;
  cfg.rotary_dim = c.rotary_dim;
  cfg.style = c.style;
  cfg.scaling = c.scaling;
  if (c.scaling == RopeScaling::kYarn) {
    cfg.factor = 4.0;
    cfg.original_max_position = 4096;
  }
  return make_rope_frequencies(cfg);
}

// RoPE params over one tensor (in the q slot) with positions `pos`, inverse rotation.
RopeParams inverse_params(const TensorView& t, const PositionMap& pos, const RCase& c, const float* inv_freq,
                          float scale) {
  RopeParams r;
  r.q = t;
  r.q_pos = pos;
  r.rotary_dim = c.rotary_dim;
  r.style = c.style;
  r.inv_freq = inv_freq;
  r.scale = scale;
  r.inverse = true;
  return r;
}

void run_case(const RCase& c, uint64_t seed) {
  const DType gdt = c.grads_fp32 ? DType::kFloat32 : c.dtype;
  const int64_t D = c.D;
  const BwdShape shape{c.dtype, c.dtype, c.B, c.Sq, c.Skv, c.Hq, c.Hkv, D};
  const RopeFrequencies freqs = frequencies(c);

  // Forward on the host in fp64 (O rounded to the dtype): the O and LSE the backward is given. Host references:
  // fp64 backward, dq and dk rotated back in fp32 (the reference); kRoundIntermediates backward rounded to the
  // gradient dtype and rotated back in it (the naive baseline).
  AttnParams setup = case_setup(c.q_pos, c.kv_pos, c.Sq, c.Skv, c.mask);
  BwdHostCase h;
  make_bwd_host_case(h, shape, setup, /*given_delta=*/false, seed);
  const PositionMap &q_pos = h.hf.q_pos, &kv_pos = h.hf.kv_pos;
  HostTensor(&ref)[3] = h.ref;
  HostTensor(&nai)[3] = h.nai;
  for (int i = 0; i < 3; ++i) nai[i] = testing::convert(nai[i], gdt);
  for (int i = 0; i < 2; ++i) {
    const PositionMap& pos = i == 0 ? q_pos : kv_pos;
    rope_apply_host(inverse_params(ref[i].view, pos, c, freqs.inv_freq.data(), freqs.scale));
    rope_apply_host(inverse_params(nai[i].view, pos, c, freqs.inv_freq.data(), freqs.scale));
  }

  const BwdDeviceInputs d(h);
  DeviceArray<float> d_inv(freqs.inv_freq);
  RopeGradParams rg;
  rg.inv_freq = d_inv.ptr;
  rg.rotary_dim = c.rotary_dim;
  rg.style = static_cast<int>(c.style);
  rg.scale = freqs.scale;

  const bool hopper_here = on_hopper_device();
  const bool deterministic_dq = c.Skv <= 128;
  const char* names[3] = {"dq", "dk", "dv"};
  for (int pass = 0; pass < 2; ++pass) {
    const bool allow_hopper = pass == 0;
    const char* kernel = allow_hopper ? "hopper" : "mma.sync";
    HostTensor got[2][3];  // [separate, fused][dq, dk, dv]
    bool ran = true;
    for (int fused = 0; fused < 2 && ran; ++fused) {
      HostTensor out[3];
      make_grad_outputs(out, h, shape, gdt, /*accumulate=*/false);
      DeviceTensor dgrad[3] = {DeviceTensor(out[0]), DeviceTensor(out[1]), DeviceTensor(out[2])};
      AttnBwdParams gb = d.params(h, dgrad, /*accumulate=*/false);
      gb.rope_grad = fused ? &rg : nullptr;
      // On an H100 / H200 (sm_90a build) every D = 128 case here must take the Hopper kernel.
      if (allow_hopper && !hopper_bwd_takes(gb, hopper_here && D == 128,
                                            "  [hopper] not supported for this case / device: skipped\n")) {
        ran = false;
        break;
      }
      detail::FlashBwdOptions opt;
      opt.allow_hopper = allow_hopper;
      opt.rope_dk_in_epilogue = c.dk_epilogue;
      detail::flash_attention_backward(gb, opt, 0);
      if (!fused) {
        rope_apply_cuda(inverse_params(gb.dq, q_pos, c, d_inv.ptr, freqs.scale), 0);
        rope_apply_cuda(inverse_params(gb.dk, kv_pos, c, d_inv.ptr, freqs.scale), 0);
      }
      DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
      for (int i = 0; i < 3; ++i) {
        dgrad[i].download(out[i]);
        got[fused][i] = out[i];
      }
    }
    if (!ran) continue;

    // 1. Fused vs separate.
    for (int i = 0; i < 3; ++i) {
      const int64_t diff = differing_elements(got[1][i], got[0][i]);
      const ErrorStats e = compare(got[1][i].view, got[0][i].view);
      std::printf("  [%s] %s fused vs separate: %lld of %lld elements differ, max |diff| %.3g\n", kernel, names[i],
                  static_cast<long long>(diff), static_cast<long long>(e.count), e.max_abs);
      SCOPED_TRACE(std::string(kernel) + " " + names[i] + " fused vs separate: " + e.str());
      EXPECT_EQ(e.non_finite, 0);
      if (i > 0 || deterministic_dq) {
        EXPECT_EQ(diff, 0) << "not bit-identical";
      } else {
        EXPECT_LE(e.max_abs, 4 * ulp_rel(gdt) * max_abs_value(got[0][i]));
      }
    }
    // 2. Fused vs the fp64 host reference rotated back.
    for (int i = 0; i < 3; ++i) {
      const std::string label = std::string(kernel) + " " + names[i] + " fused vs fp64";
      const std::string print_label = std::string("[") + kernel + "] " + names[i] + " fused vs fp64";
      expect_grad_within_2x_naive(label, print_label.c_str(), "", compare(got[1][i].view, ref[i].view),
                                  compare(nai[i].view, ref[i].view), rms_of(ref[i]));
    }
  }
}

#define RUN_CASE(c)     \
  DISTATTN_LINE_SEED(); \
  run_case(c, seed)

// One kv tile (Skv <= 128): dq deterministic, so all three gradients are compared bit for bit.
TEST(RopeBwdFused, Bf16NeoXOneKvTileBitwise) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 301, c.Skv = 117, c.Hq = 4, c.Hkv = 2;
  RUN_CASE(c);
}

TEST(RopeBwdFused, Fp16GptJOneKvTileCausalBitwise) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.dtype = DType::kFloat16;
  c.Sq = 97, c.Skv = 97, c.Hq = 3, c.Hkv = 1;
  c.style = RopeStyle::kGptJ;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(RopeBwdFused, Bf16NeoXPartialRotaryOneKvTileBitwise) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 129, c.Skv = 128, c.Hq = 2, c.Hkv = 2;
  c.rotary_dim = 64;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(RopeBwdFused, Bf16NeoXNonCausalOddLengths) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 333, c.Skv = 517;
  RUN_CASE(c);
}

TEST(RopeBwdFused, Bf16NeoXCausalGqaBatch2) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.B = 2, c.Sq = 517, c.Skv = 517, c.Hq = 8, c.Hkv = 2;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(RopeBwdFused, Fp16GptJPartialRotaryCausal) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.dtype = DType::kFloat16;
  c.Sq = 391, c.Skv = 391, c.Hq = 4, c.Hkv = 1;
  c.style = RopeStyle::kGptJ;
  c.rotary_dim = 96;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

// NeoX rotary 32: half = 16, a = chunks 0-1 and b = chunks 2-3 of a thread (kShift 2 in the Hopper epilogue).
TEST(RopeBwdFused, Bf16NeoXRotary32) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 260, c.Skv = 300, c.Hq = 2, c.Hkv = 1;
  c.rotary_dim = 32;
  RUN_CASE(c);
}

// Rotary dims the fused code does not cover: NeoX half = 12 (dq and dk through the separate kernel inside the
// call), GPT-J rot = 20 (dq separate, dk fused on Hopper).
TEST(RopeBwdFused, Bf16NeoXRotary24Fallback) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 200, c.Skv = 100;
  c.rotary_dim = 24;
  RUN_CASE(c);
}

TEST(RopeBwdFused, Bf16GptJRotary20MixedFusion) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 200, c.Skv = 100;
  c.style = RopeStyle::kGptJ;
  c.rotary_dim = 20;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(100, 200);
  RUN_CASE(c);
}

// FlashBwdOptions::rope_dk_in_epilogue = false (DISTATTN_ROPE_BWD_DK=separate): dq fused, dk through the RoPE kernel.
TEST(RopeBwdFused, Bf16NeoXDkSeparateOption) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 190, c.Skv = 120, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.dk_epilogue = false;
  RUN_CASE(c);
}

// fp32 gradients: the rotation without the 16-bit round trip.
TEST(RopeBwdFused, Bf16GradsFp32NeoX) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 250, c.Skv = 120, c.Hq = 2, c.Hkv = 1;
  c.grads_fp32 = true;
  RUN_CASE(c);
}

// Head dim 64: the mma.sync kernel only (dq fused in the conversion, dk through the separate kernel).
TEST(RopeBwdFused, Fp16HeadDim64NeoXCausalGqa) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.dtype = DType::kFloat16;
  c.D = 64;
  c.Sq = 77, c.Skv = 77, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(RopeBwdFused, Bf16HeadDim64GptJ) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.D = 64;
  c.Sq = 300, c.Skv = 300, c.Hq = 2, c.Hkv = 2;
  c.style = RopeStyle::kGptJ;
  RUN_CASE(c);
}

// A zigzag ring step at large global positions (angles of ~10^5 rad: sincosf's full range reduction) with YaRN's
// attention factor (scale != 1).
TEST(RopeBwdFused, Bf16ZigzagLargePositionsYarn) {
  DISTATTN_REQUIRE_GPU();
  RCase c;
  c.Sq = 512, c.Skv = 512, c.Hq = 2, c.Hkv = 1;
  c.mask = Mask::make_causal();
  PositionMap qp, kp;
  qp.add_chunk(100000, 1, 256).add_chunk(131072 + 256 * 6, 1, 256);
  kp.add_chunk(100000 + 256 * 2, 1, 256).add_chunk(131072 + 256 * 5, 1, 256);
  c.q_pos = qp;
  c.kv_pos = kp;
  c.scaling = RopeScaling::kYarn;
  RUN_CASE(c);
}

// ---- bad input: distattn::Error naming the field, nothing launched or written -----------------------------------
TEST(RopeBwdFused, BadInputThrowsAndWritesNothing) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  const int64_t S = 70, H = 2, D = 128;
  HostTensor q(DType::kBFloat16, 1, S, H, D), k(DType::kBFloat16, 1, S, H, D), v(DType::kBFloat16, 1, S, H, D),
      dout(DType::kBFloat16, 1, S, H, D), o(DType::kBFloat16, 1, S, H, D), poison(DType::kBFloat16, 1, S, H, D);
  fill_normal(q, seed + 1);
  fill_normal(k, seed + 2);
  fill_normal(v, seed + 3);
  fill_normal(dout, seed + 4);
  fill_normal(o, seed + 5);
  fill_nan(poison);
  std::vector<float> lse(static_cast<size_t>(H * S), 1.f);
  RopeConfig cfg;
  cfg.head_dim = D;
  const RopeFrequencies freqs = make_rope_frequencies(cfg);
  DeviceTensor dq_in(q), dk_in(k), dv_in(v), ddo(dout), dov(o), gq(poison), gk(poison), gv(poison);
  DeviceArray<float> d_lse(lse), d_inv(freqs.inv_freq);
  RopeGradParams rg;
  auto fresh = [&] {
    rg = RopeGradParams();
    rg.inv_freq = d_inv.ptr;
    AttnBwdParams b = contiguous_bwd_params(dq_in.view(), dk_in.view(), dv_in.view(), dov.view(), d_lse.ptr, ddo.view(),
                                            gq.view(), gk.view(), gv.view());
    b.rope_grad = &rg;
    return b;
  };
  AttnBwdParams b = fresh();
  rg.rotary_dim = 33;
  EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad.rotary_dim");
  b = fresh();
  rg.rotary_dim = 130;  // > D
  EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad.rotary_dim");
  b = fresh();
  rg.rotary_dim = -2;
  EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad.rotary_dim");
  b = fresh();
  rg.inv_freq = nullptr;
  EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad.inv_freq");
  b = fresh();
  rg.inv_freq = freqs.inv_freq.data();  // host memory
  EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad.inv_freq");
  b = fresh();
  rg.style = 2;
  EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad.style");
  b = fresh();
  rg.scale = std::numeric_limits<float>::infinity();
  EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad.scale");
  // Accumulate mode (fp32 gradients) is not supported with the fused inverse.
  {
    HostTensor f32(DType::kFloat32, 1, S, H, D);
    fill_normal(f32, seed + 9);
    DeviceTensor aq(f32), ak(f32), av(f32);
    b = fresh();
    b.dq = aq.view(), b.dk = ak.view(), b.dv = av.view();
    b.accumulate = true;
    EXPECT_ERROR_ARG(flash_attention_backward(b, nullptr), "rope_grad");
    HostTensor back(DType::kFloat32, 1, S, H, D);
    aq.download(back);
    EXPECT_EQ(std::memcmp(back.storage.data(), f32.storage.data(), f32.bytes()), 0) << "dq written";
  }
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  // Nothing written: the gradients still hold the poison, byte for byte.
  for (DeviceTensor* t : {&gq, &gk, &gv}) {
    HostTensor back(DType::kBFloat16, 1, S, H, D);
    t->download(back);
    EXPECT_EQ(std::memcmp(back.storage.data(), poison.storage.data(), poison.bytes()), 0) << "a gradient was written";
  }
  // The host engine has no fused inverse: it says so instead of ignoring the field.
  {
    HostTensor hdq(DType::kFloat32, 1, S, H, D), hdk(DType::kFloat32, 1, S, H, D), hdv(DType::kFloat32, 1, S, H, D);
    AttnBwdParams hb =
        contiguous_bwd_params(q.view, k.view, v.view, o.view, lse.data(), dout.view, hdq.view, hdk.view, hdv.view);
    RopeGradParams host_rg;
    host_rg.inv_freq = freqs.inv_freq.data();
    hb.rope_grad = &host_rg;
    EXPECT_ERROR_ARG(host_attention_backward(hb, HostPrecision::kFloat64), "rope_grad");
  }
}

}  // namespace
}  // namespace testing
}  // namespace distattn
