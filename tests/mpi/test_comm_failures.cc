// The MPI communicator and the ring's failure paths under mpirun -np 1..4:
//   - exchange / all-gather / reduce-scatter / split give the right bytes;
//   - ranks that disagree on the ring configuration, a rank with an invalid layout, a rank with a bad
//     shard: EVERY rank gets a distattn::Error naming the rank and the field (asserted on every rank);
//   - a rank that never joins a step: the others get a timeout Error naming the operation and the step
//     (short timeout), and the broken communicator refuses later calls instead of hanging.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "distattn/comm/mpi_communicator.h"
#include "distattn/core/error.h"
#include "distattn/ring/ring_attention.h"
#include "mpi_gtest_main.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

using ring::RingAttention;
using ring::RingConfig;
using ring::ShardLayout;

constexpr double kCommTimeout = 30.0;  // for tests that must not time out
constexpr double kShortTimeout =
    2.0;  // for tests that must (long enough that a loaded CI machine never times out a legitimate step)

// Runs `body`, expecting a distattn::Error whose what() contains every string in `needles`.
template <typename Body>
void expect_error_containing(Body body, const std::vector<std::string>& needles, const char* what) {
  try {
    body();
    ADD_FAILURE() << what << ": expected a distattn::Error on rank " << mpi_rank() << ", got none";
  } catch (const Error& e) {
    const std::string text = e.what();
    if (mpi_rank() == 0 || mpi_rank() == mpi_size() - 1)
      std::printf("[rank %d] %s -> %s\n", mpi_rank(), what, e.what());
    for (const std::string& n : needles) {
      EXPECT_NE(text.find(n), std::string::npos)
          << what << ": the Error on rank " << mpi_rank() << " does not name '" << n << "': " << text;
    }
  }
}

RingConfig small_config(int P) {
  RingConfig cfg;
  cfg.layout = ShardLayout::kZigzag;
  cfg.seq_len = 2 * P * 3;
  cfg.batch = 1;
  cfg.q_heads = 4;
  cfg.kv_heads = 2;
  cfg.head_dim = 8;
  cfg.dtype = DType::kFloat64;
  cfg.mask = Mask::make_causal();
  return cfg;
}

// A rank's fp64 shard of Sl rows for a ring of small_config: q [1, Sl, 4, 8], k and v [1, Sl, 2, 8] drawn with seeds
// test_seed() + 0, 1, 2; o like q and lse [4 * Sl] allocated, not filled.
struct SmallShard {
  HostTensor q, k, v, o;
  std::vector<float> lse;
  explicit SmallShard(int64_t Sl)
      : q(DType::kFloat64, 1, Sl, 4, 8),
        k(DType::kFloat64, 1, Sl, 2, 8),
        v(DType::kFloat64, 1, Sl, 2, 8),
        o(DType::kFloat64, 1, Sl, 4, 8),
        lse(static_cast<size_t>(4 * Sl)) {
    fill_normal(q, test_seed());
    fill_normal(k, test_seed() + 1);
    fill_normal(v, test_seed() + 2);
  }
};

