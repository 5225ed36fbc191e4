// flash_attention_forward_rope: q and k rotated in place, then attended; on the Hopper kernel (NeoX pairs over the
// whole head dim 128, no ALiBi, self-attention) the rotation runs inside the forward's launch (the producer
// warpgroup's helpers: hopper/flash_fwd_hopper_kernel.cuh, "fused RoPE").
//
// Claim tested: the same bits as the plain sequence rope_apply_cuda(q, k) -> flash_attention_forward, whatever the
// grid. Every case starts from the same random inputs (seeds printed) with o and lse poisoned with NaN, and runs
//   plain:   rope_apply_cuda on q and k in place, then flash_attention_forward;
//   fused:   detail::flash_attention_forward_rope on the fused path (kFused: at any size, unlike the public call,
//            which fuses from 8192 rows on), under several grid sizes (the automatic one, one CTA per unit, and
//            1 / 3 / 7 CTAs: one CTA's helpers then rotate almost everything while its producer waits, and the groups
//            rotated before the launch are those of the few first units);
//   off:     the same call on the separate path (kSeparate: rotate, then attend); and the public call on its own
//            stream;
//   q only:  k rotated first by a RoPE launch of its own (as the ring rotates it into its send buffer), then the call
//            that rotates q alone (rotate_k = false: fused under several grids, separate, and the public
//            flash_attention_forward_rope_q).
// o, lse and the rotated q and k (and, with a qkv buffer, v and every padding byte) must match the plain run bit for
// bit. Cases meant for the fused path assert that it is taken on a Hopper GPU. End to end, o and lse of the plain run
// are compared with the fp64 host engine on q, k rotated by rope_apply_host in the input dtype (what the kernel
// stores): errors at most twice those of the host's kRoundIntermediates forward plus a small slack.
// Bad input: bad rope fields, overlapping q / k / v / o and a bad forward argument throw distattn::Error naming the
// argument before anything is written (q, k unrotated, o still NaN).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../../sparse/src/flash_fwd_options.h"
#include "../../sparse/src/hopper/flash_fwd_hopper.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/alibi.h"
#include "distattn/positional/rope.h"
#include "distattn/sparse/block_layout.h"
#include "distattn/sparse/flash_attention.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::compare;
using testing::compare_flat;
using testing::DeviceArray;
using testing::DeviceTensor;
using testing::ErrorStats;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;
using testing::test_seed;

struct FCase {
  DType dtype = DType::kBFloat16;
  int64_t B = 1, Sq = 300, Skv = 300, Hq = 4, Hkv = 4, D = 128;
  Mask mask;
  int64_t q_start = 0;     // q rows at global positions q_start.. (kv rows from 0): a shard's offsets
  int64_t rotary_dim = 0;  // 0: D
  RopeStyle style = RopeStyle::kNeoX;
  bool alibi = false;
  bool fused_qkv = false;         // q, k, v as head slices of one [B, S, Hq + 2 Hkv, D] buffer (Sq == Skv)
  bool lse = true;                // plain mode may leave lse null
  PositionMap pos;                // set (num_chunks > 0 ... see make_inputs): q_pos = kv_pos = pos (self-attention)
  bool expect_fused = false;      // on a Hopper GPU the fused path must be taken
  BlockLayout* layout = nullptr;  // block list (its band is `mask`); null: the dense band
  bool fp64_check = true;         // false: no fp64 comparison (a layout with no block: O = 0, LSE = -inf everywhere)
};

// Bytes that differ between two host tensors of one layout (the storage is the elements, padding included).
int64_t differing_bytes(const HostTensor& a, const HostTensor& b) {
  int64_t n = 0;
  for (size_t i = 0; i < a.storage.size(); ++i) n += a.storage[i] != b.storage[i];
  return n;
}

