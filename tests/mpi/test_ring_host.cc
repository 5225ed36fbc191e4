// Ring attention on CPU ranks (MpiCommunicator + host engine) against the single-process host engine
// on the full sequence. Run under mpirun -np 1..4.
//
// Every rank draws the SAME full Q, K, V, dO (same seed), computes the fp64 reference on the full
// sequence, takes its shard, runs the ring, and compares its shard of O, LSE, dQ, dK, dV with the
// reference's shard. The ring keeps O, LSE and the gradients in fp32 between steps (the engine
// contract's accumulate mode), so the bound is fp32 rounding, not fp64: see kTol below.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "distattn/comm/mpi_communicator.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/rope.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/ring/schedule.h"
#include "distattn/ring/shard.h"
#include "mpi_gtest_main.h"
#include "ring_test_util.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

using ring::GradTravel;
using ring::RingAttention;
using ring::RingConfig;
using ring::ShardLayout;

constexpr double kCommTimeout = 30.0;  // a hang in a passing test becomes an Error well before CTest's TIMEOUT

struct Case {
  ShardLayout layout;
  int64_t rows_per_chunk;  // contiguous/striped: S = P * rows; zigzag: S = 2P * rows
  int64_t B, Hq, Hkv, D;
  Mask mask;
  bool alibi;
  float scale = 0.f;
  GradTravel travel = GradTravel::kFloat32;
  bool rope = false;  // RoPE on global positions: the full Q, K for the reference, each shard with its map
  // With rope: RingConfig::rope (the ring rotates the shards itself, and dq, dk back) instead of the caller's
  // rotation; the reference's dQ, dK are then rotated back too (gradients w.r.t. the unrotated inputs).
  bool rope_in_ring = false;
  std::string name() const {
    std::string n = std::string(ring::layout_name(layout)) + (mask.causal ? "/causal" : "/full");
    if (mask.window > 0) n += "/window" + std::to_string(mask.window);
    if (alibi) n += "/alibi";
    n += "/Hq" + std::to_string(Hq) + "Hkv" + std::to_string(Hkv) + "D" + std::to_string(D);
    if (travel == GradTravel::kBFloat16) n += "/bf16-grads";
    if (rope) n += rope_in_ring ? "/rope-in-ring" : "/rope";
    return n;
  }
};

int64_t global_len(const Case& c, int P) { return (c.layout == ShardLayout::kZigzag ? 2 * P : P) * c.rows_per_chunk; }
// The worst errors of one case on this rank, reduced over ranks for the report.
struct CaseErrors {
  double o = 0, lse = 0, dq = 0, dk = 0, dv = 0;
};

