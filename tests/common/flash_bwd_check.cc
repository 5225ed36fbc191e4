#include "flash_bwd_check.h"

#include <cuda_runtime_api.h>

#include <cstdio>

#include "../../sparse/src/hopper/flash_bwd_hopper.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/host_engine.h"

namespace distattn {
namespace testing {

bool on_hopper_device() {
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  DISTATTN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.major == 9 && prop.minor == 0;
}

void host_forward_rounded(AttnParams& hf, HostTensor& o, std::vector<float>& lse) {
  const TensorView& q = hf.q;
  HostTensor o32(DType::kFloat32, q.batch(), q.seqlen(), q.heads(), q.head_dim());
  hf.o = o32.view;
  lse.assign(static_cast<size_t>(q.batch() * q.heads() * q.seqlen()), 0.f);
  hf.lse = lse.data();
  host_attention_forward(hf, HostPrecision::kFloat64);
  copy_values(o, o32);
  hf.o = o.view;
}

std::vector<float> rowsum_delta(const HostTensor& dout, const HostTensor& o) {
  const TensorView& t = dout.view;
  const int64_t B = t.batch(), Sq = t.seqlen(), Hq = t.heads(), D = t.head_dim();
  std::vector<float> delta(static_cast<size_t>(B * Hq * Sq));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Sq; ++i) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += dout.get(b, i, h, d) * o.get(b, i, h, d);
        delta[(b * Hq + h) * Sq + i] = static_cast<float>(s);
      }
  return delta;
}

void host_backward_refs(AttnBwdParams hb, HostTensor (&ref)[3], HostTensor (&nai)[3]) {
  const TensorView &q = hb.fwd.q, &k = hb.fwd.k;
  for (int i = 0; i < 3; ++i) {
    const TensorView& like = i == 0 ? q : k;
    ref[i] = HostTensor(DType::kFloat32, like.batch(), like.seqlen(), like.heads(), like.head_dim());  // fp64 math
    nai[i] = HostTensor(DType::kFloat32, like.batch(), like.seqlen(), like.heads(), like.head_dim());
  }
  hb.dq = ref[0].view, hb.dk = ref[1].view, hb.dv = ref[2].view;
  host_attention_backward(hb, HostPrecision::kFloat64);
  hb.dq = nai[0].view, hb.dk = nai[1].view, hb.dv = nai[2].view;
  host_attention_backward(hb, HostPrecision::kRoundIntermediates);
}

void make_grad_tensors(HostTensor (&g)[3], DType dtype, const TensorView& q, const TensorView& k, int64_t head_pad,
                       int64_t row_pad) {
  for (int i = 0; i < 3; ++i) {
    const TensorView& like = i == 0 ? q : k;
    g[i] = HostTensor(dtype, like.batch(), like.seqlen(), like.heads(), like.head_dim(), head_pad, row_pad);
  }
}

AttnBwdParams device_bwd_params(const AttnParams& hf, const DeviceTensor& q, const DeviceTensor& k,
                                const DeviceTensor& v, const DeviceTensor& o, float* lse, const DeviceTensor& dout,
                                const DeviceTensor (&grads)[3]) {
  AttnBwdParams gb;
  gb.fwd = hf;
  gb.fwd.q = q.view(), gb.fwd.k = k.view(), gb.fwd.v = v.view(), gb.fwd.o = o.view();
  gb.fwd.lse = lse;
  gb.dout = dout.view();
  gb.dq = grads[0].view(), gb.dk = grads[1].view(), gb.dv = grads[2].view();
  return gb;
}

AttnBwdParams contiguous_bwd_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                    float* lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                                    const TensorView& dv) {
  AttnBwdParams b;
  b.fwd.q = q, b.fwd.k = k, b.fwd.v = v, b.fwd.o = o;
  b.fwd.lse = lse;
  b.fwd.q_pos = PositionMap::contiguous(0, q.seqlen());
  b.fwd.kv_pos = PositionMap::contiguous(0, k.seqlen());
  b.dout = dout;
  b.dq = dq, b.dk = dk, b.dv = dv;
  return b;
}

AttnParams case_setup(const PositionMap& q_pos, const PositionMap& kv_pos, int64_t Sq, int64_t Skv, const Mask& mask) {
  AttnParams p;
  p.q_pos = q_pos.num_chunks ? q_pos : PositionMap::contiguous(0, Sq);
  p.kv_pos = kv_pos.num_chunks ? kv_pos : PositionMap::contiguous(0, Skv);
  p.mask = mask;
  return p;
}

