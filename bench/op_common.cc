#include "op_common.h"

#include <algorithm>
#include <cstdio>

#include "bench_rope.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/sparse/flash_attention.h"
#include "output_check.h"

namespace distattn {
namespace bench {

OpBase::OpBase(const RunContext& ctx) : ctx_(ctx), opt_(*ctx.options) {
  const auto& c = opt_.common;
  B_ = c.batch;
  H_ = c.heads;
  Hkv_ = c.resolved_kv_heads();
  D_ = c.head_dim;
  dtype_ = ctx.on_gpu() ? c.dtype : DType::kFloat32;
}

void OpBase::require_cuda_head_dim() const {
  if (ctx_.on_gpu()) {
    DISTATTN_CHECK_ARG(flash_supports_head_dim(D_), "--headdim/-d", "the CUDA engine has no kernel for head dim ", D_);
  }
}

int64_t OpBase::option_check_kv_heads() const {
  const int64_t auto_heads = std::min<int64_t>({Hkv_, static_cast<int64_t>(hardware_threads()), 8});
  return opt_.check_heads > 0 ? opt_.check_heads : std::max<int64_t>(1, auto_heads);
}

void OpBase::begin_size(int64_t seq) {
  S_ = seq;
  ++size_index_;
}

uint64_t OpBase::size_seed() const { return opt_.seed + 16 * static_cast<uint64_t>(size_index_); }

uint64_t OpBase::check_seed(uint64_t salt) const {
  return (opt_.seed ^ salt) + 16 * static_cast<uint64_t>(size_index_);
}

Mask OpBase::mask() const {
  Mask m;
  m.causal = opt_.common.causal;
  m.window = opt_.common.window;
  return m;
}

std::string OpBase::seq_shape_header(bool with_ranks) {
  char buf[64];
  if (with_ranks) {
    std::snprintf(buf, sizeof(buf), "%8s %3s %4s %4s %4s %4s", "seq", "N", "B", "H", "Hkv", "D");
  } else {
    std::snprintf(buf, sizeof(buf), "%8s %4s %4s %4s %4s", "seq", "B", "H", "Hkv", "D");
  }
  return buf;
}

std::string OpBase::seq_shape_cells(int64_t seq, int ranks) const {
  char n[16] = "";
  if (ranks >= 0) std::snprintf(n, sizeof(n), " %3d", ranks);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%8lld%s %4lld %4lld %4lld %4lld", static_cast<long long>(seq), n,
                static_cast<long long>(B_), static_cast<long long>(H_), static_cast<long long>(Hkv_),
                static_cast<long long>(D_));
  return buf;
}

void OpBase::json_shape(JsonObject& row) const {
  row.set("B", B_).set("H", H_).set("Hkv", Hkv_).set("D", D_).set("causal", opt_.common.causal);
  row.set("window", opt_.common.window).set("alibi", opt_.common.alibi).set("pass", pass_name(opt_.pass));
  row.set("dtype", dtype_name(dtype_));
}

std::string table_cell(int width, const std::string& text) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), " %*s", width, text.c_str());
  return buf;
}

ReferenceInputs reference_inputs(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                                 int64_t Hc, int64_t Kc, const BenchRope* rope, DType dtype) {
  ReferenceInputs in;
  if (rope != nullptr) {
    in.q_rot = convert(head_slice(q, 0, Hc), dtype);
    in.k_rot = convert(head_slice(k, 0, Kc), dtype);
    rope_apply_host(rope->params(in.q_rot.view, in.k_rot.view, PositionMap::contiguous(0, q.seqlen()), false, false));
  }
  in.q = rope != nullptr ? in.q_rot.view : head_slice(q, 0, Hc);
  in.k = rope != nullptr ? in.k_rot.view : head_slice(k, 0, Kc);
  in.v = head_slice(v, 0, Kc);
  if (dout.data != nullptr) in.dout = head_slice(dout, 0, Hc);
  return in;
}

AttnParams full_sequence_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                float* lse, int64_t lse_heads, int64_t S, const Mask& mask,
                                const std::vector<float>& slopes) {
  AttnParams p;
  p.q = q, p.k = k, p.v = v, p.o = o;
  p.lse = lse;  // [B, lse_heads, S]: element (b, h, i) at b * lse_heads * S + h * S + i
  p.lse_batch_stride = lse_heads * S;
  p.lse_head_stride = S;
  p.q_pos = PositionMap::contiguous(0, S);
  p.kv_pos = PositionMap::contiguous(0, S);
  p.mask = mask;
  p.alibi_slopes = slopes.empty() ? nullptr : slopes.data();
  return p;
}

HostOutputs outputs_to_host(const AttentionIo& io, bool grads) {
  HostOutputs out;
  out.o = io.to_host(io.o);
  out.lse = io.lse_to_host();
  if (grads) out.dq = io.to_host(io.dq), out.dk = io.to_host(io.dk), out.dv = io.to_host(io.dv);
  return out;
}

CheckResult compare_attention_outputs(const HostOutputs& got, const HostReferences& ref, bool naive, bool grads,
                                      int64_t Hc, int64_t Kc, DType dtype) {
  // got.o [B, rows, H, D]: B, rows and H of the LSE arrays [B, H, rows] (got) and [B, Hc, rows] (references).
  const TensorView& o = got.o.view;
  const int64_t B = o.shape[0], rows = o.shape[1], H = o.shape[2];
  OutputCheck check;
  const double ulp = dtype_ulp(dtype);
  check.compare("o", head_slice(o, 0, Hc), ref.o.view, naive ? &ref.naive_o.view : nullptr, ulp);
  const TensorView lse_got = head_slice(lse_view(const_cast<float*>(got.lse.data()), B, rows, H), 0, Hc);
  const TensorView lse_ref = lse_view(const_cast<float*>(ref.lse.data()), B, rows, Hc);
  const TensorView lse_naive = lse_view(const_cast<float*>(ref.naive_lse.data()), B, rows, Hc);
  check.compare("lse", lse_got, lse_ref, naive ? &lse_naive : nullptr, 1e-6);
  if (grads) {
    check.compare("dq", head_slice(got.dq.view, 0, Hc), ref.dq.view, naive ? &ref.naive_dq.view : nullptr, ulp);
    check.compare("dk", head_slice(got.dk.view, 0, Kc), ref.dk.view, naive ? &ref.naive_dk.view : nullptr, ulp);
    check.compare("dv", head_slice(got.dv.view, 0, Kc), ref.dv.view, naive ? &ref.naive_dv.view : nullptr, ulp);
  }
  return check.finish();
}

std::vector<DilatedPattern> requested_dilated_patterns(const BenchOptions& opt) {
  std::vector<DilatedPattern> out;
  for (size_t i = 0; i < opt.dilated_segments.size(); ++i)
    out.push_back({opt.dilated_segments[i], opt.dilated_rates[i]});
  return out;
}

DeviceBuffer device_copy(const std::vector<float>& host) {
  DeviceBuffer d(host.size() * sizeof(float));
  DISTATTN_CUDA_CHECK(cudaMemcpy(d.get(), host.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}

}  // namespace bench
}  // namespace distattn
