// Internal helpers shared by the BlockLayout builders (not installed): block counts, per-block position
// ranges, the band row sweep, a row-by-row CSR accumulator, and seeded sampling without replacement.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"
#include "distattn/sparse/block_layout.h"

namespace distattn {
namespace layout_detail {

// ceil(rows / kLayoutBlock); throws naming `argument` unless rows >= 1 and the count fits int32.
int64_t block_count(int64_t rows, const char* argument);
// Throws naming `argument` unless 1 <= blocks <= INT32_MAX.
void check_block_count(int64_t blocks, const char* argument);

// Validates sq / skv (>= 1, block counts fit int32) and both maps (lengths sq / skv), naming the maps
// q_pos_name / kv_pos_name.
void check_geometry(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos,
                    const char* q_pos_name, const char* kv_pos_name);

// Smallest / largest global position of each block's rows: block b covers local rows
// [b * kLayoutBlock, min((b + 1) * kLayoutBlock, rows)).
struct BlockRanges {
  std::vector<int64_t> min_pos;
  std::vector<int64_t> max_pos;
  // Maximal runs [run_begin[i], run_begin[i + 1]) of blocks over which BOTH min_pos and max_pos are
  // nondecreasing: inside a run the visible blocks of any tile row form an interval (binary search).
  // A chunk of a position map gives one run; a zigzag map two (three if a block straddles the seam).
  std::vector<int64_t> run_begin;  // ascending, last entry = number of blocks

  BlockRanges(const PositionMap& pos, int64_t rows);
  int64_t blocks() const { return static_cast<int64_t>(min_pos.size()); }
};

// A stretch [begin, end) of column blocks of one row, all with the same classification.
struct Segment {
  int64_t begin;
  int64_t end;
  bool partial;
};

// Classifies the tiles of one row block against a band without visiting invisible tiles.
// Row block r with positions in [rmin, rmax], column block c in [cmin, cmax], d = row pos - col pos:
//   d_min = rmin - cmax, d_max = rmax - cmin, both nonincreasing in c inside a run of `cols`, so
//   empty   (d_max < lo or d_min > hi)      is a prefix plus a suffix of the run,
//   full    (d_min >= lo and d_max <= hi)   is an interval,
// and each run gives at most three segments: partial, full, partial. Identical to classify_tile per tile.
class BandSweep {
 public:
  BandSweep(const BlockRanges& rows, const BlockRanges& cols, const DiagonalBand& band)
      : rows_(rows), cols_(cols), band_(band) {}
  // Appends row block r's segments, ascending and disjoint, to *out (cleared first).
  void row(int64_t r, std::vector<Segment>* out) const;

 private:
  const BlockRanges& rows_;
  const BlockRanges& cols_;
  DiagonalBand band_;
};

// Accumulates a row CSR one row at a time (column indices ascending within a row).
struct RowBuilder {
  std::vector<int32_t> offset{0};
  std::vector<int32_t> index;
  std::vector<uint8_t> partial;
  void push(int64_t col, bool is_partial) {
    index.push_back(static_cast<int32_t>(col));
    partial.push_back(is_partial ? 1 : 0);
  }
  void end_row();  // throws once more than INT32_MAX blocks are listed
};

// The causal band of a restriction, ready to classify rows of blocks (q blocks x kv blocks).
class CausalRows {
 public:
  // Validates the restriction's maps against sq / skv (argument names "causal.q_pos" / "causal.kv_pos").
  CausalRows(const CausalRestriction& c, int64_t sq, int64_t skv);
  bool enabled() const { return enabled_; }
  // Row qb's causally visible segments.
  void row(int64_t qb, std::vector<Segment>* out) const { sweep_.row(qb, out); }

 private:
  bool enabled_;
  BlockRanges q_;
  BlockRanges kv_;
  BandSweep sweep_;
};

// Uniform integer in [0, n), n >= 1, from raw mt19937_64 output by rejection: identical on every
// standard library (std::uniform_int_distribution is not specified bit for bit).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n);
// k distinct integers drawn uniformly from [0, n) (Floyd's algorithm), returned ascending. k <= n.
void sample_without_replacement(std::mt19937_64& rng, int64_t n, int64_t k, std::vector<int64_t>* out);

// Number of elements of (union of `segments`) minus `taken` (ascending, distinct).
int64_t count_free(const std::vector<Segment>& segments, const std::vector<int64_t>& taken);
// The elements of rank `ranks[i]` (0-based, ranks ascending) of (union of `segments`) minus `taken`:
// appended to *out as (block, partial flag of its segment), ascending.
void select_free(const std::vector<Segment>& segments, const std::vector<int64_t>& taken,
                 const std::vector<int64_t>& ranks, std::vector<std::pair<int64_t, bool>>* out);

}  // namespace layout_detail
}  // namespace distattn
