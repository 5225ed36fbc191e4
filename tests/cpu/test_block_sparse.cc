// BlockSparseAttention on the host engine against a dense fp64 reference written here, whose element mask is
// built INDEPENDENTLY from each pattern's definition (pair by pair from positions and block indices), never
// from the layout's CSR. Forward (O, LSE) and backward (dQ, dK, dV); odd sizes (last blocks short), GQA,
// ALiBi, offset / multi-chunk positions, rows with no keys. Also the exact pair counts, and bad input
// (the right argument named, nothing written).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/sparse/block_sparse_attention.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::HostTensor;
constexpr int64_t kB = kLayoutBlock;
const double kNegInf = -std::numeric_limits<double>::infinity();

// Visibility of (q row i, kv row j) by a pattern's definition.
using Definition = std::function<bool(int64_t i, int64_t j)>;

struct Problem {
  std::string name;
  int64_t B = 1, Sq = 300, Skv = 300, Hq = 2, Hkv = 2, D = 16;
  bool alibi = false;
  bool causal_bias = false;   // ALiBi form: -(pq - pk) when the layout's band is causal, else -|pq - pk|
  PositionMap q_pos, kv_pos;  // empty: contiguous from 0
  PositionMap qp() const { return q_pos.num_chunks ? q_pos : PositionMap::contiguous(0, Sq); }
  PositionMap kp() const { return kv_pos.num_chunks ? kv_pos : PositionMap::contiguous(0, Skv); }
};

std::vector<float> slopes_for(int64_t H) {
  std::vector<float> s(H);
  for (int64_t h = 0; h < H; ++h) s[h] = 0.05f * static_cast<float>(h + 1);  // large enough to matter at these S
  return s;
}

BlockSparseConfig config_for(const Problem& pr) {
  BlockSparseConfig c;
  c.q_heads = pr.Hq;
  c.kv_heads = pr.Hkv;
  c.head_dim = pr.D;
  if (pr.alibi) c.alibi_slopes = slopes_for(pr.Hq);
  c.q_pos = pr.q_pos;
  c.kv_pos = pr.kv_pos;
  return c;
}

// Dense fp64 attention (forward and backward) over an explicit element mask.
struct Reference {
  HostTensor o, dq, dk, dv;  // fp64
  std::vector<double> lse;   // [B, Hq, Sq]
  int64_t visible = 0;       // visible pairs per (batch, head)
};

