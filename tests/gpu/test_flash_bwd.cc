// CUDA backward attention (flash_attention_backward) against the host engine in fp64.
//
// Each case draws q, k, v, dO in bf16/fp16, computes O and LSE with the fp64 host forward (O rounded to
// the dtype, so the test does not depend on the GPU forward), then compares the GPU's dQ, dK, dV with
// the fp64 host backward fed the same rounded inputs. The bound is flash-attention's rule: the GPU error
// (max and RMS) must be at most twice the error of the host's kRoundIntermediates backward (what a naive
// bf16/fp16 implementation gets) plus a small absolute slack. Outputs are poisoned with NaN first.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../../sparse/src/flash_bwd_options.h"  // internal: the ALiBi cutoff's test switches
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_check.h"
#include "hand_block_list.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

struct BwdCase {
  DType dtype = DType::kBFloat16;
  int64_t D = 128, B = 1, Sq = 37, Skv = 37, Hq = 2, Hkv = 2;
  Mask mask;                  // causal / window (blocks: set `blocks`)
  PositionMap q_pos, kv_pos;  // num_chunks == 0: contiguous from 0
  bool alibi = false;
  int64_t head_pad = 0, row_pad = 0;     // padded strides (elements) for every tensor
  bool accumulate = false;               // dq/dk/dv fp32 pre-filled, gradients added
  bool grads_fp32 = false;               // non-accumulate: fp32 dq/dk/dv instead of the input dtype
  bool given_delta = false;              // pass rowsum(dO * O) instead of letting the engine compute it
  bool o_fp32 = false;                   // O given in fp32 (an accumulated forward's output), not rounded to the dtype
  std::vector<std::vector<int>> blocks;  // non-empty: hand-built block list (0 absent, 1 partial, 2 full)
  double scale = 0;                      // 0: 1/sqrt(D)
  float slope_step = 0.5f;               // ALiBi slopes 2^(-slope_step (h + 1))
  unsigned long long* cut_count = nullptr;  // device counter: pairs the ALiBi cutoff judged cuttable
};

// Everything one case produces; `rows_without_keys` lists (b, h, i) whose LSE is -inf.
struct BwdResult {
  ErrorStats err[3], naive[3];
  HostTensor got[3];
  std::vector<std::array<int64_t, 3>> rows_without_keys;
};

