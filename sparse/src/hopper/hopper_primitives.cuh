// Hopper (sm_90a) primitives for the wgmma forward kernel, as inline PTX: shared-memory matrix
// descriptors, warpgroup MMA (wgmma.mma_async), mbarriers, TMA tile loads, register reallocation.
// Everything here is device code that only exists when compiling for sm_90a
// (__CUDA_ARCH_FEAT_SM90_ALL); other targets see an empty header and the kernel body is compiled out.
//
// Shared-memory layout used with these helpers (the "128-byte swizzle" canonical layout of the PTX ISA,
// section "Shared Memory Matrix Layout"): a tile of R rows x 64 16-bit elements is stored row after row,
// 128 bytes per row, and the 16-byte chunk c of row r lives at chunk position c ^ (r % 8). TMA with
// CU_TENSOR_MAP_SWIZZLE_128B writes exactly this layout when the destination is 1024-byte aligned; a
// head dim of 128 is two such 64-wide "halves" stored one after the other (R * 128 bytes apart).
//
// Descriptor fields (64 bits): [0,14) start address >> 4, [16,30) leading byte offset (LBO) >> 4,
// [32,46) stride byte offset (SBO) >> 4, [49,52) base offset (0: our atoms are 1024-byte aligned),
// [62,64) swizzle mode (1 = 128-byte swizzle).
//   K-major operand (Q as A, K as B of S = Q K^T): rows are M / N, the 16 K elements of one wgmma are
//     32 contiguous bytes of a row; SBO = 1024 (8 rows x 128 B), LBO unused (1). The k-th 16-wide step
//     inside a 64-wide half starts 32*k bytes further (the swizzle is applied by the hardware on the
//     address bits, so advancing the start address inside the atom is legal).
//   MN-major operand (V as B of O = P V, "transpose" bit set): V is stored [kv row j][d], d contiguous,
//     i.e. N (= d) is the contiguous dimension. Canonical form ((8 elem, 8 chunks, m),(8 rows, k)) :
//     ((1, 16 B, LBO), (128 B, SBO)): LBO = distance between the two 64-wide d halves (R * 128 bytes),
//     SBO = 1024 (next 8 kv rows). The k-th 16-row step of j starts 16 * 128 = 2048 bytes further.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DISTATTN_HOPPER_DEVICE 1
#endif

namespace distattn {
namespace hopper {

#ifdef DISTATTN_HOPPER_DEVICE

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 128-byte-swizzle descriptor (see above). Addresses and offsets in bytes.
__device__ __forceinline__ uint64_t make_desc_sw128(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>((lbo_bytes & 0x3FFFF) >> 4) << 16;
  desc |= static_cast<uint64_t>((sbo_bytes & 0x3FFFF) >> 4) << 32;
  desc |= static_cast<uint64_t>(1) << 62;
  return desc;
}

// --- wgmma ordering ------------------------------------------------------------------------------------
// wgmma.fence: registers (accumulators, A fragments) written by ordinary instructions become visible to
// the following wgmma. commit_group closes the batch issued so far; wait_group<N> waits until at most N
// batches are still in flight.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The compiler does not know that wgmma writes its accumulators asynchronously: this empty asm "reads and
// writes" each register so no ordinary use of it moves across a wait (or a def across an issue).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// --- wgmma.mma_async m64n128k16, fp32 accumulators ----------------------------------------------------
// d[64]: the warpgroup's 64 x 128 fp32 tile. Thread t (warp w = t / 32, lane l) holds, for i in [0, 64),
//   row 16 w + l / 4 + 8 ((i / 2) % 2), column 8 (i / 4) + 2 (l % 4) + (i % 2).
// scale_d = 0: d = A B (the old d is ignored); 1: d += A B.
// _ss: A and B from shared memory (descriptors), both K-major.
// _rs: A from registers (a[4]: bf16x2 / f16x2 pairs in the m64k16 fragment order: a[0] (row r, k 2c..2c+1),
//      a[1] (row r+8, same k), a[2] (row r, k 2c+8..), a[3] (row r+8, k 2c+8..), r = 16 w + l/4, c = l % 4),
//      B from shared memory, MN-major (transpose bit 1).
// The accumulator operands of an m64nN wgmma (N / 2 fp32 registers per thread: 32 for N = 64, 64 for N = 128), as
// the register list in the instruction and as the asm statement's in-out operands %0 .. %(N / 2 - 1).
#define DISTATTN_WGMMA_REGS32                                                                                      \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31"
#define DISTATTN_WGMMA_REGS64                                                                                   \
  DISTATTN_WGMMA_REGS32                                                                                         \
  ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, " \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define DISTATTN_WGMMA_OUTS32(d)                                                                              \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define DISTATTN_WGMMA_OUTS64(d)                                                                                       \
  DISTATTN_WGMMA_OUTS32(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), \
      "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]),          \
      "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),          \
      "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),          \
      "+f"(d[63])

