// distattn_bench's command line and work formulas: size parsing (K/M/G suffixes), sweeps (-b/-e/-f/-i),
// the FLOP convention (causal halves, backward 2.5x, fwd+bwd 3.5x, windows by exact pair count, checked
// against brute force), and parse errors that name the option.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "bench_flops.h"
#include "bench_options.h"
#include "distattn/core/error.h"
#include "distattn/launch/options.h"
#include "distattn/launch/sizes.h"
#include "host_tensors.h"

namespace distattn {
namespace {

using bench::Pass;

// Runs `fn`, expects a distattn::Error whose argument contains `option`; returns its message.
template <typename Fn>
std::string expect_error_naming(Fn fn, const std::string& option) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_NE(e.argument().find(option), std::string::npos)
        << "error names '" << e.argument() << "', expected '" << option << "': " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no distattn::Error thrown (expected one naming " << option << ")";
  return "";
}

bench::BenchOptions parse(std::vector<std::string> args, bool have_gpu = true) {
  args.insert(args.begin(), "distattn_bench");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return bench::parse_bench_options(static_cast<int>(argv.size()), argv.data(), have_gpu);
}

TEST(BenchSizes, ParsesSuffixes) {
  EXPECT_EQ(launch::parse_size("4096", "-b"), 4096);
  EXPECT_EQ(launch::parse_size("2K", "-b"), 2048);
  EXPECT_EQ(launch::parse_size("2k", "-b"), 2048);
  EXPECT_EQ(launch::parse_size("1M", "-b"), 1048576);
  EXPECT_EQ(launch::parse_size("3m", "-b"), 3 * 1048576);
  EXPECT_EQ(launch::parse_size("1G", "-b"), int64_t{1} << 30);
  EXPECT_EQ(launch::parse_size(" 128K ", "-b"), 131072);
  EXPECT_EQ(launch::parse_size("0", "-b"), 0);
  EXPECT_EQ(launch::parse_size("8589934591G", "-b"), int64_t{8589934591} << 30);  // largest G that fits
}

TEST(BenchSizes, RejectsBadStringsNamingTheOption) {
  for (const char* bad : {"", "  ", "K", "2KB", "2X", "-4", "+4", "1.5K", "12 K", "abc", "0x10", "2K2",
                          "99999999999999999999", "8589934592G"}) {
    SCOPED_TRACE(std::string("input '") + bad + "'");
    expect_error_naming([&] { launch::parse_size(bad, "--maxseq/-e"); }, "--maxseq/-e");
  }
}

TEST(BenchSizes, FormatsWithSuffixes) {
  EXPECT_EQ(launch::format_size(2048), "2K");
  EXPECT_EQ(launch::format_size(1048576), "1M");
  EXPECT_EQ(launch::format_size(3000), "3000");
  EXPECT_EQ(launch::format_size(1536), "1536");  // 1.5K: not a whole number of K, so digits
  EXPECT_EQ(launch::format_size(int64_t{2} << 30), "2G");
}

TEST(BenchSweep, MultiplicativeAndIncremental) {
  EXPECT_EQ(launch::make_sweep(2048, 32768, 2, 0), (std::vector<int64_t>{2048, 4096, 8192, 16384, 32768}));
  // max not reached exactly: stops below it (nccl-tests rule)
  EXPECT_EQ(launch::make_sweep(100, 1000, 3, 0), (std::vector<int64_t>{100, 300, 900}));
  EXPECT_EQ(launch::make_sweep(128, 512, 0, 128), (std::vector<int64_t>{128, 256, 384, 512}));
  EXPECT_EQ(launch::make_sweep(100, 350, 0, 100), (std::vector<int64_t>{100, 200, 300}));
  EXPECT_EQ(launch::make_sweep(7, 7, 2, 0), (std::vector<int64_t>{7}));
  // no overflow near the top of int64
  const int64_t big = int64_t{1} << 62;
  EXPECT_EQ(launch::make_sweep(big, INT64_MAX, 2, 0), (std::vector<int64_t>{big}));
}

TEST(BenchSweep, RejectsBadSweeps) {
  expect_error_naming([] { launch::make_sweep(0, 10, 2, 0); }, "-b");
  expect_error_naming([] { launch::make_sweep(10, 5, 2, 0); }, "-e");
  expect_error_naming([] { launch::make_sweep(1, 10, 2, 3); }, "-i");
  expect_error_naming([] { launch::make_sweep(1, 10, 1, 0); }, "-f");
  expect_error_naming([] { launch::make_sweep(1, 10, 0, 0); }, "-f");
  expect_error_naming([] { launch::make_sweep(1, 1000000, 0, 1); }, "-i");  // too many sizes
}

TEST(BenchOptions, DefaultsAndSweepFromTheCommandLine) {
  bench::BenchOptions o = parse({});
  EXPECT_EQ(o.op, "dense");
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{2048, 4096, 8192, 16384, 32768}));
  EXPECT_EQ(o.common.iters, 20);
  EXPECT_EQ(o.common.warmup, 5);
  EXPECT_EQ(o.common.check, 1);
  EXPECT_EQ(o.common.heads, 32);
  EXPECT_EQ(o.common.head_dim, 128);
  EXPECT_EQ(o.common.dtype, DType::kBFloat16);
  EXPECT_EQ(o.check_max_seq, 4096);
  EXPECT_EQ(o.warmup_ms, 0);  // the time-based warm-up is opt-in
  EXPECT_EQ(parse({"--warmup-ms", "300"}).warmup_ms, 300);

  o = parse({"-b",      "2K",   "-e",       "16K",          "-f",   "2",       "-c",    "1",  "-n",
             "7",       "-w",   "2",        "-o",           "rope", "-H",      "40",    "-d", "64",
             "--dtype", "fp16", "--causal", "--window",     "1K",   "--alibi", "--gqa", "8",  "--pass",
             "fwdbwd",  "-J",   "out.json", "--rotary-dim", "32",   "--style", "gptj"});
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{2048, 4096, 8192, 16384}));
  EXPECT_EQ(o.common.iters, 7);
  EXPECT_EQ(o.common.warmup, 2);
  EXPECT_EQ(o.op, "rope");
  EXPECT_EQ(o.common.heads, 40);
  EXPECT_EQ(o.common.resolved_kv_heads(), 8);
  EXPECT_EQ(o.common.head_dim, 64);
  EXPECT_EQ(o.common.dtype, DType::kFloat16);
  EXPECT_TRUE(o.common.causal);
  EXPECT_EQ(o.common.window, 1024);
  EXPECT_TRUE(o.common.alibi);
  EXPECT_EQ(o.pass, Pass::kForwardBackward);
  EXPECT_EQ(o.common.json_path, "out.json");
  EXPECT_EQ(o.rotary_dim, 32);
  EXPECT_TRUE(o.rope_gptj);

  // -i instead of -f; nccl-tests' long spellings
  o = parse({"--minbytes", "1K", "--maxbytes", "4K", "--stepbytes", "1K"});
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{1024, 2048, 3072, 4096}));
  // -b alone: a single size when it is above the default max
  o = parse({"-b", "64K"});
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{65536}));
}

