// Shared by test_ring_sparse_host.cc and test_ring_sparse_gpu.cc: the block-sparse ring's test patterns, their
// global layouts, an independently written element mask for each, and the step-work expectation derived from that
// mask (not from the library's schedule code).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"
#include "distattn/ring/shard.h"
#include "distattn/sparse/block_layout.h"

namespace distattn {
namespace testing {

constexpr int64_t kBlk = kLayoutBlock;  // 128

enum class Pattern {
  kDense,          // no layout: the dense ring with the band (causal / window) only
  kStrided,        // strided(stride 3, local 0): same residue mod 3 (Sparse-Transformer style)
  kLocalBand,      // |qb - kb| <= 1: a local block band (causal: only the previous shard is ever needed)
  kBlockDiagonal,  // qb == kb (contiguous: no rank needs another's K|V)
  kGlobal,         // global_tokens(1): q block 0 sees everything, everyone sees kv block 0
  kBigBird,        // bigbird(window 1, global 1, random 1)
  kRandom,         // random(2 per row)
  kWindowBand,     // sliding_window(W) band layout: its partial blocks mean "apply the window"
  kHoles,          // block diagonal without q block 1 (its rows see no key: O = 0, LSE = -inf)
};

inline const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::kDense:
      return "dense";
    case Pattern::kStrided:
      return "strided3";
    case Pattern::kLocalBand:
      return "localband1";
    case Pattern::kBlockDiagonal:
      return "blockdiag";
    case Pattern::kGlobal:
      return "global1";
    case Pattern::kBigBird:
      return "bigbird";
    case Pattern::kRandom:
      return "random2";
    case Pattern::kWindowBand:
      return "windowband";
    case Pattern::kHoles:
      return "holes";
  }
  return "?";
}

struct SparseCase {
  ring::ShardLayout layout = ring::ShardLayout::kContiguous;
  Pattern pattern = Pattern::kStrided;
  bool causal = false;
  int64_t window = 0;  // kDense / kWindowBand: the band's window (0: none)
  int64_t Hq = 2, Hkv = 2, D = 8;
  bool alibi = false;
  float scale = 0.f;
  std::string name() const {
    std::string n = std::string(ring::layout_name(layout)) + "/" + pattern_name(pattern) + (causal ? "/causal" : "");
    if (window > 0) n += "/w" + std::to_string(window);
    if (alibi) n += "/alibi";
    n += "/Hq" + std::to_string(Hq) + "Hkv" + std::to_string(Hkv) + "D" + std::to_string(D);
    return n;
  }
  Mask band() const {
    Mask m;
    m.causal = causal;
    m.window = window;
    return m;
  }
};

// The global layout (S x S, positions 0 .. S-1) of a case; null for kDense.
inline std::unique_ptr<BlockLayout> make_global_layout(const SparseCase& c, int64_t S) {
  const PositionMap all = PositionMap::contiguous(0, S);
  const CausalRestriction cr = c.causal ? CausalRestriction::on(all, all) : CausalRestriction::none();
  const int64_t nb = S / kBlk;
  std::unique_ptr<BlockLayout> g(new BlockLayout());
  switch (c.pattern) {
    case Pattern::kDense:
      return nullptr;
    case Pattern::kStrided:
      *g = BlockLayout::strided(S, S, 3, 0, cr);
      break;
    case Pattern::kLocalBand:
      *g = BlockLayout::strided(S, S, nb + 1, 1, cr);  // stride beyond the grid: only the local band remains
      break;
    case Pattern::kBlockDiagonal:
      *g = BlockLayout::strided(S, S, nb + 1, 0, cr);
      break;
    case Pattern::kGlobal:
      *g = BlockLayout::global_tokens(S, S, 1, cr);
      break;
    case Pattern::kBigBird:
      *g = BlockLayout::bigbird(S, S, 1, 1, 1, 1234, cr);
      break;
    case Pattern::kRandom:
      *g = BlockLayout::random(S, S, 2, 4321, cr);
      break;
    case Pattern::kWindowBand:
      *g = BlockLayout::sliding_window(S, S, all, all, c.window, c.causal);
      break;
    case Pattern::kHoles: {
      std::vector<std::pair<int64_t, int64_t>> list;
      for (int64_t b = 0; b < nb; ++b)
        if (b != 1) list.emplace_back(b, b);
      *g = BlockLayout::from_block_list(nb, nb, list);
      break;
    }
  }
  return g;
}

