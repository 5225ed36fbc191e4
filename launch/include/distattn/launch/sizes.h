// Sizes on the command line: "4096", "2K" (= 2048), "1M" (= 1048576), "1G" (binary multiples), and the
// nccl-tests style sweep built from -b (min), -e (max), -f (multiplication factor) or -i (increment).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace distattn {
namespace launch {

// Parses a non-negative size with an optional K/M/G suffix (case-insensitive, binary: K = 1024).
// Surrounding blanks are ignored. Throws distattn::Error naming `option` for anything else: empty text,
// a sign, a fraction, an unknown suffix, trailing characters, or a value that does not fit in int64.
int64_t parse_size(const std::string& text, const std::string& option);

// The shortest exact spelling with a suffix: 2048 -> "2K", 1048576 -> "1M", 3000 -> "3000".
std::string format_size(int64_t n);

// The sizes min, then min*factor (factor >= 2) or min+increment (increment >= 1), ... up to and including
// max when it is reached exactly (the nccl-tests rule). Exactly one of factor > 1 and increment > 0 must
// be given (the other 0). Throws distattn::Error naming the offending option ("-b", "-e", "-f", "-i") when
// min < 1, max < min, both or neither step is given, or the sweep would list more than 100000 sizes.
std::vector<int64_t> make_sweep(int64_t min, int64_t max, int64_t factor, int64_t increment);

}  // namespace launch
}  // namespace distattn