BwdResult run_case(const BwdCase& c, uint64_t seed) {
  const DType gdt = (c.accumulate || c.grads_fp32) ? DType::kFloat32 : c.dtype;
  const BwdShape shape{c.dtype,  c.o_fp32 ? DType::kFloat32 : c.dtype, c.B, c.Sq, c.Skv, c.Hq, c.Hkv, c.D, c.head_pad,
                       c.row_pad};
  std::vector<float> slopes;
  if (c.alibi) {
    for (int64_t h = 0; h < c.Hq; ++h) slopes.push_back(std::pow(2.f, -c.slope_step * static_cast<float>(h + 1)));
  }
  std::unique_ptr<HandBlockList> blocks;  // block states: 0 absent, 1 partial, 2 full
  if (!c.blocks.empty()) blocks = std::make_unique<HandBlockList>(HandBlockList::from_states(c.blocks));

  // Host forward in fp64 (written to an fp32 O, the widest the host engine takes for 16-bit inputs;
  // rounded to O's dtype afterwards) and LSE; the fp64 and the naive (rounded intermediates) host backward.
  AttnParams setup = case_setup(c.q_pos, c.kv_pos, c.Sq, c.Skv, c.mask);
  if (blocks) setup.mask.blocks = &blocks->host_view;
  setup.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  setup.softmax_scale = static_cast<float>(c.scale);
  BwdHostCase h;
  make_bwd_host_case(h, shape, setup, c.given_delta, seed);
  const HostTensor(&pre)[3] = h.pre;
  const HostTensor(&ref)[3] = h.ref;
  const HostTensor(&nai)[3] = h.nai;

  BwdResult res;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t hh = 0; hh < c.Hq; ++hh)
      for (int64_t i = 0; i < c.Sq; ++i)
        if (std::isinf(h.lse[(b * c.Hq + hh) * c.Sq + i])) res.rows_without_keys.push_back({b, hh, i});

  // GPU.
  const BwdDeviceInputs d(h);
  HostTensor out[3];
  make_grad_outputs(out, h, shape, gdt, c.accumulate);
  DeviceTensor dgrad[3] = {DeviceTensor(out[0]), DeviceTensor(out[1]), DeviceTensor(out[2])};
  std::unique_ptr<DeviceArray<float>> d_slopes;
  if (c.alibi) d_slopes.reset(new DeviceArray<float>(slopes));

  AttnBwdParams gb = d.params(h, dgrad, c.accumulate);
  gb.fwd.alibi_slopes = c.alibi ? d_slopes->ptr : nullptr;
  if (blocks) gb.fwd.mask.blocks = &blocks->device_view;
  detail::FlashBwdOptions opt;
  opt.alibi_cut_count = c.cut_count;
  detail::flash_attention_backward(gb, opt, 0);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());

  for (int i = 0; i < 3; ++i) {
    dgrad[i].download(out[i]);
    if (c.accumulate) {
      const HostTensor exp = sum_f64(pre[i], ref[i]);
      const HostTensor nexp = sum_f64(pre[i], nai[i]);
      res.err[i] = compare(out[i].view, exp.view);
      res.naive[i] = compare(nexp.view, exp.view);
    } else {
      res.err[i] = compare(out[i].view, ref[i].view);
      res.naive[i] = compare(nai[i].view, ref[i].view);
    }
    res.got[i] = std::move(out[i]);
  }
  // Bound check here (every case uses it): 2x the naive error + slack relative to the gradient's size.
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i)
    expect_grad_within_2x_naive(std::string(names[i]) + " gpu", names[i], "gpu ", res.err[i], res.naive[i],
                                rms_of(ref[i]));
  return res;
}

#define RUN_CASE(c)                                                                      \
  const uint64_t seed = test_seed() + static_cast<uint64_t>(__LINE__);                   \
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " (line " << __LINE__ << ")"); \
  BwdResult res = run_case(c, seed)

TEST(FlashBwd, Bf16Hdim128NonCausalOdd) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.Sq = 300, c.Skv = 300, c.Hq = 2, c.Hkv = 2;
  RUN_CASE(c);
}

TEST(FlashBwd, Fp16Hdim64CausalSkvNotSqBottomAligned) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.D = 64, c.Sq = 37, c.Skv = 300;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(263, 37);  // the last 37 positions: every row sees keys
  RUN_CASE(c);
}

TEST(FlashBwd, Bf16Hdim64GqaCausalWindowBatch2) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.D = 64, c.B = 2, c.Sq = 300, c.Skv = 300, c.Hq = 8, c.Hkv = 2;
  c.mask = Mask::make_causal(50);
  RUN_CASE(c);
}

TEST(FlashBwd, Fp16Hdim128MqaNonCausalWindow) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.Sq = 200, c.Skv = 170, c.Hq = 4, c.Hkv = 1;
  c.mask = Mask::make_window(40);
  RUN_CASE(c);
}

TEST(FlashBwd, SingleQueryRowAlibiNonCausal) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.Sq = 1, c.Skv = 300, c.Hq = 4, c.Hkv = 2;
  c.alibi = true;
  c.q_pos = PositionMap::contiguous(150, 1);
  RUN_CASE(c);
}

TEST(FlashBwd, AlibiCausalWithPositionOffsetsFp16) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.D = 128, c.Sq = 130, c.Skv = 260, c.Hq = 4, c.Hkv = 4;
  c.mask = Mask::make_causal();
  c.alibi = true;
  c.q_pos = PositionMap::contiguous(1130, 130);
  c.kv_pos = PositionMap::contiguous(1000, 260);
  RUN_CASE(c);
}

