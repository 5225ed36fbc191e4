// Argument validation shared by every engine (attn_params.h): validate_forward / validate_backward and
// the small resolved-value accessors of AttnParams.
//
// Everything is checked before an engine touches memory, and each failure names the argument and
// what was expected. Order of checks: presence (null pointers), sizes, shapes against each other,
// strides and index-math range, dtypes, devices, aliasing, then the non-tensor arguments.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "distattn/core/attn_params.h"
#include "distattn/core/error.h"

namespace distattn {

float AttnParams::scale() const {
  if (softmax_scale > 0.f) return softmax_scale;
  // Default 1/sqrt(D), computed in double and rounded once so every engine uses the same float.
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.head_dim())));
}

int64_t AttnParams::lse_batch_step() const { return lse_batch_stride != 0 ? lse_batch_stride : q.heads() * q.seqlen(); }

int64_t AttnParams::lse_head_step() const { return lse_head_stride != 0 ? lse_head_stride : q.seqlen(); }

int64_t AttnParams::lse_row_step() const { return lse_row_stride != 0 ? lse_row_stride : 1; }

namespace {

const char* device_name(Device d) { return d == Device::kCuda ? "cuda" : "host"; }

// Largest element offset a view can address plus one element, in BYTES, as a 128-bit integer so the
// check itself cannot overflow. Sizes are >= 1 and strides >= 0 when this is called.
__int128 byte_extent(const TensorView& t) {
  __int128 last = 0;
  for (int i = 0; i < 4; ++i) last += static_cast<__int128>(t.shape[i] - 1) * t.stride[i];
  return (last + 1) * static_cast<__int128>(dtype_size(t.dtype));
}

bool valid_dtype(DType t) {
  return t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat32 || t == DType::kFloat64;
}

// Checks one operand on its own: non-null, known dtype, sizes >= 1, head dim contiguous, strides >= 0,
// index math within int64 (element counts and byte offsets), and the device. `output` additionally
// rejects a zero stride along an axis of size > 1 (several elements would be written to one place).
void check_view(const TensorView& t, const char* name, Device engine, bool output) {
  DISTATTN_CHECK_ARG(t.data != nullptr, name, "is null (expected a ", device_name(engine), " pointer)");
  DISTATTN_CHECK_ARG(valid_dtype(t.dtype), name, "has an unknown dtype (", static_cast<int>(t.dtype), ")");
  static const char* axis[4] = {"B", "S", "H", "D"};
  for (int i = 0; i < 4; ++i) {
    DISTATTN_CHECK_ARG(t.shape[i] >= 1, name, "has shape ", describe(t), ": every size must be >= 1 (", axis[i], " = ",
                       t.shape[i], ")");
  }
  DISTATTN_CHECK_ARG(t.stride[3] == 1, name, "has head-dim stride ", t.stride[3],
                     " (expected 1: the head dim must be contiguous); tensor ", describe(t));
  for (int i = 0; i < 3; ++i) {
    DISTATTN_CHECK_ARG(t.stride[i] >= 0, name, "has negative stride along ", axis[i], ": ", describe(t));
    if (output) {
      DISTATTN_CHECK_ARG(t.stride[i] != 0 || t.shape[i] == 1, name, "is an output with stride 0 along ", axis[i],
                         " (size ", t.shape[i], "): its elements would overlap; ", describe(t));
    }
  }
  __int128 numel = 1;
  for (int i = 0; i < 4; ++i) {
    numel *= t.shape[i];
    DISTATTN_CHECK_ARG(numel <= std::numeric_limits<int64_t>::max(), name,
                       "has too many elements for int64 index math: ", describe(t));
  }
  DISTATTN_CHECK_ARG(byte_extent(t) <= std::numeric_limits<int64_t>::max(), name,
                     "addresses past the int64 byte range with its strides: ", describe(t));
  DISTATTN_CHECK_ARG(t.device == engine, name, "lives on ", device_name(t.device), " but the engine is ",
                     device_name(engine));
}

// The lse-shaped fp32 array [B, Hq, Sq] with the resolved strides of p (also used for delta).
void check_lse_layout(const AttnParams& p, const char* name) {
  DISTATTN_CHECK_ARG(p.lse_batch_stride >= 0 && p.lse_head_stride >= 0 && p.lse_row_stride >= 0, name,
                     "has negative strides (batch ", p.lse_batch_stride, ", head ", p.lse_head_stride, ", row ",
                     p.lse_row_stride, "); expected >= 0 (0: packed default)");
  // Elements one head's (batch's) rows span: (Sq - 1) * row step + 1 (Sq with the packed row step 1).
  const __int128 span = static_cast<__int128>(p.q.seqlen() - 1) * p.lse_row_step() + 1;
  const __int128 last = static_cast<__int128>(p.q.batch() - 1) * p.lse_batch_step() +
                        static_cast<__int128>(p.q.heads() - 1) * p.lse_head_step() + span - 1;
  DISTATTN_CHECK_ARG((last + 1) * 4 <= std::numeric_limits<int64_t>::max(), name,
                     "addresses past the int64 byte range (batch step ", p.lse_batch_step(), ", head step ",
                     p.lse_head_step(), ", row step ", p.lse_row_step(), ")");
  // Rows of different heads or batches must not share storage: lse is written.
  if (p.q.heads() > 1) {
    DISTATTN_CHECK_ARG(p.lse_head_step() >= span, name, "head step ", p.lse_head_step(), " is smaller than ",
                       p.lse_row_step() == 1 ? "Sq = " : "(Sq - 1) * row step + 1 = ", static_cast<int64_t>(span),
                       ": heads would overlap");
  }
  if (p.q.batch() > 1) {
    DISTATTN_CHECK_ARG(p.lse_batch_step() >= span, name, "batch step ", p.lse_batch_step(), " is smaller than ",
                       p.lse_row_step() == 1 ? "Sq = " : "(Sq - 1) * row step + 1 = ", static_cast<int64_t>(span),
                       ": batches would overlap");
  }
}

void check_blocks(const BlockListView& bl, int64_t sq, int64_t skv, Device engine) {
  const char* name = "mask.blocks";
  const int64_t nq = (sq + kLayoutBlock - 1) / kLayoutBlock;
  const int64_t nkv = (skv + kLayoutBlock - 1) / kLayoutBlock;
  DISTATTN_CHECK_ARG(bl.num_q_blocks == nq, name, "has num_q_blocks = ", bl.num_q_blocks, ", expected ceil(Sq / ",
                     kLayoutBlock, ") = ", nq, " (Sq = ", sq, ")");
  DISTATTN_CHECK_ARG(bl.num_kv_blocks == nkv, name, "has num_kv_blocks = ", bl.num_kv_blocks, ", expected ceil(Skv / ",
                     kLayoutBlock, ") = ", nkv, " (Skv = ", skv, ")");
  DISTATTN_CHECK_ARG(bl.nnz >= 0 && bl.nnz <= nq * nkv, name, "has nnz = ", bl.nnz, ", expected 0 .. ", nq * nkv);
  DISTATTN_CHECK_ARG(bl.row_offset != nullptr, name, "row_offset is null");
  DISTATTN_CHECK_ARG(bl.col_offset != nullptr, name, "col_offset is null");
  if (bl.nnz > 0) {
    DISTATTN_CHECK_ARG(bl.col_index != nullptr, name, "col_index is null with nnz = ", bl.nnz);
    DISTATTN_CHECK_ARG(bl.row_partial != nullptr, name, "row_partial is null with nnz = ", bl.nnz);
    DISTATTN_CHECK_ARG(bl.row_index != nullptr, name, "row_index is null with nnz = ", bl.nnz);
    DISTATTN_CHECK_ARG(bl.col_partial != nullptr, name, "col_partial is null with nnz = ", bl.nnz);
  }
  DISTATTN_CHECK_ARG(bl.device == engine, name, "arrays live on ", device_name(bl.device), " but the engine is ",
                     device_name(engine));
  if (engine != Device::kHost) return;  // device arrays cannot be read here; the host engine's can
  // Host arrays: the CSR structure in both directions must be well formed (the engine indexes with it).
  DISTATTN_CHECK_ARG(bl.row_offset[0] == 0 && bl.row_offset[nq] == bl.nnz, name, "row_offset runs from ",
                     bl.row_offset[0], " to ", bl.row_offset[nq], ", expected 0 to nnz = ", bl.nnz);
  for (int64_t i = 0; i < nq; ++i) {
    DISTATTN_CHECK_ARG(bl.row_offset[i] <= bl.row_offset[i + 1], name, "row_offset decreases at q block ", i);
    for (int64_t e = bl.row_offset[i]; e < bl.row_offset[i + 1]; ++e) {
      DISTATTN_CHECK_ARG(bl.col_index[e] >= 0 && bl.col_index[e] < nkv, name, "col_index[", e, "] = ", bl.col_index[e],
                         " is outside 0 .. ", nkv - 1);
      DISTATTN_CHECK_ARG(e == bl.row_offset[i] || bl.col_index[e - 1] < bl.col_index[e], name,
                         "col_index is not strictly ascending in q block ", i);
    }
  }
  DISTATTN_CHECK_ARG(bl.col_offset[0] == 0 && bl.col_offset[nkv] == bl.nnz, name, "col_offset runs from ",
                     bl.col_offset[0], " to ", bl.col_offset[nkv], ", expected 0 to nnz = ", bl.nnz);
  for (int64_t j = 0; j < nkv; ++j) {
    DISTATTN_CHECK_ARG(bl.col_offset[j] <= bl.col_offset[j + 1], name, "col_offset decreases at kv block ", j);
    for (int64_t e = bl.col_offset[j]; e < bl.col_offset[j + 1]; ++e) {
      DISTATTN_CHECK_ARG(bl.row_index[e] >= 0 && bl.row_index[e] < nq, name, "row_index[", e, "] = ", bl.row_index[e],
                         " is outside 0 .. ", nq - 1);
    }
  }
}

bool same_data(const TensorView& a, const TensorView& b) { return a.data != nullptr && a.data == b.data; }

// Forward checks; `accumulate` overrides p.accumulate (the backward validates its forward part as plain).
void check_forward(const AttnParams& p, Device engine, bool accumulate, bool lse_required) {
  DISTATTN_CHECK_ARG(p.max_ctas >= 0, "max_ctas", "is ", p.max_ctas, " (expected >= 0; 0: one CTA per SM)");
  DISTATTN_CHECK_ARG(p.persistent_max_rows >= -1, "persistent_max_rows", "is ", p.persistent_max_rows,
                     " (expected >= -1; -1: automatic)");
  check_view(p.q, "q", engine, false);
  check_view(p.k, "k", engine, false);
  check_view(p.v, "v", engine, false);
  check_view(p.o, "o", engine, true);

  const TensorView &q = p.q, &k = p.k, &v = p.v, &o = p.o;
  DISTATTN_CHECK_ARG(k.batch() == q.batch(), "k", "has batch ", k.batch(), ", q has ", q.batch());
  DISTATTN_CHECK_ARG(k.head_dim() == q.head_dim(), "k", "has head dim ", k.head_dim(), ", q has ", q.head_dim());
  DISTATTN_CHECK_ARG(v.shape == k.shape, "v", "has shape ", describe(v), ", expected the shape of k ", describe(k));
  DISTATTN_CHECK_ARG(o.shape == q.shape, "o", "has shape ", describe(o), ", expected the shape of q ", describe(q));
  DISTATTN_CHECK_ARG(q.heads() % k.heads() == 0, "k", "has ", k.heads(), " heads, which do not divide q's ", q.heads(),
                     " heads (GQA needs Hq % Hkv == 0)");

  if (engine == Device::kCuda) {
    DISTATTN_CHECK_ARG(q.dtype == DType::kBFloat16 || q.dtype == DType::kFloat16, "q", "has dtype ",
                       dtype_name(q.dtype), "; the CUDA engine takes bf16 or fp16");
  }
  DISTATTN_CHECK_ARG(k.dtype == q.dtype, "k", "has dtype ", dtype_name(k.dtype), ", expected q's ",
                     dtype_name(q.dtype));
  DISTATTN_CHECK_ARG(v.dtype == q.dtype, "v", "has dtype ", dtype_name(v.dtype), ", expected q's ",
                     dtype_name(q.dtype));
  if (accumulate) {
    DISTATTN_CHECK_ARG(o.dtype == DType::kFloat32, "o", "has dtype ", dtype_name(o.dtype),
                       "; accumulate mode needs an fp32 accumulator");
  } else {
    DISTATTN_CHECK_ARG(o.dtype == q.dtype || o.dtype == DType::kFloat32, "o", "has dtype ", dtype_name(o.dtype),
                       ", expected q's ", dtype_name(q.dtype), " or fp32");
  }

  DISTATTN_CHECK_ARG(!same_data(o, q) && !same_data(o, k) && !same_data(o, v), "o",
                     "aliases an input (o.data equals q, k or v's data); the output needs its own storage");

  if (p.o_final.data != nullptr) {
    DISTATTN_CHECK_ARG(accumulate, "o_final",
                       "is set outside accumulate mode (it names the final step's output of an "
                       "accumulation; plain calls write o)");
    check_view(p.o_final, "o_final", engine, true);
    DISTATTN_CHECK_ARG(p.o_final.shape == q.shape, "o_final", "has shape ", describe(p.o_final),
                       ", expected the shape of q ", describe(q));
    DISTATTN_CHECK_ARG(p.o_final.dtype == q.dtype, "o_final", "has dtype ", dtype_name(p.o_final.dtype),
                       ", expected q's ", dtype_name(q.dtype));
    DISTATTN_CHECK_ARG(
        !same_data(p.o_final, q) && !same_data(p.o_final, k) && !same_data(p.o_final, v) && !same_data(p.o_final, o),
        "o_final", "aliases q, k, v or o (o_final.data equals one of theirs); it needs its own storage");
  }

  if (accumulate || lse_required) {
    DISTATTN_CHECK_ARG(p.lse != nullptr, "lse", "is null; ", accumulate ? "accumulate mode" : "the backward",
                       " needs the fp32 log-sum-exp [B, Hq, Sq]");
  }
  if (p.lse != nullptr) check_lse_layout(p, "lse");

  p.q_pos.validate("q_pos", q.seqlen());
  p.kv_pos.validate("kv_pos", k.seqlen());

  DISTATTN_CHECK_ARG(p.mask.window >= 0, "mask.window", "is ", p.mask.window, " (expected >= 0; 0: unlimited)");
  if (p.mask.blocks != nullptr) check_blocks(*p.mask.blocks, q.seqlen(), k.seqlen(), engine);

  if (p.alibi_slopes != nullptr) {
    DISTATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(p.alibi_slopes) % alignof(float) == 0, "alibi_slopes",
                       "is not aligned to 4 bytes");
    if (engine == Device::kHost) {
      for (int64_t h = 0; h < q.heads(); ++h) {
        DISTATTN_CHECK_ARG(std::isfinite(p.alibi_slopes[h]), "alibi_slopes", "slope of head ", h, " is ",
                           p.alibi_slopes[h], " (expected finite)");
      }
    }
  }
  DISTATTN_CHECK_ARG(std::isfinite(p.softmax_scale) && p.softmax_scale >= 0.f, "softmax_scale", "is ", p.softmax_scale,
                     " (expected finite and >= 0; 0: 1/sqrt(D))");
  if (p.alibi_merge.set()) {
    const AlibiMergeNorms& n = p.alibi_merge;
    DISTATTN_CHECK_ARG(n.q_norm_sq_max != nullptr && n.kv_norm_sq_max != nullptr && n.own_kv_norm_sq_max != nullptr,
                       "alibi_merge", "needs q_norm_sq_max, kv_norm_sq_max and own_kv_norm_sq_max (or none)");
    DISTATTN_CHECK_ARG(p.alibi_slopes != nullptr, "alibi_merge", "is set without alibi_slopes");
    DISTATTN_CHECK_ARG(p.mask.blocks == nullptr, "alibi_merge", "is set with a block list (dense bands only)");
    for (const float* ptr : {n.q_norm_sq_max, n.kv_norm_sq_max, n.own_kv_norm_sq_max})
      DISTATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(ptr) % alignof(float) == 0, "alibi_merge",
                         "has a norm array not aligned to 4 bytes");
  }
}

}  // namespace

