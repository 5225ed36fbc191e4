// Shared pieces of the GPU ring tests under mpirun (test_ring_gpu.cc, test_ring_sparse_gpu.cc): the host references
// for this rank's q rows, the ring's forward and backward on poisoned outputs, the one-GPU run over the whole
// sequence, the error triples (ring / one GPU / naive) and their bounds, and the worst-over-ranks error columns of
// the table line each test prints. Every MPI and CUDA return code is checked.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../../sparse/src/flash_bwd_options.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/host_engine.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/ring/shard.h"
#include "distattn/sparse/flash_attention.h"
#include "mpi_gtest_main.h"
#include "ring_test_util.h"
#include "test_util.h"

namespace distattn {
namespace testing {

constexpr double kRingFwdSlack = 1e-4;  // tests/gpu/test_flash_fwd.cc

// Errors of one quantity on this rank's rows: the ring's, the one-GPU run's and the naive host engine's.
struct Triple {
  ErrorStats ring, single, naive;
};

// The host references of this rank's q rows against the full K, V, split over the ranks by q rows: the fp64 forward
// and the naive (kRoundIntermediates) one; the complete O rounded to bf16 and the LSE, gathered from every rank (they
// feed every backward); the fp64 and naive backward, dK and dV summed over the ranks in fp64 and sharded back.
struct RingHostRefs {
  HostTensor o64, o_naive;                    // [B, S/P, Hq, D]: fp64 math in fp32 storage; naive in bf16
  std::vector<float> lse64, lse_naive;        // [B, Hq, S/P]
  HostTensor ob_local;                        // o64 rounded to bf16
  HostTensor Ob;                              // [B, S, Hq, D] bf16: every rank's ob_local, unsharded
  std::vector<float> LSE;                     // [B, Hq, S]
  HostTensor dq64, dq_naive;                  // [B, S/P, Hq, D] fp32
  HostTensor dk_ref, dv_ref, dk_nai, dv_nai;  // [B, S/P, Hkv, D] fp32: this rank's shard of the sums
};

// hp: host params with q = this rank's (packed) q rows, k and v the full tensors, the positions, the mask, ALiBi and
// scale; its o and lse are set here. dout_rows: this rank's rows of dO. Collective: every rank calls it.
inline RingHostRefs ring_host_refs(AttnParams hp, const TensorView& dout_rows, ring::ShardLayout layout, int64_t S) {
  const int P = mpi_size(), r = mpi_rank();
  const int64_t B = hp.q.batch(), Sl = hp.q.seqlen(), Hq = hp.q.heads(), D = hp.q.head_dim(), Hkv = hp.k.heads();
  const DType bf = DType::kBFloat16;
  RingHostRefs x;
  x.o64 = HostTensor(DType::kFloat32, B, Sl, Hq, D);
  x.o_naive = HostTensor(bf, B, Sl, Hq, D);
  x.lse64.resize(static_cast<size_t>(B * Hq * Sl));
  x.lse_naive.resize(x.lse64.size());
  hp.o = x.o64.view;
  hp.lse = x.lse64.data();
  host_attention_forward(hp, HostPrecision::kFloat64);
  hp.o = x.o_naive.view;
  hp.lse = x.lse_naive.data();
  host_attention_forward(hp, HostPrecision::kRoundIntermediates);
  x.ob_local = convert(x.o64, bf);
  x.Ob = gather_full(x.ob_local, layout, S);
  x.LSE = gather_lse(x.lse64, B, Hq, layout, S);

  AttnBwdParams hb;
  hb.fwd = hp;
  hb.fwd.o = x.ob_local.view;
  hb.fwd.lse = x.lse64.data();
  hb.dout = dout_rows;
  x.dq64 = HostTensor(DType::kFloat32, B, Sl, Hq, D);
  HostTensor dk_part(DType::kFloat32, B, S, Hkv, D), dv_part(DType::kFloat32, B, S, Hkv, D);
  hb.dq = x.dq64.view, hb.dk = dk_part.view, hb.dv = dv_part.view;
  host_attention_backward(hb, HostPrecision::kFloat64);
  x.dq_naive = HostTensor(DType::kFloat32, B, Sl, Hq, D);
  HostTensor dk_npart(DType::kFloat32, B, S, Hkv, D), dv_npart(DType::kFloat32, B, S, Hkv, D);
  hb.dq = x.dq_naive.view, hb.dk = dk_npart.view, hb.dv = dv_npart.view;
  host_attention_backward(hb, HostPrecision::kRoundIntermediates);
  x.dk_ref = shard_of(sum_over_ranks(dk_part), layout, P, r);
  x.dv_ref = shard_of(sum_over_ranks(dv_part), layout, P, r);
  x.dk_nai = shard_of(sum_over_ranks(dk_npart), layout, P, r);
  x.dv_nai = shard_of(sum_over_ranks(dv_npart), layout, P, r);
  return x;
}

// The ring's forward on this rank's device shards: o (allocated by the caller in the output dtype and strides) and
// lse ([B, Hq, S/P], `lse_n` floats) poisoned with NaN first, downloaded after the stream is synchronized.
inline void ring_forward(ring::RingAttention& ra, const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                         HostTensor& o, std::vector<float>& lse, size_t lse_n, cudaStream_t stream) {
  fill_nan(o);
  DeviceTensor d_o(o);
  DeviceArray<float> d_lse(std::vector<float>(lse_n, std::numeric_limits<float>::quiet_NaN()));
  ra.forward(q.view(), k.view(), v.view(), d_o.view(), d_lse.ptr, stream);
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  d_o.download(o);
  lse = d_lse.download();
}

// The ring's backward fed the reference's O (this rank's shard of ref.Ob with the given padding) and LSE; dq, dk, dv
// in `out_dt` with that padding, poisoned with NaN first, downloaded after the stream is synchronized.
inline void ring_backward(ring::RingAttention& ra, const DeviceTensor& dout, const DeviceTensor& q,
                          const DeviceTensor& k, const DeviceTensor& v, const RingHostRefs& ref,
                          ring::ShardLayout layout, DType out_dt, int64_t head_pad, int64_t row_pad, HostTensor (&g)[3],
                          cudaStream_t stream) {
  const int P = mpi_size(), r = mpi_rank();
  const TensorView& qv = q.view();
  const int64_t B = qv.batch(), Sl = qv.seqlen(), Hq = qv.heads(), Hkv = k.view().heads(), D = qv.head_dim();
  const HostTensor ob = shard_of(ref.Ob, layout, P, r, head_pad, row_pad);
  DeviceTensor d_ob(ob);
  DeviceArray<float> d_lse_ref(ref.lse64);
  g[0] = HostTensor(out_dt, B, Sl, Hq, D, head_pad, row_pad);
  g[1] = HostTensor(out_dt, B, Sl, Hkv, D, head_pad, row_pad);
  g[2] = HostTensor(out_dt, B, Sl, Hkv, D, head_pad, row_pad);
  for (HostTensor& t : g) fill_nan(t);
  DeviceTensor d_g[3] = {DeviceTensor(g[0]), DeviceTensor(g[1]), DeviceTensor(g[2])};
  ra.backward(dout.view(), q.view(), k.view(), v.view(), d_ob.view(), d_lse_ref.ptr, d_g[0].view(), d_g[1].view(),
              d_g[2].view(), stream);
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (int i = 0; i < 3; ++i) d_g[i].download(g[i]);
}

// One GPU, the whole sequence: O, LSE and the gradients in `out_dt`, each poisoned with NaN first.
struct OneGpuRun {
  HostTensor o;            // [B, S, Hq, D]
  std::vector<float> lse;  // [B, Hq, S]
  HostTensor g[3];         // the default backward (the Hopper kernel where it applies)
  bool has_mma = false;
  HostTensor g_mma[3];  // with has_mma: the same backward on the mma.sync kernel
};

// gp: the whole-sequence call's positions, mask, ALiBi and scale (device memory); q, k, v, o and lse are set here.
// Q, K, V, dO: the full inputs; the backward is fed ref.Ob and ref.LSE. mma_too: also run the backward on the
// mma.sync kernel (detail::FlashBwdOptions::allow_hopper = false).
inline OneGpuRun one_gpu_run(AttnParams gp, const HostTensor& Q, const HostTensor& K, const HostTensor& V,
                             const HostTensor& dO, const RingHostRefs& ref, DType out_dt, bool mma_too,
                             cudaStream_t stream) {
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  const TensorView& qv = Q.view;
  const int64_t B = qv.batch(), S = qv.seqlen(), Hq = qv.heads(), Hkv = K.view.heads(), D = qv.head_dim();
  OneGpuRun run;
  DeviceTensor f_q(Q), f_k(K), f_v(V), f_do(dO), f_ob(ref.Ob);
  run.o = HostTensor(out_dt, B, S, Hq, D);
  fill_nan(run.o);
  DeviceTensor f_o(run.o);
  DeviceArray<float> f_lse(std::vector<float>(static_cast<size_t>(B * Hq * S), kNaN));
  gp.q = f_q.view();
  gp.k = f_k.view();
  gp.v = f_v.view();
  gp.o = f_o.view();
  gp.lse = f_lse.ptr;
  flash_attention_forward(gp, stream);
  DeviceArray<float> f_lse_ref(ref.LSE);
  auto grads = [&](HostTensor(&g)[3]) {
    g[0] = HostTensor(out_dt, B, S, Hq, D);
    g[1] = HostTensor(out_dt, B, S, Hkv, D);
    g[2] = HostTensor(out_dt, B, S, Hkv, D);
    for (HostTensor& t : g) fill_nan(t);
  };
  grads(run.g);
  DeviceTensor f_g[3] = {DeviceTensor(run.g[0]), DeviceTensor(run.g[1]), DeviceTensor(run.g[2])};
  AttnBwdParams gb;
  gb.fwd = gp;
  gb.fwd.o = f_ob.view();
  gb.fwd.lse = f_lse_ref.ptr;
  gb.dout = f_do.view();
  gb.dq = f_g[0].view(), gb.dk = f_g[1].view(), gb.dv = f_g[2].view();
  flash_attention_backward(gb, stream);
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  f_o.download(run.o);
  for (int i = 0; i < 3; ++i) f_g[i].download(run.g[i]);
  if (mma_too) {
    // The same backward on the mma.sync kernel (the default call above takes the Hopper kernel where it applies).
    run.has_mma = true;
    grads(run.g_mma);
    DeviceTensor f_gm[3] = {DeviceTensor(run.g_mma[0]), DeviceTensor(run.g_mma[1]), DeviceTensor(run.g_mma[2])};
    gb.dq = f_gm[0].view(), gb.dk = f_gm[1].view(), gb.dv = f_gm[2].view();
    detail::FlashBwdOptions mma_only;
    mma_only.allow_hopper = false;
    detail::flash_attention_backward(gb, mma_only, stream);
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int i = 0; i < 3; ++i) f_gm[i].download(run.g_mma[i]);
  }
  run.lse = f_lse.download();
  return run;
}

// The worse of two error measurements, field by field (the one-GPU baseline over both backward kernels).
inline ErrorStats worse(const ErrorStats& a, const ErrorStats& b) {
  ErrorStats w = a;
  w.max_abs = std::max(a.max_abs, b.max_abs);
  w.rel_l2 = std::max(a.rel_l2, b.rel_l2);
  w.rmse = std::max(a.rmse, b.rmse);
  w.non_finite = std::max(a.non_finite, b.non_finite);
  return w;
}

// The one-GPU run's O and LSE on this rank's rows.
inline void one_gpu_rows(const OneGpuRun& one, ring::ShardLayout layout, HostTensor& o_rows,
                         std::vector<float>& lse_rows) {
  const int P = mpi_size(), r = mpi_rank();
  const TensorView& o = one.o.view;
  o_rows = shard_of(one.o, layout, P, r);
  lse_rows.resize(one.lse.size() / static_cast<size_t>(P));
  ring::shard_lse_host(one.lse.data(), lse_rows.data(), o.batch(), o.heads(), layout, o.seqlen(), P, r);
}

// Triples of O, LSE, dQ, dK, dV on this rank's rows: the ring's outputs, the one-GPU run's (its rows: o_single,
// lse_single; its gradients the worse of its two kernels when it ran both) and the naive host engine's, against fp64.
inline void ring_error_triples(Triple (&t)[5], const RingHostRefs& ref, const HostTensor& o,
                               const std::vector<float>& lse, const HostTensor (&g)[3], const HostTensor& o_single,
                               const std::vector<float>& lse_single, const OneGpuRun& one, ring::ShardLayout layout) {
  const int P = mpi_size(), r = mpi_rank();
  t[0] = {compare(o.view, ref.o64.view), compare(o_single.view, ref.o64.view), compare(ref.o_naive.view, ref.o64.view)};
  const std::vector<double> lse_ref_d(ref.lse64.begin(), ref.lse64.end());
  const int64_t nl = static_cast<int64_t>(ref.lse64.size());
  t[1] = {compare_flat(lse.data(), lse_ref_d.data(), nl), compare_flat(lse_single.data(), lse_ref_d.data(), nl),
          compare_flat(ref.lse_naive.data(), lse_ref_d.data(), nl)};
  const HostTensor* refs[3] = {&ref.dq64, &ref.dk_ref, &ref.dv_ref};
  const HostTensor* nais[3] = {&ref.dq_naive, &ref.dk_nai, &ref.dv_nai};
  for (int i = 0; i < 3; ++i) {
    const ErrorStats single = compare(shard_of(one.g[i], layout, P, r).view, refs[i]->view);
    t[2 + i] = {compare(g[i].view, refs[i]->view),
                one.has_mma ? worse(single, compare(shard_of(one.g_mma[i], layout, P, r).view, refs[i]->view)) : single,
                compare(nais[i]->view, refs[i]->view)};
  }
}

// The bounds on every triple: ring error vs fp64 <= 2x the naive error + slack, and <= 2x the one-GPU error + the same
// slack ("does not grow with the number of ranks"; for dK and dV only with dkdv_vs_single). O and LSE: rel_l2 and
// max_abs, slack kRingFwdSlack; gradients: max and RMS, slack relative to the gradient's RMS. Also: some fp64 LSE of
// this rank is finite (the reference is not trivially empty).
inline void expect_ring_bounds(const Triple (&t)[5], const RingHostRefs& ref, bool dkdv_vs_single) {
  const HostTensor* refs[3] = {&ref.dq64, &ref.dk_ref, &ref.dv_ref};
  const char* names[5] = {"O", "LSE", "dQ", "dK", "dV"};
  for (int i = 0; i < 5; ++i) {
    const Triple& e = t[i];
    SCOPED_TRACE(std::string(names[i]) + " ring: " + e.ring.str() + " | 1 GPU: " + e.single.str() +
                 " | naive: " + e.naive.str());
    EXPECT_EQ(e.ring.non_finite, 0);
    EXPECT_EQ(e.single.non_finite, 0);
    EXPECT_GT(e.ring.count, 0);
    if (i < 2) {
      // Forward rule (O and LSE): rel_l2 and max_abs.
      EXPECT_LE(e.ring.rel_l2, 2 * e.naive.rel_l2 + kRingFwdSlack);
      EXPECT_LE(e.ring.max_abs, 2 * e.naive.max_abs + kRingFwdSlack);
      EXPECT_LE(e.ring.rel_l2, 2 * e.single.rel_l2 + kRingFwdSlack) << "grows with the number of ranks";
      EXPECT_LE(e.ring.max_abs, 2 * e.single.max_abs + kRingFwdSlack) << "grows with the number of ranks";
    } else {
      // Backward rule: max and RMS, slack relative to the gradient's size.
      const double rr = rms_of(refs[i - 2]->view);
      EXPECT_LE(e.ring.max_abs, 2 * e.naive.max_abs + 1e-2 * rr + 1e-6);
      EXPECT_LE(e.ring.rmse, 2 * e.naive.rmse + 2e-3 * rr + 1e-7);
      if (i == 2 || dkdv_vs_single) {
        EXPECT_LE(e.ring.max_abs, 2 * e.single.max_abs + 1e-2 * rr + 1e-6) << "grows with the number of ranks";
        EXPECT_LE(e.ring.rmse, 2 * e.single.rmse + 2e-3 * rr + 1e-7) << "grows with the number of ranks";
      }
    }
  }
  EXPECT_TRUE(std::any_of(ref.lse64.begin(), ref.lse64.end(), [](float x) { return std::isfinite(x); }));
}

// Worst (over ranks) max|err| of ring / one GPU / naive for O, LSE, dQ, dK, dV (collective: every rank calls it).
inline void worst_over_ranks(const Triple (&t)[5], double (&worst)[15]) {
  double mine[15];
  for (int i = 0; i < 5; ++i) {
    mine[3 * i] = t[i].ring.max_abs;
    mine[3 * i + 1] = t[i].single.max_abs;
    mine[3 * i + 2] = t[i].naive.max_abs;
  }
  EXPECT_EQ(MPI_Allreduce(mine, worst, 15, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), MPI_SUCCESS);
}

// The error columns of a table line ("  O a/b/c  LSE ..  dV a/b/c"), the newline, and a flush.
inline void print_error_columns(const double (&worst)[15]) {
  const char* names[5] = {"O", "LSE", "dQ", "dK", "dV"};
  for (int i = 0; i < 5; ++i)
    std::printf("  %s %.2e/%.2e/%.2e", names[i], worst[3 * i], worst[3 * i + 1], worst[3 * i + 2]);
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace testing
}  // namespace distattn
