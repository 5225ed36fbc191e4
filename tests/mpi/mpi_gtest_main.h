// main() for the multi-rank test programs (label mpi): MPI lifetime, rank-tagged failure output, and a
// verdict every rank agrees on.
//
// - MPI_Init_thread, MPI_ERRORS_RETURN on MPI_COMM_WORLD (a failing call returns instead of aborting).
// - Rank 0 keeps GoogleTest's normal output; every rank prints its own failures as
//   "[rank r] FAILURE in Suite.Test at file:line: ..." so the failing rank is named.
// - Each test ends with an MPI_Allreduce of its pass/fail (bounded: if a peer never arrives, the job's
//   CTest TIMEOUT fails it) so all ranks agree which tests failed; the exit code is non-zero on every
//   rank if any rank failed any test.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

namespace distattn {
namespace testing {

inline int mpi_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int mpi_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

class RankListener : public ::testing::EmptyTestEventListener {
 public:
  explicit RankListener(int rank) : rank_(rank) {}
  // The test's name is remembered here: calling UnitTest::current_test_info() from OnTestPartResult
  // would deadlock (gtest holds its mutex while it reports a part result).
  void OnTestStart(const ::testing::TestInfo& info) override {
    current_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] FAILURE in %s at %s:%d:\n%s\n", rank_, current_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
    std::fflush(stderr);
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    // Every rank learns whether any rank failed this test.
    int mine = info.result()->Failed() ? 1 : 0, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any && rank_ == 0) {
      std::fprintf(stderr, "[rank 0] test %s.%s failed on at least one rank (see [rank r] lines)\n",
                   info.test_suite_name(), info.name());
    }
    failed_any_ |= any != 0;
  }
  bool failed_any() const { return failed_any_; }

 private:
  int rank_;
  std::string current_;
  bool failed_any_ = false;
};

inline int run_mpi_gtests(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = mpi_rank();
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());  // rank 0 prints the run
  RankListener* listener = new RankListener(rank);
  listeners.Append(listener);  // owned by gtest
  const int local = RUN_ALL_TESTS();
  int mine = (local != 0 || listener->failed_any()) ? 1 : 0, any = 0;
  MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) std::fprintf(stderr, "[rank 0] %d ranks: %s\n", mpi_size(), any ? "FAILED" : "all passed");
  MPI_Finalize();
  return any ? 1 : 0;
}

}  // namespace testing
}  // namespace distattn
