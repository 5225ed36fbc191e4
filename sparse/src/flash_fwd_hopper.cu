// Hopper fast path of the forward (hopper/flash_fwd_hopper.h): support test, TMA descriptors, launch.
// This file sits in sparse/src (not sparse/src/hopper) because the library's source glob is not recursive;
// the kernel and its helpers live in hopper/.
#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "hopper/flash_fwd_hopper.h"
#include "hopper/flash_fwd_hopper_kernel.cuh"
#include "hopper/flash_fwd_hopper_params.h"
#include "hopper/flash_fwd_hopper_scheduler.h"

namespace distattn {

namespace {

using hopper::FlashFwdHopperParams;
using hopper::FwdConfig;

constexpr int kMaxDevices = 64;

// Per device: 1 when it is compute capability 9.0 and the kernel binary is sm_90 code, 0 otherwise, -1 unknown.
std::atomic<int> g_device_ok[kMaxDevices] = {};
std::atomic<bool> g_device_known[kMaxDevices] = {};

bool device_runs_hopper_kernel(int device) {
  if (device < 0 || device >= kMaxDevices) return false;
  if (g_device_known[device].load()) return g_device_ok[device].load() == 1;
  cudaDeviceProp prop{};
  DISTATTN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  bool ok = prop.major == 9 && prop.minor == 0;
  if (ok) {
    // The library may have been built without sm_90a code (e.g. CMAKE_CUDA_ARCHITECTURES=80): the kernel then
    // exists with an empty body for another target, which binaryVersion reveals. The attribute query is made on
    // the current device, so switch to `device` for it.
    int current = 0;
    DISTATTN_CUDA_CHECK(cudaGetDevice(&current));
    if (current != device) DISTATTN_CUDA_CHECK(cudaSetDevice(device));
    cudaFuncAttributes attr{};
    const cudaError_t e = cudaFuncGetAttributes(&attr, hopper::flash_fwd_hopper_kernel<__nv_bfloat16, false>);
    if (current != device) DISTATTN_CUDA_CHECK(cudaSetDevice(current));
    DISTATTN_CUDA_CHECK(e);
    ok = attr.binaryVersion == 90 && prop.sharedMemPerBlockOptin >= static_cast<size_t>(FwdConfig::kSmemBytes);
  }
  g_device_ok[device].store(ok ? 1 : 0);
  g_device_known[device].store(true);
  return ok;
}

// A tensor the TMA engine can address: 16-byte aligned base, head dim contiguous, and the row / head / batch
// strides positive multiples of 16 bytes below 2^40 bytes (a size-1 dimension's stride is never used).
bool tma_addressable(const TensorView& t) {
  constexpr int64_t kElem = 2;
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0 || t.stride[3] != 1) return false;
  for (int axis = 0; axis < 3; ++axis) {
    if (t.shape[axis] == 1) continue;
    const int64_t bytes = t.stride[axis] * kElem;
    if (bytes <= 0 || bytes % 16 != 0 || bytes >= (int64_t{1} << 40)) return false;
  }
  return true;
}

// A position map the kernel addresses per tile: 1..kMaxChunks chunks, every chunk boundary (prefix sum of the
// lengths, except the last which is the sequence end) a multiple of the tile rows, so each tile lies in one chunk.
bool tile_aligned_chunks(const PositionMap& m, int tile_rows) {
  if (m.num_chunks < 1 || m.num_chunks > FlashFwdHopperParams::kMaxChunks) return false;
  int64_t row = 0;
  for (int c = 0; c + 1 < m.num_chunks; ++c) {
    row += m.chunks[c].length;
    if (row % tile_rows != 0) return false;
  }
  return true;
}

// The case where the mma.sync kernel applies its ALiBi cutoff (flash_fwd_options.h): q_pos == kv_pos, one chunk.
bool alibi_cutoff_case(const AttnParams& p) {
  if (p.q_pos.num_chunks != 1 || p.kv_pos.num_chunks != 1) return false;
  const PositionChunk& a = p.q_pos.chunks[0];
  const PositionChunk& b = p.kv_pos.chunks[0];
  return a.start == b.start && a.stride == b.stride && a.length == b.length;
}

// Copies a validated position map into the kernel's chunk arrays (rows: prefix sums of the lengths).
void fill_chunks(const PositionMap& m, int* num, int* rows, int64_t* start, int64_t* stride) {
  *num = m.num_chunks;
  int64_t row = 0;
  for (int c = 0; c < m.num_chunks; ++c) {
    rows[c] = static_cast<int>(row);
    start[c] = m.chunks[c].start;
    stride[c] = m.chunks[c].stride;
    row += m.chunks[c].length;
  }
  for (int c = m.num_chunks; c <= FlashFwdHopperParams::kMaxChunks; ++c) rows[c] = static_cast<int>(row);
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q{};
    DISTATTN_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q));
    if (q == cudaDriverEntryPointSuccess) fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  });
  DISTATTN_CHECK(fn != nullptr, "the CUDA driver does not provide cuTensorMapEncodeTiled");
  return fn;
}