Reference reference(const Problem& pr, const Definition& def, const HostTensor& q, const HostTensor& k,
                    const HostTensor& v, const HostTensor& dout) {
  const int64_t G = pr.Hq / pr.Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(pr.D));
  const std::vector<float> slopes = slopes_for(pr.Hq);
  const PositionMap qp = pr.qp(), kp = pr.kp();
  std::vector<uint8_t> mask(pr.Sq * pr.Skv);
  Reference r;
  for (int64_t i = 0; i < pr.Sq; ++i)
    for (int64_t j = 0; j < pr.Skv; ++j) r.visible += mask[i * pr.Skv + j] = def(i, j) ? 1 : 0;
  r.o = HostTensor(DType::kFloat64, pr.B, pr.Sq, pr.Hq, pr.D);
  r.dq = HostTensor(DType::kFloat64, pr.B, pr.Sq, pr.Hq, pr.D);
  r.dk = HostTensor(DType::kFloat64, pr.B, pr.Skv, pr.Hkv, pr.D);
  r.dv = HostTensor(DType::kFloat64, pr.B, pr.Skv, pr.Hkv, pr.D);
  r.lse.assign(pr.B * pr.Hq * pr.Sq, 0.0);
  for (auto* t : {&r.dk, &r.dv})
    for (int64_t b = 0; b < pr.B; ++b)
      for (int64_t j = 0; j < pr.Skv; ++j)
        for (int64_t h = 0; h < pr.Hkv; ++h)
          for (int64_t d = 0; d < pr.D; ++d) t->set(b, j, h, d, 0.0);
  std::vector<double> s(pr.Skv), P(pr.Skv), dP(pr.Skv);
  for (int64_t b = 0; b < pr.B; ++b) {
    for (int64_t h = 0; h < pr.Hq; ++h) {
      const int64_t hk = h / G;
      for (int64_t i = 0; i < pr.Sq; ++i) {
        double m = kNegInf;
        for (int64_t j = 0; j < pr.Skv; ++j) {
          if (!mask[i * pr.Skv + j]) continue;
          double dot = 0;
          for (int64_t d = 0; d < pr.D; ++d) dot += q.get(b, i, h, d) * k.get(b, j, hk, d);
          s[j] = scale * dot;
          if (pr.alibi) {
            const double diff = static_cast<double>(qp.position(i) - kp.position(j));
            s[j] -= static_cast<double>(slopes[h]) * (pr.causal_bias ? diff : std::fabs(diff));
          }
          m = std::max(m, s[j]);
        }
        double l = 0;
        for (int64_t j = 0; j < pr.Skv; ++j) l += mask[i * pr.Skv + j] ? std::exp(s[j] - m) : 0.0;
        r.lse[(b * pr.Hq + h) * pr.Sq + i] = l > 0 ? m + std::log(l) : kNegInf;
        for (int64_t j = 0; j < pr.Skv; ++j) P[j] = (mask[i * pr.Skv + j] && l > 0) ? std::exp(s[j] - m) / l : 0.0;
        double delta = 0;
        for (int64_t d = 0; d < pr.D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < pr.Skv; ++j)
            if (P[j] != 0) acc += P[j] * v.get(b, j, hk, d);
          r.o.set(b, i, h, d, acc);
        }
        for (int64_t j = 0; j < pr.Skv; ++j) {
          dP[j] = 0;
          if (P[j] == 0) continue;
          for (int64_t d = 0; d < pr.D; ++d) dP[j] += dout.get(b, i, h, d) * v.get(b, j, hk, d);
          delta += P[j] * dP[j];
        }
        for (int64_t d = 0; d < pr.D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < pr.Skv; ++j)
            if (P[j] != 0) acc += scale * P[j] * (dP[j] - delta) * k.get(b, j, hk, d);
          r.dq.set(b, i, h, d, acc);
        }
        for (int64_t j = 0; j < pr.Skv; ++j) {
          if (P[j] == 0) continue;
          const double ds = scale * P[j] * (dP[j] - delta);
          for (int64_t d = 0; d < pr.D; ++d) {
            r.dk.set(b, j, hk, d, r.dk.get(b, j, hk, d) + ds * q.get(b, i, h, d));
            r.dv.set(b, j, hk, d, r.dv.get(b, j, hk, d) + P[j] * dout.get(b, i, h, d));
          }
        }
      }
    }
  }
  return r;
}

