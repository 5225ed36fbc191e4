// validate_forward / validate_backward (attn_params.h): each bad input is rejected with a distattn::Error
// naming the offending argument, and the host engine writes nothing on a rejected call (outputs poisoned
// with NaN stay NaN).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/core/operand_checks.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;
using testing::test_seed;

bool all_nan(const HostTensor& t) {
  const int64_t n = static_cast<int64_t>(t.storage.size() / dtype_size(t.view.dtype));
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(load_as_double(t.view.data, i, t.view.dtype))) return false;
  return true;
}
bool all_nan(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isnan(x)) return false;
  return true;
}

// A valid fp64 problem (B=2, Sq=9, Skv=11, Hq=4, Hkv=2, D=8) with a block list, ALiBi and poisoned outputs.
struct Fixture {
  static constexpr int64_t B = 2, Sq = 9, Skv = 11, Hq = 4, Hkv = 2, D = 8;
  HostTensor q, k, v, o, dout, dq, dk, dv;
  std::vector<float> lse, delta, slopes;
  std::vector<int32_t> row_offset{0, 1}, col_index{0}, col_offset{0, 1}, row_index{0};
  std::vector<uint8_t> row_partial{1}, col_partial{1};
  BlockListView blocks;
  AttnParams p;
  AttnBwdParams bp;

  explicit Fixture(DType dtype = DType::kFloat64, DType o_dtype = DType::kFloat64) {
    const uint64_t seed = test_seed();
    q = HostTensor(dtype, B, Sq, Hq, D, 1, 2);
    k = HostTensor(dtype, B, Skv, Hkv, D);
    v = HostTensor(dtype, B, Skv, Hkv, D, 0, 3);
    o = HostTensor(o_dtype, B, Sq, Hq, D);
    dout = HostTensor(dtype, B, Sq, Hq, D);
    dq = HostTensor(o_dtype, B, Sq, Hq, D);
    dk = HostTensor(o_dtype, B, Skv, Hkv, D);
    dv = HostTensor(o_dtype, B, Skv, Hkv, D);
    fill_normal(q, seed);
    fill_normal(k, seed + 1);
    fill_normal(v, seed + 2);
    fill_normal(dout, seed + 3);
    lse.assign(B * Hq * Sq, 0.5f);  // a plausible forward LSE for the backward's validation
    delta.assign(B * Hq * Sq, 0.25f);
    slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
    blocks.device = Device::kHost;
    blocks.num_q_blocks = 1;
    blocks.num_kv_blocks = 1;
    blocks.nnz = 1;
    blocks.row_offset = row_offset.data();
    blocks.col_index = col_index.data();
    blocks.row_partial = row_partial.data();
    blocks.col_offset = col_offset.data();
    blocks.row_index = row_index.data();
    blocks.col_partial = col_partial.data();

    p.q = q.view;
    p.k = k.view;
    p.v = v.view;
    p.o = o.view;
    p.lse = lse.data();
    p.q_pos = PositionMap::contiguous(4, Sq);
    p.kv_pos = PositionMap::contiguous(0, 5).add_chunk(20, 2, 6);
    p.mask = Mask::make_causal(6);
    p.mask.blocks = &blocks;
    p.alibi_slopes = slopes.data();
    bp.fwd = p;
    bp.dout = dout.view;
    bp.dq = dq.view;
    bp.dk = dk.view;
    bp.dv = dv.view;
    poison();
  }
  void poison() {
    fill_nan(o);
    fill_nan(dq);
    fill_nan(dk);
    fill_nan(dv);
  }
};

// Runs `call` expecting a distattn::Error naming `argument`.
void expect_error(const std::function<void()>& call, const std::string& argument, const char* what) {
  SCOPED_TRACE(what);
  try {
    call();
    ADD_FAILURE() << "no error thrown; expected one naming '" << argument << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
    EXPECT_NE(std::string(e.what()).find(argument), std::string::npos) << e.what();
  }
}

