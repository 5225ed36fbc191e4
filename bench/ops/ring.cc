// Op "ring": ring attention across the ranks of the job (ring/ring_attention.h), one GPU per rank
// (NcclCommunicator on the device the harness selected); without a GPU, the host ring over plain MPI
// (MpiCommunicator + host engine, fp32) on small sizes.
//
// Shapes (per rank, all packed): q, o, dout, dq [B, S/N, H, D]; k, v, dk, dv [B, S/N, Hkv, D];
// lse [B, H, S/N] fp32. S is the GLOBAL sequence length of the sweep, N the number of ranks; the rows a
// rank holds are given by --layout (zigzag default, contiguous, striped; ring/shard.h).
//
// Columns beyond the harness's (time = max over ranks of each rank's median ring time):
//   TFLOPs    per GPU: flash formula on the GLOBAL S (4*B*S^2*H*D, causal x0.5, windows exact) / N
//   comp(ms)  compute-only time: the ring's engine calls for this rank's step schedule (same shapes,
//             positions, masks, skipped steps; bwd steps write their dK|dV scratch as the ring does) on the
//             rank's OWN K|V, with no exchange, no packing and no gradient travel; median over iters, max over ranks
//   exp(ms)   exposed communication = time - comp: what the exchanges (and the ring's small
//             pack/cast/travel-add kernels) add on top of the slowest rank's compute. May read slightly
//             negative from timing noise. exp% = exp / time.
//   xchg(ms)  exchange-only time: the K|V hops of a forward (N-1, or the ring's fewer moves; post + wait on
//             the compute stream, nothing else), median over iters, max over ranks
//   busbw     of that exchange: hops * shard bytes / xchg, which for hops = N-1 is the nccl-tests all-gather
//             busbw of the K|V shards (size = N * shard, algbw = size / xchg, busbw = algbw * (N-1)/N). K|V only
//             (bwd's dK|dV travel is not counted).
//   peakMiB   GPU: the op's own buffers + the high-water mark of the library's scratch pool (core/scratch_pool.h)
//             (the ring's scratch) during one run() (cudaMemPoolAttrUsedMemHigh, reset first); NCCL's
//             internal buffers and the CUDA context are not counted. Max over ranks.
//             Host engine: the op's own buffers only.
//
//   %dense    visible pairs / S^2 (what the mask or layout leaves of the full attention)
//   steps     ring steps with an engine call, max over ranks; hops = K|V exchanges of one pass (N-1 for the full
//             ring; fewer when some steps have no work on any rank: schedule().useful_steps; the K|V jump over
//             those, and nothing moves after the last useful step)
//
// Block-sparse ring (--sparse-pattern, given explicitly; ring/ring_attention.h block_layout): ONE global layout
// over the whole sequence (positions 0..S-1, 128-row blocks), built once per size in setup() (not timed):
//   block-diagonal  independent segments of --sparse-block rows; --causal inside each
//   strided         (qb - kb) mod (--sparse-block / 128) == 0 or |qb - kb| <= 1; --causal restricts it
//   bigbird         window 1 block each side + 1 global block + --sparse-random random blocks per q block
//   random          --sparse-random random blocks per q block
//   sliding-window  no layout: the dense ring with the --window band (and --causal), ending early where it can
// Needs --layout contiguous or zigzag and every chunk a whole number of 128-row blocks (S a multiple of 128*N,
// zigzag 256*N). TFLOPs are then USEFUL FLOPs per GPU: 4*B*H*D*(visible pairs, counted exactly from the
// layout and its band) x pass factor / N.
//
// Check (-c 1, S <= --check-max-seq): every rank rebuilds the FULL q, k, v (, dout) from the seed (no
// communication), takes its shard, runs the ring, and compares its shard of O, LSE (, dQ, dK, dV) on the
// first `check_heads` kv heads with its shard of the single-process fp64 host engine's result on the full
// sequence (with the same global layout when sparse); tolerance as in dense (2 * naive_err + ulp * max|ref|;
// host mode 1e-4 * max(1, max|ref|)).
//
// --rope (as dense's --rope, per rank): the ring gets RingConfig::rope, so its forward rotates this rank's q, k
// shards in place (positions = the shard's GLOBAL position map, schedule().q_pos: a rank's K rows sit at the
// positions of its q rows; k in one launch with the K|V send buffer, q in it or inside the own step's launch) and its
// backward rotates dq, dk back. DISTATTN_BENCH_RING_ROPE=caller (A/B; "ring" is the default) times the caller's way
// instead: RoPE forward on the q, k shards (one launch) -> ring forward [-> ring backward -> RoPE backward on dq, dk].
// (--pass bwd: q, k are rotated once in setup, by the ring forward that provides O and LSE.) K travels already
// rotated, so the exchange is unchanged. comp(ms) includes the RoPE as separate launches on q, k (and dq, dk), the
// caller's way, so with the ring's own rotation (cheaper) exp(ms) may read low by the difference. The RoPE kernels of
// one iteration are timed alone once per size (CUDA events, median of 15 after 3 warm-ups, max over ranks) and reported
// as rope(ms), rope% / rope_ms, rope_share_pct (GPU only; null on the host engine). Check: the references see the FULL
// q, k rotated on the host with positions 0..S-1 (rope_apply_host in the input dtype: rounded once, as the kernel
// does), their dq, dk rotated back on the host (fp64 / input dtype), then each rank's shard is compared as above.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

