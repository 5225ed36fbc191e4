// Hopper fast path of the forward (hopper/flash_fwd_hopper.h): support test, TMA descriptors, launch.
// This file sits in sparse/src (not sparse/src/hopper) because the library's source glob is not recursive;
// the kernel and its helpers live in hopper/.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "flash_fwd_rope_prepare.h"
#include "hopper/flash_fwd_hopper.h"
#include "hopper/flash_fwd_hopper_kernel.cuh"
#include "hopper/flash_fwd_hopper_params.h"
#include "hopper/flash_fwd_hopper_scheduler.h"
#include "hopper/hopper_host.h"

namespace distattn {

namespace {

using hopper::DeviceSupportCache;
using hopper::FlashFwdHopperParams;
using hopper::FwdConfig;
using hopper::tma_addressable;

// Whether a device runs this kernel (compute capability 9.0, sm_90a code, enough shared memory): hopper_host.h.
DeviceSupportCache g_device_support;

bool device_runs_hopper_kernel(int device) {
  return g_device_support.get(
      device, reinterpret_cast<const void*>(hopper::flash_fwd_hopper_kernel<__nv_bfloat16, false, false>),
      static_cast<size_t>(FwdConfig::kSmemBytes));
}

// The same for the fused-RoPE launch (more shared memory: the helpers' staging tile).
DeviceSupportCache g_device_support_rope;

bool device_runs_rope_kernel(int device) {
  return g_device_support_rope.get(
      device, reinterpret_cast<const void*>(hopper::flash_fwd_hopper_kernel<__nv_bfloat16, false, true>),
      static_cast<size_t>(FwdConfig::kSmemBytesRope));
}

// A position map the kernel addresses per tile: each tile of `tile_rows` rows lies in one chunk.
bool tile_aligned_chunks(const PositionMap& m, int tile_rows) {
  return hopper::tile_aligned_chunks(m, FlashFwdHopperParams::kMaxChunks, tile_rows);
}

// q_pos and kv_pos are the same map, chunk for chunk (self-attention positions).
bool same_positions(const AttnParams& p) {
  if (p.q_pos.num_chunks != p.kv_pos.num_chunks) return false;
  for (int c = 0; c < p.q_pos.num_chunks; ++c) {
    const PositionChunk& a = p.q_pos.chunks[c];
    const PositionChunk& b = p.kv_pos.chunks[c];
    if (a.start != b.start || a.stride != b.stride || a.length != b.length) return false;
  }
  return true;
}

// The case where the mma.sync kernel applies its ALiBi cutoff (flash_fwd_options.h): q_pos == kv_pos, one chunk.
bool alibi_cutoff_case(const AttnParams& p) { return p.q_pos.num_chunks == 1 && same_positions(p); }

// Grid override for tests and experiments: -1 = none (the environment variable DISTATTN_HOPPER_GRID, then the
// automatic choice), 0 = one CTA per slot of work units, n > 0 = n CTAs (at most the slot count).
std::atomic<int> g_grid_override{-1};

// The integer experiment knobs below (distattn/core/env.h): an integer in [lo, 2^30]; unset: `fallback`; anything
// else throws naming the variable.
int env_count(const char* name, int lo, int fallback) {
  return static_cast<int>(env_int(name, lo, int64_t{1} << 30, fallback));
}

// Streaming multiprocessors of the current device (cached per device).
int sm_count() {
  constexpr int kMaxDevices = DeviceSupportCache::kMaxDevices;
  static std::atomic<int> cached[kMaxDevices] = {};
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 0 && device < kMaxDevices && cached[device].load() > 0) return cached[device].load();
  int sms = 0;
  DISTATTN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kMaxDevices) cached[device].store(sms);
  return sms;
}

// kv tiles that q tile m visits under the dense band (no block list): the kernel's write_segments, on the host.
int dense_tile_count(const FlashFwdHopperParams& k, int m) {
  const hopper::TilePlan t = hopper::make_plan(k, m);
  int total = 0;
  for (int c = 0; c < k.kv_chunks; ++c) {
    int lo = 0, hi = 0;
    hopper::chunk_rows(t.q_min, t.q_max, k.band_lo, k.band_hi, k.kv_start[c], k.kv_stride[c], k.kv_row[c],
                       k.kv_row[c + 1] - k.kv_row[c], &lo, &hi);
    if (lo <= hi) total += hi / FwdConfig::kBlockN + 1 - lo / FwdConfig::kBlockN;
  }
  return total;
}

