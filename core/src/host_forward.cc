// Host engine, forward (host_engine.h): plain loops over (batch, q head, q row), one row of scores at a
// time. Semantics exactly as attn_params.h / mask.h define them.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "host_common.h"

namespace distattn {
namespace host_detail {

Visibility::Visibility(const AttnParams& p)
    : sq_(p.q.seqlen()), skv_(p.k.seqlen()), band_(DiagonalBand::from_mask(p.mask)), blocks_(p.mask.blocks) {
  pos_q_.resize(static_cast<size_t>(sq_));
  pos_k_.resize(static_cast<size_t>(skv_));
  for (int64_t i = 0; i < sq_; ++i) pos_q_[i] = p.q_pos.position(i);
  for (int64_t j = 0; j < skv_; ++j) pos_k_[j] = p.kv_pos.position(j);
}

void Visibility::row(int64_t i, std::vector<int64_t>& cols, int64_t j_begin, int64_t j_end) const {
  cols.clear();
  if (j_end < 0) j_end = skv_;
  const int64_t pq = pos_q_[i];
  if (blocks_ == nullptr) {
    for (int64_t j = j_begin; j < j_end; ++j) {
      if (band_.visible(pq, pos_k_[j])) cols.push_back(j);
    }
    return;
  }
  // Block list: only the listed kv blocks of this row's q block; col_index is ascending (validated),
  // so `cols` comes out ascending.
  const int64_t qb = i / kLayoutBlock;
  for (int64_t e = blocks_->row_offset[qb]; e < blocks_->row_offset[qb + 1]; ++e) {
    const int64_t j0 = std::max<int64_t>(static_cast<int64_t>(blocks_->col_index[e]) * kLayoutBlock, j_begin);
    const int64_t j1 = std::min<int64_t>(static_cast<int64_t>(blocks_->col_index[e] + 1) * kLayoutBlock, j_end);
    const bool partial = blocks_->row_partial[e] != 0;
    for (int64_t j = j0; j < j1; ++j) {
      if (!partial || band_.visible(pq, pos_k_[j])) cols.push_back(j);
    }
  }
}

namespace {

// One precision mode. Per (b, h): K and V of kv head h / (Hq/Hkv) are copied once into dense [Skv, D]
// buffers of Acc; per q row: scores of the visible keys, their max, exp-sum, then O = sum P_j V_j.
template <typename Pol>
void forward_impl(const AttnParams& p, const Pol pol) {
  using Acc = typename Pol::Acc;
  const int64_t B = p.q.batch(), Sq = p.q.seqlen(), Hq = p.q.heads(), D = p.q.head_dim();
  const int64_t group = Hq / p.k.heads();  // q heads per kv head
  const Acc scale = static_cast<Acc>(p.scale());
  const Acc kNegInf = -std::numeric_limits<Acc>::infinity();
  const int64_t lse_b = p.lse_batch_step(), lse_h = p.lse_head_step(), lse_r = p.lse_row_step();

  const Visibility vis(p);
  const std::vector<int64_t>& pos_q = vis.q_positions();
  const std::vector<int64_t>& pos_k = vis.kv_positions();

  // One unit of work per (b, q head h): its o rows and lse entries belong to it alone. K and V of kv head
  // h / group are copied per unit (O(Skv * D), small next to the O(Sq * Skv * D) loops).
  const double work = static_cast<double>(B * Hq) * static_cast<double>(Sq) * static_cast<double>(p.k.seqlen()) * D;
  parallel_for(B * Hq, work, [&](int64_t unit) {
    const int64_t b = unit / Hq, h = unit % Hq, hk = h / group;
    std::vector<int64_t> c;  // visible kv rows of the current q row (recomputed per row: O(Skv) << O(Skv * D))
    std::vector<Acc> kbuf, vbuf, qrow(static_cast<size_t>(D)), orow(static_cast<size_t>(D)), srow;
    load_head(p.k, b, hk, kbuf);
    load_head(p.v, b, hk, vbuf);
    const Acc slope = p.alibi_slopes ? static_cast<Acc>(p.alibi_slopes[h]) : Acc(0);
    for (int64_t i = 0; i < Sq; ++i) {
      vis.row(i, c);
      const int64_t n = static_cast<int64_t>(c.size());
      Acc lse_row = kNegInf;
      std::fill(orow.begin(), orow.end(), Acc(0));
      if (n > 0) {
        const int64_t qoff = p.q.offset(b, i, h, 0);
        for (int64_t d = 0; d < D; ++d) qrow[d] = static_cast<Acc>(load_as_double(p.q.data, qoff + d, p.q.dtype));
        // S_ij = scale * q_i . k_j + bias_ij (rounded to q's dtype in kRoundIntermediates).
        srow.resize(static_cast<size_t>(n));
        Acc m = kNegInf;
        for (int64_t t = 0; t < n; ++t) {
          const int64_t j = c[t];
          Acc s = scale * dot(qrow.data(), &kbuf[j * D], D);
          if (p.alibi_slopes) s += alibi_bias(slope, pos_q[i], pos_k[j]);
          s = pol.round(s);
          srow[t] = s;
          m = s > m ? s : m;
        }
        Acc sum = 0;
        for (int64_t t = 0; t < n; ++t) {
          srow[t] = std::exp(srow[t] - m);
          sum += srow[t];
        }
        lse_row = m + std::log(sum);
        const Acc inv = Acc(1) / sum;
        // O_i = sum_j P_ij V_j with P normalised first (a naive implementation's order).
        for (int64_t t = 0; t < n; ++t) {
          const Acc pij = pol.round(srow[t] * inv);
          const Acc* vr = &vbuf[c[t] * D];
          for (int64_t d = 0; d < D; ++d) orow[d] += pij * vr[d];
        }
        for (int64_t d = 0; d < D; ++d) orow[d] = pol.round(orow[d]);
      }

      const int64_t ooff = p.o.offset(b, i, h, 0);
      float* lse_ptr = p.lse ? p.lse + b * lse_b + h * lse_h + i * lse_r : nullptr;
      if (!p.accumulate) {
        for (int64_t d = 0; d < D; ++d) store_from_double(p.o.data, ooff + d, p.o.dtype, orow[d]);
        if (lse_ptr) *lse_ptr = static_cast<float>(lse_row);
        continue;
      }
      // Accumulate: L = logaddexp(lse, LSE_b); o = o*exp(lse-L) + O_b*exp(LSE_b-L); lse = L.
      // A block with no visible key (LSE_b = -inf) leaves the accumulator as it is; an empty
      // accumulator (lse = -inf) takes the block's values (weights 0 and 1 exactly) and o is not read
      // there (it may hold anything). Final mode (o_final set): the merged row goes to o_final in q's
      // dtype instead of back to o (every row, 0 where neither part saw a key); o is only read.
      const float* oacc = static_cast<const float*>(p.o.data) + ooff;
      const bool final_out = p.o_final.data != nullptr;
      const int64_t foff = final_out ? p.o_final.offset(b, i, h, 0) : 0;
      const Acc old = static_cast<Acc>(*lse_ptr);
      const bool old_empty = std::isinf(old) && old < 0;
      if (n == 0) {
        if (final_out)
          for (int64_t d = 0; d < D; ++d)
            store_from_double(p.o_final.data, foff + d, p.o_final.dtype,
                              old_empty ? 0.0 : static_cast<double>(oacc[d]));
        continue;
      }
      if (old_empty) {
        for (int64_t d = 0; d < D; ++d) {
          if (final_out) {
            store_from_double(p.o_final.data, foff + d, p.o_final.dtype, static_cast<float>(orow[d]));
          } else {
            static_cast<float*>(p.o.data)[ooff + d] = static_cast<float>(orow[d]);
          }
        }
        *lse_ptr = static_cast<float>(lse_row);
        continue;
      }
      const Acc mx = old > lse_row ? old : lse_row;
      const Acc L = mx + std::log(std::exp(old - mx) + std::exp(lse_row - mx));
      const Acc w_old = std::exp(old - L), w_new = std::exp(lse_row - L);
      for (int64_t d = 0; d < D; ++d) {
        // Rounded to fp32 first in both modes, so o_final equals the two-pass result (accumulate, then cast).
        const float merged = static_cast<float>(static_cast<Acc>(oacc[d]) * w_old + orow[d] * w_new);
        if (final_out) {
          store_from_double(p.o_final.data, foff + d, p.o_final.dtype, merged);
        } else {
          static_cast<float*>(p.o.data)[ooff + d] = merged;
        }
      }
      *lse_ptr = static_cast<float>(L);
    }
  });
}

}  // namespace
}  // namespace host_detail

void host_attention_forward(const AttnParams& p, HostPrecision precision) {
  validate_forward(p, Device::kHost);
  using namespace host_detail;
  switch (precision) {
    case HostPrecision::kFloat64:
      forward_impl(p, Policy<double, false>{p.q.dtype});
      return;
    case HostPrecision::kFloat32:
      forward_impl(p, Policy<float, false>{p.q.dtype});
      return;
    case HostPrecision::kRoundIntermediates:
      forward_impl(p, Policy<float, true>{p.q.dtype});
      return;
  }
  DISTATTN_THROW("precision", "unknown HostPrecision ", static_cast<int>(precision));
}

}  // namespace distattn
