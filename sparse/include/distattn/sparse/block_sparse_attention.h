// BlockSparseAttention: single-device block-sparse attention over a BlockLayout, forward and backward,
// on the host engine (plain loops, the reference) or the CUDA flash engine.
//
// Built ONCE from a layout (block_layout.h: which 128 x 128 tiles are visited, each full or partial) and a
// configuration; every call reuses it. On CUDA the layout's CSR arrays and the ALiBi slopes are uploaded by
// the constructor and never again: a call only fills an AttnParams and launches.
//
// Semantics (core/mask.h): pair (q row i, kv row j) is visible iff its tile (i / 128, j / 128) is listed and
// (the tile is full, or the layout's band -- causal / window on global positions -- shows the pair).
//   O = softmax(scale * Q K^T + alibi, over visible pairs) V,   LSE = log sum exp(...) (natural log).
// A row with no visible key gets O = 0 and LSE = -inf (or is an error with error_if_query_without_key).
//
// Tensors (int64 element strides, head dim contiguous; attn_params.h):
//   q, o, dout, dq [B, Sq, Hq, D]     k, v, dk, dv [B, Skv, Hkv, D]     lse [B, Hq, Sq] fp32 packed
//   Sq and Skv may be any lengths whose block counts match the layout: ceil(Sq / 128) == num_q_blocks,
//   ceil(Skv / 128) == num_kv_blocks (the last block may be short).
// Host engine: tensors and lse in host memory (Device::kHost), bf16 / fp16 / fp32 / fp64.
// CUDA engine: device memory of the device current at construction, bf16 / fp16, head dims 64 and 128
//   (flash_supports_head_dim); work is enqueued on `stream`, calls do not synchronise.
//
// Every call validates everything first (layout block counts against Sq / Skv, head counts and head dim
// against the configuration, dtypes, shapes, strides, device pointers) and throws distattn::Error naming the
// argument ("layout", "q", "k", "v", "o", "lse", "dout", "dq", "dk", "dv", "config.*"); on bad input
// nothing is launched and nothing is written.
//
// Not thread-safe: one call at a time per object.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "distattn/core/host_engine.h"  // HostPrecision
#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"
#include "distattn/sparse/block_layout.h"

namespace distattn {

struct BlockSparseConfig {
  int64_t q_heads = 0;        // Hq >= 1
  int64_t kv_heads = 0;       // Hkv (0: Hq); Hq % Hkv == 0 (GQA / MQA)
  int64_t head_dim = 0;       // D >= 1 (CUDA: 64 or 128)
  float softmax_scale = 0.f;  // 0: 1 / sqrt(D)
  // ALiBi: HOST values [Hq] (copied at construction), or empty for none. Bias -slope_h * (pos_q - pos_k) when
  // the layout's band is causal, -slope_h * |pos_q - pos_k| otherwise (attn_params.h).
  std::vector<float> alibi_slopes;
  // Global positions of the q rows and kv rows (position_map.h). num_chunks == 0: contiguous 0 .. S-1 of the
  // call's length. The named factories build their layout on these positions; a layout passed in by the
  // caller must have been built on the same ones (its partial blocks are evaluated on them).
  PositionMap q_pos;
  PositionMap kv_pos;
  // true: a call whose layout leaves some q row with no visible key throws (argument "layout");
  // false: such rows get O = 0 and LSE = -inf (dq of that row = 0).
  bool error_if_query_without_key = false;
  // Host engine only: kFloat64 (the reference), kFloat32, or kRoundIntermediates (the naive same-precision
  // baseline of the GPU tests' 2x rule).
  HostPrecision host_precision = HostPrecision::kFloat64;

