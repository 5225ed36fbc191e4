// LongNet dilated attention on one device: validation, the per-pattern engine calls on strided views (accumulate
// mode, the running LSE compacted per pattern) and the backward (dilated_attention.h).
//
// Why the backward is exact. Mixing the patterns by their LSEs is one softmax over the multiset union U of
// every pattern's (query i, key j) pairs: with LSE_i = log sum_{(i,j) in U} exp(s_ij) (a pair kept by two
// patterns appears twice, in the forward because both partials contain it and both partial LSEs count it),
//   O_i = sum_{(i,j) in U} P_ij v_j,   P_ij = exp(s_ij - LSE_i).
// Its gradient is the ordinary attention gradient over U: dV_j += P_ij dO_i, dS_ij = P_ij (dO_i.v_j - delta_i),
// delta_i = dO_i . O_i (final O). Each pattern's slice of U is exactly one engine call's visible pairs, so
// the backward is, for every pattern/segment/offset class, the engine's backward on the SAME strided views,
// fed the FINAL O (hence the final delta, which the engine computes from o and dout) and the FINAL LSE
// (compacted to the call's rows), adding into fp32 dQ, dK, dV (accumulate = true). A duplicated pair is
// visited by both pattern calls, so it contributes twice, as in the forward.
#include "distattn/dilated/dilated_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "dilated_index.h"
#include "dilated_kernels.h"
#include "dilated_scratch.h"
#include "dilated_views.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/core/operand_checks.h"
#include "distattn/sparse/flash_attention.h"