// A bad forward input: validate_forward throws naming `argument`, and host_attention_forward throws
// the same without writing o (the fixture's buffer) or lse.
void expect_forward_rejected(const std::function<void(Fixture&)>& mutate, const std::string& argument,
                             const char* what) {
  SCOPED_TRACE(::testing::Message() << "seed " << test_seed());
  Fixture f;
  std::vector<float> lse_poison(f.lse.size(), std::nanf(""));
  f.lse = lse_poison;
  f.p.lse = f.lse.data();
  mutate(f);
  expect_error([&] { validate_forward(f.p, Device::kHost); }, argument, what);
  expect_error([&] { host_attention_forward(f.p, HostPrecision::kFloat64); }, argument, what);
  EXPECT_TRUE(all_nan(f.o)) << what << ": o written by a rejected call";
  EXPECT_TRUE(all_nan(f.lse)) << what << ": lse written by a rejected call";
}

void expect_backward_rejected(const std::function<void(Fixture&)>& mutate, const std::string& argument,
                              const char* what) {
  SCOPED_TRACE(::testing::Message() << "seed " << test_seed());
  Fixture f;
  mutate(f);
  expect_error([&] { validate_backward(f.bp, Device::kHost); }, argument, what);
  expect_error([&] { host_attention_backward(f.bp, HostPrecision::kFloat64); }, argument, what);
  EXPECT_TRUE(all_nan(f.dq) && all_nan(f.dk) && all_nan(f.dv)) << what << ": gradients written by a rejected call";
}

TEST(Validate, FixtureIsValid) {
  Fixture f;
  EXPECT_NO_THROW(validate_forward(f.p, Device::kHost));
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kHost));
  // ... and the engine writes every output (so the poison checks below mean something).
  host_attention_forward(f.p);
  EXPECT_FALSE(all_nan(f.o));
  f.bp.fwd = f.p;
  host_attention_backward(f.bp);
  for (const HostTensor* t : {&f.o, &f.dq, &f.dk, &f.dv}) {
    const auto& s = t->view.shape;
    for (int64_t b = 0; b < s[0]; ++b)
      for (int64_t i = 0; i < s[1]; ++i)
        for (int64_t h = 0; h < s[2]; ++h)
          for (int64_t d = 0; d < s[3]; ++d) ASSERT_FALSE(std::isnan(t->get(b, i, h, d)));
  }
  // The defaults.
  EXPECT_FLOAT_EQ(f.p.scale(), 1.0f / std::sqrt(8.0f));
  EXPECT_EQ(f.p.lse_batch_step(), Fixture::Hq * Fixture::Sq);
  EXPECT_EQ(f.p.lse_head_step(), Fixture::Sq);
  EXPECT_EQ(f.p.lse_row_step(), 1);
  f.p.softmax_scale = 0.3f;
  f.p.lse_batch_stride = 100;
  f.p.lse_head_stride = 20;
  EXPECT_EQ(f.p.scale(), 0.3f);
  EXPECT_EQ(f.p.lse_batch_step(), 100);
  EXPECT_EQ(f.p.lse_head_step(), 20);
}

// --- presence -------------------------------------------------------------------------------------
TEST(Validate, NullTensors) {
  expect_forward_rejected([](Fixture& f) { f.p.q.data = nullptr; }, "q", "q null");
  expect_forward_rejected([](Fixture& f) { f.p.k.data = nullptr; }, "k", "k null");
  expect_forward_rejected([](Fixture& f) { f.p.v.data = nullptr; }, "v", "v null");
  expect_forward_rejected([](Fixture& f) { f.p.o.data = nullptr; }, "o", "o null");
}

// --- shapes ---------------------------------------------------------------------------------------
TEST(Validate, ZeroSizes) {
  expect_forward_rejected([](Fixture& f) { f.p.q.shape[1] = 0; }, "q", "Sq = 0");
  expect_forward_rejected([](Fixture& f) { f.p.k.shape[0] = 0; }, "k", "B = 0 in k");
  expect_forward_rejected([](Fixture& f) { f.p.v.shape[2] = 0; }, "v", "Hkv = 0 in v");
  expect_forward_rejected([](Fixture& f) { f.p.o.shape[3] = -1; }, "o", "D < 0 in o");
}

