// CPU emulation (not built by CMake, not a test) of the Hopper forward kernel's ALiBi underflow cutoff
// (flash_fwd_hopper_plan.h, used here as is): two modes.
//
// emu bits [S] [stride] [causal 0/1] [window] [adversarial 0/1] [heads] [seed] [shrink]
//   One (batch, kv head) problem with q_pos == kv_pos (one chunk from position 7): the kernel's per-warp arithmetic
//   (wgmma accumulator layout: lane l holds rows l/4 and l/4 + 8 of its warp's 16, columns 8c + 2(l%4) + e; the ALiBi
//   row_off / kcol forms and D0; the row-range mask; the lazy online softmax with the quad max after row_off; exp2 with
//   results below 2^-126 flushed to +0 as ex2.approx.ftz does; P rounded to bf16; fp32 O and row sums) runs the
//   cutoff's plan twice per q tile: skipping (rows from alibi_cutoff_rows) and not (rows = -1, the same order). It
//   reports whether O and LSE agree bit for bit, the tiles skipped, and the largest exp2 argument (log2 units) any
//   skipped element of a row < S had in the reference walk (must be < -126 for an exact 0; the bound aims at -160).
//   adversarial: q rows all +a, k rows alternating +a / -a with |a|^2 = 170 (the own key of every other row scores
//   -|q||k|, far keys +|q||k|: the Cauchy-Schwarz worst case the bound is built on), instead of the bench's uniform
//   values (variance 1, bf16). shrink (default 1) multiplies the distance bound, to see the check fail: `bits 700 1 1 0
//   0 3 1 0.3` reports FAILED (skipped elements with exp2 arguments up to -69: nonzero, though too small to move a bit
//   here), `bits 700 1 1 0 0 2 1 0.05` also 120 rows whose O / LSE differ.
// emu model
//   The fraction of kv tiles the cutoff leaves for distattn_bench's inputs (uniform, variance 1, D = 128, H = 32,
//   standard slopes 2^(-(h+1)/4)), causal and not, S = 512 .. 64K, with the pre-pass's bytes (one read of Q and K).
//
// Build: g++ -O2 -std=c++17 -I../.. -I/usr/local/cuda/include alibi_cutoff_emu.cc -o alibi_cutoff_emu
//   (from sparse/src/hopper/tools; the plan header includes flash_fwd_hopper_params.h, which needs cuda.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "hopper/flash_fwd_hopper_plan.h"

using distattn::hopper::alibi_cutoff_rows;
using distattn::hopper::chunk_rows;
using distattn::hopper::plan_segment_tile;
using distattn::hopper::write_cutoff_plan;

