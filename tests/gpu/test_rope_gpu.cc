// rope_apply_cuda against rope_apply_host: every dtype, both pairings, partial rotary, in place and
// out of place (outputs poisoned with NaN), q only, GQA shapes, zigzag positions around 1M, the inverse,
// padded and misaligned strides (vector and scalar paths), second outputs (q_copy / k_copy: the same bits as the
// primary output, whole heads, nothing written outside them), and bad input (Error, nothing written).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/positional/rope.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::DeviceArray;
using testing::DeviceTensor;
using testing::HostTensor;
using testing::ulp_rel;

HostTensor clone(const HostTensor& t) {  // HostTensor's implicit copy keeps the old data pointer
  HostTensor c = t;
  c.view.data = c.storage.data();
  return c;
}

// GPU (fp32 arithmetic, sincosf) vs host (double arithmetic on the same fp32 angle): at most one ulp of
// the dtype apart, plus an absolute term for fp32 arithmetic: sincosf's <= 2-ulp error times |a| (inputs
// N(0,1), |a| up to ~5) and the rounding of a cancelling a cos - b sin. 2^-18 covers it and is far below
// the O(1) error of any wrong angle, pairing or position.
// Returns the number of elements outside that bound (NaN counts).
int64_t count_mismatches(const HostTensor& got, const HostTensor& ref, std::string* first) {
  const auto& v = got.view;
  const double rel = ulp_rel(v.dtype), abs_tol = std::ldexp(1.0, -18);
  int64_t bad = 0;
  for (int64_t b = 0; b < v.shape[0]; ++b)
    for (int64_t s = 0; s < v.shape[1]; ++s)
      for (int64_t h = 0; h < v.shape[2]; ++h)
        for (int64_t d = 0; d < v.shape[3]; ++d) {
          const double g = got.get(b, s, h, d), r = ref.get(b, s, h, d);
          if (!(std::fabs(g - r) <= rel * std::fabs(r) + abs_tol)) {
            if (bad++ == 0 && first) {
              *first = "first at (" + std::to_string(b) + "," + std::to_string(s) + "," + std::to_string(h) + "," +
                       std::to_string(d) + "): gpu " + std::to_string(g) + " host " + std::to_string(r);
            }
          }
        }
  return bad;
}

struct Shape {
  int64_t B, Sq, Hq, Skv, Hkv, D;
  int64_t head_pad = 0, row_pad = 0;  // padding (elements) to make strides non-trivial
};

struct Options {
  DType dtype = DType::kBFloat16;
  RopeStyle style = RopeStyle::kNeoX;
  int64_t rotary_dim = 0;
  bool in_place = true;
  bool with_k = true;
  bool inverse = false;
  bool copies = false;  // also write q_copy / k_copy (own padding, poisoned)
  float scale = 1.0f;
  PositionMap q_pos, k_pos;
};

std::string describe_case(const Shape& sh, const Options& o) {
  return std::string(dtype_name(o.dtype)) + (o.style == RopeStyle::kNeoX ? " neox" : " gptj") + " B" +
         std::to_string(sh.B) + " Sq" + std::to_string(sh.Sq) + " Hq" + std::to_string(sh.Hq) + " Skv" +
         std::to_string(sh.Skv) + " Hkv" + std::to_string(sh.Hkv) + " D" + std::to_string(sh.D) + " rot" +
         std::to_string(o.rotary_dim) + " pad" + std::to_string(sh.head_pad) + "/" + std::to_string(sh.row_pad) +
         (o.in_place ? " in-place" : " out-of-place") + (o.with_k ? "" : " q-only") + (o.inverse ? " inverse" : "") +
         (o.copies ? " copies" : "");
}

