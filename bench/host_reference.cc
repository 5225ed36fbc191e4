#include "host_reference.h"

#include "distattn/core/host_engine.h"

namespace distattn {
namespace bench {

HostReferences compute_host_references(const TensorView& q, const TensorView& k, const TensorView& v,
                                       const TensorView* dout, bool with_naive, const ReferenceParams& params) {
  const int64_t B = q.shape[0], S = q.shape[1], Hc = q.shape[2], D = q.shape[3], Skv = k.shape[1], Kc = k.shape[2];
  const DType dtype = q.dtype;
  HostReferences r;
  HostTensor q64 = convert(q, DType::kFloat64), k64 = convert(k, DType::kFloat64), v64 = convert(v, DType::kFloat64);
  r.o = HostTensor(DType::kFloat64, B, S, Hc, D);
  r.lse.assign(static_cast<size_t>(B * Hc * S), 0.f);
  fill_nan_host(r.o), fill_nan_host(r.lse);
  const AttnParams ref = params(q64.view, k64.view, v64.view, r.o.view, r.lse.data());
  host_attention_forward(ref, HostPrecision::kFloat64);
  r.naive_lse.assign(r.lse.size(), 0.f);  // sized (NaN) even without the naive run: callers slice it uniformly
  fill_nan_host(r.naive_lse);
  AttnParams naive;
  if (with_naive) {
    r.naive_o = HostTensor(dtype, B, S, Hc, D);
    fill_nan_host(r.naive_o);
    naive = params(q, k, v, r.naive_o.view, r.naive_lse.data());
    host_attention_forward(naive, HostPrecision::kRoundIntermediates);
  }
  if (dout == nullptr) return r;

  HostTensor do64 = convert(*dout, DType::kFloat64);
  r.dq = HostTensor(DType::kFloat64, B, S, Hc, D);
  r.dk = HostTensor(DType::kFloat64, B, Skv, Kc, D);
  r.dv = HostTensor(DType::kFloat64, B, Skv, Kc, D);
  fill_nan_host(r.dq), fill_nan_host(r.dk), fill_nan_host(r.dv);
  AttnBwdParams rb;
  rb.fwd = ref;
  rb.dout = do64.view, rb.dq = r.dq.view, rb.dk = r.dk.view, rb.dv = r.dv.view;
  host_attention_backward(rb, HostPrecision::kFloat64);
  if (with_naive) {
    r.naive_dq = HostTensor(dtype, B, S, Hc, D);
    r.naive_dk = HostTensor(dtype, B, Skv, Kc, D);
    r.naive_dv = HostTensor(dtype, B, Skv, Kc, D);
    fill_nan_host(r.naive_dq), fill_nan_host(r.naive_dk), fill_nan_host(r.naive_dv);
    AttnBwdParams nb;
    nb.fwd = naive;
    nb.dout = *dout, nb.dq = r.naive_dq.view, nb.dk = r.naive_dk.view, nb.dv = r.naive_dv.view;
    host_attention_backward(nb, HostPrecision::kRoundIntermediates);
  }
  return r;
}

}  // namespace bench
}  // namespace distattn
