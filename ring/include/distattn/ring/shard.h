// Shard layouts: which global rows of a sequence of S tokens each of P ranks holds.
//
//   contiguous  rank r holds rows [r*S/P, (r+1)*S/P)                          S % P == 0
//   zigzag      2P chunks of C = S/(2P) rows; rank r holds chunks r and 2P-1-r S % 2P == 0
//               (causal work balanced: an early chunk paired with a late one)
//   striped     rank r holds rows r, r+P, r+2P, ...                           S % P == 0
//
// A rank's local rows are numbered in PositionMap order (position_map.h): the chunks in the order
// above. Every mask and bias is computed from these global positions, so the sharded result equals
// the single-device one.
#pragma once

#include <cstdint>

#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"

namespace distattn {
namespace ring {

enum class ShardLayout : int { kContiguous = 0, kZigzag = 1, kStriped = 2 };

const char* layout_name(ShardLayout layout);  // "contiguous" / "zigzag" / "striped"

// Throws distattn::Error naming "seq_len" (with the layout and the divisor it needs) unless S splits
// evenly over P ranks under `layout`; names "world_size" unless P >= 1, "layout" for an unknown layout.
void validate_layout(ShardLayout layout, int64_t seq_len, int world_size);

// Rows per rank: S / P (after validate_layout).
int64_t local_rows(ShardLayout layout, int64_t seq_len, int world_size);

// Global positions of rank r's local rows (validates the layout first).
PositionMap shard_positions(ShardLayout layout, int64_t seq_len, int world_size, int rank);

// Host copies between a full tensor [B, S, H, D] and rank r's local shard [B, S/P, H, D] (any strides,
// same dtype and B, H, D; validated, naming the argument). shard: full -> local; unshard: local -> full
// (writes only rank r's rows of `full`).
void shard_host(const TensorView& full, const TensorView& local, ShardLayout layout, int world_size, int rank);
void unshard_host(const TensorView& local, const TensorView& full, ShardLayout layout, int world_size, int rank);

// Same for LSE-shaped fp32 arrays [B, H, S] (packed) and the local [B, H, S/P] (packed).
void shard_lse_host(const float* full, float* local, int64_t batch, int64_t heads, ShardLayout layout, int64_t seq_len,
                    int world_size, int rank);
void unshard_lse_host(const float* local, float* full, int64_t batch, int64_t heads, ShardLayout layout,
                      int64_t seq_len, int world_size, int rank);

}  // namespace ring
}  // namespace distattn
