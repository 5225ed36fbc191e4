// Host engine, backward (host_engine.h). Given dO and the COMPLETE forward's O and LSE:
//   P_ij  = exp(S_ij - LSE_i)            visible pairs only; 0 elsewhere and on rows with LSE = -inf
//   delta_i = sum_d dO_id O_id           (or p.delta)
//   dV_j += sum_i P_ij dO_i              dP_ij = dO_i . V_j        dS_ij = P_ij (dP_ij - delta_i)
//   dQ_i  = scale * sum_j dS_ij K_j      dK_j += scale * sum_i dS_ij Q_i
// GQA: dK, dV of a kv head sum over the q heads that read it. ALiBi slopes are constants.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "host_common.h"

namespace distattn {
namespace host_detail {
namespace {

// Writes (accumulate = false) or adds (accumulate = true, fp32 destination) one row of D values.
template <typename Acc>
void emit_row(const TensorView& t, int64_t off, const Acc* v, int64_t D, bool accumulate) {
  for (int64_t d = 0; d < D; ++d) {
    const double x = static_cast<double>(v[d]);
    store_from_double(t.data, off + d, t.dtype, accumulate ? load_as_double(t.data, off + d, t.dtype) + x : x);
  }
}

template <typename Pol>
void backward_impl(const AttnBwdParams& bp, const Pol pol) {
  using Acc = typename Pol::Acc;
  const AttnParams& p = bp.fwd;
  const int64_t B = p.q.batch(), Sq = p.q.seqlen(), Hq = p.q.heads(), D = p.q.head_dim();
  const int64_t Skv = p.k.seqlen(), Hkv = p.k.heads();
  const int64_t group = Hq / Hkv;  // q heads per kv head
  const Acc scale = static_cast<Acc>(p.scale());
  const int64_t lse_b = p.lse_batch_step(), lse_h = p.lse_head_step();

  const Visibility vis(p);
  const std::vector<int64_t>& pos_q = vis.q_positions();
  const std::vector<int64_t>& pos_k = vis.kv_positions();

  // One unit of work per (b, kv head hk): it owns dK/dV of that head and the dQ rows of its q heads.
  const double work = 2.0 * static_cast<double>(B * Hq) * static_cast<double>(Sq) * static_cast<double>(Skv) * D;
  parallel_for(B * Hkv, work, [&](int64_t unit) {
    const int64_t b = unit / Hkv, hk = unit % Hkv;
    std::vector<int64_t> c;  // visible kv rows of the current q row
    const size_t row = static_cast<size_t>(D);
    std::vector<Acc> kbuf, vbuf, dk(static_cast<size_t>(Skv * D)), dv(static_cast<size_t>(Skv * D));
    std::vector<Acc> qrow(row), dorow(row), dqrow(row);
    load_head(p.k, b, hk, kbuf);
    load_head(p.v, b, hk, vbuf);
    std::fill(dk.begin(), dk.end(), Acc(0));
    std::fill(dv.begin(), dv.end(), Acc(0));
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const Acc slope = p.alibi_slopes ? static_cast<Acc>(p.alibi_slopes[h]) : Acc(0);
      for (int64_t i = 0; i < Sq; ++i) {
        std::fill(dqrow.begin(), dqrow.end(), Acc(0));
        const int64_t lidx = b * lse_b + h * lse_h + i;
        const Acc lse = static_cast<Acc>(p.lse[lidx]);
        vis.row(i, c);
        if (!c.empty() && !(std::isinf(lse) && lse < 0)) {
          const int64_t qoff = p.q.offset(b, i, h, 0), dooff = bp.dout.offset(b, i, h, 0);
          const int64_t ooff = p.o.offset(b, i, h, 0);
          Acc delta = 0;
          for (int64_t d = 0; d < D; ++d) {
            qrow[d] = static_cast<Acc>(load_as_double(p.q.data, qoff + d, p.q.dtype));
            dorow[d] = static_cast<Acc>(load_as_double(bp.dout.data, dooff + d, bp.dout.dtype));
            if (bp.delta == nullptr)
              delta += dorow[d] * static_cast<Acc>(load_as_double(p.o.data, ooff + d, p.o.dtype));
          }
          if (bp.delta != nullptr) delta = static_cast<Acc>(bp.delta[lidx]);
          for (const int64_t j : c) {
            const Acc* kr = &kbuf[j * D];
            const Acc* vr = &vbuf[j * D];
            Acc s = scale * dot(qrow.data(), kr, D);
            if (p.alibi_slopes) s += alibi_bias(slope, pos_q[i], pos_k[j]);
            s = pol.round(s);
            const Acc pij = pol.round(std::exp(s - lse));
            const Acc dp = pol.round(dot(dorow.data(), vr, D));
            const Acc ds = pol.round(pij * (dp - delta));
            const Acc dss = scale * ds;
            Acc* dkr = &dk[j * D];
            Acc* dvr = &dv[j * D];
            for (int64_t d = 0; d < D; ++d) {
              dvr[d] += pij * dorow[d];
              dkr[d] += dss * qrow[d];
              dqrow[d] += dss * kr[d];
            }
          }
          for (int64_t d = 0; d < D; ++d) dqrow[d] = pol.round(dqrow[d]);
        }
        emit_row(bp.dq, bp.dq.offset(b, i, h, 0), dqrow.data(), D, bp.accumulate);
      }
    }
    for (int64_t j = 0; j < Skv; ++j) {
      for (int64_t d = 0; d < D; ++d) {
        dk[j * D + d] = pol.round(dk[j * D + d]);
        dv[j * D + d] = pol.round(dv[j * D + d]);
      }
      emit_row(bp.dk, bp.dk.offset(b, j, hk, 0), &dk[j * D], D, bp.accumulate);
      emit_row(bp.dv, bp.dv.offset(b, j, hk, 0), &dv[j * D], D, bp.accumulate);
    }
  });
}

}  // namespace
}  // namespace host_detail

void host_attention_backward(const AttnBwdParams& p, HostPrecision precision) {
  validate_backward(p, Device::kHost);
  using namespace host_detail;
  switch (precision) {
    case HostPrecision::kFloat64:
      backward_impl(p, Policy<double, false>{p.fwd.q.dtype});
      return;
    case HostPrecision::kFloat32:
      backward_impl(p, Policy<float, false>{p.fwd.q.dtype});
      return;
    case HostPrecision::kRoundIntermediates:
      backward_impl(p, Policy<float, true>{p.fwd.q.dtype});
      return;
  }
  DISTATTN_THROW("precision", "unknown HostPrecision ", static_cast<int>(precision));
}

}  // namespace distattn