  int64_t resolved_kv_heads() const { return kv_heads > 0 ? kv_heads : q_heads; }
};

// Checks a configuration on its own (heads, head dim for `device`, slopes count and finiteness, scale,
// position maps). Throws distattn::Error naming "config.q_heads", "config.kv_heads", "config.head_dim",
// "config.alibi_slopes", "config.softmax_scale", "config.q_pos" or "config.kv_pos".
void validate_block_sparse_config(const BlockSparseConfig& config, Device device);

// Block-diagonal layout: q row i sees kv row j iff i / segment == j / segment (local rows: independent
// segments of `segment` tokens, e.g. packed documents). segment must be a positive multiple of kLayoutBlock
// (the block is the unit of sparsity); every listed block is full before the optional causal restriction.
// Throws distattn::Error naming "segment", "sq", "skv" or the restriction's maps.
BlockLayout block_diagonal_layout(int64_t sq, int64_t skv, int64_t segment,
                                  const CausalRestriction& causal = CausalRestriction::none());

// Exact number of visible (q row, kv row) pairs of `layout` read with its band on these positions, for ONE
// (batch, head): full blocks count rows x columns, partial blocks are counted per q row by arithmetic on the
// kv chunks (no S x S mask; cost O(partial blocks * 128 * chunks)). Throws naming "layout" when the block
// counts do not match ceil(sq / 128) x ceil(skv / 128), "q_pos" / "kv_pos" when the maps do not have sq / skv
// rows.
int64_t count_visible_pairs(const BlockLayout& layout, int64_t sq, int64_t skv, const PositionMap& q_pos,
                            const PositionMap& kv_pos);
// Number of q rows with no visible key (same arguments and errors).
int64_t count_rows_without_keys(const BlockLayout& layout, int64_t sq, int64_t skv, const PositionMap& q_pos,
                                const PositionMap& kv_pos);
// Pairs the engine computes: every listed block whole, rows x columns (last blocks short). Same errors.
int64_t count_computed_pairs(const BlockLayout& layout, int64_t sq, int64_t skv, const PositionMap& q_pos,
                             const PositionMap& kv_pos);

class BlockSparseAttention {
 public:
  // Takes the layout by move. Validates the configuration (validate_block_sparse_config); on kCuda uploads the
  // layout (BlockLayout::device_view on `stream`, which is synchronised) and the slopes to the current device.
  // Throws distattn::Error naming the argument ("layout": config positions whose lengths do not match the
  // layout's block counts; "device": a CUDA object with no CUDA device).
  BlockSparseAttention(BlockLayout layout, BlockSparseConfig config, Device device, cudaStream_t stream = nullptr);
  ~BlockSparseAttention();  // frees the slopes' device copy (the layout frees its own); never throws
  BlockSparseAttention(BlockSparseAttention&& other) noexcept;
  BlockSparseAttention& operator=(BlockSparseAttention&& other) noexcept;
  BlockSparseAttention(const BlockSparseAttention&) = delete;
  BlockSparseAttention& operator=(const BlockSparseAttention&) = delete;

  // ---------------------------------------------------------------------------------------------
  // Named factories. Each builds the layout from its definition on the configuration's positions (default:
  // contiguous 0 .. sq-1 and 0 .. skv-1), then constructs as above. `causal` restricts the pattern to keys
  // not after the query (pos_k <= pos_q, global positions). Errors: those of the BlockLayout builder
  // (naming its argument: "window", "segment", "stride_blocks", ...) and of the constructor.