#include "attention_io.h"
#include "bench_flops.h"
#include "bench_op.h"
#include "bench_rope.h"
#include "device_fill.h"
#include "distattn/comm/mpi_communicator.h"
#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/check_libs.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/alibi.h"
#include "distattn/positional/rope.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/sparse/block_layout.h"
#include "distattn/sparse/flash_attention.h"
#include "harness.h"
#include "host_reference.h"
#include "host_tensors.h"
#include "op_common.h"
#include "output_check.h"
#include "scratch_high.h"
#include "stream_timer.h"

namespace distattn {
namespace bench {
namespace {

ring::ShardLayout parse_layout(const std::string& s) {
  if (s == "contiguous") return ring::ShardLayout::kContiguous;
  if (s == "striped") return ring::ShardLayout::kStriped;
  DISTATTN_CHECK_ARG(s == "zigzag", "--layout", "unknown shard layout '", s, "'");
  return ring::ShardLayout::kZigzag;
}

// Visible (query, key) pairs of a global layout on positions 0..S-1: full blocks whole, partial blocks row by
// row through the layout's band (lo <= i - j <= hi).
int64_t layout_visible_pairs(const BlockLayout& g, int64_t S) {
  const DiagonalBand band = DiagonalBand::from_mask(g.band());
  const std::vector<int32_t>& ro = g.row_offset();
  const std::vector<int32_t>& ci = g.col_index();
  const std::vector<uint8_t>& rp = g.row_partial();
  int64_t pairs = 0;
  for (int64_t qb = 0; qb < g.num_q_blocks(); ++qb) {
    const int64_t q0 = qb * kLayoutBlock, q1 = std::min(q0 + kLayoutBlock, S);  // rows [q0, q1)
    for (int32_t e = ro[static_cast<size_t>(qb)]; e < ro[static_cast<size_t>(qb) + 1]; ++e) {
      const int64_t k0 = int64_t{ci[static_cast<size_t>(e)]} * kLayoutBlock, k1 = std::min(k0 + kLayoutBlock, S);
      if (!rp[static_cast<size_t>(e)]) {
        pairs += (q1 - q0) * (k1 - k0);
        continue;
      }
      for (int64_t i = q0; i < q1; ++i) {  // j in [i - hi, i - lo] within [k0, k1)
        const int64_t lo = std::max(k0, i - band.hi), hi = std::min(k1 - 1, i - band.lo);
        pairs += std::max<int64_t>(0, hi - lo + 1);
      }
    }
  }
  return pairs;
}

// Per-size measurements made in setup() (max over ranks), printed by extra_cells / json_row.
struct SizeStats {
  double compute_ms = 0;   // compute-only time
  double exchange_ms = 0;  // exchange-only time (N-1 K|V hops)
  double shard_bytes = 0;  // one rank's K|V shard
  double busbw = 0;        // GB/s (0 for one rank)
  double peak_bytes = 0;   // per rank, max over ranks
  double buffer_bytes = 0;
  double pool_high_bytes = 0;
  int steps = 0;            // computed ring steps, max over ranks
  int hops = 0;             // K|V exchanges of one pass (schedule().kv_exchanges())
  int grad_hops = 0;        // dK|dV exchanges of one backward (the last one sends them home)
  std::string kv_exchange;  // the ring's K|V exchange path in the timed calls: "ce" / "nccl" ("" host engine)
};

class RingOp : public OpBase {
 public:
  explicit RingOp(const RunContext& ctx) : OpBase(ctx) {
    const auto& c = opt_.common;
    layout_ = parse_layout(opt_.layout);
    require_cuda_head_dim();
    if (ctx.on_gpu()) {
      DISTATTN_CHECK_ARG(dtype_ == DType::kBFloat16 || dtype_ == DType::kFloat16, "--dtype",
                         "the ring's CUDA engine takes bf16 or fp16, got ", dtype_name(dtype_));
    }
    if (c.alibi) slopes_host_ = alibi_slopes(H_);
    if (opt_.rope) rope_ = BenchRope(opt_, D_, ctx.on_gpu());
    rope_in_ring_ = opt_.rope && env_choice("DISTATTN_BENCH_RING_ROPE", {"ring", "caller"}, 0) == 0;
    // Block-sparse ring: only with --sparse-pattern given (the option's default belongs to the sparse op).
    if (opt_.sparse_pattern_given) {
      pattern_ = opt_.sparse_pattern;
      if (pattern_ == "sliding-window") {
        DISTATTN_CHECK_ARG(c.window > 0, "--window", "--sparse-pattern sliding-window needs --window W > 0");
      } else {
        DISTATTN_CHECK_ARG(c.window == 0, "--window", "applies to --sparse-pattern sliding-window only (pattern is ",
                           pattern_, ")");
        DISTATTN_CHECK_ARG(layout_ != ring::ShardLayout::kStriped, "--layout",
                           "striped cannot carry a block layout (rows are not whole 128-row blocks): use contiguous "
                           "or zigzag with --sparse-pattern");
        block_sparse_ = true;
      }
    }
    if (block_sparse_) {
      // Every size must cut into whole 128-row blocks per chunk (the same verdict on every rank).
      const int64_t ranks = [] {
        int n = 1;
        MPI_Comm_size(MPI_COMM_WORLD, &n);
        return static_cast<int64_t>(n);
      }();
      const int64_t unit = kLayoutBlock * ranks * (layout_ == ring::ShardLayout::kZigzag ? 2 : 1);
      for (int64_t seq : opt_.sizes) {
        DISTATTN_CHECK_ARG(seq % unit == 0, "-b/-e/-f", "size ", seq, " cannot carry a block layout over ", ranks,
                           " ranks (", opt_.layout, "): every chunk must be whole 128-row blocks, S a multiple of ",
                           unit);
      }
    }
    check_kv_heads_ = option_check_kv_heads();
    // Collective over MPI_COMM_WORLD: every rank constructs the op at the same point of run_bench.
    if (ctx.on_gpu()) {
      comm_ = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, ctx.device);
      if (!slopes_host_.empty()) slopes_dev_ = device_copy(slopes_host_);
    } else {
      comm_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
    }
    N_ = comm_->size();
  }