namespace {

constexpr int kD = 128;
constexpr int kTile = 128;
constexpr int64_t kInf = int64_t{1} << 40;

float bf16_round(float x) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

float ex2_ftz(float x) {  // ex2.approx.ftz.f32: results below 2^-126 flushed to +0
  const float y = std::exp2(x);
  return y < 0x1p-126f ? 0.f : y;
}

struct Problem {
  int S = 0;
  int64_t start = 7, stride = 1;
  int64_t band_lo = -kInf, band_hi = kInf;
  float slope = 0.f, scale = 0.f, scale_log2 = 0.f;
  std::vector<float> q, k, v;  // [S][kD], bf16 values
  int64_t pos(int row) const { return start + static_cast<int64_t>(row) * stride; }
};

struct TileResult {
  std::vector<float> o;    // [128][kD]
  std::vector<float> lse;  // [128]
  std::vector<int> walk;
};

// One q tile through the kernel's consumer arithmetic along the cutoff plan (rows: alibi_cutoff_rows or -1).
// skipped_max: if non-null, the tiles NOT in `skip_set` update it with the largest exp2 argument of rows < S.
TileResult run_tile(const Problem& pb, int m, int rows, const std::vector<int>* skip_set, float* skipped_max) {
  const int S = pb.S, m0 = m * kTile, m_last = std::min(m0 + kTile, S) - 1;
  const int64_t q_min = pb.pos(m0), q_max = pb.pos(m_last), q_step = pb.stride;
  int lo, hi;
  chunk_rows(q_min, q_max, pb.band_lo, pb.band_hi, pb.start, pb.stride, 0, S, &lo, &hi);
  int plan[32] = {};
  write_cutoff_plan(m, lo, hi, rows, plan);
  TileResult res;
  for (int it = 0; it < plan[0]; ++it) res.walk.push_back(plan_segment_tile(plan, it));
  // Per row of the tile (phantom rows past S included, as in the kernel): visible kv rows and D0.
  int b_lo[kTile], b_hi[kTile];
  int64_t dref[kTile];
  for (int row = 0; row < kTile; ++row) {
    const int64_t pq = q_min + row * q_step;
    chunk_rows(pq, pq, pb.band_lo, pb.band_hi, pb.start, pb.stride, 0, S, &b_lo[row], &b_hi[row]);
    dref[row] = 0;
    if (b_lo[row] <= b_hi[row]) {
      const int64_t x = pq - pb.start;
      const int64_t jf = x < 0 ? -1 : x / pb.stride;
      const int64_t ja = std::min<int64_t>(std::max<int64_t>(jf, b_lo[row]), b_hi[row]);
      const int64_t jb = std::min<int64_t>(std::max<int64_t>(jf + 1, b_lo[row]), b_hi[row]);
      dref[row] =
          std::min(std::llabs(pq - pb.pos(static_cast<int>(ja))), std::llabs(pq - pb.pos(static_cast<int>(jb))));
    }
  }
  const float coef = -pb.slope / pb.scale, sl2 = pb.scale_log2;
  res.o.assign(static_cast<size_t>(kTile) * kD, 0.f);
  res.lse.assign(kTile, 0.f);
  for (int w = 0; w < 8; ++w) {  // 2 consumers x 4 warps of 16 rows
    float rmax[32][2], rsum[32][2];
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 2; ++r) rmax[l][r] = -INFINITY, rsum[l][r] = 0.f;
    std::vector<float> o(16 * kD, 0.f);  // the warp's 16 rows
    for (int n : res.walk) {
      const int n0 = n * kTile, k_last = std::min(n0 + kTile, S) - 1;
      const int64_t k_min = pb.pos(n0), k_max = pb.pos(k_last), k_step = pb.stride;
      const bool full = q_min - k_max >= pb.band_lo && q_max - k_min <= pb.band_hi;
      const bool tracked =
          skip_set != nullptr && std::find(skip_set->begin(), skip_set->end(), n) == skip_set->end();  // skipped there
      float sc[32][64], roff[32][2];
      for (int l = 0; l < 32; ++l) {
        const int row0 = w * 16 + l / 4, cb = 2 * (l % 4);
        for (int i = 0; i < 64; ++i) {
          const int row = row0 + 8 * ((i / 2) % 2), col = n0 + cb + 8 * (i / 4) + (i % 2);
          float s = 0.f;  // TMA zero fill: q rows past S and k rows past S are 0
          if (m0 + row < S && col < S)
            for (int d = 0; d < kD; ++d)
              s = std::fma(pb.q[static_cast<size_t>(m0 + row) * kD + d], pb.k[static_cast<size_t>(col) * kD + d], s);
          sc[l][i] = s;
        }
        const int64_t d_lo = q_min - k_max, d_hi = q_max - k_min;
        const int sigma = d_lo >= 0 ? 1 : (d_hi <= 0 ? -1 : 0);
        const int64_t k_col = k_min + cb * k_step;
        if (sigma != 0) {
          const float kcol = -coef * static_cast<float>(sigma) * static_cast<float>(k_step);
          for (int r = 0; r < 2; ++r) {
            const int row = row0 + 8 * r;
            const int64_t e_row = sigma * (q_min + row * q_step - k_col) - dref[row];
            roff[l][r] = coef * static_cast<float>(e_row);
          }
          for (int i = 0; i < 64; ++i) sc[l][i] = std::fma(static_cast<float>(8 * (i / 4) + (i % 2)), kcol, sc[l][i]);
        } else {
          for (int r = 0; r < 2; ++r) {
            const int row = row0 + 8 * r;
            const float d_row = static_cast<float>(q_min + row * q_step - k_col);
            const float d0 = static_cast<float>(std::min<int64_t>(dref[row], 1 << 24));
            roff[l][r] = 0.f;
            for (int i = 0; i < 64; ++i) {
              if ((i / 2) % 2 != r) continue;
              const float d = std::fma(-static_cast<float>(8 * (i / 4) + (i % 2)), static_cast<float>(k_step), d_row);
              sc[l][i] = std::fma(std::fabs(d) - d0, coef, sc[l][i]);
            }
          }
        }
        for (int r = 0; r < 2; ++r) {  // band mask on partial tiles, Skv bound on the tile crossing it
          const int row = row0 + 8 * r;
          const int b0 = !full ? b_lo[row] : INT32_MIN, b1 = !full ? b_hi[row] : S - 1;
          if (full && n0 + kTile <= S) continue;
          for (int i = 0; i < 64; ++i) {
            if ((i / 2) % 2 != r) continue;
            const int col = n0 + cb + 8 * (i / 4) + (i % 2);
            if (col < b0 || col > b1) sc[l][i] = -INFINITY;
          }
        }
      }
      // softmax_tile<true> with lazy rescale
      float tmax[32][2];
      for (int l = 0; l < 32; ++l)
        for (int r = 0; r < 2; ++r) {
          float mx = -INFINITY;
          for (int i = 0; i < 64; ++i)
            if ((i / 2) % 2 == r) mx = std::max(mx, sc[l][i]);
          tmax[l][r] = mx + roff[l][r];
        }
      for (int l = 0; l < 32; l += 4)
        for (int r = 0; r < 2; ++r) {
          // shfl_xor 1 then 2
          const float a = std::max(tmax[l][r], tmax[l + 1][r]), b = std::max(tmax[l + 2][r], tmax[l + 3][r]);
          for (int j = 0; j < 4; ++j) tmax[l + j][r] = std::max(a, b);
        }
      bool grow = false;
      for (int l = 0; l < 32; ++l)
        for (int r = 0; r < 2; ++r) grow = grow || tmax[l][r] * sl2 > rmax[l][r] * sl2 + 8.f;
      float p[32][64];
      for (int l = 0; l < 32; ++l) {
        float bias[2];
        for (int r = 0; r < 2; ++r) {
          float smax;
          if (grow) {
            const float nm = std::max(rmax[l][r], tmax[l][r]);
            smax = nm == -INFINITY ? 0.f : nm * sl2;
            const float corr = ex2_ftz(rmax[l][r] * sl2 - smax);
            rmax[l][r] = nm;
            rsum[l][r] *= corr;
            if (l % 4 == 0) {  // O of the row, once per quad (columns are split over the quad in the kernel)
              const int row = w * 16 + l / 4 + 8 * r;
              for (int d = 0; d < kD; ++d) o[static_cast<size_t>(row - w * 16) * kD + d] *= corr;
            }
          } else {
            smax = rmax[l][r] == -INFINITY ? 0.f : rmax[l][r] * sl2;
          }
          bias[r] = std::fma(roff[l][r], sl2, -smax);
        }
        for (int i = 0; i < 64; ++i) {
          const int r = (i / 2) % 2;
          const float arg = std::fma(sc[l][i], sl2, bias[r]);
          const int row = w * 16 + l / 4 + 8 * r;
          if (tracked && skipped_max != nullptr && m0 + row < S && arg > *skipped_max) *skipped_max = arg;
          p[l][i] = ex2_ftz(arg);
          rsum[l][r] += p[l][i];
        }
      }
      // O += P V (P in bf16), per row over the tile's columns in ascending order
      for (int rr = 0; rr < 16; ++rr) {
        const int l_row = (rr % 8) * 4, r = rr / 8;
        float acc[kD];
        for (int d = 0; d < kD; ++d) acc[d] = 0.f;
        for (int c = 0; c < kTile; ++c) {
          const int lane = l_row + (c % 8) / 2, i = 4 * (c / 8) + 2 * r + (c % 2);
          const float pv = bf16_round(p[lane][i]);
          const int col = n0 + c;
          for (int d = 0; d < kD; ++d)
            acc[d] = std::fma(pv, col < S ? pb.v[static_cast<size_t>(col) * kD + d] : 0.f, acc[d]);
        }
        for (int d = 0; d < kD; ++d) o[static_cast<size_t>(rr) * kD + d] += acc[d];
      }
    }
    for (int rr = 0; rr < 16; ++rr) {
      const int l0 = (rr % 8) * 4, r = rr / 8;
      const float l = (rsum[l0][r] + rsum[l0 + 1][r]) + (rsum[l0 + 2][r] + rsum[l0 + 3][r]);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int row = w * 16 + rr;
      for (int d = 0; d < kD; ++d) res.o[static_cast<size_t>(row) * kD + d] = o[static_cast<size_t>(rr) * kD + d] * inv;
      float lse = l > 0.f ? 0.6931471805599453f * (rmax[l0][r] * sl2 + std::log2(l)) : -INFINITY;
      if (l > 0.f)
        lse = static_cast<float>(static_cast<double>(lse) -
                                 static_cast<double>(pb.slope) * static_cast<double>(dref[row]));
      res.lse[static_cast<size_t>(row)] = lse;
    }
  }
  return res;
}