namespace distattn {

namespace {

using dilated_detail::compact_index;
using dilated_detail::head_groups;
using dilated_detail::HeadGroup;
using dilated_detail::host_cast;
using dilated_detail::kept;
using dilated_detail::max_rows;
using dilated_detail::rows_of_class;

std::string pattern_arg(size_t i, const char* field) { return "config.patterns[" + std::to_string(i) + "]." + field; }

// One strided view of a [B, S, H, D] tensor t, as integer coefficients of t's own strides (so the same spec
// serves q, o, dout, dq and, with the kv head mapping, k, v, dk, dv whatever their layouts):
//   start element  ob*st0 + orow*st1 + oh*st2,   shape [batch, rows, heads, D],
//   strides        {cb*st0 + crow*st1 + ch*st2,  rstep*st1,  hstep*st2,  1}.
struct ViewSpec {
  int64_t ob = 0, orow = 0, oh = 0;  // start (batch, row, head)
  int64_t cb = 0, crow = 0, ch = 0;  // batch step as (batches, rows, heads)
  int64_t batch = 1, rows = 0, rstep = 1, heads = 0, hstep = 1;
  TensorView apply(const TensorView& t) const {
    TensorView v = t;
    v.data = static_cast<char*>(t.data) +
             (ob * t.stride[0] + orow * t.stride[1] + oh * t.stride[2]) * static_cast<int64_t>(dtype_size(t.dtype));
    v.shape = {batch, rows, heads, t.shape[3]};
    v.stride = {cb * t.stride[0] + crow * t.stride[1] + ch * t.stride[2], rstep * t.stride[1], hstep * t.stride[2], 1};
    return v;
  }
};

// One engine call of a pattern: q-side view (q, o, dout, dq), kv-side view (k, v, dk, dv), its rows' entries in
// the compacted LSE [B, S/w, Hq, m_max] (row-contiguous), or for a direct-LSE pattern (lse_direct) in the caller's
// lse [B, Hq, S] itself (row stride r), positions, ALiBi slope offset (into the pattern's permuted slopes; -1: none).
struct PatternCall {
  ViewSpec qv, kv;
  int64_t lse_offset = 0, lse_batch_stride = 0, lse_head_stride = 0;
  int64_t lse_row_stride = 0;  // AttnParams::lse_row_stride: r for a direct-LSE pattern of rate r > 1, else 0 (1)
  PositionMap pos;
  int64_t slope_offset = -1;
  // Calls of different lane keys write disjoint elements (o, lse, dq, dk, dv) and may run concurrently: the
  // class s on the per-class path (its head groups stay in order: per-head GQA calls of one class share kv
  // heads in the backward), the call index on the classes-folded path (distinct segments or classes).
  int64_t lane_key = 0;
};

// Every engine call of pattern (w, r) over [B, S, Hq / Hkv, D] tensors (dilated_attention.h "How it runs").
//   Segments folded (per class s, head group hg): the B * S/w segments are the batch, flattened index
//   u = b*(S/w) + g at row u*w (uniform because batch stride == S * row stride), rows u*w + s + r*i; cut into
//   calls of at most `chunk` segments. Compacted LSE of (u, h, i): (u*Hq + h)*m_max + i: batch step Hq*m_max.
//   Unfolded (the layout does not allow folding): one call per segment g with the B batches as the batch.
//   Direct LSE (lse_direct: the calls address the caller's [B, Hq, S] LSE itself, no compaction): class s's row i of
//   segment g is row p = g*w + s + r*i, entry (b, h, p) at (b*Hq + h)*S + p: row stride r (AttnParams::lse_row_stride;
//   1 for rate 1, whose rows are consecutive). Folded calls stay inside one batch b (segments g0 .. g0+n-1: offset
//   (b*Hq + h0)*S + g0*w + s, batch step w, head step hstep*S); unfolded calls (segment g, the B batches): offset
//   h0*S + g*w + s, batch step Hq*S. Classes folded: class s0 + cs*t at head s0 + cs*t and row g*w + s0 + cs*t, so
//   the batch step is cs*(S + 1), the head step r*S (the rows of one entry span at most w <= S elements, so no two
//   entries coincide).
//   Classes folded (per batch b, segment g, run of classes s0 .. s0+n-1 with equal rows and heads): class s at
//   row g*w + s, head s: batch step (0, 1, 1) rows/heads; heads s + r*j: head step r; LSE batch step m_max
//   (class s = head s), head step r*m_max.
// Head chains (head_parity 0 or 1; -1: every head): only the q heads h with h % 2 == head_parity. The caller allows
// it only where every call keeps to heads of one parity (head_chains_ok): an even rate's class s holds heads of parity
// s % 2 only (so the classes of that parity are taken, folded classes step by 2), rate 1's one class is cut to heads
// head_parity, head_parity + 2, ... (Hq == Hkv, so kv heads step alike); Hq even, Hq == Hkv, no ALiBi.
std::vector<PatternCall> plan_pattern(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t w, int64_t r,
                                      bool fold_segments, int64_t chunk, bool fold_classes, bool alibi, bool lse_direct,
                                      int head_parity = -1) {
  DISTATTN_CHECK(head_parity < 0 || ((r == 1 || r % 2 == 0) && Hq % 2 == 0 && Hq == Hkv && !alibi),
                 "head chains need rate 1 or an even rate, Hq even, Hq == Hkv and no ALiBi");
  std::vector<PatternCall> calls;
  const int64_t nseg = S / w, mm = max_rows(w, r), nclass = std::min(r, Hq);
  const int64_t seg_batch = fold_segments ? std::min(chunk, B * nseg) : B;
  // Classes taken: all (cs = 1), or with a head parity and an even rate those of that parity (cs = 2).
  const bool split = head_parity >= 0;
  const int64_t cfirst = split && r > 1 ? head_parity : 0, cs = split && r > 1 ? 2 : 1;
  // Classes fold in runs of consecutive (taken) classes with equal row and head counts (ragged rates split them, e.g.
  // r = 6 on 16K rows: runs of 2): a classes call's batch is one run, so the longest run is compared with the segment
  // batch (with runs of 2 against 4 folded segments, 12 calls of 10-12 pairs would replace 6 calls of 20-24).
  auto same = [&](int64_t a, int64_t b) {
    return rows_of_class(w, r, a) == rows_of_class(w, r, b) && (Hq - 1 - a) / r == (Hq - 1 - b) / r;
  };
  int64_t max_run = 0;
  for (int64_t s0 = cfirst; s0 < nclass;) {
    int64_t n = 1;
    while (s0 + cs * n < nclass && same(s0 + cs * n, s0)) ++n;
    max_run = std::max(max_run, n);
    s0 += cs * n;
  }
  const bool classes = fold_classes && r > 1 && !alibi && Hq == Hkv && max_run > seg_batch && nclass <= 65535;
  if (classes) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t g = 0; g < nseg; ++g)
        for (int64_t s0 = cfirst; s0 < nclass;) {
          const int64_t rows = rows_of_class(w, r, s0), heads = (Hq - 1 - s0) / r + 1;
          int64_t n = 1;
          while (s0 + cs * n < nclass && same(s0 + cs * n, s0)) ++n;
          // Batch entry t = class s0 + cs*t: row and head offsets both grow by cs per entry.
          PatternCall c;
          c.qv.ob = b, c.qv.orow = g * w + s0, c.qv.oh = s0;
          c.qv.cb = 0, c.qv.crow = cs, c.qv.ch = cs;
          c.qv.batch = n, c.qv.rows = rows, c.qv.rstep = r, c.qv.heads = heads, c.qv.hstep = r;
          c.kv = c.qv;  // Hq == Hkv
          if (lse_direct) {
            c.lse_offset = (b * Hq + s0) * S + g * w + s0;
            c.lse_batch_stride = cs * (S + 1);
            c.lse_head_stride = r * S;
            c.lse_row_stride = r;
          } else {
            c.lse_offset = ((b * nseg + g) * Hq + s0) * mm;
            c.lse_batch_stride = cs * mm;
            c.lse_head_stride = r * mm;
          }
          c.pos = PositionMap::strided(0, r, rows);
          c.lane_key = static_cast<int64_t>(calls.size());
          calls.push_back(c);
          s0 += cs * n;
        }
    return calls;
  }
  int64_t class_offset = 0;
  const int64_t total = fold_segments ? B * nseg : nseg;
  const int64_t per_call = fold_segments ? chunk : 1;
  for (int64_t s = 0; s < nclass; ++s) {
    const int64_t rows = rows_of_class(w, r, s);
    std::vector<HeadGroup> groups = head_groups(Hq, Hkv, r, s, class_offset);
    if (split && r > 1 && s % 2 != head_parity) groups.clear();  // the other chain's class
    if (split && r == 1) groups = {{head_parity, 2, head_parity, 2, Hq / 2, false, 0}};
    for (const HeadGroup& hg : groups) {
      for (int64_t first = 0, n = 0; first < total; first += n) {
        n = std::min(per_call, total - first);
        if (lse_direct && fold_segments) n = std::min(n, nseg - first % nseg);  // inside one batch
        PatternCall c;
        c.qv.orow = first * w + s, c.qv.oh = hg.qh0;
        c.qv.rows = rows, c.qv.rstep = r, c.qv.heads = hg.count, c.qv.hstep = hg.qstep;
        if (fold_segments) {
          c.qv.batch = n, c.qv.crow = w;
        } else {
          c.qv.batch = B, c.qv.cb = 1;
        }
        c.kv = c.qv;
        if (hg.kv_all) {
          c.kv.oh = 0, c.kv.heads = Hkv, c.kv.hstep = 1;
        } else {
          c.kv.oh = hg.kh0, c.kv.heads = hg.count, c.kv.hstep = hg.kstep;
        }
        if (lse_direct) {
          const int64_t b = fold_segments ? first / nseg : 0, g0 = fold_segments ? first % nseg : first;
          c.lse_offset = (b * Hq + hg.qh0) * S + g0 * w + s;
          c.lse_batch_stride = fold_segments ? w : Hq * S;
          c.lse_head_stride = hg.qstep * S;
          c.lse_row_stride = r;
        } else {
          c.lse_offset = (first * Hq + hg.qh0) * mm;
          c.lse_batch_stride = fold_segments ? Hq * mm : nseg * Hq * mm;
          c.lse_head_stride = hg.qstep * mm;
        }
        c.pos = PositionMap::strided(fold_segments ? s : first * w + s, r, rows);
        c.slope_offset = alibi ? hg.slope_offset : -1;
        c.lane_key = s;
        calls.push_back(c);
      }
    }
    class_offset += (Hq - 1 - s) / r + 1;
  }
  return calls;
}

