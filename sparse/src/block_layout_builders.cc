// Block-level builders: strided, global_tokens, random, bigbird, from_block_mask / from_block_list.
// Their blocks are full (the block is the unit of sparsity); an optional causal restriction intersects
// each row with the row's causal segments (BandSweep), so no builder ever visits all block pairs
// except from_block_mask, whose input is the dense block grid itself.
#include <algorithm>
#include <climits>
#include <unordered_set>

#include "block_layout_internal.h"
#include "distattn/core/error.h"
#include "distattn/sparse/block_layout.h"

namespace distattn {
namespace layout_detail {

uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  // Accept x >= 2^64 mod n: the accepted range has a multiple of n values, so x % n is uniform.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    const uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

void sample_without_replacement(std::mt19937_64& rng, int64_t n, int64_t k, std::vector<int64_t>* out) {
  out->clear();
  // Floyd: for j = n-k .. n-1 draw t in [0, j]; take t, or j when t is already taken. Each k-subset is
  // equally likely, and k draws suffice. Membership only decides the result, so the set's kind (a
  // marker array for dense draws, a hash set for sparse ones) does not change it.
  if (k * 16 >= n) {
    std::vector<uint8_t> taken(n, 0);
    for (int64_t j = n - k; j < n; ++j) {
      int64_t t = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(j + 1)));
      if (taken[t]) t = j;
      taken[t] = 1;
      out->push_back(t);
    }
  } else {
    std::unordered_set<int64_t> taken;
    taken.reserve(2 * k);
    for (int64_t j = n - k; j < n; ++j) {
      int64_t t = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(j + 1)));
      if (taken.count(t)) t = j;
      taken.insert(t);
      out->push_back(t);
    }
  }
  std::sort(out->begin(), out->end());
}

int64_t count_free(const std::vector<Segment>& segments, const std::vector<int64_t>& taken) {
  int64_t count = 0;
  size_t t = 0;
  for (const Segment& s : segments) {
    count += s.end - s.begin;
    while (t < taken.size() && taken[t] < s.begin) ++t;
    while (t < taken.size() && taken[t] < s.end) --count, ++t;
  }
  return count;
}

void select_free(const std::vector<Segment>& segments, const std::vector<int64_t>& taken,
                 const std::vector<int64_t>& ranks, std::vector<std::pair<int64_t, bool>>* out) {
  int64_t base = 0;  // free elements before x
  size_t t = 0, k = 0;
  for (const Segment& s : segments) {
    if (k == ranks.size()) break;
    int64_t x = s.begin;
    while (t < taken.size() && taken[t] < x) ++t;
    while (x < s.end && k < ranks.size()) {
      // The free stretch [x, y): up to the next taken block inside the segment, or its end.
      const bool hit = t < taken.size() && taken[t] < s.end;
      const int64_t y = hit ? taken[t] : s.end;
      for (; k < ranks.size() && ranks[k] < base + (y - x); ++k) out->emplace_back(x + (ranks[k] - base), s.partial);
      base += y - x;
      if (hit) {
        x = y + 1;
        ++t;
      } else {
        x = y;
      }
    }
  }
}

namespace {

// Emits the rows of a block-level builder in order, through the optional causal restriction.
class RowEmitter {
 public:
  RowEmitter(const CausalRestriction& causal, int64_t sq, int64_t skv)
      : num_q_blocks_(block_count(sq, "sq")), num_kv_blocks_(block_count(skv, "skv")), causal_(causal, sq, skv) {}

  int64_t num_q_blocks() const { return num_q_blocks_; }
  int64_t num_kv_blocks() const { return num_kv_blocks_; }

  // Row qb lists `listed` (ascending, distinct, full before the restriction) plus `extra` blocks drawn
  // with `rng` without replacement among the row's allowed blocks not in `listed` (fewer if fewer remain).
  void emit(int64_t qb, const std::vector<int64_t>& listed, int64_t extra, std::mt19937_64* rng) {
    // The row's allowed blocks as segments: all kv blocks full, or the causal ones with their flags.
    if (causal_.enabled()) {
      causal_.row(qb, &segments_);
    } else {
      segments_.assign(1, Segment{0, num_kv_blocks_, false});
    }
    kept_.clear();
    size_t s = 0;
    for (int64_t c : listed) {
      while (s < segments_.size() && segments_[s].end <= c) ++s;
      if (s == segments_.size()) break;
      if (c >= segments_[s].begin) kept_.emplace_back(c, segments_[s].partial);
    }
    drawn_.clear();
    if (extra > 0) {
      const int64_t available = count_free(segments_, listed);
      sample_without_replacement(*rng, available, std::min(extra, available), &ranks_);
      select_free(segments_, listed, ranks_, &drawn_);
    }
    // Both lists are ascending and disjoint: merge.
    merged_.resize(kept_.size() + drawn_.size());
    std::merge(kept_.begin(), kept_.end(), drawn_.begin(), drawn_.end(), merged_.begin());
    for (const auto& e : merged_) rows_.push(e.first, e.second);
    rows_.end_row();
  }

