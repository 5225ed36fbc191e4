#include "distattn/launch/sizes.h"

#include <cctype>
#include <limits>

#include "distattn/core/error.h"

namespace distattn {
namespace launch {

int64_t parse_size(const std::string& text, const std::string& option) {
  size_t begin = 0, end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  DISTATTN_CHECK_ARG(begin < end, option, "expected a size such as 4096, 2K or 1M, got an empty string");

  int64_t value = 0;
  size_t i = begin;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (; i < end && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    const int digit = text[i] - '0';
    DISTATTN_CHECK_ARG(value <= (kMax - digit) / 10, option, "size '", text, "' does not fit in 64 bits");
    value = value * 10 + digit;
  }
  DISTATTN_CHECK_ARG(i > begin, option,
                     "expected a size such as 4096, 2K or 1M (digits, then an optional K/M/G), got '", text, "'");
  int64_t multiplier = 1;
  if (i < end) {
    switch (std::toupper(static_cast<unsigned char>(text[i]))) {
      case 'K':
        multiplier = int64_t{1} << 10;
        break;
      case 'M':
        multiplier = int64_t{1} << 20;
        break;
      case 'G':
        multiplier = int64_t{1} << 30;
        break;
      default:
        DISTATTN_THROW(option, "unknown size suffix in '", text, "' (expected K, M or G after the digits)");
    }
    ++i;
  }
  DISTATTN_CHECK_ARG(i == end, option, "unexpected characters after the size in '", text,
                     "' (expected digits and an optional K/M/G)");
  DISTATTN_CHECK_ARG(value <= kMax / multiplier, option, "size '", text, "' does not fit in 64 bits");
  return value * multiplier;
}

std::string format_size(int64_t n) {
  if (n > 0) {
    if (n % (int64_t{1} << 30) == 0) return std::to_string(n >> 30) + "G";
    if (n % (int64_t{1} << 20) == 0) return std::to_string(n >> 20) + "M";
    if (n % (int64_t{1} << 10) == 0) return std::to_string(n >> 10) + "K";
  }
  return std::to_string(n);
}

std::vector<int64_t> make_sweep(int64_t min, int64_t max, int64_t factor, int64_t increment) {
  constexpr int64_t kMaxSizes = 100000;
  DISTATTN_CHECK_ARG(min >= 1, "-b", "the smallest size must be at least 1, got ", min);
  DISTATTN_CHECK_ARG(max >= min, "-e", "the largest size (", max, ") must not be below the smallest (-b ", min, ")");
  DISTATTN_CHECK_ARG(!(factor > 1 && increment > 0), "-i",
                     "give a multiplication factor (-f) or an increment (-i), not both");
  DISTATTN_CHECK_ARG(factor >= 0 && factor != 1, "-f", "the multiplication factor must be at least 2, got ", factor);
  DISTATTN_CHECK_ARG(increment >= 0, "-i", "the increment must be at least 1, got ", increment);
  DISTATTN_CHECK_ARG(factor > 1 || increment > 0, "-f",
                     "give a multiplication factor (-f >= 2) or an increment (-i >= 1)");

  std::vector<int64_t> sizes;
  for (int64_t s = min;;) {
    sizes.push_back(s);
    DISTATTN_CHECK_ARG(static_cast<int64_t>(sizes.size()) <= kMaxSizes, increment > 0 ? "-i" : "-f", "the sweep from ",
                       min, " to ", max, " would list more than ", kMaxSizes, " sizes");
    // Overflow-safe step: stop when the next size would pass max.
    if (factor > 1) {
      if (s > max / factor) break;
      s *= factor;
    } else {
      if (s > max - increment) break;
      s += increment;
    }
  }
  return sizes;
}

}  // namespace launch
}  // namespace distattn
