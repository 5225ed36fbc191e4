// DistributedDilatedAttention (distributed_dilated.h): validation and agreement, the local patterns through a
// single-device DilatedAttention, and the distributed patterns (segments spanning ranks): pack, all-gather,
// attend, merge; backward with a reduce-scatter of dK|dV. One code path for both engines: the few steps
// that touch memory branch on the device (host loops here, CUDA kernels in distributed_dilated_kernels.cu).
//
// Shapes and index math of one distributed pattern (w, r), P ranks, L = S/P rows each, G = w/L:
//   rank p is rank j = p mod G of segment g = p / G (global rows [g*w, (g+1)*w));
//   class s (< min(r, Hq)): heads s, s + r, ...; kept global rows g*w + s + r*m, m < M = ceil((w - s)/r) (w/r when
//   r | w; ragged rates: classes differ by one);
//   on rank p: local rows l = phase_p + r*i, i < n_p  (phase, count: dilated_index.h), n_max = ceil(L/r);
//   the m of rank j's first kept row is off_j = n_0 + ... + n_{j-1} (kept rows are consecutive in m);
//   ONE all-gather per pattern: a rank's packed K|V rows [n_max][class s][2, B, KH_s, D] (rows >= n_p of a class
//   zero; KH_s kv-head entries, dist_kv_head), row_elems = sum_s 2*B*KH_s*D elements per row, class s at offset
//   coff_s in a row; gathered: [G * n_max] rows = the rank blocks in order. When every rank keeps n_max rows of
//   class s (r divides L), its keys are already consecutive: key m = row m, at global position g*w + s + r*m, and
//   the K view is  data + coff_s, shape [B, M', E, D], strides {KH_s*D, row_elems, D, 1}, V = K + B*KH_s*D.
//   Otherwise class s is first squeezed into [M, 2, B, KH_s, D] (row stride 2*B*KH_s*D) by one strided copy per
//   rank. The backward mirrors it: fp32 dK|dV in the gathered layout (padding rows zero), one reduce-scatter.
//   Causal: rank j's queries see only keys m < off_j + n_j (ranks after j are entirely in the future).
//   Partial O: fp32 [B, L, Hq, D] (kept rows written); partial LSE packed [B, Hq, n_max] (dist_lse_index).
#include "distattn/dilated/distributed_dilated.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "dilated_index.h"
#include "dilated_kernels.h"
#include "dilated_scratch.h"
#include "dilated_views.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/core/operand_checks.h"
#include "distattn/sparse/flash_attention.h"
#include "distributed_dilated_kernels.h"