bool foldable(const TensorView& t) { return t.shape[0] == 1 || t.stride[0] == t.shape[1] * t.stride[1]; }

// The engine parameters of one call: q, k, v, o views, the LSE (compacted at lse_c, or the caller's [B, Hq, S] for a
// direct-LSE pattern: c.lse_offset is relative to the array passed), positions, mask, ALiBi.
AttnParams engine_params(const PatternCall& c, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& o, float* lse_c, const float* slopes, const DilatedConfig& config) {
  AttnParams p;
  p.q = c.qv.apply(q);
  p.k = c.kv.apply(k);
  p.v = c.kv.apply(v);
  p.o = c.qv.apply(o);
  p.lse = lse_c + c.lse_offset;
  p.lse_batch_stride = c.lse_batch_stride;
  p.lse_head_stride = c.lse_head_stride;
  p.lse_row_stride = c.lse_row_stride;
  p.q_pos = c.pos;
  p.kv_pos = c.pos;
  p.mask.causal = config.causal;
  p.alibi_slopes = slopes != nullptr && c.slope_offset >= 0 ? slopes + c.slope_offset : nullptr;
  p.softmax_scale = config.softmax_scale;
  return p;
}

// --- host versions of the helpers (cuda versions in dilated_kernels.cu) ---
// Pattern (w, r)'s kept entries between lse [B, H, S] and the compacted lse_c (dilated_index.h).
// head_parity >= 0: only heads h with h % 2 == head_parity (here and in host_lse_advance).
void host_lse_move(float* lse, float* lse_c, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r, bool to_compact,
                   int head_parity = -1) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t p = 0; p < S && (head_parity < 0 || h % 2 == head_parity); ++p) {
        if (!kept(p, h, w, r)) continue;
        float& c = lse_c[compact_index(b, p, h, S, H, w, r)];
        float& l = lse[(b * H + h) * S + p];
        if (to_compact) {
          c = l;
        } else {
          l = c;
        }
      }
}

// Host form of cuda_lse_advance (dilated_kernels.h): pattern 1's scatter and pattern 2's gather, the gather taking
// pattern 1's rows from lse_c1.
void host_lse_advance(const float* lse_c1, float* lse, float* lse_c2, int64_t B, int64_t S, int64_t H, int64_t w1,
                      int64_t r1, int64_t w2, int64_t r2, int head_parity = -1) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t p = 0; p < S && (head_parity < 0 || h % 2 == head_parity); ++p) {
        const bool k1 = kept(p, h, w1, r1);
        const float v = k1 ? lse_c1[compact_index(b, p, h, S, H, w1, r1)] : lse[(b * H + h) * S + p];
        if (kept(p, h, w2, r2)) lse_c2[compact_index(b, p, h, S, H, w2, r2)] = v;
        if (k1) lse[(b * H + h) * S + p] = v;
      }
}

int64_t gcd64(int64_t a, int64_t b) { return b == 0 ? a : gcd64(b, a % b); }

// Floats of the compacted LSE of pattern (w, r): B * S/w * Hq * ceil(w/r).
int64_t compact_floats(int64_t B, int64_t S, int64_t Hq, int64_t w, int64_t r) {
  return B * (S / w) * Hq * max_rows(w, r);
}

}  // namespace

void validate_dilated_config(const DilatedConfig& config, int64_t seqlen, int64_t q_heads) {
  DISTATTN_CHECK_ARG(!config.patterns.empty(), "config.patterns", "is empty (expected at least one (segment, rate))");
  for (size_t i = 0; i < config.patterns.size(); ++i) {
    const DilatedPattern& pt = config.patterns[i];
    DISTATTN_CHECK_ARG(pt.segment >= 1, pattern_arg(i, "segment"), "is ", pt.segment, " (expected >= 1)");
    DISTATTN_CHECK_ARG(seqlen % pt.segment == 0, pattern_arg(i, "segment"), "is ", pt.segment,
                       ", which does not divide the sequence length ", seqlen);
    DISTATTN_CHECK_ARG(pt.rate >= 1 && pt.rate <= pt.segment, pattern_arg(i, "rate"), "is ", pt.rate,
                       " (expected 1 <= rate <= segment length ", pt.segment, ")");
    DISTATTN_CHECK_ARG(config.ragged_rates || pt.segment % pt.rate == 0, pattern_arg(i, "rate"), "is ", pt.rate,
                       ", which does not divide the segment length ", pt.segment,
                       " (set config.ragged_rates = true for torchscale's ragged classes: class s keeps rows s, "
                       "s + r, ... < w of each segment)");
  }
  DISTATTN_CHECK_ARG(std::isfinite(config.softmax_scale) && config.softmax_scale >= 0.f, "config.softmax_scale", "is ",
                     config.softmax_scale, " (expected finite and >= 0; 0: 1/sqrt(D))");
  if (!config.alibi_slopes.empty()) {
    DISTATTN_CHECK_ARG(static_cast<int64_t>(config.alibi_slopes.size()) == q_heads, "config.alibi_slopes", "has ",
                       config.alibi_slopes.size(), " slopes, expected one per q head (", q_heads, ")");
    for (size_t h = 0; h < config.alibi_slopes.size(); ++h) {
      DISTATTN_CHECK_ARG(std::isfinite(config.alibi_slopes[h]), "config.alibi_slopes", "slope of head ", h, " is ",
                         config.alibi_slopes[h], " (expected finite)");
    }
  }
  if (config.error_if_query_without_key) {
    // Row p is kept for head h by pattern i iff (p mod w_i) mod r_i == h mod r_i: periodic in p with period
    // r_i when r_i divides w_i, else w_i; so rows [0, min(S, lcm of those periods)) decide.
    int64_t period = 1;
    for (const DilatedPattern& pt : config.patterns) {
      const int64_t pp = pt.segment % pt.rate == 0 ? pt.rate : pt.segment;
      period = period / gcd64(period, pp) * pp;
      if (period >= seqlen) {
        period = seqlen;
        break;
      }
    }
    for (int64_t h = 0; h < q_heads; ++h) {
      for (int64_t p = 0; p < std::min(period, seqlen); ++p) {
        bool any = false;
        for (const DilatedPattern& pt : config.patterns) any = any || kept(p, h, pt.segment, pt.rate);
        DISTATTN_CHECK_ARG(any, "config.patterns", "leave row ", p, " of head ", h,
                           " with no key (no pattern keeps it) and error_if_query_without_key is set");
      }
    }
  }
}