// Pair q tiles M - 1 - j and j in one slot (flash_fwd_hopper_scheduler.h) when the tile counts grow about linearly
// with m (causal): w(0) + w(M - 1) close to 2 w(middle) compared with the spread w(M - 1) - w(0). Not for block lists
// (their counts live on the device) nor flat or saturating counts (dense, windows: heaviest first alone is better).
// DISTATTN_HOPPER_PAIR=0 / 1 forces it for experiments (anything else throws naming it).
bool pair_units(const FlashFwdHopperParams& k) {
  static const int env_pair = env_choice("DISTATTN_HOPPER_PAIR", {"0", "1"}, -1);
  if (env_pair >= 0) return env_pair == 1;
  if (k.has_blocks || k.num_m_blocks < 3) return false;
  const int64_t w0 = dense_tile_count(k, 0), wl = dense_tile_count(k, k.num_m_blocks - 1);
  const int64_t wm = dense_tile_count(k, (k.num_m_blocks - 1) / 2);
  const int64_t bend = w0 + wl - 2 * wm, spread = wl - w0;
  return 2 * (bend < 0 ? -bend : bend) < (spread < 0 ? -spread : spread);
}

// Persistent launches for short problems only: up to this many q tiles per (b, h) (Sq <= 8192). Measured on an H100
// (notes/hopper_kernel.md, "Persistent schedule"): +8-9% at 2K (B 8) and 4K causal, even at 16K non-causal; at 16K
// causal the one-CTA-per-unit launch was 3% faster (the hardware's dynamic CTA dispatch balances the 128 unequal q
// tiles better than the static snake), so long problems keep it. Re-measured on an H200 in session 9
// (bench/results/2026-11-23_h200_s9_rope_fused, call3 / call4): causal 6K 0.61 -> 0.56 ms (-8%), 8K 1.01-1.02 ->
// 0.96-0.97 ms (-5%; also B 2 H 16 and GQA 32/8), 12K and 16K no better, 32K and 64K 1.5-3% worse; non-causal within
// 1% everywhere: plain calls now go up to 64 tiles. Accumulate-mode calls (ring steps, dilated patterns) keep 32: a
// persistent grid holds every SM until it ends, which would keep a ring step's NCCL kernels (across nodes) from
// starting beside it (DECISIONS.md, "Persistent forward only for short problems"); one CTA per unit frees SMs as units
// finish.
constexpr int kPersistentMaxMBlocks = 64;
constexpr int kPersistentMaxMBlocksAccumulate = 32;

// Largest key count for which a call in the ALiBi-cutoff case (q_pos == kv_pos, one chunk) goes to this kernel; -1:
// no limit (the default). Until this kernel had the cutoff itself the limit was 8192 (the mma.sync kernel's cutoff won
// beyond: bench/results/2026-11-22_h200_a59f32c_alibi_dispatch). Now both kernels skip the same tiles (same bound, same
// 128-row q tiles) and this one does each visited tile ~1.6x faster, so it takes every length.
// DISTATTN_ALIBI_HOPPER_MAX_KV=N (read once) restores a limit for A/B runs (0: the mma.sync kernel for every such
// call; -1: no limit; anything else than an integer in [-1, 2^30] throws naming the variable).
int alibi_hopper_max_kv() {
  static const int v = env_count("DISTATTN_ALIBI_HOPPER_MAX_KV", -1, -1);
  return v;
}

// CTAs of the launch: persistent (one per SM, each walking its units; flash_fwd_hopper_scheduler.h) for short
// problems, one CTA per slot otherwise (with pair_units off and sections of one pair, the former kernel's CTA order:
// q tiles heaviest first inside each (b, h)), unless an override says otherwise.
// max_ctas (AttnParams::max_ctas, > 0): a cap on the persistent grid (the overrides still win).
int grid_size(const FlashFwdHopperParams& k, bool persistent, int max_ctas) {
  static const int env_grid = env_count("DISTATTN_HOPPER_GRID", -1, -1);
  int choice = g_grid_override.load();
  if (choice < 0) choice = env_grid;
  int ctas = 0;
  if (choice == 0) {
    ctas = k.num_slots;
  } else if (choice > 0) {
    ctas = choice;
  } else {
    ctas = persistent ? sm_count() : k.num_slots;
    if (persistent && max_ctas > 0 && ctas > max_ctas) ctas = max_ctas;
  }
  if (ctas > k.num_slots) ctas = k.num_slots;
  return ctas < 1 ? 1 : ctas;
}

