#include "distattn/core/position_map.h"

#include "distattn/core/error.h"

namespace distattn {

PositionMap& PositionMap::add_chunk(int64_t start, int64_t stride, int64_t length) {
  DISTATTN_CHECK_ARG(num_chunks < kMaxChunks, "position_map", "a position map holds at most ", kMaxChunks, " chunks");
  chunks[num_chunks++] = PositionChunk{start, stride, length};
  return *this;
}

PositionMap PositionMap::slice(int64_t begin, int64_t end) const {
  DISTATTN_CHECK_ARG(begin >= 0 && begin < end && end <= length(), "begin/end", "rows [", begin, ", ", end,
                     ") are not a non-empty range of the ", length(), " rows of the position map");
  PositionMap out;
  int64_t first = 0;  // local row of the chunk's first position
  for (int c = 0; c < num_chunks; ++c) {
    const PositionChunk& ch = chunks[c];
    const int64_t b = begin > first ? begin : first, e = end < first + ch.length ? end : first + ch.length;
    if (b < e) out.add_chunk(ch.start + (b - first) * ch.stride, ch.stride, e - b);
    first += ch.length;
  }
  return out;
}

void PositionMap::validate(const char* argument, int64_t expected_rows) const {
  DISTATTN_CHECK_ARG(num_chunks >= 1 && num_chunks <= kMaxChunks, argument, "needs 1 to ", kMaxChunks, " chunks, has ",
                     num_chunks);
  for (int c = 0; c < num_chunks; ++c) {
    const PositionChunk& ch = chunks[c];
    DISTATTN_CHECK_ARG(ch.length >= 1, argument, "chunk ", c, " has length ", ch.length, " (expected >= 1)");
    DISTATTN_CHECK_ARG(ch.stride >= 1, argument, "chunk ", c, " has stride ", ch.stride, " (expected >= 1)");
    DISTATTN_CHECK_ARG(ch.start >= 0, argument, "chunk ", c, " starts at position ", ch.start, " (expected >= 0)");
    // last = start + (length - 1) * stride, checked without overflowing int64.
    DISTATTN_CHECK_ARG(ch.length - 1 <= (kMaxPosition - ch.start) / ch.stride, argument, "chunk ", c,
                       " reaches past position ", kMaxPosition, " (start ", ch.start, ", stride ", ch.stride,
                       ", length ", ch.length, "): positions must fit int32");
  }
  if (expected_rows >= 0) {
    DISTATTN_CHECK_ARG(length() == expected_rows, argument, "covers ", length(), " rows, the tensor has ",
                       expected_rows);
  }
}

}  // namespace distattn
