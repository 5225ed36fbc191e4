#include "bench_options.h"

#include "distattn/core/error.h"
#include "distattn/launch/sizes.h"

namespace po = boost::program_options;

namespace distattn {
namespace bench {

namespace {
// "2K,4096" -> {2048, 4096}: positive sizes (launch::parse_size), comma separated; throws naming `option`.
std::vector<int64_t> parse_size_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> out;
  size_t begin = 0;
  while (true) {
    const size_t end = text.find(',', begin);
    const std::string item = text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    const int64_t v = launch::parse_size(item, option);
    DISTATTN_CHECK_ARG(v >= 1, option, "entry '", item, "' must be >= 1");
    out.push_back(v);
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}
}  // namespace

po::options_description bench_options_description() {
  po::options_description desc("distattn_bench options", 120, 60);
  launch::add_common_options(desc);
  desc.add_options()  //
      ("op,o", po::value<std::string>()->default_value("dense"),
       "operation: dense | ring | sparse | dilated | mha | rope (see the op list below)")                          //
      ("pass", po::value<std::string>()->default_value("fwd"), "dense, ring: fwd | bwd | fwdbwd")                  //
      ("rotary-dim", po::value<int64_t>()->default_value(0), "rope: dims rotated (even, <= head dim; 0: all)")     //
      ("style", po::value<std::string>()->default_value("neox"), "rope: neox (rotate-half) | gptj (interleaved)")  //
      ("rope", po::bool_switch(),
       "dense, ring: apply RoPE (fused kernel, in place on q and k, global positions; ring: each rank on its own "
       "shard with the shard's global positions) before the attention forward and its backward on dq, dk after the "
       "attention backward; timed with it (--rotary-dim, --style)")  //
      ("layout", po::value<std::string>()->default_value("zigzag"),
       "ring: shard layout zigzag | contiguous | striped")  //
      ("check-max-seq", po::value<std::string>()->default_value("4K"),
       "largest sequence length checked against the fp64 host engine (bigger sizes print 'skip')")  //
      ("check-heads", po::value<int64_t>()->default_value(0),
       "dense: kv heads checked, each with all its q heads (0: min(kv heads, CPU threads, 8))")  //
      ("sparse-pattern", po::value<std::string>()->default_value("block-diagonal"),
       "sparse, ring: block-diagonal | sliding-window (--window, --causal) | strided | bigbird | random "
       "(ring: block-sparse only when given)")  //
      ("sparse-block", po::value<std::string>()->default_value("2048"),
       "sparse: block-diagonal segment rows; strided: stride rows (multiples of 128)")  //
      ("sparse-random", po::value<int64_t>()->default_value(3),
       "sparse: random 128-row blocks per q block (random, bigbird)")  //
      ("core", po::value<std::string>()->default_value("dense"),
       "mha: attention core of the layer, dense | ring | dilated | sparse")  //
      ("dilated-segments", po::value<std::string>()->default_value("2K,4K,8K,16K,32K"),
       "dilated, mha --core dilated: segment lengths w_i, comma list (K suffixes)")  //
      ("dilated-rates", po::value<std::string>()->default_value("1,2,4,6,12"),
       "dilated, mha --core dilated: dilation rates r_i, one per segment")  //
      ("dilated-ragged", po::value<int>()->default_value(1),
       "dilated, mha --core dilated: 1 = rates need not divide segments (torchscale's ragged classes), 0 = they "
       "must")  //
      ("warmup-ms", po::value<int>()->default_value(0),
       "GPU: after the -w warm-up iterations, go on warming up until this many ms have passed (every rank as long as "
       "the slowest), so that the timed iterations run at the clock the GPU keeps under load: an H200 leaves its "
       "boost clock (1980 MHz) for ~1800-1845 MHz within ~60-100 ms of load when its power cap applies, and a short "
       "forward-only run otherwise times part boost, part capped. 0: off; the host engine ignores it")  //
      ("seed", po::value<uint64_t>()->default_value(20261122), "seed of the random inputs");
  return desc;
}

BenchOptions parse_bench_options(int argc, const char* const argv[], bool have_gpu) {
  const po::options_description desc = bench_options_description();
  const po::variables_map vm = launch::parse_options(argc, argv, desc);
  BenchOptions o;
  o.help = vm.count("help") > 0;
  o.host_engine = !have_gpu;
  o.common = launch::read_common_options(vm);

  if (!have_gpu) {
    // The host engine is O(S^2) loops on the CPU: small sizes and few iterations unless asked otherwise.
    if (!o.common.sweep_given) {
      o.common.min_seq = kHostDefaultMinSeq;
      o.common.max_seq = kHostDefaultMaxSeq;
    }
    if (vm["iters"].defaulted()) o.common.iters = kHostDefaultIters;
    if (vm["warmup_iters"].defaulted()) o.common.warmup = kHostDefaultWarmup;
    o.common.dtype = DType::kFloat32;  // the host engine runs fp32 (and the check compares with fp64)
  }
  o.sizes = o.common.sweep();

  o.op = vm["op"].as<std::string>();
  DISTATTN_CHECK_ARG(!o.op.empty(), "--op/-o", "expected an operation name, got an empty string");
  o.pass = parse_pass(vm["pass"].as<std::string>(), "--pass");

  o.rotary_dim = vm["rotary-dim"].as<int64_t>();
  DISTATTN_CHECK_ARG(o.rotary_dim >= 0 && o.rotary_dim % 2 == 0 && o.rotary_dim <= o.common.head_dim, "--rotary-dim",
                     "must be even and between 0 and the head dim (", o.common.head_dim, "), got ", o.rotary_dim);
  const std::string style = vm["style"].as<std::string>();
  DISTATTN_CHECK_ARG(style == "neox" || style == "gptj", "--style", "unknown RoPE style '", style,
                     "' (expected neox or gptj)");
  o.rope_gptj = style == "gptj";
  o.rope = vm["rope"].as<bool>();
  DISTATTN_CHECK_ARG(!o.rope || o.op == "dense" || o.op == "ring", "--rope",
                     "only the dense and ring ops apply RoPE around attention (the rope op times RoPE alone), got -o ",
                     o.op);

  o.layout = vm["layout"].as<std::string>();
  DISTATTN_CHECK_ARG(o.layout == "zigzag" || o.layout == "contiguous" || o.layout == "striped", "--layout",
                     "unknown shard layout '", o.layout, "' (expected zigzag, contiguous or striped)");

  o.check_max_seq = launch::parse_size(vm["check-max-seq"].as<std::string>(), "--check-max-seq");
  o.check_heads = vm["check-heads"].as<int64_t>();
  DISTATTN_CHECK_ARG(o.check_heads >= 0 && o.check_heads <= o.common.resolved_kv_heads(), "--check-heads",
                     "must be between 0 (automatic) and the kv heads (", o.common.resolved_kv_heads(), "), got ",
                     o.check_heads);
  o.sparse_pattern = vm["sparse-pattern"].as<std::string>();
  o.sparse_pattern_given = !vm["sparse-pattern"].defaulted();
  DISTATTN_CHECK_ARG(o.sparse_pattern == "block-diagonal" || o.sparse_pattern == "sliding-window" ||
                         o.sparse_pattern == "strided" || o.sparse_pattern == "bigbird" || o.sparse_pattern == "random",
                     "--sparse-pattern", "unknown pattern '", o.sparse_pattern,
                     "' (expected block-diagonal, sliding-window, strided, bigbird or random)");
  o.sparse_block = launch::parse_size(vm["sparse-block"].as<std::string>(), "--sparse-block");
  DISTATTN_CHECK_ARG(o.sparse_block >= 128 && o.sparse_block % 128 == 0, "--sparse-block",
                     "must be a positive multiple of 128 (the layout block), got ", o.sparse_block);
  o.sparse_random = vm["sparse-random"].as<int64_t>();
  DISTATTN_CHECK_ARG(o.sparse_random >= 1, "--sparse-random", "must be >= 1, got ", o.sparse_random);
  o.core = vm["core"].as<std::string>();
  DISTATTN_CHECK_ARG(o.core == "dense" || o.core == "ring" || o.core == "dilated" || o.core == "sparse", "--core",
                     "unknown attention core '", o.core, "' (expected dense, ring, dilated or sparse)");
  o.dilated_segments = parse_size_list(vm["dilated-segments"].as<std::string>(), "--dilated-segments");
  o.dilated_rates = parse_size_list(vm["dilated-rates"].as<std::string>(), "--dilated-rates");
  o.dilated_rates_given = !vm["dilated-rates"].defaulted();
  DISTATTN_CHECK_ARG(o.dilated_rates.size() == o.dilated_segments.size(), "--dilated-rates", "has ",
                     o.dilated_rates.size(), " entries, --dilated-segments ", o.dilated_segments.size(),
                     " (one rate per segment)");
  const int ragged = vm["dilated-ragged"].as<int>();
  DISTATTN_CHECK_ARG(ragged == 0 || ragged == 1, "--dilated-ragged", "expected 0 or 1, got ", ragged);
  o.dilated_ragged = ragged == 1;
  o.warmup_ms = vm["warmup-ms"].as<int>();
  DISTATTN_CHECK_ARG(o.warmup_ms >= 0 && o.warmup_ms <= 600000, "--warmup-ms", "must be between 0 and 600000, got ",
                     o.warmup_ms);
  o.seed = vm["seed"].as<uint64_t>();
  return o;
}

}  // namespace bench
}  // namespace distattn