void validate_forward(const AttnParams& p, Device engine) {
  check_forward(p, engine, p.accumulate, /*lse_required=*/false);
}

void validate_rope_angles(const RopeAngles& r, int64_t head_dim, const std::string& argument) {
  DISTATTN_CHECK_ARG(r.inv_freq != nullptr, argument + ".inv_freq", "inv_freq [rotary_dim / 2] is required (null)");
  DISTATTN_CHECK_ARG(r.rotary_dim >= 0, argument + ".rotary_dim", "must be >= 0 (0: head dim), got ", r.rotary_dim);
  const int64_t rot = r.rotary_dim == 0 ? head_dim : r.rotary_dim;
  DISTATTN_CHECK_ARG(rot % 2 == 0, argument + ".rotary_dim", "rotary dim must be even, got ", rot,
                     r.rotary_dim == 0 ? " (0 means the head dim)" : "");
  DISTATTN_CHECK_ARG(rot <= head_dim, argument + ".rotary_dim", "rotary dim ", rot, " exceeds the head dim ", head_dim);
  DISTATTN_CHECK_ARG(r.style == 0 || r.style == 1, argument + ".style", "expected 0 (NeoX) or 1 (GPT-J), got ",
                     r.style);
  DISTATTN_CHECK_ARG(std::isfinite(r.scale), argument + ".scale", "must be finite, got ", r.scale);
}

