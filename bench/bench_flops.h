// Work formulas for the benchmark rows: attention FLOPs (the flash-attention convention) and the
// exact number of visible (query, key) pairs under a causal / window band.
#pragma once

#include <cstdint>
#include <string>

namespace distattn {
namespace bench {

enum class Pass : int { kForward = 0, kBackward = 1, kForwardBackward = 2 };

// "fwd" / "bwd" / "fwdbwd"; throws distattn::Error naming `option` otherwise.
Pass parse_pass(const std::string& text, const std::string& option);
const char* pass_name(Pass pass);
// FLOPs of a pass relative to the forward: 1, 2.5 (backward: five matmuls against the forward's two),
// 3.5 (both) -- the factors flash-attention's benchmarks use.
double pass_factor(Pass pass);

// Number of pairs (i, j), 0 <= i, j < S (query row i and key row j at global positions i and j), with
// lo <= i - j <= hi. Exact, closed form: diagonal d = i - j holds S - |d| pairs; the sum over a range of
// d is an arithmetic series. lo/hi beyond +-(S-1) are clipped (pass DiagonalBand::kInf for "unbounded").
int64_t band_pairs(int64_t S, int64_t lo, int64_t hi);

// Visible pairs of a square S x S attention with the mask options of the bench:
//   no mask: S^2;  causal: S(S+1)/2;  window W (causal: 0 <= i-j < W; otherwise |i-j| < W): band_pairs.
int64_t visible_pairs(int64_t S, bool causal, int64_t window);

// The table's mask column: "none", "causal", "win<W>" or "c-win<W>".
std::string mask_label(bool causal, int64_t window);

// Forward FLOPs counted the flash-attention way, per batch element and head pair-count:
//   no window:  4 * B * S^2 * H * D, halved when causal (the convention every peer reports; it counts
//               S^2/2 pairs for causal rather than the exact S(S+1)/2);
//   window W:   4 * B * H * D * visible_pairs(S, causal, W) (exact count: the flash convention has no
//               rule for windows, and S^2/2 would overstate a narrow window's work by orders of magnitude).
// Times pass_factor(pass). H is the number of QUERY heads (GQA does not change the FLOPs).
double attention_flops(int64_t B, int64_t S, int64_t H, int64_t D, bool causal, int64_t window, Pass pass);

// Ring attention, per GPU: the flash formula above on the GLOBAL sequence length S, divided by the
// `ranks` GPUs that share it (each does 1/N of the visible pairs when the layout balances the work):
//   attention_flops(B, S, H, D, causal, window, pass) / ranks.
double ring_flops_per_gpu(int64_t B, int64_t S, int64_t H, int64_t D, bool causal, int64_t window, Pass pass,
                          int ranks);

// Bytes of one rank's K|V shard, the unit the ring moves per hop: 2 * B * (S / ranks) * Hkv * D * elem_size.
double ring_kv_shard_bytes(int64_t B, int64_t S, int64_t Hkv, int64_t D, int64_t elem_size, int ranks);

// Bus bandwidth (GB/s) of moving every rank's K|V shard to every other rank in `time_ms`, counted as an
// all-gather the way nccl-tests does: size = ranks * shard_bytes (the gathered buffer),
// algbw = size / time, busbw = algbw * (ranks - 1) / ranks  (= (ranks - 1) * shard_bytes / time).
// One rank: 0 (nothing moves).
double allgather_busbw_gbps(double shard_bytes, int ranks, double time_ms);

// Bytes a RoPE call on q [B,S,Hq,D] and k [B,S,Hkv,D] reads plus writes (in place: each element once
// each way), for GB/s: 2 * B * S * (Hq + Hkv) * D * elem_size.
double rope_bytes(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, int64_t elem_size);

}  // namespace bench
}  // namespace distattn
