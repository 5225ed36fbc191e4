// Layout helpers of BlockSparseAttention: the block-diagonal builder and the exact visible-pair counts
// (block_sparse_attention.h). Counting never builds an element mask: full blocks are rows x columns, partial
// blocks are counted per q row by arithmetic on the kv position chunks.
#include <algorithm>
#include <climits>

#include "block_layout_internal.h"
#include "distattn/core/error.h"
#include "distattn/sparse/block_sparse_attention.h"

namespace distattn {

BlockLayout block_diagonal_layout(int64_t sq, int64_t skv, int64_t segment, const CausalRestriction& causal) {
  const int64_t nq = layout_detail::block_count(sq, "sq");
  const int64_t nk = layout_detail::block_count(skv, "skv");
  DISTATTN_CHECK_ARG(segment >= kLayoutBlock && segment % kLayoutBlock == 0, "segment",
                     "must be a positive multiple of ", kLayoutBlock, " rows (the layout block), got ", segment);
  const layout_detail::CausalRows causal_rows(causal, sq, skv);
  const int64_t per = segment / kLayoutBlock;  // blocks per segment
  layout_detail::RowBuilder rows;
  std::vector<layout_detail::Segment> allowed;
  for (int64_t qb = 0; qb < nq; ++qb) {
    // Segment g = qb / per holds kv blocks [g * per, (g + 1) * per), clipped to the kv grid.
    const int64_t first = (qb / per) * per;
    const int64_t last = std::min(first + per, nk);
    if (causal_rows.enabled()) {
      causal_rows.row(qb, &allowed);
    } else {
      allowed.assign(1, layout_detail::Segment{0, nk, false});
    }
    for (const auto& s : allowed) {  // ascending, disjoint: the intersection comes out ascending
      for (int64_t kb = std::max(first, s.begin); kb < std::min(last, s.end); ++kb) rows.push(kb, s.partial);
    }
    rows.end_row();
  }
  return BlockLayout::from_rows(nq, nk, std::move(rows.offset), std::move(rows.index), std::move(rows.partial),
                                causal_rows.enabled() ? Mask::make_causal() : Mask::none());
}

namespace {

// floor(a / b) for b > 0 and any sign of a.
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// kv rows [k0, k1) of `kv` as chunk pieces: row k0 + offset + t has position base + t * step, t < count.
struct Piece {
  int64_t base, step, count;
};

void pieces_of(const PositionMap& kv, int64_t k0, int64_t k1, std::vector<Piece>* out) {
  out->clear();
  int64_t chunk_first = 0;
  for (int c = 0; c < kv.num_chunks; ++c) {
    const int64_t chunk_end = chunk_first + kv.chunks[c].length;
    const int64_t b = std::max(k0, chunk_first), e = std::min(k1, chunk_end);
    if (b < e)
      out->push_back(Piece{kv.chunks[c].start + (b - chunk_first) * kv.chunks[c].stride, kv.chunks[c].stride, e - b});
    chunk_first = chunk_end;
  }
}

// Rows of `pieces` whose position lies in [a, b].
int64_t count_in(const std::vector<Piece>& pieces, int64_t a, int64_t b) {
  int64_t n = 0;
  for (const Piece& p : pieces) {
    // base + t * step in [a, b]  <=>  ceil((a - base) / step) <= t <= floor((b - base) / step),
    // with ceil(x / s) = -floor(-x / s).
    const int64_t t_lo = std::max<int64_t>(0, -floor_div(p.base - a, p.step));
    const int64_t t_hi = std::min<int64_t>(p.count - 1, floor_div(b - p.base, p.step));
    if (t_hi >= t_lo) n += t_hi - t_lo + 1;
  }
  return n;
}

struct Counts {
  int64_t pairs = 0;       // visible pairs
  int64_t empty_rows = 0;  // q rows with none
  int64_t computed = 0;    // pairs of the listed blocks, whole
};

Counts count_layout(const BlockLayout& l, int64_t sq, int64_t skv, const PositionMap& q_pos,
                    const PositionMap& kv_pos) {
  const int64_t nq = (sq + kLayoutBlock - 1) / kLayoutBlock, nk = (skv + kLayoutBlock - 1) / kLayoutBlock;
  DISTATTN_CHECK_ARG(sq >= 1 && skv >= 1 && l.num_q_blocks() == nq && l.num_kv_blocks() == nk, "layout", "has ",
                     l.num_q_blocks(), " x ", l.num_kv_blocks(), " blocks; Sq = ", sq, ", Skv = ", skv,
                     " need ceil(S / ", kLayoutBlock, ") = ", nq, " x ", nk);
  q_pos.validate("q_pos", sq);
  kv_pos.validate("kv_pos", skv);
  const DiagonalBand band = DiagonalBand::from_mask(l.band());
  const auto& offset = l.row_offset();
  const auto& index = l.col_index();
  const auto& partial = l.row_partial();
  Counts c;
  std::vector<Piece> pieces;
  std::vector<int64_t> row_count(kLayoutBlock);
  for (int64_t qb = 0; qb < nq; ++qb) {
    const int64_t q0 = qb * kLayoutBlock, q1 = std::min(q0 + kLayoutBlock, sq);
    bool any_full = false;
    std::fill(row_count.begin(), row_count.end(), 0);
    for (int32_t e = offset[qb]; e < offset[qb + 1]; ++e) {
      const int64_t k0 = int64_t{index[e]} * kLayoutBlock, k1 = std::min(k0 + kLayoutBlock, skv);
      c.computed += (q1 - q0) * (k1 - k0);
      if (!partial[e]) {  // the builder's promise: every pair of the block is visible
        any_full = true;
        c.pairs += (q1 - q0) * (k1 - k0);
        continue;
      }
      // Partial: pair visible iff lo <= pos_q - pos_k <= hi  <=>  pos_k in [pos_q - hi, pos_q - lo].
      pieces_of(kv_pos, k0, k1, &pieces);
      for (int64_t i = q0; i < q1; ++i) {
        const int64_t pq = q_pos.position(i);
        const int64_t n = count_in(pieces, pq - band.hi, pq - band.lo);
        row_count[i - q0] += n;
        c.pairs += n;
      }
    }
    if (!any_full) {
      for (int64_t i = q0; i < q1; ++i) c.empty_rows += row_count[i - q0] == 0 ? 1 : 0;
    }
  }
  return c;
}

}  // namespace

int64_t count_visible_pairs(const BlockLayout& layout, int64_t sq, int64_t skv, const PositionMap& q_pos,
                            const PositionMap& kv_pos) {
  return count_layout(layout, sq, skv, q_pos, kv_pos).pairs;
}

int64_t count_rows_without_keys(const BlockLayout& layout, int64_t sq, int64_t skv, const PositionMap& q_pos,
                                const PositionMap& kv_pos) {
  return count_layout(layout, sq, skv, q_pos, kv_pos).empty_rows;
}

int64_t count_computed_pairs(const BlockLayout& layout, int64_t sq, int64_t skv, const PositionMap& q_pos,
                             const PositionMap& kv_pos) {
  return count_layout(layout, sq, skv, q_pos, kv_pos).computed;
}

}  // namespace distattn
