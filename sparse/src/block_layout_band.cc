// Band builders (causal, sliding_window, from_mask) and the machinery they share with the block-level
// builders: block counts, per-block position ranges and the row sweep that classifies a whole row of
// tiles against a band with a few binary searches instead of one classify_tile per tile.
#include <algorithm>
#include <climits>

#include "block_layout_internal.h"
#include "distattn/core/error.h"
#include "distattn/sparse/block_layout.h"

namespace distattn {
namespace layout_detail {

void check_block_count(int64_t blocks, const char* argument) {
  DISTATTN_CHECK_ARG(blocks >= 1 && blocks <= INT32_MAX, argument, "block count ", blocks,
                     " out of range (expected 1 .. ", INT32_MAX, ")");
}

int64_t block_count(int64_t rows, const char* argument) {
  DISTATTN_CHECK_ARG(rows >= 1, argument, "must be >= 1, got ", rows);
  const int64_t blocks = (rows + kLayoutBlock - 1) / kLayoutBlock;
  check_block_count(blocks, argument);
  return blocks;
}

void check_geometry(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos,
                    const char* q_pos_name, const char* kv_pos_name) {
  block_count(sq, "sq");
  block_count(skv, "skv");
  q_pos.validate(q_pos_name, sq);
  kv_pos.validate(kv_pos_name, skv);
}

BlockRanges::BlockRanges(const PositionMap& pos, int64_t rows) {
  const int64_t n = (rows + kLayoutBlock - 1) / kLayoutBlock;
  min_pos.resize(n);
  max_pos.resize(n);
  for (int64_t b = 0; b < n; ++b) {
    pos.range(b * kLayoutBlock, std::min((b + 1) * kLayoutBlock, rows), &min_pos[b], &max_pos[b]);
  }
  run_begin.push_back(0);
  for (int64_t b = 1; b < n; ++b) {
    if (min_pos[b] < min_pos[b - 1] || max_pos[b] < max_pos[b - 1]) run_begin.push_back(b);
  }
  run_begin.push_back(n);
}

namespace {
// First index i in [begin, end) where pred(i) is false, pred true on a prefix.
template <typename Pred>
int64_t first_false(int64_t begin, int64_t end, Pred pred) {
  while (begin < end) {
    const int64_t mid = begin + (end - begin) / 2;
    if (pred(mid)) {
      begin = mid + 1;
    } else {
      end = mid;
    }
  }
  return begin;
}
}  // namespace

void BandSweep::row(int64_t r, std::vector<Segment>* out) const {
  out->clear();
  const int64_t rmin = rows_.min_pos[r], rmax = rows_.max_pos[r];
  const int64_t lo = band_.lo, hi = band_.hi;  // sentinels are 2^40: no overflow against int32 positions
  const std::vector<int64_t>& cmin = cols_.min_pos;
  const std::vector<int64_t>& cmax = cols_.max_pos;
  for (size_t i = 0; i + 1 < cols_.run_begin.size(); ++i) {
    const int64_t r0 = cols_.run_begin[i], r1 = cols_.run_begin[i + 1];
    // Inside the run cmin, cmax are nondecreasing, so d_min = rmin - cmax and d_max = rmax - cmin are
    // nonincreasing in c. Not empty: d_min <= hi (a suffix, from b) and d_max >= lo (a prefix, up to a).
    const int64_t b = first_false(r0, r1, [&](int64_t c) { return cmax[c] < rmin - hi; });
    const int64_t a = first_false(r0, r1, [&](int64_t c) { return cmin[c] <= rmax - lo; });
    if (b >= a) continue;
    // Full: d_max <= hi (a suffix, from e) and d_min >= lo (a prefix, up to f). Full implies not empty.
    const int64_t e = first_false(r0, r1, [&](int64_t c) { return cmin[c] < rmax - hi; });
    const int64_t f = first_false(r0, r1, [&](int64_t c) { return cmax[c] <= rmin - lo; });
    const int64_t full_begin = std::max(e, b), full_end = std::min(f, a);
    if (full_begin < full_end) {
      if (b < full_begin) out->push_back(Segment{b, full_begin, true});
      out->push_back(Segment{full_begin, full_end, false});
      if (full_end < a) out->push_back(Segment{full_end, a, true});
    } else {
      out->push_back(Segment{b, a, true});
    }
  }
}

void RowBuilder::end_row() {
  DISTATTN_CHECK(index.size() <= static_cast<size_t>(INT32_MAX), "block layout lists ", index.size(),
                 " blocks: more than the int32 offsets hold (", INT32_MAX, ")");
  offset.push_back(static_cast<int32_t>(index.size()));
}

namespace {
// Validates an enabled restriction before any member reads its maps; returns whether it is enabled.
bool checked_enabled(const CausalRestriction& c, int64_t sq, int64_t skv) {
  if (c.enabled) check_geometry(sq, skv, c.q_pos, c.kv_pos, "causal.q_pos", "causal.kv_pos");
  return c.enabled;
}
}  // namespace

// Disabled: a 1-row placeholder geometry, never swept.
CausalRows::CausalRows(const CausalRestriction& c, int64_t sq, int64_t skv)
    : enabled_(checked_enabled(c, sq, skv)),
      q_(enabled_ ? c.q_pos : PositionMap::contiguous(0, 1), enabled_ ? sq : 1),
      kv_(enabled_ ? c.kv_pos : PositionMap::contiguous(0, 1), enabled_ ? skv : 1),
      sweep_(q_, kv_, DiagonalBand::from_mask(Mask::make_causal())) {}

}  // namespace layout_detail

namespace {
struct CsrArrays {
  std::vector<int32_t> offset;
  std::vector<int32_t> index;
  std::vector<uint8_t> partial;
};

// CSR of the tiles `rows` x `cols` that the band does not make empty. Two passes over the rows: count
// (to allocate exactly once: 1M-token layouts hold ~34M blocks), then fill.
CsrArrays sweep_csr(const layout_detail::BlockRanges& rows, const layout_detail::BlockRanges& cols,
                    const DiagonalBand& band, int64_t sq, int64_t skv) {
  const layout_detail::BandSweep sweep(rows, cols, band);
  std::vector<layout_detail::Segment> segments;
  CsrArrays out;
  out.offset.assign(rows.blocks() + 1, 0);
  int64_t nnz = 0;
  for (int64_t r = 0; r < rows.blocks(); ++r) {
    sweep.row(r, &segments);
    for (const auto& s : segments) nnz += s.end - s.begin;
    DISTATTN_CHECK(nnz <= INT32_MAX, "block layout would list more than ", INT32_MAX, " blocks (int32 offsets): sq ",
                   sq, ", skv ", skv);
    out.offset[r + 1] = static_cast<int32_t>(nnz);
  }
  out.index.resize(nnz);
  out.partial.resize(nnz);
  for (int64_t r = 0; r < rows.blocks(); ++r) {
    sweep.row(r, &segments);
    int64_t at = out.offset[r];
    for (const auto& s : segments) {
      for (int64_t c = s.begin; c < s.end; ++c, ++at) {
        out.index[at] = static_cast<int32_t>(c);
        out.partial[at] = s.partial ? 1 : 0;
      }
    }
  }
  return out;
}
}  // namespace

using layout_detail::BlockRanges;

BlockLayout BlockLayout::from_mask(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos,
                                   const Mask& mask) {
  layout_detail::check_geometry(sq, skv, q_pos, kv_pos, "q_pos", "kv_pos");
  DISTATTN_CHECK_ARG(mask.blocks == nullptr, "mask",
                     "mask.blocks must be null: the layout is built from the band (causal, window) alone");
  DISTATTN_CHECK_ARG(mask.window >= 0, "mask", "mask.window must be >= 0 (0: unlimited), got ", mask.window);
  const BlockRanges q(q_pos, sq), kv(kv_pos, skv);
  const DiagonalBand band = DiagonalBand::from_mask(mask);

  // Both directions by the same sweep: the columns are the rows of the transposed problem, with
  // d' = pos_k - pos_q in [-hi, -lo]. classify_tile is symmetric under that swap, so the flags agree, and
  // both directions are written sequentially (a counting-sort transpose of ~34M blocks would scatter).
  CsrArrays rows = sweep_csr(q, kv, band, sq, skv);
  CsrArrays cols = sweep_csr(kv, q, DiagonalBand{-band.hi, -band.lo}, sq, skv);
  Mask recorded = mask;
  recorded.blocks = nullptr;
  return assemble(q.blocks(), kv.blocks(), std::move(rows.offset), std::move(rows.index), std::move(rows.partial),
                  std::move(cols.offset), std::move(cols.index), std::move(cols.partial), recorded);
}

BlockLayout BlockLayout::causal(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos) {
  return from_mask(sq, skv, q_pos, kv_pos, Mask::make_causal());
}

BlockLayout BlockLayout::sliding_window(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos,
                                        int64_t window, bool causal) {
  DISTATTN_CHECK_ARG(window >= 1, "window", "sliding window must be >= 1 token, got ", window);
  return from_mask(sq, skv, q_pos, kv_pos, causal ? Mask::make_causal(window) : Mask::make_window(window));
}

}  // namespace distattn