namespace distattn {

using dilated_detail::dist_count;
using dilated_detail::dist_kv_head;
using dilated_detail::dist_lse_index;
using dilated_detail::dist_phase;
using dilated_detail::head_groups;
using dilated_detail::HeadGroup;
using dilated_detail::KeptClass;
using dilated_detail::sub_view;
using dilated_detail::whole_call;

struct DistributedDilatedAttention::ClassInfo {
  size_t pattern = 0;
  int64_t w = 0, r = 1, G = 1;
  int64_t j = 0;             // this rank's index inside its segment
  int64_t g = 0;             // segment index
  int64_t M = 0;             // keys of the compacted segment: rows_of_class(w, r, s) (w / r when r | w)
  KeptClass kc;              // this rank's kept rows and entries
  std::vector<int64_t> n;    // kept rows of each rank of the segment
  std::vector<int64_t> off;  // first m of each rank's rows
  bool padded = false;       // some rank keeps fewer than n_max rows (r does not divide L)
  int64_t class_offset = 0;  // into the pattern's permuted slopes
  int64_t class_elems = 0;   // 2 * B * KH * D: one packed row of this class
  int64_t coff = 0;          // offset of this class inside a packed row (elements)
  int64_t visible_keys(bool causal) const { return causal ? off[static_cast<size_t>(j)] + kc.count : M; }
};

struct DistributedDilatedAttention::PatternInfo {
  std::vector<ClassInfo> classes;  // s = 0 .. min(r, Hq) - 1
  int64_t G = 1, n_max = 0;
  int64_t row_elems = 0;  // elements of one packed row (every class)
};

namespace {

std::string pattern_arg(size_t i, const char* field) { return "config.patterns[" + std::to_string(i) + "]." + field; }

// K (c = 0) or V (c = 1) rows [0, rows) of one class in a packed buffer (`buf` = the class's part of row 0, rows
// `row_stride` elements apart, each [2, B, KH, D]), entries e0 .. e0+count-1.
TensorView kv_rows_view(void* buf, int64_t row_stride, int c, DType dtype, Device device, int64_t B, int64_t KH,
                        int64_t D, int64_t rows, int64_t e0, int64_t count) {
  TensorView t;
  t.data = static_cast<char*>(buf) + (c * B * KH * D + e0 * D) * static_cast<int64_t>(dtype_size(dtype));
  t.dtype = dtype;
  t.device = device;
  t.shape = {B, rows, count, D};
  t.stride = {KH * D, row_stride, D, 1};
  return t;
}

// --- host versions of the CUDA helpers (distributed_dilated_kernels.h) ---
void host_pack_kept(const TensorView& k, const TensorView& v, unsigned char* send_class, const KeptClass& kc) {
  const int64_t B = k.shape[0], D = k.shape[3];
  const size_t es = dtype_size(k.dtype), rowb = static_cast<size_t>(D) * es;
  for (int64_t i = 0; i < kc.n_max; ++i)
    for (int c = 0; c < 2; ++c) {
      unsigned char* send = send_class + (static_cast<size_t>(i * kc.row_elems + c * B * kc.KH * D)) * es;
      const TensorView& t = c == 0 ? k : v;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t e = 0; e < kc.KH; ++e, send += rowb) {
          if (i >= kc.count) {
            std::memset(send, 0, rowb);
            continue;
          }
          const int64_t l = kc.phase + kc.r * i, h = dist_kv_head(e, kc.s, kc.r, kc.gqa);
          std::memcpy(send, static_cast<const unsigned char*>(t.data) + t.offset(b, l, h, 0) * es, rowb);
        }
    }
}

void host_scatter_add_kept(const float* own, float* dk, float* dv, int64_t B, int64_t L, int64_t Hkv, int64_t D,
                           const KeptClass& kc) {
  for (int64_t i = 0; i < kc.count; ++i)
    for (int c = 0; c < 2; ++c)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t e = 0; e < kc.KH; ++e) {
          const float* src = own + i * kc.row_elems + ((c * B + b) * kc.KH + e) * D;
          const int64_t l = kc.phase + kc.r * i, h = dist_kv_head(e, kc.s, kc.r, kc.gqa);
          float* dst = (c == 0 ? dk : dv) + ((b * L + l) * Hkv + h) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] += src[d];
        }
}

void host_merge_dist(float* acc, float* lse_acc, const float* part, const float* lse_part, int64_t B, int64_t L,
                     int64_t H, int64_t D, int64_t r, int64_t base, int64_t n_max) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t phase = dist_phase(h % r, base, r);
      for (int64_t l = phase, i = 0; l < L; l += r, ++i) {
        float& la = lse_acc[(b * H + h) * L + l];
        const float lp = lse_part[dist_lse_index(b, h, i, H, n_max)];
        const float hi = std::max(la, lp);
        if (hi == -std::numeric_limits<float>::infinity()) continue;
        const float Lm = hi + std::log1p(std::exp(std::min(la, lp) - hi));
        const float ca = std::exp(la - Lm), cp = std::exp(lp - Lm);
        float* a = acc + ((b * L + l) * H + h) * D;
        const float* pp = part + ((b * L + l) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) a[d] = a[d] * ca + pp[d] * cp;
        la = Lm;
      }
    }
}

void host_compact_lse_dist(const float* lse, float* lse_part, int64_t B, int64_t L, int64_t H, int64_t r, int64_t base,
                           int64_t n_max) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t phase = dist_phase(h % r, base, r);
      for (int64_t l = phase, i = 0; l < L; l += r, ++i)
        lse_part[dist_lse_index(b, h, i, H, n_max)] = lse[(b * H + h) * L + l];
    }
}

void fill(float* p, int64_t n, float value, Device device, cudaStream_t stream) {
  if (device == Device::kCuda) {
    dilated_detail::cuda_fill(p, n, value, stream);
  } else {
    std::fill(p, p + n, value);
  }
}

// `rows` rows of `width` bytes: dst (pitch dpitch bytes) = src (pitch spitch bytes), stream-ordered on CUDA.
void copy_rows(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, int64_t rows, Device device,
               cudaStream_t stream) {
  if (rows <= 0 || width == 0) return;
  if (device == Device::kCuda) {
    DISTATTN_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, static_cast<size_t>(rows),
                                          cudaMemcpyDeviceToDevice, stream));
  } else {
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(static_cast<char*>(dst) + i * dpitch, static_cast<const char*>(src) + i * spitch, width);
  }
}

}  // namespace

