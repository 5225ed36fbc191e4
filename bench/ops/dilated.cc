// Op "dilated": LongNet dilated attention (dilated/dilated_attention.h) on one GPU, or across the job's ranks
// (dilated/distributed_dilated.h: GLOBAL S sharded contiguously, S/N rows per rank, one GPU each, NCCL); without
// a GPU, the host engine in fp32 (over plain MPI when N > 1) on small sizes.
//
// Patterns: --dilated-segments and --dilated-rates (comma lists of equal length, K suffixes), --dilated-ragged 0|1
// (DilatedConfig::ragged_rates). Default: LongNet's configuration, segments 2048, 4096, 8192, 16384, 32768 with
// rates 1, 2, 4, 6, 12, ragged on (6 and 12 do not divide the segments: torchscale's classes, rows s, s + r, ...
// < w). A pattern whose segment is longer than S is dropped at that S (noted in describe() and the JSON rows).
// Sharded (N > 1): a segment <= S/N must divide S/N; a longer one must be a multiple of S/N (else an Error).
//
// Shapes (per rank, packed): q, o, dout, dq [B, S/N, H, D]; k, v, dk, dv [B, S/N, Hkv, D]; lse [B, H, S/N] fp32.
//
// Work (USEFUL FLOPs: only the (query, key) pairs computed): pattern (w, r) keeps m_h = ceil((w - h mod r)/r) rows
// per segment for head h (w/r when r | w), so it computes B * (S/w) * sum_h m_h^2 pairs (causal: m_h(m_h+1)/2); FLOPs =
// 4 * D * pairs summed over patterns (a pair kept by two patterns is computed twice and counted twice), x2.5 bwd, x3.5
// fwdbwd, divided by N (per GPU). Column "frac": those pairs / the dense pairs (S^2 or S(S+1)/2, per head).
// Column "peakMiB": the op's buffers + the class's device scratch after one run + the high-water mark of the
// library's scratch pool (core/scratch_pool.h) during that run (engine scratch); NCCL's buffers and the context not
// counted.
// Max over ranks.
//
// Check (-c 1, S <= --check-max-seq): every rank rebuilds the FULL q, k, v, dout from the seed, runs the op on
// its shard (outputs poisoned), and compares its rows with the single-process host DilatedAttention on the full
// sequence: fp64 reference, and (GPU) the naive same-precision run (kRoundIntermediates) for the 2x rule
// (OutputCheck: |err| <= 2 * naive_err + ulp * max|ref|; host mode 1e-4 * max(1, max|ref|)). The backward runs
// on the op's own O and LSE; the references on theirs.
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "attention_io.h"
#include "bench_flops.h"
#include "bench_op.h"
#include "device_fill.h"
#include "distattn/comm/mpi_communicator.h"
#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/check_libs.h"
#include "distattn/core/error.h"
#include "distattn/dilated/dilated_attention.h"
#include "distattn/dilated/distributed_dilated.h"
#include "distattn/positional/alibi.h"
#include "distattn/sparse/flash_attention.h"
#include "harness.h"
#include "host_tensors.h"
#include "op_common.h"
#include "output_check.h"
#include "scratch_high.h"

namespace distattn {
namespace bench {
namespace {

class DilatedOp : public OpBase {
 public:
  explicit DilatedOp(const RunContext& ctx) : OpBase(ctx) {
    const auto& c = opt_.common;
    DISTATTN_CHECK_ARG(c.window == 0, "--window", "the dilated op has no window (its patterns are the sparsity)");
    require_cuda_head_dim();
    if (ctx.on_gpu()) {
      DISTATTN_CHECK_ARG(dtype_ == DType::kBFloat16 || dtype_ == DType::kFloat16, "--dtype",
                         "the CUDA engine takes bf16 or fp16, got ", dtype_name(dtype_));
    }
    requested_ = requested_dilated_patterns(opt_);
    if (c.alibi) slopes_ = alibi_slopes(H_);
    DISTATTN_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &N_));
    // Collective over MPI_COMM_WORLD: every rank constructs the op at the same point of run_bench.
    if (N_ > 1) {
      if (ctx.on_gpu()) {
        comm_ = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, ctx.device);
      } else {
        comm_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
      }
    }
  }