float q_tile_norm_sq(const Problem& pb, int m) {
  float mx = 0.f;
  for (int r = m * kTile; r < std::min((m + 1) * kTile, pb.S); ++r) {
    float n = 0.f;
    for (int d = 0; d < kD; ++d)
      n = std::fma(pb.q[static_cast<size_t>(r) * kD + d], pb.q[static_cast<size_t>(r) * kD + d], n);
    mx = std::max(mx, n);
  }
  return mx;
}

int run_bits(int argc, char** argv) {
  const int S = argc > 2 ? std::atoi(argv[2]) : 1500;
  const int stride = argc > 3 ? std::atoi(argv[3]) : 1;
  const bool causal = argc > 4 ? std::atoi(argv[4]) != 0 : true;
  const int64_t window = argc > 5 ? std::atoll(argv[5]) : 0;
  const bool adversarial = argc > 6 ? std::atoi(argv[6]) != 0 : false;
  const int heads = argc > 7 ? std::atoi(argv[7]) : 8;
  const uint64_t seed = argc > 8 ? std::strtoull(argv[8], nullptr, 10) : 1;
  // Distance bound times this (< 1: an unsafe cut, to see the check fail).
  const double shrink = argc > 9 ? std::atof(argv[9]) : 1.0;
  Problem pb;
  pb.S = S;
  pb.stride = stride;
  if (causal) pb.band_lo = 0;
  if (window > 0) {
    pb.band_hi = window - 1;
    if (!causal) pb.band_lo = -(window - 1);
  }
  pb.scale = 1.f / std::sqrt(static_cast<float>(kD));
  pb.scale_log2 = static_cast<float>(static_cast<double>(pb.scale) * 1.4426950408889634);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uni(-1.7320508f, 1.7320508f);
  pb.q.resize(static_cast<size_t>(S) * kD);
  pb.k.resize(pb.q.size());
  pb.v.resize(pb.q.size());
  std::vector<float> a(kD);
  for (int d = 0; d < kD; ++d) a[d] = bf16_round(uni(rng) * 1.15f);  // |a|^2 ~ 1.32 D ~ 170
  for (size_t i = 0; i < pb.q.size(); ++i) {
    const int row = static_cast<int>(i / kD), d = static_cast<int>(i % kD);
    pb.q[i] = adversarial ? a[d] : bf16_round(uni(rng));
    pb.k[i] = adversarial ? (row % 2 == 0 ? a[d] : -a[d]) : bf16_round(uni(rng));
    pb.v[i] = bf16_round(uni(rng));
  }
  float kn = 0.f;
  for (int r = 0; r < S; ++r) {
    float n = 0.f;
    for (int d = 0; d < kD; ++d)
      n = std::fma(pb.k[static_cast<size_t>(r) * kD + d], pb.k[static_cast<size_t>(r) * kD + d], n);
    kn = std::max(kn, n);
  }
  const int M = (S + kTile - 1) / kTile;
  int bad = 0;
  printf("S %d stride %d %s window %lld %s inputs, seed %llu, max |k|^2 %.1f\n", S, stride,
         causal ? "causal" : "non-causal", static_cast<long long>(window), adversarial ? "adversarial" : "uniform",
         static_cast<unsigned long long>(seed), kn);
  for (int h = 0; h < heads; ++h) {
    // The standard rule for `heads` heads, times 4 (steeper slopes: more to cut in a short emulation).
    pb.slope = 4.f * static_cast<float>(std::exp2(-8.0 * (h + 1) / heads));
    int64_t visited = 0, total = 0, bits_differ = 0;
    float worst = -INFINITY;
    for (int m = 0; m < M; ++m) {
      int rows = alibi_cutoff_rows(pb.scale_log2, pb.stride, q_tile_norm_sq(pb, m), kn, pb.slope);
      if (rows > 0) rows = std::max(1, static_cast<int>(rows * shrink));
      const TileResult cut = run_tile(pb, m, rows, nullptr, nullptr);
      const TileResult ref = run_tile(pb, m, -1, &cut.walk, &worst);
      visited += static_cast<int64_t>(cut.walk.size());
      total += static_cast<int64_t>(ref.walk.size());
      for (int row = 0; row < kTile && m * kTile + row < S; ++row) {
        bits_differ += std::memcmp(&cut.lse[row], &ref.lse[row], 4) != 0;
        bits_differ +=
            std::memcmp(&cut.o[static_cast<size_t>(row) * kD], &ref.o[static_cast<size_t>(row) * kD], 4 * kD) != 0;
      }
    }
    printf(
        "  h %2d slope %.5f: tiles %lld of %lld visited (%.1f%%), rows differing %lld, largest exp2 argument of a "
        "skipped element %.1f\n",
        h, pb.slope, static_cast<long long>(visited), static_cast<long long>(total), 100.0 * visited / total,
        static_cast<long long>(bits_differ), worst);
    if (bits_differ != 0 || worst >= -126.f) ++bad;
  }
  printf("%s\n", bad ? "FAILED" : "bit-identical, every skipped element an exact 0");
  return bad ? 1 : 0;
}