DistributedDilatedAttention::DistributedDilatedAttention(Communicator& comm, const DistributedDilatedConfig& config)
    : comm_(comm), config_(config) {
  const int P = comm.size();
  if (config_.kv_heads <= 0) config_.kv_heads = config_.q_heads;
  const DilatedConfig& dc = config_.dilated;
  // 1. Local validation; the verdict is shared so that every rank throws, not only the bad one.
  comm.agree_on("DistributedDilatedAttention construction", [&] {
    DISTATTN_CHECK_ARG(config_.seq_len >= 1 && config_.seq_len % P == 0, "seq_len", "is ", config_.seq_len,
                       ", expected a positive multiple of the ", P, " ranks (contiguous shards of S/P rows)");
    DISTATTN_CHECK_ARG(config_.seq_len - 1 <= PositionMap::kMaxPosition, "seq_len", "is ", config_.seq_len,
                       " (positions must stay below 2^31 - 1)");
    DISTATTN_CHECK_ARG(config_.batch >= 1, "batch", "is ", config_.batch, " (expected >= 1)");
    DISTATTN_CHECK_ARG(config_.q_heads >= 1, "q_heads", "is ", config_.q_heads, " (expected >= 1)");
    DISTATTN_CHECK_ARG(config_.q_heads % config_.kv_heads == 0, "kv_heads", "is ", config_.kv_heads,
                       ", which does not divide q_heads = ", config_.q_heads);
    DISTATTN_CHECK_ARG(config_.head_dim >= 1, "head_dim", "is ", config_.head_dim, " (expected >= 1)");
    DISTATTN_CHECK_ARG(dtype_size(config_.dtype) != 0, "dtype", "is unknown (", static_cast<int>(config_.dtype), ")");
    if (comm.device() == Device::kCuda) {
      DISTATTN_CHECK_ARG(config_.dtype == DType::kBFloat16 || config_.dtype == DType::kFloat16, "dtype", "is ",
                         dtype_name(config_.dtype), "; the CUDA engine takes bf16 or fp16");
      DISTATTN_CHECK_ARG(flash_supports_head_dim(config_.head_dim), "head_dim", "is ", config_.head_dim,
                         ": the CUDA engine has no kernel for it");
    }
    validate_dilated_config(dc, config_.seq_len, config_.q_heads);
    local_rows_ = config_.seq_len / P;
    const int64_t L = local_rows_;
    for (size_t i = 0; i < dc.patterns.size(); ++i) {
      const int64_t w = dc.patterns[i].segment, r = dc.patterns[i].rate;
      DilatedPatternPlan pl;
      if (w <= L) {
        DISTATTN_CHECK_ARG(L % w == 0, pattern_arg(i, "segment"), "is ", w,
                           ", which does not divide the local shard of ", L, " rows (S = ", config_.seq_len, " over ",
                           P, " ranks): a segment would straddle ranks");
      } else {
        DISTATTN_CHECK_ARG(w % L == 0, pattern_arg(i, "segment"), "is ", w, ", longer than the local shard of ", L,
                           " rows (S = ", config_.seq_len, " over ", P,
                           " ranks) but not a multiple of it: a segment must span whole shards");
        pl.local = false;
        pl.group = w / L;
      }
      pl.max_rows = (L + r - 1) / r;
      plans_.push_back(pl);
    }
  });

  // 2. Agreement on everything that must be equal across ranks.
  std::vector<int64_t> pats;
  for (const DilatedPattern& pt : dc.patterns) {
    pats.push_back(pt.segment);
    pats.push_back(pt.rate);
  }
  ConfigFingerprint fp;
  fp.add("world_size", P)
      .add("seq_len", config_.seq_len)
      .add("batch", config_.batch)
      .add("q_heads", config_.q_heads)
      .add("kv_heads", config_.kv_heads)
      .add("head_dim", config_.head_dim)
      .add("dtype", static_cast<int64_t>(config_.dtype))
      .add("config.patterns.size", static_cast<int64_t>(dc.patterns.size()))
      .add_hash("config.patterns", pats.data(), pats.size() * sizeof(int64_t))
      .add("config.causal", dc.causal ? 1 : 0)
      .add_float("config.softmax_scale", dc.softmax_scale)
      .add("config.alibi_slopes.size", static_cast<int64_t>(dc.alibi_slopes.size()))
      .add_hash("config.alibi_slopes", dc.alibi_slopes.data(), dc.alibi_slopes.size() * sizeof(float))
      .add("config.error_if_query_without_key", dc.error_if_query_without_key ? 1 : 0)
      .add("config.ragged_rates", dc.ragged_rates ? 1 : 0)
      .add("config.host_precision", static_cast<int64_t>(dc.host_precision));
  comm.check_agreement(fp, "DistributedDilatedAttention construction");

  // 3. The local patterns run through one single-device object (the query-without-key check was global).
  DilatedConfig local_cfg = dc;
  local_cfg.patterns.clear();
  local_cfg.error_if_query_without_key = false;
  for (size_t i = 0; i < dc.patterns.size(); ++i)
    if (plans_[i].local) local_cfg.patterns.push_back(dc.patterns[i]);
  if (!local_cfg.patterns.empty()) local_ = std::make_unique<DilatedAttention>(local_cfg, comm.device());

  // 4. One sub-communicator per distinct group size G, split in increasing G on every rank (collective):
  //    ranks [c*G, (c+1)*G) hold segment c's rows.
  for (const DilatedPatternPlan& pl : plans_)
    if (!pl.local) groups_[pl.group] = nullptr;
  for (auto& kv : groups_) kv.second = comm.split(comm.rank() / static_cast<int>(kv.first), comm.rank());

  // 5. ALiBi slopes per pattern in (h mod r, h div r) order, as DilatedAttention orders them.
  const int64_t H = static_cast<int64_t>(dc.alibi_slopes.size());
  if (H > 0) {
    for (const DilatedPattern& pt : dc.patterns)
      for (int64_t s = 0; s < std::min(pt.rate, H); ++s)
        for (int64_t h = s; h < H; h += pt.rate) slopes_host_.push_back(dc.alibi_slopes[static_cast<size_t>(h)]);
    if (comm.device() == Device::kCuda) {
      DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&slopes_device_), slopes_host_.size() * sizeof(float)));
      DISTATTN_CUDA_CHECK(
          cudaMemcpy(slopes_device_, slopes_host_.data(), slopes_host_.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
  }
}