TEST(MpiComm, ExchangeAllGatherReduceScatterSplit) {
  const int P = mpi_size(), r = mpi_rank();
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  EXPECT_EQ(comm.rank(), r);
  EXPECT_EQ(comm.size(), P);
  EXPECT_EQ(comm.device(), Device::kHost);
  // Ring exchange, several steps with two in flight: after step s, rank r holds rank (r - s - 1)'s payload.
  std::vector<int> a(1000, r), b(1000, -1);
  for (int s = 0; s < P + 1; ++s) {
    ExchangeTicket t = comm.post_exchange("test exchange", s, a.data(), b.data(), a.size() * sizeof(int));
    comm.wait_exchange(t);
    const int want = ((r - s - 1) % P + P) % P;
    ASSERT_EQ(b.front(), want) << "step " << s;
    ASSERT_EQ(b.back(), want) << "step " << s;
    a.swap(b);
  }
  // All-gather of 3 ints per rank.
  const int mine[3] = {r, 10 * r, -r};
  std::vector<int> all(static_cast<size_t>(3 * P), -7);
  comm.all_gather("test all_gather", mine, all.data(), sizeof(mine));
  for (int q = 0; q < P; ++q) {
    EXPECT_EQ(all[3 * q], q);
    EXPECT_EQ(all[3 * q + 1], 10 * q);
    EXPECT_EQ(all[3 * q + 2], -q);
  }
  // Reduce-scatter (sum) of fp64: element j of block q is (q + 1) * (rank + 1) * (j + 1) on each rank.
  const int count = 5;
  std::vector<double> send(static_cast<size_t>(count * P)), recv(count, -1.0);
  for (int q = 0; q < P; ++q)
    for (int j = 0; j < count; ++j) send[q * count + j] = (q + 1.0) * (r + 1.0) * (j + 1.0);
  comm.reduce_scatter("test reduce_scatter", send.data(), recv.data(), count, DType::kFloat64);
  const double rank_sum = P * (P + 1) / 2.0;
  for (int j = 0; j < count; ++j) EXPECT_EQ(recv[j], (r + 1.0) * rank_sum * (j + 1.0)) << j;
  expect_error_containing([&] { comm.reduce_scatter("bf16", send.data(), recv.data(), 1, DType::kBFloat16); },
                          {"dtype"}, "bf16 MPI reduce-scatter");
  // Split into even and odd ranks; the child's ring exchange stays inside the group.
  std::unique_ptr<Communicator> sub = comm.split(r % 2, r);
  const int sub_size = (P - r % 2 + 1) / 2;
  EXPECT_EQ(sub->size(), sub_size);
  EXPECT_EQ(sub->rank(), r / 2);
  int x = r, y = -1;
  ExchangeTicket t = sub->post_exchange("sub exchange", 0, &x, &y, sizeof(int));
  sub->wait_exchange(t);
  const int prev_in_group = (sub->prev()) * 2 + r % 2;
  EXPECT_EQ(y, prev_in_group);
}

TEST(MpiComm, TimeoutFromEnvironmentAndSetter) {
  const char* old = std::getenv("DISTATTN_COMM_TIMEOUT_S");
  const std::string saved = old ? old : "";
  setenv("DISTATTN_COMM_TIMEOUT_S", "2.5", 1);
  EXPECT_EQ(default_comm_timeout_s(), 2.5);
  {
    MpiCommunicator comm(MPI_COMM_WORLD);  // no explicit timeout: the environment's
    EXPECT_EQ(comm.timeout_s(), 2.5);
    comm.set_timeout_s(7.0);
    EXPECT_EQ(comm.timeout_s(), 7.0);
    expect_error_containing([&] { comm.set_timeout_s(-1.0); }, {"timeout_s"}, "negative timeout");
  }
  setenv("DISTATTN_COMM_TIMEOUT_S", "soon", 1);
  expect_error_containing([] { default_comm_timeout_s(); }, {"DISTATTN_COMM_TIMEOUT_S", "soon"}, "malformed env");
  if (old) {
    setenv("DISTATTN_COMM_TIMEOUT_S", saved.c_str(), 1);
  } else {
    unsetenv("DISTATTN_COMM_TIMEOUT_S");
  }
  EXPECT_EQ(default_comm_timeout_s(), old ? std::atof(saved.c_str()) : 300.0);
}

TEST(MpiComm, FingerprintDisagreementNamesFieldAndRankOnEveryRank) {
  const int P = mpi_size(), r = mpi_rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  ConfigFingerprint fp;
  fp.add("seq_len", 96).add("heads", r == P - 1 ? 8 : 4);
  expect_error_containing([&] { comm.check_agreement(fp, "test"); },
                          {"heads", "rank " + std::to_string(P - 1) + " has 8", "others have 4"}, "heads disagreement");
  // The communicator stays usable after a disagreement (nothing was left in flight).
  ConfigFingerprint same;
  same.add("seq_len", 96);
  EXPECT_NO_THROW(comm.check_agreement(same, "test"));
}