// TMA descriptor of a [B, S, H, 128] 16-bit tensor: dims (innermost first) {128, S, H, B}, box {64, rows, 1, 1},
// 128-byte swizzle (the layout the wgmma descriptors expect), zeros for rows past S.
CUtensorMap make_tmap(const TensorView& t, int box_rows, const char* argument) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(t.shape[3]), static_cast<cuuint64_t>(t.shape[1]),
                              static_cast<cuuint64_t>(t.shape[2]), static_cast<cuuint64_t>(t.shape[0])};
  // Strides of dims 1..3 in bytes; a size-1 dimension gets a harmless valid stride.
  auto stride_bytes = [&](int axis) -> cuuint64_t {
    return t.shape[axis] == 1 ? 16 : static_cast<cuuint64_t>(t.stride[axis] * 2);
  };
  const cuuint64_t strides[3] = {stride_bytes(1), stride_bytes(2), stride_bytes(0)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dtype =
      t.dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r =
      encode_fn()(&map, dtype, 4, t.data, dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DISTATTN_CHECK_ARG(r == CUDA_SUCCESS, argument,
                     "cannot be described to the TMA engine (cuTensorMapEncodeTiled error ", static_cast<int>(r),
                     ") for ", describe(t));
  return map;
}

// Grid override for tests and experiments: -1 = none (the environment variable DISTATTN_HOPPER_GRID, then the
// automatic choice), 0 = one CTA per slot of work units, n > 0 = n CTAs (at most the slot count).
std::atomic<int> g_grid_override{-1};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end != nullptr && *end == '\0' && x >= -1 && x <= (1L << 30)) ? static_cast<int>(x) : fallback;
}