DistributedDilatedAttention::~DistributedDilatedAttention() {
  if (comm_.device() != Device::kCuda) return;
  cudaStreamSynchronize(last_stream_);
  if (slopes_device_ != nullptr) cudaFree(slopes_device_);
  if (fscratch_ != nullptr) cudaFree(fscratch_);
  for (unsigned char* p : bscratch_)
    if (p != nullptr) cudaFree(p);
}

float* DistributedDilatedAttention::fscratch(int64_t floats) {
  return dilated_detail::grow_scratch(comm_.device() == Device::kHost, last_stream_, floats, fscratch_,
                                      fscratch_floats_, fscratch_host_);
}

unsigned char* DistributedDilatedAttention::bscratch(Slot slot, size_t bytes) {
  bytes = std::max<size_t>(bytes, 16);
  return dilated_detail::grow_scratch(comm_.device() == Device::kHost, last_stream_, bytes, bscratch_[slot],
                                      bscratch_bytes_[slot], bscratch_host_[slot]);
}

int64_t DistributedDilatedAttention::scratch_bytes() const {
  int64_t bytes = fscratch_floats_ * static_cast<int64_t>(sizeof(float));
  for (size_t b : bscratch_bytes_) bytes += static_cast<int64_t>(b);
  return bytes + (local_ ? local_->scratch_bytes() : 0);
}

const float* DistributedDilatedAttention::pattern_slopes(size_t pattern) const {
  if (slopes_host_.empty()) return nullptr;
  const float* base = comm_.device() == Device::kCuda ? slopes_device_ : slopes_host_.data();
  return base + pattern * static_cast<size_t>(config_.q_heads);
}

DistributedDilatedAttention::ClassInfo DistributedDilatedAttention::class_info(size_t pattern, int64_t s) const {
  const int64_t L = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads;
  ClassInfo ci;
  ci.pattern = pattern;
  ci.w = config_.dilated.patterns[pattern].segment;
  ci.r = config_.dilated.patterns[pattern].rate;
  ci.G = plans_[pattern].group;
  ci.g = comm_.rank() / ci.G;
  ci.j = comm_.rank() % ci.G;
  ci.M = dilated_detail::rows_of_class(ci.w, ci.r, s);
  ci.kc.s = s;
  ci.kc.r = ci.r;
  ci.kc.gqa = Hq / Hkv;
  ci.kc.n_max = plans_[pattern].max_rows;
  ci.kc.KH = ci.r == 1 ? Hkv : (Hq - 1 - s) / ci.r + 1;  // r == 1: every kv head; else one entry per q head
  ci.class_elems = 2 * config_.batch * ci.kc.KH * config_.head_dim;
  int64_t m = 0;
  for (int64_t jj = 0; jj < ci.G; ++jj) {
    // Rank jj of the segment starts at offset jj*L inside it (kept offsets: s + r*m, also for ragged rates).
    const int64_t phase = dist_phase(s, (jj * L) % ci.r, ci.r);
    const int64_t cnt = dist_count(phase, L, ci.r);
    ci.n.push_back(cnt);
    ci.off.push_back(m);
    m += cnt;
    ci.padded = ci.padded || cnt != ci.kc.n_max;
    if (jj == ci.j) {
      ci.kc.phase = phase;
      ci.kc.count = cnt;
    }
  }
  // Every kept row of the segment belongs to exactly one rank: the counts add up to ceil((w - s) / r).
  DISTATTN_CHECK_ARG(m == ci.M, pattern_arg(pattern, "rate"), "internal: kept rows add up to ", m, ", expected ", ci.M);
  // Slopes of class s start after the heads of classes 0 .. s-1.
  for (int64_t c = 0; c < s; ++c) ci.class_offset += (Hq - 1 - c) / ci.r + 1;
  return ci;
}