TEST(FlashBwd, ZigzagTwoChunksCausalCrossShard) {
  DISTATTN_REQUIRE_GPU();
  // Global sequence of 4 chunks of 75; q holds chunks 0 and 3 (rank 0 of 2), kv chunks 1 and 2 (rank 1).
  BwdCase c;
  c.Sq = 150, c.Skv = 150, c.Hq = 2, c.Hkv = 1;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(0, 75);
  c.q_pos.add_chunk(225, 1, 75);
  c.kv_pos = PositionMap::contiguous(75, 75);
  c.kv_pos.add_chunk(150, 1, 75);
  RUN_CASE(c);
  EXPECT_FALSE(res.rows_without_keys.empty());  // chunk 0 sees nothing of chunks 1, 2
  for (const auto& r : res.rows_without_keys)
    for (int64_t d = 0; d < c.D; ++d) ASSERT_EQ(res.got[0].get(r[0], r[2], r[1], d), 0.0) << "dq of a row without keys";
}

TEST(FlashBwd, ZigzagSameShardCausalAlibi) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.D = 64, c.Sq = 150, c.Skv = 150, c.Hq = 2, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.alibi = true;
  c.q_pos = PositionMap::contiguous(0, 75);
  c.q_pos.add_chunk(225, 1, 75);
  c.kv_pos = c.q_pos;
  RUN_CASE(c);
}

TEST(FlashBwd, StridedPositionsCausalPaddedStrides) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.Sq = 150, c.Skv = 140, c.Hq = 2, c.Hkv = 1;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::strided(1, 2, 150);  // dilated views: odd positions for q, multiples of 3 for kv
  c.kv_pos = PositionMap::strided(0, 3, 140);
  c.head_pad = 8, c.row_pad = 16;
  RUN_CASE(c);
}

TEST(FlashBwd, RowsWithNoVisibleKeyGetZeroDq) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.D = 64, c.Sq = 100, c.Skv = 200, c.Hq = 2, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.kv_pos = PositionMap::contiguous(50, 200);  // q rows 0..49 come before every key
  RUN_CASE(c);
  ASSERT_EQ(res.rows_without_keys.size(), static_cast<size_t>(2 * 50));
  for (const auto& r : res.rows_without_keys)
    for (int64_t d = 0; d < c.D; ++d) ASSERT_EQ(res.got[0].get(r[0], r[2], r[1], d), 0.0) << "dq of a row without keys";
}

TEST(FlashBwd, Fp32GradientsPaddedStridesNonCausal) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.Sq = 97, c.Skv = 131, c.Hq = 4, c.Hkv = 2;
  c.grads_fp32 = true;
  c.head_pad = 8, c.row_pad = 8;
  RUN_CASE(c);
}

TEST(FlashBwd, HandBuiltBlockListFullAndPartialCausal) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.Sq = 300, c.Skv = 260, c.Hq = 2, c.Hkv = 2;
  c.mask = Mask::make_causal();
  // 3 x 3 blocks of 128: diagonal partial (causal inside), some full below, one absent.
  c.blocks = {{1, 0, 0}, {2, 1, 0}, {0, 2, 1}};
  RUN_CASE(c);
}

TEST(FlashBwd, HandBuiltBlockListNonCausalHdim64) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.D = 64, c.Sq = 260, c.Skv = 300, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_window(100);  // partial blocks apply the window; full ones do not
  c.blocks = {{1, 2, 0}, {0, 1, 1}, {2, 0, 1}};
  RUN_CASE(c);
}

TEST(FlashBwd, AccumulateAddsToPrefilledFp32) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.Sq = 200, c.Skv = 300, c.Hq = 8, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(100, 200);
  c.accumulate = true;
  RUN_CASE(c);
}

TEST(FlashBwd, AccumulateFp16Hdim64WindowAlibi) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.D = 64, c.Sq = 150, c.Skv = 150, c.Hq = 2, c.Hkv = 1;
  c.mask = Mask::make_window(30);
  c.alibi = true;
  c.accumulate = true;
  c.head_pad = 8, c.row_pad = 8;  // 16-byte multiples for the 16-bit inputs and the fp32 gradients
  RUN_CASE(c);
}

