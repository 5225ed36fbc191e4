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

// What every formulation of the backward shares: problem sizes, positions, per-row inputs and the
// per-pair terms. The pair arithmetic lives in one place so the fused and the split schedules below
// produce the same numbers (and the same rounding in kRoundIntermediates).
template <typename Pol>
struct Backward {
  using Acc = typename Pol::Acc;
  const AttnBwdParams& bp;
  const AttnParams& p;
  const Pol pol;
  const int64_t B, Sq, Hq, D, Skv, Hkv, group;  // group: q heads per kv head
  const Acc scale;
  const int64_t lse_b, lse_h;
  const Visibility vis;

  Backward(const AttnBwdParams& params, Pol policy)
      : bp(params),
        p(params.fwd),
        pol(policy),
        B(p.q.batch()),
        Sq(p.q.seqlen()),
        Hq(p.q.heads()),
        D(p.q.head_dim()),
        Skv(p.k.seqlen()),
        Hkv(p.k.heads()),
        group(Hq / Hkv),
        scale(static_cast<Acc>(p.scale())),
        lse_b(p.lse_batch_step()),
        lse_h(p.lse_head_step()),
        vis(p) {}

  // Per q row (b, h, i): q_i, dO_i, LSE_i, delta_i. Returns false for a row that contributes nothing
  // (LSE = -inf: no visible key in the complete forward).
  bool load_row(int64_t b, int64_t h, int64_t i, Acc* q, Acc* dout, Acc* lse, Acc* delta) const {
    const int64_t lidx = b * lse_b + h * lse_h + i;
    *lse = static_cast<Acc>(p.lse[lidx]);
    if (std::isinf(*lse) && *lse < 0) return false;
    const int64_t qoff = p.q.offset(b, i, h, 0), dooff = bp.dout.offset(b, i, h, 0), ooff = p.o.offset(b, i, h, 0);
    Acc dlt = 0;
    for (int64_t d = 0; d < D; ++d) {
      q[d] = static_cast<Acc>(load_as_double(p.q.data, qoff + d, p.q.dtype));
      dout[d] = static_cast<Acc>(load_as_double(bp.dout.data, dooff + d, bp.dout.dtype));
      if (bp.delta == nullptr) dlt += dout[d] * static_cast<Acc>(load_as_double(p.o.data, ooff + d, p.o.dtype));
    }
    *delta = bp.delta != nullptr ? static_cast<Acc>(bp.delta[lidx]) : dlt;
    return true;
  }

  // P_ij and scale * dS_ij of one visible pair (S, P, dP, dS rounded to q's dtype in kRoundIntermediates).
  void pair(const Acc* q, const Acc* dout, const Acc* k, const Acc* v, Acc lse, Acc delta, Acc slope, int64_t i,
            int64_t j, Acc* pij, Acc* dss) const {
    Acc s = scale * dot(q, k, D);
    if (p.alibi_slopes) s += alibi_bias(slope, vis.q_positions()[i], vis.kv_positions()[j]);
    s = pol.round(s);
    *pij = pol.round(std::exp(s - lse));
    const Acc dp = pol.round(dot(dout, v, D));
    *dss = scale * pol.round(*pij * (dp - delta));
  }

  Acc slope(int64_t h) const { return p.alibi_slopes ? static_cast<Acc>(p.alibi_slopes[h]) : Acc(0); }

