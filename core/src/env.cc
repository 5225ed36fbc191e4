// The environment switches' parse (distattn/core/env.h).
#include "distattn/core/env.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>

#include "distattn/core/error.h"

namespace distattn {

int parse_choice(const char* name, const char* value, std::initializer_list<const char*> choices, int fallback) {
  if (value == nullptr || *value == '\0') return fallback;
  int index = 0;
  for (const char* c : choices) {
    if (std::strcmp(value, c) == 0) return index;
    ++index;
  }
  // "expected a, b or c": the accepted values in the order given.
  std::ostringstream expected;
  index = 0;
  for (const char* c : choices) {
    if (index > 0) expected << (index + 1 == static_cast<int>(choices.size()) ? " or " : ", ");
    expected << c;
    ++index;
  }
  DISTATTN_THROW(name, "expected ", expected.str(), ", got '", value, "'");
}

int env_choice(const char* name, std::initializer_list<const char*> choices, int fallback) {
  return parse_choice(name, std::getenv(name), choices, fallback);
}

int64_t parse_int(const char* name, const char* value, int64_t lo, int64_t hi, int64_t fallback) {
  if (value == nullptr || *value == '\0') return fallback;
  const bool negative = value[0] == '-';
  const char* p = negative ? value + 1 : value;
  // Accumulate the magnitude as a negative number: -INT64_MIN does not fit, INT64_MIN does.
  bool ok = *p != '\0';
  int64_t x = 0;
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  for (; ok && *p != '\0'; ++p) {
    const int digit = *p - '0';
    if (digit < 0 || digit > 9 || x < (kMin + digit) / 10) {
      ok = false;
    } else {
      x = x * 10 - digit;
    }
  }
  if (ok && !negative) ok = x != kMin;  // 9223372036854775808 does not fit
  if (ok && !negative) x = -x;
  if (!ok || x < lo || x > hi) {
    if (hi == std::numeric_limits<int64_t>::max()) {
      DISTATTN_THROW(name, "expected an integer >= ", lo, ", got '", value, "'");
    }
    DISTATTN_THROW(name, "expected an integer in [", lo, ", ", hi, "], got '", value, "'");
  }
  return x;
}

int64_t env_int(const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  return parse_int(name, std::getenv(name), lo, hi, fallback);
}

}  // namespace distattn