namespace {
// A switch that is on unless the environment variable `name` is "0": "1" or unset is on, anything else throws naming
// the variable (distattn/core/env.h). The callers read it once per process.
bool env_switch_on(const char* name) { return env_choice(name, {"0", "1"}, 1) == 1; }

bool share_sms_default() {
  static const bool on = env_switch_on("DISTATTN_DILATED_SHARE_SMS");
  return on;
}

bool chain_lanes_default() {
  static const bool on = env_switch_on("DISTATTN_DILATED_CHAIN_LANES");
  return on;
}

bool strided_lse_default() {
  static const bool on = env_switch_on("DISTATTN_DILATED_STRIDED_LSE");
  return on;
}

// Head chains' row limit (DilatedAttention::set_head_chains): DISTATTN_DILATED_HEAD_CHAINS unset: the default
// (kHeadChainsMaxRows); "0": off; "1": no limit; N > 1: chains where B * S <= N. Anything but a non-negative integer
// throws naming the variable.
int64_t head_chains_default() {
  static const int64_t limit = [] {
    constexpr int64_t kUnset = -2;
    const int64_t x = env_int("DISTATTN_DILATED_HEAD_CHAINS", 0, std::numeric_limits<int64_t>::max(), kUnset);
    if (x == kUnset) return DilatedAttention::kHeadChainsMaxRows;
    return x == 1 ? int64_t{-1} : x;  // head_chains_max_rows_: 0 off, -1 no limit, N the limit
  }();
  return limit;
}

// Whether the forward may run as two head chains (set_head_chains; plan_pattern's head_parity): at least two patterns,
// every rate 1 or even (an even rate's classes keep heads of one parity; rate 1 is cut by head parity), Hq even,
// Hq == Hkv (kv heads step with the q heads), no ALiBi (the calls' slopes would need a stride).
bool head_chains_ok(const DilatedConfig& config, int64_t Hq, int64_t Hkv) {
  if (config.patterns.size() < 2 || Hq % 2 != 0 || Hq != Hkv || !config.alibi_slopes.empty()) return false;
  for (const DilatedPattern& pt : config.patterns)
    if (pt.rate != 1 && pt.rate % 2 != 0) return false;
  return true;
}
}  // namespace

DilatedAttention::DilatedAttention(DilatedConfig config, Device device)
    : config_(std::move(config)),
      device_(device),
      share_sms_(share_sms_default()),
      strided_lse_(strided_lse_default()),
      chain_lanes_(chain_lanes_default()),
      head_chains_max_rows_(head_chains_default()) {
  const int64_t H = static_cast<int64_t>(config_.alibi_slopes.size());
  if (H > 0) {
    // Per pattern, the slopes in (h mod r, h div r) order: class s's heads s, s + r, ... are adjacent, so a
    // call over them (or over one of them) points at a contiguous slice.
    for (const DilatedPattern& pt : config_.patterns) {
      const int64_t r = std::max<int64_t>(pt.rate, 1);
      for (int64_t s = 0; s < std::min(r, H); ++s)
        for (int64_t h = s; h < H; h += r) slopes_host_.push_back(config_.alibi_slopes[h]);
    }
    if (device_ == Device::kCuda) {
      DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&slopes_device_), slopes_host_.size() * sizeof(float)));
      DISTATTN_CUDA_CHECK(
          cudaMemcpy(slopes_device_, slopes_host_.data(), slopes_host_.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
  }
}

DilatedAttention::~DilatedAttention() {
  if (device_ == Device::kCuda) {
    if (scratch_ != nullptr || slopes_device_ != nullptr) cudaStreamSynchronize(last_stream_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (slopes_device_ != nullptr) cudaFree(slopes_device_);
    for (LaneSet& set : lane_sets_) {
      for (cudaStream_t st : set.streams) cudaStreamDestroy(st);
      for (cudaEvent_t ev : set.events) cudaEventDestroy(ev);
      if (set.fork != nullptr) cudaEventDestroy(set.fork);
    }
  }
}

int DilatedAttention::fork_lanes(int64_t keys, cudaStream_t stream, int set_index) {
  LaneSet& set = lane_sets_[set_index];
  const int lanes = concurrent_calls_ ? static_cast<int>(std::min<int64_t>(kMaxLanes, keys)) : 1;
  if (lanes <= 1) return 1;
  while (static_cast<int>(set.streams.size()) < lanes - 1) {  // created on first use, kept
    cudaStream_t st = nullptr;
    DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    set.streams.push_back(st);
    cudaEvent_t ev = nullptr;
    DISTATTN_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    set.events.push_back(ev);
  }
  if (set.fork == nullptr) DISTATTN_CUDA_CHECK(cudaEventCreateWithFlags(&set.fork, cudaEventDisableTiming));
  // Side lanes start after everything enqueued on `stream` so far (the LSE gather, earlier patterns).
  DISTATTN_CUDA_CHECK(cudaEventRecord(set.fork, stream));
  for (int l = 0; l < lanes - 1; ++l) DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(set.streams[l], set.fork, 0));
  return lanes;
}

cudaStream_t DilatedAttention::lane_stream(int64_t key, int lanes, cudaStream_t stream, int set_index) const {
  const int l = lanes <= 1 ? 0 : static_cast<int>(key % lanes);
  return l == 0 ? stream : lane_sets_[set_index].streams[l - 1];
}

void DilatedAttention::join_lanes(int lanes, cudaStream_t stream, int set_index) {
  // `stream` continues (LSE scatter, next pattern, cast) only after every side lane's calls.
  LaneSet& set = lane_sets_[set_index];
  for (int l = 0; l < lanes - 1; ++l) {
    DISTATTN_CUDA_CHECK(cudaEventRecord(set.events[l], set.streams[l]));
    DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(stream, set.events[l], 0));
  }
}

