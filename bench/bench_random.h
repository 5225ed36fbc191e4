// Counter-based random values (no curand, no state): element i of a buffer filled with `seed` is a pure
// function of (seed, i), identical on the host and the device. Uniform on (-sqrt(3), sqrt(3)) -- mean 0,
// variance 1 -- and never exactly zero (the numerator below is odd).
#pragma once

#include <cstdint>

#include "distattn/core/dtype.h"  // DISTATTN_HD

namespace distattn {
namespace bench {

DISTATTN_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

DISTATTN_HD float random_value(uint64_t seed, uint64_t i) {
  const uint64_t h = splitmix64(splitmix64(seed) ^ i);
  // k in [0, 2^24): value = (2k + 1 - 2^24) / 2^24 * sqrt(3), odd numerator -> never 0.
  const int64_t k = static_cast<int64_t>(h >> 40);
  return static_cast<float>(2 * k + 1 - (int64_t{1} << 24)) * (1.7320508f / 16777216.0f);
}

}  // namespace bench
}  // namespace distattn
