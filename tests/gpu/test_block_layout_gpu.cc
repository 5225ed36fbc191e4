// BlockLayout::device_view: the uploaded arrays equal the host arrays; the upload happens once.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/sparse/block_layout.h"
#include "test_util.h"

namespace distattn {
namespace {

template <typename T>
std::vector<T> download(const T* device, int64_t n) {
  std::vector<T> host(n);
  if (n > 0) DISTATTN_CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

void expect_device_equals_host(const BlockLayout& l, const BlockListView& d) {
  ASSERT_EQ(d.device, Device::kCuda);
  ASSERT_EQ(d.num_q_blocks, l.num_q_blocks());
  ASSERT_EQ(d.num_kv_blocks, l.num_kv_blocks());
  ASSERT_EQ(d.nnz, l.nnz());
  EXPECT_EQ(download(d.row_offset, d.num_q_blocks + 1), l.row_offset());
  EXPECT_EQ(download(d.col_index, d.nnz), l.col_index());
  EXPECT_EQ(download(d.row_partial, d.nnz), l.row_partial());
  EXPECT_EQ(download(d.col_offset, d.num_kv_blocks + 1), l.col_offset());
  EXPECT_EQ(download(d.row_index, d.nnz), l.row_index());
  EXPECT_EQ(download(d.col_partial, d.nnz), l.col_partial());
}

TEST(BlockLayoutGpu, DeviceViewEqualsHostArrays) {
  DISTATTN_REQUIRE_GPU();
  // Zigzag shard (rank 1 of 2, chunk 700 rows: seams inside blocks) against the whole odd-length kv.
  PositionMap q;
  q.add_chunk(700, 1, 700).add_chunk(2100, 1, 700);
  const PositionMap kv = PositionMap::contiguous(0, 2800);
  BlockLayout l = BlockLayout::unite(BlockLayout::causal(1400, 2800, q, kv),
                                     BlockLayout::random(1400, 2800, 3, testing::test_seed()));
  EXPECT_FALSE(l.uploaded());
  const BlockListView d = l.device_view();
  EXPECT_TRUE(l.uploaded());
  expect_device_equals_host(l, d);
  // Cached: the same arrays, no second upload.
  const BlockListView again = l.device_view();
  EXPECT_EQ(again.row_offset, d.row_offset);
  EXPECT_EQ(again.col_partial, d.col_partial);
  const Mask m = l.device_mask();
  ASSERT_NE(m.blocks, nullptr);
  EXPECT_TRUE(m.causal);
  EXPECT_EQ(m.blocks->col_index, d.col_index);
  // A move hands the device arrays over.
  BlockLayout moved(std::move(l));
  EXPECT_TRUE(moved.uploaded());
  EXPECT_EQ(moved.device_view().col_index, d.col_index);
  expect_device_equals_host(moved, moved.device_view());
}

TEST(BlockLayoutGpu, UploadOnAStreamAndEmptyLayout) {
  DISTATTN_REQUIRE_GPU();
  cudaStream_t stream;
  DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    BlockLayout l = BlockLayout::strided(3000, 2000, 3, 1);
    expect_device_equals_host(l, l.device_view(stream));
    BlockLayout empty = BlockLayout::from_block_list(3, 4, {});
    const BlockListView d = empty.device_view(stream);
    EXPECT_EQ(d.nnz, 0);
    expect_device_equals_host(empty, d);
  }  // destructors free the device arrays
  DISTATTN_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace distattn