int64_t DilatedAttention::fold_chunk(int64_t total) const {
  int64_t limit = max_fold_batch_ > 0 ? max_fold_batch_ : (device_ == Device::kCuda ? 65535 : total);
  return std::max<int64_t>(1, std::min(limit, total));
}

const float* DilatedAttention::pattern_slopes(size_t pattern) const {
  if (slopes_host_.empty()) return nullptr;
  const int64_t H = static_cast<int64_t>(config_.alibi_slopes.size());
  const float* base = device_ == Device::kCuda ? slopes_device_ : slopes_host_.data();
  return base + pattern * H;
}

float* DilatedAttention::scratch(int64_t floats) {
  return dilated_detail::grow_scratch(device_ == Device::kHost, last_stream_, floats, scratch_, scratch_floats_,
                                      scratch_host_);
}

void DilatedAttention::validate_tensors(const TensorView& q, const TensorView& k, const TensorView& v,
                                        const TensorView& o, const float* lse) const {
  DISTATTN_CHECK_ARG(lse != nullptr, "lse", "is null; dilated attention needs the fp32 LSE [B, Hq, S]");
  DISTATTN_CHECK_ARG(q.data == nullptr || k.data == nullptr || k.shape[1] == q.shape[1], "k", "has ", k.shape[1],
                     " rows, q has ", q.shape[1], " (dilated self-attention needs equal lengths)");
  // The engine's rules on the whole tensors (shapes, dtypes, strides, devices, aliasing).
  AttnParams full;
  full.q = q;
  full.k = k;
  full.v = v;
  full.o = o;
  full.lse = const_cast<float*>(lse);
  full.q_pos = PositionMap::contiguous(0, std::max<int64_t>(q.shape[1], 1));
  full.kv_pos = PositionMap::contiguous(0, std::max<int64_t>(k.shape[1], 1));
  full.mask.causal = config_.causal;
  validate_forward(full, device_);
  if (device_ == Device::kCuda) {
    DISTATTN_CHECK_ARG(flash_supports_head_dim(q.head_dim()), "q", "has head dim ", q.head_dim(),
                       ", which the CUDA engine has no kernels for");
    // o may be written by the engine directly (fused final): device memory, checked before anything launches.
    check_device_pointer(o.data, "o");
    // lse is read and written by this file's own kernels (the running LSE), not only by the engine.
    cudaPointerAttributes attr{};
    const cudaError_t rc = cudaPointerGetAttributes(&attr, lse);
    if (rc != cudaSuccess) cudaGetLastError();
    DISTATTN_CHECK_ARG(rc == cudaSuccess && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
                       "lse", "is not device memory (the CUDA engine needs the fp32 LSE [B, Hq, S] on the device)");
  }
  validate_dilated_config(config_, q.seqlen(), q.heads());
}

// Pattern order and modes. Fused final (o in q's dtype, a rate-1 pattern present, fused_final): every other
// pattern accumulates first into the fp32 accumulator, which starts with lse = -inf only (the engine does not
// read o where lse is -inf, so the accumulator is never cleared), and the first rate-1 pattern runs LAST in final
// accumulate mode, writing the merged result straight into o in q's dtype (AttnParams::o_final): no fp32 write of
// that pattern, no cast pass. A rate-1 pattern keeps every row of every head, so its calls write all of o.
// Otherwise (o fp32, or no rate-1 pattern): a rate-1 pattern first in plain mode (it initialises the accumulator),
// the others accumulating, then one cast of the accumulator into o; with no rate-1 pattern the accumulator starts
// at lse = -inf. A single rate-1 pattern runs in plain mode straight into o either way.
namespace {
enum class FwdMode { kPlain, kAccumulate, kFinal };
struct FwdStep {
  size_t pattern;
  FwdMode mode;
};
struct FwdPlan {
  std::vector<FwdStep> steps;
  bool init_lse = false;  // fill lse with -inf first (no step writes every row in plain mode before the rest)
  bool cast = false;      // cast the fp32 accumulator into o at the end
  bool o_direct = false;  // the plain / final step writes the caller's o (not the accumulator)
};
// o_direct_ok: the engine may write o itself (CUDA: 16-byte aligned base and strides, as it requires of outputs).
// fused_final: o_direct_ok and o in q's dtype, and fused final mode wanted.
FwdPlan plan_forward(const DilatedConfig& config, bool o_direct_ok, bool fused_final) {
  FwdPlan plan;
  const size_t np = config.patterns.size();
  size_t r1 = np;
  for (size_t i = 0; i < np && r1 == np; ++i)
    if (config.patterns[i].rate == 1) r1 = i;
  if (r1 < np && np == 1 && o_direct_ok) {  // one rate-1 pattern: plain, into o itself
    plan.steps.push_back({r1, FwdMode::kPlain});
    plan.o_direct = true;
    return plan;
  }
  if (r1 < np && fused_final) {
    for (size_t i = 0; i < np; ++i)
      if (i != r1) plan.steps.push_back({i, FwdMode::kAccumulate});
    plan.steps.push_back({r1, FwdMode::kFinal});
    plan.init_lse = true;
    plan.o_direct = true;
    return plan;
  }
  if (r1 < np) plan.steps.push_back({r1, FwdMode::kPlain});
  for (size_t i = 0; i < np; ++i)
    if (i != r1) plan.steps.push_back({i, FwdMode::kAccumulate});
  plan.init_lse = r1 == np;
  plan.cast = true;
  return plan;
}
}  // namespace

