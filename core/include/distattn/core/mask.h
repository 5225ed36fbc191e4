// Masks: which (query, key) pairs are visible. Defined on GLOBAL positions (position_map.h).
//
// With d = pos_q - pos_k (an integer), a pair is visible iff  lo <= d <= hi, where
//
//   no mask               lo = -inf,       hi = +inf
//   causal                lo = 0,          hi = +inf          (key not after the query)
//   causal, window W      lo = 0,          hi = W - 1         (pos_q - pos_k < W)
//   non-causal, window W  lo = -(W - 1),   hi = W - 1         (|pos_q - pos_k| < W)
//
// A block list (BlockListView) adds block sparsity on top: the pair is visible only if its
// (q block, kv block) is listed; a listed block marked FULL is visible entirely (the element mask
// above is not evaluated there: whoever built the list promised it is all visible); a block marked
// PARTIAL has the element mask applied. Blocks are kLayoutBlock x kLayoutBlock local rows.
//
// Rows with no visible key get O = 0 and LSE = -inf in every engine.
#pragma once

#include <cstdint>

#include "distattn/core/dtype.h"  // DISTATTN_HD
#include "distattn/core/tensor.h"

namespace distattn {

// Side of the square blocks a block list is made of (local rows). The GPU kernels' tiles divide it.
constexpr int kLayoutBlock = 128;

// Block sparsity in CSR form, in both directions (the forward walks rows of q blocks, the backward
// walks columns of kv blocks). Arrays live on `device`. Owned by distattn::BlockLayout (sparse/block_layout.h); this is
// a view.
struct BlockListView {
  Device device = Device::kHost;
  int64_t num_q_blocks = 0;   // ceil(Sq / kLayoutBlock)
  int64_t num_kv_blocks = 0;  // ceil(Skv / kLayoutBlock)
  int64_t nnz = 0;            // listed blocks
  // By q block: kv blocks of q block i are col_index[row_offset[i] .. row_offset[i+1]), ascending.
  const int32_t* row_offset = nullptr;   // [num_q_blocks + 1]
  const int32_t* col_index = nullptr;    // [nnz]
  const uint8_t* row_partial = nullptr;  // [nnz] 1: apply the element mask; 0: the whole block is visible
  // By kv block (the transpose): q blocks of kv block j are row_index[col_offset[j] .. col_offset[j+1]).
  const int32_t* col_offset = nullptr;   // [num_kv_blocks + 1]
  const int32_t* row_index = nullptr;    // [nnz]
  const uint8_t* col_partial = nullptr;  // [nnz]
};

struct Mask {
  bool causal = false;  // hide keys after the query
  int64_t window = 0;   // 0: unlimited; W > 0: hide keys with pos_q - pos_k >= W (and
                        // pos_k - pos_q >= W when not causal)
  const BlockListView* blocks =
      nullptr;  // optional block sparsity (host-side struct; its arrays on the engine's device)

  static Mask none() { return Mask{}; }
  static Mask make_causal(int64_t window_size = 0) { return Mask{true, window_size, nullptr}; }
  static Mask make_window(int64_t window_size) { return Mask{false, window_size, nullptr}; }
};

// The visible interval of d = pos_q - pos_k as two int64 bounds (sentinels for infinity).
struct DiagonalBand {
  static constexpr int64_t kInf = int64_t{1} << 40;  // beyond any position difference
  int64_t lo = -kInf;
  int64_t hi = kInf;

  static DiagonalBand from_mask(const Mask& m) {
    DiagonalBand b;
    if (m.causal) b.lo = 0;
    if (m.window > 0) {
      b.hi = m.window - 1;
      if (!m.causal) b.lo = -(m.window - 1);
    }
    return b;
  }
  DISTATTN_HD bool visible(int64_t pos_q, int64_t pos_k) const {
    const int64_t d = pos_q - pos_k;
    return d >= lo && d <= hi;
  }
};

// How a tile relates to the band, from the position ranges of its query rows and key rows.
// Because min/max ranges over-approximate the set of differences, kFull and kEmpty are exact
// promises and kPartial means "evaluate per element".
enum class TileVisibility : int { kEmpty = 0, kPartial = 1, kFull = 2 };

DISTATTN_HD TileVisibility classify_tile(const DiagonalBand& band, int64_t q_min, int64_t q_max, int64_t k_min,
                                         int64_t k_max) {
  const int64_t d_min = q_min - k_max;
  const int64_t d_max = q_max - k_min;
  if (d_max < band.lo || d_min > band.hi) return TileVisibility::kEmpty;
  if (d_min >= band.lo && d_max <= band.hi) return TileVisibility::kFull;
  return TileVisibility::kPartial;
}

}  // namespace distattn
