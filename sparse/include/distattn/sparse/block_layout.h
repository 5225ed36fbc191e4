// BlockLayout: an owned block-sparse layout (which kLayoutBlock x kLayoutBlock tiles an attention call
// visits), built once, reused by every call, uploaded to the GPU once.
//
// Blocks are in LOCAL rows: q block i covers local q rows [i*128, min((i+1)*128, Sq)), kv block j local
// kv rows [j*128, min((j+1)*128, Skv)); num_q_blocks = ceil(Sq / 128) (the last block may be short).
//
// Semantics (core/mask.h): a pair (q row, kv row) is visible iff its block is LISTED and (the block is
// FULL, or the call's element band -- causal / window of the call's Mask, on global positions -- makes
// the pair visible). So:
//   FULL    is a promise by the builder that every pair of the block is visible: the engines skip the
//           element mask there. The band builders (causal, sliding_window, from_mask) only mark a block
//           full when classify_tile proves it; the block-level builders (strided, global_tokens, random,
//           bigbird, from_block_mask) mark their blocks full because the block IS the unit of sparsity.
//   PARTIAL means "apply the call's band to this block". There is one band per call, so every partial
//           block of a layout refers to the same band; the layout records it (band()) and the call must
//           use the same one: use mask() / make_mask(view), which return the Mask to pass.
//           With no band (Mask::none()) a partial block is the same as a full one.
//           A partial block may hold no visible pair where position ranges over-approximate (a block
//           straddling a chunk seam, strided positions): classify_tile's kFull and kEmpty are exact, its
//           kPartial is "maybe"; such a block costs a visit, never a wrong result.
// A causal layout used in a call WITHOUT the causal band would show its partial blocks whole: always
// build the call's Mask with make_mask().
//
// Combining with causal: every block-level builder takes a CausalRestriction. When enabled, the result
// is the builder's blocks intersected with causal(Sq, Skv, q_pos, kv_pos): blocks wholly above the
// diagonal (on global positions) are dropped, blocks crossing it become partial, blocks wholly below stay
// full, and the layout's band is causal. With contiguous maps starting at 0 and Sq == Skv this is the
// block rule "kb <= qb, the diagonal block kb == qb partial".
//
// Storage: CSR by q block and its transpose by kv block (int32 indices, uint8 partial flags):
// 10 bytes per listed block plus 4 bytes per block row / column. No element mask is ever built.
// Builders sweep rows and compute each row's visible kv blocks from position ranges (intervals found by
// binary search), so a causal layout of 1M tokens (8192 x 8192 blocks, 33.6M listed) builds in a fraction
// of a second. nnz must stay below 2^31 (int32 offsets); more throws.
//
// Not thread-safe: device_view() / device_mask() upload lazily and cache; call them from one thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"

namespace distattn {

// Optional causal restriction of a block-level builder (see above). Positions are those of the call.
struct CausalRestriction {
  bool enabled = false;
  PositionMap q_pos;   // global position of every local q row (length Sq)
  PositionMap kv_pos;  // global position of every local kv row (length Skv)

  static CausalRestriction none() { return CausalRestriction{}; }
  static CausalRestriction on(const PositionMap& q_pos, const PositionMap& kv_pos) {
    CausalRestriction c;
    c.enabled = true;
    c.q_pos = q_pos;
    c.kv_pos = kv_pos;
    return c;
  }
};

class BlockLayout {
 public:
  // Block states, as used by from_block_mask().
  static constexpr uint8_t kAbsent = 0;
  static constexpr uint8_t kFull = 1;
  static constexpr uint8_t kPartial = 2;

  BlockLayout();   // 0 x 0, nothing listed
  ~BlockLayout();  // frees the device copy; never throws
  BlockLayout(BlockLayout&& other) noexcept;
  BlockLayout& operator=(BlockLayout&& other) noexcept;
  BlockLayout(const BlockLayout&) = delete;
  BlockLayout& operator=(const BlockLayout&) = delete;

  // ---------------------------------------------------------------------------------------------
  // Band builders: each tile is classified with classify_tile(band, q range, kv range), the ranges from
  // PositionMap::range() of the tile's local rows: kEmpty -> not listed, kFull -> full, kPartial ->
  // partial. Any position maps (contiguous, zigzag, strided, several chunks). Band recorded = the mask's.