TEST(BenchOptions, RopeAroundDenseAndRingAttention) {
  EXPECT_FALSE(parse({}).rope);
  bench::BenchOptions o = parse({"-o", "dense", "--rope", "--pass", "fwdbwd", "--rotary-dim", "64", "--style", "gptj"});
  EXPECT_TRUE(o.rope);
  EXPECT_EQ(o.pass, Pass::kForwardBackward);
  EXPECT_EQ(o.rotary_dim, 64);
  EXPECT_TRUE(o.rope_gptj);
  EXPECT_TRUE(parse({"--rope"}, /*have_gpu=*/false).rope);  // the host engine runs it too
  // The ring op wraps its attention in RoPE too (each rank on its shard), with every RoPE option and layout.
  o = parse(
      {"-o", "ring", "--rope", "--pass", "bwd", "--rotary-dim", "32", "--style", "gptj", "--layout", "contiguous"});
  EXPECT_EQ(o.op, "ring");
  EXPECT_TRUE(o.rope);
  EXPECT_EQ(o.pass, Pass::kBackward);
  EXPECT_EQ(o.rotary_dim, 32);
  EXPECT_TRUE(o.rope_gptj);
  EXPECT_EQ(o.layout, "contiguous");
  EXPECT_TRUE(parse({"-o", "ring", "--rope", "--causal"}, /*have_gpu=*/false).rope);  // host ring over MPI
  // Only dense and ring wrap attention in RoPE: elsewhere the flag would be silently ignored.
  const std::string msg = expect_error_naming([] { parse({"-o", "sparse", "--rope"}); }, "--rope");
  EXPECT_NE(msg.find("sparse"), std::string::npos) << msg;
  expect_error_naming([] { parse({"-o", "dilated", "--rope"}); }, "--rope");
  expect_error_naming([] { parse({"-o", "rope", "--rope"}); }, "--rope");
  expect_error_naming([] { parse({"-o", "ring", "--rope", "--rotary-dim", "5"}); }, "rotary-dim");
  expect_error_naming([] { parse({"--rope", "--rotary-dim", "3"}); }, "rotary-dim");
}