TEST(Validate, ShapeMismatches) {
  expect_forward_rejected([](Fixture& f) { f.p.k.shape[0] = 1, f.p.v.shape[0] = 1; }, "k", "batch of k");
  expect_forward_rejected([](Fixture& f) { f.p.v.shape[1] = 10; }, "v", "Skv of v != k");
  expect_forward_rejected([](Fixture& f) { f.p.k.shape[3] = 4, f.p.v.shape[3] = 4; }, "k", "head dim of k");
  expect_forward_rejected([](Fixture& f) { f.p.o.shape[1] = 8; }, "o", "Sq of o");
  expect_forward_rejected([](Fixture& f) { f.p.o.shape[2] = 2; }, "o", "heads of o");
  expect_forward_rejected([](Fixture& f) { f.p.o.shape[3] = 4; }, "o", "head dim of o");
}

TEST(Validate, GqaRatioNamesBothHeadCounts) {
  Fixture f;
  f.p.k.shape[2] = 3;  // 4 % 3 != 0
  f.p.v.shape[2] = 3;
  try {
    validate_forward(f.p, Device::kHost);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "k");
    const std::string m = e.message();
    EXPECT_NE(m.find('3'), std::string::npos) << m;
    EXPECT_NE(m.find('4'), std::string::npos) << m;
  }
  expect_forward_rejected(
      [](Fixture& f) {
        f.p.k.shape[2] = 3;
        f.p.v.shape[2] = 3;
      },
      "k", "Hq % Hkv");
}

// --- strides and index range ------------------------------------------------------------------------
TEST(Validate, Strides) {
  expect_forward_rejected([](Fixture& f) { f.p.q.stride[3] = 2; }, "q", "q head dim not contiguous");
  expect_forward_rejected([](Fixture& f) { f.p.v.stride[3] = 0; }, "v", "v head dim stride 0");
  expect_forward_rejected([](Fixture& f) { f.p.k.stride[1] = -16; }, "k", "negative row stride");
  expect_forward_rejected([](Fixture& f) { f.p.o.stride[0] = -1; }, "o", "negative batch stride");
  expect_forward_rejected([](Fixture& f) { f.p.o.stride[2] = 0; }, "o", "output heads overlapping");
}

TEST(Validate, IndexMathOverflow) {
  // Byte offsets past int64: a huge batch stride, and a huge element count.
  expect_forward_rejected([](Fixture& f) { f.p.q.stride[0] = int64_t{1} << 61; }, "q", "stride overflow");
  expect_forward_rejected(
      [](Fixture& f) {
        f.p.k.shape = {1 << 20, 1 << 20, 1 << 20, 8};
        f.p.k.stride = {0, 0, 0, 1};
      },
      "k", "element count overflow");
}

// --- dtypes and devices -----------------------------------------------------------------------------
TEST(Validate, Dtypes) {
  expect_forward_rejected([](Fixture& f) { f.p.k.dtype = DType::kFloat32; }, "k", "k dtype");
  expect_forward_rejected([](Fixture& f) { f.p.v.dtype = DType::kBFloat16; }, "v", "v dtype");
  expect_forward_rejected([](Fixture& f) { f.p.o.dtype = DType::kFloat16; }, "o", "o dtype (plain)");
  expect_forward_rejected(
      [](Fixture& f) {
        f.p.accumulate = true;  // o is fp64: accumulate needs fp32
      },
      "o", "o dtype (accumulate)");
  expect_forward_rejected([](Fixture& f) { f.p.q.dtype = static_cast<DType>(7); }, "q", "unknown dtype");
}

TEST(Validate, PlainModeAcceptsFp32Output) {
  Fixture f(DType::kBFloat16, DType::kFloat32);
  EXPECT_NO_THROW(validate_forward(f.p, Device::kHost));
  f.p.accumulate = true;
  EXPECT_NO_THROW(validate_forward(f.p, Device::kHost));
  f.p.o.dtype = DType::kBFloat16;
  expect_error([&] { validate_forward(f.p, Device::kHost); }, "o", "bf16 o in accumulate mode");
}