// Streaming multiprocessors of the current device (cached per device).
int sm_count() {
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
// DISTATTN_HOPPER_PAIR=0 / 1 forces it for experiments.
bool pair_units(const FlashFwdHopperParams& k) {
  static const int env_pair = env_int("DISTATTN_HOPPER_PAIR", -1);
  if (env_pair >= 0) return env_pair == 1;
  if (k.has_blocks || k.num_m_blocks < 3) return false;
  const int64_t w0 = dense_tile_count(k, 0), wl = dense_tile_count(k, k.num_m_blocks - 1);
  const int64_t wm = dense_tile_count(k, (k.num_m_blocks - 1) / 2);
  const int64_t bend = w0 + wl - 2 * wm, spread = wl - w0;
  return 2 * (bend < 0 ? -bend : bend) < (spread < 0 ? -spread : spread);
}

// Persistent launches for short problems only: up to this many q tiles per (b, h) (Sq <= 4096). Measured on an H100
// (notes/hopper_kernel.md, "Persistent schedule"): +8-9% at 2K (B 8) and 4K causal, even at 16K non-causal; at 16K
// causal the one-CTA-per-unit launch was 3% faster (the hardware's dynamic CTA dispatch balances the 128 unequal q
// tiles better than the static snake), so long problems keep it.
constexpr int kPersistentMaxMBlocks = 32;

// Largest key count for which a call in the ALiBi-cutoff case (q_pos == kv_pos, one chunk) goes to this kernel.
// The default, 8192, comes from the positional study on an H200 with the standard geometric slopes (H = 32,
// bench/results/2026-11-22_h200_5b1bb19_final/positional): the mma.sync kernel with its cutoff costs +13.7% (non-
// causal) / +19.7% (causal) over no ALiBi at 8K, and -19.5% / -7.0% at 16K. Flatter slopes skip less and move
// the break-even up. DISTATTN_ALIBI_HOPPER_MAX_KV overrides it (0: never, as before; read once).
int alibi_hopper_max_kv() {
  static const int v = env_int("DISTATTN_ALIBI_HOPPER_MAX_KV", 8192);
  return v < 0 ? 0 : v;
}

// CTAs of the launch: persistent (one per SM, each walking its units; flash_fwd_hopper_scheduler.h) for short
// problems, one CTA per slot otherwise (with pair_units off and sections of one pair, the former kernel's CTA order:
// q tiles heaviest first inside each (b, h)), unless an override says otherwise.
int grid_size(const FlashFwdHopperParams& k, bool persistent) {
  static const int env_grid = env_int("DISTATTN_HOPPER_GRID", -1);
  int choice = g_grid_override.load();
  if (choice < 0) choice = env_grid;
  int ctas = 0;
  if (choice == 0) {
    ctas = k.num_slots;
  } else if (choice > 0) {
    ctas = choice;
  } else {
    ctas = persistent ? sm_count() : k.num_slots;
  }
  if (ctas > k.num_slots) ctas = k.num_slots;
  return ctas < 1 ? 1 : ctas;
}

template <typename T, bool kAlibi>
void launch(const FlashFwdHopperParams& params, bool persistent, cudaStream_t stream) {
  auto kernel = &hopper::flash_fwd_hopper_kernel<T, kAlibi>;
  static std::atomic<uint64_t> done_devices{0};
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit == 0 || (done_devices.load() & bit) == 0) {
    DISTATTN_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, FwdConfig::kSmemBytes));
    done_devices.fetch_or(bit);
  }
  // One dimension: CTA c walks the units of the snake schedule (flash_fwd_hopper_scheduler.h).
  const dim3 grid(static_cast<unsigned>(grid_size(params, persistent)));
  kernel<<<grid, FwdConfig::kThreads, FwdConfig::kSmemBytes, stream>>>(params);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool flash_fwd_hopper_supported(const AttnParams& p, int device) {
  if (p.q.dtype != DType::kBFloat16 && p.q.dtype != DType::kFloat16) return false;
  if (p.k.dtype != p.q.dtype || p.v.dtype != p.q.dtype) return false;
  if (p.o.dtype != p.q.dtype && p.o.dtype != DType::kFloat32) return false;
  if (p.accumulate && (p.o.dtype != DType::kFloat32 || p.lse == nullptr)) return false;
  if (p.q.head_dim() != 128) return false;
  // ALiBi: not with block lists (the kernel's per-row reference D0 is taken over the band only). Where the mma.sync
  // kernel's exact ALiBi cutoff applies (one identical chunk on both sides, no block list) that kernel skips the tiles
  // whose exp2 underflows, which this one does not yet: its gain grows with the key count and outweighs this
  // kernel's speed beyond alibi_hopper_max_kv() keys; up to there this kernel takes the call.
  if (p.alibi_slopes != nullptr && p.mask.blocks != nullptr) return false;
  if (p.alibi_slopes != nullptr && alibi_cutoff_case(p) && p.k.seqlen() > alibi_hopper_max_kv()) return false;
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

void flash_fwd_hopper(const AttnParams& p, cudaStream_t stream) {
  FlashFwdHopperParams k;
  k.tmap_q = make_tmap(p.q, FwdConfig::kBlockM, "q");
  k.tmap_k = make_tmap(p.k, FwdConfig::kBlockN, "k");
  k.tmap_v = make_tmap(p.v, FwdConfig::kBlockN, "v");
  k.o_ptr = p.o.data;
  k.lse_ptr = p.lse;
  k.o_batch_stride = p.o.stride[0];
  k.o_row_stride = p.o.stride[1];
  k.o_head_stride = p.o.stride[2];
  k.lse_batch_stride = p.lse_batch_step();
  k.lse_head_stride = p.lse_head_step();
  k.batch = static_cast<int>(p.q.batch());
  k.seqlen_q = static_cast<int>(p.q.seqlen());
  k.seqlen_kv = static_cast<int>(p.k.seqlen());
  k.heads_q = static_cast<int>(p.q.heads());
  k.head_group = static_cast<int>(p.q.heads() / p.k.heads());
  k.num_m_blocks = (k.seqlen_q + FwdConfig::kBlockM - 1) / FwdConfig::kBlockM;
  const bool persistent = k.num_m_blocks <= kPersistentMaxMBlocks;
  // L2 sections (persistent launches): the K and V of the kv heads of one section fit in ~8 MB. Measured at 2K causal
  // B 8 (H100): 8 MB 471 TF, 1 or 4 MB the same, 32 MB 457, every pair in one section 315 (K / V re-read from DRAM).
  // DISTATTN_HOPPER_L2_MB overrides for experiments. One pair per section otherwise.
  static const int l2_mb = env_int("DISTATTN_HOPPER_L2_MB", 8);
  k.section_pairs = !persistent
                        ? 1
                        : hopper::l2_section_pairs(k.seqlen_kv, k.head_group, static_cast<int64_t>(k.heads_q) * k.batch,
                                                   static_cast<int64_t>(l2_mb > 0 ? l2_mb : 8) << 20);
  fill_chunks(p.q_pos, &k.q_chunks, k.q_row, k.q_start, k.q_stride);
  fill_chunks(p.kv_pos, &k.kv_chunks, k.kv_row, k.kv_start, k.kv_stride);
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
  k.pair_units = persistent && pair_units(k);
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
  const bool bf16 = p.q.dtype == DType::kBFloat16;
  if (p.alibi_slopes != nullptr) {
    if (bf16)
      launch<__nv_bfloat16, true>(k, persistent, stream);
    else
      launch<__half, true>(k, persistent, stream);
  } else {
    if (bf16)
      launch<__nv_bfloat16, false>(k, persistent, stream);
    else
      launch<__half, false>(k, persistent, stream);
  }
}

void flash_fwd_hopper_set_grid_override(int ctas) { g_grid_override.store(ctas < 0 ? -1 : ctas); }

}  // namespace distattn