TEST(RingFailures, DisagreeingConfigsFailOnEveryRank) {
  const int P = mpi_size(), r = mpi_rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  const std::string last = "rank " + std::to_string(P - 1);
  {  // kv heads
    RingConfig cfg = small_config(P);
    if (r == P - 1) cfg.kv_heads = 1;
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"kv_heads", last}, "kv_heads");
  }
  {  // sequence length (valid on its own on every rank: shards of different sizes)
    RingConfig cfg = small_config(P);
    if (r == P - 1) cfg.seq_len *= 2;
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"seq_len", last}, "seq_len");
  }
  {  // dtype
    RingConfig cfg = small_config(P);
    if (r == P - 1) cfg.dtype = DType::kFloat32;
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"dtype", last}, "dtype");
  }
  {  // mask
    RingConfig cfg = small_config(P);
    if (r == P - 1) cfg.mask = Mask::none();
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"mask.causal", last}, "mask");
  }
  {  // ALiBi slopes with different values
    RingConfig cfg = small_config(P);
    std::vector<float> slopes(4, 0.5f);
    if (r == P - 1) slopes[2] = 0.25f;
    cfg.alibi_slopes = slopes.data();
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"alibi_slopes", last}, "alibi slopes");
  }
  {  // RoPE frequencies with different values (a hash of inv_freq), and RoPE on one rank only
    RingConfig cfg = small_config(P);
    std::vector<float> freq(static_cast<size_t>(cfg.head_dim / 2), 0.01f);
    if (r == P - 1) freq[1] = 0.02f;
    cfg.rope.inv_freq = freq.data();
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"rope.inv_freq", last}, "rope frequencies");
    freq[1] = 0.01f;
    if (r == P - 1) cfg.rope.scale = 1.5f;
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"rope.scale", last}, "rope scale");
    cfg.rope.scale = 1.f;
    if (r == P - 1) cfg.rope.inv_freq = nullptr;
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"rope", last}, "rope on one rank");
  }
  {  // a bad RoPE field on one rank: every rank gets the Error naming it
    RingConfig cfg = small_config(P);
    std::vector<float> freq(static_cast<size_t>(cfg.head_dim), 0.01f);
    cfg.rope.inv_freq = freq.data();
    if (r == P - 1) cfg.rope.rotary_dim = cfg.head_dim + 2;
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"rope.rotary_dim"}, "rope rotary dim");
    cfg.rope.rotary_dim = 0;
    if (r == P - 1) freq[3] = std::nanf("");
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"rope.inv_freq", "entry 3"}, "rope NaN frequency");
  }
  {  // the backward's own-step split (an environment switch that changes the size of the home hop)
    const char* old = std::getenv("DISTATTN_RING_BWD_OWN");
    const std::string saved = old ? old : "";
    if (r == P - 1) setenv("DISTATTN_RING_BWD_OWN", "split", 1);
    expect_error_containing([&] { RingAttention ra(comm, small_config(P)); }, {"DISTATTN_RING_BWD_OWN", last},
                            "DISTATTN_RING_BWD_OWN");
    setenv("DISTATTN_RING_BWD_OWN", r == P - 1 ? "halves" : "whole", 1);  // a bad value on one rank
    expect_error_containing([&] { RingAttention ra(comm, small_config(P)); }, {"DISTATTN_RING_BWD_OWN", "halves"},
                            "bad DISTATTN_RING_BWD_OWN");
    if (old) {
      setenv("DISTATTN_RING_BWD_OWN", saved.c_str(), 1);
    } else {
      unsetenv("DISTATTN_RING_BWD_OWN");
    }
  }
}

// RingConfig::rope rotates q and k in place: on one rank k is a view of q's first heads (fine for a plain forward,
// which only reads them), and every rank gets the Error naming "k" before anything is rotated.
TEST(RingFailures, RopeOperandsThatOverlapFailOnEveryRank) {
  const int P = mpi_size(), r = mpi_rank();
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  RingConfig cfg = small_config(P);
  std::vector<float> freq(static_cast<size_t>(cfg.head_dim / 2), 0.01f);
  cfg.rope.inv_freq = freq.data();
  RingAttention ra(comm, cfg);
  SmallShard sh(ra.local_rows());
  std::vector<unsigned char> q_bytes(sh.q.storage.begin(), sh.q.storage.end());
  TensorView k = sh.k.view;
  if (r == P - 1) k = sh.q.view.head_range(0, 2);  // k on top of q's heads 0-1
  expect_error_containing([&] { ra.forward(sh.q.view, k, sh.v.view, sh.o.view, sh.lse.data()); },
                          {"'k'", "overlaps q", "rank " + std::to_string(P - 1)}, "k on top of q");
  EXPECT_TRUE(std::equal(q_bytes.begin(), q_bytes.end(), sh.q.storage.begin())) << "q was rotated before the Error";
}

TEST(RingFailures, LayoutThatCannotSplitFailsOnEveryRank) {
  const int P = mpi_size(), r = mpi_rank();
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  {  // every rank: zigzag needs a multiple of 2P
    RingConfig cfg = small_config(P);
    cfg.seq_len = 2 * P * 3 + P;
    expect_error_containing([&] { RingAttention ra(comm, cfg); }, {"seq_len", "zigzag", "multiple of"}, "zigzag S");
  }
  if (P >= 2) {  // one rank only: the others learn about it too
    RingConfig cfg = small_config(P);
    cfg.layout = ShardLayout::kContiguous;
    if (r == P - 1) cfg.seq_len = 2 * P * 3 + 1;
    expect_error_containing([&] { RingAttention ra(comm, cfg); },
                            {"seq_len", "rank " + std::to_string(P - 1) + " rejected", "contiguous"}, "one rank's S");
  }
}

