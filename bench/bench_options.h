// distattn_bench's command line: the shared launch options (launch/options.h: sweep, -n, -w, -c, -J,
// problem shape, mask) plus the bench's own (-o op, --pass, RoPE options, check limits, seed), resolved
// into one struct. Pure parsing and validation: no MPI, no CUDA, so the CPU tests exercise it.
#pragma once

#include <boost/program_options.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_flops.h"
#include "distattn/launch/options.h"

namespace distattn {
namespace bench {

struct BenchOptions {
  launch::CommonOptions common;   // sweep, iterations, check, JSON path, shape, dtype, mask, ALiBi
  std::string op = "dense";       // -o/--op: an entry of the op table
  Pass pass = Pass::kForward;     // --pass: fwd | bwd | fwdbwd (dense, ring)
  int64_t rotary_dim = 0;         // --rotary-dim: RoPE dims rotated (0: head dim)
  bool rope_gptj = false;         // --style gptj (default neox)
  bool rope = false;              // --rope: dense, ring: the fused RoPE forward on q, k (in place) before attention;
                                  // --pass fwdbwd/bwd: the RoPE backward on dq, dk after (--rotary-dim, --style)
  std::string layout = "zigzag";  // --layout: ring shard layout, zigzag | contiguous | striped
  int64_t check_max_seq = 4096;   // --check-max-seq: largest S checked against the fp64 host engine
  int64_t check_heads = 0;        // --check-heads: kv heads checked (with all their q heads); 0: automatic
  std::string sparse_pattern = "block-diagonal";  // --sparse-pattern (op sparse): block-diagonal | sliding-window |
                                                  // strided | bigbird | random
  int64_t sparse_block = 2048;        // --sparse-block: rows of a block-diagonal segment; strided: the stride (rows)
  int64_t sparse_random = 3;          // --sparse-random: random 128-blocks per q block (random, bigbird)
  bool sparse_pattern_given = false;  // --sparse-pattern given explicitly (op ring: block-sparse only then)
  std::string core = "dense";         // --core (op mha): the layer's attention core, dense | ring | dilated | sparse
  // --dilated-segments / --dilated-rates (ops dilated, mha --core dilated): LongNet patterns (w_i, r_i), comma lists of
  // equal length (K suffixes allowed). Default: LongNet's own configuration.
  std::vector<int64_t> dilated_segments{2048, 4096, 8192, 16384, 32768};
  std::vector<int64_t> dilated_rates{1, 2, 4, 6, 12};
  bool dilated_ragged = true;        // --dilated-ragged 0|1: DilatedConfig::ragged_rates (rates not dividing segments)
  bool dilated_rates_given = false;  // --dilated-rates given explicitly (op mha falls back otherwise, see mha.cc)
  uint64_t seed = 20261122;          // --seed: random inputs of size index i use seed + i (checks: a fresh stream)
  int warmup_ms = 0;                 // --warmup-ms: GPU warm-up goes on until this many ms passed (0: -w only)
  bool host_engine = false;          // no GPU: the host engine (fp32) runs the op
  bool help = false;                 // -h/--help given: print usage and exit
  std::vector<int64_t> sizes;        // the resolved sweep
};

// The full option table: common options plus the bench's own.
boost::program_options::options_description bench_options_description();

// Parses argv. `have_gpu` = false selects the host-engine defaults (sweep 128..1024, -n 3, -w 1, dtype
// fp32) unless the user gave them. Throws distattn::Error naming the option on any bad input.
BenchOptions parse_bench_options(int argc, const char* const argv[], bool have_gpu);

// Defaults of the host-engine mode (no GPU).
constexpr int64_t kHostDefaultMinSeq = 128;
constexpr int64_t kHostDefaultMaxSeq = 1024;
constexpr int kHostDefaultIters = 3;
constexpr int kHostDefaultWarmup = 1;

}  // namespace bench
}  // namespace distattn