template <typename T, bool kAlibi, bool kRope = false>
void launch(const FlashFwdHopperParams& params, bool persistent, int max_ctas, cudaStream_t stream) {
  auto kernel = &hopper::flash_fwd_hopper_kernel<T, kAlibi, kRope>;
  constexpr int kSmem = kRope ? FwdConfig::kSmemBytesRope : FwdConfig::kSmemBytes;
  static std::atomic<uint64_t> done_devices{0};
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit == 0 || (done_devices.load() & bit) == 0) {
    DISTATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    done_devices.fetch_or(bit);
  }
  // One dimension: CTA c walks the units of the snake schedule (flash_fwd_hopper_scheduler.h).
  const dim3 grid(static_cast<unsigned>(grid_size(params, persistent, max_ctas)));
  if constexpr (kRope) {
    // Programmatic dependent launch: the CTAs may take SMs as rope_prepare's blocks retire (the kernel waits for that
    // grid before touching global memory), which hides the launch gap between the two.
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(FwdConfig::kThreads);
    config.dynamicSmemBytes = kSmem;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    DISTATTN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, params));
  } else {
    kernel<<<grid, FwdConfig::kThreads, kSmem, stream>>>(params);
  }
  DISTATTN_CUDA_CHECK_LAUNCH();
}

// The fused-RoPE launch (FlashFwdHopperParams, fused RoPE): jobs, the kv groups the grid's first units need (rotated
// here by rope_prepare together with the table and the counters, so that no unit of the first wave waits for the
// helpers), then the kernel, launched as rope_prepare's programmatic dependent. `k` is filled up to the fused-RoPE
// fields.
void launch_rope(const AttnParams& p, const FlashFwdHopperRope& rope, bool persistent, FlashFwdHopperParams* k,
                 cudaStream_t stream) {
  constexpr int kRows = FwdConfig::kRopeRows;
  const int64_t S = p.q.seqlen(), B = p.k.batch(), Hkv = p.k.heads();
  const int64_t group_jobs = (S + kRows - 1) / kRows;
  const int64_t groups = B * Hkv;
  DISTATTN_CHECK_ARG(groups * group_jobs < int64_t{0x7fffffff} - (int64_t{1} << 24), "q",
                     "has too many rows and heads for the fused RoPE (", groups * group_jobs, " jobs)");
  k->tmap_rq = hopper::make_tmap_16bit(p.q, kRows, "q");
  k->tmap_rk = hopper::make_tmap_16bit(p.k, kRows, "k");
  k->rope_jobs = static_cast<int>(groups * group_jobs);
  k->rope_group_jobs = static_cast<int>(group_jobs);
  k->rope_counters = rope.counters;
  k->rope_cs = rope.table;
  k->rope_first_step = rope.q_only ? 1 : 0;
  // Groups of the first unit of every CTA of the first wave (the schedule is the kernel's: UnitWalk on the host), in
  // whole batches past the first.
  const int grid = grid_size(*k, persistent, p.max_ctas);
  const int first_wave = std::min(grid, sm_count());  // one CTA per SM at a time (shared memory)
  int64_t pre = 0;
  for (int cta = 0; cta < first_wave; ++cta) {
    hopper::UnitWalk walk;
    hopper::WorkUnit u;
    if (!walk.next(*k, cta, grid, &u)) continue;
    pre = std::max<int64_t>(pre, int64_t{u.b} * Hkv + u.h / k->head_group + 1);
  }
  if (pre > Hkv) pre = std::min(groups, (pre + Hkv - 1) / Hkv * Hkv);
  if (rope.rotate_all_before) pre = groups;
  k->rope_pre_groups = static_cast<int>(pre);
  // The table, the counters and groups [0, pre) (kv heads [0, min(pre, Hkv)) of batches [0, ceil(pre / Hkv)) and
  // their q heads) in one launch.
  TensorView pre_q, pre_k;
  if (pre > 0) {
    const int64_t nb = (pre + Hkv - 1) / Hkv, nh = std::min(pre, Hkv);
    pre_q = p.q.head_range(0, nh * k->head_group);
    pre_k = p.k.head_range(0, nh);
    pre_q.shape[0] = nb;
    pre_k.shape[0] = nb;
  }
  detail::rope_prepare(rope.table, S, p.q_pos, rope.inv_freq, rope.scale, rope.counters, groups, pre, group_jobs, pre_q,
                       pre_k, !rope.q_only, stream);
  if (p.q.dtype == DType::kBFloat16)
    launch<__nv_bfloat16, false, true>(*k, persistent, p.max_ctas, stream);
  else
    launch<__half, false, true>(*k, persistent, p.max_ctas, stream);
}

}  // namespace