  BlockLayout finish() {
    return BlockLayout::from_rows(num_q_blocks_, num_kv_blocks_, std::move(rows_.offset), std::move(rows_.index),
                                  std::move(rows_.partial), causal_.enabled() ? Mask::make_causal() : Mask::none());
  }

 private:
  int64_t num_q_blocks_;
  int64_t num_kv_blocks_;
  CausalRows causal_;
  RowBuilder rows_;
  std::vector<Segment> segments_;
  std::vector<std::pair<int64_t, bool>> kept_, drawn_, merged_;
  std::vector<int64_t> ranks_;
};

// Appends [max(0, center - radius), min(count - 1, center + radius)] (no overflow for any radius >= 0).
void push_window(int64_t center, int64_t radius, int64_t count, std::vector<int64_t>* out) {
  const int64_t first = center - std::min(radius, center);
  const int64_t last = center + std::min(radius, count - 1 - center);
  for (int64_t c = first; c <= last; ++c) out->push_back(c);
}

void sort_unique(std::vector<int64_t>* v) {
  std::sort(v->begin(), v->end());
  v->erase(std::unique(v->begin(), v->end()), v->end());
}

}  // namespace
}  // namespace layout_detail

using layout_detail::RowEmitter;

BlockLayout BlockLayout::strided(int64_t sq, int64_t skv, int64_t stride_blocks, int64_t local_blocks,
                                 const CausalRestriction& causal) {
  RowEmitter rows(causal, sq, skv);
  DISTATTN_CHECK_ARG(stride_blocks >= 1, "stride_blocks", "must be >= 1, got ", stride_blocks);
  DISTATTN_CHECK_ARG(local_blocks >= 0, "local_blocks", "must be >= 0, got ", local_blocks);
  const int64_t nk = rows.num_kv_blocks();
  std::vector<int64_t> listed;
  for (int64_t qb = 0; qb < rows.num_q_blocks(); ++qb) {
    listed.clear();
    // (qb - kb) mod stride == 0  <=>  kb = qb mod stride + j * stride.
    for (int64_t kb = qb % stride_blocks; kb < nk; kb += stride_blocks) listed.push_back(kb);
    if (qb < nk) {
      layout_detail::push_window(qb, local_blocks, nk, &listed);
    } else if (qb - local_blocks <= nk - 1) {  // the band [qb - L, qb + L] reaches back into [0, nk)
      for (int64_t kb = std::max<int64_t>(0, qb - local_blocks); kb < nk; ++kb) listed.push_back(kb);
    }
    layout_detail::sort_unique(&listed);
    rows.emit(qb, listed, 0, nullptr);
  }
  return rows.finish();
}

BlockLayout BlockLayout::global_tokens(int64_t sq, int64_t skv, int64_t num_global_blocks,
                                       const CausalRestriction& causal) {
  RowEmitter rows(causal, sq, skv);
  const int64_t nk = rows.num_kv_blocks();
  DISTATTN_CHECK_ARG(num_global_blocks >= 1 && num_global_blocks <= std::min(rows.num_q_blocks(), nk),
                     "num_global_blocks",
                     "must be in [1, min(num_q_blocks, num_kv_blocks) = ", std::min(rows.num_q_blocks(), nk), "], got ",
                     num_global_blocks);
  std::vector<int64_t> listed;
  for (int64_t qb = 0; qb < rows.num_q_blocks(); ++qb) {
    listed.clear();
    const int64_t end = qb < num_global_blocks ? nk : num_global_blocks;
    for (int64_t kb = 0; kb < end; ++kb) listed.push_back(kb);
    rows.emit(qb, listed, 0, nullptr);
  }
  return rows.finish();
}

BlockLayout BlockLayout::random(int64_t sq, int64_t skv, int64_t blocks_per_row, uint64_t seed,
                                const CausalRestriction& causal) {
  RowEmitter rows(causal, sq, skv);
  DISTATTN_CHECK_ARG(blocks_per_row >= 1 && blocks_per_row <= rows.num_kv_blocks(), "blocks_per_row",
                     "must be in [1, num_kv_blocks = ", rows.num_kv_blocks(), "], got ", blocks_per_row);
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> none;
  for (int64_t qb = 0; qb < rows.num_q_blocks(); ++qb) rows.emit(qb, none, blocks_per_row, &rng);
  return rows.finish();
}