  // Local (sliding) window: pos_q - pos_k < window, and pos_k <= pos_q when causal (else |pos_q - pos_k| <
  // window). Exact per element (band layout: partial blocks carry the window).
  static BlockSparseAttention local_window(int64_t sq, int64_t skv, int64_t window, bool causal,
                                           BlockSparseConfig config, Device device, cudaStream_t stream = nullptr);
  // Independent segments of `segment` rows (block_diagonal_layout).
  static BlockSparseAttention block_diagonal(int64_t sq, int64_t skv, int64_t segment, bool causal,
                                             BlockSparseConfig config, Device device, cudaStream_t stream = nullptr);
  // Dilated / strided blocks (BlockLayout::strided): (qb - kb) mod stride_blocks == 0 or |qb - kb| <=
  // local_blocks.
  static BlockSparseAttention strided(int64_t sq, int64_t skv, int64_t stride_blocks, int64_t local_blocks, bool causal,
                                      BlockSparseConfig config, Device device, cudaStream_t stream = nullptr);
  // Global tokens (BlockLayout::global_tokens): the first num_global_blocks q blocks see everything, every q
  // block sees the first num_global_blocks kv blocks.
  static BlockSparseAttention global_tokens(int64_t sq, int64_t skv, int64_t num_global_blocks, bool causal,
                                            BlockSparseConfig config, Device device, cudaStream_t stream = nullptr);
  // Seeded random blocks (BlockLayout::random): blocks_per_row kv blocks per q block.
  static BlockSparseAttention random(int64_t sq, int64_t skv, int64_t blocks_per_row, uint64_t seed, bool causal,
                                     BlockSparseConfig config, Device device, cudaStream_t stream = nullptr);
  // BigBird (BlockLayout::bigbird): window + global + random blocks.
  static BlockSparseAttention bigbird(int64_t sq, int64_t skv, int64_t window_blocks, int64_t num_global_blocks,
                                      int64_t random_blocks, uint64_t seed, bool causal, BlockSparseConfig config,
                                      Device device, cudaStream_t stream = nullptr);
  // A user block mask [num_q_blocks * num_kv_blocks] row-major of BlockLayout::kAbsent / kFull / kPartial;
  // partial entries apply `band` (causal / window, blocks null).
  static BlockSparseAttention from_block_mask(int64_t num_q_blocks, int64_t num_kv_blocks,
                                              const std::vector<uint8_t>& mask, const Mask& band,
                                              BlockSparseConfig config, Device device, cudaStream_t stream = nullptr);

  // ---------------------------------------------------------------------------------------------
  // Calls.

  // o [B, Sq, Hq, D] (q's dtype or fp32) is written; lse [B, Hq, Sq] fp32 packed is written unless null.
  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
               cudaStream_t stream = nullptr);

  // o and lse: this object's forward outputs for the same q, k, v (lse required). dq [B, Sq, Hq, D], dk and
  // dv [B, Skv, Hkv, D] (q's dtype or fp32) are overwritten.
  void backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, const float* lse,
                const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                cudaStream_t stream = nullptr);

  // ---------------------------------------------------------------------------------------------
  // Queries.

  // Visible (q, kv) pairs per (batch, head) of a call with these lengths (count_visible_pairs on the call's
  // positions). Useful FLOPs of a forward: 4 * B * Hq * D * visible_pairs (backward x2.5, both x3.5).
  int64_t visible_pairs(int64_t sq, int64_t skv) const;
  // q rows (per batch, head) with no visible key.
  int64_t rows_without_keys(int64_t sq, int64_t skv) const;
  // Pairs the engine computes: every listed block whole (rows x columns, last blocks short).
  int64_t computed_pairs(int64_t sq, int64_t skv) const;

  const BlockLayout& layout() const { return layout_; }
  const BlockSparseConfig& config() const { return config_; }
  Device device() const { return device_; }

 private:
  PositionMap q_positions(int64_t sq) const;
  PositionMap kv_positions(int64_t skv) const;
  void check_call_geometry(int64_t sq, int64_t skv) const;  // layout block counts, config maps
  void check_rows_have_keys(int64_t sq, int64_t skv);       // error_if_query_without_key, cached per size
  void release() noexcept;

  BlockLayout layout_;
  BlockSparseConfig config_;
  Device device_ = Device::kHost;
  float* slopes_device_ = nullptr;  // [Hq] on the CUDA device, or null
  int device_ordinal_ = -1;         // CUDA device of the uploads
  int64_t keys_checked_sq_ = -1;    // sizes already found to have a key in every row
  int64_t keys_checked_skv_ = -1;
};

}  // namespace distattn