CaseErrors run_case(const Case& c, uint64_t seed) {
  const int P = mpi_size(), r = mpi_rank();
  const int64_t S = global_len(c, P);
  SCOPED_TRACE(::testing::Message() << c.name() << " S=" << S << " P=" << P << " rank " << r << " seed " << seed);

  // Full inputs, identical on every rank (same seed). Strided (padded) full tensors on purpose.
  HostTensor Q(DType::kFloat64, c.B, S, c.Hq, c.D, 3, 5), K(DType::kFloat64, c.B, S, c.Hkv, c.D, 1, 2),
      V(DType::kFloat64, c.B, S, c.Hkv, c.D), dO(DType::kFloat64, c.B, S, c.Hq, c.D);
  fill_normal(Q, seed + 1);
  fill_normal(K, seed + 2);
  fill_normal(V, seed + 3);
  fill_normal(dO, seed + 4);
  // This rank's shards of the (unrotated) inputs.
  HostTensor q = shard_of(Q, c.layout, P, r), k = shard_of(K, c.layout, P, r), v = shard_of(V, c.layout, P, r),
             dout = shard_of(dO, c.layout, P, r);
  RopeConfig rc;
  rc.head_dim = c.D;
  rc.rotary_dim = c.rope_in_ring ? c.D / 2 : 0;  // the ring's own rotation also with partial rotary
  const RopeFrequencies fr = c.rope ? make_rope_frequencies(rc) : RopeFrequencies{};
  HostTensor q_rotated;  // with rope_in_ring: this rank's shard of the rotated Q (what q must hold after the forward)
  if (c.rope) {
    // RoPE applied once before the ring: the reference rotates the full Q, K with positions 0..S-1,
    // each rank rotates its shards with the shard's global positions (K travels rotated).
    RopeParams rp;
    rp.rotary_dim = rc.rotary_dim;
    rp.inv_freq = fr.inv_freq.data();
    rp.scale = fr.scale;
    rp.q = Q.view;
    rp.k = K.view;
    rp.q_pos = rp.k_pos = PositionMap::contiguous(0, S);
    rope_apply_host(rp);
    if (c.rope_in_ring) {
      q_rotated = shard_of(Q, c.layout, P, r);
    } else {
      rp.q = q.view;
      rp.k = k.view;
      rp.q_pos = rp.k_pos = ring::shard_positions(c.layout, S, P, r);
      rope_apply_host(rp);
    }
  }
  std::vector<float> slopes;
  if (c.alibi) {
    for (int64_t h = 0; h < c.Hq; ++h) slopes.push_back(std::pow(2.f, -8.f * (h + 1) / c.Hq));
  }

  // Reference: single process, full sequence, fp64.
  HostTensor O_ref(DType::kFloat64, c.B, S, c.Hq, c.D), dQ_ref(DType::kFloat64, c.B, S, c.Hq, c.D),
      dK_ref(DType::kFloat64, c.B, S, c.Hkv, c.D), dV_ref(DType::kFloat64, c.B, S, c.Hkv, c.D);
  std::vector<float> lse_ref(static_cast<size_t>(c.B * c.Hq * S));
  AttnParams p;
  p.q = Q.view;
  p.k = K.view;
  p.v = V.view;
  p.o = O_ref.view;
  p.lse = lse_ref.data();
  p.q_pos = PositionMap::contiguous(0, S);
  p.kv_pos = PositionMap::contiguous(0, S);
  p.mask = c.mask;
  p.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  p.softmax_scale = c.scale;
  host_attention_forward(p);
  AttnBwdParams bp;
  bp.fwd = p;
  bp.dout = dO.view;
  bp.dq = dQ_ref.view;
  bp.dk = dK_ref.view;
  bp.dv = dV_ref.view;
  host_attention_backward(bp);
  if (c.rope && c.rope_in_ring) {  // the ring returns gradients w.r.t. the unrotated q, k: rotate the reference's back
    RopeParams rp;
    rp.rotary_dim = rc.rotary_dim;
    rp.inv_freq = fr.inv_freq.data();
    rp.scale = fr.scale;
    rp.q = dQ_ref.view;
    rp.k = dK_ref.view;
    rp.q_pos = rp.k_pos = PositionMap::contiguous(0, S);
    rp.inverse = true;
    rope_apply_host(rp);
  }

  // The ring.
  MpiCommunicator comm(MPI_COMM_WORLD, kCommTimeout);
  RingConfig cfg;
  cfg.layout = c.layout;
  cfg.seq_len = S;
  cfg.batch = c.B;
  cfg.q_heads = c.Hq;
  cfg.kv_heads = c.Hkv;
  cfg.head_dim = c.D;
  cfg.dtype = DType::kFloat64;
  cfg.mask = c.mask;
  cfg.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  cfg.softmax_scale = c.scale;
  cfg.grad_travel = c.travel;
  if (c.rope && c.rope_in_ring) {
    cfg.rope.inv_freq = fr.inv_freq.data();
    cfg.rope.rotary_dim = rc.rotary_dim;
    cfg.rope.scale = fr.scale;
  }
  RingAttention ra(comm, cfg);
  EXPECT_EQ(ra.local_rows(), S / P);

  const int64_t Sl = S / P;
  HostTensor o(DType::kFloat64, c.B, Sl, c.Hq, c.D, 0, 1);  // padded output rows: strides honoured
  fill_nan(o);
  std::vector<float> lse(static_cast<size_t>(c.B * c.Hq * Sl), std::numeric_limits<float>::quiet_NaN());
  ra.forward(q.view, k.view, v.view, o.view, lse.data());
  if (c.rope && c.rope_in_ring) {  // q rotated in place at the shard's global positions: the full rotation's rows
    const ErrorStats sr = compare(q.view, q_rotated.view);
    EXPECT_EQ(sr.non_finite, 0);
    EXPECT_EQ(sr.max_abs, 0.0) << "q after the forward is not the shard of the rotated Q: " << sr.str();
  }

  CaseErrors err;
  const HostTensor o_ref = shard_of(O_ref, c.layout, P, r);
  const ErrorStats so = compare(o.view, o_ref.view);
  std::vector<float> lse_ref_local(lse.size());
  ring::shard_lse_host(lse_ref.data(), lse_ref_local.data(), c.B, c.Hq, c.layout, S, P, r);
  const std::vector<double> lse_ref_d(lse_ref_local.begin(), lse_ref_local.end());
  const ErrorStats sl = compare_flat(lse.data(), lse_ref_d.data(), static_cast<int64_t>(lse.size()));

  // Backward from the reference's O and LSE (the complete forward), so its error is its own.
  HostTensor dq(DType::kFloat64, c.B, Sl, c.Hq, c.D), dk(DType::kFloat64, c.B, Sl, c.Hkv, c.D, 2, 0),
      dv(DType::kFloat64, c.B, Sl, c.Hkv, c.D);
  fill_nan(dq);
  fill_nan(dk);
  fill_nan(dv);
  ra.backward(dout.view, q.view, k.view, v.view, o_ref.view, lse_ref_local.data(), dq.view, dk.view, dv.view);
  const HostTensor dq_ref = shard_of(dQ_ref, c.layout, P, r), dk_ref = shard_of(dK_ref, c.layout, P, r),
                   dv_ref = shard_of(dV_ref, c.layout, P, r);
  const ErrorStats sq = compare(dq.view, dq_ref.view), sk = compare(dk.view, dk_ref.view),
                   sv = compare(dv.view, dv_ref.view);

  // Bounds. O: each step's block result and the running accumulator are rounded to fp32 once per merge
  // (relative 2^-24 each); a few merges per row, values O(1): 8 * P * 2^-24 * max|O| is generous yet
  // 10^5 times below any real defect (a wrong shard or position shifts O by O(1)). LSE: fp32 storage of
  // a value of size ~log S + max score. Gradients: fp32 accumulation across P steps of sums over S rows;
  // bf16 travel: rounded to 2^-9 at every hop.
  const double eps = c.travel == GradTravel::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24);
  const double f32 = std::ldexp(1.0, -24);
  const double tol_o = 8.0 * (P + 1) * f32 * std::max(1.0, max_abs_value(o_ref.view));
  const double tol_lse = 8.0 * (P + 1) * f32 * 16.0;
  const double tol_dq = 16.0 * (P + 1) * f32 * std::max(1.0, max_abs_value(dq_ref.view));
  const double tol_dk = 16.0 * (P + 1) * eps * std::max(1.0, max_abs_value(dk_ref.view));
  const double tol_dv = 16.0 * (P + 1) * eps * std::max(1.0, max_abs_value(dv_ref.view));
  EXPECT_EQ(so.non_finite, 0) << "O: " << so.str();
  EXPECT_LE(so.max_abs, tol_o) << "O: " << so.str();
  EXPECT_EQ(sl.non_finite, 0) << "LSE: " << sl.str();
  EXPECT_LE(sl.max_abs, tol_lse) << "LSE: " << sl.str();
  EXPECT_EQ(sq.non_finite, 0) << "dQ: " << sq.str();
  EXPECT_LE(sq.max_abs, tol_dq) << "dQ: " << sq.str();
  EXPECT_EQ(sk.non_finite, 0) << "dK: " << sk.str();
  EXPECT_LE(sk.max_abs, tol_dk) << "dK: " << sk.str();
  EXPECT_EQ(sv.non_finite, 0) << "dV: " << sv.str();
  EXPECT_LE(sv.max_abs, tol_dv) << "dV: " << sv.str();
  err = CaseErrors{so.max_abs, sl.max_abs, sq.max_abs, sk.max_abs, sv.max_abs};
  return err;
}