// Runs forward + backward of `attn` (host, fp64) on random inputs with poisoned outputs and compares with the
// reference of `def`; also the pair count.
void check_pattern(const Problem& pr, BlockSparseAttention& attn, const Definition& def,
                   bool expect_empty_rows = false) {
  const uint64_t seed = testing::test_seed() + std::hash<std::string>()(pr.name) % 100000;
  SCOPED_TRACE("case " + pr.name + " seed " + std::to_string(seed) + " " + attn.layout().describe());
  HostTensor q(DType::kFloat64, pr.B, pr.Sq, pr.Hq, pr.D, /*head_pad=*/3, /*row_pad=*/5);
  HostTensor k(DType::kFloat64, pr.B, pr.Skv, pr.Hkv, pr.D);
  HostTensor v(DType::kFloat64, pr.B, pr.Skv, pr.Hkv, pr.D, 1, 0);
  HostTensor dout(DType::kFloat64, pr.B, pr.Sq, pr.Hq, pr.D);
  testing::fill_normal(q, seed);
  testing::fill_normal(k, seed + 1);
  testing::fill_normal(v, seed + 2);
  testing::fill_normal(dout, seed + 3);
  const Reference ref = reference(pr, def, q, k, v, dout);

  HostTensor o(DType::kFloat64, pr.B, pr.Sq, pr.Hq, pr.D);
  HostTensor dq(DType::kFloat64, pr.B, pr.Sq, pr.Hq, pr.D), dk(DType::kFloat64, pr.B, pr.Skv, pr.Hkv, pr.D),
      dv(DType::kFloat64, pr.B, pr.Skv, pr.Hkv, pr.D);
  for (auto* t : {&o, &dq, &dk, &dv}) testing::fill_nan(*t);
  std::vector<float> lse(pr.B * pr.Hq * pr.Sq, std::nanf(""));
  attn.forward(q.view, k.view, v.view, o.view, lse.data());
  attn.backward(q.view, k.view, v.view, o.view, lse.data(), dout.view, dq.view, dk.view, dv.view);

  const auto eo = testing::compare(o.view, ref.o.view);
  const auto el = testing::compare_flat(lse.data(), ref.lse.data(), static_cast<int64_t>(lse.size()));
  const auto edq = testing::compare(dq.view, ref.dq.view);
  const auto edk = testing::compare(dk.view, ref.dk.view);
  const auto edv = testing::compare(dv.view, ref.dv.view);
  SCOPED_TRACE("o " + eo.str() + " | lse " + el.str() + " | dq " + edq.str() + " | dk " + edk.str() + " | dv " +
               edv.str());
  EXPECT_EQ(eo.non_finite, 0);
  EXPECT_LE(eo.max_abs, 1e-12);
  // The backward recomputes P from the fp32 LSE of the contract: relative errors ~1e-7, not 1e-15.
  for (const auto* e : {&edq, &edk, &edv}) {
    EXPECT_EQ(e->non_finite, 0);
    EXPECT_LE(e->rel_l2, 1e-6);
    EXPECT_LE(e->max_abs, 1e-5);
  }
  EXPECT_EQ(el.non_finite, 0);
  EXPECT_LE(el.max_abs, 2e-6);  // lse is stored as fp32

  // Pair counts: exact against the element mask; the computed pairs cover them.
  EXPECT_EQ(attn.visible_pairs(pr.Sq, pr.Skv), ref.visible);
  EXPECT_GE(attn.computed_pairs(pr.Sq, pr.Skv), ref.visible);
  EXPECT_GT(ref.visible, 0) << "a case that sees nothing tests nothing";
  int64_t empty = 0;
  for (int64_t i = 0; i < pr.Sq; ++i) {
    bool any = false;
    for (int64_t j = 0; j < pr.Skv && !any; ++j) any = def(i, j);
    empty += any ? 0 : 1;
  }
  EXPECT_EQ(attn.rows_without_keys(pr.Sq, pr.Skv), empty);
  EXPECT_EQ(empty > 0, expect_empty_rows);
}

bool block_causal(const Problem& pr, int64_t i, int64_t j) { return pr.kp().position(j) <= pr.qp().position(i); }

TEST(BlockSparse, LocalWindowCausalGqaAlibi) {
  Problem pr;
  pr.name = "window_causal";
  pr.Sq = pr.Skv = 700;  // last block 60 rows
  pr.Hq = 4, pr.Hkv = 2, pr.alibi = true, pr.causal_bias = true;
  const int64_t W = 300;
  auto attn = BlockSparseAttention::local_window(pr.Sq, pr.Skv, W, true, config_for(pr), Device::kHost);
  check_pattern(pr, attn, [&](int64_t i, int64_t j) { return i - j >= 0 && i - j < W; });
}

