// CUDA helpers of the distributed dilated attention (distributed_dilated.cc). Internal (not installed).
// All enqueue on `stream`, validate nothing (the caller validated its inputs) and check the launch.
// Index math: dilated_index.h ("distributed patterns"). One class s of a pattern of rate r on this rank:
//   kept local rows l = phase + r*i, i < count (<= n_max); in a pattern's packed K|V / dK|dV buffer every row
//   holds every class ([n_max][class][2, B, KH, D]), so class s's element (i, c, b, t, d) is at
//   i*row_elems + ((c*B + b)*KH + t)*D + d from the class's base (the buffer + the class's offset in a row);
//   c = 0: K, 1: V; entry t holds kv head dist_kv_head(t, s, r, gqa).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/tensor.h"

namespace distattn {
namespace dilated_detail {

// Which rows and kv heads one rank contributes for one class.
struct KeptClass {
  int64_t s = 0;          // head-offset class
  int64_t r = 1;          // rate
  int64_t gqa = 1;        // Hq / Hkv
  int64_t phase = 0;      // first kept local row
  int64_t count = 0;      // kept local rows (<= n_max)
  int64_t n_max = 0;      // rows per rank in the packed layout
  int64_t KH = 0;         // kv-head entries
  int64_t row_elems = 0;  // elements between consecutive packed rows (all classes of the pattern)
};

// The class's part of rows 0 .. n_max-1 of a packed buffer (k's dtype; `send` = buffer + class offset) = kept
// rows of k and v (strided views [B, L, Hkv, D]); rows i >= count are zero.
void cuda_pack_kept(const TensorView& k, const TensorView& v, void* send, const KeptClass& kc, cudaStream_t stream);

// dk_acc, dv_acc (packed fp32 [B, L, Hkv, D]) += the class's part of `own` (fp32 packed rows, `own` = buffer +
// class offset) on the kept rows; an entry
// repeating a kv head adds into the same row (one thread per destination element: deterministic).
void cuda_scatter_add_kept(const float* own, float* dk_acc, float* dv_acc, int64_t B, int64_t L, int64_t Hkv, int64_t D,
                           const KeptClass& kc, cudaStream_t stream);

// Pattern merge (as cuda_merge) for a distributed pattern of rate r: rows kept for head h on this rank,
// partial LSE packed [B, H, n_max] (dist_lse_index); base = (p*L) mod r.
void cuda_merge_dist(float* acc, float* lse_acc, const float* part, const float* lse_part, int64_t B, int64_t L,
                     int64_t H, int64_t D, int64_t r, int64_t base, int64_t n_max, cudaStream_t stream);

// lse_part[dist_lse_index(b, h, i)] = lse[(b*H + h)*L + l] for every kept (b, l, h).
void cuda_compact_lse_dist(const float* lse, float* lse_part, int64_t B, int64_t L, int64_t H, int64_t r, int64_t base,
                           int64_t n_max, cudaStream_t stream);

}  // namespace dilated_detail
}  // namespace distattn
