// views_may_overlap (core/tensor.h): the in-place check of flash_attention_forward_rope. Views are built on a fake
// base address (nothing is read): disjoint buffers, the head slices of a packed qkv buffer (disjoint: false), and the
// cases that must stay true: the same view, overlapping head ranges, a view against a strided view of the same bytes
// with other strides, a head stride shorter than the head dim, heads spilling into the next row.
#include <gtest/gtest.h>

#include <cstdint>

#include "distattn/core/tensor.h"

namespace distattn {
namespace {

// A [B, S, H, D] view of dtype bf16 at byte address `base` with element strides (sb, ss, sh, 1).
TensorView view_at(uintptr_t base, int64_t B, int64_t S, int64_t H, int64_t D, int64_t sb, int64_t ss, int64_t sh) {
  TensorView t;
  t.data = reinterpret_cast<void*>(base);
  t.dtype = DType::kBFloat16;
  t.shape = {B, S, H, D};
  t.stride = {sb, ss, sh, 1};
  return t;
}

constexpr uintptr_t kBase = uintptr_t{1} << 32;  // never dereferenced

TEST(ViewsMayOverlap, DisjointBuffersDoNot) {
  const TensorView a = view_at(kBase, 2, 100, 4, 128, 100 * 512, 512, 128);
  const TensorView b = view_at(kBase + 2 * 100 * 512 * 2, 2, 100, 4, 128, 100 * 512, 512, 128);  // right after a
  EXPECT_FALSE(views_may_overlap(a, b));
  EXPECT_FALSE(views_may_overlap(b, a));
  const TensorView c = view_at(kBase + 2 * 100 * 512 * 2 - 2, 2, 100, 4, 128, 100 * 512, 512, 128);  // one element in
  EXPECT_TRUE(views_may_overlap(a, c));
}

TEST(ViewsMayOverlap, PackedQkvHeadSlicesDoNot) {
  // qkv [B 3, S 513, 6 + 3 + 3 heads, 128]: q heads [0, 6), k [6, 9), v [9, 12).
  const int64_t N = 12 * 128;
  const TensorView qkv = view_at(kBase, 3, 513, 12, 128, 513 * N, N, 128);
  const TensorView q = qkv.head_range(0, 6), k = qkv.head_range(6, 9), v = qkv.head_range(9, 12);
  EXPECT_FALSE(views_may_overlap(q, k));
  EXPECT_FALSE(views_may_overlap(k, q));
  EXPECT_FALSE(views_may_overlap(q, v));
  EXPECT_FALSE(views_may_overlap(k, v));
  EXPECT_TRUE(views_may_overlap(q, q));
  EXPECT_TRUE(views_may_overlap(qkv.head_range(0, 7), k));   // head 6 in both
  EXPECT_TRUE(views_may_overlap(k, qkv.head_range(8, 12)));  // head 8 in both
}

TEST(ViewsMayOverlap, ConservativeWhereAddressesCanMeet) {
  const int64_t N = 8 * 128;
  const TensorView a = view_at(kBase, 1, 64, 4, 128, 64 * N, N, 128);
  // The same bytes seen with other strides: taken as overlapping.
  EXPECT_TRUE(views_may_overlap(a, view_at(kBase + 4 * 128 * 2, 1, 64, 4, 128, 64 * N, N, 64)));
  // Head stride shorter than the head dim: heads share elements.
  const TensorView tight = view_at(kBase, 1, 64, 8, 128, 64 * N, N, 64);
  EXPECT_TRUE(views_may_overlap(tight.head_range(0, 2), tight.head_range(2, 4)));
  // Heads that spill past the row stride into the next row: a's heads [0, 4) and b's [4, 8) with a row of 6 heads.
  const TensorView narrow = view_at(kBase, 1, 64, 8, 128, 64 * 6 * 128, 6 * 128, 128);
  EXPECT_TRUE(views_may_overlap(narrow.head_range(0, 4), narrow.head_range(4, 8)));
  // Not a whole number of heads apart.
  EXPECT_TRUE(views_may_overlap(a, view_at(kBase + 2 * 2, 1, 64, 4, 128, 64 * N, N, 128)));
  // Different dtypes on the same bytes.
  TensorView f = a;
  f.dtype = DType::kFloat32;
  EXPECT_TRUE(views_may_overlap(a, f));
}

TEST(ViewsMayOverlap, EmptyViewsShareNothing) {
  const TensorView a = view_at(kBase, 1, 64, 4, 128, 64 * 512, 512, 128);
  TensorView e = a;
  e.shape[1] = 0;
  EXPECT_FALSE(views_may_overlap(a, e));
  TensorView n = a;
  n.data = nullptr;
  EXPECT_FALSE(views_may_overlap(n, a));
}

}  // namespace
}  // namespace distattn
