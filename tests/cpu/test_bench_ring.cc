// distattn_bench's ring op: its work and bandwidth formulas (bench_flops.h) against hand-worked numbers,
// and the --layout option.
//   ring TFLOPs per GPU = flash formula on the GLOBAL S / N ranks
//   K|V shard bytes     = 2 * B * (S/N) * Hkv * D * elem
//   busbw               = all-gather of N shards (nccl-tests): (N * shard / t) * (N-1)/N
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bench_flops.h"
#include "bench_options.h"
#include "distattn/core/error.h"

namespace distattn {
namespace {

using bench::Pass;

bench::BenchOptions parse(std::vector<std::string> args) {
  args.insert(args.begin(), "distattn_bench");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return bench::parse_bench_options(static_cast<int>(argv.size()), argv.data(), true);
}

TEST(BenchRing, FlopsPerGpuHandWorked) {
  // B=1, S=1024, H=2, D=64, no mask, fwd, 4 ranks: 4 * 1 * 1024^2 * 2 * 64 = 536870912 FLOPs, / 4.
  EXPECT_DOUBLE_EQ(bench::ring_flops_per_gpu(1, 1024, 2, 64, false, 0, Pass::kForward, 4), 134217728.0);
  // B=2, S=2048, H=4, D=128, causal, fwd+bwd, 2 ranks:
  //   4 * 2 * 2048^2 * 4 * 128 = 17179869184; causal x0.5 = 8589934592; x3.5 = 30064771072; / 2.
  EXPECT_DOUBLE_EQ(bench::ring_flops_per_gpu(2, 2048, 4, 128, true, 0, Pass::kForwardBackward, 2), 15032385536.0);
  // bwd alone x2.5: same shape, one rank: 8589934592 * 2.5.
  EXPECT_DOUBLE_EQ(bench::ring_flops_per_gpu(2, 2048, 4, 128, true, 0, Pass::kBackward, 1), 21474836480.0);
  // Causal window 3 on S=8: rows i = 0..7 see min(i+1, 3) keys: 1 + 2 + 3*6 = 21 pairs; B=H=D=1:
  // 4 * 21 = 84 FLOPs over 2 ranks = 42.
  EXPECT_DOUBLE_EQ(bench::ring_flops_per_gpu(1, 8, 1, 1, true, 3, Pass::kForward, 2), 42.0);
  // Two-sided window 2 on S=4: |i-j| <= 1: 4 + 2*3 = 10 pairs; x4 / 1 = 40.
  EXPECT_DOUBLE_EQ(bench::ring_flops_per_gpu(1, 4, 1, 1, false, 2, Pass::kForward, 1), 40.0);
  EXPECT_THROW(bench::ring_flops_per_gpu(1, 8, 1, 1, false, 0, Pass::kForward, 0), Error);
}

TEST(BenchRing, KvShardBytesHandWorked) {
  // The shape: S=128K over 4 GPUs, Hkv=32, D=128, bf16: 2 * 32768 * 32 * 128 * 2 = 512 MiB.
  EXPECT_DOUBLE_EQ(bench::ring_kv_shard_bytes(1, 131072, 32, 128, 2, 4), 536870912.0);
  // GQA 8 kv heads, B=2, S=1000 over 1 rank, D=64, fp32: 2 * 2 * 1000 * 8 * 64 * 4.
  EXPECT_DOUBLE_EQ(bench::ring_kv_shard_bytes(2, 1000, 8, 64, 4, 1), 8192000.0);
  EXPECT_THROW(bench::ring_kv_shard_bytes(1, 8, 1, 1, 2, 0), Error);
}

TEST(BenchRing, AllGatherBusBandwidthHandWorked) {
  // 4 ranks, 1e9-byte shards, 100 ms: size 4e9 B, algbw 40 GB/s, busbw 40 * 3/4 = 30 GB/s.
  EXPECT_DOUBLE_EQ(bench::allgather_busbw_gbps(1e9, 4, 100.0), 30.0);
  // 2 ranks, 5e8-byte shards, 10 ms: size 1e9 B, algbw 100 GB/s, busbw 50 GB/s.
  EXPECT_DOUBLE_EQ(bench::allgather_busbw_gbps(5e8, 2, 10.0), 50.0);
  // 8 ranks, 512 MiB shards, 20 ms: busbw = 7 * 536870912 / 0.02 / 1e9 = 187.904819 GB/s.
  EXPECT_NEAR(bench::allgather_busbw_gbps(536870912.0, 8, 20.0), 187.9048192, 1e-6);
  // One rank moves nothing.
  EXPECT_DOUBLE_EQ(bench::allgather_busbw_gbps(1e9, 1, 5.0), 0.0);
  EXPECT_THROW(bench::allgather_busbw_gbps(1e9, 4, 0.0), Error);
  EXPECT_THROW(bench::allgather_busbw_gbps(1e9, 0, 1.0), Error);
}

TEST(BenchRing, LayoutOption) {
  EXPECT_EQ(parse({}).layout, "zigzag");
  EXPECT_EQ(parse({"-o", "ring", "--layout", "striped"}).layout, "striped");
  EXPECT_EQ(parse({"-o", "ring", "--layout", "contiguous"}).layout, "contiguous");
  try {
    parse({"-o", "ring", "--layout", "diagonal"});
    ADD_FAILURE() << "no distattn::Error for --layout diagonal";
  } catch (const Error& e) {
    EXPECT_NE(e.argument().find("layout"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace distattn