TEST(BlockSparse, LocalWindowNonCausalOffsetPositions) {
  Problem pr;
  pr.name = "window_offset";
  pr.Sq = 300, pr.Skv = 650, pr.B = 2, pr.alibi = true;
  pr.q_pos = PositionMap::contiguous(350, 300);  // q = the last 300 positions of the kv sequence
  const int64_t W = 129;
  auto attn = BlockSparseAttention::local_window(pr.Sq, pr.Skv, W, false, config_for(pr), Device::kHost);
  check_pattern(pr, attn, [&](int64_t i, int64_t j) { return std::llabs((350 + i) - j) < W; });
}

TEST(BlockSparse, LocalWindowZigzagChunks) {
  // A zigzag-like shard: two q chunks, kv contiguous; chunk seams inside blocks.
  Problem pr;
  pr.name = "window_zigzag";
  pr.Sq = 400, pr.Skv = 900, pr.Hq = 2, pr.Hkv = 1;
  pr.q_pos.add_chunk(150, 1, 200).add_chunk(650, 1, 200);
  const int64_t W = 250;
  auto attn = BlockSparseAttention::local_window(pr.Sq, pr.Skv, W, true, config_for(pr), Device::kHost);
  const PositionMap qp = pr.q_pos;
  check_pattern(pr, attn, [&](int64_t i, int64_t j) {
    const int64_t d = qp.position(i) - j;
    return d >= 0 && d < W;
  });
}

TEST(BlockSparse, BlockDiagonal) {
  for (bool causal : {false, true}) {
    Problem pr;
    pr.name = std::string("block_diagonal_") + (causal ? "causal" : "full");
    pr.Sq = pr.Skv = 600;  // segments of 256: 0..255, 256..511, 512..599 (short)
    pr.Hq = 3, pr.Hkv = 1, pr.alibi = causal, pr.causal_bias = causal;
    auto attn = BlockSparseAttention::block_diagonal(pr.Sq, pr.Skv, 256, causal, config_for(pr), Device::kHost);
    check_pattern(pr, attn, [&](int64_t i, int64_t j) { return i / 256 == j / 256 && (!causal || j <= i); });
  }
}

TEST(BlockSparse, StridedDilatedBlocks) {
  for (bool causal : {false, true}) {
    Problem pr;
    pr.name = std::string("strided_") + (causal ? "causal" : "full");
    pr.Sq = 900, pr.Skv = 1000;
    auto attn = BlockSparseAttention::strided(pr.Sq, pr.Skv, 3, 1, causal, config_for(pr), Device::kHost);
    check_pattern(pr, attn, [&](int64_t i, int64_t j) {
      const int64_t qb = i / kB, kb = j / kB;
      const bool listed = ((qb - kb) % 3 + 3) % 3 == 0 || std::llabs(qb - kb) <= 1;
      return listed && (!causal || block_causal(pr, i, j));
    });
  }
}

TEST(BlockSparse, GlobalTokens) {
  for (bool causal : {false, true}) {
    Problem pr;
    pr.name = std::string("global_") + (causal ? "causal" : "full");
    pr.Sq = pr.Skv = 520;
    pr.alibi = true, pr.causal_bias = causal;
    auto attn = BlockSparseAttention::global_tokens(pr.Sq, pr.Skv, 1, causal, config_for(pr), Device::kHost);
    check_pattern(pr, attn, [&](int64_t i, int64_t j) {
      return (i / kB < 1 || j / kB < 1) && (!causal || block_causal(pr, i, j));
    });
  }
}