  void emit_dq(int64_t b, int64_t h, int64_t i, Acc* dq) const {
    for (int64_t d = 0; d < D; ++d) dq[d] = pol.round(dq[d]);
    emit_row(bp.dq, bp.dq.offset(b, i, h, 0), dq, D, bp.accumulate);
  }
  // dK, dV rows [j0, j0 + rows) of kv head hk from dense buffers; added in accumulate mode unless overwrite_dk_dv.
  void emit_dkdv(int64_t b, int64_t hk, int64_t j0, int64_t rows, std::vector<Acc>& dk, std::vector<Acc>& dv) const {
    const bool add_dkdv = bp.accumulate && !bp.overwrite_dk_dv;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t d = 0; d < D; ++d) {
        dk[r * D + d] = pol.round(dk[r * D + d]);
        dv[r * D + d] = pol.round(dv[r * D + d]);
      }
      emit_row(bp.dk, bp.dk.offset(b, j0 + r, hk, 0), &dk[r * D], D, add_dkdv);
      emit_row(bp.dv, bp.dv.offset(b, j0 + r, hk, 0), &dv[r * D], D, add_dkdv);
    }
  }

  // Fused schedule, one unit per (b, kv head hk): owns dK/dV of the head and the dQ rows of its q heads.
  void fused(int64_t b, int64_t hk) const {
    std::vector<int64_t> c;
    std::vector<Acc> kbuf, vbuf, dk(static_cast<size_t>(Skv * D), Acc(0)), dv(static_cast<size_t>(Skv * D), Acc(0));
    std::vector<Acc> q(D), dout(D), dq(D);
    load_head(p.k, b, hk, kbuf);
    load_head(p.v, b, hk, vbuf);
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const Acc sl = slope(h);
      for (int64_t i = 0; i < Sq; ++i) {
        std::fill(dq.begin(), dq.end(), Acc(0));
        Acc lse, delta;
        vis.row(i, c);
        if (!c.empty() && load_row(b, h, i, q.data(), dout.data(), &lse, &delta)) {
          for (const int64_t j : c) {
            const Acc* kr = &kbuf[j * D];
            Acc pij, dss;
            pair(q.data(), dout.data(), kr, &vbuf[j * D], lse, delta, sl, i, j, &pij, &dss);
            Acc* dkr = &dk[j * D];
            Acc* dvr = &dv[j * D];
            for (int64_t d = 0; d < D; ++d) {
              dvr[d] += pij * dout[d];
              dkr[d] += dss * q[d];
              dq[d] += dss * kr[d];
            }
          }
        }
        emit_dq(b, h, i, dq.data());
      }
    }
    emit_dkdv(b, hk, 0, Skv, dk, dv);
  }

  // Split schedule, pass 1, one unit per (b, kv head hk, kv rows [j0, j1)): dK, dV of those rows.
  void dkdv(int64_t b, int64_t hk, int64_t j0, int64_t j1) const {
    const int64_t rows = j1 - j0;
    std::vector<int64_t> c;
    std::vector<Acc> kbuf, vbuf, dk(static_cast<size_t>(rows * D), Acc(0)), dv(static_cast<size_t>(rows * D), Acc(0));
    std::vector<Acc> q(D), dout(D);
    load_head(p.k, b, hk, kbuf, j0, j1);
    load_head(p.v, b, hk, vbuf, j0, j1);
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const Acc sl = slope(h);
      for (int64_t i = 0; i < Sq; ++i) {
        Acc lse, delta;
        vis.row(i, c, j0, j1);
        if (c.empty() || !load_row(b, h, i, q.data(), dout.data(), &lse, &delta)) continue;
        for (const int64_t j : c) {
          const int64_t r = j - j0;
          Acc pij, dss;
          pair(q.data(), dout.data(), &kbuf[r * D], &vbuf[r * D], lse, delta, sl, i, j, &pij, &dss);
          Acc* dkr = &dk[r * D];
          Acc* dvr = &dv[r * D];
          for (int64_t d = 0; d < D; ++d) {
            dvr[d] += pij * dout[d];
            dkr[d] += dss * q[d];
          }
        }
      }
    }
    emit_dkdv(b, hk, j0, rows, dk, dv);
  }

  // Split schedule, pass 2, one unit per (b, q head h, q rows [i0, i1)): dQ of those rows.
  void dq_rows(int64_t b, int64_t h, int64_t i0, int64_t i1) const {
    const int64_t hk = h / group;
    std::vector<int64_t> c;
    std::vector<Acc> kbuf, vbuf, q(D), dout(D), dq(D);
    load_head(p.k, b, hk, kbuf);
    load_head(p.v, b, hk, vbuf);
    const Acc sl = slope(h);
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(dq.begin(), dq.end(), Acc(0));
      Acc lse, delta;
      vis.row(i, c);
      if (!c.empty() && load_row(b, h, i, q.data(), dout.data(), &lse, &delta)) {
        for (const int64_t j : c) {
          const Acc* kr = &kbuf[j * D];
          Acc pij, dss;
          pair(q.data(), dout.data(), kr, &vbuf[j * D], lse, delta, sl, i, j, &pij, &dss);
          for (int64_t d = 0; d < D; ++d) dq[d] += dss * kr[d];
        }
      }
      emit_dq(b, h, i, dq.data());
    }
  }
};

template <typename Pol>
void backward_impl(const AttnBwdParams& bp, const Pol pol) {
  const Backward<Pol> bw(bp, pol);
  const int64_t B = bw.B, Hq = bw.Hq, Hkv = bw.Hkv, Sq = bw.Sq, Skv = bw.Skv;
  const double work = 2.0 * static_cast<double>(B * Hq) * static_cast<double>(Sq) * static_cast<double>(Skv) * bw.D;
  // The fused schedule does the least arithmetic (5 row operations per visible pair) but offers only
  // B * Hkv independent units; with fewer units than threads (MQA/GQA, batch 1) the split schedule
  // (7 row operations per pair: the pair terms are computed in both passes) keeps every thread busy.
  // Both accumulate every sum in the same order, so they give the same numbers.
  if (B * Hkv >= host_threads() || work < 4.0 * (1 << 22)) {
    parallel_for(B * Hkv, work, [&](int64_t u) { bw.fused(u / Hkv, u % Hkv); });
    return;
  }
  constexpr int64_t kRows = 64;  // rows per unit of the split schedule
  const int64_t kv_chunks = (Skv + kRows - 1) / kRows, q_chunks = (Sq + kRows - 1) / kRows;
  parallel_for(B * Hkv * kv_chunks, work, [&](int64_t u) {
    const int64_t chunk = u % kv_chunks, bh = u / kv_chunks;
    bw.dkdv(bh / Hkv, bh % Hkv, chunk * kRows, std::min(Skv, (chunk + 1) * kRows));
  });
  parallel_for(B * Hq * q_chunks, work, [&](int64_t u) {
    const int64_t chunk = u % q_chunks, bh = u / q_chunks;
    bw.dq_rows(bh / Hq, bh % Hq, chunk * kRows, std::min(Sq, (chunk + 1) * kRows));
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