TEST(Validate, Devices) {
  expect_forward_rejected([](Fixture& f) { f.p.v.device = Device::kCuda; }, "v", "v on cuda, host engine");
  expect_forward_rejected([](Fixture& f) { f.p.o.device = Device::kCuda; }, "o", "o on cuda, host engine");
  expect_forward_rejected([](Fixture& f) { f.blocks.device = Device::kCuda; }, "mask.blocks",
                          "blocks on cuda, host engine");
  // The CUDA engine: tensors on the host, and host-only dtypes.
  Fixture f(DType::kBFloat16, DType::kBFloat16);
  expect_error([&] { validate_forward(f.p, Device::kCuda); }, "q", "host q for the cuda engine");
  Fixture g(DType::kFloat32, DType::kFloat32);
  for (TensorView* t : {&g.p.q, &g.p.k, &g.p.v, &g.p.o}) t->device = Device::kCuda;
  g.blocks.device = Device::kCuda;
  expect_error([&] { validate_forward(g.p, Device::kCuda); }, "q", "fp32 q on the cuda engine");
  g.p.q.dtype = g.p.k.dtype = g.p.v.dtype = g.p.o.dtype = DType::kFloat16;
  EXPECT_NO_THROW(validate_forward(g.p, Device::kCuda));
  g.p.o.dtype = DType::kBFloat16;
  expect_error([&] { validate_forward(g.p, Device::kCuda); }, "o", "bf16 o with fp16 q");
}

// --- lse, positions, mask, ALiBi, scale ---------------------------------------------------------------
TEST(Validate, Lse) {
  expect_forward_rejected(
      [](Fixture& f) {
        f.p.o.dtype = DType::kFloat32;  // so that the accumulate-mode rejection can only be about lse
        f.p.accumulate = true;
        f.p.lse = nullptr;
      },
      "lse", "lse null in accumulate mode");
  expect_forward_rejected([](Fixture& f) { f.p.lse_head_stride = -1; }, "lse", "negative lse stride");
  expect_forward_rejected([](Fixture& f) { f.p.lse_head_stride = 3; }, "lse", "lse heads overlapping");
  expect_forward_rejected([](Fixture& f) { f.p.lse_batch_stride = int64_t{1} << 62; }, "lse", "lse stride overflow");
  expect_forward_rejected([](Fixture& f) { f.p.lse_row_stride = -2; }, "lse", "negative lse row stride");
  // Row stride 2: a head's 9 rows span 17 entries, so the packed head step 9 would interleave heads.
  expect_forward_rejected([](Fixture& f) { f.p.lse_row_stride = 2; }, "lse", "lse heads overlapping with row stride");
  expect_forward_rejected(
      [](Fixture& f) {
        f.p.lse_row_stride = 2;
        f.p.lse_head_stride = 17;
        f.p.lse_batch_stride = 16;
      },
      "lse", "lse batches overlapping with row stride");
  expect_forward_rejected(
      [](Fixture& f) {
        f.p.lse_row_stride = int64_t{1} << 60;
        f.p.lse_head_stride = int64_t{1} << 62;
      },
      "lse", "lse row stride overflow");
  {
    Fixture g;
    g.p.lse_row_stride = 2;
    g.p.lse_head_stride = 17;
    g.p.lse_batch_stride = 4 * 17;
    EXPECT_EQ(g.p.lse_row_step(), 2);
    EXPECT_NO_THROW(validate_forward(g.p, Device::kHost));
  }
  // The backward reads lse (and delta) with row stride 1 only.
  expect_backward_rejected(
      [](Fixture& f) {
        f.bp.fwd.lse_row_stride = 2;
        f.bp.fwd.lse_head_stride = 17;
        f.bp.fwd.lse_batch_stride = 4 * 17;
      },
      "fwd.lse_row_stride", "lse row stride in the backward");
  // Plain mode: lse may be null.
  Fixture f;
  f.p.lse = nullptr;
  EXPECT_NO_THROW(validate_forward(f.p, Device::kHost));
}

