// BlockLayout itself: assembly from a row CSR (with the transpose), views, the lazy device upload,
// queries, and the set operations. The builders live in block_layout_band.cc and
// block_layout_builders.cc.
#include "distattn/sparse/block_layout.h"

#include <algorithm>
#include <climits>
#include <sstream>

#include "block_layout_internal.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"

namespace distattn {

// ------------------------------------------------------------------------------------------------
// Lifetime

BlockLayout::BlockLayout() { refresh_host_view(); }

BlockLayout::~BlockLayout() { release_device(); }

BlockLayout::BlockLayout(BlockLayout&& other) noexcept { *this = std::move(other); }

BlockLayout& BlockLayout::operator=(BlockLayout&& other) noexcept {
  if (this == &other) return *this;
  release_device();
  num_q_blocks_ = other.num_q_blocks_;
  num_kv_blocks_ = other.num_kv_blocks_;
  num_partial_ = other.num_partial_;
  band_ = other.band_;
  row_offset_ = std::move(other.row_offset_);
  col_index_ = std::move(other.col_index_);
  row_partial_ = std::move(other.row_partial_);
  col_offset_ = std::move(other.col_offset_);
  row_index_ = std::move(other.row_index_);
  col_partial_ = std::move(other.col_partial_);
  device_view_ = other.device_view_;
  device_buffer_ = other.device_buffer_;
  device_ordinal_ = other.device_ordinal_;
  // Leave `other` an empty 0 x 0 layout that owns nothing (destructible and assignable).
  other.num_q_blocks_ = other.num_kv_blocks_ = other.num_partial_ = 0;
  other.band_ = Mask{};
  other.row_offset_.clear();  // (clear, not assign: nothing here may allocate or throw)
  other.col_offset_.clear();
  other.col_index_.clear();
  other.row_partial_.clear();
  other.row_index_.clear();
  other.col_partial_.clear();
  other.device_view_ = BlockListView{};
  other.device_buffer_ = nullptr;
  other.device_ordinal_ = -1;
  other.refresh_host_view();
  refresh_host_view();
  return *this;
}

void BlockLayout::release_device() noexcept {
  if (device_buffer_ == nullptr) return;
  // Free on the device that owns the buffer, then restore the caller's current device. Errors are
  // ignored: a destructor must not throw, and at process teardown the runtime may already be gone.
  int current = -1;
  const bool have_current = cudaGetDevice(&current) == cudaSuccess;
  if (have_current && current != device_ordinal_) (void)cudaSetDevice(device_ordinal_);
  (void)cudaFree(device_buffer_);
  if (have_current && current != device_ordinal_) (void)cudaSetDevice(current);
  device_buffer_ = nullptr;
  device_ordinal_ = -1;
  device_view_ = BlockListView{};
}

// ------------------------------------------------------------------------------------------------
// Assembly

BlockLayout BlockLayout::from_rows(int64_t num_q_blocks, int64_t num_kv_blocks, std::vector<int32_t> row_offset,
                                   std::vector<int32_t> col_index, std::vector<uint8_t> row_partial, const Mask& band) {
  layout_detail::check_block_count(num_q_blocks, "num_q_blocks");
  layout_detail::check_block_count(num_kv_blocks, "num_kv_blocks");
  DISTATTN_CHECK_ARG(band.blocks == nullptr && band.window >= 0, "band",
                     "a layout's band is causal / window only (blocks null, window >= 0)");
  DISTATTN_CHECK_ARG(static_cast<int64_t>(row_offset.size()) == num_q_blocks + 1, "row_offset", "has ",
                     row_offset.size(), " entries, expected num_q_blocks + 1 = ", num_q_blocks + 1);
  DISTATTN_CHECK_ARG(col_index.size() <= static_cast<size_t>(INT32_MAX), "col_index", "more than ", INT32_MAX,
                     " listed blocks");
  DISTATTN_CHECK_ARG(row_partial.size() == col_index.size(), "row_partial", "has ", row_partial.size(),
                     " entries, col_index ", col_index.size());
  DISTATTN_CHECK_ARG(row_offset[0] == 0 && row_offset.back() == static_cast<int64_t>(col_index.size()), "row_offset",
                     "must start at 0 and end at nnz = ", col_index.size());
  for (int64_t r = 0; r < num_q_blocks; ++r) {
    DISTATTN_CHECK_ARG(row_offset[r] <= row_offset[r + 1], "row_offset", "decreases at q block ", r);
    for (int32_t i = row_offset[r]; i < row_offset[r + 1]; ++i) {
      DISTATTN_CHECK_ARG(col_index[i] >= 0 && col_index[i] < num_kv_blocks, "col_index", "kv block ", col_index[i],
                         " of q block ", r, " out of range [0, ", num_kv_blocks, ")");
      DISTATTN_CHECK_ARG(i == row_offset[r] || col_index[i - 1] < col_index[i], "col_index", "kv blocks of q block ", r,
                         " must be strictly ascending");
      DISTATTN_CHECK_ARG(row_partial[i] <= 1, "row_partial", "flags are 0 (full) or 1 (partial), got ",
                         int(row_partial[i]));
    }
  }

  // Transpose by counting sort: count per kv block, prefix sum, then scatter rows in ascending order
  // so every column's q blocks come out ascending.
  const size_t nnz = col_index.size();
  std::vector<int32_t> col_offset(num_kv_blocks + 1, 0);
  for (int32_t c : col_index) ++col_offset[c + 1];
  for (int64_t c = 0; c < num_kv_blocks; ++c) col_offset[c + 1] += col_offset[c];
  std::vector<int32_t> row_index(nnz);
  std::vector<uint8_t> col_partial(nnz);
  std::vector<int32_t> cursor(col_offset.begin(), col_offset.end() - 1);
  for (int64_t r = 0; r < num_q_blocks; ++r) {
    for (int32_t i = row_offset[r]; i < row_offset[r + 1]; ++i) {
      const int32_t at = cursor[col_index[i]]++;
      row_index[at] = static_cast<int32_t>(r);
      col_partial[at] = row_partial[i];
    }
  }
  return assemble(num_q_blocks, num_kv_blocks, std::move(row_offset), std::move(col_index), std::move(row_partial),
                  std::move(col_offset), std::move(row_index), std::move(col_partial), band);
}

BlockLayout BlockLayout::assemble(int64_t num_q_blocks, int64_t num_kv_blocks, std::vector<int32_t> row_offset,
                                  std::vector<int32_t> col_index, std::vector<uint8_t> row_partial,
                                  std::vector<int32_t> col_offset, std::vector<int32_t> row_index,
                                  std::vector<uint8_t> col_partial, const Mask& band) {
  BlockLayout out;
  out.num_q_blocks_ = num_q_blocks;
  out.num_kv_blocks_ = num_kv_blocks;
  out.num_partial_ = 0;
  for (uint8_t p : row_partial) out.num_partial_ += p;
  out.band_ = band;
  out.band_.blocks = nullptr;
  out.row_offset_ = std::move(row_offset);
  out.col_index_ = std::move(col_index);
  out.row_partial_ = std::move(row_partial);
  out.col_offset_ = std::move(col_offset);
  out.row_index_ = std::move(row_index);
  out.col_partial_ = std::move(col_partial);
  out.refresh_host_view();
  return out;
}

void BlockLayout::refresh_host_view() {
  BlockListView v;
  v.device = Device::kHost;
  v.num_q_blocks = num_q_blocks_;
  v.num_kv_blocks = num_kv_blocks_;
  v.nnz = nnz();
  v.row_offset = row_offset_.data();
  v.col_index = col_index_.data();
  v.row_partial = row_partial_.data();
  v.col_offset = col_offset_.data();
  v.row_index = row_index_.data();
  v.col_partial = col_partial_.data();
  host_view_ = v;
}

// ------------------------------------------------------------------------------------------------
// Views

BlockListView BlockLayout::host_view() const { return host_view_; }

BlockListView BlockLayout::device_view(cudaStream_t stream) {
  int current = -1;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&current));
  if (device_buffer_ != nullptr) {
    DISTATTN_CHECK(current == device_ordinal_, "BlockLayout was uploaded to device ", device_ordinal_,
                   " but device_view() is called with device ", current,
                   " current: build one layout per device (or call it on the same device)");
    return device_view_;
  }
  // One allocation; each array starts on a 256-byte boundary (coalesced loads, and the uint8 arrays
  // never share a segment with the int32 ones).
  auto aligned = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  const size_t nnz = col_index_.size();
  const size_t b_row_offset = aligned(row_offset_.size() * sizeof(int32_t));
  const size_t b_col_offset = aligned(col_offset_.size() * sizeof(int32_t));
  const size_t b_index = aligned(nnz * sizeof(int32_t));
  const size_t b_flags = aligned(nnz);
  const size_t total = b_row_offset + b_col_offset + 2 * b_index + 2 * b_flags;

  void* buffer = nullptr;
  DISTATTN_CUDA_CHECK(cudaMalloc(&buffer, total));
  char* base = static_cast<char*>(buffer);
  BlockListView v;
  v.device = Device::kCuda;
  v.num_q_blocks = num_q_blocks_;
  v.num_kv_blocks = num_kv_blocks_;
  v.nnz = static_cast<int64_t>(nnz);
  size_t at = 0;
  v.row_offset = reinterpret_cast<const int32_t*>(base + at), at += b_row_offset;
  v.col_offset = reinterpret_cast<const int32_t*>(base + at), at += b_col_offset;
  v.col_index = reinterpret_cast<const int32_t*>(base + at), at += b_index;
  v.row_index = reinterpret_cast<const int32_t*>(base + at), at += b_index;
  v.row_partial = reinterpret_cast<const uint8_t*>(base + at), at += b_flags;
  v.col_partial = reinterpret_cast<const uint8_t*>(base + at);
  try {
    auto copy = [&](const void* dst, const void* src, size_t bytes) {
      if (bytes == 0) return;
      DISTATTN_CUDA_CHECK(cudaMemcpyAsync(const_cast<void*>(dst), src, bytes, cudaMemcpyHostToDevice, stream));
    };
    copy(v.row_offset, row_offset_.data(), row_offset_.size() * sizeof(int32_t));
    copy(v.col_offset, col_offset_.data(), col_offset_.size() * sizeof(int32_t));
    copy(v.col_index, col_index_.data(), nnz * sizeof(int32_t));
    copy(v.row_index, row_index_.data(), nnz * sizeof(int32_t));
    copy(v.row_partial, row_partial_.data(), nnz);
    copy(v.col_partial, col_partial_.data(), nnz);
    // The view may be used on any stream afterwards: finish the upload here (it happens once).
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    (void)cudaFree(buffer);
    throw;
  }
  device_buffer_ = buffer;
  device_ordinal_ = current;
  device_view_ = v;
  return device_view_;
}

