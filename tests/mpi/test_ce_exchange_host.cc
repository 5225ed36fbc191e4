// The copy-engine window decision without a GPU (comm/include/distattn/comm/ce_window.h): the switch's parsing, the
// refusal reasons (each naming the rank), the cyclic sequence comparison and the poison value, and the MPI
// backend's no-op windows (register_window -> -1, exchanges keep working on the window's buffers).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "distattn/comm/ce_window.h"
#include "distattn/comm/mpi_communicator.h"
#include "distattn/core/error.h"
#include "mpi_gtest_main.h"

namespace distattn {
namespace testing {
namespace {

TEST(CeWindowDecision, ParsesTheSwitch) {
  EXPECT_EQ(ce::parse_exchange_mode(nullptr), ce::ExchangeMode::kCopyEngine);
  EXPECT_EQ(ce::parse_exchange_mode(""), ce::ExchangeMode::kCopyEngine);
  EXPECT_EQ(ce::parse_exchange_mode("ce"), ce::ExchangeMode::kCopyEngine);
  EXPECT_EQ(ce::parse_exchange_mode("nccl"), ce::ExchangeMode::kNccl);
  EXPECT_STREQ(ce::exchange_mode_name(ce::ExchangeMode::kNccl), "nccl");
  EXPECT_STREQ(ce::exchange_mode_name(ce::ExchangeMode::kCopyEngine), "ce");
  for (const char* bad : {"CE", "nvlink", "ce ", "1"}) {
    try {
      ce::parse_exchange_mode(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), "DISTATTN_RING_EXCHANGE");
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

ce::RankFacts good() {
  ce::RankFacts f;
  f.wants_ce = f.memops = f.ipc = f.peers = 1;
  return f;
}

TEST(CeWindowDecision, RefusesNamingTheRank) {
  std::vector<ce::RankFacts> facts(4, good());
  EXPECT_EQ(ce::refusal(facts, 4), "");
  EXPECT_NE(ce::refusal(facts, 2).find("not on one node"), std::string::npos);
  EXPECT_EQ(ce::refusal(std::vector<ce::RankFacts>(1, good()), 1), "");  // one rank: local copies
  EXPECT_NE(ce::refusal({}, 0), "");
  struct Case {
    int rank;
    int32_t ce::RankFacts::*field;
    const char* words;
  };
  for (const Case& c : {Case{2, &ce::RankFacts::wants_ce, "DISTATTN_RING_EXCHANGE=nccl"},
                        Case{1, &ce::RankFacts::memops, "stream memory operations"},
                        Case{3, &ce::RankFacts::ipc, "IPC"}, Case{0, &ce::RankFacts::peers, "peer"}}) {
    std::vector<ce::RankFacts> f(4, good());
    f[static_cast<size_t>(c.rank)].*c.field = 0;
    const std::string why = ce::refusal(f, 4);
    EXPECT_NE(why.find("rank " + std::to_string(c.rank)), std::string::npos) << why;
    EXPECT_NE(why.find(c.words), std::string::npos) << why;
  }
  // The switch is reported first (a rank that asked for NCCL is not a failure of another rank's GPU).
  std::vector<ce::RankFacts> f(4, good());
  f[1].memops = 0;
  f[3].wants_ce = 0;
  EXPECT_NE(ce::refusal(f, 4).find("rank 3"), std::string::npos);
}

TEST(CeWindowDecision, CyclicSequenceAndPoison) {
  EXPECT_TRUE(ce::seq_reached(5, 5));
  EXPECT_TRUE(ce::seq_reached(6, 5));
  EXPECT_FALSE(ce::seq_reached(4, 5));
  EXPECT_TRUE(ce::seq_reached(2, 0xFFFFFFF0u));   // wrapped past the target
  EXPECT_FALSE(ce::seq_reached(0xFFFFFFF0u, 2));  // behind across the wrap
  EXPECT_FALSE(ce::seq_reached(0, 1));            // the initial flag satisfies no exchange (n starts at 1)
  for (uint32_t seq : {0u, 1u, 77u, 0x7FFFFFFFu, 0xFFFFFFFEu}) {
    const uint32_t p = ce::poison_value(seq);
    // Satisfies every pending wait (sequence numbers up to seq, within the last 2^30) ...
    for (uint32_t back : {0u, 1u, 1000u, (1u << 30) - 1}) EXPECT_TRUE(ce::seq_reached(p, seq - back)) << seq;
    EXPECT_NE(p, seq);
  }
}

TEST(CeWindowDecision, MpiBackendRegistersNothing) {
  const int P = mpi_size();
  MpiCommunicator comm(MPI_COMM_WORLD, 30.0);
  std::vector<double> buf(2 * 37, 0.0);
  const int id = comm.register_window(buf.data(), buf.size() * sizeof(double), "host window");
  EXPECT_EQ(id, -1);
  EXPECT_STREQ(comm.exchange_path(buf.data(), buf.data() + 37, 37 * sizeof(double)), "mpi");
  // Exchanges on the would-be window's buffers keep their path.
  for (int i = 0; i < 37; ++i) buf[static_cast<size_t>(i)] = 1000.0 * comm.rank() + i;
  ExchangeTicket t = comm.post_exchange("host exchange", 0, buf.data(), buf.data() + 37, 37 * sizeof(double));
  comm.wait_exchange(t);
  EXPECT_EQ(buf[37 + 5], 1000.0 * comm.prev() + 5);
  EXPECT_NO_THROW(comm.deregister_window(-1));
  try {
    comm.deregister_window(3);
    ADD_FAILURE() << "deregistered an unknown window";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "id");
  }
  try {
    comm.register_window(nullptr, 8, "host window");
    ADD_FAILURE() << "accepted a null window";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "base");
  }
  (void)P;
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