// Runs one case on both engines and compares every output element.
void run_case(const Shape& sh, const Options& o, uint64_t seed) {
  SCOPED_TRACE(describe_case(sh, o) + " seed " + std::to_string(seed));
  HostTensor q(o.dtype, sh.B, sh.Sq, sh.Hq, sh.D, sh.head_pad, sh.row_pad);
  HostTensor k(o.dtype, sh.B, sh.Skv, sh.Hkv, sh.D, sh.head_pad, sh.row_pad);
  testing::fill_normal(q, seed);
  testing::fill_normal(k, seed + 1);
  // Outputs with their own (different) padding, poisoned so unwritten elements show up as NaN.
  HostTensor q_out(o.dtype, sh.B, sh.Sq, sh.Hq, sh.D, sh.head_pad == 0 ? 8 : 0, 0);
  HostTensor k_out(o.dtype, sh.B, sh.Skv, sh.Hkv, sh.D, 0, sh.row_pad == 0 ? 16 : 0);
  testing::fill_nan(q_out);
  testing::fill_nan(k_out);
  HostTensor q_copy(o.dtype, sh.B, sh.Sq, sh.Hq, sh.D, 4, 8), k_copy(o.dtype, sh.B, sh.Skv, sh.Hkv, sh.D, 0, 24);
  testing::fill_nan(q_copy);
  testing::fill_nan(k_copy);

  RopeConfig cfg;
  cfg.head_dim = sh.D;
  cfg.rotary_dim = o.rotary_dim;
  const RopeFrequencies freqs = make_rope_frequencies(cfg);

  // Host reference on copies.
  HostTensor hq = clone(q), hk = clone(k), hq_out = clone(q_out), hk_out = clone(k_out);
  HostTensor hq_copy = clone(q_copy), hk_copy = clone(k_copy);
  RopeParams hp;
  hp.q = hq.view;
  if (o.with_k) hp.k = hk.view;
  if (!o.in_place) {
    hp.q_out = hq_out.view;
    if (o.with_k) hp.k_out = hk_out.view;
  }
  hp.q_pos = o.q_pos;
  hp.k_pos = o.k_pos;
  hp.rotary_dim = o.rotary_dim;
  hp.style = o.style;
  hp.inv_freq = freqs.inv_freq.data();
  hp.scale = o.scale;
  hp.inverse = o.inverse;
  if (o.copies) {
    hp.q_copy = hq_copy.view;
    if (o.with_k) hp.k_copy = hk_copy.view;
  }
  rope_apply_host(hp);

  // GPU.
  DeviceTensor dq(q), dk(k), dq_out(q_out), dk_out(k_out), dq_copy(q_copy), dk_copy(k_copy);
  DeviceArray<float> dinv(freqs.inv_freq);
  RopeParams gp = hp;
  gp.q = dq.view();
  gp.k = o.with_k ? dk.view() : TensorView();
  gp.q_out = o.in_place ? TensorView() : dq_out.view();
  gp.k_out = (o.in_place || !o.with_k) ? TensorView() : dk_out.view();
  gp.inv_freq = dinv.ptr;
  gp.q_copy = o.copies ? dq_copy.view() : TensorView();
  gp.k_copy = o.copies && o.with_k ? dk_copy.view() : TensorView();
  rope_apply_cuda(gp, nullptr);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());

  HostTensor gq = clone(q), gk = clone(k), gq_out = clone(q_out), gk_out = clone(k_out);
  dq.download(gq);
  dk.download(gk);
  dq_out.download(gq_out);
  dk_out.download(gk_out);
  std::string first;
  if (o.in_place) {
    EXPECT_EQ(count_mismatches(gq, hq, &first), 0) << "q " << first;
    EXPECT_EQ(count_mismatches(gk, hk, &first), 0) << "k " << first;  // q only: k untouched on both
  } else {
    EXPECT_EQ(count_mismatches(gq_out, hq_out, &first), 0) << "q_out " << first;
    EXPECT_EQ(count_mismatches(gq, q, &first), 0) << "q modified " << first;
    if (o.with_k) {
      EXPECT_EQ(count_mismatches(gk_out, hk_out, &first), 0) << "k_out " << first;
      EXPECT_EQ(count_mismatches(gk, k, &first), 0) << "k modified " << first;
    }
  }
  if (o.copies) {
    // The second outputs: exactly the primary outputs (GPU and host alike), whole heads; their padding stays NaN.
    HostTensor gq_copy = clone(q_copy), gk_copy = clone(k_copy);
    dq_copy.download(gq_copy);
    dk_copy.download(gk_copy);
    auto expect_identical = [&](const HostTensor& copy, const HostTensor& primary, const char* what) {
      int64_t diff = 0;
      for (int64_t b = 0; b < sh.B; ++b)
        for (int64_t s = 0; s < primary.view.shape[1]; ++s)
          for (int64_t h = 0; h < primary.view.shape[2]; ++h)
            for (int64_t d = 0; d < sh.D; ++d) {
              const double c = copy.get(b, s, h, d), p = primary.get(b, s, h, d);
              diff += !(c == p);  // NaN (not written) counts
            }
      EXPECT_EQ(diff, 0) << what << ": elements differing from the primary output";
      const int64_t n = static_cast<int64_t>(copy.storage.size() / dtype_size(o.dtype));
      int64_t finite = 0;
      for (int64_t i = 0; i < n; ++i) finite += std::isfinite(load_as_double(copy.view.data, i, o.dtype)) ? 1 : 0;
      EXPECT_EQ(finite, primary.view.numel()) << what << ": writes outside the view or missing writes";
    };
    expect_identical(gq_copy, o.in_place ? gq : gq_out, "q_copy (GPU)");
    expect_identical(hq_copy, o.in_place ? hq : hq_out, "q_copy (host)");
    if (o.with_k) {
      expect_identical(gk_copy, o.in_place ? gk : gk_out, "k_copy (GPU)");
      expect_identical(hk_copy, o.in_place ? hk : hk_out, "k_copy (host)");
    }
  }
  // Padding of the outputs stays NaN (nothing written outside the view): checked through the storage.
  if (!o.in_place) {
    const int64_t n = static_cast<int64_t>(gq_out.storage.size() / dtype_size(o.dtype));
    int64_t finite = 0;
    for (int64_t i = 0; i < n; ++i) finite += std::isfinite(load_as_double(gq_out.view.data, i, o.dtype)) ? 1 : 0;
    EXPECT_EQ(finite, q.view.numel()) << "q_out: writes outside the view or missing writes";
  }
}