BlockLayout BlockLayout::bigbird(int64_t sq, int64_t skv, int64_t window_blocks, int64_t num_global_blocks,
                                 int64_t random_blocks, uint64_t seed, const CausalRestriction& causal) {
  RowEmitter rows(causal, sq, skv);
  const int64_t nk = rows.num_kv_blocks();
  DISTATTN_CHECK_ARG(window_blocks >= 0, "window_blocks", "must be >= 0, got ", window_blocks);
  DISTATTN_CHECK_ARG(num_global_blocks >= 0 && num_global_blocks <= std::min(rows.num_q_blocks(), nk),
                     "num_global_blocks",
                     "must be in [0, min(num_q_blocks, num_kv_blocks) = ", std::min(rows.num_q_blocks(), nk), "], got ",
                     num_global_blocks);
  DISTATTN_CHECK_ARG(random_blocks >= 0, "random_blocks", "must be >= 0, got ", random_blocks);
  std::mt19937_64 rng(seed);
  std::vector<int64_t> listed;
  for (int64_t qb = 0; qb < rows.num_q_blocks(); ++qb) {
    listed.clear();
    if (qb < num_global_blocks) {
      for (int64_t kb = 0; kb < nk; ++kb) listed.push_back(kb);
    } else {
      for (int64_t kb = 0; kb < num_global_blocks; ++kb) listed.push_back(kb);
      if (qb < nk) {
        layout_detail::push_window(qb, window_blocks, nk, &listed);
      } else if (qb - window_blocks <= nk - 1) {
        for (int64_t kb = std::max<int64_t>(0, qb - window_blocks); kb < nk; ++kb) listed.push_back(kb);
      }
      layout_detail::sort_unique(&listed);
    }
    rows.emit(qb, listed, random_blocks, &rng);
  }
  return rows.finish();
}

BlockLayout BlockLayout::from_block_mask(int64_t num_q_blocks, int64_t num_kv_blocks, const std::vector<uint8_t>& mask,
                                         const Mask& band) {
  layout_detail::check_block_count(num_q_blocks, "num_q_blocks");
  layout_detail::check_block_count(num_kv_blocks, "num_kv_blocks");
  DISTATTN_CHECK_ARG(static_cast<int64_t>(mask.size()) == num_q_blocks * num_kv_blocks, "mask", "has ", mask.size(),
                     " entries, expected num_q_blocks * num_kv_blocks = ", num_q_blocks * num_kv_blocks,
                     " (row-major)");
  DISTATTN_CHECK_ARG(band.blocks == nullptr && band.window >= 0, "band",
                     "must be a causal / window band (blocks null, window >= 0)");
  layout_detail::RowBuilder rows;
  for (int64_t qb = 0; qb < num_q_blocks; ++qb) {
    const uint8_t* row = mask.data() + qb * num_kv_blocks;
    for (int64_t kb = 0; kb < num_kv_blocks; ++kb) {
      DISTATTN_CHECK_ARG(row[kb] <= kPartial, "mask", "entry (", qb, ", ", kb, ") is ", int(row[kb]),
                         ": expected 0 (absent), 1 (full) or 2 (partial)");
      if (row[kb] != kAbsent) rows.push(kb, row[kb] == kPartial);
    }
    rows.end_row();
  }
  return from_rows(num_q_blocks, num_kv_blocks, std::move(rows.offset), std::move(rows.index), std::move(rows.partial),
                   band);
}

BlockLayout BlockLayout::from_block_list(int64_t num_q_blocks, int64_t num_kv_blocks,
                                         const std::vector<std::pair<int64_t, int64_t>>& blocks) {
  layout_detail::check_block_count(num_q_blocks, "num_q_blocks");
  layout_detail::check_block_count(num_kv_blocks, "num_kv_blocks");
  for (size_t i = 0; i < blocks.size(); ++i) {
    DISTATTN_CHECK_ARG(blocks[i].first >= 0 && blocks[i].first < num_q_blocks && blocks[i].second >= 0 &&
                           blocks[i].second < num_kv_blocks,
                       "blocks", "entry ", i, " = (", blocks[i].first, ", ", blocks[i].second, ") out of range [0, ",
                       num_q_blocks, ") x [0, ", num_kv_blocks, ")");
  }
  std::vector<std::pair<int64_t, int64_t>> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  layout_detail::RowBuilder rows;
  size_t i = 0;
  for (int64_t qb = 0; qb < num_q_blocks; ++qb) {
    for (; i < sorted.size() && sorted[i].first == qb; ++i) rows.push(sorted[i].second, false);
    rows.end_row();
  }
  return from_rows(num_q_blocks, num_kv_blocks, std::move(rows.offset), std::move(rows.index), std::move(rows.partial),
                   Mask::none());
}

}  // namespace distattn