void DilatedAttention::forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                               float* lse, cudaStream_t stream) {
  validate_tensors(q, k, v, o, lse);
  const int64_t B = q.batch(), S = q.seqlen(), Hq = q.heads(), Hkv = k.heads(), D = q.head_dim();
  const int64_t n_o = B * S * Hq * D, n_lse = B * Hq * S;
  // A pattern's calls address the caller's lse directly (plan_pattern "Direct LSE"): rate 1 with set_direct_lse, rate
  // r > 1 with set_strided_lse (row stride r); otherwise through the compacted LSE with gathers and scatters.
  auto direct_for = [&](int64_t r) { return r == 1 ? direct_lse_ : strided_lse_; };
  int64_t n_c = 0;  // compacted LSE floats of the largest pattern that uses one (direct-LSE patterns do not)
  for (const DilatedPattern& pt : config_.patterns)
    if (!direct_for(pt.rate)) n_c = std::max(n_c, compact_floats(B, S, Hq, pt.segment, pt.rate));
  const bool cuda = device_ == Device::kCuda;
  // Segments fold into the batch only where every tensor a call addresses allows it (the accumulator is packed;
  // o is addressed directly by the plain / final step).
  const bool fold_in = fold_segments_ && foldable(q) && foldable(k) && foldable(v);
  // The engine writes o itself (fused final, or a lone rate-1 pattern in plain mode) only where it can: segments
  // fold only over a foldable o, and the CUDA engine's output alignment; otherwise the accumulator and a cast.
  // Fused final also needs o in q's dtype (o_final's contract).
  const bool o_direct_ok = (!fold_in || foldable(o)) && (!cuda || cuda_tensor_aligned(o));
  const bool fused = fused_final_ && o_direct_ok && o.dtype == q.dtype;
  const FwdPlan plan = plan_forward(config_, o_direct_ok, fused);
  const bool fold = fold_in && (!plan.o_direct || foldable(o));
  const bool needs_acc = plan.cast || plan.steps.size() > 1;
  float* base = scratch((needs_acc ? n_o : 0) + 2 * n_c);
  last_stream_ = stream;
  float* acc = needs_acc ? base : nullptr;  // packed fp32 [B, S, Hq, D]: the mixed output; the running LSE is `lse`
  // Compacted LSEs [B, S/w, Hq, ceil(w/r)], two alternating: a pattern's scatter is fused with the next pattern's
  // gather (cuda_lse_advance), which writes the other array.
  float* const lse_cs[2] = {base + (needs_acc ? n_o : 0), base + (needs_acc ? n_o : 0) + n_c};
  const TensorView acc_view = needs_acc ? TensorView::packed(acc, DType::kFloat32, device_, B, S, Hq, D) : TensorView{};
  const bool alibi = !config_.alibi_slopes.empty();
  if (plan.init_lse) {
    // lse = -inf marks every row empty; the engine never reads the accumulator there, so it is not cleared (rows no
    // pattern keeps stay -inf; the cast path writes them from an accumulator that must then be 0).
    if (cuda) {
      if (plan.cast) DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc, 0, n_o * sizeof(float), stream));
      dilated_detail::cuda_fill(lse, n_lse, -std::numeric_limits<float>::infinity(), stream);
    } else {
      if (plan.cast) std::fill(acc, acc + n_o, 0.f);
      std::fill(lse, lse + n_lse, -std::numeric_limits<float>::infinity());
    }
  }

  // One chain of pattern steps over the heads of parity hp (-1: every head) on stream cs. With head chains
  // (set_head_chains) the even and the odd q heads run as two such chains on two streams: a pattern's calls, LSE moves
  // and merges touch only their own heads' rows of o, lse, the accumulator and the compacted LSEs (whose entries are
  // per head), so the chains need no ordering between them, and the launches of one fill the SMs that the other's
  // launch ramps and tails leave idle (the patterns of a chain still run one after another). Each chain keeps its own
  // pending scatter and alternates the two compacted arrays in the same order (disjoint head entries).
  auto run_chain = [&](int hp, cudaStream_t cs) {
    int buf = 0;                     // lse_cs[buf]: the next compacted pattern's array
    bool lse_fresh = plan.init_lse;  // lse holds -inf everywhere (no step has written it yet)
    // The last compacted pattern's LSE not yet scattered into lse (it waits to be fused with the next gather).
    struct Pending {
      bool on = false;
      float* lse_c = nullptr;
      int64_t w = 0, r = 0;
    } pending;
    auto flush = [&]() {  // scatter the pending pattern alone
      if (!pending.on) return;
      if (cuda) {
        dilated_detail::cuda_lse_scatter(pending.lse_c, lse, B, S, Hq, pending.w, pending.r, cs, hp);
      } else {
        host_lse_move(lse, pending.lse_c, B, S, Hq, pending.w, pending.r, false, hp);
      }
      pending.on = false;
    };
    for (const FwdStep& step : plan.steps) {
      const size_t i = step.pattern;
      const int64_t w = config_.patterns[i].segment, r = config_.patterns[i].rate;
      // An accumulating step onto an all -inf lse (the first one after init_lse) runs in plain mode into the
      // accumulator instead: merging into -inf gives L = LSE_b and o = O_b (the engine reads nothing there), which is
      // what plain mode writes, without the accumulate epilogue's reads and without filling the compacted LSE first.
      const bool into_fresh = lse_fresh && step.mode == FwdMode::kAccumulate;
      const bool accumulate = step.mode != FwdMode::kPlain && !into_fresh;
      lse_fresh = false;
      // A direct pattern's calls address lse itself (plan_pattern "Direct LSE"; row stride r): no gather, no scatter.
      const bool direct = direct_for(r);
      float* const lse_c = lse_cs[buf];
      float* const lse_calls = direct ? lse : lse_c;
      // The running LSE of the rows this pattern keeps, in the layout its calls address (row stride 1): gathered from
      // lse, fused with the previous pattern's scatter when one is pending.
      if (accumulate && !direct) {
        if (pending.on && fuse_lse_moves_) {
          if (cuda) {
            dilated_detail::cuda_lse_advance(pending.lse_c, lse, lse_c, B, S, Hq, pending.w, pending.r, w, r, cs, hp);
          } else {
            host_lse_advance(pending.lse_c, lse, lse_c, B, S, Hq, pending.w, pending.r, w, r, hp);
          }
          pending.on = false;
        } else {
          flush();
          if (cuda) {
            dilated_detail::cuda_lse_gather(lse, lse_c, B, S, Hq, w, r, cs, hp);
          } else {
            host_lse_move(lse, lse_c, B, S, Hq, w, r, true, hp);
          }
        }
      } else {
        flush();  // this step reads or writes lse rows itself (direct) or writes lse_c from scratch (plain)
      }
      const float* slopes = pattern_slopes(i);
      const std::vector<PatternCall> calls =
          plan_pattern(B, S, Hq, Hkv, w, r, fold, fold_chunk(B * (S / w)), fold_classes_, alibi, direct, hp);
      // Lanes: the pattern's calls of different lane keys spread over side streams (lane set 0) with one chain; inside
      // a head chain (set_chain_lanes) over the chain's own side streams (lane set 1 + hp), keyed by the order of their
      // distinct lane keys (calls of one key stay on one stream, in order), so that e.g. the three class calls of a
      // ragged rate 6 at 16K (55-66 CTAs each) run side by side instead of one after another.
      const bool in_chain_lanes = cuda && hp >= 0 && chain_lanes_;
      const int set_index = hp < 0 ? 0 : 1 + hp;
      std::vector<int64_t> keys(calls.size());
      {
        std::vector<int64_t> seen;
        for (size_t ci = 0; ci < calls.size(); ++ci) {
          const int64_t key = calls[ci].lane_key;
          const auto it = std::find(seen.begin(), seen.end(), key);
          keys[ci] = in_chain_lanes ? static_cast<int64_t>(it - seen.begin()) : key;
          if (it == seen.end()) seen.push_back(key);
        }
      }
      const int64_t nkeys = calls.empty() ? 0
                                          : (in_chain_lanes ? *std::max_element(keys.begin(), keys.end()) + 1
                                                            : calls.back().lane_key + 1);
      const int lanes = cuda && (hp < 0 || in_chain_lanes) ? fork_lanes(nkeys, cs, set_index) : 1;
      // Plain: the rate-1 pattern writes every row of its output (o itself when direct, else acc) and of lse_c.
      // Final: merges the accumulator's rows into o (in q's dtype); the accumulator is only read.
      const bool to_o = plan.o_direct && step.mode != FwdMode::kAccumulate;
      // Calls that all run at once (one lane each) share the SMs in proportion to their work (batch * heads * rows^2):
      // otherwise the first persistent launch holds every SM and the others start only as its CTAs finish.
      std::vector<int> caps(calls.size(), 0);
      // (Not inside head chains: the other chain fills the SMs; caps there cost 3% at 16K, notes/dilated_causal.md.)
      bool one_lane_each =
          cuda && hp < 0 && share_sms_ && calls.size() > 1 && static_cast<int64_t>(calls.size()) <= lanes;
      for (size_t ci = 0; one_lane_each && ci < calls.size(); ++ci)
        one_lane_each = calls[ci].lane_key == static_cast<int64_t>(ci);
      if (one_lane_each) {
        int device = 0, sms = 0;
        DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
        DISTATTN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
        double total = 0;
        for (const PatternCall& c : calls)
          total += static_cast<double>(c.qv.batch) * c.qv.heads * static_cast<double>(c.qv.rows) * c.qv.rows;
        for (size_t ci = 0; ci < calls.size(); ++ci) {
          const PatternCall& c = calls[ci];
          const double share =
              static_cast<double>(c.qv.batch) * c.qv.heads * static_cast<double>(c.qv.rows) * c.qv.rows;
          caps[ci] = std::max(1, static_cast<int>(sms * share / total));
        }
      }
      for (size_t ci = 0; ci < calls.size(); ++ci) {
        const PatternCall& c = calls[ci];
        AttnParams p =
            engine_params(c, q, k, v, to_o && step.mode == FwdMode::kPlain ? o : acc_view, lse_calls, slopes, config_);
        p.accumulate = accumulate;
        p.max_ctas = caps[ci];
        if (step.mode == FwdMode::kFinal) p.o_final = c.qv.apply(o);
        if (cuda) {
          flash_attention_forward(p, lane_stream(keys[ci], lanes, cs, set_index));
        } else {
          host_attention_forward(p, config_.host_precision);
        }
      }
      if (cuda) join_lanes(lanes, cs, set_index);
      if (direct) continue;
      pending = {true, lse_c, w, r};
      buf ^= 1;
    }
    flush();
  };
  const bool chains = head_chains_max_rows_ != 0 && (head_chains_max_rows_ < 0 || B * S <= head_chains_max_rows_) &&
                      head_chains_ok(config_, Hq, Hkv);
  if (!chains) {
    run_chain(-1, stream);
  } else if (!cuda) {
    run_chain(0, stream);
    run_chain(1, stream);
  } else {
    // The odd chain on a side lane forked after the fill (everything on `stream` with set_concurrent_calls(false));
    // joined back before the cast / return.
    const int lanes = fork_lanes(2, stream);
    run_chain(0, stream);
    run_chain(1, lanes > 1 ? lane_sets_[0].streams[0] : stream);
    join_lanes(lanes, stream);
  }

  if (plan.cast) {
    if (cuda) {
      dilated_detail::cuda_cast(acc, o, stream);
    } else {
      host_cast(acc, o);
    }
  }
}