TEST(BenchOptions, HostEngineDefaultsWithoutGpu) {
  bench::BenchOptions o = parse({}, /*have_gpu=*/false);
  EXPECT_TRUE(o.host_engine);
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{128, 256, 512, 1024}));
  EXPECT_EQ(o.common.iters, bench::kHostDefaultIters);
  EXPECT_EQ(o.common.dtype, DType::kFloat32);
  o = parse({"-b", "64", "-e", "64", "-n", "2"}, false);  // explicit values win
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{64}));
  EXPECT_EQ(o.common.iters, 2);
}

TEST(BenchOptions, ParseErrorsNameTheOption) {
  expect_error_naming([] { parse({"-b", "2Q"}); }, "minseq");
  expect_error_naming([] { parse({"-e", "lots"}); }, "maxseq");
  expect_error_naming([] { parse({"-b", "8K", "-e", "4K"}); }, "-e");
  expect_error_naming([] { parse({"-f", "2", "-i", "1K"}); }, "-i");
  expect_error_naming([] { parse({"-f", "1"}); }, "-f");
  expect_error_naming([] { parse({"-f", "two"}); }, "stepfactor");
  expect_error_naming([] { parse({"-n", "0"}); }, "iters");
  expect_error_naming([] { parse({"-w", "-1"}); }, "warmup");
  expect_error_naming([] { parse({"--warmup-ms", "-5"}); }, "--warmup-ms");
  expect_error_naming([] { parse({"--warmup-ms", "600001"}); }, "--warmup-ms");
  expect_error_naming([] { parse({"-c", "2"}); }, "check");
  expect_error_naming([] { parse({"-H", "0"}); }, "heads");
  expect_error_naming([] { parse({"-H", "32", "--gqa", "5"}); }, "gqa");
  expect_error_naming([] { parse({"-d", "7"}); }, "headdim");
  expect_error_naming([] { parse({"--dtype", "fp8"}); }, "dtype");
  expect_error_naming([] { parse({"--window", "0"}); }, "window");
  expect_error_naming([] { parse({"--pass", "sideways"}); }, "pass");
  expect_error_naming([] { parse({"--style", "llama"}); }, "style");
  expect_error_naming([] { parse({"--rotary-dim", "130"}); }, "rotary-dim");
  expect_error_naming([] { parse({"--no-such-option"}); }, "no-such-option");
  expect_error_naming([] { parse({"-n"}); }, "iters");                             // missing value
  expect_error_naming([] { parse({"-b", "1K", "--minbytes", "2K"}); }, "minseq");  // given twice
  expect_error_naming([] { parse({"stray"}); }, "command line");
}

TEST(BenchFlops, PassFactorsAndCausalHalf) {
  const double full = 4.0 * 2 * 4096.0 * 4096.0 * 32 * 128;
  EXPECT_DOUBLE_EQ(bench::attention_flops(2, 4096, 32, 128, false, 0, Pass::kForward), full);
  EXPECT_DOUBLE_EQ(bench::attention_flops(2, 4096, 32, 128, true, 0, Pass::kForward), full / 2);
  EXPECT_DOUBLE_EQ(bench::attention_flops(2, 4096, 32, 128, false, 0, Pass::kBackward), full * 2.5);
  EXPECT_DOUBLE_EQ(bench::attention_flops(2, 4096, 32, 128, true, 0, Pass::kForwardBackward), full / 2 * 3.5);
  // A window counts the visible pairs exactly: causal window W over S: W(W+1)/2 + (S-W)W pairs.
  const int64_t S = 4096, W = 256;
  const double pairs = W * (W + 1) / 2.0 + static_cast<double>(S - W) * W;
  EXPECT_DOUBLE_EQ(bench::attention_flops(1, S, 8, 64, true, W, Pass::kForward), 4.0 * 8 * 64 * pairs);
  EXPECT_DOUBLE_EQ(bench::rope_bytes(1, 8192, 64, 64, 128, 2), 536870912.0);  // PEERS.md: "moves 537 MB"
}

// Brute force: count (i, j) in [0,S)^2 with the mask's rule, straight from its definition.
int64_t brute_pairs(int64_t S, bool causal, int64_t window) {
  int64_t n = 0;
  for (int64_t i = 0; i < S; ++i) {
    for (int64_t j = 0; j < S; ++j) {
      const int64_t d = i - j;
      bool visible = true;
      if (causal && d < 0) visible = false;
      if (window > 0 && (d >= window || (!causal && -d >= window))) visible = false;
      n += visible;
    }
  }
  return n;
}