TEST(FlashBwd, AccumulateDirectIntoDqWithRowStrideD) {
  DISTATTN_REQUIRE_GPU();
  // One q head, packed: dq's rows are D apart, so the engine reduces straight into dq (no scratch).
  BwdCase c;
  c.B = 2, c.Sq = 190, c.Skv = 250, c.Hq = 1, c.Hkv = 1;
  c.mask = Mask::make_causal(120);
  c.q_pos = PositionMap::contiguous(60, 190);
  c.accumulate = true;
  RUN_CASE(c);
}

TEST(FlashBwd, Fp32OutputFromAccumulatedForward) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.dtype = DType::kFloat16, c.Sq = 130, c.Skv = 200, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(70, 130);
  c.o_fp32 = true;  // delta = rowsum(dO * O) read from an fp32 O
  RUN_CASE(c);
}

TEST(FlashBwd, GivenDeltaMatchesComputedDelta) {
  DISTATTN_REQUIRE_GPU();
  BwdCase c;
  c.Sq = 200, c.Skv = 200, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.grads_fp32 = true;
  const uint64_t seed = test_seed() + 7;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  BwdResult computed = run_case(c, seed);
  c.given_delta = true;
  BwdResult given = run_case(c, seed);
  for (int i = 0; i < 3; ++i) {
    const ErrorStats d = compare(given.got[i].view, computed.got[i].view);
    EXPECT_EQ(d.non_finite, 0);
    EXPECT_LE(d.rel_l2, 1e-3) << d.str();
  }
}

// ---- ALiBi underflow cutoff (flash_bwd_kernel.cuh, "ALiBi cutoff") ---------------------------------------
// GPU-only: the GPU forward gives O and LSE, then the backward runs three ways: cutoff on (pairs skipped), cutoff
// judged but nothing skipped, cutoff off. dK and dV (fp32 or the input dtype) must match bit for bit. dQ is
// summed across kv tiles with fp32 atomics whose order is not fixed run to run (with or without the cutoff), so
// it is compared with fp32 grads against a tolerance far below one bf16 ulp; the fp64 checks are separate.
struct CutCase {
  DType dtype = DType::kBFloat16;
  int64_t D = 128, B = 1, S = 1000, Hq = 4, Hkv = 2;
  bool causal = true;
  int64_t window = -1;            // >= 0: sliding window (causal band of that width)
  float slope_step = 0.5f;        // slopes 2^(-slope_step (h + 1))
  double qk_mult = 1.0;           // q and k drawn with this standard deviation (large: nothing may be cut)
  bool grads_fp32 = true;         // fp32 dq/dk/dv (else the input dtype)
  int64_t start = 0, stride = 1;  // q_pos = kv_pos = start + stride * row (one chunk)
};

// One zeroed device counter (the cutoff's count of cuttable pairs).
struct DeviceCounter {
  unsigned long long* ptr = nullptr;
  DeviceCounter() {
    DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), sizeof(unsigned long long)));
    reset();
  }
  ~DeviceCounter() { (void)cudaFree(ptr); }
  DeviceCounter(const DeviceCounter&) = delete;
  DeviceCounter& operator=(const DeviceCounter&) = delete;
  void reset() { DISTATTN_CUDA_CHECK(cudaMemset(ptr, 0, sizeof(unsigned long long))); }
  unsigned long long get() const {
    unsigned long long n = 0;
    DISTATTN_CUDA_CHECK(cudaMemcpy(&n, ptr, sizeof(n), cudaMemcpyDeviceToHost));
    return n;
  }
};

struct CutRun {
  HostTensor g[3];
  unsigned long long count = 0;
};

