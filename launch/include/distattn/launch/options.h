// Command-line options shared by the distattn tools (distattn_bench, and the ring and dilated tools that
// reuse them), in the nccl-tests spelling where one exists:
//
//   -b/--minseq  -e/--maxseq     sequence-length sweep (K/M suffixes; --minbytes/--maxbytes accepted too:
//                                 in distattn the sweep is over sequence length, not bytes)
//   -f/--stepfactor  -i/--stepseq multiply by f, or add i (not both)
//   -n/--iters  -w/--warmup_iters -c/--check 0|1  -J/--json PATH  --sync-each-iter
//   -B/--batch  -H/--heads  --gqa Hkv  -d/--headdim  --dtype bf16|fp16
//   --causal  --window W  --alibi  --strict-devices  -h/--help
//
// Usage: add_common_options(desc); add tool-specific options; vm = parse_options(argc, argv, desc);
// if (vm.count("help")) print usage(desc...); opts = read_common_options(vm).
// Every parse or validation failure is a distattn::Error naming the option.
#pragma once

#include <boost/program_options.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "distattn/core/dtype.h"

namespace distattn {
namespace launch {

struct CommonOptions {
  // --- the sweep (sequence lengths) ---
  int64_t min_seq = 2048;      // -b
  int64_t max_seq = 32768;     // -e
  int64_t step_factor = 2;     // -f (0 when -i is used)
  int64_t step_increment = 0;  // -i (0 when -f is used)
  bool sweep_given = false;    // true when -b or -e was on the command line (tools pick their own default otherwise)

  // --- measurement ---
  int iters = 20;               // -n: timed iterations per size (median reported)
  int warmup = 5;               // -w: untimed iterations first
  int check = 1;                // -c: 1 = check results against the host engine
  std::string json_path;        // -J: write a JSON report here ("" = none)
  bool sync_each_iter = false;  // --sync-each-iter: synchronise after every timed iteration (a training loop's view)

  // --- the problem ---
  int64_t batch = 1;               // -B
  int64_t heads = 32;              // -H: query heads
  int64_t kv_heads = 0;            // --gqa: key/value heads (0: same as heads)
  int64_t head_dim = 128;          // -d
  DType dtype = DType::kBFloat16;  // --dtype
  bool causal = false;             // --causal
  int64_t window = 0;              // --window (0: no window)
  bool alibi = false;              // --alibi
  bool strict_devices = false;     // --strict-devices: error if more local ranks than GPUs

  int64_t resolved_kv_heads() const { return kv_heads > 0 ? kv_heads : heads; }
  std::vector<int64_t> sweep() const;  // make_sweep over the fields above
};

// Adds the options above to `desc`.
void add_common_options(boost::program_options::options_description& desc);

// Parses argv against `desc` (no positional arguments accepted) and runs notify().
// Throws distattn::Error naming the option on an unknown option, a missing or malformed value, etc.
boost::program_options::variables_map parse_options(int argc, const char* const argv[],
                                                    const boost::program_options::options_description& desc);

// Reads and validates the common options from a parsed map (sizes with suffixes, ranges, dtype name,
// heads % gqa, the sweep). Throws distattn::Error naming the option.
CommonOptions read_common_options(const boost::program_options::variables_map& vm);

// "bf16" / "fp16" (also "bfloat16", "float16", "half"); throws distattn::Error naming `option` otherwise.
DType parse_dtype(const std::string& text, const std::string& option);

// "Usage: <program> <synopsis>\n" followed by the option table.
std::string usage(const std::string& program, const std::string& synopsis,
                  const boost::program_options::options_description& desc);

// The command line as typed (arguments quoted where they contain blanks), for reports.
std::string command_line(int argc, const char* const argv[]);

}  // namespace launch
}  // namespace distattn