// ------------------------------------------------------------------------------------------------
// Queries

double BlockLayout::density() const {
  const double all = static_cast<double>(num_q_blocks_) * static_cast<double>(num_kv_blocks_);
  return all > 0 ? static_cast<double>(nnz()) / all : 0.0;
}

namespace {
// Index of (qb, kb) in the row CSR, or -1.
int64_t find_block(const std::vector<int32_t>& row_offset, const std::vector<int32_t>& col_index, int64_t qb,
                   int64_t kb) {
  const auto first = col_index.begin() + row_offset[qb];
  const auto last = col_index.begin() + row_offset[qb + 1];
  const auto it = std::lower_bound(first, last, static_cast<int32_t>(kb));
  return (it != last && *it == kb) ? static_cast<int64_t>(it - col_index.begin()) : -1;
}
}  // namespace

bool BlockLayout::visible_block(int64_t qb, int64_t kb) const {
  DISTATTN_CHECK_ARG(qb >= 0 && qb < num_q_blocks_, "qb", "q block ", qb, " out of range [0, ", num_q_blocks_, ")");
  DISTATTN_CHECK_ARG(kb >= 0 && kb < num_kv_blocks_, "kb", "kv block ", kb, " out of range [0, ", num_kv_blocks_, ")");
  return find_block(row_offset_, col_index_, qb, kb) >= 0;
}