// Zigzag shard of rank 1 of 4 (8 chunks of C tokens) on a sequence starting at `offset`.
PositionMap zigzag(int64_t offset, int64_t C, int64_t rank, int64_t P, int64_t rows) {
  PositionMap m = PositionMap::contiguous(offset + rank * C, C);
  m.add_chunk(offset + (2 * P - 1 - rank) * C, 1, rows - C);
  return m;
}

TEST(RopeGpu, AllDtypesStylesPlacements) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = testing::test_seed();
  uint64_t n = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (RopeStyle style : {RopeStyle::kNeoX, RopeStyle::kGptJ})
      for (bool in_place : {true, false})
        for (int64_t rot : {0, 64}) {
          const Shape sh{2, 37, 8, 53, 2, 128, 8, 16};  // GQA: Hkv != Hq, Skv != Sq; padded strides
          Options o;
          o.dtype = dt;
          o.style = style;
          o.in_place = in_place;
          o.rotary_dim = rot;
          o.q_pos = zigzag(1000000, 19, 1, 4, 37);  // large offsets: positions ~1M
          o.k_pos = zigzag(1000000, 27, 1, 4, 53);
          run_case(sh, o, seed + 100 * n++);
        }
}

TEST(RopeGpu, QOnlyInverseAndScale) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = testing::test_seed();
  uint64_t n = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat32})
    for (RopeStyle style : {RopeStyle::kNeoX, RopeStyle::kGptJ}) {
      Options o;
      o.dtype = dt;
      o.style = style;
      o.with_k = false;
      o.inverse = true;
      o.scale = 1.1386f;
      o.q_pos = PositionMap::strided(7, 3, 41);
      o.k_pos = o.q_pos;
      run_case(Shape{1, 41, 5, 1, 1, 64}, o, seed + 7 * n++);
      o.with_k = true;
      o.in_place = false;
      o.k_pos = PositionMap::contiguous(5, 23);
      run_case(Shape{1, 41, 5, 23, 1, 64}, o, seed + 7 * n++);  // MQA: one kv head
    }
}

// Second outputs (the ring's K|V send buffer): in place and out of place, partial rotary (the tail copied), q only,
// the scalar path.
TEST(RopeGpu, SecondOutputs) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = testing::test_seed();
  uint64_t n = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat32})
    for (RopeStyle style : {RopeStyle::kNeoX, RopeStyle::kGptJ})
      for (bool in_place : {true, false})
        for (int64_t rot : {0, 32}) {
          Options o;
          o.dtype = dt;
          o.style = style;
          o.in_place = in_place;
          o.rotary_dim = rot;
          o.copies = true;
          o.q_pos = zigzag(1000000, 19, 1, 4, 37);
          o.k_pos = zigzag(1000000, 27, 1, 4, 53);
          run_case(Shape{2, 37, 8, 53, 2, 128, 8, 16}, o, seed + 13 * n++);
          o.with_k = false;
          o.q_pos = PositionMap::contiguous(3, 13);
          run_case(Shape{1, 13, 3, 1, 1, 64, 1, 3}, o, seed + 13 * n++);  // misaligned strides: the scalar path
        }
}

