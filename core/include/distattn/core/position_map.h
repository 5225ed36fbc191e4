// PositionMap: the global position of every local row.
//
// A rank holds its rows of the full sequence as a short list of chunks. Local rows are numbered
// 0..length()-1 through the chunks in order; row j of chunk c has global position
//
//     pos = chunks[c].start + j * chunks[c].stride          (0 <= j < chunks[c].length)
//
//   contiguous shard of rank r (P ranks, S tokens):  one chunk {r*S/P, 1, S/P}
//   zigzag shard of rank r (2P chunks of size C):     {r*C, 1, C}, {(2P-1-r)*C, 1, C}
//   striped shard of rank r:                          one chunk {r, P, S/P}
//   dilated view, offset s, rate r, over S tokens:    one chunk {s, r, S/r}
//
// Every mask and bias is a function of these positions (never of local row indices), so a sharded
// run computes exactly what one large GPU would. The struct is a POD of fixed size so the kernels
// take it by value. Positions must lie in [0, 2^31 - 1): the kernels use int32 position arithmetic.
#pragma once

#include <cstdint>

#include "distattn/core/dtype.h"  // DISTATTN_HD

namespace distattn {

struct PositionChunk {
  int64_t start = 0;   // global position of the chunk's first row
  int64_t stride = 1;  // distance in global positions between consecutive rows (>= 1)
  int64_t length = 0;  // rows in the chunk (>= 1)
};

struct PositionMap {
  static constexpr int kMaxChunks = 8;
  static constexpr int64_t kMaxPosition = (int64_t{1} << 31) - 2;

  int num_chunks = 0;
  PositionChunk chunks[kMaxChunks];

  // --- construction (host) ---
  static PositionMap contiguous(int64_t start, int64_t length) { return strided(start, 1, length); }
  static PositionMap strided(int64_t start, int64_t stride, int64_t length) {
    PositionMap m;
    m.num_chunks = 1;
    m.chunks[0] = PositionChunk{start, stride, length};
    return m;
  }
  // Appends a chunk; throws distattn::Error past kMaxChunks (defined in position_map.cc).
  PositionMap& add_chunk(int64_t start, int64_t stride, int64_t length);
  // The positions of local rows [begin, end) as a map of its own (row begin becomes row 0): what a call on
  // that row range of the tensor needs. Throws distattn::Error naming "begin/end" unless
  // 0 <= begin < end <= length() (defined in position_map.cc).
  PositionMap slice(int64_t begin, int64_t end) const;

  // Throws distattn::Error naming `argument` unless: 1 <= num_chunks <= kMaxChunks, every chunk has
  // length >= 1, stride >= 1, start >= 0, last position <= kMaxPosition; and length() == expected_rows
  // when expected_rows >= 0.
  void validate(const char* argument, int64_t expected_rows = -1) const;

  // --- queries (host and device) ---
  DISTATTN_HD int64_t length() const {
    int64_t n = 0;
    for (int c = 0; c < num_chunks; ++c) n += chunks[c].length;
    return n;
  }

  // Global position of local row `row` (0 <= row < length()).
  DISTATTN_HD int64_t position(int64_t row) const {
    for (int c = 0; c < num_chunks; ++c) {
      if (row < chunks[c].length) return chunks[c].start + row * chunks[c].stride;
      row -= chunks[c].length;
    }
    return -1;  // out of range: callers never ask
  }

  // Smallest and largest global position among local rows [row_begin, row_end) (non-empty range,
  // clipped to length()). Positions grow inside a chunk, so each chunk's piece contributes its ends.
  DISTATTN_HD void range(int64_t row_begin, int64_t row_end, int64_t* min_pos, int64_t* max_pos) const {
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    int64_t chunk_first = 0;
    for (int c = 0; c < num_chunks; ++c) {
      const int64_t chunk_end = chunk_first + chunks[c].length;
      const int64_t b = row_begin > chunk_first ? row_begin : chunk_first;
      const int64_t e = row_end < chunk_end ? row_end : chunk_end;
      if (b < e) {
        const int64_t first = chunks[c].start + (b - chunk_first) * chunks[c].stride;
        const int64_t last = chunks[c].start + (e - 1 - chunk_first) * chunks[c].stride;
        lo = first < lo ? first : lo;
        hi = last > hi ? last : hi;
      }
      chunk_first = chunk_end;
    }
    *min_pos = lo;
    *max_pos = hi;
  }

  // If rows [row_begin, row_end) all lie in one chunk, returns true and the affine form
  // pos(row_begin + t) = *base + t * *step. Lets a kernel compute a tile's positions with one multiply-add.
  DISTATTN_HD bool affine(int64_t row_begin, int64_t row_end, int64_t* base, int64_t* step) const {
    int64_t chunk_first = 0;
    for (int c = 0; c < num_chunks; ++c) {
      const int64_t chunk_end = chunk_first + chunks[c].length;
      if (row_begin >= chunk_first && row_begin < chunk_end) {
        if (row_end > chunk_end) return false;
        *base = chunks[c].start + (row_begin - chunk_first) * chunks[c].stride;
        *step = chunks[c].stride;
        return true;
      }
      chunk_first = chunk_end;
    }
    return false;
  }
};

}  // namespace distattn