void run_cut_case(const CutCase& c, uint64_t seed, bool* any_cut) {
  const DType gdt = c.grads_fp32 ? DType::kFloat32 : c.dtype;
  HostTensor q(c.dtype, c.B, c.S, c.Hq, c.D), k(c.dtype, c.B, c.S, c.Hkv, c.D), v(c.dtype, c.B, c.S, c.Hkv, c.D),
      dout(c.dtype, c.B, c.S, c.Hq, c.D), o(c.dtype, c.B, c.S, c.Hq, c.D);
  fill_normal(q, seed + 1, c.qk_mult);
  fill_normal(k, seed + 2, c.qk_mult);
  fill_normal(v, seed + 3);
  fill_normal(dout, seed + 4);
  fill_nan(o);
  std::vector<float> slopes;
  for (int64_t h = 0; h < c.Hq; ++h) slopes.push_back(std::pow(2.f, -c.slope_step * static_cast<float>(h + 1)));
  DeviceTensor dq_(q), dk_(k), dv_(v), ddo(dout), dov(o);
  DeviceArray<float> d_slopes(slopes);
  std::vector<float> lse_init(static_cast<size_t>(c.B * c.Hq * c.S), std::nanf(""));
  DeviceArray<float> d_lse(lse_init);
  DeviceCounter d_count;

  AttnParams f;
  f.q = dq_.view(), f.k = dk_.view(), f.v = dv_.view(), f.o = dov.view();
  f.lse = d_lse.ptr;
  f.q_pos = PositionMap::strided(c.start, c.stride, c.S);
  f.kv_pos = f.q_pos;
  if (c.window >= 0) {
    f.mask = c.causal ? Mask::make_causal(c.window) : Mask::make_window(c.window);
  } else if (c.causal) {
    f.mask = Mask::make_causal();
  }
  f.alibi_slopes = d_slopes.ptr;
  flash_attention_forward(f, 0);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());

  CutRun runs[3];
  const char* names[3] = {"cutoff", "judged, nothing skipped", "cutoff off"};
  for (int r = 0; r < 3; ++r) {
    HostTensor out[3] = {HostTensor(gdt, c.B, c.S, c.Hq, c.D), HostTensor(gdt, c.B, c.S, c.Hkv, c.D),
                         HostTensor(gdt, c.B, c.S, c.Hkv, c.D)};
    for (auto& t : out) fill_nan(t);
    DeviceTensor dg[3] = {DeviceTensor(out[0]), DeviceTensor(out[1]), DeviceTensor(out[2])};
    d_count.reset();
    AttnBwdParams gb;
    gb.fwd = f;
    gb.dout = ddo.view();
    gb.dq = dg[0].view(), gb.dk = dg[1].view(), gb.dv = dg[2].view();
    detail::FlashBwdOptions opt;
    opt.alibi_cutoff = r != 2;
    opt.alibi_cutoff_skip = r == 0;
    opt.alibi_cut_count = d_count.ptr;
    detail::flash_attention_backward(gb, opt, 0);
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < 3; ++i) dg[i].download(out[i]), runs[r].g[i] = std::move(out[i]);
    runs[r].count = d_count.get();
  }
  const int64_t pairs = c.B * c.Hq * ((c.S + 63) / 64) * ((c.S + 127) / 128);
  std::printf("  S %lld: pairs judged cuttable %llu of %lld (judged-only run: %llu, cutoff off: %llu)\n",
              static_cast<long long>(c.S), runs[0].count, static_cast<long long>(pairs), runs[1].count, runs[2].count);
  EXPECT_EQ(runs[0].count, runs[1].count);
  EXPECT_EQ(runs[2].count, 0u);
  *any_cut = runs[0].count > 0;
  for (int r = 1; r < 3; ++r) {
    SCOPED_TRACE(std::string("cutoff vs ") + names[r]);
    for (int i = 1; i < 3; ++i)
      EXPECT_EQ(std::memcmp(runs[0].g[i].storage.data(), runs[r].g[i].storage.data(), runs[0].g[i].bytes()), 0)
          << (i == 1 ? "dK" : "dV") << " differs";
    const ErrorStats e = compare(runs[0].g[0].view, runs[r].g[0].view);
    double mx = 0;
    const auto& sh = runs[r].g[0].view.shape;
    for (int64_t b = 0; b < sh[0]; ++b)
      for (int64_t i = 0; i < sh[1]; ++i)
        for (int64_t h = 0; h < sh[2]; ++h)
          for (int64_t d = 0; d < sh[3]; ++d) mx = std::max(mx, std::fabs(runs[r].g[0].get(b, i, h, d)));
    EXPECT_EQ(e.non_finite, 0);
    // fp32 atomics in another order: a few fp32 ulps of the largest partial sums; bf16 grads: one bf16 ulp.
    EXPECT_LE(e.max_abs, (c.grads_fp32 ? 1e-5 : 1e-2) * mx) << "dQ: " << e.str();
  }
}