DistributedDilatedAttention::PatternInfo DistributedDilatedAttention::pattern_info(size_t pattern) const {
  PatternInfo pinfo;
  pinfo.G = plans_[pattern].group;
  pinfo.n_max = plans_[pattern].max_rows;
  const int64_t r = config_.dilated.patterns[pattern].rate;
  for (int64_t s = 0; s < std::min(r, config_.q_heads); ++s) {
    ClassInfo ci = class_info(pattern, s);
    ci.coff = pinfo.row_elems;
    pinfo.row_elems += ci.class_elems;
    pinfo.classes.push_back(std::move(ci));
  }
  for (ClassInfo& ci : pinfo.classes) ci.kc.row_elems = pinfo.row_elems;
  return pinfo;
}

unsigned char* DistributedDilatedAttention::gather_pattern(const PatternInfo& pinfo, const TensorView& k,
                                                           const TensorView& v, cudaStream_t stream) {
  const Device dev = comm_.device();
  const size_t es = dtype_size(config_.dtype);
  const size_t block = static_cast<size_t>(pinfo.n_max * pinfo.row_elems) * es;  // one rank's contribution
  unsigned char* send = bscratch(kSend, block);
  unsigned char* gathered = bscratch(kGathered, block * static_cast<size_t>(pinfo.G));
  for (const ClassInfo& ci : pinfo.classes) {
    unsigned char* dst = send + static_cast<size_t>(ci.coff) * es;
    if (dev == Device::kCuda) {
      dilated_detail::cuda_pack_kept(k, v, dst, ci.kc, stream);
    } else {
      host_pack_kept(k, v, dst, ci.kc);
    }
  }
  groups_.at(pinfo.G)->all_gather("dilated K|V all-gather", send, gathered, block, stream);
  return gathered;
}

unsigned char* DistributedDilatedAttention::class_keys(const ClassInfo& ci, const PatternInfo& pinfo,
                                                       unsigned char* gathered, int64_t* row_stride,
                                                       cudaStream_t stream) {
  const size_t es = dtype_size(config_.dtype);
  if (!ci.padded) {  // rank blocks are already the consecutive key ranges
    *row_stride = pinfo.row_elems;
    return gathered + static_cast<size_t>(ci.coff) * es;
  }
  // Squeeze out the padding rows: rank j's n_j rows go to keys off_j .. off_j + n_j - 1.
  const size_t width = static_cast<size_t>(ci.class_elems) * es, pitch = static_cast<size_t>(pinfo.row_elems) * es;
  unsigned char* compact = bscratch(kCompact, static_cast<size_t>(ci.M) * width);
  for (int64_t jj = 0; jj < ci.G; ++jj) {
    const size_t u = static_cast<size_t>(jj);
    copy_rows(compact + static_cast<size_t>(ci.off[u]) * width, width,
              gathered + static_cast<size_t>(jj * pinfo.n_max) * pitch + static_cast<size_t>(ci.coff) * es, pitch,
              width, ci.n[u], comm_.device(), stream);
  }
  *row_stride = ci.class_elems;
  return compact;
}