// Random blocks: the draws ARE the definition; check their count per row, then the element mask is
// "drawn block, and causal".
TEST(BlockSparse, SeededRandom) {
  for (bool causal : {false, true}) {
    Problem pr;
    pr.name = std::string("random_") + (causal ? "causal" : "full");
    pr.Sq = 700, pr.Skv = 800;  // 6 x 7 blocks
    auto attn = BlockSparseAttention::random(pr.Sq, pr.Skv, 2, 77, causal, config_for(pr), Device::kHost);
    const BlockLayout& l = attn.layout();
    for (int64_t qb = 0; qb < l.num_q_blocks(); ++qb) {
      // Causal: the row's causally visible blocks (kb <= qb for these contiguous maps) bound the draw.
      const int64_t available = causal ? std::min<int64_t>(qb + 1, l.num_kv_blocks()) : l.num_kv_blocks();
      EXPECT_EQ(l.row_offset()[qb + 1] - l.row_offset()[qb], std::min<int64_t>(2, available)) << "q block " << qb;
    }
    // The same seed draws the same blocks; another seed other blocks.
    auto again = BlockSparseAttention::random(pr.Sq, pr.Skv, 2, 77, causal, config_for(pr), Device::kHost);
    EXPECT_EQ(again.layout().col_index(), l.col_index());
    std::vector<std::vector<bool>> drawn(l.num_q_blocks(), std::vector<bool>(l.num_kv_blocks(), false));
    for (int64_t qb = 0; qb < l.num_q_blocks(); ++qb)
      for (int32_t e = l.row_offset()[qb]; e < l.row_offset()[qb + 1]; ++e) drawn[qb][l.col_index()[e]] = true;
    check_pattern(pr, attn,
                  [&](int64_t i, int64_t j) { return drawn[i / kB][j / kB] && (!causal || block_causal(pr, i, j)); });
  }
}

TEST(BlockSparse, BigBird) {
  Problem pr;
  pr.name = "bigbird";
  pr.Sq = pr.Skv = 1100;  // 9 blocks, last one 76 rows
  pr.Hq = 4, pr.Hkv = 4, pr.alibi = true;
  auto attn = BlockSparseAttention::bigbird(pr.Sq, pr.Skv, 1, 1, 2, 5, false, config_for(pr), Device::kHost);
  const BlockLayout& l = attn.layout();
  // Window and global blocks by definition; the random ones are whatever else the row lists (2 per row
  // beyond window + global, where that many remain).
  auto structural = [](int64_t qb, int64_t kb) { return std::llabs(qb - kb) <= 1 || qb < 1 || kb < 1; };
  for (int64_t qb = 0; qb < l.num_q_blocks(); ++qb) {
    int64_t fixed = 0, extra = 0;
    for (int64_t kb = 0; kb < l.num_kv_blocks(); ++kb) {
      if (structural(qb, kb)) {
        ++fixed;
        EXPECT_TRUE(l.full(qb, kb)) << "window/global block (" << qb << ", " << kb << ") missing";
      } else {
        extra += l.visible_block(qb, kb) ? 1 : 0;
      }
    }
    EXPECT_EQ(extra, std::min<int64_t>(2, l.num_kv_blocks() - fixed)) << "q block " << qb;
  }
  check_pattern(pr, attn, [&](int64_t i, int64_t j) {
    const int64_t qb = i / kB, kb = j / kB;
    return structural(qb, kb) || l.visible_block(qb, kb);
  });
}