// The device operands of one run: fresh copies of the inputs, o and lse poisoned.
struct DeviceRun {
  DeviceTensor qkv, q, k, v, o;             // qkv holds q, k, v when fused_qkv (q, k, v then unused)
  std::unique_ptr<DeviceArray<float>> lse;  // null without lse
  AttnParams params;
};

struct Inputs {
  HostTensor q, k, v, qkv;  // qkv: [B, S, Hq + 2 Hkv, D] when fused_qkv
  PositionMap q_pos, kv_pos;
  std::vector<float> slopes;
};

Inputs make_inputs(const FCase& c, uint64_t seed) {
  Inputs in;
  in.q_pos = PositionMap::contiguous(c.q_start, c.Sq);
  in.kv_pos = PositionMap::contiguous(0, c.Skv);
  if (c.pos.length() == c.Sq && c.Sq == c.Skv) in.q_pos = in.kv_pos = c.pos;
  if (c.fused_qkv) {
    in.qkv = HostTensor(c.dtype, c.B, c.Sq, c.Hq + 2 * c.Hkv, c.D);
    fill_normal(in.qkv, seed + 1);
  } else {
    in.q = HostTensor(c.dtype, c.B, c.Sq, c.Hq, c.D, /*head_pad=*/8);  // non-trivial head stride
    in.k = HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D);
    in.v = HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D);
    fill_normal(in.q, seed + 1);
    fill_normal(in.k, seed + 2);
    fill_normal(in.v, seed + 3);
  }
  if (c.alibi) in.slopes = alibi_slopes(c.Hq);
  return in;
}

void make_run(const FCase& c, const Inputs& in, const DeviceArray<float>& slopes, DeviceRun& r) {
  HostTensor o(c.dtype, c.B, c.Sq, c.Hq, c.D);
  fill_nan(o);
  r.o = DeviceTensor(o);
  AttnParams& p = r.params;
  p = AttnParams();
  if (c.fused_qkv) {
    r.qkv = DeviceTensor(in.qkv);
    p.q = r.qkv.view().head_range(0, c.Hq);
    p.k = r.qkv.view().head_range(c.Hq, c.Hq + c.Hkv);
    p.v = r.qkv.view().head_range(c.Hq + c.Hkv, c.Hq + 2 * c.Hkv);
  } else {
    r.q = DeviceTensor(in.q);
    r.k = DeviceTensor(in.k);
    r.v = DeviceTensor(in.v);
    p.q = r.q.view(), p.k = r.k.view(), p.v = r.v.view();
  }
  p.o = r.o.view();
  if (c.lse) {
    r.lse =
        std::make_unique<DeviceArray<float>>(std::vector<float>(static_cast<size_t>(c.B * c.Hq * c.Sq), std::nanf("")));
    p.lse = r.lse->ptr;
  }
  p.q_pos = in.q_pos, p.kv_pos = in.kv_pos;
  p.mask = c.layout != nullptr ? c.layout->device_mask() : c.mask;
  p.alibi_slopes = c.alibi ? slopes.ptr : nullptr;
}

// What a run leaves: o, lse, and q, k (rotated in place).
struct Result {
  HostTensor o, q, k;
  std::vector<float> lse;
};

Result collect(const FCase& c, const Inputs& in, const DeviceRun& r) {
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  Result res;
  res.o = HostTensor(c.dtype, c.B, c.Sq, c.Hq, c.D);
  r.o.download(res.o);
  if (c.fused_qkv) {
    HostTensor all = in.qkv;
    r.qkv.download(all);
    res.q = all;  // q, k compared through the whole buffer (v must be untouched too)
  } else {
    res.q = in.q;
    res.k = in.k;
    r.q.download(res.q);
    r.k.download(res.k);
  }
  if (c.lse) res.lse = r.lse->download();
  return res;
}

RopeFrequencies frequencies(const FCase& c) {
  RopeConfig cfg;
  cfg.head_dim = c.D;
  cfg.rotary_dim = c.rotary_dim;
  cfg.style = c.style;
  return make_rope_frequencies(cfg);
}

