#include "distattn/launch/options.h"

#include <sstream>

#include "distattn/core/error.h"
#include "distattn/launch/sizes.h"

namespace po = boost::program_options;

namespace distattn {
namespace launch {
namespace {

// A size option's value, or its alias's (nccl-tests' --minbytes for our --minseq); both given is an error.
// Returns false when neither was on the command line (the default then applies).
bool read_size(const po::variables_map& vm, const std::string& name, const std::string& alias, int64_t* out) {
  const bool has_name = vm.count(name) && !vm[name].defaulted();
  const bool has_alias = !alias.empty() && vm.count(alias) && !vm[alias].defaulted();
  DISTATTN_CHECK_ARG(!(has_name && has_alias), "--" + name, "given twice (as --", name, " and its alias --", alias,
                     ")");
  if (has_alias) {
    *out = parse_size(vm[alias].as<std::string>(), "--" + alias);
    return true;
  }
  if (vm.count(name)) *out = parse_size(vm[name].as<std::string>(), "--" + name);
  return has_name;
}

}  // namespace

std::vector<int64_t> CommonOptions::sweep() const { return make_sweep(min_seq, max_seq, step_factor, step_increment); }

void add_common_options(po::options_description& desc) {
  // Sizes are strings so that K/M/G suffixes can be parsed (and errors can name the option).
  desc.add_options()                          //
      ("help,h", "print this help and exit")  //
      ("minseq,b", po::value<std::string>()->default_value("2K"),
       "smallest sequence length of the sweep (K/M suffixes; nccl-tests' -b, here tokens, not bytes)")              //
      ("maxseq,e", po::value<std::string>()->default_value("32K"), "largest sequence length of the sweep")          //
      ("stepfactor,f", po::value<int64_t>()->default_value(2), "multiply the length by this factor between sizes")  //
      ("stepseq,i", po::value<std::string>(), "add this to the length between sizes (instead of -f)")               //
      ("minbytes", po::value<std::string>(), "alias of --minseq (nccl-tests spelling)")                             //
      ("maxbytes", po::value<std::string>(), "alias of --maxseq (nccl-tests spelling)")                             //
      ("stepbytes", po::value<std::string>(), "alias of --stepseq (nccl-tests spelling)")                           //
      ("iters,n", po::value<int>()->default_value(20), "timed iterations per size (the median is reported)")        //
      ("warmup_iters,w", po::value<int>()->default_value(5), "untimed warm-up iterations per size")                 //
      ("check,c", po::value<int>()->default_value(1), "1: check results against the fp64 host engine; 0: don't")    //
      ("json,J", po::value<std::string>(), "write a JSON report to this path")                                      //
      ("sync-each-iter", po::bool_switch(),
       "synchronise the stream after every timed iteration, as a training loop that reads its loss each step does "
       "(timings then include whatever a call redoes after a synchronisation)")                                      //
      ("batch,B", po::value<int64_t>()->default_value(1), "batch size")                                              //
      ("heads,H", po::value<int64_t>()->default_value(32), "query heads")                                            //
      ("gqa", po::value<int64_t>(), "key/value heads (grouped-query attention); default: as many as query heads")    //
      ("headdim,d", po::value<int64_t>()->default_value(128), "head dimension")                                      //
      ("dtype", po::value<std::string>()->default_value("bf16"), "element type: bf16 or fp16")                       //
      ("causal", po::bool_switch(), "causal mask (keys after the query are hidden)")                                 //
      ("window", po::value<std::string>(), "sliding window W: keys with |pos_q - pos_k| >= W hidden (K suffix ok)")  //
      ("alibi", po::bool_switch(), "ALiBi bias (slopes from the head count)")                                        //
      ("strict-devices", po::bool_switch(), "fail when a node has more ranks than GPUs (default: share GPUs)");
}

po::variables_map parse_options(int argc, const char* const argv[], const po::options_description& desc) {
  po::variables_map vm;
  try {
    // No positional arguments: a stray word is an error rather than silently ignored.
    po::positional_options_description none;
    po::store(po::command_line_parser(argc, argv).options(desc).positional(none).run(), vm);
    po::notify(vm);
  } catch (const po::error_with_option_name& e) {
    std::string name = e.get_option_name();
    DISTATTN_THROW(name.empty() ? std::string("command line") : name, e.what());
  } catch (const po::error& e) {
    DISTATTN_THROW("command line", e.what());
  }
  return vm;
}

DType parse_dtype(const std::string& text, const std::string& option) {
  if (text == "bf16" || text == "bfloat16") return DType::kBFloat16;
  if (text == "fp16" || text == "float16" || text == "half") return DType::kFloat16;
  DISTATTN_THROW(option, "unknown element type '", text, "' (expected bf16 or fp16)");
}

CommonOptions read_common_options(const po::variables_map& vm) {
  CommonOptions o;
  const bool min_given = read_size(vm, "minseq", "minbytes", &o.min_seq);
  const bool max_given = read_size(vm, "maxseq", "maxbytes", &o.max_seq);
  o.sweep_given = min_given || max_given;
  if (min_given && !max_given && o.max_seq < o.min_seq) o.max_seq = o.min_seq;  // "-b 64K" alone: one size
  if (max_given && !min_given && o.min_seq > o.max_seq) o.min_seq = o.max_seq;  // "-e 1K" alone: one size

  int64_t increment = 0;
  const bool increment_given = read_size(vm, "stepseq", "stepbytes", &increment);
  const bool factor_given = vm.count("stepfactor") && !vm["stepfactor"].defaulted();
  o.step_factor = vm["stepfactor"].as<int64_t>();
  DISTATTN_CHECK_ARG(!factor_given || o.step_factor >= 2, "--stepfactor/-f",
                     "the multiplication factor must be at least 2, got ", o.step_factor);
  DISTATTN_CHECK_ARG(!(factor_given && increment_given), "--stepseq/-i",
                     "give a multiplication factor (-f) or an increment (-i), not both");
  if (increment_given) {
    DISTATTN_CHECK_ARG(increment >= 1, "--stepseq/-i", "the increment must be at least 1, got ", increment);
    o.step_increment = increment;
    o.step_factor = 0;
  }

  o.iters = vm["iters"].as<int>();
  DISTATTN_CHECK_ARG(o.iters >= 1, "--iters/-n", "need at least one timed iteration, got ", o.iters);
  o.warmup = vm["warmup_iters"].as<int>();
  DISTATTN_CHECK_ARG(o.warmup >= 0, "--warmup_iters/-w", "must be >= 0, got ", o.warmup);
  o.sync_each_iter = vm.count("sync-each-iter") && vm["sync-each-iter"].as<bool>();
  o.check = vm["check"].as<int>();
  DISTATTN_CHECK_ARG(o.check == 0 || o.check == 1, "--check/-c", "expected 0 or 1, got ", o.check);
  if (vm.count("json")) {
    o.json_path = vm["json"].as<std::string>();
    DISTATTN_CHECK_ARG(!o.json_path.empty(), "--json/-J", "expected a file path, got an empty string");
  }

  o.batch = vm["batch"].as<int64_t>();
  DISTATTN_CHECK_ARG(o.batch >= 1, "--batch/-B", "must be >= 1, got ", o.batch);
  o.heads = vm["heads"].as<int64_t>();
  DISTATTN_CHECK_ARG(o.heads >= 1, "--heads/-H", "must be >= 1, got ", o.heads);
  if (vm.count("gqa")) {
    o.kv_heads = vm["gqa"].as<int64_t>();
    DISTATTN_CHECK_ARG(o.kv_heads >= 1 && o.heads % o.kv_heads == 0, "--gqa", "key/value heads must divide the ",
                       o.heads, " query heads (-H), got ", o.kv_heads);
  }
  o.head_dim = vm["headdim"].as<int64_t>();
  DISTATTN_CHECK_ARG(o.head_dim >= 2 && o.head_dim % 2 == 0, "--headdim/-d", "must be even and >= 2, got ", o.head_dim);
  o.dtype = parse_dtype(vm["dtype"].as<std::string>(), "--dtype");
  o.causal = vm["causal"].as<bool>();
  if (vm.count("window")) {
    o.window = parse_size(vm["window"].as<std::string>(), "--window");
    DISTATTN_CHECK_ARG(o.window >= 1, "--window", "must be >= 1 (leave it out for no window), got ", o.window);
  }
  o.alibi = vm["alibi"].as<bool>();
  o.strict_devices = vm["strict-devices"].as<bool>();

  o.sweep();  // validates -b/-e/-f/-i together now, so a bad sweep fails before any work
  return o;
}

std::string usage(const std::string& program, const std::string& synopsis, const po::options_description& desc) {
  std::ostringstream os;
  os << "Usage: " << program << " " << synopsis << "\n" << desc;
  return os.str();
}

std::string command_line(int argc, const char* const argv[]) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    if (i) out += ' ';
    const std::string a = argv[i] ? argv[i] : "";
    if (a.empty() || a.find_first_of(" \t\"'") != std::string::npos) {
      out += '\'';
      for (char c : a) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    } else {
      out += a;
    }
  }
  return out;
}

}  // namespace launch
}  // namespace distattn