// A user block mask mixing full and partial blocks (partial: causal window 200) and one q block with
// nothing listed: its rows have no key (O = 0, LSE = -inf, dQ = 0), or an error when asked.
TEST(BlockSparse, UserBlockMaskWithEmptyRows) {
  Problem pr;
  pr.name = "user_mask";
  pr.Sq = 500, pr.Skv = 450;  // 4 x 4 blocks
  pr.alibi = true, pr.causal_bias = true;
  const uint8_t F = BlockLayout::kFull, P = BlockLayout::kPartial, A = BlockLayout::kAbsent;
  const std::vector<uint8_t> mask = {P, A, A, A,   //
                                     F, P, A, A,   //
                                     A, A, A, A,   // q block 2: no keys
                                     F, A, F, P};  // kv block 2 fully visible from q block 3
  const Mask band = Mask::make_causal(200);
  auto attn = BlockSparseAttention::from_block_mask(4, 4, mask, band, config_for(pr), Device::kHost);
  check_pattern(
      pr, attn,
      [&](int64_t i, int64_t j) {
        const uint8_t s = mask[(i / kB) * 4 + j / kB];
        return s == F || (s == P && i - j >= 0 && i - j < 200);
      },
      /*expect_empty_rows=*/true);

  BlockSparseConfig strict = config_for(pr);
  strict.error_if_query_without_key = true;
  auto strict_attn = BlockSparseAttention::from_block_mask(4, 4, mask, band, strict, Device::kHost);
  HostTensor q(DType::kFloat64, 1, pr.Sq, 2, pr.D), k(DType::kFloat64, 1, pr.Skv, 2, pr.D),
      v(DType::kFloat64, 1, pr.Skv, 2, pr.D), o(DType::kFloat64, 1, pr.Sq, 2, pr.D);
  testing::fill_normal(q, 1), testing::fill_normal(k, 2), testing::fill_normal(v, 3), testing::fill_nan(o);
  const std::vector<unsigned char> before = o.storage;
  std::vector<float> lse(2 * pr.Sq, std::nanf(""));
  EXPECT_ERROR_ARG(strict_attn.forward(q.view, k.view, v.view, o.view, lse.data()), "layout");
  EXPECT_EQ(o.storage, before) << "nothing may be written on error";
  EXPECT_TRUE(std::isnan(lse[0]));
}

// Causal with every q position before the kv block it may see: q rows whose positions precede all keys.
TEST(BlockSparse, CausalRowsBeforeAllKeys) {
  Problem pr;
  pr.name = "rows_before_keys";
  pr.Sq = 200, pr.Skv = 300;
  pr.kv_pos = PositionMap::contiguous(100, 300);  // keys start at position 100; q rows 0..99 see none
  auto attn = BlockSparseAttention::strided(pr.Sq, pr.Skv, 1, 0, true, config_for(pr), Device::kHost);
  check_pattern(
      pr, attn, [&](int64_t i, int64_t j) { return 100 + j <= i; }, /*expect_empty_rows=*/true);
}

TEST(BlockSparse, PairCountsLarge) {
  // 64K causal sliding window 2048 and block-diagonal 2048: the closed forms.
  BlockSparseConfig c;
  c.q_heads = 1, c.head_dim = 128;
  const int64_t S = 65536, W = 2048;
  auto win = BlockSparseAttention::local_window(S, S, W, true, c, Device::kHost);
  EXPECT_EQ(win.visible_pairs(S, S), W * (W + 1) / 2 + (S - W) * W);
  auto diag = BlockSparseAttention::block_diagonal(S, S, 2048, false, c, Device::kHost);
  EXPECT_EQ(diag.visible_pairs(S, S), (S / 2048) * 2048 * 2048);
  EXPECT_EQ(diag.computed_pairs(S, S), diag.visible_pairs(S, S));
  auto dense = BlockSparseAttention(BlockLayout::from_mask(1000, 1000, PositionMap::contiguous(0, 1000),
                                                           PositionMap::contiguous(0, 1000), Mask::make_causal()),
                                    c, Device::kHost);
  EXPECT_EQ(dense.visible_pairs(1000, 1000), 1000 * 1001 / 2);
  EXPECT_EQ(dense.computed_pairs(1000, 1000), [] {
    int64_t n = 0;  // blocks (qb, kb <= qb), each rows x cols
    for (int64_t qb = 0; qb < 8; ++qb)
      for (int64_t kb = 0; kb <= qb; ++kb)
        n += std::min<int64_t>(128, 1000 - qb * 128) * std::min<int64_t>(128, 1000 - kb * 128);
    return n;
  }());
}

// ------------------------------------------------------------------------------------------------
// Bad input: the right argument named, nothing written.