  // Causal: pos_k <= pos_q.
  static BlockLayout causal(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos);
  // pos_q - pos_k < window, and pos_k <= pos_q when `causal` (else |pos_q - pos_k| < window). window >= 1.
  static BlockLayout sliding_window(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos,
                                    int64_t window, bool causal);
  // General form: the band of `mask` (causal, window); mask.blocks must be null. Mask::none() gives the
  // dense layout (every block full).
  static BlockLayout from_mask(int64_t sq, int64_t skv, const PositionMap& q_pos, const PositionMap& kv_pos,
                               const Mask& mask);

  // ---------------------------------------------------------------------------------------------
  // Block-level builders: their blocks are FULL (before the optional causal restriction).

  // Strided / dilated blocks (Sparse-Transformer style): kv block kb is listed for q block qb iff
  //   (qb - kb) mod stride_blocks == 0   (the same residue; mathematical mod, kb may exceed qb)
  //   or |qb - kb| <= local_blocks        (the local band around the block diagonal).
  // stride_blocks >= 1 (1: dense), local_blocks >= 0.
  static BlockLayout strided(int64_t sq, int64_t skv, int64_t stride_blocks, int64_t local_blocks,
                             const CausalRestriction& causal = CausalRestriction::none());
  // Global blocks: listed iff qb < num_global_blocks (those q blocks attend everything) or
  // kb < num_global_blocks (everyone attends those kv blocks). 1 <= num_global_blocks <= both block counts.
  static BlockLayout global_tokens(int64_t sq, int64_t skv, int64_t num_global_blocks,
                                   const CausalRestriction& causal = CausalRestriction::none());
  // Random blocks: per q block, blocks_per_row distinct kv blocks drawn uniformly without replacement
  // (std::mt19937_64 seeded with `seed`, rows in order, own bounded-integer draw so the result is the same
  // with every standard library). 1 <= blocks_per_row <= num_kv_blocks. With a causal restriction the
  // draws are made among the row's causally visible kv blocks only (min(blocks_per_row, available) of them),
  // so no draw is wasted on a block the diagonal would drop.
  static BlockLayout random(int64_t sq, int64_t skv, int64_t blocks_per_row, uint64_t seed,
                            const CausalRestriction& causal = CausalRestriction::none());
  // BigBird: the union of
  //   window: |qb - kb| <= window_blocks (window_blocks >= 0; 1 gives BigBird's 3 neighbouring blocks),
  //   global: qb < num_global_blocks or kb < num_global_blocks (num_global_blocks >= 0),
  //   random: per q block, random_blocks more kv blocks (>= 0) drawn without replacement among those not
  //           already listed by window/global (and causally visible, when restricted); fewer if fewer remain.
  static BlockLayout bigbird(int64_t sq, int64_t skv, int64_t window_blocks, int64_t num_global_blocks,
                             int64_t random_blocks, uint64_t seed,
                             const CausalRestriction& causal = CausalRestriction::none());

  // From a dense row-major block mask [num_q_blocks * num_kv_blocks]: kAbsent, kFull or kPartial.
  // `band` (causal / window; blocks null) is the band the partial entries refer to (recorded in band()).
  static BlockLayout from_block_mask(int64_t num_q_blocks, int64_t num_kv_blocks, const std::vector<uint8_t>& mask,
                                     const Mask& band = Mask::none());
  // From a list of (q block, kv block) pairs, any order, duplicates allowed; all listed blocks are full.
  static BlockLayout from_block_list(int64_t num_q_blocks, int64_t num_kv_blocks,
                                     const std::vector<std::pair<int64_t, int64_t>>& blocks);
  static BlockLayout from_block_mask(int64_t num_q_blocks, int64_t num_kv_blocks,
                                     const std::vector<std::pair<int64_t, int64_t>>& blocks) {
    return from_block_list(num_q_blocks, num_kv_blocks, blocks);
  }

  // ---------------------------------------------------------------------------------------------
  // Set operations on layouts of the same block counts. Per block, with absent < partial < full:
  //   unite:     max(state_a, state_b)   visible = visible_a OR visible_b
  //   intersect: min(state_a, state_b)   visible = visible_a AND visible_b
  // Both are exact when a and b refer to the same band (partial blocks of both mean "apply that band").
  // A layout with no partial block does not depend on its band. If both have partial blocks and their
  // bands differ, the result is not representable (one band per call) and Error is thrown.
  static BlockLayout unite(const BlockLayout& a, const BlockLayout& b);
  static BlockLayout intersect(const BlockLayout& a, const BlockLayout& b);