RopeParams rope_on(const AttnParams& p, const FCase& c, const float* inv_freq, float scale) {
  RopeParams r;
  r.q = p.q, r.k = p.k;
  r.q_pos = p.q_pos, r.k_pos = p.kv_pos;
  r.rotary_dim = c.rotary_dim;
  r.style = c.style;
  r.inv_freq = inv_freq;
  r.scale = scale;
  return r;
}

void expect_same(const Result& got, const Result& want, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(differing_bytes(got.o, want.o), 0) << "o differs from the plain sequence";
  EXPECT_EQ(differing_bytes(got.q, want.q), 0) << "q (or the qkv buffer) differs after the call";
  if (!want.k.storage.empty()) EXPECT_EQ(differing_bytes(got.k, want.k), 0) << "k differs after the call";
  ASSERT_EQ(got.lse.size(), want.lse.size());
  EXPECT_EQ(std::memcmp(got.lse.data(), want.lse.data(), want.lse.size() * sizeof(float)), 0) << "lse differs";
}

// o and lse of the plain run against the fp64 host forward on host-rotated q, k.
void expect_close_to_fp64(const FCase& c, const Inputs& in, const RopeFrequencies& freqs, const Result& plain) {
  HostTensor q = c.fused_qkv ? HostTensor(c.dtype, c.B, c.Sq, c.Hq, c.D) : in.q;
  HostTensor k = c.fused_qkv ? HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D) : in.k;
  HostTensor v = c.fused_qkv ? HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D) : in.v;
  if (c.fused_qkv) {
    HostTensor qs, ks, vs;
    qs.view = in.qkv.view.head_range(0, c.Hq);
    ks.view = in.qkv.view.head_range(c.Hq, c.Hq + c.Hkv);
    vs.view = in.qkv.view.head_range(c.Hq + c.Hkv, c.Hq + 2 * c.Hkv);
    copy_values(q, qs);
    copy_values(k, ks);
    copy_values(v, vs);
  }
  AttnParams h;
  h.q = q.view, h.k = k.view, h.v = v.view;
  RopeParams hr = rope_on(h, c, freqs.inv_freq.data(), freqs.scale);
  hr.q_pos = in.q_pos, hr.k_pos = in.kv_pos;
  rope_apply_host(hr);  // in the input dtype: rounded once, as the kernel stores
  HostTensor ref(DType::kFloat32, c.B, c.Sq, c.Hq, c.D), naive(DType::kFloat32, c.B, c.Sq, c.Hq, c.D);
  std::vector<float> ref_lse(static_cast<size_t>(c.B * c.Hq * c.Sq)), naive_lse(ref_lse.size());
  h.q_pos = in.q_pos, h.kv_pos = in.kv_pos;
  h.mask = c.layout != nullptr ? c.layout->host_mask() : c.mask;
  h.alibi_slopes = c.alibi ? in.slopes.data() : nullptr;
  h.o = ref.view;
  h.lse = ref_lse.data();
  host_attention_forward(h, HostPrecision::kFloat64);
  h.o = naive.view;
  h.lse = naive_lse.data();
  host_attention_forward(h, HostPrecision::kRoundIntermediates);
  const HostTensor naive16 = testing::convert(naive, c.dtype);
  const ErrorStats err = compare(plain.o.view, ref.view), base = compare(naive16.view, ref.view);
  const double r = rms_of(ref);
  std::printf("  o vs fp64: %s | naive: %s | ref rms %.3g\n", err.str().c_str(), base.str().c_str(), r);
  EXPECT_EQ(err.non_finite, 0);
  EXPECT_LE(err.max_abs, 2 * base.max_abs + 1e-2 * r + 1e-6);
  EXPECT_LE(err.rmse, 2 * base.rmse + 2e-3 * r + 1e-7);
  if (c.lse) {
    const std::vector<double> ref64(ref_lse.begin(), ref_lse.end());
    const ErrorStats le = compare_flat(plain.lse.data(), ref64.data(), static_cast<int64_t>(ref64.size()));
    const ErrorStats ln = compare_flat(naive_lse.data(), ref64.data(), static_cast<int64_t>(ref64.size()));
    std::printf("  lse vs fp64: %s | naive: %s\n", le.str().c_str(), ln.str().c_str());
    EXPECT_EQ(le.non_finite, 0);
    EXPECT_LE(le.rel_l2, 2 * ln.rel_l2 + 1e-6);
  }
}