void validate_backward(const AttnBwdParams& p, Device engine) {
  DISTATTN_CHECK_ARG(!p.overwrite_dk_dv || p.accumulate, "overwrite_dk_dv",
                     "is set outside accumulate mode (plain mode overwrites dq, dk and dv anyway)");
  // The forward part: o and lse are inputs here (the complete forward's), so the plain-mode rules apply.
  check_forward(p.fwd, engine, /*accumulate=*/false, /*lse_required=*/true);
  // The backward engines read lse (and delta, which takes lse's strides) with row stride 1.
  DISTATTN_CHECK_ARG(p.fwd.lse_row_step() == 1, "fwd.lse_row_stride", "is ", p.fwd.lse_row_stride,
                     " (the backward reads lse and delta with row stride 1; only the forward honours a row stride)");
  const TensorView& q = p.fwd.q;
  const TensorView& k = p.fwd.k;

  check_view(p.dout, "dout", engine, false);
  check_view(p.dq, "dq", engine, true);
  check_view(p.dk, "dk", engine, true);
  check_view(p.dv, "dv", engine, true);

  DISTATTN_CHECK_ARG(p.dout.shape == q.shape, "dout", "has shape ", describe(p.dout), ", expected the shape of q ",
                     describe(q));
  DISTATTN_CHECK_ARG(p.dout.dtype == q.dtype, "dout", "has dtype ", dtype_name(p.dout.dtype), ", expected q's ",
                     dtype_name(q.dtype));
  DISTATTN_CHECK_ARG(p.dq.shape == q.shape, "dq", "has shape ", describe(p.dq), ", expected the shape of q ",
                     describe(q));
  DISTATTN_CHECK_ARG(p.dk.shape == k.shape, "dk", "has shape ", describe(p.dk), ", expected the shape of k ",
                     describe(k));
  DISTATTN_CHECK_ARG(p.dv.shape == k.shape, "dv", "has shape ", describe(p.dv), ", expected the shape of k/v ",
                     describe(k));

  const struct {
    const TensorView* t;
    const char* name;
  } grads[3] = {{&p.dq, "dq"}, {&p.dk, "dk"}, {&p.dv, "dv"}};
  for (const auto& g : grads) {
    if (p.accumulate) {
      DISTATTN_CHECK_ARG(g.t->dtype == DType::kFloat32, g.name, "has dtype ", dtype_name(g.t->dtype),
                         "; accumulate mode adds into fp32 gradients");
    } else {
      DISTATTN_CHECK_ARG(g.t->dtype == q.dtype || g.t->dtype == DType::kFloat32, g.name, "has dtype ",
                         dtype_name(g.t->dtype), ", expected q's ", dtype_name(q.dtype), " or fp32");
    }
    // Outputs must not share storage with any input or with each other.
    const TensorView* inputs[5] = {&q, &k, &p.fwd.v, &p.fwd.o, &p.dout};
    for (const TensorView* in : inputs) {
      DISTATTN_CHECK_ARG(!same_data(*g.t, *in), g.name,
                         "aliases an input (q, k, v, o or dout); gradients need their own storage");
    }
  }
  DISTATTN_CHECK_ARG(!same_data(p.dq, p.dk) && !same_data(p.dq, p.dv), "dq", "shares storage with dk or dv");
  DISTATTN_CHECK_ARG(!same_data(p.dk, p.dv), "dk", "shares storage with dv");

  if (p.rope_grad != nullptr) {
    // The fused inverse RoPE of dq, dk: checked here, before any engine launches anything.
    DISTATTN_CHECK_ARG(engine == Device::kCuda, "rope_grad",
                       "the host engine has no fused inverse RoPE; apply rope_apply_host to dq, dk after the backward");
    DISTATTN_CHECK_ARG(!p.accumulate, "rope_grad",
                       "is not supported in accumulate mode (the rotation would apply to this call's part only)");
    validate_rope_angles(*p.rope_grad, q.head_dim(), "rope_grad");
  }

  if (p.delta != nullptr) {
    DISTATTN_CHECK_ARG(p.delta != p.fwd.lse, "delta", "aliases lse");
    DISTATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(p.delta) % alignof(float) == 0, "delta",
                       "is not aligned to 4 bytes");
  }
}

}  // namespace distattn