TEST(BenchFlops, WindowPairsMatchBruteForce) {
  for (int64_t S : {1, 2, 5, 37, 128, 129}) {
    for (bool causal : {false, true}) {
      for (int64_t W : {0, 1, 2, 3, 16, 36, 37, 38, 200}) {
        SCOPED_TRACE("S=" + std::to_string(S) + " causal=" + std::to_string(causal) + " W=" + std::to_string(W));
        EXPECT_EQ(bench::visible_pairs(S, causal, W), brute_pairs(S, causal, W));
      }
    }
  }
  // General bands, including ones that start or end off the matrix.
  for (int64_t lo : {-50, -5, 0, 3, 40}) {
    for (int64_t hi : {-60, -5, 0, 4, 60}) {
      int64_t n = 0;
      for (int64_t i = 0; i < 37; ++i)
        for (int64_t j = 0; j < 37; ++j) n += (i - j >= lo && i - j <= hi);
      EXPECT_EQ(bench::band_pairs(37, lo, hi), n) << "lo=" << lo << " hi=" << hi;
    }
  }
  EXPECT_EQ(bench::visible_pairs(1 << 20, true, 0), (int64_t{1} << 20) * ((int64_t{1} << 20) + 1) / 2);
}

}  // namespace
}  // namespace distattn

// The check's comparisons: a poisoned (NaN) element, an infinity, or an element beyond tolerance is
// wrong; equal infinities (the -inf LSE of an empty row) are not.
namespace distattn {
namespace {

TEST(BenchCheck, ComparisonsCountPoisonAndOutliers) {
  bench::HostTensor ref(DType::kFloat64, 2, 5, 3, 4);
  bench::fill_random_host(ref, 7);
  bench::HostTensor got = bench::convert(ref.view, DType::kBFloat16);  // rounding error only
  const double round_err = bench::max_abs_diff(got.view, ref.view);
  EXPECT_GT(round_err, 0.0);
  EXPECT_LE(round_err, bench::max_abs(ref.view) * std::ldexp(1.0, -8) * 1.0001);
  EXPECT_EQ(bench::count_outside(got.view, ref.view, round_err), 0);

  // One element far off, one NaN: both wrong, and max_abs_diff reports infinity for the NaN.
  store_from_double(got.data(), 3, DType::kBFloat16, 100.0);
  EXPECT_EQ(bench::count_outside(got.view, ref.view, 1e-2), 1);
  store_from_double(got.data(), 17, DType::kBFloat16, std::nan(""));
  EXPECT_EQ(bench::count_outside(got.view, ref.view, 1e-2), 2);
  EXPECT_TRUE(std::isinf(bench::max_abs_diff(got.view, ref.view)));

  // A fully poisoned tensor is wrong everywhere.
  bench::fill_nan_host(got);
  EXPECT_EQ(bench::count_outside(got.view, ref.view, 1e30), got.view.numel());

  // Equal infinities match; opposite ones do not.
  std::vector<float> a = {-INFINITY, 1.f, INFINITY}, b = {-INFINITY, 1.f, -INFINITY};
  const TensorView va = bench::lse_view(a.data(), 1, 3, 1), vb = bench::lse_view(b.data(), 1, 3, 1);
  EXPECT_EQ(bench::count_outside(va, va, 0.0), 0);
  EXPECT_EQ(bench::count_outside(va, vb, 0.0), 1);
}

TEST(BenchCheck, HeadSliceAndRandomFill) {
  bench::HostTensor t(DType::kFloat32, 1, 3, 4, 2);
  bench::fill_random_host(t, 11);
  for (int64_t i = 0; i < t.view.numel(); ++i) {
    const double v = load_as_double(t.data(), i, DType::kFloat32);
    EXPECT_NE(v, 0.0) << "random inputs must never be zero (element " << i << ")";
    EXPECT_LE(std::fabs(v), 1.7320509);
  }
  const TensorView s = bench::head_slice(t.view, 1, 2);
  EXPECT_EQ(s.heads(), 2);
  EXPECT_EQ(load_as_double(s.data, s.offset(0, 2, 1, 1), s.dtype),
            load_as_double(t.data(), t.view.offset(0, 2, 2, 1), t.view.dtype));
  expect_error_naming([&] { bench::head_slice(t.view, 3, 2); }, "head_slice");
}

}  // namespace
}  // namespace distattn