bool flash_fwd_hopper_supported(const AttnParams& p, int device) {
  if (p.q.dtype != DType::kBFloat16 && p.q.dtype != DType::kFloat16) return false;
  if (p.k.dtype != p.q.dtype || p.v.dtype != p.q.dtype) return false;
  if (p.o.dtype != p.q.dtype && p.o.dtype != DType::kFloat32) return false;
  if (p.accumulate && (p.o.dtype != DType::kFloat32 || p.lse == nullptr)) return false;
  if (p.q.head_dim() != 128) return false;
  // ALiBi: not with block lists (the kernel's per-row reference D0 is taken over the band only). Where the exact ALiBi
  // cutoff applies (one identical chunk on both sides, no block list), both kernels skip the same tiles; only an A/B
  // limit (alibi_hopper_max_kv) sends those calls to the mma.sync kernel.
  if (p.alibi_slopes != nullptr && p.mask.blocks != nullptr) return false;
  if (p.alibi_slopes != nullptr && alibi_cutoff_case(p) && alibi_hopper_max_kv() >= 0 &&
      p.k.seqlen() > alibi_hopper_max_kv())
    return false;
  if (!tile_aligned_chunks(p.q_pos, FwdConfig::kBlockM) || !tile_aligned_chunks(p.kv_pos, FwdConfig::kBlockN))
    return false;
  if (p.q.seqlen() < 1 || p.k.seqlen() < 1) return false;
  constexpr int64_t kMaxRows = int64_t{0x7fffffff} - 256;
  if (p.q.seqlen() > kMaxRows || p.k.seqlen() > kMaxRows) return false;
  if (p.q.heads() > 65535 || p.q.batch() > 65535) return false;
  // Work units (q tile, head, batch) are numbered with an int (flash_fwd_hopper_scheduler.h).
  const int64_t units = (p.q.seqlen() + FwdConfig::kBlockM - 1) / FwdConfig::kBlockM * p.q.heads() * p.q.batch();
  if (units >= int64_t{0x7fffffff}) return false;
  if (!tma_addressable(p.q) || !tma_addressable(p.k) || !tma_addressable(p.v)) return false;
  // o is written two elements at a time (4-byte stores, 8-byte for fp32) at even columns: a base aligned to
  // two elements and even strides suffice.
  const uintptr_t o_pair = p.o.dtype == DType::kFloat32 ? 8 : 4;
  if (reinterpret_cast<uintptr_t>(p.o.data) % o_pair != 0 || p.o.stride[3] != 1) return false;
  for (int axis = 0; axis < 3; ++axis)
    if (p.o.shape[axis] > 1 && p.o.stride[axis] % 2 != 0) return false;
  if (p.o_final.data != nullptr) {  // o_final (q's dtype) likewise, 4-byte stores
    if (reinterpret_cast<uintptr_t>(p.o_final.data) % 4 != 0 || p.o_final.stride[3] != 1) return false;
    for (int axis = 0; axis < 3; ++axis)
      if (p.o_final.shape[axis] > 1 && p.o_final.stride[axis] % 2 != 0) return false;
  }
  return device_runs_hopper_kernel(device);
}

void flash_fwd_hopper(const AttnParams& p, cudaStream_t stream) { flash_fwd_hopper(p, FlashFwdHopperCutoff{}, stream); }

