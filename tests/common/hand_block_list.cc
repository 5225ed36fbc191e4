// HandBlockList (hand_block_list.h).
#include "hand_block_list.h"

namespace distattn {
namespace testing {

HandBlockList::HandBlockList(std::vector<std::vector<std::pair<int32_t, bool>>> rows, int64_t num_kv_blocks) {
  // Row CSR (q block -> kv blocks), then the column CSR (kv block -> q blocks, ascending) by a scan per kv block.
  row_offset_.assign(1, 0);
  for (const auto& r : rows) {
    for (const auto& e : r) {
      col_index_.push_back(e.first);
      row_partial_.push_back(e.second ? 1 : 0);
    }
    row_offset_.push_back(static_cast<int32_t>(col_index_.size()));
  }
  col_offset_.assign(1, 0);
  for (int32_t j = 0; j < num_kv_blocks; ++j) {
    for (size_t i = 0; i < rows.size(); ++i)
      for (const auto& e : rows[i])
        if (e.first == j) {
          row_index_.push_back(static_cast<int32_t>(i));
          col_partial_.push_back(e.second ? 1 : 0);
        }
    col_offset_.push_back(static_cast<int32_t>(row_index_.size()));
  }
  host_view.device = Device::kHost;
  host_view.num_q_blocks = static_cast<int64_t>(rows.size());
  host_view.num_kv_blocks = num_kv_blocks;
  host_view.nnz = static_cast<int64_t>(col_index_.size());
  host_view.row_offset = row_offset_.data();
  host_view.col_index = col_index_.data();
  host_view.row_partial = row_partial_.data();
  host_view.col_offset = col_offset_.data();
  host_view.row_index = row_index_.data();
  host_view.col_partial = col_partial_.data();
  d_row_offset_ = std::make_unique<DeviceArray<int32_t>>(row_offset_);
  d_col_index_ = std::make_unique<DeviceArray<int32_t>>(col_index_);
  d_col_offset_ = std::make_unique<DeviceArray<int32_t>>(col_offset_);
  d_row_index_ = std::make_unique<DeviceArray<int32_t>>(row_index_);
  d_row_partial_ = std::make_unique<DeviceArray<uint8_t>>(row_partial_);
  d_col_partial_ = std::make_unique<DeviceArray<uint8_t>>(col_partial_);
  device_view = host_view;
  device_view.device = Device::kCuda;
  device_view.row_offset = d_row_offset_->ptr;
  device_view.col_index = d_col_index_->ptr;
  device_view.row_partial = d_row_partial_->ptr;
  device_view.col_offset = d_col_offset_->ptr;
  device_view.row_index = d_row_index_->ptr;
  device_view.col_partial = d_col_partial_->ptr;
}

HandBlockList HandBlockList::from_states(const std::vector<std::vector<int>>& states) {
  std::vector<std::vector<std::pair<int32_t, bool>>> rows(states.size());
  for (size_t i = 0; i < states.size(); ++i)
    for (size_t j = 0; j < states[i].size(); ++j)
      if (states[i][j] != 0) rows[i].push_back({static_cast<int32_t>(j), states[i][j] == 1});
  return HandBlockList(std::move(rows), states.empty() ? 0 : static_cast<int64_t>(states[0].size()));
}

}  // namespace testing
}  // namespace distattn