TEST(Validate, PositionMaps) {
  expect_forward_rejected([](Fixture& f) { f.p.q_pos = PositionMap::contiguous(0, 8); }, "q_pos", "q_pos too short");
  expect_forward_rejected([](Fixture& f) { f.p.kv_pos = PositionMap::contiguous(0, 12); }, "kv_pos", "kv_pos too long");
  expect_forward_rejected([](Fixture& f) { f.p.kv_pos = PositionMap::strided(0, 0, 11); }, "kv_pos", "kv_pos stride 0");
  expect_forward_rejected([](Fixture& f) { f.p.q_pos = PositionMap::contiguous(-3, 9); }, "q_pos", "negative position");
  expect_forward_rejected([](Fixture& f) { f.p.q_pos = PositionMap(); }, "q_pos", "no chunks");
}

TEST(Validate, MaskWindow) {
  expect_forward_rejected([](Fixture& f) { f.p.mask.window = -1; }, "mask.window", "negative window");
}

TEST(Validate, BlockList) {
  expect_forward_rejected([](Fixture& f) { f.blocks.num_q_blocks = 2; }, "mask.blocks", "num_q_blocks");
  expect_forward_rejected([](Fixture& f) { f.blocks.num_kv_blocks = 0; }, "mask.blocks", "num_kv_blocks");
  expect_forward_rejected([](Fixture& f) { f.blocks.nnz = -1; }, "mask.blocks", "negative nnz");
  expect_forward_rejected([](Fixture& f) { f.blocks.row_offset = nullptr; }, "mask.blocks", "row_offset null");
  expect_forward_rejected([](Fixture& f) { f.blocks.col_index = nullptr; }, "mask.blocks", "col_index null");
  expect_forward_rejected([](Fixture& f) { f.blocks.row_partial = nullptr; }, "mask.blocks", "row_partial null");
  expect_forward_rejected([](Fixture& f) { f.blocks.col_offset = nullptr; }, "mask.blocks", "col_offset null");
  expect_forward_rejected([](Fixture& f) { f.blocks.row_index = nullptr; }, "mask.blocks", "row_index null");
  expect_forward_rejected([](Fixture& f) { f.blocks.col_partial = nullptr; }, "mask.blocks", "col_partial null");
  // Host arrays are also checked for a well-formed CSR.
  expect_forward_rejected([](Fixture& f) { f.col_index[0] = 1; }, "mask.blocks", "col_index out of range");
  expect_forward_rejected([](Fixture& f) { f.row_offset[1] = 0; }, "mask.blocks", "row_offset end != nnz");
}

TEST(Validate, AlibiSlopes) {
  expect_forward_rejected([](Fixture& f) { f.slopes[2] = std::nanf(""); }, "alibi_slopes", "NaN slope");
  expect_forward_rejected([](Fixture& f) { f.slopes[0] = std::numeric_limits<float>::infinity(); }, "alibi_slopes",
                          "infinite slope");
}

TEST(Validate, SoftmaxScale) {
  expect_forward_rejected([](Fixture& f) { f.p.softmax_scale = -0.5f; }, "softmax_scale", "negative scale");
  expect_forward_rejected([](Fixture& f) { f.p.softmax_scale = std::nanf(""); }, "softmax_scale", "NaN scale");
  expect_forward_rejected([](Fixture& f) { f.p.softmax_scale = std::numeric_limits<float>::infinity(); },
                          "softmax_scale", "infinite scale");
}

TEST(Validate, MaxCtas) {
  expect_forward_rejected([](Fixture& f) { f.p.max_ctas = -1; }, "max_ctas", "negative CTA cap");
  Fixture f;
  f.p.max_ctas = 3;  // a cap is scheduling only: accepted by either engine
  EXPECT_NO_THROW(validate_forward(f.p, Device::kHost));
}