  std::vector<std::string> describe() const override {
    const auto& c = opt_.common;
    std::vector<std::string> lines;
    std::ostringstream os;
    os << "op ring: ring attention " << pass_name(opt_.pass) << " over " << N_ << " rank(s) (" << comm_->backend()
       << "), layout " << opt_.layout << ", " << dtype_name(dtype_) << ", B " << B_ << ", H " << H_ << ", Hkv " << Hkv_
       << ", D " << D_ << ", mask " << mask_cell() << ", alibi " << (c.alibi ? "yes" : "no") << ", rope ";
    if (opt_.rope) {
      os << (rope_in_ring_
                 ? "yes (the ring's own (RingConfig::rope), shard's global positions; "
                 : "yes (the caller's: one launch on the local q, k shards before, shard's global positions; ")
         << (opt_.pass == Pass::kForward ? "" : "backward on dq, dk after; ") << "rotary dim " << rope_.rotary_dim()
         << ", " << rope_.style_name() << ")";
    } else {
      os << "no";
    }
    os << (ctx_.on_gpu() ? ", engine CUDA" : ", engine host fp32 over MPI");
    lines.push_back(os.str());
    if (block_sparse_) {
      lines.push_back("block-sparse ring: pattern " + pattern_ +
                      ", one global layout per size (built in setup, not timed); TFLOPs = USEFUL FLOPs per GPU: "
                      "4*B*H*D*visible pairs (exact, from the layout and its band) x pass factor / N");
    }
    lines.push_back(
        "seq = GLOBAL S; each rank holds S/N rows. TFLOPs per GPU: flash formula on the global S "
        "(4*B*S^2*H*D, causal x0.5, windows exact; fwd x1, bwd x2.5, fwdbwd x3.5) / N" +
        std::string(opt_.rope ? " (RoPE adds time, not FLOPs)" : ""));
    lines.push_back(
        "comp = compute-only (the ring's engine calls for this rank's schedule on its own K|V, no "
        "exchange" +
        std::string(opt_.rope ? "; + the RoPE kernels" : "") +
        "), exp = time - comp (exposed communication + ring bookkeeping), both max over ranks");
    lines.push_back(
        "xchg = the ring's K|V hops alone (hops = N-1, fewer when steps are empty everywhere); busbw = hops*shard/xchg "
        "(= nccl-tests all-gather busbw when hops = N-1); steps = engine steps (max over ranks); "
        "%dense = visible pairs / S^2. peak = " +
        std::string(ctx_.on_gpu() ? "op buffers + scratch pool high-water (ring scratch)"
                                  : "op buffers only (host engine)") +
        ", max over ranks");
    std::ostringstream ck;
    ck << "check: S <= " << opt_.check_max_seq << ", kv heads 0.." << check_kv_heads_ - 1
       << ", each rank's shard vs its shard of the single-process fp64 host engine on the full sequence; ";
    ck << check_rule_text(ctx_.on_gpu());
    if (opt_.rope) {
      ck << "; reference on the full q, k rotated on the host (positions 0..S-1, host RoPE in " << dtype_name(dtype_)
         << "), gradients rotated back on the host";
    }
    if (opt_.rope && ctx_.on_gpu()) {
      lines.push_back(
          "rope(ms): the RoPE kernel(s) of one iteration timed alone (median, max over ranks); rope%: rope(ms) / "
          "time(ms)");
    }
    lines.push_back(ck.str());
    return lines;
  }

  bool work_is_bytes() const override { return false; }
  double work(int64_t seq) const override {
    if (!block_sparse_)
      return ring_flops_per_gpu(B_, seq, H_, D_, opt_.common.causal, opt_.common.window, opt_.pass, N_);
    return 4.0 * static_cast<double>(B_) * static_cast<double>(H_) * static_cast<double>(D_) *
           static_cast<double>(visible_pairs_of(seq)) * pass_factor(opt_.pass) / static_cast<double>(N_);
  }

  std::string shape_header() const override {
    return seq_shape_header(true) + table_cell(10, "mask") + table_cell(10, "layout");
  }
  std::string shape_cells(int64_t seq) const override {
    return seq_shape_cells(seq, N_) + table_cell(10, mask_cell()) + table_cell(10, opt_.layout);
  }
  std::string extra_header() const override {
    char buf[128];
    std::snprintf(buf, sizeof(buf), " %10s %9s %6s %9s %8s %8s %7s %5s %4s", "comp(ms)", "exp(ms)", "exp%", "xchg(ms)",
                  "busbw", "peakMiB", "%dense", "steps", "hops");
    std::string h = buf;
    if (opt_.rope && ctx_.on_gpu()) h += RopeTimes::header();
    return h;
  }
  std::string extra_cells(int64_t seq, double time_ms) const override {
    const double exposed = time_ms - stats_.compute_ms;
    char buf[200];
    std::snprintf(buf, sizeof(buf), " %10.4f %9.4f %6.1f %9.4f %8.2f %8.0f %7.2f %5d %4d", stats_.compute_ms, exposed,
                  time_ms > 0 ? 100.0 * exposed / time_ms : 0.0, stats_.exchange_ms, stats_.busbw,
                  stats_.peak_bytes / (1024.0 * 1024.0), 100.0 * density(seq), stats_.steps, stats_.hops);
    std::string c = buf;
    if (opt_.rope && ctx_.on_gpu()) c += rope_times_.cells(seq, time_ms);
    return c;
  }