  std::vector<std::string> describe() const override {
    std::ostringstream os;
    os << "op dilated: LongNet dilated attention " << pass_name(opt_.pass) << " over " << N_ << " rank(s)"
       << (N_ > 1 ? (ctx_.on_gpu() ? " (nccl, distributed class)" : " (mpi, distributed class)") : "") << ", "
       << dtype_name(dtype_) << ", B " << B_ << ", H " << H_ << ", Hkv " << Hkv_ << ", D " << D_ << ", "
       << (opt_.common.causal ? "causal" : "non-causal") << ", alibi " << (opt_.common.alibi ? "yes" : "no")
       << (ctx_.on_gpu() ? ", engine CUDA" : ", engine host fp32") << "; patterns (w, r):";
    for (const DilatedPattern& p : requested_) os << " (" << p.segment << ", " << p.rate << ")";
    os << ", ragged rates " << (opt_.dilated_ragged ? "on (rates need not divide segments; the bench default)" : "off")
       << "; patterns with segment > S dropped at that S (column pats = patterns run)";
    return {os.str(),
            "seq = GLOBAL S; each rank holds S/N rows. USEFUL TFLOPs per GPU: 4*D*sum over patterns and heads h of "
            "B*(S/w)*m^2 pairs (m = ceil((w - h mod r)/r); causal m(m+1)/2), x2.5 bwd, x3.5 fwdbwd, / N; frac = those "
            "pairs / dense pairs",
            "peak = op buffers + class scratch + scratch pool high-water over one run, max over ranks",
            std::string("check: S <= ") + std::to_string(opt_.check_max_seq) +
                ", each rank's rows vs the single-process host DilatedAttention (fp64) on the full sequence; " +
                check_rule_text(ctx_.on_gpu())};
  }

  bool work_is_bytes() const override { return false; }
  double work(int64_t seq) const override {
    return 4.0 * static_cast<double>(D_) * pairs(seq) * pass_factor(opt_.pass) / N_;
  }

  std::string shape_header() const override {
    return seq_shape_header(true) + table_cell(7, "mask") + table_cell(4, "pats");
  }
  std::string shape_cells(int64_t seq) const override {
    return seq_shape_cells(seq, N_) + table_cell(7, opt_.common.causal ? "causal" : "none") +
           table_cell(4, std::to_string(patterns_for(seq).size()));
  }
  std::string extra_header() const override {
    char buf[64];
    std::snprintf(buf, sizeof(buf), " %8s %8s", "frac", "peakMiB");
    return buf;
  }
  std::string extra_cells(int64_t seq, double) const override {
    char buf[64];
    std::snprintf(buf, sizeof(buf), " %8.5f %8.0f", pairs(seq) / dense_pairs(seq), peak_bytes_ / (1024.0 * 1024.0));
    return buf;
  }
  void json_options(JsonObject& out) const override {
    out.set("pass", pass_name(opt_.pass)).set("ranks", N_);
    std::ostringstream ws, rs;
    for (size_t i = 0; i < requested_.size(); ++i)
      ws << (i ? "," : "") << requested_[i].segment, rs << (i ? "," : "") << requested_[i].rate;
    out.set("segments", ws.str()).set("rates", rs.str()).set("ragged_rates", opt_.dilated_ragged);
  }
  void json_row(JsonObject& row, int64_t seq, double) const override {
    row.set("B", B_).set("H", H_).set("Hkv", Hkv_).set("D", D_).set("causal", opt_.common.causal);
    row.set("alibi", opt_.common.alibi).set("pass", pass_name(opt_.pass)).set("dtype", dtype_name(dtype_));
    row.set("ranks", N_).set("local_seq", seq / N_).set("useful_flops", work(seq));
    row.set("pairs", pairs(seq)).set("dense_fraction", pairs(seq) / dense_pairs(seq));
    std::ostringstream pats;
    for (const DilatedPattern& p : patterns_for(seq)) pats << "(" << p.segment << "," << p.rate << ")";
    row.set("patterns", pats.str());
    row.set("peak_mem_bytes", peak_bytes_).set("peak_mem_mib", peak_bytes_ / (1024.0 * 1024.0));
  }

  void setup(int64_t seq) override {
    begin_size(seq);
    DISTATTN_CHECK_ARG(S_ % N_ == 0, "seq", "S = ", S_, " is not divisible by the ", N_, " ranks");
    L_ = S_ / N_;
    DilatedConfig dc = config_for(S_);
    if (N_ > 1) {
      DistributedDilatedConfig cfg;
      cfg.dilated = dc;
      cfg.seq_len = S_;
      cfg.batch = B_;
      cfg.q_heads = H_;
      cfg.kv_heads = Hkv_;
      cfg.head_dim = D_;
      cfg.dtype = dtype_;
      dist_ = std::make_unique<DistributedDilatedAttention>(*comm_, cfg);
    } else {
      single_ = std::make_unique<DilatedAttention>(dc, ctx_.on_gpu() ? Device::kCuda : Device::kHost);
    }
    const uint64_t seed = size_seed() + 7919ull * ctx_.rank;
    // This rank's L rows of q, k, v, o (+ dout, dq, dk, dv) and lse [B, H, L].
    io_.allocate(ctx_.on_gpu(), dtype_, B_, L_, H_, Hkv_, D_, opt_.pass != Pass::kForward);
    io_.fill_inputs(seed, ctx_.stream);
    io_.poison_outputs(false, ctx_.stream);
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    if (opt_.pass == Pass::kBackward) op_forward();  // bwd alone is timed against this O and LSE
    measure_peak_memory();
  }