// Element visibility of global (query row i, key row j), written from each pattern's definition (not from the
// layout's CSR), except BigBird / random whose blocks are drawn at random: their block membership is read from
// the layout, the element rule (full block, or the causal band inside a partial one) is applied here.
inline bool element_visible(const SparseCase& c, const BlockLayout* g, int64_t i, int64_t j) {
  const int64_t qb = i / kBlk, kb = j / kBlk;
  const bool causal_ok = !c.causal || j <= i;
  auto mod = [](int64_t a, int64_t m) { return ((a % m) + m) % m; };
  switch (c.pattern) {
    case Pattern::kDense:
    case Pattern::kWindowBand: {
      if (!causal_ok) return false;
      return c.window <= 0 || std::llabs(i - j) < c.window;
    }
    case Pattern::kStrided:
      return mod(qb - kb, 3) == 0 && causal_ok;
    case Pattern::kLocalBand:
      return std::llabs(qb - kb) <= 1 && causal_ok;
    case Pattern::kBlockDiagonal:
      return qb == kb && causal_ok;
    case Pattern::kGlobal:
      return (qb == 0 || kb == 0) && causal_ok;
    case Pattern::kHoles:
      return qb == kb && qb != 1;
    case Pattern::kBigBird:
    case Pattern::kRandom:
      return g->visible_block(qb, kb) && (g->full(qb, kb) || causal_ok);
  }
  return false;
}

// vis[i * S + j] for the whole sequence.
inline std::vector<uint8_t> element_mask(const SparseCase& c, const BlockLayout* g, int64_t S) {
  std::vector<uint8_t> vis(static_cast<size_t>(S * S));
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = 0; j < S; ++j) vis[static_cast<size_t>(i * S + j)] = element_visible(c, g, i, j) ? 1 : 0;
  return vis;
}

// From the element mask alone: which rank computes at which ring step (rank r meets the K|V of rank k at step
// (r - k) mod P), the steps with work anywhere, the last of them, and each rank's number of computed steps.
struct ExpectedWork {
  int last = 0;
  std::vector<int> computed;  // [P]
  std::vector<int> useful;    // 0 and every step with work on some rank, ascending
  int exchanges() const { return static_cast<int>(useful.size()) - 1; }  // K|V moves of one pass
};

inline ExpectedWork expected_work(const std::vector<uint8_t>& vis, ring::ShardLayout layout, int64_t S, int P) {
  std::vector<int> owner(static_cast<size_t>(S));
  for (int r = 0; r < P; ++r) {
    const PositionMap m = ring::shard_positions(layout, S, P, r);
    for (int64_t i = 0; i < m.length(); ++i) owner[static_cast<size_t>(m.position(i))] = r;
  }
  std::vector<uint8_t> work(static_cast<size_t>(P * P), 0);
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = 0; j < S; ++j) {
      if (!vis[static_cast<size_t>(i * S + j)]) continue;
      const int r = owner[static_cast<size_t>(i)], k = owner[static_cast<size_t>(j)];
      work[static_cast<size_t>(r * P + ((r - k) % P + P) % P)] = 1;
    }
  ExpectedWork e;
  e.computed.assign(static_cast<size_t>(P), 0);
  e.useful.push_back(0);
  for (int s = 1; s < P; ++s) {
    bool any = false;
    for (int r = 0; r < P; ++r) any = any || work[static_cast<size_t>(r * P + s)] != 0;
    if (any) e.useful.push_back(s);
  }
  for (int r = 0; r < P; ++r)
    for (int s = 0; s < P; ++s)
      if (work[static_cast<size_t>(r * P + s)]) {
        e.last = std::max(e.last, s);
        ++e.computed[static_cast<size_t>(r)];
      }
  return e;
}

// The rows of `g` for a list of global q blocks (in that order) x all kv blocks: a layout for a single-process
// reference computing only those q rows against the full K, V (its q rows numbered as listed).
inline BlockLayout rows_of_layout(const BlockLayout& g, const std::vector<int64_t>& q_blocks) {
  const int64_t nkv = g.num_kv_blocks();
  std::vector<uint8_t> m(static_cast<size_t>(static_cast<int64_t>(q_blocks.size()) * nkv), BlockLayout::kAbsent);
  for (size_t i = 0; i < q_blocks.size(); ++i)
    for (int64_t kb = 0; kb < nkv; ++kb) {
      if (!g.visible_block(q_blocks[i], kb)) continue;
      m[i * static_cast<size_t>(nkv) + static_cast<size_t>(kb)] =
          g.partial(q_blocks[i], kb) ? BlockLayout::kPartial : BlockLayout::kFull;
    }
  return BlockLayout::from_block_mask(static_cast<int64_t>(q_blocks.size()), nkv, m, g.band());
}

// The global 128-row blocks of a rank's shard, in local order.
inline std::vector<int64_t> shard_blocks(ring::ShardLayout layout, int64_t S, int P, int r) {
  const PositionMap m = ring::shard_positions(layout, S, P, r);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < m.length(); i += kBlk) out.push_back(m.position(i) / kBlk);
  return out;
}

}  // namespace testing
}  // namespace distattn