  void json_options(JsonObject& out) const override {
    out.set("pass", pass_name(opt_.pass)).set("layout", opt_.layout).set("ranks", N_);
    out.set("backend", comm_->backend()).set("check_kv_heads", check_kv_heads_);
    out.set("sparse_pattern", pattern_.empty() ? std::string("none") : pattern_);
    if (block_sparse_) out.set("sparse_block", opt_.sparse_block).set("sparse_random", opt_.sparse_random);
    json_rope_keys(out, opt_.rope, rope_);
  }
  // Row keys as dense's for RoPE: rope (bool) always; with --rope also rotary_dim, style, rope_ms (the RoPE kernels
  // of one iteration timed alone, max over ranks, GPU only; null on the host engine) and rope_share_pct.
  void json_row(JsonObject& row, int64_t seq, double time_ms) const override {
    json_shape(row);
    row.set("ranks", N_).set("layout", opt_.layout);
    row.set("local_seq", seq / N_).set("flops", work(seq)).set("flops_global", work(seq) * N_);
    const double exposed = time_ms - stats_.compute_ms;
    row.set("compute_ms", stats_.compute_ms).set("exposed_comm_ms", exposed);
    row.set("exposed_comm_pct", time_ms > 0 ? 100.0 * exposed / time_ms : 0.0);
    row.set("exchange_ms", stats_.exchange_ms).set("kv_shard_bytes", stats_.shard_bytes);
    row.set("busbw_gbps", stats_.busbw).set("kv_exchange", stats_.kv_exchange);
    row.set("peak_mem_bytes", stats_.peak_bytes).set("peak_mem_mib", stats_.peak_bytes / (1024.0 * 1024.0));
    row.set("buffer_bytes", stats_.buffer_bytes).set("pool_high_bytes", stats_.pool_high_bytes);
    row.set("sparse_pattern", pattern_.empty() ? std::string("none") : pattern_).set("block_sparse", block_sparse_);
    row.set("visible_pairs", static_cast<double>(visible_pairs_of(seq))).set("density", density(seq));
    row.set("steps_computed_max", stats_.steps).set("kv_hops", stats_.hops).set("grad_hops", stats_.grad_hops);
    rope_times_.json_row(row, seq, time_ms, opt_.rope, rope_, ctx_.on_gpu());
  }

  void setup(int64_t seq) override {
    begin_size(seq);
    ring::validate_layout(layout_, S_, N_);  // same verdict on every rank (same options)
    Sl_ = ring::local_rows(layout_, S_, N_);
    ring::RingConfig cfg;
    cfg.layout = layout_;
    cfg.seq_len = S_;
    cfg.batch = B_;
    cfg.q_heads = H_;
    cfg.kv_heads = Hkv_;
    cfg.head_dim = D_;
    cfg.dtype = dtype_;
    cfg.mask = mask();
    cfg.alibi_slopes = slopes_ptr();
    if (rope_in_ring_) {
      cfg.rope.inv_freq = ctx_.on_gpu() ? rope_.device_inv_freq() : rope_.host_inv_freq();
      cfg.rope.rotary_dim = rope_.rotary_dim();
      cfg.rope.style = static_cast<int>(rope_.style());
      cfg.rope.scale = rope_.scale();
    }
    cfg.host_precision = HostPrecision::kFloat32;  // host mode only: the fp32 run, checked against fp64
    ring_.reset();
    global_.reset();
    if (block_sparse_) {
      global_ = std::make_unique<BlockLayout>(pattern_layout(S_));  // the same on every rank (same options)
      cfg.mask = global_->band();
      cfg.block_layout = global_.get();
    }
    ring_ = std::make_unique<ring::RingAttention>(*comm_, cfg);

    if (opt_.common.iters > 0 && ctx_.rank == 0) {
      std::fprintf(stderr, "[ring] S=%lld (%lld rows/rank): setting up\n", static_cast<long long>(S_),
                   static_cast<long long>(Sl_));
      std::fflush(stderr);
    }
    // Timing inputs: each rank fills its own shard (values need not match a global tensor for timing).
    const uint64_t seed = size_seed() + 7919ull * ctx_.rank;
    // This rank's shards: q, o (+ dout, dq) [B, S/N, H, D], k, v (+ dk, dv) [B, S/N, Hkv, D], lse [B, H, S/N].
    io_.allocate(ctx_.on_gpu(), dtype_, B_, Sl_, H_, Hkv_, D_, opt_.pass != Pass::kForward);
    io_.fill_inputs(seed, ctx_.stream);
    if (ctx_.on_gpu()) {
      // O and LSE poisoned on the GPU only, as before the port: on the host engine the compute-only backward of
      // --pass fwdbwd reads o and lse that no ring run has written yet (zeros; its timing is all it gives).
      io_.poison_outputs(false, ctx_.stream);
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    }
    if (opt_.rope && ctx_.on_gpu()) time_rope_kernels();  // collective (max over ranks)
    // bwd alone is timed against this O and LSE (computed on rotated q, k with --rope).
    if (opt_.pass == Pass::kBackward) {
      if (opt_.rope && !rope_in_ring_) rope_local(false);
      ring_forward();  // with the ring's RoPE it rotates q, k itself
    }

    stats_ = SizeStats();
    stats_.steps = static_cast<int>(max_over_ranks(ring_->schedule().computed_steps()));
    stats_.hops = ring_->schedule().kv_exchanges();
    stats_.grad_hops = ring_->schedule().grad_exchanges();
    stats_.shard_bytes = ring_kv_shard_bytes(B_, S_, Hkv_, D_, static_cast<int64_t>(dtype_size(dtype_)), N_);
    measure_peak_memory();
    const double comp = time_compute_only();
    const double xchg = time_exchange_only();
    stats_.compute_ms = max_over_ranks(comp);
    stats_.exchange_ms = max_over_ranks(xchg);
    // hops * shard / time: the nccl-tests all-gather busbw when hops = N-1 (allgather_busbw_gbps).
    stats_.busbw = stats_.hops > 0 && stats_.exchange_ms > 0
                       ? stats_.hops * stats_.shard_bytes / (stats_.exchange_ms * 1e-3) / 1e9
                       : 0.0;
    // The compute-only / exchange-only scratch is not part of the ring's footprint: free it before the timed runs.
    acc_o_.reset(), acc_lse_.reset(), acc_dq_.reset(), acc_dkv_.reset(), zero_delta_.reset(), xbuf_.reset();
    hacc_o_ = HostTensor(), hacc_dq_ = HostTensor(), hacc_dk_ = HostTensor(), hacc_dv_ = HostTensor();
    hacc_lse_.clear(), hxbuf_.clear();
  }