// Shapes off the 16-byte path: odd head dims, pairs not a multiple of the packet, misaligned strides.
TEST(RopeGpu, ScalarPathShapes) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = testing::test_seed();
  uint64_t n = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (RopeStyle style : {RopeStyle::kNeoX, RopeStyle::kGptJ})
      for (bool in_place : {true, false}) {
        Options o;
        o.dtype = dt;
        o.style = style;
        o.in_place = in_place;
        o.q_pos = PositionMap::contiguous(999983, 13);
        o.k_pos = PositionMap::strided(2, 5, 11);
        o.rotary_dim = 24;
        run_case(Shape{1, 13, 3, 11, 3, 40}, o, seed + 11 * n++);  // NeoX half 12: not a packet multiple
        o.rotary_dim = 0;
        run_case(Shape{1, 13, 3, 11, 3, 64, 1, 3}, o, seed + 11 * n++);  // misaligned head/row strides
        o.rotary_dim = 30;
        run_case(Shape{2, 13, 3, 11, 1, 41, 2, 0}, o, seed + 11 * n++);  // odd head dim, partial rotary
      }
}

// Many rows and heads: several blocks per tensor, rows not a multiple of the block's row count.
TEST(RopeGpu, LargerShapes) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = testing::test_seed();
  Options o;
  o.q_pos = zigzag(5000000, 301, 2, 4, 601);
  o.k_pos = o.q_pos;
  run_case(Shape{1, 601, 64, 601, 8, 128}, o, seed);
  o.dtype = DType::kFloat16;
  o.style = RopeStyle::kGptJ;
  o.in_place = false;
  o.q_pos = PositionMap::contiguous(0, 1000);
  o.k_pos = PositionMap::contiguous(0, 1000);
  run_case(Shape{2, 1000, 12, 1000, 4, 80}, o, seed + 1);
}

// Bad input: Error naming the argument, and nothing written (outputs stay NaN, in-place input unchanged).
TEST(RopeGpu, BadInputThrowsAndWritesNothing) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = testing::test_seed();
  HostTensor q(DType::kBFloat16, 1, 16, 4, 64), out(DType::kBFloat16, 1, 16, 4, 64);
  testing::fill_normal(q, seed);
  testing::fill_nan(out);
  RopeConfig cfg;
  cfg.head_dim = 64;
  const RopeFrequencies freqs = make_rope_frequencies(cfg);
  DeviceTensor dq(q), dout(out);
  DeviceArray<float> dinv(freqs.inv_freq);
  auto fresh = [&] {
    RopeParams p;
    p.q = dq.view();
    p.q_out = dout.view();
    p.k = dq.view();  // k == q: fine for validation purposes
    p.k_pos = PositionMap::contiguous(0, 16);
    p.q_pos = PositionMap::contiguous(0, 16);
    p.inv_freq = dinv.ptr;
    return p;
  };
  RopeParams p = fresh();
  p.q.data = q.view.data;  // host memory labelled as device memory
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q");
  p = fresh();
  p.q_out.data = out.view.data;
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q_out");
  p = fresh();
  p.inv_freq = freqs.inv_freq.data();  // host array
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "inv_freq");
  p = fresh();
  p.rotary_dim = 33;
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "rotary_dim");
  p = fresh();
  p.q_pos = PositionMap::contiguous(0, 15);
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q_pos");
  p = fresh();
  p.k_pos = PositionMap::contiguous(0, 17);
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "k_pos");
  p = fresh();
  p.q.dtype = DType::kFloat64;
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q");
  p = fresh();
  p.q.device = Device::kHost;
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q");
  p = fresh();
  p.k.dtype = DType::kFloat16;
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "k");
  p = fresh();
  p.q_out.shape[1] = 15;
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q_out");
  p = fresh();
  p.q_copy = dq.view();  // the copy on top of q
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q_copy");
  p = fresh();
  p.q_copy = dout.view();  // the copy on top of q_out
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q_copy");
  p = fresh();
  p.k = TensorView();
  p.k_copy = dout.view();  // a k copy without k
  p.q_out = TensorView();
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "k_copy");
  p = fresh();
  p.q_out = TensorView();
  p.q_copy = dout.view();
  p.q_copy.shape[2] = 3;  // wrong shape
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q_copy");
  p = fresh();
  p.q_out = TensorView();
  p.q_copy = dout.view();
  p.q_copy.data = out.view.data;  // host memory
  EXPECT_ERROR_ARG(rope_apply_cuda(p, nullptr), "q_copy");
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  HostTensor gq = clone(q), gout = clone(out);
  dq.download(gq);
  dout.download(gout);
  EXPECT_EQ(std::memcmp(gq.storage.data(), q.storage.data(), q.bytes()), 0) << "q modified by a rejected call";
  int64_t finite = 0;
  for (int64_t i = 0; i < out.view.numel(); ++i)
    finite += std::isfinite(load_as_double(gout.view.data, i, DType::kBFloat16));
  EXPECT_EQ(finite, 0) << "q_out written by a rejected call";
}

}  // namespace
}  // namespace distattn
