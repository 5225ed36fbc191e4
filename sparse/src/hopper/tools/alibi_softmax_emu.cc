// CPU emulation (not built by CMake, not a test) of the Hopper forward kernel's ALiBi + mask + lazy online softmax,
// warp by warp with the wgmma accumulator layout (lane l: rows l/4 and l/4 + 8 of its warp's 16, columns
// 8 c + 2 (l % 4) + e), against an fp64 softmax of the same scores. Written to find the 16:48 H100 failure: with the
// per-lane row_off added after the quad max reduction (the bug) it reproduces the device's LSE errors (1.98 on the
// causal shifted case, 4.0 on the window case); with the fix every case is within ~2e-5.
// Build: g++ -O2 -std=c++17 alibi_softmax_emu.cc -o emu; run: emu <case 0..4>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>
struct Chunk {
  int64_t start, stride, len;
};
struct Map {
  std::vector<Chunk> c;
  int64_t length() const {
    int64_t n = 0;
    for (auto& x : c) n += x.len;
    return n;
  }
  int64_t pos(int64_t r) const {
    for (auto& x : c) {
      if (r < x.len) return x.start + r * x.stride;
      r -= x.len;
    }
    return -1;
  }
  int rowc(int k) const {
    int64_t n = 0;
    for (int i = 0; i < k; ++i) n += c[i].len;
    return (int)n;
  }
};
static double hs(uint64_t a) {
  a = a * 0x9E3779B97F4A7C15ull;
  a ^= a >> 31;
  a *= 0xBF58476D1CE4E5B9ull;
  a ^= a >> 29;
  return ((a >> 11) * (1.0 / 9007199254740992.0));
}
static float sval(int64_t i, int64_t j) {
  double u1 = hs(i * 1000003 + j + 1), u2 = hs(i * 7919 + j * 31 + 5);
  return (float)(11.0 * std::sqrt(-2 * std::log(u1 + 1e-300)) * std::cos(6.283185307 * u2));
}
static float vval(int64_t j) { return (float)(hs(j * 77 + 3) * 2 - 1); }
void chunk_rows(int64_t qlo, int64_t qhi, int64_t blo, int64_t bhi, int64_t start, int64_t stride, int rowc, int len,
                int* lo, int* hi) {
  int64_t lp = qlo - bhi - start, hp = qhi - blo - start;
  int64_t l = lp <= 0 ? 0 : (stride == 1 ? lp : (lp + stride - 1) / stride);
  int64_t h = hp < 0 ? -1 : (stride == 1 ? hp : hp / stride);
  *lo = rowc + (int)std::min(l, (int64_t)len);
  *hi = rowc + (int)std::min(h, (int64_t)len - 1);
}
int main(int argc, char** argv) {
  int which = argc > 1 ? atoi(argv[1]) : 0;
  Map q, kv;
  int64_t blo, bhi;
  const int64_t INF = int64_t(1) << 40;
  if (which == 0) {
    q.c = {{600, 1, 300}};
    kv.c = {{200, 1, 500}};
    blo = 0;
    bhi = INF;
  }  // causal shifted
  else if (which == 1) {
    q.c = {{100, 1, 400}};
    kv.c = {{0, 1, 333}};
    blo = -150;
    bhi = 150;
  }  // window
  else if (which == 2) {
    int64_t b = (1 << 21) + 3;
    q.c = {{b + 384, 1, 384}, {b + 768, 1, 384}};
    kv.c = {{b, 1, 384}, {b + 1152, 1, 384}};
    blo = -INF;
    bhi = INF;
  } else if (which == 3) {
    q.c = {{1, 2, 500}};
    kv.c = {{0, 3, 400}};
    blo = 0;
    bhi = INF;
  } else {
    q.c = {{int64_t(3) << 20, 1, 256}};
    kv.c = {{100, 1, 384}};
    blo = -INF;
    bhi = INF;
  }
  const int Sq = q.length(), Skv = kv.length();
  const float scale = 1.f / std::sqrt(128.f), scale_log2 = scale * 1.4426950408889634f;
  double worst_lse = 0, worst_o = 0;
  for (float slope : {1.f, 0.25f, 1.f / 64, 1.f / 2048}) {
    const float coef = -slope / scale;
    for (int mb = 0; mb * 128 < Sq; ++mb) {
      int m0 = mb * 128, mlast = std::min(m0 + 128, Sq) - 1;
      // affine of q tile
      int qc = 0;
      for (int c = 1; c < (int)q.c.size(); ++c)
        if (m0 >= q.rowc(c)) qc = c;
      int64_t qmin = q.c[qc].start + (m0 - q.rowc(qc)) * q.c[qc].stride, qstep = q.c[qc].stride,
              qmax = qmin + (mlast - m0) * qstep;
      std::vector<int> tiles;  // segments, walked last to first
      for (int c = 0; c < (int)kv.c.size(); ++c) {
        int lo, hi;
        chunk_rows(qmin, qmax, blo, bhi, kv.c[c].start, kv.c[c].stride, kv.rowc(c), kv.c[c].len, &lo, &hi);
        if (lo <= hi)
          for (int t = lo / 128; t <= hi / 128; ++t) tiles.push_back(t);
      }
      std::reverse(tiles.begin(), tiles.end());
      // bounds and dref per tile row
      int nchunk = kv.c.size();
      std::vector<int> blo_t(nchunk * 128), bhi_t(nchunk * 128);
      std::vector<int64_t> dref(128);
      for (int row = 0; row < 128; ++row) {
        int64_t pq = qmin + row * qstep;
        dref[row] = INT64_MAX;
        for (int c = 0; c < nchunk; ++c) {
          int lo, hi;
          chunk_rows(pq, pq, blo, bhi, kv.c[c].start, kv.c[c].stride, kv.rowc(c), kv.c[c].len, &lo, &hi);
          blo_t[c * 128 + row] = lo;
          bhi_t[c * 128 + row] = hi;
          if (lo <= hi) {
            int64_t st = kv.c[c].start, sd = kv.c[c].stride, x = pq - st;
            int64_t jf = x < 0 ? -1 : x / sd;
            int64_t lol = lo - kv.rowc(c), hil = hi - kv.rowc(c);
            int64_t ja = std::min(std::max(jf, lol), hil), jb = std::min(std::max(jf + 1, lol), hil);
            int64_t da = pq - (st + ja * sd), db = pq - (st + jb * sd);
            int64_t d = std::min(std::llabs(da), std::llabs(db));
            if (d < dref[row]) dref[row] = d;
          }
        }
        if (dref[row] == INT64_MAX) dref[row] = 0;
      }
      for (int w = 0; w < 8; ++w) {  // 8 warps (2 consumers x 4)
        float rmax[32][2], rsum[32][2], o[32][2];
        for (int l = 0; l < 32; ++l)
          for (int r = 0; r < 2; ++r) {
            rmax[l][r] = -INFINITY;
            rsum[l][r] = 0;
            o[l][r] = 0;
          }
        for (int n : tiles) {
          int n0 = n * 128, klast = std::min(n0 + 128, Skv) - 1;
          int kc = 0;
          for (int c = 1; c < nchunk; ++c)
            if (n0 >= kv.rowc(c)) kc = c;
          int64_t kbase = kv.c[kc].start + (n0 - kv.rowc(kc)) * kv.c[kc].stride, kstep = kv.c[kc].stride, kmin = kbase,
                  kmax = kbase + (klast - n0) * kstep;
          // classify (band covers the whole tile?)
          bool full = (qmin - kmax >= blo) && (qmax - kmin <= bhi);
          bool band_mask = !full;
          float sc[32][64], roff[32][2];
          for (int l = 0; l < 32; ++l) {
            int row0 = w * 16 + l / 4, cb = 2 * (l % 4);
            for (int i = 0; i < 64; ++i) {
              int row = row0 + 8 * ((i / 2) % 2), col = n0 + cb + 8 * (i / 4) + (i % 2);
              sc[l][i] = (m0 + row < Sq && col < Skv) ? sval(m0 + row, col) : 0.f;
            }
            int64_t dlo = qmin - kmax, dhi = qmax - kmin;
            int sg = dlo >= 0 ? 1 : (dhi <= 0 ? -1 : 0);
            int64_t kcol_pos = kbase + cb * kstep;
            if (sg) {
              float kcol = -coef * (float)sg * (float)kstep;
              for (int r = 0; r < 2; ++r) {
                int row = row0 + 8 * r;
                int64_t pq = qmin + row * qstep;
                int64_t e = sg * (pq - kcol_pos) - dref[row];
                roff[l][r] = coef * (float)e;
              }
              for (int i = 0; i < 64; ++i) sc[l][i] = std::fma((float)(8 * (i / 4) + (i % 2)), kcol, sc[l][i]);
            } else {
              for (int r = 0; r < 2; ++r) {
                int row = row0 + 8 * r;
                int64_t pq = qmin + row * qstep;
                float drow = (float)(pq - kcol_pos);
                float d0 = (float)std::min<int64_t>(dref[row], 1 << 24);
                roff[l][r] = 0;
                for (int i = 0; i < 64; ++i) {
                  if ((i / 2) % 2 != r) continue;
                  float d = std::fma(-(float)(8 * (i / 4) + (i % 2)), (float)kstep, drow);
                  sc[l][i] = std::fma(std::fabs(d) - d0, coef, sc[l][i]);
                }
              }
            }
            for (int r = 0; r < 2; ++r) {
              int row = row0 + 8 * r;
              int lo = band_mask ? blo_t[kc * 128 + row] : INT32_MIN;
              int hi = band_mask ? bhi_t[kc * 128 + row] : Skv - 1;
              for (int i = 0; i < 64; ++i) {
                if ((i / 2) % 2 != r) continue;
                int col = n0 + cb + 8 * (i / 4) + (i % 2);
                if (col < lo || col > hi) sc[l][i] = -INFINITY;
              }
            }
          }
          // softmax (fixed: row_off before the quad reduction)
          float tmax[32][2];
          for (int l = 0; l < 32; ++l)
            for (int r = 0; r < 2; ++r) {
              float m = -INFINITY;
              for (int i = 0; i < 64; ++i)
                if ((i / 2) % 2 == r) m = std::max(m, sc[l][i]);
              tmax[l][r] = m + roff[l][r];
            }
          for (int l = 0; l < 32; l += 4)
            for (int r = 0; r < 2; ++r) {
              float m = std::max(std::max(tmax[l][r], tmax[l + 1][r]), std::max(tmax[l + 2][r], tmax[l + 3][r]));
              for (int k = 0; k < 4; ++k) tmax[l + k][r] = m;
            }
          bool grow = false;
          for (int l = 0; l < 32; ++l)
            for (int r = 0; r < 2; ++r) grow = grow || tmax[l][r] * scale_log2 > rmax[l][r] * scale_log2 + 8.f;
          for (int l = 0; l < 32; ++l) {
            int cb = 2 * (l % 4);
            int n0c = n0 + cb;
            for (int r = 0; r < 2; ++r) {
              float smax;
              float corr = 1;
              if (grow) {
                float nm = std::max(rmax[l][r], tmax[l][r]);
                smax = nm == -INFINITY ? 0.f : nm * scale_log2;
                corr = std::exp2(rmax[l][r] * scale_log2 - smax);
                rmax[l][r] = nm;
                rsum[l][r] *= corr;
                o[l][r] *= corr;
              } else
                smax = rmax[l][r] == -INFINITY ? 0.f : rmax[l][r] * scale_log2;
              float bias = std::fma(roff[l][r], scale_log2, -smax);
              for (int i = 0; i < 64; ++i) {
                if ((i / 2) % 2 != r) continue;
                float p = std::exp2(std::fma(sc[l][i], scale_log2, bias));
                rsum[l][r] += p;
                int col = n0c + 8 * (i / 4) + (i % 2);
                if (col < Skv) o[l][r] += p * vval(col);
              }
            }
          }
        }
        // epilogue + compare with fp64
        for (int l = 0; l < 32; l += 4)
          for (int r = 0; r < 2; ++r) {
            int row = w * 16 + l / 4 + 8 * r;
            if (m0 + row >= Sq) continue;
            double L = 0, O = 0;
            for (int k = 0; k < 4; ++k) {
              L += rsum[l + k][r];
              O += o[l + k][r];
            }
            double lse = L > 0
                             ? 0.6931471805599453 * (rmax[l][r] * scale_log2 + std::log2(L)) - (double)slope * dref[row]
                             : -INFINITY;
            double ob = L > 0 ? O / L : 0;
            // reference
            int64_t pq = q.pos(m0 + row);
            double mx = -INFINITY;
            std::vector<double> t(Skv, -INFINITY);
            for (int j = 0; j < Skv; ++j) {
              int64_t pk = kv.pos(j), d = pq - pk;
              if (d < blo || d > bhi) continue;
              t[j] = (double)sval(m0 + row, j) * scale - slope * std::fabs((double)d);
              mx = std::max(mx, t[j]);
            }
            double s = 0, so = 0;
            for (int j = 0; j < Skv; ++j)
              if (t[j] > -INFINITY) {
                double e = std::exp(t[j] - mx);
                s += e;
                so += e * vval(j);
              }
            double lref = s > 0 ? mx + std::log(s) : -INFINITY, oref = s > 0 ? so / s : 0;
            if (std::isinf(lref) != std::isinf(lse)) {
              printf("inf mismatch row %d\n", m0 + row);
              continue;
            }
            if (!std::isinf(lref)) {
              worst_lse = std::max(worst_lse, std::fabs(lse - lref));
              worst_o = std::max(worst_o, std::fabs(ob - oref));
            }
          }
      }
    }
  }
  printf("case %d: max |LSE - ref| = %.3g, max |O - ref| = %.3g\n", which, worst_lse, worst_o);
}