void make_bwd_host_case(BwdHostCase& h, const BwdShape& s, const AttnParams& setup, bool given_delta, uint64_t seed) {
  const int64_t hp = s.head_pad, rp = s.row_pad;
  h.q = HostTensor(s.dtype, s.B, s.Sq, s.Hq, s.D, hp, rp);
  h.k = HostTensor(s.dtype, s.B, s.Skv, s.Hkv, s.D, hp, rp);
  h.v = HostTensor(s.dtype, s.B, s.Skv, s.Hkv, s.D, hp, rp);
  h.dout = HostTensor(s.dtype, s.B, s.Sq, s.Hq, s.D, hp, rp);
  h.o = HostTensor(s.o_dtype, s.B, s.Sq, s.Hq, s.D, hp, rp);
  fill_normal_each({&h.q, &h.k, &h.v, &h.dout}, seed + 1);
  h.hf = setup;
  h.hf.q = h.q.view, h.hf.k = h.k.view, h.hf.v = h.v.view;
  host_forward_rounded(h.hf, h.o, h.lse);
  h.delta.clear();
  if (given_delta) h.delta = rowsum_delta(h.dout, h.o);  // rowsum(dO * O) of the rounded O, in double then fp32
  // Pre-fill of the accumulate mode (random, so "added" and "overwritten" differ).
  make_grad_tensors(h.pre, DType::kFloat32, h.q.view, h.k.view, hp, rp);
  for (int i = 0; i < 3; ++i) fill_normal(h.pre[i], seed + 10 + i);
  AttnBwdParams hb;
  hb.fwd = h.hf;
  hb.dout = h.dout.view;
  hb.delta = given_delta ? h.delta.data() : nullptr;
  host_backward_refs(hb, h.ref, h.nai);
}

BwdDeviceInputs::BwdDeviceInputs(const BwdHostCase& h) : q(h.q), k(h.k), v(h.v), dout(h.dout), o(h.o), lse(h.lse) {
  if (!h.delta.empty()) delta.reset(new DeviceArray<float>(h.delta));
}

AttnBwdParams BwdDeviceInputs::params(const BwdHostCase& h, const DeviceTensor (&grads)[3], bool accumulate) const {
  AttnBwdParams gb = device_bwd_params(h.hf, q, k, v, o, lse.ptr, dout, grads);
  gb.accumulate = accumulate;
  gb.delta = delta ? delta->ptr : nullptr;
  return gb;
}

void make_grad_outputs(HostTensor (&out)[3], const BwdHostCase& h, const BwdShape& s, DType dtype, bool accumulate) {
  make_grad_tensors(out, dtype, h.q.view, h.k.view, s.head_pad, s.row_pad);
  for (int i = 0; i < 3; ++i) {
    if (accumulate) {
      copy_values(out[i], h.pre[i]);
    } else {
      fill_nan(out[i]);
    }
  }
}

bool hopper_bwd_takes(const AttnBwdParams& gb, bool must_take, const char* skip_line) {
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  const bool supported = flash_bwd_hopper_supported(gb, device);
  if (must_take) {
    EXPECT_TRUE(supported) << "the Hopper backward refused a case it should take";
  }
  if (!supported) std::printf("%s", skip_line);
  return supported;
}

void expect_grad_within_2x_naive(const std::string& trace_label, const char* print_label, const char* got_word,
                                 const ErrorStats& err, const ErrorStats& naive, double ref_rms) {
  const double r = ref_rms;
  SCOPED_TRACE(trace_label + ": " + err.str() + " | naive: " + naive.str() + " | ref rms " + std::to_string(r));
  EXPECT_EQ(err.non_finite, 0);
  EXPECT_LE(err.max_abs, 2 * naive.max_abs + 1e-2 * r + 1e-6);
  EXPECT_LE(err.rmse, 2 * naive.rmse + 2e-3 * r + 1e-7);
  std::printf("  %s: %smax %.3g rmse %.3g | naive max %.3g rmse %.3g | ref rms %.3g\n", print_label, got_word,
              err.max_abs, err.rmse, naive.max_abs, naive.rmse, r);
}

}  // namespace testing
}  // namespace distattn
