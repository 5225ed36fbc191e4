#include "flash_fwd_check.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <limits>
#include <utility>

#include "distattn/core/check_cuda.h"
#include "distattn/core/host_engine.h"

namespace distattn {
namespace testing {

FwdInputs make_fwd_inputs(DType dtype, int64_t B, int64_t Sq, int64_t Skv, int64_t Hq, int64_t Hkv, int64_t D,
                          int64_t head_pad, int64_t row_pad, uint64_t seed, double qk_stddev) {
  FwdInputs in{HostTensor(dtype, B, Sq, Hq, D, head_pad, row_pad), HostTensor(dtype, B, Skv, Hkv, D, head_pad, row_pad),
               HostTensor(dtype, B, Skv, Hkv, D, head_pad, row_pad)};
  fill_normal(in.q, seed, qk_stddev);
  fill_normal(in.k, seed + 1, qk_stddev);
  fill_normal(in.v, seed + 2);
  return in;
}

FwdReference host_forward_reference(AttnParams p, DType dt) {
  const int64_t B = p.q.batch(), Sq = p.q.seqlen(), Hq = p.q.heads(), D = p.q.head_dim();
  FwdReference r;
  r.o64 = HostTensor(DType::kFloat32, B, Sq, Hq, D);
  r.lse64.assign(static_cast<size_t>(B * Hq * Sq), 0.f);
  p.o = r.o64.view, p.lse = r.lse64.data();
  host_attention_forward(p, HostPrecision::kFloat64);
  HostTensor o_naive(dt, B, Sq, Hq, D);
  std::vector<float> lse_naive(r.lse64.size());
  p.o = o_naive.view, p.lse = lse_naive.data();
  host_attention_forward(p, HostPrecision::kRoundIntermediates);
  r.lse_ref.assign(r.lse64.begin(), r.lse64.end());
  r.e_naive = compare(o_naive.view, r.o64.view);
  r.l_naive = compare_flat(lse_naive.data(), r.lse_ref.data(), static_cast<int64_t>(r.lse64.size()));
  return r;
}

void expect_fwd_within_2x_naive(const TensorView& o, const std::vector<float>& lse, const FwdReference& r,
                                bool o_rel_l2, bool lse_rel_l2, const std::string& label) {
  const ErrorStats e_gpu = compare(o, r.o64.view);
  const ErrorStats l_gpu = compare_flat(lse.data(), r.lse_ref.data(), static_cast<int64_t>(lse.size()));
  const ErrorStats &e_naive = r.e_naive, &l_naive = r.l_naive;
  const std::string l = label.empty() ? "" : label + " ";
  SCOPED_TRACE("O " + l + e_gpu.str() + " | naive " + e_naive.str() + " || LSE " + l + l_gpu.str() + " | naive " +
               l_naive.str());
  EXPECT_EQ(e_gpu.non_finite, 0);
  EXPECT_EQ(l_gpu.non_finite, 0);
  if (o_rel_l2) {
    EXPECT_LE(e_gpu.rel_l2, 2 * e_naive.rel_l2 + kFwdSlack);
  }
  EXPECT_LE(e_gpu.max_abs, 2 * e_naive.max_abs + kFwdSlack);
  if (lse_rel_l2) {
    EXPECT_LE(l_gpu.rel_l2, 2 * l_naive.rel_l2 + kFwdSlack);
  }
  EXPECT_LE(l_gpu.max_abs, 2 * l_naive.max_abs + kFwdSlack);
}

void expect_same_bits(const FwdOutputs& a, const FwdOutputs& b, const std::string& what) {
  ASSERT_EQ(a.o.bytes(), b.o.bytes());
  EXPECT_EQ(std::memcmp(a.o.storage.data(), b.o.storage.data(), a.o.bytes()), 0) << what << ": O differs";
  ASSERT_EQ(a.lse.size(), b.lse.size());
  EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0) << what << ": LSE differs";
}

void for_kv_parts(const AttnParams& base, const std::vector<int64_t>& cuts, const std::vector<PositionMap>& kv_pos,
                  const std::function<void(const AttnParams&)>& call) {
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const int64_t r0 = cuts[i], r1 = cuts[i + 1];
    AttnParams p = base;
    p.k = base.k.rows(r0, r1);
    p.v = base.v.rows(r0, r1);
    p.kv_pos = kv_pos.empty() ? PositionMap::contiguous(r0, r1 - r0) : kv_pos[i];
    p.accumulate = true;
    call(p);
  }
}

FwdOutputs accumulate_kv_parts(const HostTensor& q, const HostTensor& k, const HostTensor& v, HostTensor acc_start,
                               const AttnParams& setup, const std::vector<int64_t>& cuts,
                               const std::vector<PositionMap>& kv_pos,
                               const std::function<void(const AttnParams&)>& call) {
  const TensorView& qv = q.view;
  DeviceTensor dq(q), dk(k), dv(v), d_acc(acc_start);
  DeviceArray<float> d_lse(std::vector<float>(static_cast<size_t>(qv.batch() * qv.heads() * qv.seqlen()),
                                              -std::numeric_limits<float>::infinity()));
  AttnParams base = setup;
  base.q = dq.view(), base.k = dk.view(), base.v = dv.view(), base.o = d_acc.view(), base.lse = d_lse.ptr;
  for_kv_parts(base, cuts, kv_pos, call);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  d_acc.download(acc_start);
  return FwdOutputs{std::move(acc_start), d_lse.download()};
}

}  // namespace testing
}  // namespace distattn