void run_case(const FCase& c, uint64_t seed) {
  const Inputs in = make_inputs(c, seed);
  const RopeFrequencies freqs = frequencies(c);
  const DeviceArray<float> d_inv(freqs.inv_freq);
  const DeviceArray<float> d_slopes(c.alibi ? in.slopes : std::vector<float>{0.f});
  RopeAngles angles;
  angles.inv_freq = d_inv.ptr;
  angles.rotary_dim = c.rotary_dim;
  angles.style = static_cast<int>(c.style);
  angles.scale = freqs.scale;

  // The plain sequence: the reference for every schedule.
  DeviceRun plain_run;
  make_run(c, in, d_slopes, plain_run);
  rope_apply_cuda(rope_on(plain_run.params, c, d_inv.ptr, freqs.scale), 0);
  flash_attention_forward(plain_run.params, 0);
  const Result plain = collect(c, in, plain_run);

  int device = 0, major = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  DISTATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (c.expect_fused && major == 9) {
    EXPECT_TRUE(detail::forward_runs_hopper_rope(plain_run.params)) << "the fused path does not take this case";
    EXPECT_TRUE(detail::forward_rope_fuses(plain_run.params, angles, detail::RopeFwdPath::kFused));
  }
  EXPECT_FALSE(detail::forward_rope_fuses(plain_run.params, angles, detail::RopeFwdPath::kSeparate));
  // Grids: -1 automatic, 0 one CTA per unit, n > 0 that many CTAs.
  for (const int grid : {-1, 0, 1, 3, 7}) {
    DeviceRun run;
    make_run(c, in, d_slopes, run);
    flash_fwd_hopper_set_grid_override(grid);
    detail::flash_attention_forward_rope(run.params, angles, detail::RopeFwdPath::kFused, 0);
    flash_fwd_hopper_set_grid_override(-1);
    expect_same(collect(c, in, run), plain, "fused allowed, grid " + std::to_string(grid));
  }
  {
    DeviceRun run;
    make_run(c, in, d_slopes, run);
    detail::flash_attention_forward_rope(run.params, angles, detail::RopeFwdPath::kSeparate, 0);
    expect_same(collect(c, in, run), plain, "fused refused");
  }
  {
    // The diagnostic path (DISTATTN_ROPE_FWD=prerotated): rope_prepare rotates every group, the kernel none.
    DeviceRun run;
    make_run(c, in, d_slopes, run);
    detail::flash_attention_forward_rope(run.params, angles, detail::RopeFwdPath::kFusedPrerotated, 0);
    expect_same(collect(c, in, run), plain, "fused, every group rotated before the launch");
  }
  {
    // The public call on a non-default stream (its own rule and the environment choose the schedule).
    cudaStream_t stream = nullptr;
    DISTATTN_CUDA_CHECK(cudaStreamCreate(&stream));
    DeviceRun run;
    make_run(c, in, d_slopes, run);
    flash_attention_forward_rope(run.params, angles, stream);
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    DISTATTN_CUDA_CHECK(cudaStreamDestroy(stream));
    expect_same(collect(c, in, run), plain, "public call on a stream of its own");
  }
  // q only: k rotated by a launch of its own first (its RopeParams take k in the q slot), then q by the call.
  auto q_only_run = [&](const std::string& what, const std::function<void(const AttnParams&)>& call) {
    DeviceRun run;
    make_run(c, in, d_slopes, run);
    RopeParams kr = rope_on(run.params, c, d_inv.ptr, freqs.scale);
    kr.q = run.params.k, kr.q_pos = run.params.kv_pos;
    kr.k = TensorView();
    rope_apply_cuda(kr, 0);
    call(run.params);
    expect_same(collect(c, in, run), plain, what);
  };
  for (const int grid : {-1, 0, 1, 3}) {
    q_only_run("q only, fused allowed, grid " + std::to_string(grid), [&](const AttnParams& p) {
      flash_fwd_hopper_set_grid_override(grid);
      detail::flash_attention_forward_rope(p, angles, detail::RopeFwdPath::kFused, /*rotate_k=*/false, 0);
      flash_fwd_hopper_set_grid_override(-1);
    });
  }
  q_only_run("q only, separate", [&](const AttnParams& p) {
    detail::flash_attention_forward_rope(p, angles, detail::RopeFwdPath::kSeparate, /*rotate_k=*/false, 0);
  });
  q_only_run("q only, public call", [&](const AttnParams& p) { flash_attention_forward_rope_q(p, angles, 0); });
  if (c.fp64_check) expect_close_to_fp64(c, in, freqs, plain);
}