  void run() override {
    if (opt_.pass != Pass::kBackward) op_forward();
    if (opt_.pass != Pass::kForward) op_backward();
  }

  CheckResult check() override {
    const uint64_t seed = check_seed();
    const bool bwd = opt_.pass != Pass::kForward;
    const int64_t row0 = static_cast<int64_t>(ctx_.rank) * L_;
    // 1. The FULL inputs from the seed (identical on every rank), this rank's rows of them.
    HostTensor fq(dtype_, B_, S_, H_, D_), fk(dtype_, B_, S_, Hkv_, D_), fv(dtype_, B_, S_, Hkv_, D_),
        fdo(dtype_, B_, S_, H_, D_);
    fill_random_host(fq, seed + 0), fill_random_host(fk, seed + 1), fill_random_host(fv, seed + 2);
    fill_random_host(fdo, seed + 3);
    // 2. Poisoned outputs, one run of the op (forward, then backward on its own O and LSE).
    io_.upload(rows(fq, row0), io_.q), io_.upload(rows(fk, row0), io_.k), io_.upload(rows(fv, row0), io_.v);
    if (bwd) io_.upload(rows(fdo, row0), io_.dout);
    io_.poison_outputs(bwd, ctx_.stream);
    op_forward();
    if (bwd) op_backward();
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    const HostOutputs got = outputs_to_host(io_, bwd);
    // 3. References on the full sequence: fp64 arithmetic (fp32 outputs: the engine's accumulators are fp32 in
    //    every mode) and (GPU) the naive same-precision run.
    const bool naive_on = ctx_.on_gpu();
    DilatedConfig ref_cfg = config_for(S_), naive_cfg = ref_cfg;
    ref_cfg.host_precision = HostPrecision::kFloat64;
    naive_cfg.host_precision = HostPrecision::kRoundIntermediates;
    HostTensor ro(DType::kFloat32, B_, S_, H_, D_), no(dtype_, B_, S_, H_, D_);
    std::vector<float> rlse(static_cast<size_t>(B_ * H_ * S_)), nlse(rlse.size());
    dilated_attention_forward(ref_cfg, fq.view, fk.view, fv.view, ro.view, rlse.data(), Device::kHost);
    if (naive_on) dilated_attention_forward(naive_cfg, fq.view, fk.view, fv.view, no.view, nlse.data(), Device::kHost);
    // This rank's rows of the references (every head): [B, L, H|Hkv, D], LSE [B, H, L].
    HostReferences local;
    local.o = rows(ro, row0), local.naive_o = rows(no, row0);
    local.lse = lse_rows(rlse, row0), local.naive_lse = lse_rows(nlse, row0);
    if (bwd) {
      HostTensor rq(DType::kFloat32, B_, S_, H_, D_), rk(DType::kFloat32, B_, S_, Hkv_, D_),
          rv(DType::kFloat32, B_, S_, Hkv_, D_), nq(dtype_, B_, S_, H_, D_), nk(dtype_, B_, S_, Hkv_, D_),
          nv(dtype_, B_, S_, Hkv_, D_);
      dilated_attention_backward(ref_cfg, fq.view, fk.view, fv.view, ro.view, rlse.data(), fdo.view, rq.view, rk.view,
                                 rv.view, Device::kHost);
      if (naive_on)
        dilated_attention_backward(naive_cfg, fq.view, fk.view, fv.view, no.view, nlse.data(), fdo.view, nq.view,
                                   nk.view, nv.view, Device::kHost);
      local.dq = rows(rq, row0), local.dk = rows(rk, row0), local.dv = rows(rv, row0);
      local.naive_dq = rows(nq, row0), local.naive_dk = rows(nk, row0), local.naive_dv = rows(nv, row0);
    }
    return compare_attention_outputs(got, local, naive_on, bwd, H_, Hkv_, dtype_);
  }

  void teardown() override {
    io_.reset();
    dist_.reset();
    single_.reset();
  }