TEST(Validate, OutputAliasingInput) {
  expect_forward_rejected([](Fixture& f) { f.p.o.data = f.p.q.data, f.p.o.stride = f.p.q.stride; }, "o", "o == q");
  expect_forward_rejected([](Fixture& f) { f.p.o.data = f.p.v.data; }, "o", "o == v");
}

TEST(Validate, UnknownPrecision) {
  Fixture f;
  expect_error([&] { host_attention_forward(f.p, static_cast<HostPrecision>(9)); }, "precision", "forward");
  expect_error([&] { host_attention_backward(f.bp, static_cast<HostPrecision>(9)); }, "precision", "backward");
  EXPECT_TRUE(all_nan(f.o) && all_nan(f.dq) && all_nan(f.dk) && all_nan(f.dv));
}

// --- backward ---------------------------------------------------------------------------------------
TEST(ValidateBackward, ForwardPartIsChecked) {
  expect_backward_rejected([](Fixture& f) { f.bp.fwd.k.data = nullptr; }, "k", "k null");
  expect_backward_rejected([](Fixture& f) { f.bp.fwd.lse = nullptr; }, "lse", "lse null in backward");
  expect_backward_rejected([](Fixture& f) { f.bp.fwd.mask.window = -2; }, "mask.window", "window");
  expect_backward_rejected([](Fixture& f) { f.bp.fwd.kv_pos = PositionMap::contiguous(0, 3); }, "kv_pos", "kv_pos");
  // The forward's accumulate flag does not apply to the backward's o (an input).
  Fixture f;
  f.bp.fwd.accumulate = true;
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kHost));
}

TEST(ValidateBackward, Dout) {
  expect_backward_rejected([](Fixture& f) { f.bp.dout.data = nullptr; }, "dout", "dout null");
  expect_backward_rejected([](Fixture& f) { f.bp.dout.shape[1] = 8; }, "dout", "dout shape");
  expect_backward_rejected([](Fixture& f) { f.bp.dout.dtype = DType::kFloat32; }, "dout", "dout dtype");
  expect_backward_rejected([](Fixture& f) { f.bp.dout.stride[3] = 3; }, "dout", "dout head dim stride");
}

TEST(ValidateBackward, GradientShapesAndDtypes) {
  expect_backward_rejected([](Fixture& f) { f.bp.dq.shape[2] = 2; }, "dq", "dq shape");
  expect_backward_rejected([](Fixture& f) { f.bp.dk.shape[1] = 9; }, "dk", "dk shape");
  expect_backward_rejected([](Fixture& f) { f.bp.dv.shape[2] = 4; }, "dv", "dv shape");
  expect_backward_rejected([](Fixture& f) { f.bp.dq.dtype = DType::kBFloat16; }, "dq", "dq dtype");
  expect_backward_rejected([](Fixture& f) { f.bp.dv.dtype = DType::kFloat16; }, "dv", "dv dtype");
  expect_backward_rejected([](Fixture& f) { f.bp.accumulate = true; }, "dq", "fp64 dq in accumulate mode");
  expect_backward_rejected([](Fixture& f) { f.bp.dk.stride[3] = 2; }, "dk", "dk head dim stride");
  expect_backward_rejected([](Fixture& f) { f.bp.dv.stride[1] = 0; }, "dv", "dv rows overlapping");
  expect_backward_rejected([](Fixture& f) { f.bp.dq.device = Device::kCuda; }, "dq", "dq on cuda");
}

TEST(ValidateBackward, Aliasing) {
  expect_backward_rejected([](Fixture& f) { f.bp.dq.data = f.bp.fwd.q.data; }, "dq", "dq == q");
  expect_backward_rejected([](Fixture& f) { f.bp.dq.data = f.bp.dout.data; }, "dq", "dq == dout");
  expect_backward_rejected([](Fixture& f) { f.bp.dk.data = f.bp.fwd.k.data; }, "dk", "dk == k");
  expect_backward_rejected([](Fixture& f) { f.bp.dv.data = f.bp.dk.data; }, "dk", "dv == dk");
  expect_backward_rejected([](Fixture& f) { f.bp.delta = f.bp.fwd.lse; }, "delta", "delta == lse");
}