struct Bad {
  Problem pr;
  HostTensor q, k, v, o, dout, dq, dk, dv;
  std::vector<float> lse;
  Bad() {
    pr.Sq = pr.Skv = 300;
    q = HostTensor(DType::kFloat32, 1, 300, 2, 16), k = q, v = q, o = q, dout = q, dq = q, dk = q, dv = q;
    testing::fill_normal(q, 1), testing::fill_normal(k, 2), testing::fill_normal(v, 3), testing::fill_normal(dout, 4);
    for (auto* t : {&o, &dq, &dk, &dv}) testing::fill_nan(*t);
    lse.assign(600, std::nanf(""));
  }
  bool untouched() const {
    bool nan_lse = true;
    for (float x : lse) nan_lse = nan_lse && std::isnan(x);
    auto all_nan = [](const HostTensor& t) {
      HostTensor ref = t;
      testing::fill_nan(ref);
      return ref.storage == t.storage;
    };
    return nan_lse && all_nan(o) && all_nan(dq) && all_nan(dk) && all_nan(dv);
  }
};

TEST(BlockSparse, BadInputNamesTheArgumentAndWritesNothing) {
  Bad t;
  auto attn = BlockSparseAttention::local_window(300, 300, 100, true, config_for(t.pr), Device::kHost);
  // Layout block counts against the call: 3 x 3 blocks, call with 500 rows (4 blocks).
  HostTensor q500(DType::kFloat32, 1, 500, 2, 16), o500 = q500;
  testing::fill_normal(q500, 5), testing::fill_nan(o500);
  std::vector<float> lse500(1000, std::nanf(""));
  EXPECT_ERROR_ARG(attn.forward(q500.view, t.k.view, t.v.view, o500.view, lse500.data()), "layout");
  EXPECT_ERROR_ARG(attn.visible_pairs(500, 300), "layout");
  // 257 rows: also 3 blocks: accepted (the last block short); 256 rows: 2 blocks: rejected.
  EXPECT_NO_THROW(attn.visible_pairs(257, 300));
  EXPECT_ERROR_ARG(attn.visible_pairs(256, 300), "layout");
  // Heads / head dim against the configuration.
  HostTensor q3h(DType::kFloat32, 1, 300, 3, 16), qd8(DType::kFloat32, 1, 300, 2, 8),
      k1h(DType::kFloat32, 1, 300, 1, 16);
  testing::fill_normal(q3h, 6), testing::fill_normal(qd8, 7), testing::fill_normal(k1h, 8);
  EXPECT_ERROR_ARG(attn.forward(q3h.view, t.k.view, t.v.view, t.o.view, t.lse.data()), "q");
  EXPECT_ERROR_ARG(attn.forward(qd8.view, t.k.view, t.v.view, t.o.view, t.lse.data()), "q");
  EXPECT_ERROR_ARG(attn.forward(t.q.view, k1h.view, t.v.view, t.o.view, t.lse.data()), "k");
  // Dtypes and shapes (the engine contract's validation, before anything runs).
  HostTensor k64 = testing::convert(t.k, DType::kFloat64);
  EXPECT_ERROR_ARG(attn.forward(t.q.view, k64.view, t.v.view, t.o.view, t.lse.data()), "k");
  HostTensor v_short(DType::kFloat32, 1, 299, 2, 16);
  testing::fill_normal(v_short, 9);
  EXPECT_ERROR_ARG(attn.forward(t.q.view, t.k.view, v_short.view, t.o.view, t.lse.data()), "v");
  // Device: a host object given tensors that claim to be CUDA memory.
  TensorView q_cuda = t.q.view;
  q_cuda.device = Device::kCuda;
  EXPECT_ERROR_ARG(attn.forward(q_cuda, t.k.view, t.v.view, t.o.view, t.lse.data()), "q");
  // Backward: lse required; dk shape.
  EXPECT_ERROR_ARG(
      attn.backward(t.q.view, t.k.view, t.v.view, t.o.view, nullptr, t.dout.view, t.dq.view, t.dk.view, t.dv.view),
      "lse");
  HostTensor dk_bad(DType::kFloat32, 1, 300, 2, 8);
  testing::fill_nan(dk_bad);
  EXPECT_ERROR_ARG(attn.backward(t.q.view, t.k.view, t.v.view, t.o.view, t.lse.data(), t.dout.view, t.dq.view,
                                 dk_bad.view, t.dv.view),
                   "dk");
  EXPECT_TRUE(t.untouched());
  for (float x : lse500) EXPECT_TRUE(std::isnan(x));
}