 private:
  // The requested patterns whose segment fits in S (longer ones are dropped).
  std::vector<DilatedPattern> patterns_for(int64_t S) const {
    std::vector<DilatedPattern> out;
    for (const DilatedPattern& p : requested_)
      if (p.segment <= S) out.push_back(p);
    DISTATTN_CHECK_ARG(!out.empty(), "--dilated-segments", "every segment is longer than S = ", S,
                       " (patterns with segment > S are dropped)");
    return out;
  }
  DilatedConfig config_for(int64_t S) const {
    DilatedConfig dc;
    dc.patterns = patterns_for(S);
    dc.causal = opt_.common.causal;
    dc.ragged_rates = opt_.dilated_ragged;
    dc.alibi_slopes = slopes_;
    dc.host_precision = HostPrecision::kFloat32;  // host mode: the fp32 run, checked against fp64
    return dc;
  }
  // Computed (query, key) pairs over every pattern, segment, head and batch.
  double pairs(int64_t S) const {
    double total = 0;
    for (const DilatedPattern& p : patterns_for(S)) {
      // Head h (class s = h mod r) keeps m_s = ceil((w - s) / r) rows of each segment (w / r when r | w).
      for (int64_t h = 0; h < H_; ++h) {
        const int64_t s = h % p.rate;
        const double m = s < p.segment ? static_cast<double>((p.segment - 1 - s) / p.rate + 1) : 0.0;
        total += static_cast<double>(B_) * static_cast<double>(S / p.segment) *
                 (opt_.common.causal ? m * (m + 1) / 2 : m * m);
      }
    }
    return total;
  }
  double dense_pairs(int64_t S) const {
    const double s = static_cast<double>(S);
    return static_cast<double>(B_ * H_) * (opt_.common.causal ? s * (s + 1) / 2 : s * s);
  }

  // Rows [row0, row0 + L) of a full packed tensor, packed.
  HostTensor rows(const HostTensor& full, int64_t row0) const {
    const TensorView& f = full.view;
    HostTensor t(f.dtype, f.shape[0], L_, f.shape[2], f.shape[3]);
    const size_t row_bytes = static_cast<size_t>(f.shape[2] * f.shape[3]) * dtype_size(f.dtype);
    for (int64_t b = 0; b < f.shape[0]; ++b)
      std::memcpy(t.storage.data() + static_cast<size_t>(b * L_) * row_bytes,
                  full.storage.data() + static_cast<size_t>(b * f.shape[1] + row0) * row_bytes,
                  static_cast<size_t>(L_) * row_bytes);
    return t;
  }
  std::vector<float> lse_rows(const std::vector<float>& full, int64_t row0) const {
    std::vector<float> out;
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t h = 0; h < H_; ++h)
        for (int64_t l = 0; l < L_; ++l) out.push_back(full[static_cast<size_t>((b * H_ + h) * S_ + row0 + l)]);
    return out;
  }
  void op_forward() {
    if (dist_) {
      dist_->forward(io_.q, io_.k, io_.v, io_.o, io_.lse, ctx_.stream);
    } else {
      single_->forward(io_.q, io_.k, io_.v, io_.o, io_.lse, ctx_.stream);
    }
  }
  void op_backward() {
    if (dist_) {
      dist_->backward(io_.q, io_.k, io_.v, io_.o, io_.lse, io_.dout, io_.dq, io_.dk, io_.dv, ctx_.stream);
    } else {
      single_->backward(io_.q, io_.k, io_.v, io_.o, io_.lse, io_.dout, io_.dq, io_.dk, io_.dv, ctx_.stream);
    }
  }

  // Op buffers + the class's scratch after one run + the library scratch pool's high-water mark during it.
  void measure_peak_memory() {
    double pool_high = 0;
    if (ctx_.on_gpu()) {
      pool_high = scratch_high_bytes_during(ctx_.stream, [&] { run(); });  // also the warm-up that grows the scratch
    } else {
      run();
    }
    const double scratch = static_cast<double>(dist_ ? dist_->scratch_bytes() : single_->scratch_bytes());
    peak_bytes_ = max_over_ranks(static_cast<double>(io_.bytes()) + scratch + pool_high);
  }

  std::vector<DilatedPattern> requested_;
  std::unique_ptr<Communicator> comm_;  // N > 1 only
  std::unique_ptr<DistributedDilatedAttention> dist_;
  std::unique_ptr<DilatedAttention> single_;
  int N_ = 1;
  int64_t L_ = 0;  // this rank's rows, S / N
  std::vector<float> slopes_;
  double peak_bytes_ = 0;
  AttentionIo io_;  // this rank's L rows: q, k, v, o, lse (+ dout, dq, dk, dv) on the GPU or the host
};

}  // namespace

std::unique_ptr<BenchOp> make_dilated_op(const RunContext& ctx) { return std::make_unique<DilatedOp>(ctx); }

}  // namespace bench
}  // namespace distattn