#define RUN_CASE(c)                                                                      \
  const uint64_t seed = test_seed() + static_cast<uint64_t>(__LINE__);                   \
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " (line " << __LINE__ << ")"); \
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));                     \
  run_case(c, seed)

TEST(RopeFwdFused, Bf16CausalGqaBatchOddLength) {
  DISTATTN_REQUIRE_GPU();
  FCase c;
  c.B = 2, c.Sq = c.Skv = 1000, c.Hq = 8, c.Hkv = 4;
  c.mask = Mask::make_causal();
  c.expect_fused = true;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Fp16NonCausalLongLargePositions) {
  DISTATTN_REQUIRE_GPU();
  FCase c;
  c.dtype = DType::kFloat16;
  c.Sq = c.Skv = 4224, c.Hq = c.Hkv = 6;           // > 4096 rows: one CTA per unit by default
  c.pos = PositionMap::contiguous(1000000, 4224);  // large angles: the table's accurate sincosf
  c.expect_fused = true;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Bf16TwoChunkPositionsCausalBatch3) {
  DISTATTN_REQUIRE_GPU();
  FCase c;
  c.B = 3, c.Sq = c.Skv = 1024, c.Hq = 4, c.Hkv = 2;
  c.pos = PositionMap::contiguous(0, 512);  // a zigzag shard's two halves: rows 512.. continue at 3584
  c.pos.add_chunk(3584, 1, 512);
  c.mask = Mask::make_causal();
  c.expect_fused = true;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Bf16WindowManyBatches) {
  DISTATTN_REQUIRE_GPU();
  FCase c;
  c.B = 5, c.Sq = c.Skv = 777, c.Hq = c.Hkv = 2;  // more groups than kv heads: the groups rotated first span batches
  c.mask = Mask::make_window(300);
  c.expect_fused = true;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Bf16FusedQkvBufferNoLse) {
  DISTATTN_REQUIRE_GPU();
  FCase c;
  c.Sq = c.Skv = 513, c.Hq = 6, c.Hkv = 3;
  c.fused_qkv = true;  // v sits between k and the next row's q: it must come out untouched
  c.lse = false;
  c.expect_fused = true;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Bf16BlockListCausal) {
  DISTATTN_REQUIRE_GPU();
  FCase c;
  c.B = 2, c.Sq = c.Skv = 1100, c.Hq = 4, c.Hkv = 2;
  BlockLayout layout =
      BlockLayout::unite(BlockLayout::strided(1100, 1100, 3, 1), BlockLayout::global_tokens(1100, 1100, 1));
  c.layout = &layout;
  c.expect_fused = true;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Bf16EmptyBlockListStillRotates) {
  DISTATTN_REQUIRE_GPU();
  FCase c;  // no block at all: no unit loads anything or waits, yet every job must run (the last producer's helpers)
  c.Sq = c.Skv = 2100, c.Hq = c.Hkv = 3;
  BlockLayout layout = BlockLayout::from_block_list(17, 17, {});
  c.layout = &layout;
  c.expect_fused = true;
  c.fp64_check = false;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Fp16WindowGptJPartialRotaryShardOffsets) {
  DISTATTN_REQUIRE_GPU();
  FCase c;  // not fusable (GPT-J, partial rotary, q_pos != kv_pos): rotate, then attend
  c.dtype = DType::kFloat16;
  c.Sq = 384, c.Skv = 900, c.Hq = c.Hkv = 6;
  c.q_start = 500;  // q rows 500..883 of a 900-row sequence: global positions, not local ones
  c.mask = Mask::make_window(200);
  c.style = RopeStyle::kGptJ;
  c.rotary_dim = 64;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Bf16AlibiCausal) {
  DISTATTN_REQUIRE_GPU();
  FCase c;  // ALiBi: not fusable
  c.Sq = c.Skv = 1100;
  c.Hq = c.Hkv = 4;
  c.mask = Mask::make_causal();
  c.alibi = true;
  RUN_CASE(c);
}