  // ---------------------------------------------------------------------------------------------
  // Views. host_view(): arrays in this object's host memory. device_view(): uploads once on first call
  // (cudaMalloc on the current device, copy on `stream`, then the stream is synchronised) and returns the
  // cached device arrays afterwards; must be called with the same current device as the first time.
  // Views stay valid while this layout lives and is not moved from or assigned to.
  BlockListView host_view() const;
  BlockListView device_view(cudaStream_t stream = 0);
  bool uploaded() const { return device_buffer_ != nullptr; }

  // The band partial blocks refer to (causal, window; blocks null).
  const Mask& band() const { return band_; }
  // The Mask a call passes: this layout's band plus `view` (which must outlive the call).
  Mask make_mask(const BlockListView& view) const {
    Mask m = band_;
    m.blocks = &view;
    return m;
  }
  // Same with the views cached inside this object (valid while it lives and is not moved).
  Mask host_mask() const { return make_mask(host_view_); }
  Mask device_mask(cudaStream_t stream = 0) {
    device_view(stream);
    return make_mask(device_view_);
  }

  // ---------------------------------------------------------------------------------------------
  // Queries.
  int64_t num_q_blocks() const { return num_q_blocks_; }
  int64_t num_kv_blocks() const { return num_kv_blocks_; }
  int64_t nnz() const { return static_cast<int64_t>(col_index_.size()); }
  int64_t num_partial() const { return num_partial_; }
  int64_t num_full() const { return nnz() - num_partial_; }
  double density() const;  // listed blocks / all blocks (0 for an empty grid)

  bool visible_block(int64_t qb, int64_t kb) const;  // listed (full or partial); throws on out-of-range
  bool partial(int64_t qb, int64_t kb) const;        // listed and partial
  bool full(int64_t qb, int64_t kb) const;           // listed and full

  // The CSR arrays themselves (see BlockListView for their meaning).
  const std::vector<int32_t>& row_offset() const { return row_offset_; }
  const std::vector<int32_t>& col_index() const { return col_index_; }
  const std::vector<uint8_t>& row_partial() const { return row_partial_; }
  const std::vector<int32_t>& col_offset() const { return col_offset_; }
  const std::vector<int32_t>& row_index() const { return row_index_; }
  const std::vector<uint8_t>& col_partial() const { return col_partial_; }

  // Host memory held by the arrays, in bytes.
  int64_t host_bytes() const;
  // "BlockLayout 8192 x 8192 blocks, nnz 33558528 (8192 partial), density 0.5001, band causal".
  std::string describe() const;

  // Internal: assembles a layout from its row CSR (ascending kv blocks per row); computes the transpose.
  // Used by the builders; checks the invariants it relies on.
  static BlockLayout from_rows(int64_t num_q_blocks, int64_t num_kv_blocks, std::vector<int32_t> row_offset,
                               std::vector<int32_t> col_index, std::vector<uint8_t> row_partial, const Mask& band);

 private:
  // Moves both directions in as they are (no checks): for builders that produce both consistently.
  static BlockLayout assemble(int64_t num_q_blocks, int64_t num_kv_blocks, std::vector<int32_t> row_offset,
                              std::vector<int32_t> col_index, std::vector<uint8_t> row_partial,
                              std::vector<int32_t> col_offset, std::vector<int32_t> row_index,
                              std::vector<uint8_t> col_partial, const Mask& band);
  void refresh_host_view();
  void release_device() noexcept;

  int64_t num_q_blocks_ = 0;
  int64_t num_kv_blocks_ = 0;
  int64_t num_partial_ = 0;
  Mask band_;
  std::vector<int32_t> row_offset_{0};
  std::vector<int32_t> col_index_;
  std::vector<uint8_t> row_partial_;
  std::vector<int32_t> col_offset_{0};
  std::vector<int32_t> row_index_;
  std::vector<uint8_t> col_partial_;

  BlockListView host_view_;
  BlockListView device_view_;
  void* device_buffer_ = nullptr;  // one cudaMalloc holding the six device arrays
  int device_ordinal_ = -1;        // the device it lives on
};

}  // namespace distattn