  void run() override { run_pass(opt_.pass != Pass::kBackward, opt_.pass != Pass::kForward); }

  CheckResult check() override {
    const uint64_t seed = check_seed();
    const bool bwd = opt_.pass != Pass::kForward;
    const int r = ctx_.rank;
    // 1. The FULL inputs from the seed (identical on every rank), this rank's shard of them.
    HostTensor fq(dtype_, B_, S_, H_, D_), fk(dtype_, B_, S_, Hkv_, D_), fv(dtype_, B_, S_, Hkv_, D_), fdo;
    fill_random_host(fq, seed + 0);
    fill_random_host(fk, seed + 1);
    fill_random_host(fv, seed + 2);
    if (bwd) {
      fdo = HostTensor(dtype_, B_, S_, H_, D_);
      fill_random_host(fdo, seed + 3);
    }
    HostTensor q = shard(fq), k = shard(fk), v = shard(fv), dout;
    if (bwd) dout = shard(fdo);

    // 2. Poisoned outputs, one ring run (forward, then backward), local results on the host.
    io_.upload(q, io_.q), io_.upload(k, io_.k), io_.upload(v, io_.v);
    if (bwd) io_.upload(dout, io_.dout);
    io_.poison_outputs(bwd, ctx_.stream);
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    run_pass(true, bwd);  // the timed path (with --rope: RoPE forward first, RoPE backward last)
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    const HostOutputs got = outputs_to_host(io_, bwd);

    // 3. The single-process references on the full sequence for the checked heads (positions 0..S-1, the options'
    //    band or, block-sparse, the same global layout), then this rank's shard. With --rope they see the FULL q, k
    //    rotated on the host (positions 0..S-1) in the input dtype (what the kernel stores: a rank's shard of them is
    //    what its RoPE launch produced), and their dq, dk are rotated back like the RoPE backward (fp64 for the
    //    reference, the input dtype for the naive run), on the full sequence, before sharding.
    const int64_t Hc = check_kv_heads_ * (H_ / Hkv_), Kc = check_kv_heads_;
    const bool naive_on = ctx_.on_gpu();
    const ReferenceInputs in =
        reference_inputs(fq.view, fk.view, fv.view, fdo.view, Hc, Kc, opt_.rope ? &rope_ : nullptr, dtype_);
    const Mask full_mask = global_ ? global_->host_mask() : mask();
    HostReferences refs = compute_host_references(
        in.q, in.k, in.v, bwd ? &in.dout : nullptr, naive_on,
        [&](const TensorView& rq, const TensorView& rk, const TensorView& rv, const TensorView& ro, float* rlse) {
          return full_sequence_params(rq, rk, rv, ro, rlse, rq.shape[2], S_, full_mask, slopes_host_);
        });
    if (opt_.rope && bwd) rope_.rotate_back_reference_grads(refs, naive_on);
    // Local shards of the references: [B, S/N, Hc|Kc, D] and LSE [B, Hc, S/N].
    auto lse_shard = [&](const std::vector<float>& full) {
      std::vector<float> local(static_cast<size_t>(B_ * Hc * Sl_));
      ring::shard_lse_host(full.data(), local.data(), B_, Hc, layout_, S_, N_, r);
      return local;
    };
    HostReferences local;
    local.o = shard(refs.o);
    if (naive_on) local.naive_o = shard(refs.naive_o);
    local.lse = lse_shard(refs.lse), local.naive_lse = lse_shard(refs.naive_lse);
    if (bwd) {
      local.dq = shard(refs.dq), local.dk = shard(refs.dk), local.dv = shard(refs.dv);
      if (naive_on) local.naive_dq = shard(refs.naive_dq), local.naive_dk = shard(refs.naive_dk);
      if (naive_on) local.naive_dv = shard(refs.naive_dv);
    }

    // 4. Compare each output of this rank's shard on the checked heads.
    return compare_attention_outputs(got, local, naive_on, bwd, Hc, Kc, dtype_);
  }

  void teardown() override {
    io_.reset();
    acc_o_.reset(), acc_lse_.reset(), acc_dq_.reset(), acc_dkv_.reset(), zero_delta_.reset();
    xbuf_.reset();
    hacc_o_ = HostTensor(), hacc_dq_ = HostTensor(), hacc_dk_ = HostTensor(), hacc_dv_ = HostTensor();
    hacc_lse_.clear(), hxbuf_.clear();
    if (ring_) stats_.kv_exchange = ring_->kv_exchange_path();  // json_row runs after teardown
    ring_.reset();
    global_.reset();
  }