// wgmma_ss_m64n128k16_<T> and wgmma_rs_m64n128k16_<T> for one input type (PTX type PT: bf16 or f16).
#define DISTATTN_DEFINE_WGMMA_M64N128K16(T, PT)                                                                  \
  __device__ __forceinline__ void wgmma_ss_m64n128k16_##T(float(&d)[64], uint64_t desc_a, uint64_t desc_b,       \
                                                          int scale_d) {                                         \
    asm volatile(                                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                             \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." PT "." PT " {" DISTATTN_WGMMA_REGS64                      \
        "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                                                       \
        : DISTATTN_WGMMA_OUTS64(d)                                                                               \
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                                               \
  }                                                                                                              \
  __device__ __forceinline__ void wgmma_rs_m64n128k16_##T(float(&d)[64], const uint32_t(&a)[4], uint64_t desc_b, \
                                                          int scale_d) {                                         \
    asm volatile(                                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                             \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." PT "." PT " {" DISTATTN_WGMMA_REGS64                      \
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                                         \
        : DISTATTN_WGMMA_OUTS64(d)                                                                               \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));                                \
  }
DISTATTN_DEFINE_WGMMA_M64N128K16(bf16, "bf16")
DISTATTN_DEFINE_WGMMA_M64N128K16(f16, "f16")
#undef DISTATTN_DEFINE_WGMMA_M64N128K16

// --- wgmma.mma_async m64n64k16 (the backward), A and B from shared memory, fp32 accumulators ----------------------
// Transpose bits as template arguments (0: K-major operand, 1: MN-major). d[32]: thread t of the warpgroup (warp
// w = t / 32, lane l) holds, for i in [0, 32), row 16 w + l / 4 + 8 ((i / 2) % 2), column 8 (i / 4) + 2 (l % 4) +
// (i % 2) (the m64n128 layout above cut to 64 columns).
// wgmma_ss_m64n64k16_<T><kTransA, kTransB> for one input type (PTX type PT: bf16 or f16).
#define DISTATTN_DEFINE_WGMMA_SS_M64N64K16(T, PT)                                                         \
  template <int kTransA, int kTransB>                                                                     \
  __device__ __forceinline__ void wgmma_ss_m64n64k16_##T(float(&d)[32], uint64_t desc_a, uint64_t desc_b, \
                                                         int scale_d) {                                   \
    asm volatile(                                                                                         \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                      \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." PT "." PT " {" DISTATTN_WGMMA_REGS32                \
        "}, %32, %33, p, 1, 1, %35, %36;\n}\n"                                                            \
        : DISTATTN_WGMMA_OUTS32(d)                                                                        \
        : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB));                            \
  }
DISTATTN_DEFINE_WGMMA_SS_M64N64K16(bf16, "bf16")
DISTATTN_DEFINE_WGMMA_SS_M64N64K16(f16, "f16")
#undef DISTATTN_DEFINE_WGMMA_SS_M64N64K16

// --- mbarriers ---------------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialisations visible to the async proxy (TMA) and the other threads (followed by a barrier).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Arrives once and announces `bytes` of TMA transactions that must land before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase with parity `parity` has completed (phases alternate 0, 1, 0, ...).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
  } while (!done);
}

// --- TMA ---------------------------------------------------------------------------------------------
// 4-D tiled load (coordinates innermost first: element in the row, row, head, batch) into shared memory,
// completing `bytes` transactions on mbarrier `bar`. Out-of-range rows are filled with zeros (and still
// count as transaction bytes). `tmap` is the generic address of a __grid_constant__ CUtensorMap.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* tmap, uint32_t bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tmap)) : "memory");
}

// 4-D tiled store of the box at shared `src` (the tensor map's swizzle layout) to global memory; rows past the
// tensor's end are not written. Completion: bulk_commit_group / bulk_wait_group (same bulk groups as the reductions of
// hopper_bwd_primitives.cuh).
__device__ __forceinline__ void tma_store_4d(const void* tmap, uint32_t src, int c0, int c1, int c2, int c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(tmap)),
               "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}
__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until every bulk group of this thread has completed (its global writes performed).
__device__ __forceinline__ void bulk_wait_group_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
// Orders this thread's memory accesses through the generic proxy against those through the async proxy (TMA), in
// every state space: shared memory written by ordinary stores and then stored by TMA, global memory written by a TMA
// store and then published by an ordinary release, or published data read afterwards by a TMA load.
__device__ __forceinline__ void fence_proxy_async_all() { asm volatile("fence.proxy.async;\n" ::: "memory"); }
// Acquire load of a global counter at GPU scope (pairs with release_add_gpu in another CTA).
__device__ __forceinline__ uint32_t ld_acquire_gpu(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// Release increment of a global counter at GPU scope: every write of this thread before it (ordered by the caller's
// fences) is visible to a thread that acquires the new value.
__device__ __forceinline__ void release_add_gpu(uint32_t* p, uint32_t v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
// 16-byte shared-memory load / store at a shared-window address.
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts128(uint32_t addr, const uint4& v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// --- register reallocation between warpgroups (needs a register cap at entry: __launch_bounds__(n, 1)) --
template <int kRegs>
__device__ __forceinline__ void regs_increase() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_decrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// --- math ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

#endif  // DISTATTN_HOPPER_DEVICE

// --- per input type -----------------------------------------------------------------------------------------
// The wgmma wrappers and the fp32 -> 16-bit pair packing of one input type T (__nv_bfloat16 or __half), for kernels
// templated on T: pack(lo, hi) is the bf16x2 / f16x2 word (lo in the low half, round to nearest), unpack its inverse
// (exact), mma_ss / mma_rs the m64n128k16 forms, mma64 the m64n64k16 one. Declared for every target (kernels name it in
// templates); the members exist on sm_90a only.
template <typename T>
struct WgmmaOps;
template <>
struct WgmmaOps<__nv_bfloat16> {
#ifdef DISTATTN_HOPPER_DEVICE
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  // The word's two elements as floats (exact): x the low half.
  static __device__ __forceinline__ float2 unpack(uint32_t w) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  }
  static __device__ __forceinline__ void mma_ss(float (&d)[64], uint64_t a, uint64_t b, int scale_d) {
    wgmma_ss_m64n128k16_bf16(d, a, b, scale_d);
  }
  static __device__ __forceinline__ void mma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int scale_d) {
    wgmma_rs_m64n128k16_bf16(d, a, b, scale_d);
  }
  template <int kTransA, int kTransB>
  static __device__ __forceinline__ void mma64(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {
    wgmma_ss_m64n64k16_bf16<kTransA, kTransB>(d, a, b, scale_d);
  }
#endif
};
template <>
struct WgmmaOps<__half> {
#ifdef DISTATTN_HOPPER_DEVICE
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t w) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  }
  static __device__ __forceinline__ void mma_ss(float (&d)[64], uint64_t a, uint64_t b, int scale_d) {
    wgmma_ss_m64n128k16_f16(d, a, b, scale_d);
  }
  static __device__ __forceinline__ void mma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int scale_d) {
    wgmma_rs_m64n128k16_f16(d, a, b, scale_d);
  }
  template <int kTransA, int kTransB>
  static __device__ __forceinline__ void mma64(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {
    wgmma_ss_m64n64k16_f16<kTransA, kTransB>(d, a, b, scale_d);
  }
#endif
};

}  // namespace hopper
}  // namespace distattn