bool BlockLayout::partial(int64_t qb, int64_t kb) const {
  if (!visible_block(qb, kb)) return false;
  return row_partial_[find_block(row_offset_, col_index_, qb, kb)] != 0;
}

bool BlockLayout::full(int64_t qb, int64_t kb) const {
  if (!visible_block(qb, kb)) return false;
  return row_partial_[find_block(row_offset_, col_index_, qb, kb)] == 0;
}

int64_t BlockLayout::host_bytes() const {
  return static_cast<int64_t>((row_offset_.size() + col_offset_.size() + col_index_.size() + row_index_.size()) *
                                  sizeof(int32_t) +
                              row_partial_.size() + col_partial_.size());
}

namespace {
std::string band_name(const Mask& m) {
  std::ostringstream os;
  if (!m.causal && m.window == 0) return "none";
  os << (m.causal ? "causal" : "window");
  if (m.window > 0) os << (m.causal ? " window " : " ") << m.window;
  return os.str();
}
}  // namespace

std::string BlockLayout::describe() const {
  std::ostringstream os;
  os << "BlockLayout " << num_q_blocks_ << " x " << num_kv_blocks_ << " blocks, nnz " << nnz() << " (" << num_partial_
     << " partial), density " << density() << ", band " << band_name(band_);
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// Set operations

namespace {
bool same_band(const Mask& a, const Mask& b) { return a.causal == b.causal && a.window == b.window; }

// Per block state: 0 absent, 1 partial, 2 full (the order unite / intersect take max / min in).
template <typename Combine>
BlockLayout combine(const BlockLayout& a, const BlockLayout& b, Combine pick, const char* what) {
  DISTATTN_CHECK_ARG(a.num_q_blocks() == b.num_q_blocks() && a.num_kv_blocks() == b.num_kv_blocks(), "b", what,
                     " needs layouts of the same block counts: a is ", a.num_q_blocks(), " x ", a.num_kv_blocks(),
                     ", b is ", b.num_q_blocks(), " x ", b.num_kv_blocks());
  DISTATTN_CHECK_ARG(a.num_partial() == 0 || b.num_partial() == 0 || same_band(a.band(), b.band()), "b", what,
                     " of layouts whose partial blocks refer to different bands (", a.describe(), "; ", b.describe(),
                     ") is not representable: a call applies one band to every partial block");
  const Mask band = a.num_partial() > 0 ? a.band() : (b.num_partial() > 0 ? b.band() : a.band());

  layout_detail::RowBuilder rows;
  rows.index.reserve(std::max(a.nnz(), b.nnz()));
  rows.partial.reserve(std::max(a.nnz(), b.nnz()));
  const auto& ao = a.row_offset();
  const auto& ai = a.col_index();
  const auto& ap = a.row_partial();
  const auto& bo = b.row_offset();
  const auto& bi = b.col_index();
  const auto& bp = b.row_partial();
  auto state = [](uint8_t partial_flag) { return partial_flag ? 1 : 2; };
  for (int64_t r = 0; r < a.num_q_blocks(); ++r) {
    int32_t i = ao[r], j = bo[r];
    // Merge of two ascending lists; a block missing from one side has state 0 there.
    while (i < ao[r + 1] || j < bo[r + 1]) {
      int64_t col;
      int sa = 0, sb = 0;
      if (j >= bo[r + 1] || (i < ao[r + 1] && ai[i] < bi[j])) {
        col = ai[i], sa = state(ap[i]), ++i;
      } else if (i >= ao[r + 1] || bi[j] < ai[i]) {
        col = bi[j], sb = state(bp[j]), ++j;
      } else {
        col = ai[i], sa = state(ap[i]), sb = state(bp[j]), ++i, ++j;
      }
      const int s = pick(sa, sb);
      if (s > 0) rows.push(col, s == 1);
    }
    rows.end_row();
  }
  return BlockLayout::from_rows(a.num_q_blocks(), a.num_kv_blocks(), std::move(rows.offset), std::move(rows.index),
                                std::move(rows.partial), band);
}
}  // namespace

BlockLayout BlockLayout::unite(const BlockLayout& a, const BlockLayout& b) {
  return combine(
      a, b, [](int x, int y) { return std::max(x, y); }, "unite");
}

BlockLayout BlockLayout::intersect(const BlockLayout& a, const BlockLayout& b) {
  return combine(
      a, b, [](int x, int y) { return std::min(x, y); }, "intersect");
}

}  // namespace distattn