 private:
  // One iteration: [RoPE fwd on the local q, k] -> ring fwd (if fwd) -> ring bwd -> [RoPE bwd on dq, dk] (if bwd);
  // the bracketed launches are the caller's only with DISTATTN_BENCH_RING_ROPE=caller (else the ring's calls do it).
  // --pass bwd times (fwd = false, bwd = true): ring bwd [+ RoPE bwd]; q, k were rotated in setup.
  void run_pass(bool fwd, bool bwd) {
    if (fwd && opt_.rope && !rope_in_ring_) rope_local(false);
    if (fwd) ring_forward();
    if (bwd) ring_backward();
    if (bwd && opt_.rope && !rope_in_ring_) rope_local(true);
  }

  // RoPE on this rank's shards in place: forward on q, k or (inverse) backward on dq, dk. Positions: the shard's
  // global position map (the ring schedule's q_pos; the rank's K rows have the same positions). GPU: one fused
  // launch on the compute stream; host engine: rope_apply_host.
  void rope_local(bool inverse) {
    const PositionMap& pos = ring_->q_positions();
    const TensorView& q = inverse ? io_.dq : io_.q;
    const TensorView& k = inverse ? io_.dk : io_.k;
    if (ctx_.on_gpu()) {
      rope_apply_cuda(rope_.params(q, k, pos, true, inverse), ctx_.stream);
    } else {
      rope_apply_host(rope_.params(q, k, pos, false, inverse));
    }
  }
  // The RoPE kernels of one iteration alone (forward; + backward on dq, dk when the pass has a backward; bwd
  // alone: backward only), warm-up then the median of 15 CUDA-event timings (RopeTimes::time_alone), max over ranks
  // (collective); stored for this size.
  void time_rope_kernels() {
    const bool fwd = opt_.pass != Pass::kBackward, bwd = opt_.pass != Pass::kForward;
    rope_times_.set(S_, max_over_ranks(RopeTimes::time_alone(ctx_.stream, [&] {
                      if (fwd) rope_local(false);
                      if (bwd) rope_local(true);
                    })));
  }

  // The mask column: the band, or the pattern's label (e.g. "c-bigbird3", "stride2048", "bdiag2048").
  std::string mask_cell() const {
    if (!block_sparse_) return mask_label(opt_.common.causal, opt_.common.window);
    std::string s = opt_.common.causal ? "c-" : "";
    if (pattern_ == "block-diagonal") s += "bdiag" + std::to_string(opt_.sparse_block);
    if (pattern_ == "strided") s += "stride" + std::to_string(opt_.sparse_block);
    if (pattern_ == "bigbird") s += "bigbird" + std::to_string(opt_.sparse_random);
    if (pattern_ == "random") s += "random" + std::to_string(opt_.sparse_random);
    return s;
  }

  // The global layout of --sparse-pattern for S rows (positions 0..S-1, 128-row blocks).
  BlockLayout pattern_layout(int64_t S) const {
    const PositionMap all = PositionMap::contiguous(0, S);
    const bool causal = opt_.common.causal;
    const CausalRestriction cr = causal ? CausalRestriction::on(all, all) : CausalRestriction::none();
    const uint64_t seed = opt_.seed ^ 0xb10c5ull;
    if (pattern_ == "strided") return BlockLayout::strided(S, S, opt_.sparse_block / kLayoutBlock, 1, cr);
    if (pattern_ == "bigbird") return BlockLayout::bigbird(S, S, 1, 1, opt_.sparse_random, seed, cr);
    if (pattern_ == "random") return BlockLayout::random(S, S, opt_.sparse_random, seed, cr);
    DISTATTN_CHECK_ARG(pattern_ == "block-diagonal", "--sparse-pattern", "no ring layout for '", pattern_, "'");
    // Segments of sparse_block rows: every block pair inside one segment (then the causal band when --causal).
    const int64_t nb = S / kLayoutBlock, seg = std::max<int64_t>(1, opt_.sparse_block / kLayoutBlock);
    std::vector<std::pair<int64_t, int64_t>> list;
    for (int64_t qb = 0; qb < nb; ++qb)
      for (int64_t kb = qb / seg * seg; kb < std::min(nb, (qb / seg + 1) * seg); ++kb) list.emplace_back(qb, kb);
    BlockLayout bd = BlockLayout::from_block_list(nb, nb, list);
    return causal ? BlockLayout::intersect(bd, BlockLayout::causal(S, S, all, all)) : std::move(bd);
  }

  // Visible pairs at size `seq` (exact; cached: the layout is rebuilt for a size not set up yet).
  int64_t visible_pairs_of(int64_t seq) const {
    if (!block_sparse_) return visible_pairs(seq, opt_.common.causal, opt_.common.window);
    const auto it = pairs_.find(seq);
    if (it != pairs_.end()) return it->second;
    const int64_t n =
        global_ && S_ == seq ? layout_visible_pairs(*global_, seq) : layout_visible_pairs(pattern_layout(seq), seq);
    pairs_[seq] = n;
    return n;
  }
  double density(int64_t seq) const {
    return static_cast<double>(visible_pairs_of(seq)) / (static_cast<double>(seq) * static_cast<double>(seq));
  }

  // The mask of one ring step for a direct engine call (compute-only timing): its sub-layout, or the band.
  Mask step_mask(const ring::RingStep& st) const {
    if (st.blocks == nullptr) return mask();
    return ctx_.on_gpu() ? st.blocks->make_mask(st.device_blocks) : st.blocks->host_mask();
  }
  const float* slopes_ptr() const {
    if (slopes_host_.empty()) return nullptr;
    return ctx_.on_gpu() ? static_cast<const float*>(slopes_dev_.get()) : slopes_host_.data();
  }