int run_model() {
  // Norms of distattn_bench's rows: 128 values uniform in [-sqrt 3, sqrt 3] (variance 1), rounded to bf16.
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> uni(-1.7320508f, 1.7320508f);
  auto row_norm = [&] {
    float n = 0.f;
    for (int d = 0; d < kD; ++d) {
      const float x = bf16_round(uni(rng));
      n = std::fma(x, x, n);
    }
    return n;
  };
  std::vector<float> tile_max(4000);  // max over a 128-row q tile
  for (float& t : tile_max) {
    t = 0.f;
    for (int r = 0; r < kTile; ++r) t = std::max(t, row_norm());
  }
  const int H = 32;
  const float scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(128.0));
  printf("distattn_bench inputs, H %d, D 128, standard slopes: kv tiles visited with the cutoff / without\n", H);
  printf("%8s %10s %10s %12s %12s %14s\n", "S", "causal", "non-causal", "max|k|^2", "rows h0/h15", "pre-pass MB");
  for (int S = 512; S <= 65536; S *= 2) {
    float kn = 0.f;
    for (int r = 0; r < S; ++r) kn = std::max(kn, row_norm());
    const int M = S / kTile;
    double vis[2] = {0, 0}, tot[2] = {0, 0};
    int rows0 = 0, rows15 = 0;
    for (int h = 0; h < H; ++h) {
      const float slope = static_cast<float>(std::exp2(-8.0 * (h + 1) / H));
      for (int m = 0; m < M; ++m) {
        const int rows =
            alibi_cutoff_rows(scale_log2, 1, tile_max[static_cast<size_t>(rng() % tile_max.size())], kn, slope);
        if (m == M / 2 && h == 0) rows0 = rows;
        if (m == M / 2 && h == 15) rows15 = rows;
        for (int causal = 0; causal < 2; ++causal) {
          const int lo = 0, hi = causal ? std::min(m * kTile + kTile, S) - 1 : S - 1;
          int plan[32] = {}, full[32] = {};
          write_cutoff_plan(m, lo, hi, rows, plan);
          write_cutoff_plan(m, lo, hi, -1, full);
          vis[causal] += plan[0];
          tot[causal] += full[0];
        }
      }
    }
    printf("%8d %9.1f%% %9.1f%% %12.1f %6d/%-6d %14.1f\n", S, 100 * vis[1] / tot[1], 100 * vis[0] / tot[0], kn, rows0,
           rows15, 2.0 * S * H * kD * 2 / 1e6);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "bits";
  if (mode == "model") return run_model();
  return run_bits(argc, argv);
}