#define RUN_CUT_CASE(c, expect_cut)                                                        \
  do {                                                                                     \
    const uint64_t seed = test_seed() + static_cast<uint64_t>(__LINE__);                   \
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " (line " << __LINE__ << ")"); \
    bool any = false;                                                                      \
    run_cut_case(c, seed, &any);                                                           \
    EXPECT_EQ(any, expect_cut);                                                            \
  } while (0)

TEST(FlashBwdAlibiCutoff, BitIdenticalCausalAndNonCausal) {
  DISTATTN_REQUIRE_GPU();
  CutCase c;
  for (bool causal : {true, false}) {
    c.causal = causal;
    c.slope_step = 0.5f;  // steep: 0.71 .. 0.25
    c.S = 1000;
    RUN_CUT_CASE(c, true);
    c.slope_step = 2.f;  // shallow: 0.25 .. 0.004: cuts only the steeper heads
    c.S = 1100;
    RUN_CUT_CASE(c, true);
    c.slope_step = 0.5f;  // large norms: |q||k| scale ~ 1.8e4 log2 units, nothing may be cut
    c.qk_mult = 40.0;
    c.S = 700;
    RUN_CUT_CASE(c, false);
    c.qk_mult = 1.0;
  }
}

TEST(FlashBwdAlibiCutoff, BitIdenticalOddSizesGqaDtypes) {
  DISTATTN_REQUIRE_GPU();
  CutCase c;
  c.dtype = DType::kFloat16, c.D = 64, c.S = 777, c.Hq = 6, c.Hkv = 2, c.B = 2, c.causal = false;
  RUN_CUT_CASE(c, true);
  c.grads_fp32 = false;  // fp16 gradients
  c.causal = true;
  RUN_CUT_CASE(c, true);
  c = CutCase();
  c.S = 1333, c.Hq = 8, c.Hkv = 1, c.window = 600;  // MQA, sliding window, strided positions with an offset
  c.start = 5000, c.stride = 3;
  RUN_CUT_CASE(c, true);
  c = CutCase();
  c.S = 300, c.slope_step = 8.f;  // tiny slopes at a short length: nothing may be cut
  RUN_CUT_CASE(c, false);
}

// fp64 checks with the cutoff on (the library default), cutting pairs.
TEST(FlashBwdAlibiCutoff, Fp64CausalSteep) {
  DISTATTN_REQUIRE_GPU();
  DeviceCounter d_count;
  BwdCase c;
  c.Sq = 700, c.Skv = 700, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.alibi = true;
  c.cut_count = d_count.ptr;
  RUN_CASE(c);
  EXPECT_GT(d_count.get(), 0u);
}

// bf16 D=128 non-causal with strided positions: full tiles on both sides of the diagonal take the split
// form (row part + column part), the diagonal tiles the per-element path; the steep heads cut pairs.
TEST(FlashBwdAlibiCutoff, Fp64NonCausalBf16StridedPositions) {
  DISTATTN_REQUIRE_GPU();
  DeviceCounter d_count;
  BwdCase c;
  c.Sq = 600, c.Skv = 600, c.Hq = 4, c.Hkv = 4;
  c.q_pos = PositionMap::strided(1000, 3, 600);
  c.kv_pos = PositionMap::strided(1000, 3, 600);
  c.alibi = true;
  c.slope_step = 1.5f;
  c.cut_count = d_count.ptr;
  RUN_CASE(c);
  EXPECT_GT(d_count.get(), 0u);
}