  // This rank's shard [B, S/N, H, D] of a full host tensor [B, S, H, D] (same dtype).
  HostTensor shard(const HostTensor& full) const {
    const TensorView& f = full.view;
    HostTensor local(f.dtype, f.shape[0], Sl_, f.shape[2], f.shape[3]);
    ring::shard_host(f, local.view, layout_, N_, ctx_.rank);
    return local;
  }

  // A packed view [B, S/N, heads, D] of dtype t at p: the compute-only timing's own fp32 scratch (GPU).
  TensorView local_view(void* p, int64_t heads, DType t) const {
    return TensorView::packed(p, t, ctx_.on_gpu() ? Device::kCuda : Device::kHost, B_, Sl_, heads, D_);
  }
  // The ring on the op's tensors (io_: this rank's shards; the stream is null on the host engine).
  void ring_forward() { ring_->forward(io_.q, io_.k, io_.v, io_.o, io_.lse, ctx_.stream); }
  void ring_backward() {
    ring_->backward(io_.dout, io_.q, io_.k, io_.v, io_.o, io_.lse, io_.dq, io_.dk, io_.dv, ctx_.stream);
  }

  // --- peak memory (GPU: op buffers + the library scratch pool's high-water mark over one run) --------
  void measure_peak_memory() {
    double pool_high = 0;
    // run() is also a warm-up of the ring (and of NCCL's connections).
    if (ctx_.on_gpu()) pool_high = scratch_high_bytes_during(ctx_.stream, [&] { run(); });
    const double buffers = static_cast<double>(io_.bytes());
    stats_.buffer_bytes = max_over_ranks(buffers);
    stats_.pool_high_bytes = max_over_ranks(pool_high);
    stats_.peak_bytes = max_over_ranks(buffers + pool_high);
  }

  // --- compute-only: the ring's engine calls for this rank's schedule, on its own K|V ----------------
  void compute_only_once() {
    const ring::RingSchedule& sched = ring_->schedule();
    const bool fwd = opt_.pass != Pass::kBackward, bwd = opt_.pass != Pass::kForward;
    const bool gpu = ctx_.on_gpu();
    const int64_t nkv = B_ * Sl_ * Hkv_ * D_;
    // The timed ring's own tensors (io_: this rank's q [B, S/N, H, D], k, v [B, S/N, Hkv, D]); own K|V every step.
    AttnParams p;
    p.q = io_.q, p.k = io_.k, p.v = io_.v;
    p.q_pos = sched.q_pos;
    p.alibi_slopes = slopes_ptr();
    bool acc_written = false;  // as the ring: the first computed forward step writes the accumulator plainly
    if (fwd && opt_.rope) rope_local(false);  // the iteration's RoPE launches are compute too
    for (const ring::RingStep& st : sched.steps) {
      if (st.skipped()) continue;
      p.kv_pos = st.kv_pos;
      p.mask = step_mask(st);
      p.persistent_max_rows = ring::RingAttention::step_persistent_max_rows(p.mask);  // scheduled as the ring does
      if (fwd) {
        AttnParams f = p;
        f.o = gpu ? local_view(acc_o_.get(), H_, DType::kFloat32) : hacc_o_.view;
        f.lse = gpu ? static_cast<float*>(acc_lse_.get()) : hacc_lse_.data();
        f.accumulate = acc_written;
        acc_written = true;
        if (gpu) {
          flash_attention_forward(f, ctx_.stream);
        } else {
          host_attention_forward(f, HostPrecision::kFloat32);
        }
      }
      if (bwd) {
        AttnBwdParams b;
        b.fwd = p;
        b.accumulate = true;       // dQ accumulates across the steps
        b.overwrite_dk_dv = true;  // each step's dK|dV written into the scratch, as the ring does (no clearing pass)
        // The ring's O and LSE: GPU, written by a ring forward before this timing (measure_peak_memory's run(), or
        // setup's forward for --pass bwd); host engine --pass fwdbwd, still zeros (its time is all it gives).
        b.fwd.o = io_.o;
        b.fwd.lse = io_.lse;
        b.dout = io_.dout;
        if (gpu) {
          b.dq = local_view(acc_dq_.get(), H_, DType::kFloat32);
          b.dk = local_view(acc_dkv_.get(), Hkv_, DType::kFloat32);
          b.dv = local_view(static_cast<float*>(acc_dkv_.get()) + nkv, Hkv_, DType::kFloat32);
          b.delta = static_cast<const float*>(zero_delta_.get());  // the ring computes delta once, not per step
          flash_attention_backward(b, ctx_.stream);
        } else {
          b.dq = hacc_dq_.view, b.dk = hacc_dk_.view, b.dv = hacc_dv_.view;
          host_attention_backward(b, HostPrecision::kFloat32);
        }
      }
    }
    if (bwd && opt_.rope) rope_local(true);
  }