TEST(BlockSparse, BadConfigAndFactoryArguments) {
  Problem pr;
  BlockSparseConfig c = config_for(pr);
  auto make = [](const BlockSparseConfig& cfg, Device dev = Device::kHost) {
    return BlockSparseAttention::local_window(300, 300, 100, false, cfg, dev);
  };
  BlockSparseConfig bad = c;
  bad.q_heads = 0;
  EXPECT_ERROR_ARG(make(bad), "config.q_heads");
  bad = c, bad.q_heads = 4, bad.kv_heads = 3;
  EXPECT_ERROR_ARG(make(bad), "config.kv_heads");
  bad = c, bad.head_dim = 0;
  EXPECT_ERROR_ARG(make(bad), "config.head_dim");
  bad = c, bad.head_dim = 96;
  EXPECT_ERROR_ARG(make(bad, Device::kCuda), "config.head_dim");  // no CUDA kernel: refused before any CUDA call
  bad = c, bad.alibi_slopes = {0.1f};
  EXPECT_ERROR_ARG(make(bad), "config.alibi_slopes");
  bad = c, bad.alibi_slopes = {0.1f, std::nanf("")};
  EXPECT_ERROR_ARG(make(bad), "config.alibi_slopes");
  bad = c, bad.softmax_scale = -1.f;
  EXPECT_ERROR_ARG(make(bad), "config.softmax_scale");
  bad = c, bad.q_pos = PositionMap::contiguous(-5, 300);
  EXPECT_ERROR_ARG(make(bad), "config.q_pos");
  // Positions whose length does not match the layout's blocks.
  bad = c, bad.kv_pos = PositionMap::contiguous(0, 1000);
  EXPECT_ERROR_ARG(BlockSparseAttention(BlockLayout::strided(300, 300, 2, 0), bad, Device::kHost), "layout");
  // Builder arguments.
  EXPECT_ERROR_ARG(BlockSparseAttention::block_diagonal(300, 300, 100, false, c, Device::kHost), "segment");
  EXPECT_ERROR_ARG(BlockSparseAttention::local_window(300, 300, 0, true, c, Device::kHost), "window");
  EXPECT_ERROR_ARG(BlockSparseAttention::strided(300, 300, 0, 1, false, c, Device::kHost), "stride_blocks");
  EXPECT_ERROR_ARG(BlockSparseAttention::random(300, 300, 9, 1, false, c, Device::kHost), "blocks_per_row");
  BlockSparseConfig c64 = c;
  c64.head_dim = 64;
  if (!testing::has_gpu()) EXPECT_ERROR_ARG(make(c64, Device::kCuda), "device");
}

TEST(BlockSparse, MovedObjectKeepsWorking) {
  Problem pr;
  pr.name = "moved";
  pr.Sq = pr.Skv = 260;
  auto a = BlockSparseAttention::block_diagonal(260, 260, 128, true, config_for(pr), Device::kHost);
  BlockSparseAttention b(std::move(a));
  BlockSparseAttention c = BlockSparseAttention::strided(260, 260, 1, 0, false, config_for(pr), Device::kHost);
  c = std::move(b);
  check_pattern(pr, c, [&](int64_t i, int64_t j) { return i / 128 == j / 128 && j <= i; });
}

}  // namespace
}  // namespace distattn
