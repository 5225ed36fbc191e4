// Shard layouts (shard.h): validation, position maps, host copies.
#include "distattn/ring/shard.h"

#include <cstring>

#include "distattn/core/error.h"

namespace distattn {
namespace ring {

const char* layout_name(ShardLayout layout) {
  switch (layout) {
    case ShardLayout::kContiguous:
      return "contiguous";
    case ShardLayout::kZigzag:
      return "zigzag";
    case ShardLayout::kStriped:
      return "striped";
  }
  return "unknown";
}

void validate_layout(ShardLayout layout, int64_t seq_len, int world_size) {
  DISTATTN_CHECK_ARG(world_size >= 1, "world_size", "is ", world_size, " (expected >= 1)");
  DISTATTN_CHECK_ARG(
      layout == ShardLayout::kContiguous || layout == ShardLayout::kZigzag || layout == ShardLayout::kStriped, "layout",
      "is ", static_cast<int>(layout), " (expected contiguous, zigzag or striped)");
  DISTATTN_CHECK_ARG(seq_len >= 1, "seq_len", "is ", seq_len, " (expected >= 1)");
  const int64_t divisor = layout == ShardLayout::kZigzag ? 2 * int64_t{world_size} : int64_t{world_size};
  DISTATTN_CHECK_ARG(seq_len % divisor == 0, "seq_len", "is ", seq_len, ": the ", layout_name(layout), " layout over ",
                     world_size, " ranks needs a multiple of ", divisor,
                     layout == ShardLayout::kZigzag ? " (2 * ranks chunks)" : " (the number of ranks)");
  DISTATTN_CHECK_ARG(seq_len - 1 <= PositionMap::kMaxPosition, "seq_len", "is ", seq_len,
                     ": positions must stay below ", PositionMap::kMaxPosition + 1);
}

int64_t local_rows(ShardLayout layout, int64_t seq_len, int world_size) {
  validate_layout(layout, seq_len, world_size);
  return seq_len / world_size;
}

PositionMap shard_positions(ShardLayout layout, int64_t seq_len, int world_size, int rank) {
  validate_layout(layout, seq_len, world_size);
  DISTATTN_CHECK_ARG(rank >= 0 && rank < world_size, "rank", "is ", rank, " (expected 0 .. ", world_size - 1, ")");
  const int64_t P = world_size, r = rank;
  switch (layout) {
    case ShardLayout::kContiguous:
      return PositionMap::contiguous(r * (seq_len / P), seq_len / P);
    case ShardLayout::kStriped:
      return PositionMap::strided(r, P, seq_len / P);
    case ShardLayout::kZigzag: {
      const int64_t C = seq_len / (2 * P);
      PositionMap m = PositionMap::contiguous(r * C, C);
      m.add_chunk((2 * P - 1 - r) * C, 1, C);
      return m;
    }
  }
  DISTATTN_THROW("layout", "unknown layout ", static_cast<int>(layout));
}

namespace {

// Checks a full / local pair and returns rank r's map. `full_name`, `local_name` name the arguments.
PositionMap check_pair(const TensorView& full, const TensorView& local, ShardLayout layout, int world_size, int rank) {
  for (const TensorView* t : {&full, &local}) {
    const char* name = t == &full ? "full" : "local";
    DISTATTN_CHECK_ARG(t->data != nullptr, name, "is null");
    DISTATTN_CHECK_ARG(t->device == Device::kHost, name, "must be host memory for the host shard helpers");
    DISTATTN_CHECK_ARG(t->stride[3] == 1, name, "head dim must be contiguous: ", describe(*t));
    for (int i = 0; i < 4; ++i) DISTATTN_CHECK_ARG(t->shape[i] >= 1, name, "has an empty axis: ", describe(*t));
  }
  const PositionMap m = shard_positions(layout, full.seqlen(), world_size, rank);
  DISTATTN_CHECK_ARG(local.dtype == full.dtype, "local", "has dtype ", dtype_name(local.dtype), ", full has ",
                     dtype_name(full.dtype));
  DISTATTN_CHECK_ARG(local.batch() == full.batch() && local.heads() == full.heads() &&
                         local.head_dim() == full.head_dim() && local.seqlen() == m.length(),
                     "local", "has shape ", describe(local), ", expected [", full.batch(), ", ", m.length(), ", ",
                     full.heads(), ", ", full.head_dim(), "] (", layout_name(layout), " shard ", rank, " of ",
                     world_size, " of ", describe(full), ")");
  return m;
}

void copy_rows(const TensorView& full, const TensorView& local, const PositionMap& m, bool to_local) {
  const size_t row_bytes = static_cast<size_t>(full.head_dim()) * dtype_size(full.dtype);
  const size_t es = dtype_size(full.dtype);
  char* f = static_cast<char*>(full.data);
  char* l = static_cast<char*>(local.data);
  for (int64_t b = 0; b < full.batch(); ++b) {
    for (int64_t i = 0; i < local.seqlen(); ++i) {
      const int64_t g = m.position(i);
      for (int64_t h = 0; h < full.heads(); ++h) {
        char* fp = f + full.offset(b, g, h, 0) * static_cast<int64_t>(es);
        char* lp = l + local.offset(b, i, h, 0) * static_cast<int64_t>(es);
        if (to_local) {
          std::memcpy(lp, fp, row_bytes);
        } else {
          std::memcpy(fp, lp, row_bytes);
        }
      }
    }
  }
}

}  // namespace

void shard_host(const TensorView& full, const TensorView& local, ShardLayout layout, int world_size, int rank) {
  copy_rows(full, local, check_pair(full, local, layout, world_size, rank), true);
}

void unshard_host(const TensorView& local, const TensorView& full, ShardLayout layout, int world_size, int rank) {
  copy_rows(full, local, check_pair(full, local, layout, world_size, rank), false);
}

namespace {
void copy_lse(const float* full, const float* local_in, float* full_out, float* local_out, int64_t batch, int64_t heads,
              ShardLayout layout, int64_t seq_len, int world_size, int rank) {
  DISTATTN_CHECK_ARG(batch >= 1 && heads >= 1, "batch/heads", "are ", batch, " / ", heads, " (expected >= 1)");
  const PositionMap m = shard_positions(layout, seq_len, world_size, rank);
  const int64_t n = m.length();
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = bh * seq_len + m.position(i);
      if (local_out != nullptr) {
        local_out[bh * n + i] = full[g];
      } else {
        full_out[g] = local_in[bh * n + i];
      }
    }
  }
}
}  // namespace

void shard_lse_host(const float* full, float* local, int64_t batch, int64_t heads, ShardLayout layout, int64_t seq_len,
                    int world_size, int rank) {
  DISTATTN_CHECK_ARG(full != nullptr, "full", "is null");
  DISTATTN_CHECK_ARG(local != nullptr, "local", "is null");
  copy_lse(full, nullptr, nullptr, local, batch, heads, layout, seq_len, world_size, rank);
}

void unshard_lse_host(const float* local, float* full, int64_t batch, int64_t heads, ShardLayout layout,
                      int64_t seq_len, int world_size, int rank) {
  DISTATTN_CHECK_ARG(full != nullptr, "full", "is null");
  DISTATTN_CHECK_ARG(local != nullptr, "local", "is null");
  copy_lse(nullptr, local, full, nullptr, batch, heads, layout, seq_len, world_size, rank);
}

}  // namespace ring
}  // namespace distattn