TEST(FlashBwdAlibiCutoff, Fp64NonCausalFp16Hdim64Shallow) {
  DISTATTN_REQUIRE_GPU();
  DeviceCounter d_count;
  BwdCase c;
  c.dtype = DType::kFloat16, c.D = 64;
  c.Sq = 650, c.Skv = 650, c.Hq = 3, c.Hkv = 1;
  c.alibi = true;
  c.slope_step = 1.f;
  c.cut_count = d_count.ptr;
  RUN_CASE(c);
  EXPECT_GT(d_count.get(), 0u);
}

// ---- bad input: distattn::Error naming the argument, nothing written --------------------------------
struct BadInputFixture {
  HostTensor q, k, v, o, dout, grad_q, grad_k, grad_v;
  std::vector<float> lse;
  std::unique_ptr<DeviceTensor> dq_, dk_, dv_, do_, dov_, dgq, dgk, dgv;
  std::unique_ptr<DeviceArray<float>> d_lse;
  AttnBwdParams gb;

  explicit BadInputFixture(int64_t D, DType grad_dtype) {
    const int64_t B = 1, S = 64, H = 2;
    q = HostTensor(DType::kBFloat16, B, S, H, D);
    k = HostTensor(DType::kBFloat16, B, S, H, D);
    v = HostTensor(DType::kBFloat16, B, S, H, D);
    o = HostTensor(DType::kBFloat16, B, S, H, D);
    dout = HostTensor(DType::kBFloat16, B, S, H, D);
    for (HostTensor* t : {&q, &k, &v, &o, &dout}) fill_normal(*t, test_seed() + 99);
    grad_q = HostTensor(grad_dtype, B, S, H, D);
    grad_k = HostTensor(grad_dtype, B, S, H, D);
    grad_v = HostTensor(grad_dtype, B, S, H, D);
    for (HostTensor* t : {&grad_q, &grad_k, &grad_v}) fill_nan(*t);
    lse.assign(static_cast<size_t>(B * H * S), 1.f);
    dq_.reset(new DeviceTensor(q));
    dk_.reset(new DeviceTensor(k));
    dv_.reset(new DeviceTensor(v));
    dov_.reset(new DeviceTensor(o));
    do_.reset(new DeviceTensor(dout));
    dgq.reset(new DeviceTensor(grad_q));
    dgk.reset(new DeviceTensor(grad_k));
    dgv.reset(new DeviceTensor(grad_v));
    d_lse.reset(new DeviceArray<float>(lse));
    gb = contiguous_bwd_params(dq_->view(), dk_->view(), dv_->view(), dov_->view(), d_lse->ptr, do_->view(),
                               dgq->view(), dgk->view(), dgv->view());
  }
  // Runs the call, expects an Error naming `arg`, then checks the gradients still hold their NaN poison.
  void expect_rejected(const std::string& arg) {
    bool thrown = false;
    try {
      flash_attention_backward(gb, 0);
    } catch (const Error& e) {
      thrown = true;
      EXPECT_EQ(e.argument(), arg) << e.what();
    }
    EXPECT_TRUE(thrown) << "expected an error naming " << arg;
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
    for (auto* t : {dgq.get(), dgk.get(), dgv.get()}) {
      HostTensor back = convert(grad_q, t->view().dtype);  // same shape/dtype, packed like the device copy
      t->download(back);
      const auto& s = back.view.shape;
      for (int64_t i = 0; i < s[1]; ++i)
        for (int64_t h = 0; h < s[2]; ++h)
          for (int64_t d = 0; d < s[3]; ++d) ASSERT_TRUE(std::isnan(back.get(0, i, h, d))) << "gradient written";
    }
  }
};

TEST(FlashBwdBadInput, HostPointerForQ) {
  DISTATTN_REQUIRE_GPU();
  BadInputFixture f(128, DType::kBFloat16);
  f.gb.fwd.q.data = f.q.view.data;  // host memory, still marked kCuda
  f.expect_rejected("q");
}

TEST(FlashBwdBadInput, WrongDqDtype) {
  DISTATTN_REQUIRE_GPU();
  BadInputFixture f(128, DType::kBFloat16);
  f.gb.dq.dtype = DType::kFloat16;
  f.expect_rejected("dq");
}