  double time_compute_only() {
    const bool bwd = opt_.pass != Pass::kForward;
    const int64_t nq = B_ * Sl_ * H_ * D_, nkv = B_ * Sl_ * Hkv_ * D_, nl = B_ * H_ * Sl_;
    if (ctx_.on_gpu()) {
      acc_o_ = DeviceBuffer(nq * sizeof(float));
      acc_lse_ = DeviceBuffer(nl * sizeof(float));
      DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc_o_.get(), 0, acc_o_.bytes(), ctx_.stream));
      // The running LSE starts at 0 rather than the ring's -inf (no fill kernel here; any finite start is a
      // valid merge state and the kernel's time does not depend on it).
      DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc_lse_.get(), 0, acc_lse_.bytes(), ctx_.stream));
      if (bwd) {
        acc_dq_ = DeviceBuffer(nq * sizeof(float));
        acc_dkv_ = DeviceBuffer(2 * nkv * sizeof(float));
        zero_delta_ = DeviceBuffer(nl * sizeof(float));
        DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc_dq_.get(), 0, acc_dq_.bytes(), ctx_.stream));
        DISTATTN_CUDA_CHECK(cudaMemsetAsync(zero_delta_.get(), 0, zero_delta_.bytes(), ctx_.stream));
      }
    } else {
      hacc_o_ = HostTensor(DType::kFloat32, B_, Sl_, H_, D_);
      hacc_lse_.assign(static_cast<size_t>(nl), -std::numeric_limits<float>::infinity());
      if (bwd) {
        hacc_dq_ = HostTensor(DType::kFloat32, B_, Sl_, H_, D_);
        hacc_dk_ = HostTensor(DType::kFloat32, B_, Sl_, Hkv_, D_);
        hacc_dv_ = HostTensor(DType::kFloat32, B_, Sl_, Hkv_, D_);
      }
    }
    return time_loop([this] { compute_only_once(); });
  }

  // --- exchange-only: the K|V hops of a forward (N-1, fewer with an early end), back to back ----------
  double time_exchange_only() {
    const int hops = ring_->schedule().kv_exchanges();
    if (hops == 0) return 0.0;
    const size_t bytes = static_cast<size_t>(stats_.shard_bytes);
    unsigned char* buf[2];
    if (ctx_.on_gpu()) {
      xbuf_ = DeviceBuffer(2 * bytes);
      DISTATTN_CUDA_CHECK(cudaMemsetAsync(xbuf_.get(), 0, xbuf_.bytes(), ctx_.stream));
      buf[0] = static_cast<unsigned char*>(xbuf_.get());
    } else {
      hxbuf_.assign(2 * bytes, 0);
      buf[0] = hxbuf_.data();
    }
    buf[1] = buf[0] + bytes;
    CUstream_st* stream = ctx_.on_gpu() ? ctx_.stream : nullptr;
    // The ring's own moves: from each useful step to the next (a ring hop, or a jump over steps empty everywhere).
    const std::vector<int>& U = ring_->schedule().useful_steps;
    return time_loop([&] {
      int cur = 0;
      for (size_t i = 0; i + 1 < U.size(); ++i) {
        const int jump = U[i + 1] - U[i];
        ExchangeTicket t =
            jump == 1 ? comm_->post_exchange("bench exchange-only", U[i + 1], buf[cur], buf[1 - cur], bytes, stream)
                      : comm_->post_shift("bench exchange-only", U[i + 1], buf[cur], buf[1 - cur], bytes, jump, stream);
        comm_->wait_exchange(t, stream);
        cur = 1 - cur;
      }
    });
  }

  // Median over opt.iters of fn() after opt.warmup runs (at least one) and, on the GPU, --warmup-ms (harness.h's
  // warm_median_ms, as the harness times run(): comp(ms) and the step time at the same settled clock; every rank
  // calls it); host engine: a steady clock.
  template <typename Fn>
  double time_loop(Fn&& fn) {
    const int warmup = std::max(1, opt_.common.warmup), iters = std::max(1, opt_.common.iters);
    return ctx_.on_gpu() ? warm_median_ms(fn, ctx_.stream, warmup, opt_.warmup_ms, iters, opt_.common.sync_each_iter)
                         : median_host_ms(warmup, iters, fn);
  }

  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<ring::RingAttention> ring_;
  bool rope_in_ring_ = false;            // --rope through RingConfig::rope (default) rather than the caller's launches
  std::string pattern_;                  // --sparse-pattern when given ("" otherwise)
  bool block_sparse_ = false;            // a global block layout drives the ring (every pattern but sliding-window)
  std::unique_ptr<BlockLayout> global_;  // this size's layout (setup)
  mutable std::map<int64_t, int64_t> pairs_;  // seq -> visible pairs (block-sparse)
  ring::ShardLayout layout_ = ring::ShardLayout::kZigzag;
  int N_ = 1;
  int64_t Sl_ = 0;  // this rank's rows, S / N
  int64_t check_kv_heads_ = 1;
  std::vector<float> slopes_host_;
  BenchRope rope_;        // --rope: frequencies (host; GPU also on the device), rotary dim, style
  RopeTimes rope_times_;  // --rope, GPU: RoPE kernels of one iteration alone, ms, max over ranks, per size
  SizeStats stats_;
  // This rank's shards, packed: q, o (+ dout, dq) [B, S/N, H, D], k, v (+ dk, dv) [B, S/N, Hkv, D], lse [B, H, S/N]
  // fp32, on the GPU or (host engine) the host.
  AttentionIo io_;
  DeviceBuffer slopes_dev_;
  // The compute-only / exchange-only scratch (GPU; the host engine's below), freed before the timed runs.
  DeviceBuffer acc_o_, acc_lse_, acc_dq_, acc_dkv_, zero_delta_, xbuf_;
  HostTensor hacc_o_, hacc_dq_, hacc_dk_, hacc_dv_;
  std::vector<float> hacc_lse_;
  std::vector<unsigned char> hxbuf_;
};

}  // namespace

std::unique_ptr<BenchOp> make_ring_op(const RunContext& ctx) { return std::make_unique<RingOp>(ctx); }

}  // namespace bench
}  // namespace distattn