void DilatedAttention::backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                const float* lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                                const TensorView& dv, cudaStream_t stream) {
  validate_tensors(q, k, v, o, lse);
  validate_backward(dilated_detail::whole_call(q, k, v, o, lse, dout, dq, dk, dv,
                                               PositionMap::contiguous(0, q.seqlen()), config_.causal),
                    device_);
  const int64_t B = q.batch(), S = q.seqlen(), Hq = q.heads(), Hkv = k.heads(), D = q.head_dim();
  const int64_t n_q = B * S * Hq * D, n_kv = B * S * Hkv * D;
  int64_t n_c = 0;
  for (const DilatedPattern& pt : config_.patterns) n_c = std::max(n_c, compact_floats(B, S, Hq, pt.segment, pt.rate));
  const bool cuda = device_ == Device::kCuda;
  // CUDA: delta = rowsum(dO * O) of the final O, [B, Hq, S] like lse, computed once and handed to every call (in the
  // calls' lse layout: the caller's array for a direct pattern, else compacted alongside the LSE); each call would
  // otherwise read the dO and O of its rows again (every pattern covers every row).
  const int64_t n_delta = cuda ? B * Hq * S : 0, n_delta_c = cuda ? n_c : 0;
  float* base = scratch(n_q + 2 * n_kv + n_c + n_delta_c + n_delta);
  last_stream_ = stream;
  float* dq_acc = base;                // packed fp32 [B, S, Hq, D]
  float* dk_acc = base + n_q;          // packed fp32 [B, S, Hkv, D]
  float* dv_acc = dk_acc + n_kv;       // packed fp32 [B, S, Hkv, D]
  float* lse_c = dv_acc + n_kv;        // the final LSE compacted for one pattern: [B, S/w, Hq, ceil(w/r)]
  float* delta_c = lse_c + n_c;        // CUDA: delta compacted like lse_c
  float* delta = delta_c + n_delta_c;  // CUDA: delta [B, Hq, S]
  const TensorView dq_view = TensorView::packed(dq_acc, DType::kFloat32, device_, B, S, Hq, D);
  const TensorView dk_view = TensorView::packed(dk_acc, DType::kFloat32, device_, B, S, Hkv, D);
  const TensorView dv_view = TensorView::packed(dv_acc, DType::kFloat32, device_, B, S, Hkv, D);
  const bool fold = fold_segments_ && foldable(q) && foldable(k) && foldable(v) && foldable(o) && foldable(dout);
  const bool alibi = !config_.alibi_slopes.empty();
  // The pattern run first writes dK, dV instead of adding to them (AttnBwdParams::overwrite_dk_dv), so their
  // accumulators need no clearing and that pattern no read-modify-write: a rate-1 pattern's calls cover every kv row of
  // every kv head exactly once (segments divide S) when each kv head serves one q head (Hq == Hkv; with GQA several
  // calls of a pattern share a kv head and must add). dQ always accumulates. Patterns add independent terms, so running
  // that one first changes only the fp32 summation order.
  const size_t n_pat = config_.patterns.size();
  std::vector<size_t> order;
  for (size_t i = 0; i < n_pat; ++i)
    if (Hq == Hkv && config_.patterns[i].rate == 1 && order.empty()) order.push_back(i);
  const bool overwrite_first = !order.empty();
  for (size_t i = 0; i < n_pat; ++i)
    if (!overwrite_first || i != order[0]) order.push_back(i);
  const int64_t n_clear = overwrite_first ? n_q : n_q + 2 * n_kv;  // dq_acc, then dk_acc, dv_acc (base layout)
  if (cuda) {
    DISTATTN_CUDA_CHECK(cudaMemsetAsync(base, 0, static_cast<size_t>(n_clear) * sizeof(float), stream));
    flash_attention_backward_delta(o, dout, delta, stream);
  } else {
    std::fill(base, base + n_clear, 0.f);
  }

  for (size_t step = 0; step < n_pat; ++step) {
    const size_t i = order[step];
    const int64_t w = config_.patterns[i].segment, r = config_.patterns[i].rate;
    const bool direct = r == 1 && direct_lse_;  // the calls read lse itself (plan_pattern "Direct LSE")
    float* const lse_calls = direct ? const_cast<float*>(lse) : lse_c;  // only read by the backward
    const float* const delta_calls = direct ? delta : delta_c;          // CUDA only
    if (direct) {
    } else if (cuda) {
      dilated_detail::cuda_lse_gather(lse, lse_c, B, S, Hq, w, r, stream);
      dilated_detail::cuda_lse_gather(delta, delta_c, B, S, Hq, w, r, stream);
    } else {
      host_lse_move(const_cast<float*>(lse), lse_c, B, S, Hq, w, r, true);
    }
    const float* slopes = pattern_slopes(i);
    const std::vector<PatternCall> calls =
        plan_pattern(B, S, Hq, Hkv, w, r, fold, fold_chunk(B * (S / w)), fold_classes_, alibi, direct);
    const int lanes = cuda ? fork_lanes(calls.empty() ? 0 : calls.back().lane_key + 1, stream) : 1;
    for (const PatternCall& c : calls) {
      AttnBwdParams bp;
      // o: the FINAL output (delta = dO . O); lse_c: the FINAL LSE of these rows, compacted.
      bp.fwd = engine_params(c, q, k, v, o, lse_calls, slopes, config_);
      bp.dout = c.qv.apply(dout);
      bp.dq = c.qv.apply(dq_view);
      bp.dk = c.kv.apply(dk_view);
      bp.dv = c.kv.apply(dv_view);
      bp.accumulate = true;
      bp.overwrite_dk_dv = overwrite_first && step == 0;
      if (cuda) {
        bp.delta = delta_calls + c.lse_offset;  // the call's rows, addressed with its lse strides
        flash_attention_backward(bp, lane_stream(c.lane_key, lanes, stream));
      } else {
        host_attention_backward(bp, config_.host_precision);
      }
    }
    if (cuda) join_lanes(lanes, stream);
  }

  if (cuda) {
    dilated_detail::cuda_cast(dq_acc, dq, stream);
    dilated_detail::cuda_cast(dk_acc, dk, stream);
    dilated_detail::cuda_cast(dv_acc, dv, stream);
  } else {
    host_cast(dq_acc, dq);
    host_cast(dk_acc, dk);
    host_cast(dv_acc, dv);
  }
}

void dilated_attention_forward(const DilatedConfig& config, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView& o, float* lse, Device device,
                               cudaStream_t stream) {
  DilatedAttention attn(config, device);
  attn.forward(q, k, v, o, lse, stream);
  if (device == Device::kCuda) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void dilated_attention_backward(const DilatedConfig& config, const TensorView& q, const TensorView& k,
                                const TensorView& v, const TensorView& o, const float* lse, const TensorView& dout,
                                const TensorView& dq, const TensorView& dk, const TensorView& dv, Device device,
                                cudaStream_t stream) {
  DilatedAttention attn(config, device);
  attn.backward(q, k, v, o, lse, dout, dq, dk, dv, stream);
  if (device == Device::kCuda) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace distattn