TEST(RingFailures, BadShardOnOneRankFailsOnEveryRank) {
  const int P = mpi_size(), r = mpi_rank();
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  const RingConfig cfg = small_config(P);
  RingAttention ra(comm, cfg);
  const int64_t Sl = ra.local_rows();
  SmallShard sh(Sl);
  HostTensor &q = sh.q, &k = sh.k, &v = sh.v, &o = sh.o;
  std::vector<float>& lse = sh.lse;
  fill_nan(o);
  const int bad = P - 1;
  TensorView qv = q.view;
  if (r == bad) qv.shape[1] = Sl - 1;  // a shorter shard on one rank
  expect_error_containing([&] { ra.forward(qv, k.view, v.view, o.view, lse.data()); },
                          {"rank " + std::to_string(bad) + " rejected", "'q'"}, "short q shard");
  TensorView kv = k.view;
  if (r == bad) kv.dtype = DType::kFloat32;  // mismatched dtype on one rank
  expect_error_containing([&] { ra.forward(q.view, kv, v.view, o.view, lse.data()); },
                          {"rank " + std::to_string(bad) + " rejected", "'k'", "dtype"}, "k dtype");
  // Nothing was written: o is still poisoned.
  for (int64_t i = 0; i < Sl; ++i) EXPECT_TRUE(std::isnan(o.get(0, i, 0, 0)));
  // And the same object still works when every rank's input is right.
  EXPECT_NO_THROW(ra.forward(q.view, k.view, v.view, o.view, lse.data()));
  EXPECT_FALSE(std::isnan(o.get(0, 0, 0, 0)));
}

TEST(RingFailures, RankThatSkipsAStepMakesTheOthersTimeOut) {
  const int P = mpi_size(), r = mpi_rank();
  if (P < 2) GTEST_SKIP() << "needs 2 ranks";
  const int skipper = P - 1;
  {
    MpiCommunicator comm(MPI_COMM_WORLD, kShortTimeout);
    std::vector<char> a(64, static_cast<char>(r)), b(64);
    bool failed = false;
    std::string text;
    // Every rank runs steps 0..P; the skipper stops after step 0. Rank 0 (next after the skipper) times
    // out at step 1 waiting for it; each later rank times out one step later waiting for the rank before
    // it, which already gave up.
    for (int s = 0; s <= P && !failed; ++s) {
      if (r == skipper && s >= 1) break;
      try {
        ExchangeTicket t = comm.post_exchange("ring forward K|V exchange", s, a.data(), b.data(), a.size());
        comm.wait_exchange(t);
      } catch (const Error& e) {
        failed = true;
        text = e.what();
        std::printf("[rank %d] skipped step -> %s\n", r, e.what());
      }
    }
    if (r != skipper) {
      EXPECT_TRUE(failed) << "rank " << r << " should have timed out";
      EXPECT_NE(text.find("timed out"), std::string::npos) << text;
      EXPECT_NE(text.find("ring forward K|V exchange step " + std::to_string(r + 1)), std::string::npos) << text;
      EXPECT_NE(text.find("rank " + std::to_string((r + P - 1) % P)), std::string::npos) << text;
      EXPECT_NE(text.find("[rank " + std::to_string(r)), std::string::npos) << "names this rank: " << text;
      // Broken: later calls fail at once instead of waiting.
      expect_error_containing([&] { comm.post_exchange("later", 99, a.data(), b.data(), a.size()); },
                              {"broken", "later step 99"}, "broken communicator");
    } else {
      EXPECT_FALSE(failed);
    }
    MPI_Barrier(MPI_COMM_WORLD);  // everyone is past the failure before the communicator goes away
  }
  {  // The same through RingAttention: the skipper never calls forward.
    MpiCommunicator comm(MPI_COMM_WORLD, kShortTimeout);
    const RingConfig cfg = small_config(P);
    RingAttention ra(comm, cfg);
    SmallShard sh(ra.local_rows());
    HostTensor &q = sh.q, &k = sh.k, &v = sh.v, &o = sh.o;
    std::vector<float>& lse = sh.lse;
    if (r != skipper) {
      expect_error_containing([&] { ra.forward(q.view, k.view, v.view, o.view, lse.data()); },
                              {"RingAttention::forward", "timed out"}, "forward without the skipper");
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