bool flash_fwd_hopper_rope_supported(const AttnParams& p, int device) {
  if (p.alibi_slopes != nullptr || p.q.seqlen() != p.k.seqlen()) return false;
  if (!same_positions(p)) return false;
  return flash_fwd_hopper_supported(p, device) && device_runs_rope_kernel(device);
}

int64_t flash_fwd_hopper_rope_counters(const AttnParams& p) { return 2 + p.k.batch() * p.k.heads(); }

void flash_fwd_hopper(const AttnParams& p, const FlashFwdHopperCutoff& cutoff, cudaStream_t stream) {
  flash_fwd_hopper(p, cutoff, nullptr, stream);
}

void flash_fwd_hopper(const AttnParams& p, const FlashFwdHopperCutoff& cutoff, const FlashFwdHopperRope* rope,
                      cudaStream_t stream) {
  if (rope != nullptr) {
    DISTATTN_CHECK_ARG(p.alibi_slopes == nullptr && cutoff.mode == 0, "rope",
                       "the fused RoPE launch takes no ALiBi (and so no cutoff)");
    DISTATTN_CHECK_ARG(rope->inv_freq != nullptr && rope->table != nullptr && rope->counters != nullptr, "rope",
                       "needs its frequencies, table and counters");
  }
  if (cutoff.mode != 0) {
    DISTATTN_CHECK_ARG(cutoff.mode >= 1 && cutoff.mode <= 3, "cutoff", "mode must be 0, 1, 2 or 3, got ", cutoff.mode);
    DISTATTN_CHECK_ARG(p.alibi_slopes != nullptr && p.mask.blocks == nullptr, "cutoff",
                       "the ALiBi cutoff needs ALiBi and no block list");
    DISTATTN_CHECK_ARG(cutoff.mode == 3 || alibi_cutoff_case(p), "cutoff",
                       "the single-call ALiBi cutoff (modes 1, 2) needs q_pos == kv_pos as one chunk");
    DISTATTN_CHECK_ARG(cutoff.kv_norm_sq_max != nullptr && cutoff.q_norm_sq_max != nullptr, "cutoff",
                       "the ALiBi cutoff needs kv_norm_sq_max and q_norm_sq_max");
    DISTATTN_CHECK_ARG(cutoff.mode != 3 || cutoff.own_kv_norm_sq_max != nullptr, "cutoff",
                       "the cutoff across merged calls (mode 3) needs own_kv_norm_sq_max");
  }
  FlashFwdHopperParams k;
  k.tmap_q = hopper::make_tmap_16bit(p.q, FwdConfig::kBlockM, "q");
  k.tmap_k = hopper::make_tmap_16bit(p.k, FwdConfig::kBlockN, "k");
  k.tmap_v = hopper::make_tmap_16bit(p.v, FwdConfig::kBlockN, "v");
  k.o_ptr = p.o.data;
  k.lse_ptr = p.lse;
  k.o_batch_stride = p.o.stride[0];
  k.o_row_stride = p.o.stride[1];
  k.o_head_stride = p.o.stride[2];
  k.lse_batch_stride = p.lse_batch_step();
  k.lse_head_stride = p.lse_head_step();
  k.lse_row_stride = p.lse_row_step();
  k.batch = static_cast<int>(p.q.batch());
  k.seqlen_q = static_cast<int>(p.q.seqlen());
  k.seqlen_kv = static_cast<int>(p.k.seqlen());
  k.heads_q = static_cast<int>(p.q.heads());
  k.head_group = static_cast<int>(p.q.heads() / p.k.heads());
  k.num_m_blocks = (k.seqlen_q + FwdConfig::kBlockM - 1) / FwdConfig::kBlockM;
  // The caller's AttnParams::persistent_max_rows, else the limits above; DISTATTN_HOPPER_PERSISTENT_M (an integer
  // >= 0; read once; anything else throws naming it) overrides both, for experiments.
  static const int persistent_max_m = env_count("DISTATTN_HOPPER_PERSISTENT_M", 0, -1);
  const int64_t caller_max_m = p.persistent_max_rows / FwdConfig::kBlockM;  // -1 / 128 = 0 (unused when -1)
  const int64_t max_m = persistent_max_m >= 0        ? persistent_max_m
                        : p.persistent_max_rows >= 0 ? caller_max_m
                        : p.accumulate               ? kPersistentMaxMBlocksAccumulate
                                                     : kPersistentMaxMBlocks;
  const bool persistent = k.num_m_blocks <= max_m;
  // L2 sections (persistent launches): the K and V of the kv heads of one section fit in ~8 MB. Measured at 2K causal
  // B 8 (H100): 8 MB 471 TF, 1 or 4 MB the same, 32 MB 457, every pair in one section 315 (K / V re-read from DRAM).
  // DISTATTN_HOPPER_L2_MB (an integer >= 1; anything else throws naming it) overrides for experiments. One pair per
  // section otherwise.
  static const int l2_mb = env_count("DISTATTN_HOPPER_L2_MB", 1, 8);
  k.section_pairs = !persistent
                        ? 1
                        : hopper::l2_section_pairs(k.seqlen_kv, k.head_group, static_cast<int64_t>(k.heads_q) * k.batch,
                                                   static_cast<int64_t>(l2_mb) << 20);
  hopper::fill_chunks(p.q_pos, FlashFwdHopperParams::kMaxChunks, &k.q_chunks, k.q_row, k.q_start, k.q_stride);
  hopper::fill_chunks(p.kv_pos, FlashFwdHopperParams::kMaxChunks, &k.kv_chunks, k.kv_row, k.kv_start, k.kv_stride);
  const DiagonalBand band = DiagonalBand::from_mask(p.mask);
  k.band_lo = band.lo;
  k.band_hi = band.hi;
  if (p.mask.blocks != nullptr) {
    k.has_blocks = true;
    k.block_row_offset = p.mask.blocks->row_offset;
    k.block_col_index = p.mask.blocks->col_index;
    k.block_row_partial = p.mask.blocks->row_partial;
  }
  k.accumulate = p.accumulate;
  // Schedule (after the positions, band and block list: pair_units reads them).
  // Fused RoPE: no pairing and one (b, h) pair per section, so that the grid's first units span as few kv groups as
  // possible (each pair's units are consecutive slots, heaviest first): fewer groups to rotate before the launch (3
  // instead of 6 at 8K, H 32; launch_rope). Measured as fast as the pairing for plain 8K causal calls (session 9,
  // call4: 0.963-1.004 against 0.963-0.973 ms).
  if (rope != nullptr) k.section_pairs = 1;
  k.pair_units = persistent && rope == nullptr && pair_units(k);
  k.num_slots = hopper::slots_per_pair(k) * k.heads_q * k.batch;  // <= M * Hq * B < 2^31 (supported())
  k.o_fp32 = p.o.dtype == DType::kFloat32;
  if (p.o_final.data != nullptr) {  // final accumulate (validated: accumulate mode, q's dtype, o's shape)
    k.o_final_ptr = p.o_final.data;
    k.o_final_batch_stride = p.o_final.stride[0];
    k.o_final_row_stride = p.o_final.stride[1];
    k.o_final_head_stride = p.o_final.stride[2];
  }
  k.scale_log2 = static_cast<float>(static_cast<double>(p.scale()) * 1.4426950408889634);
  k.softmax_scale = p.scale();
  k.alibi_slopes = p.alibi_slopes;
  k.alibi_cutoff = cutoff.mode;
  k.alibi_cutoff_skip = cutoff.skip;
  k.kv_norm_sq_max = cutoff.kv_norm_sq_max;
  k.own_kv_norm_sq_max = cutoff.own_kv_norm_sq_max;
  k.q_norm_sq_max = cutoff.q_norm_sq_max;
  const bool bf16 = p.q.dtype == DType::kBFloat16;
  if (rope != nullptr) {
    launch_rope(p, *rope, persistent, &k, stream);
    return;
  }
  if (p.alibi_slopes != nullptr) {
    if (bf16)
      launch<__nv_bfloat16, true>(k, persistent, p.max_ctas, stream);
    else
      launch<__half, true>(k, persistent, p.max_ctas, stream);
  } else {
    if (bf16)
      launch<__nv_bfloat16, false>(k, persistent, p.max_ctas, stream);
    else
      launch<__half, false>(k, persistent, p.max_ctas, stream);
  }
}

void flash_fwd_hopper_set_grid_override(int ctas) { g_grid_override.store(ctas < 0 ? -1 : ctas); }

}  // namespace distattn