void DistributedDilatedAttention::forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                          const TensorView& o, float* lse, cudaStream_t stream) {
  const int64_t B = config_.batch, L = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const Device dev = comm_.device();
  comm_.agree_on("DistributedDilatedAttention::forward", [&] {
    DISTATTN_CHECK_ARG(lse != nullptr, "lse", "is null; dilated attention needs the fp32 LSE [B, Hq, S/P]");
    check_forward_shards(ShardSpec::of(config_, local_rows_, dev, "S/P rows"), q, k, v, o, lse);
    // The engine's rules on the whole shards (strides, aliasing).
    validate_forward(whole_call(q, k, v, o, lse, PositionMap::contiguous(comm_.rank() * L, L), config_.dilated.causal),
                     dev);
  });
  last_stream_ = stream;
  const bool any_dist = std::any_of(plans_.begin(), plans_.end(), [](const DilatedPatternPlan& p) { return !p.local; });
  if (!any_dist) {  // every segment inside a shard: the single-device path on the local shard
    local_->forward(q, k, v, o, lse, stream);
    return;
  }

  const int64_t n_o = B * L * Hq * D, n_lse = B * Hq * L;
  int64_t n_part_lse = 0;
  for (const DilatedPatternPlan& pl : plans_) n_part_lse = std::max(n_part_lse, B * Hq * pl.max_rows);
  float* acc = fscratch(2 * n_o + n_lse + n_part_lse);  // packed fp32 [B, L, Hq, D]: the mixed output
  float* part = acc + n_o;                              // packed fp32 [B, L, Hq, D]: one pattern's output
  float* lse_acc = part + n_o;                          // packed [B, Hq, L]
  float* lse_part = lse_acc + n_lse;                    // packed [B, Hq, n_max]
  const TensorView acc_view = TensorView::packed(acc, DType::kFloat32, dev, B, L, Hq, D);
  const TensorView part_view = TensorView::packed(part, DType::kFloat32, dev, B, L, Hq, D);
  if (local_) {
    local_->forward(q, k, v, acc_view, lse_acc, stream);  // local patterns, already mixed
  } else {
    fill(acc, n_o, 0.f, dev, stream);
    fill(lse_acc, n_lse, -std::numeric_limits<float>::infinity(), dev, stream);
  }

  const DilatedConfig& dc = config_.dilated;
  for (size_t pi = 0; pi < dc.patterns.size(); ++pi) {
    if (plans_[pi].local) continue;
    const int64_t r = dc.patterns[pi].rate, n_max = plans_[pi].max_rows;
    const float* slopes = pattern_slopes(pi);
    const PatternInfo pinfo = pattern_info(pi);
    unsigned char* gathered = gather_pattern(pinfo, k, v, stream);  // collective over the segment's ranks
    for (const ClassInfo& ci : pinfo.classes) {
      const int64_t s = ci.kc.s;
      if (ci.kc.count == 0) continue;  // no kept query row here (r > L)
      int64_t krs = 0;                 // elements between consecutive keys
      unsigned char* kv = class_keys(ci, pinfo, gathered, &krs, stream);
      const int64_t keys = ci.visible_keys(dc.causal);
      for (const HeadGroup& hg : head_groups(Hq, Hkv, r, s, ci.class_offset)) {
        // Entries of the packed K|V this group reads: all kv heads (r == 1, GQA ratio kept) or q head t's entry.
        const int64_t e0 = hg.kv_all ? 0 : (hg.qh0 - s) / r, ecount = hg.kv_all ? Hkv : hg.count;
        AttnParams p;
        p.q = sub_view(q, ci.kc.phase, r, ci.kc.count, hg.qh0, hg.qstep, hg.count);  // rows phase + r*i
        p.o = sub_view(part_view, ci.kc.phase, r, ci.kc.count, hg.qh0, hg.qstep, hg.count);
        p.k = kv_rows_view(kv, krs, 0, config_.dtype, dev, B, ci.kc.KH, D, keys, e0, ecount);
        p.v = kv_rows_view(kv, krs, 1, config_.dtype, dev, B, ci.kc.KH, D, keys, e0, ecount);
        p.lse = lse_part + hg.qh0 * n_max;  // [B, Hq, n_max]: (b, qh0 + qstep*t, i)
        p.lse_head_stride = hg.qstep * n_max;
        p.lse_batch_stride = Hq * n_max;
        p.q_pos = PositionMap::strided(comm_.rank() * L + ci.kc.phase, r, ci.kc.count);
        p.kv_pos = PositionMap::strided(ci.g * ci.w + s, r, keys);
        p.mask.causal = dc.causal;
        p.alibi_slopes = slopes != nullptr ? slopes + hg.slope_offset : nullptr;
        p.softmax_scale = dc.softmax_scale;
        if (dev == Device::kCuda) {
          flash_attention_forward(p, stream);
        } else {
          host_attention_forward(p, dc.host_precision);
        }
      }
    }
    const int64_t base = ((comm_.rank() * L) % dc.patterns[pi].segment) % r;  // shard offset in its segment
    if (dev == Device::kCuda) {
      dilated_detail::cuda_merge_dist(acc, lse_acc, part, lse_part, B, L, Hq, D, r, base, n_max, stream);
    } else {
      host_merge_dist(acc, lse_acc, part, lse_part, B, L, Hq, D, r, base, n_max);
    }
  }

  if (dev == Device::kCuda) {
    dilated_detail::cuda_cast(acc, o, stream);
    DISTATTN_CUDA_CHECK(cudaMemcpyAsync(lse, lse_acc, n_lse * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  } else {
    dilated_detail::host_cast(acc, o);
    std::memcpy(lse, lse_acc, n_lse * sizeof(float));
  }
}

void DistributedDilatedAttention::backward(const TensorView& q, const TensorView& k, const TensorView& v,
                                           const TensorView& o, const float* lse, const TensorView& dout,
                                           const TensorView& dq, const TensorView& dk, const TensorView& dv,
                                           cudaStream_t stream) {
  const int64_t B = config_.batch, L = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const Device dev = comm_.device();
  comm_.agree_on("DistributedDilatedAttention::backward", [&] {
    DISTATTN_CHECK_ARG(lse != nullptr, "lse", "is null; the backward needs the forward's LSE [B, Hq, S/P]");
    check_backward_shards(ShardSpec::of(config_, local_rows_, dev, "S/P rows"), dout, q, k, v, o, lse, dq, dk, dv);
    validate_backward(whole_call(q, k, v, o, lse, dout, dq, dk, dv, PositionMap::contiguous(comm_.rank() * L, L),
                                 config_.dilated.causal),
                      dev);
  });
  last_stream_ = stream;
  const bool any_dist = std::any_of(plans_.begin(), plans_.end(), [](const DilatedPatternPlan& p) { return !p.local; });
  if (!any_dist) {
    local_->backward(q, k, v, o, lse, dout, dq, dk, dv, stream);
    return;
  }

  const int64_t n_q = B * L * Hq * D, n_kv = B * L * Hkv * D;
  int64_t n_part_lse = 0;
  for (const DilatedPatternPlan& pl : plans_) n_part_lse = std::max(n_part_lse, B * Hq * pl.max_rows);
  float* dq_acc = fscratch(n_q + 2 * n_kv + n_part_lse);  // packed fp32 [B, L, Hq, D]
  float* dk_acc = dq_acc + n_q;                           // packed fp32 [B, L, Hkv, D]
  float* dv_acc = dk_acc + n_kv;                          // packed fp32 [B, L, Hkv, D]
  float* lse_part = dv_acc + n_kv;                        // the final LSE of one pattern's rows, [B, Hq, n_max]
  const TensorView dq_view = TensorView::packed(dq_acc, DType::kFloat32, dev, B, L, Hq, D);
  const TensorView dk_view = TensorView::packed(dk_acc, DType::kFloat32, dev, B, L, Hkv, D);
  const TensorView dv_view = TensorView::packed(dv_acc, DType::kFloat32, dev, B, L, Hkv, D);
  if (local_) {
    // The local patterns' gradients (overwritten), computed with the FINAL o and lse (all patterns).
    local_->backward(q, k, v, o, lse, dout, dq_view, dk_view, dv_view, stream);
  } else {
    fill(dq_acc, n_q + 2 * n_kv, 0.f, dev, stream);
  }

  const DilatedConfig& dc = config_.dilated;
  for (size_t pi = 0; pi < dc.patterns.size(); ++pi) {
    if (plans_[pi].local) continue;
    const int64_t r = dc.patterns[pi].rate, n_max = plans_[pi].max_rows;
    const int64_t base = ((comm_.rank() * L) % dc.patterns[pi].segment) % r;  // shard offset in its segment
    if (dev == Device::kCuda) {
      dilated_detail::cuda_compact_lse_dist(lse, lse_part, B, L, Hq, r, base, n_max, stream);
    } else {
      host_compact_lse_dist(lse, lse_part, B, L, Hq, r, base, n_max);
    }
    const float* slopes = pattern_slopes(pi);
    const PatternInfo pinfo = pattern_info(pi);
    unsigned char* gathered = gather_pattern(pinfo, k, v, stream);  // collective over the segment's ranks
    // fp32 dK|dV of every gathered key in the gathered layout [G * n_max][class][2, B, KH, D], zeroed (padding
    // rows stay zero): the engine adds into it, then one reduce-scatter returns each rank its own block.
    const int64_t block_floats = n_max * pinfo.row_elems;  // one rank's share
    float* grads =
        reinterpret_cast<float*>(bscratch(kGradPadded, static_cast<size_t>(pinfo.G * block_floats) * sizeof(float)));
    fill(grads, pinfo.G * block_floats, 0.f, dev, stream);
    for (const ClassInfo& ci : pinfo.classes) {
      const int64_t s = ci.kc.s;
      int64_t krs = 0;
      unsigned char* kv = class_keys(ci, pinfo, gathered, &krs, stream);
      // The class's gradient rows: in place when its keys are the gathered rows, else squeezed like the keys
      // ([M, 2, B, KH, D], zeroed) and spread back to the rank blocks afterwards.
      float* g = grads + ci.coff;
      int64_t grs = pinfo.row_elems;
      if (ci.padded) {
        g = reinterpret_cast<float*>(bscratch(kGrad, static_cast<size_t>(ci.M * ci.class_elems) * sizeof(float)));
        grs = ci.class_elems;
        fill(g, ci.M * ci.class_elems, 0.f, dev, stream);
      }
      if (ci.kc.count > 0) {
        const int64_t keys = ci.visible_keys(dc.causal);
        for (const HeadGroup& hg : head_groups(Hq, Hkv, r, s, ci.class_offset)) {
          const int64_t e0 = hg.kv_all ? 0 : (hg.qh0 - s) / r, ecount = hg.kv_all ? Hkv : hg.count;
          AttnBwdParams bp;
          AttnParams& p = bp.fwd;
          p.q = sub_view(q, ci.kc.phase, r, ci.kc.count, hg.qh0, hg.qstep, hg.count);
          p.o = sub_view(o, ci.kc.phase, r, ci.kc.count, hg.qh0, hg.qstep, hg.count);  // FINAL o: delta
          p.k = kv_rows_view(kv, krs, 0, config_.dtype, dev, B, ci.kc.KH, D, keys, e0, ecount);
          p.v = kv_rows_view(kv, krs, 1, config_.dtype, dev, B, ci.kc.KH, D, keys, e0, ecount);
          p.lse = lse_part + hg.qh0 * n_max;  // FINAL lse of these rows
          p.lse_head_stride = hg.qstep * n_max;
          p.lse_batch_stride = Hq * n_max;
          p.q_pos = PositionMap::strided(comm_.rank() * L + ci.kc.phase, r, ci.kc.count);
          p.kv_pos = PositionMap::strided(ci.g * ci.w + s, r, keys);
          p.mask.causal = dc.causal;
          p.alibi_slopes = slopes != nullptr ? slopes + hg.slope_offset : nullptr;
          p.softmax_scale = dc.softmax_scale;
          bp.dout = sub_view(dout, ci.kc.phase, r, ci.kc.count, hg.qh0, hg.qstep, hg.count);
          bp.dq = sub_view(dq_view, ci.kc.phase, r, ci.kc.count, hg.qh0, hg.qstep, hg.count);
          bp.dk = kv_rows_view(g, grs, 0, DType::kFloat32, dev, B, ci.kc.KH, D, keys, e0, ecount);
          bp.dv = kv_rows_view(g, grs, 1, DType::kFloat32, dev, B, ci.kc.KH, D, keys, e0, ecount);
          bp.accumulate = true;
          if (dev == Device::kCuda) {
            flash_attention_backward(bp, stream);
          } else {
            host_attention_backward(bp, dc.host_precision);
          }
        }
      }
      if (ci.padded) {  // keys off_j .. off_j + n_j - 1 back to rank j's block rows 0 .. n_j - 1
        const size_t width = static_cast<size_t>(ci.class_elems) * sizeof(float);
        const size_t pitch = static_cast<size_t>(pinfo.row_elems) * sizeof(float);
        for (int64_t jj = 0; jj < ci.G; ++jj) {
          const size_t u = static_cast<size_t>(jj);
          copy_rows(grads + jj * block_floats + ci.coff, pitch, g + ci.off[u] * ci.class_elems, width, width, ci.n[u],
                    dev, stream);
        }
      }
    }
    float* own = reinterpret_cast<float*>(bscratch(kOwnGrad, static_cast<size_t>(block_floats) * sizeof(float)));
    groups_.at(pinfo.G)->reduce_scatter("dilated dK|dV reduce-scatter", grads, own, static_cast<size_t>(block_floats),
                                        DType::kFloat32, stream);
    for (const ClassInfo& ci : pinfo.classes) {
      if (dev == Device::kCuda) {
        dilated_detail::cuda_scatter_add_kept(own + ci.coff, dk_acc, dv_acc, B, L, Hkv, D, ci.kc, stream);
      } else {
        host_scatter_add_kept(own + ci.coff, dk_acc, dv_acc, B, L, Hkv, D, ci.kc);
      }
    }
  }

  if (dev == Device::kCuda) {
    dilated_detail::cuda_cast(dq_acc, dq, stream);
    dilated_detail::cuda_cast(dk_acc, dk, stream);
    dilated_detail::cuda_cast(dv_acc, dv, stream);
  } else {
    dilated_detail::host_cast(dq_acc, dq);
    dilated_detail::host_cast(dk_acc, dk);
    dilated_detail::host_cast(dv_acc, dv);
  }
}

}  // namespace distattn