TEST(RopeFwdFused, Bf16HeadDim64OneKvHead) {
  DISTATTN_REQUIRE_GPU();
  FCase c;  // head dim 64: the mma.sync kernel, not fusable
  c.D = 64, c.Sq = c.Skv = 700, c.Hq = 4, c.Hkv = 1;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(RopeFwdFused, BadInputThrowsBeforeWriting) {
  DISTATTN_REQUIRE_GPU();
  FCase c;
  c.Hq = c.Hkv = 4;
  const Inputs in = make_inputs(c, test_seed() + 11);
  const RopeFrequencies freqs = frequencies(c);
  const DeviceArray<float> d_inv(freqs.inv_freq), d_slopes(std::vector<float>{0.f});
  RopeAngles good;
  good.inv_freq = d_inv.ptr;
  struct Bad {
    const char* arg;
    void (*mutate)(AttnParams&, RopeAngles&);
  };
  const Bad cases[] = {
      {"rope.inv_freq", [](AttnParams&, RopeAngles& r) { r.inv_freq = nullptr; }},
      {"rope.rotary_dim", [](AttnParams&, RopeAngles& r) { r.rotary_dim = 33; }},
      {"rope.style", [](AttnParams&, RopeAngles& r) { r.style = 2; }},
      {"rope.scale", [](AttnParams&, RopeAngles& r) { r.scale = std::nanf(""); }},
      {"k", [](AttnParams& p, RopeAngles&) { p.k = p.q; }},
      {"v", [](AttnParams& p, RopeAngles&) { p.v = p.k; }},
      {"o", [](AttnParams& p, RopeAngles&) { p.o.shape[1] -= 1; }},
      {"o", [](AttnParams& p, RopeAngles&) { p.o = p.q; }},
  };
  HostTensor poisoned_o(c.dtype, c.B, c.Sq, c.Hq, c.D);
  fill_nan(poisoned_o);
  for (const Bad& b : cases) {
    DeviceRun run;
    make_run(c, in, d_slopes, run);
    RopeAngles r = good;
    b.mutate(run.params, r);
    EXPECT_ERROR_ARG(flash_attention_forward_rope(run.params, r, 0), b.arg);
    const Result after = collect(c, in, run);
    EXPECT_EQ(differing_bytes(after.q, in.q), 0) << b.arg << ": q was written";
    EXPECT_EQ(differing_bytes(after.k, in.k), 0) << b.arg << ": k was written";
    EXPECT_EQ(differing_bytes(after.o, poisoned_o), 0) << b.arg << ": o was written";
  }
}

}  // namespace
}  // namespace distattn