void run_and_report(const Case& c) {
  const uint64_t seed = test_seed() + 1000 * static_cast<uint64_t>(c.layout) + 7 * c.Hkv;
  CaseErrors e = run_case(c, seed);
  double mine[5] = {e.o, e.lse, e.dq, e.dk, e.dv}, worst[5];
  MPI_Allreduce(mine, worst, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (mpi_rank() == 0) {
    std::printf("[ring P=%d] %-48s seed %llu  max|err| O %.2e  LSE %.2e  dQ %.2e  dK %.2e  dV %.2e\n", mpi_size(),
                c.name().c_str(), static_cast<unsigned long long>(seed), worst[0], worst[1], worst[2], worst[3],
                worst[4]);
  }
}

// Every layout x {none, causal, causal window, two-sided window} x {ALiBi or not}; GQA Hq=4, Hkv=2;
// odd local lengths (contiguous/striped: 7 rows per rank; zigzag: chunks of 3, 6 rows per rank).
// Windows of 5 rows span rank boundaries; with contiguous shards and P >= 3 some steps are fully masked
// (skipped while the buffer is still forwarded).
class RingHostLayouts : public ::testing::TestWithParam<ShardLayout> {};

TEST_P(RingHostLayouts, ForwardBackwardMatchSingleProcess) {
  const ShardLayout layout = GetParam();
  const int64_t rows = layout == ShardLayout::kZigzag ? 3 : 7;
  const Mask masks[4] = {Mask::none(), Mask::make_causal(), Mask::make_causal(5), Mask::make_window(5)};
  for (const Mask& m : masks) {
    for (bool alibi : {false, true}) {
      run_and_report(Case{layout, rows, 2, 4, 2, 16, m, alibi});
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, RingHostLayouts,
                         ::testing::Values(ShardLayout::kContiguous, ShardLayout::kZigzag, ShardLayout::kStriped),
                         [](const ::testing::TestParamInfo<ShardLayout>& i) {
                           return std::string(ring::layout_name(i.param));
                         });

TEST(RingHost, MqaOddHeadDimCustomScale) {
  Case c{ShardLayout::kZigzag, 5, 1, 3, 1, 13, Mask::make_causal(), true};
  c.scale = 0.37f;
  run_and_report(c);
  c.layout = ShardLayout::kStriped;
  c.mask = Mask::make_window(9);
  run_and_report(c);
}

TEST(RingHost, RopeOnGlobalPositionsEveryLayout) {
  for (ShardLayout layout : {ShardLayout::kContiguous, ShardLayout::kZigzag, ShardLayout::kStriped}) {
    Case c{layout, layout == ShardLayout::kZigzag ? int64_t{3} : int64_t{5}, 1, 4, 2, 16, Mask::make_causal(), true};
    c.rope = true;
    run_and_report(c);
  }
}

// RingConfig::rope on the host engine: the ring rotates the shards itself (partial rotary) and returns dq, dk rotated
// back; against the reference on the full sequence whose dQ, dK are rotated back likewise.
TEST(RingHost, RopeInsideTheRingEveryLayout) {
  for (ShardLayout layout : {ShardLayout::kContiguous, ShardLayout::kZigzag, ShardLayout::kStriped}) {
    Case c{layout, layout == ShardLayout::kZigzag ? int64_t{3} : int64_t{5}, 1, 4, 2, 16, Mask::make_causal(), false};
    c.rope = true;
    c.rope_in_ring = true;
    run_and_report(c);
    c.mask = Mask::none();
    c.alibi = true;
    run_and_report(c);
  }
}

TEST(RingHost, MessagesPastTheEagerLimit) {
  // 256 KiB K|V messages per step: MPI's rendezvous protocol, which progresses only inside MPI calls.
  run_and_report(Case{ShardLayout::kZigzag, 32, 1, 8, 8, 32, Mask::make_causal(), false});
}

TEST(RingHost, Bf16GradientTravel) {
  Case c{ShardLayout::kZigzag, 4, 1, 4, 2, 16, Mask::make_causal(), false};
  c.travel = GradTravel::kBFloat16;
  run_and_report(c);
}

TEST(RingHost, ScheduleSkipsOnlyFullyMaskedSteps) {
  // Causal contiguous: rank r computes exactly the steps whose source rank is <= r; zigzag: every step.
  const int P = mpi_size(), r = mpi_rank();
  const ring::RingSchedule c = ring::make_schedule(ShardLayout::kContiguous, 8 * P, P, r, Mask::make_causal());
  EXPECT_EQ(c.computed_steps(), r + 1);
  for (const ring::RingStep& st : c.steps) {
    EXPECT_EQ(st.kv_rank, ((r - st.step) % P + P) % P);
    EXPECT_EQ(st.skipped(), st.kv_rank > r) << "step " << st.step;
  }
  const ring::RingSchedule z = ring::make_schedule(ShardLayout::kZigzag, 8 * P, P, r, Mask::make_causal());
  EXPECT_EQ(z.computed_steps(), P);
}

TEST(RingShard, PositionsPartitionTheSequenceAndRoundTrip) {
  const int P = mpi_size();
  for (ShardLayout layout : {ShardLayout::kContiguous, ShardLayout::kZigzag, ShardLayout::kStriped}) {
    const int64_t S = 2 * P * 3;
    std::vector<int> seen(static_cast<size_t>(S), 0);
    HostTensor full(DType::kFloat32, 2, S, 3, 4), back(DType::kFloat32, 2, S, 3, 4);
    fill_normal(full, test_seed());
    fill_nan(back);
    for (int r = 0; r < P; ++r) {
      const PositionMap m = ring::shard_positions(layout, S, P, r);
      ASSERT_EQ(m.length(), S / P);
      for (int64_t i = 0; i < m.length(); ++i) ++seen[static_cast<size_t>(m.position(i))];
      HostTensor local(DType::kFloat32, 2, S / P, 3, 4);
      ring::shard_host(full.view, local.view, layout, P, r);
      ring::unshard_host(local.view, back.view, layout, P, r);
    }
    for (int64_t g = 0; g < S; ++g) EXPECT_EQ(seen[static_cast<size_t>(g)], 1) << ring::layout_name(layout) << " " << g;
    const ErrorStats st = compare(back.view, full.view);
    EXPECT_EQ(st.max_abs, 0.0) << st.str();
    EXPECT_EQ(st.non_finite, 0);
  }
}

}  // namespace
}  // namespace testing
}  // namespace distattn

int main(int argc, char** argv) { return distattn::testing::run_mpi_gtests(argc, argv); }
