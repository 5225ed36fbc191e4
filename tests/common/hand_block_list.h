// A block list written by hand for the GPU tests (fixed patterns the layout builders would not produce): per q block
// the listed kv blocks and whether each is partial, as the CSR of both directions on the host (host_view, for the host
// engine) and copied to the device (device_view, for the CUDA engine). Kernel-facing format: sparse/block_layout.h.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "distattn/core/mask.h"
#include "test_util.h"

namespace distattn {
namespace testing {

class HandBlockList {
 public:
  // rows[i]: the kv blocks of q block i (ascending) with their partial flag; kv blocks are < num_kv_blocks.
  HandBlockList(std::vector<std::vector<std::pair<int32_t, bool>>> rows, int64_t num_kv_blocks);
  // From a dense [num_q_blocks][num_kv_blocks] matrix of block states: 0 absent, 1 partial, 2 full.
  static HandBlockList from_states(const std::vector<std::vector<int>>& states);
  HandBlockList(const HandBlockList&) = delete;
  HandBlockList& operator=(const HandBlockList&) = delete;
  HandBlockList(HandBlockList&&) = default;

  BlockListView host_view;    // points into the vectors below
  BlockListView device_view;  // points into the device copies

 private:
  std::vector<int32_t> row_offset_, col_index_, col_offset_, row_index_;
  std::vector<uint8_t> row_partial_, col_partial_;
  // Device copies (an empty array still allocates one element).
  std::unique_ptr<DeviceArray<int32_t>> d_row_offset_, d_col_index_, d_col_offset_, d_row_index_;
  std::unique_ptr<DeviceArray<uint8_t>> d_row_partial_, d_col_partial_;
};

}  // namespace testing
}  // namespace distattn
