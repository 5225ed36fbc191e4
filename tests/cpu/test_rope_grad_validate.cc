// validate_backward's checks of AttnBwdParams::rope_grad (the inverse RoPE fused into the CUDA backward): every bad
// field throws distattn::Error naming it; the host engine rejects the field (it has no fused inverse) instead of
// ignoring it, and writes nothing. Host code only: the tensors are host buffers labelled as device memory where the
// CUDA rules are checked (validation never reads them).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "distattn/core/attn_params.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "flash_bwd_check.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::contiguous_bwd_params;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;
using testing::test_seed;

// A valid bf16 backward (B=1, S=13, H=2, D=64) with a valid rope_grad.
struct RopeFixture {
  static constexpr int64_t S = 13, H = 2, D = 64;
  HostTensor q, k, v, o, dout, dq, dk, dv;
  std::vector<float> lse, inv_freq;
  RopeGradParams rope;
  AttnBwdParams bp;

  explicit RopeFixture(Device label) {
    const uint64_t seed = test_seed();
    for (HostTensor* t : {&q, &k, &v, &o, &dout}) *t = HostTensor(DType::kBFloat16, 1, S, H, D);
    for (HostTensor* t : {&dq, &dk, &dv}) *t = HostTensor(DType::kFloat32, 1, S, H, D);
    uint64_t s = seed;
    for (HostTensor* t : {&q, &k, &v, &o, &dout}) fill_normal(*t, s++);
    for (HostTensor* t : {&dq, &dk, &dv}) fill_nan(*t);
    lse.assign(H * S, 0.5f);
    inv_freq.assign(D / 2, 0.01f);
    rope.inv_freq = inv_freq.data();
    bp = contiguous_bwd_params(q.view, k.view, v.view, o.view, lse.data(), dout.view, dq.view, dk.view, dv.view);
    for (TensorView* t : {&bp.fwd.q, &bp.fwd.k, &bp.fwd.v, &bp.fwd.o, &bp.dout, &bp.dq, &bp.dk, &bp.dv})
      t->device = label;
    bp.rope_grad = &rope;
  }
};

void expect_error(const std::function<void()>& call, const std::string& argument, const char* what) {
  SCOPED_TRACE(what);
  try {
    call();
    ADD_FAILURE() << "no error thrown; expected one naming '" << argument << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
  }
}

TEST(RopeGradValidate, ValidParamsPass) {
  RopeFixture f(Device::kCuda);
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kCuda));
  f.rope.rotary_dim = 32;
  f.rope.style = 1;
  f.rope.scale = 1.25f;
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kCuda));
  f.rope.rotary_dim = 64;  // == D
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kCuda));
  f.bp.rope_grad = nullptr;  // absent: nothing checked
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kCuda));
}

TEST(RopeGradValidate, BadFieldsNamed) {
  struct Bad {
    std::function<void(RopeGradParams&)> mutate;
    const char* argument;
    const char* what;
  };
  const Bad bad[] = {
      {[](RopeGradParams& r) { r.rotary_dim = 33; }, "rope_grad.rotary_dim", "odd rotary dim"},
      {[](RopeGradParams& r) { r.rotary_dim = 66; }, "rope_grad.rotary_dim", "rotary dim > D"},
      {[](RopeGradParams& r) { r.rotary_dim = -2; }, "rope_grad.rotary_dim", "negative rotary dim"},
      {[](RopeGradParams& r) { r.inv_freq = nullptr; }, "rope_grad.inv_freq", "null inv_freq"},
      {[](RopeGradParams& r) { r.style = 2; }, "rope_grad.style", "unknown style"},
      {[](RopeGradParams& r) { r.style = -1; }, "rope_grad.style", "negative style"},
      {[](RopeGradParams& r) { r.scale = std::numeric_limits<float>::quiet_NaN(); }, "rope_grad.scale", "NaN scale"},
      {[](RopeGradParams& r) { r.scale = std::numeric_limits<float>::infinity(); }, "rope_grad.scale", "inf scale"},
  };
  for (const Bad& b : bad) {
    RopeFixture f(Device::kCuda);
    b.mutate(f.rope);
    expect_error([&] { validate_backward(f.bp, Device::kCuda); }, b.argument, b.what);
  }
}

TEST(RopeGradValidate, AccumulateRejected) {
  RopeFixture f(Device::kCuda);
  f.bp.accumulate = true;  // dq, dk, dv are fp32: valid without rope_grad
  f.bp.rope_grad = nullptr;
  EXPECT_NO_THROW(validate_backward(f.bp, Device::kCuda));
  f.bp.rope_grad = &f.rope;
  expect_error([&] { validate_backward(f.bp, Device::kCuda); }, "rope_grad", "accumulate mode");
}

TEST(RopeGradValidate, HostEngineRejectsAndWritesNothing) {
  SCOPED_TRACE(::testing::Message() << "seed " << test_seed());
  RopeFixture f(Device::kHost);
  expect_error([&] { validate_backward(f.bp, Device::kHost); }, "rope_grad", "host engine (validate)");
  expect_error([&] { host_attention_backward(f.bp, HostPrecision::kFloat64); }, "rope_grad", "host engine (run)");
  for (const HostTensor* t : {&f.dq, &f.dk, &f.dv}) {
    const int64_t n = static_cast<int64_t>(t->storage.size() / sizeof(float));
    const float* x = reinterpret_cast<const float*>(t->storage.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isnan(x[i])) << "gradient written by a rejected call";
  }
  f.bp.rope_grad = nullptr;  // the same call without the field runs
  EXPECT_NO_THROW(host_attention_backward(f.bp, HostPrecision::kFloat64));
}

}  // namespace
}  // namespace distattn