TEST(FlashBwdBadInput, AccumulateWithBf16Dk) {
  DISTATTN_REQUIRE_GPU();
  BadInputFixture f(128, DType::kFloat32);
  f.gb.accumulate = true;
  f.gb.dk.dtype = DType::kBFloat16;  // same buffer read as bf16: rejected before anything happens
  f.expect_rejected("dk");
}

TEST(FlashBwdBadInput, HeadDim96) {
  DISTATTN_REQUIRE_GPU();
  BadInputFixture f(96, DType::kBFloat16);
  f.expect_rejected("q");
}

TEST(FlashBwdBadInput, HostLse) {
  DISTATTN_REQUIRE_GPU();
  BadInputFixture f(64, DType::kBFloat16);
  f.gb.fwd.lse = f.lse.data();
  f.expect_rejected("lse");
}

// flash_attention_backward_delta: delta[b, h, i] = sum_d dO[b, i, h, d] O[b, i, h, d] against the host's sum in double
// (fp32 accumulation of 128 / 64 products: within 1e-5 relative to sum |dO O|), padded strides, an fp32 O, both head
// dims; the output poisoned first; bad arguments rejected naming them.
TEST(FlashBwd, BackwardDeltaMatchesHostRowDot) {
  DISTATTN_REQUIRE_GPU();
  struct DeltaCase {
    DType o_dtype, dout_dtype;
    int64_t D, head_pad, row_pad;
  };
  const DeltaCase cases[] = {{DType::kBFloat16, DType::kBFloat16, 128, 8, 16},
                             {DType::kFloat32, DType::kFloat16, 64, 0, 0}};
  uint64_t seed = test_seed();
  for (const DeltaCase& dc : cases) {
    const int64_t B = 2, S = 77, H = 3;
    HostTensor o(dc.o_dtype, B, S, H, dc.D, dc.head_pad, dc.row_pad),
        dout(dc.dout_dtype, B, S, H, dc.D, dc.head_pad, dc.row_pad);
    fill_normal_each({&o, &dout}, seed);
    seed += 2;
    DeviceTensor d_o(o), d_dout(dout);
    DeviceArray<float> delta(std::vector<float>(static_cast<size_t>(B * H * S), std::nanf("")));
    flash_attention_backward_delta(d_o.view(), d_dout.view(), delta.ptr, 0);
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = delta.download();
    int64_t bad = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < S; ++i) {
          double ref = 0, mag = 0;
          for (int64_t d = 0; d < dc.D; ++d) {
            const double x = o.get(b, i, h, d) * dout.get(b, i, h, d);
            ref += x;
            mag += std::fabs(x);
          }
          const double g = got[static_cast<size_t>((b * H + h) * S + i)];
          if (!(std::fabs(g - ref) <= 1e-5 * mag + 1e-30)) ++bad;
        }
    EXPECT_EQ(bad, 0) << "o " << dtype_name(dc.o_dtype) << ", D " << dc.D;
  }
  HostTensor o(DType::kBFloat16, 1, 8, 2, 128), dout(DType::kBFloat16, 1, 8, 2, 128),
      short_o(DType::kBFloat16, 1, 7, 2, 128);
  DeviceTensor d_o(o), d_dout(dout), d_short(short_o);
  DeviceArray<float> delta(16);
  auto expect_naming = [](const char* arg, const std::function<void()>& call) {
    bool thrown = false;
    try {
      call();
    } catch (const Error& e) {
      thrown = true;
      EXPECT_EQ(e.argument(), arg) << e.what();
    }
    EXPECT_TRUE(thrown) << "expected an error naming " << arg;
  };
  expect_naming("delta", [&] { flash_attention_backward_delta(d_o.view(), d_dout.view(), nullptr, 0); });
  expect_naming("o", [&] { flash_attention_backward_delta(d_short.view(), d_dout.view(), delta.ptr, 0); });
  expect_naming("dout", [&] { flash_attention_backward_delta(d_o.view(), o.view, delta.ptr, 0); });  // host memory
}

}  // namespace
}  // namespace testing
}  // namespace distattn