TEST(ValidateBackward, AccumulateNeedsFp32Gradients) {
  Fixture f(DType::kBFloat16, DType::kFloat32);
  f.bp.accumulate = true;
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kHost));
  f.bp.dk.dtype = DType::kBFloat16;
  expect_error([&] { validate_backward(f.bp, Device::kHost); }, "dk", "bf16 dk in accumulate mode");
}

}  // namespace
}  // namespace distattn

namespace distattn {
namespace {

// cuda_tensor_aligned (operand_checks.h): the CUDA engine's layout rule as a predicate (no residency check).
TEST(CudaTensorAligned, BaseAndStridesOf16Bytes) {
  alignas(16) static unsigned char buf[1 << 16];
  // bf16 [1, 4, 2, 8]: 16-byte rows of a head, packed.
  TensorView t = TensorView::packed(buf, DType::kBFloat16, Device::kCuda, 1, 4, 2, 8);
  EXPECT_TRUE(cuda_tensor_aligned(t));
  TensorView off = t;
  off.data = buf + 2;  // base 2 bytes off
  EXPECT_FALSE(cuda_tensor_aligned(off));
  TensorView row = t;
  row.stride[1] = 2 * 8 + 1;  // 34-byte rows
  EXPECT_FALSE(cuda_tensor_aligned(row));
  TensorView one_row = row;
  one_row.shape[1] = 1;  // a single row: its stride is never used
  EXPECT_TRUE(cuda_tensor_aligned(one_row));
  TensorView head = t;
  head.stride[2] = 4;  // 8-byte head stride (heads overlap: the rule only looks at alignment)
  EXPECT_FALSE(cuda_tensor_aligned(head));
}

// The host engine honours AttnParams::lse_row_stride (plain and accumulate mode): with row stride 3 and matching head
// and batch steps, entry (b, h, i) lands at b*Hq*3*Sq + h*3*Sq + 3*i with the same bits as the packed call's
// (b, h, i), and the entries in between stay as they were (NaN poison). Accumulate: a second call merges into both.
TEST(HostEngine, LseRowStride) {
  Fixture f(DType::kFloat32, DType::kFloat32);
  SCOPED_TRACE(::testing::Message() << "seed " << test_seed());
  constexpr int64_t R = 3, B = Fixture::B, Hq = Fixture::Hq, Sq = Fixture::Sq;
  HostTensor o_packed = f.o, o_strided = f.o;
  std::vector<float> lse_packed(B * Hq * Sq, std::nanf("")), lse_strided(B * Hq * Sq * R, std::nanf(""));
  for (int accumulate = 0; accumulate < 2; ++accumulate) {
    AttnParams a = f.p, c = f.p;
    a.accumulate = c.accumulate = accumulate != 0;
    a.o = o_packed.view;
    a.lse = lse_packed.data();
    c.o = o_strided.view;
    c.lse = lse_strided.data();
    c.lse_row_stride = R;
    c.lse_head_stride = R * Sq;
    c.lse_batch_stride = Hq * R * Sq;
    host_attention_forward(a, HostPrecision::kFloat64);
    host_attention_forward(c, HostPrecision::kFloat64);
    EXPECT_TRUE(o_packed.storage == o_strided.storage) << "accumulate " << accumulate;
    int64_t finite = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Sq; ++i) {
          const float x = lse_packed[(b * Hq + h) * Sq + i];
          const int64_t e = (b * Hq + h) * R * Sq + R * i;
          EXPECT_EQ(std::memcmp(&x, &lse_strided[e], sizeof(float)), 0) << "b " << b << " h " << h << " i " << i;
          finite += std::isfinite(x) ? 1 : 0;
          for (int64_t j = 1; j < R; ++j) EXPECT_TRUE(std::isnan(lse_strided[e + j])) << "gap entry written";
        }
    EXPECT_GT(finite, 0);
  }
}

}  // namespace
}  // namespace distattn
