// RingAttention's CUDA executor (ring_attention.h). Same schedule as the host executor
// (ring_attention.cc), with streams:
//   compute stream  C = the caller's `stream` (null: the legacy default stream): packing, the engine
//                       calls, casts, and the stream-ordered scratch (allocated and freed on C)
//   comm stream     N = NcclCommunicator::stream(): the grouped ncclSend/ncclRecv
//   post_exchange(after = C) records an event on C and makes N wait for it: the exchange starts after
//   everything enqueued on C so far, in particular the step that last READ the buffer it receives into
//   (write-after-read) and the allocation of both buffers; wait_exchange(consumer = C) makes C wait for the
//   exchange's completion event (read-after-write) and the host polls that event with the deadline.
//
// Forward, step s: post the K|V exchange feeding step s+1 (send kv[cur], receive kv[1-cur]), enqueue step s's
// compute on kv[cur] (N only reads kv[cur] meanwhile), then wait. The exchange of step s+1 runs while step s
// computes. Only the useful steps U = schedule().useful_steps are visited; the exchange from U[i] to U[i+1]
// is a jump of U[i+1] - U[i] ranks (post_jump: the ring hop when 1), see ring_attention.cc.
// The forward's last computed step runs in final accumulate mode (AttnParams::o_final): the merged result goes
// straight into o in the input dtype, and the running LSE is the caller's lse itself, so no cast or copy follows the
// last step (the trace of a 2-GPU 32K call, DISTATTN_RING_TRACE=1, showed 0.6 ms of cast + copy after the last step,
// 7% of the call). The K|V pack for the first send runs on C before step 0 (DISTATTN_RING_PACK=side moves it to a
// side stream beside step 0, which then reads the caller's k, v: see pack_on_side_stream for the measurements).
// ALiBi cutoff across steps (forward, CUDA, dense ring with ALiBi; fwd_alibi_merge_, DISTATTN_RING_ALIBI_CUTOFF): the
// one-GPU Hopper forward skips the kv tiles whose exp2 underflows because each q row's own key (bias 0) bounds its row
// max from below; a ring step holds other ranks' keys, but the own step holds every q row's own key, so the merged row
// max has the same bound and each step may skip the tiles whose every score lies 2^-176 below it (AttnParams::
// alibi_merge: within fp32 rounding of the merged result). The norms the bound needs are computed once per call (q's
// per 128-row tile, the own k's per kv head: one read of the local q and k) and k's travel with K|V (B Hkv floats
// appended to each exchange). Measured: notes/ring_alibi_cutoff.md.
// Backward, step s: post the K|V exchange of step s+1; compute step s into an fp32 scratch dK|dV, which the engine
// writes rather than adds to (AttnBwdParams::overwrite_dk_dv: no clearing pass; dQ still accumulates), independent of
// the travelling accumulator, so it overlaps the accumulator's exchange of step s-1. The bookkeeping runs on a side
// stream X (memory-bound; it overlaps step s+1's compute instead of delaying it): X waits for step s's compute and for
// the accumulator (drecv complete, dsend no longer being sent), adds (reads drecv and the scratch, writes dsend), and
// N posts the accumulator on after X. The scratch is double-buffered (step s+1 computes into the other one; step s+2
// waits for X's add to have read it).
// It jumps with the K|V; after the last useful step L it goes straight home instead (post_shift by -L; +1 = the
// ring hop when L = P-1), in two halves (see "Backward tail" below).
// Per-step hazards, all ordered by the two events above (NCCL) or by the window's flags (copy engine, below):
//   kv[1-cur]  received on N while C computes on kv[cur]; C last read kv[1-cur] in step s-1 (before the post)
//   dsend      written by X's add at step s only after X waited for step s-1's send of it
//   drecv      read by X's add at step s, overwritten by the exchange of step s posted (after = X) after that add
//
// The dK|dV accumulators [dsend | drecv] (gbytes each) are persistent like the K|V double buffer (cudaMalloc,
// grad_double_buffer, allocated by the first backward, grown when needed) and registered as a window of their own,
// so on one node their hops run on the copy engine too (no NCCL kernels taking SMs from the next step's compute).
// The copy engine pushes: the SOURCE's N writes into this rank's drecv; the flags replace NCCL's stream order
// (comm/src/ce_window.cc, "Protocol"). Each hazard again, for exchange n of the window on rank r:
//   drecv (write after read): r's post n runs on N after `after` = X, i.e. after the add that last read drecv (step
//     s's add, or for a home piece the add of that piece); only then does N write FREE n into the source's flags, and
//     the source's push n waits for it. A home piece covering elements [e0, e1) of [dK | dV] lands in bytes
//     [e0 hs, e1 hs) of drecv while the later pieces' adds read drecv from byte e1 gs on (hs, gs: the home and travel
//     element sizes, hs <= gs), so no landing overlaps a pending read.
//   drecv (read after write): X's add at step s+1 (and C's conversion after the home hop) follow wait_exchange with
//     that stream as consumer, which waits for READY n from the source (written after its copy, with a barrier).
//   dsend (write after read): r's own N reads dsend in its push n, then records done[slot]; X waits for done[slot]
//     in wait_exchange before the next add writes dsend. A home piece's push reads its own range of dsend while X
//     writes the later pieces' (disjoint) ranges.
//   dsend (read after write): the push follows the add on N (after = X).
//   across calls: the next call's C waits for kv_idle_, recorded on this call's C after C waited for every home
//     piece (done: the pushes out of dsend are complete; READY: the pushes into drecv landed) and after the dk / dv
//     conversions read drecv; X follows that C before its first add and N's first FREE follows X.
// The home hop lands straight in the caller's dk, dv only on NCCL (backward_cuda says why not on the copy engine).
//
// Backward tail (after the last compute; was ~2 ms at 32K on 2 H200s, all serial on C): the last add and the home hop
// go in pieces (kHomeSplit row ranges of each of dK, dV: four), so each piece's hop overlaps the next piece's add
// (X) and the previous piece's conversion (C); the dQ conversion goes on C after the first piece's add (it does not
// depend on the home hop; beside that add it would slow the add that gates the first hop), so it runs beside the
// hops; on NCCL with packed dk, dv of the home dtype the pieces land in them (no conversion). Session 8 trace at 16K
// on 2 H200s (the per-step shapes of 4 GPUs at 32K), two halves: 0.61 ms from the last compute to the end = the dK
// half's add beside the dQ conversion (~0.3 ms), the two hops (~0.2 ms each), the dV conversion; four pieces: 0.56 ms
// (the first piece's add, four ~0.105 ms hops). The whole call's time did not change beyond the noise of 4 rounds
// (bench/results/2026-11-23_h200x2_f032b17_ring16k_tail). What is left is the hop itself (134 MB at ~320 GB/s).
// Own step in two parts (DISTATTN_RING_BWD_OWN=split: cut by kv rows; heads: cut by kv heads; the default is whole):
// with the tail above the 32K fwd+bwd on 2 H200s still exposed ~1.3 ms after the last compute (the last add, the home
// hop, conversions), because nothing was left to compute while the accumulator travelled home. How it runs: the own
// step (step 0, the caller's k, v) is cut into part A and part B (OwnPart: a range of kv rows or of kv heads; with
// heads, each part takes the q heads of its kv heads, and lse / delta are addressed from its first q head). Part A
// runs as step 0 (it covers the first K|V hop) and its dK|dV travel as before (part B's range of that accumulator is
// zeroed on X after the first add: every other step writes all of its scratch); part B runs after the last remote
// step, into the other scratch buffer (free once X's add of step n-2 read it), while the last add and the home hop
// run on X / N. B's dK|dV never travel: at home, B's range = home hop + B, A's range = home hop. The home hop then
// carries the travel dtype (fp32 by default: B's part is added to it before the one rounding), lands in drecv, and
// A's range is converted on X as soon as each half arrives (beside B); after B only the sums of B's range and the dQ
// conversion remain on C. A and B do step 0's work as two launches.
// - By kv rows: cut at r = own_split_row(S/P) (a multiple of 128 rows, the zigzag chunk boundary at S/P = 2 chunks):
//   part A kv rows [r, S/P), part B [0, r). Under zigzag causal the parts differ in shape (A: the late chunk's
//   diagonal block, 1/4 of the work; B: 3/4), and each launch has its own ramp-down. Measured (session 5, 2 H200s,
//   32K): the tail after part B is 0.27 ms, but the two launches cost ~0.4 ms more than one, and fwd+bwd exposed is no
//   better than whole (32K 5.7 / 5.8% vs 5.3 / 5.5%; 64K 3.9 / 3.9% vs 2.8 / 3.9%); session 8 at 16K: A 0.92 ms +
//   B 2.53 ms vs 3.15 ms whole, the same total time.
// - By kv heads (needs Hkv >= 2, else the step stays whole): part A kv heads [0, Hkv/2), part B [Hkv/2, Hkv), each
//   the whole step's shape on half the heads, so each launch keeps the whole step's balance. Measured (session 8, 2
//   H200s, 3 interleaved rounds): 16K 9.53 vs 9.49 ms whole, 32K 35.32 vs 35.14, 64K 136.77 vs 136.88: no gain.
//   Part B ran 0.26 ms longer than half a step: only the copy-engine hop is free work; the adds and conversions take
//   SMs wherever they run, and the fp32 home hop makes them larger (the last add writes fp32, both ranges are read
//   back as fp32), so what the tail loses part B gains, plus one launch ramp.
// Both cuts stay options for home hops slower than the copy engine's (across nodes), where the hop dominates; the head
// cut keeps each launch balanced.
// Dense ring only (a block-sparse step carries a sub-layout indexed by whole-shard blocks) and only with remote steps.
// dQ accumulates on C in a head-major fp32 buffer [B, Hq, S/P, D] (row stride D): the engine reduces into it directly
// in accumulate mode, without a scratch of its own; delta = rowsum(dO * O) is computed once.
//
// Scratch lifetime: every stream-ordered buffer N touches is allocated and freed on C (the persistent K|V and dK|dV
// windows are never freed during a call). On the normal path each exchange is
// waited with consumer C before the frees are enqueued. If anything throws between a post and its wait,
// PendingExchanges (declared after the buffers, so destroyed before them) waits for the outstanding
// exchanges (bounded by the deadline; a timeout aborts the NCCL communicator, which ends its kernels) and
// makes C wait for everything enqueued on N, so the pool never gets a buffer back while NCCL may still use it.
//
// Block-sparse steps pass their sub-layout's device copy, uploaded once at construction (upload_step_layouts).
//
// The K|V double buffer is NOT stream-ordered scratch: it is allocated once per RingAttention (cudaMalloc, so that
// it can be exported over CUDA IPC; grown if a call needs more) and registered as a window of the communicator
// (Communicator::register_window): on one node with peer access, every K|V exchange (the buffer halves at offsets 0
// and the slot size, the same on every rank) then runs on the copy engine (comm/src/ce_window.cc: pushed into the next
// rank's window, flags instead of NCCL kernels, no SMs), with exactly the ordering contract above (`after` = C,
// `consumer` = C). Across calls (which may use different streams) the next call's C waits for kv_idle_, recorded on
// the previous call's C after its last use of the buffer (and of the dK|dV window, see above).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/scratch_pool.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/sparse/block_layout.h"
#include "distattn/sparse/flash_attention.h"
#include "ring_kernels.h"
#include "ring_trace.h"

namespace distattn {
namespace ring {

namespace {

TensorView device_view(void* data, DType dtype, int64_t B, int64_t S, int64_t H, int64_t D) {
  return TensorView::packed(data, dtype, Device::kCuda, B, S, H, D);
}

// The backward's home hop goes in pieces (see "Backward tail" above): dK and dV each cut into kHomeSplit row ranges
// of the flattened [B * S/P] rows, so that piece p's hop runs while X adds piece p + 1 and C converts piece p - 1.
// Two per half: the tail after the last compute is then the first quarter's add, the four hops back to back (one copy
// engine) and the last quarter's conversion, instead of a half's add, two hops and a half's conversion. With the own
// step split (part B covers the hop) one piece per half. A compile-time constant: every rank posts the same exchanges.
constexpr int kHomeSplit = 2;
constexpr int kMaxHomePieces = 2 * kHomeSplit;

// Converts rows [g0, g1) of the flattened [B * S] row space of a packed [B, S, H, D] buffer `src` (dtype `src_dtype`;
// `src` points at row g0) into the same rows of `dst`, a [B, S, H, D] view: one conversion per batch the range meets.
void convert_flat_rows(const unsigned char* src, DType src_dtype, int64_t g0, int64_t g1, const TensorView& dst,
                       cudaStream_t stream) {
  const int64_t S = dst.seqlen(), row_elems = dst.heads() * dst.head_dim();
  const size_t es = dtype_size(src_dtype), des = dtype_size(dst.dtype);
  for (int64_t g = g0; g < g1;) {
    const int64_t b = g / S, s0 = g - b * S;
    const int64_t s1 = std::min(S, s0 + (g1 - g));
    TensorView batch = dst;
    batch.data = static_cast<unsigned char*>(dst.data) + static_cast<size_t>(b * dst.stride[0]) * des;
    batch.shape[0] = 1;
    detail::convert_packed_to_view(src + static_cast<size_t>((g - g0) * row_elems) * es, src_dtype, batch.rows(s0, s1),
                                   stream);
    g += s1 - s0;
  }
}

// The exchanges of one executor call that are posted but not yet waited for (tickets with slot >= 0; the
// communicator resets a ticket's slot when it is waited, also when that wait throws). See "Scratch lifetime"
// above: only does work while an exception unwinds the executor.
class PendingExchanges {
 public:
  PendingExchanges(Communicator& comm, cudaStream_t compute) : comm_(comm), compute_(compute) {}
  ~PendingExchanges() {
    if (std::uncaught_exceptions() <= uncaught_) return;  // normal exit: every exchange was waited
    for (ExchangeTicket& t : tickets) {
      if (t.slot < 0) continue;
      try {
        comm_.wait_exchange(t, compute_);  // bounded; a broken communicator refuses at once
      } catch (...) {
        // the original exception is the one reported
      }
    }
    // Whatever the waits above managed, C waits for all of N (aborted NCCL kernels end; a healthy
    // communicator has nothing left on N after the waits).
    if (auto* nccl = dynamic_cast<NcclCommunicator*>(&comm_)) {
      cudaEvent_t tail = nullptr;
      if (cudaEventCreateWithFlags(&tail, cudaEventDisableTiming) == cudaSuccess) {
        if (cudaEventRecord(tail, nccl->stream()) == cudaSuccess) (void)cudaStreamWaitEvent(compute_, tail, 0);
        (void)cudaEventDestroy(tail);
      }
    }
    (void)cudaGetLastError();  // nothing sticky from the clean-up
  }
  PendingExchanges(const PendingExchanges&) = delete;
  PendingExchanges& operator=(const PendingExchanges&) = delete;

  // [0] K|V, [1] the travelling dK|dV accumulator (backward), [2, 2 + kMaxHomePieces) the home hop's pieces.
  ExchangeTicket tickets[2 + kMaxHomePieces];

 private:
  Communicator& comm_;
  cudaStream_t compute_;
  int uncaught_ = std::uncaught_exceptions();
};

// A second stream for the backward's memory-bound gradient bookkeeping (the travel add), so that it runs
// beside the next step's compute instead of after it. The destructor (also when an exception unwinds the
// executor) makes the main stream wait for everything enqueued on the side stream, so the stream-ordered frees of
// the buffers it touches come after their last use. cudaStreamWaitEvent captures an event's state when called, so
// one event per purpose may be re-recorded every step.
class SideStream {
 public:
  // high_priority: the side stream gets the device's greatest priority, so its short memory-bound kernels take SMs as
  // soon as the compute kernel's blocks retire instead of after the whole compute kernel (measured: at normal
  // priority the K|V pack queued behind step 0's kernel and delayed the first exchange by a full step).
  explicit SideStream(cudaStream_t main, bool high_priority = false) : main_(main) {
    int least = 0, greatest = 0;
    DISTATTN_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    DISTATTN_CUDA_CHECK(cudaStreamCreateWithPriority(&side_, cudaStreamNonBlocking, high_priority ? greatest : least));
    for (cudaEvent_t* e : {&after_main_, &free_[0], &free_[1], &join_}) {
      const cudaError_t rc = cudaEventCreateWithFlags(e, cudaEventDisableTiming);
      if (rc != cudaSuccess) {
        release();
        DISTATTN_CUDA_CHECK(rc);
      }
    }
  }
  ~SideStream() {
    if (side_ != nullptr && join_ != nullptr && cudaEventRecord(join_, side_) == cudaSuccess)
      (void)cudaStreamWaitEvent(main_, join_, 0);
    release();
    (void)cudaGetLastError();
  }
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  cudaStream_t get() const { return side_; }
  // The side stream waits for everything enqueued on the main stream so far.
  void follow_main() {
    DISTATTN_CUDA_CHECK(cudaEventRecord(after_main_, main_));
    DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(side_, after_main_, 0));
  }
  // Marks (on the side stream) that scratch buffer b is free again (its last reader, an add, is enqueued before the
  // mark); the main stream waits for that mark before a compute overwrites the buffer.
  void mark_free(int b) { DISTATTN_CUDA_CHECK(cudaEventRecord(free_[b], side_)); }
  void main_waits_free(int b) { DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(main_, free_[b], 0)); }
  // The main stream waits for everything enqueued on the side stream so far.
  void main_follows() {
    DISTATTN_CUDA_CHECK(cudaEventRecord(join_, side_));
    DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(main_, join_, 0));
  }

 private:
  void release() {
    for (cudaEvent_t* e : {&after_main_, &free_[0], &free_[1], &join_}) {
      if (*e != nullptr) (void)cudaEventDestroy(*e);
      *e = nullptr;
    }
    if (side_ != nullptr) (void)cudaStreamDestroy(side_);  // resources go once its work is done
    side_ = nullptr;
  }
  cudaStream_t main_;
  cudaStream_t side_ = nullptr;
  cudaEvent_t after_main_ = nullptr, free_[2] = {nullptr, nullptr}, join_ = nullptr;
};

// Records `event` on `stream` when the executor leaves (normally or by an exception): the next call's stream waits
// for it before touching the persistent K|V buffer. Declared before PendingExchanges, so recorded after its
// clean-up has made the stream wait for every outstanding exchange.
class KvIdle {
 public:
  KvIdle(cudaEvent_t event, cudaStream_t stream) : event_(event), stream_(stream) {}
  ~KvIdle() {
    (void)cudaEventRecord(event_, stream_);
    (void)cudaGetLastError();
  }
  KvIdle(const KvIdle&) = delete;
  KvIdle& operator=(const KvIdle&) = delete;

 private:
  cudaEvent_t event_;
  cudaStream_t stream_;
};

// DISTATTN_RING_PACK=main (default) | side: where the K|V pack for the first send runs. main: on the compute stream
// before step 0. side: on a greatest-priority side stream beside step 0, which then computes on the caller's k, v (in
// the backward the side stream's gradient bookkeeping gets that priority too). Measured on 2 H200s (bench/results/
// 2026-11-22_h200x2_*_ring_ce): forward alike (3-5% exposed at 32K either way); fwd+bwd 32K 8.7-9.7% (main) vs
// 14.3-14.7% (side), 64K 8.3-10.4% vs 5.0-5.4%; at normal priority the side pack queued behind step 0's kernel.
// Kept for A/B timings. Read once per process; anything else throws.
bool pack_on_side_stream() {
  static const bool side = env_choice("DISTATTN_RING_PACK", {"main", "side"}, 0) == 1;
  return side;
}

// DISTATTN_RING_BWD_SIDE=high (default) | normal: the priority of the backward's side stream X. At normal priority
// X's memory-bound add of step i's dK|dV waited for the NEXT step's whole kernel (the block scheduler hands freed SMs
// to the running kernel's remaining blocks first): the 32K trace on 2 H200s (session 5) showed the step-0 add and
// hop ending 1.3 ms after step 1's compute, and the host's wait for that hop holding back the next enqueue. At the
// greatest priority X's short kernels take SMs as the compute kernel's blocks retire. Per rank (no exchange depends
// on it); read once per process; anything else throws.
bool bwd_side_high_priority() {
  static const bool high = env_choice("DISTATTN_RING_BWD_SIDE", {"high", "normal"}, 0) == 0;
  return high;
}

// DISTATTN_RING_HOME=direct (default) | window: where the backward's dK|dV home hop lands when the accumulators travel
// on NCCL and the caller's dk and dv are packed [B, S/P, Hkv, D] of the home dtype. direct: straight into dk.data /
// dv.data (no conversion pass after it); window: into drecv, then converted into dk, dv as for any other layout (kept
// for A/B timings). On the copy engine the hop always lands in drecv (see backward_cuda). Per rank (the landing
// address is local; the exchanges posted are the same either way). Read once per process; anything else throws.
bool home_direct_allowed() {
  static const bool direct = env_choice("DISTATTN_RING_HOME", {"direct", "window"}, 0) == 0;
  return direct;
}

// True when t is a densely packed [B, S, H, D] view of `dtype` (strides of axes of extent 1 do not matter).
bool is_packed_as(const TensorView& t, DType dtype, int64_t B, int64_t S, int64_t H, int64_t D) {
  if (t.dtype != dtype || t.data == nullptr) return false;
  const TensorView p = TensorView::packed(t.data, dtype, t.device, B, S, H, D);
  if (t.shape != p.shape) return false;
  for (int a = 0; a < 4; ++a) {
    if (p.shape[static_cast<size_t>(a)] > 1 && t.stride[static_cast<size_t>(a)] != p.stride[static_cast<size_t>(a)])
      return false;
  }
  return true;
}

// Where the backward cuts its own step (see "Own step in two parts"): half of the local rows, rounded down to a
// multiple of 128 (the engines' kv tile) when that leaves both parts non-empty.
int64_t own_split_row(int64_t local_rows) {
  const int64_t half = local_rows / 2;
  return half >= 128 ? half / 128 * 128 : half;
}

// A part of the own step: kv rows [r0, r1) of kv heads [h0, h1) (and their q heads), all q rows.
struct OwnPart {
  int64_t r0 = 0, r1 = 0;  // kv rows
  int64_t h0 = 0, h1 = 0;  // kv heads
};

// The rows and heads of `part` in a [B, S, H, D] view (k, v, a dK / dV buffer or the caller's dk / dv).
TensorView part_view(const TensorView& t, const OwnPart& part) {
  return t.rows(part.r0, part.r1).head_range(part.h0, part.h1);
}

// Zeroes the elements of `part` in a packed [B, S, H, D] buffer of element size `es` (rows [r0, r1) of every head, or
// heads [h0, h1) of every row): one 2D memset, rows or heads being the contiguous run.
void zero_part(unsigned char* buf, size_t es, int64_t B, int64_t S, int64_t H, int64_t D, const OwnPart& part,
               cudaStream_t stream) {
  const size_t row = static_cast<size_t>(H * D) * es;
  if (part.h0 == 0 && part.h1 == H) {  // a row range of each batch
    DISTATTN_CUDA_CHECK(cudaMemset2DAsync(buf + static_cast<size_t>(part.r0) * row, static_cast<size_t>(S) * row, 0,
                                          static_cast<size_t>(part.r1 - part.r0) * row, static_cast<size_t>(B),
                                          stream));
  } else {  // a head range of every row (part spans all rows)
    DISTATTN_CUDA_CHECK(cudaMemset2DAsync(buf + static_cast<size_t>(part.h0 * D) * es, row, 0,
                                          static_cast<size_t>((part.h1 - part.h0) * D) * es, static_cast<size_t>(B * S),
                                          stream));
  }
}

// Makes the communicator's GPU current (the scratch is allocated on the current device).
void use_comm_device(const Communicator& comm) {
  if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(&comm))
    DISTATTN_CUDA_CHECK(cudaSetDevice(nccl->cuda_device()));
}

// Deregisters (collective) and frees a window_buffer. Never throws.
void release_window_buffer(Communicator& comm, unsigned char*& buf, size_t& have, int& window) noexcept {
  if (buf == nullptr) return;
  try {
    use_comm_device(comm);
    if (window >= 0) comm.deregister_window(window);
  } catch (...) {
    // a destructor path: the communicator reports its own failure; the memory is released below regardless
  }
  window = -1;
  (void)cudaFree(buf);  // synchronises: every call's use of the buffer (and kv_idle_) is complete
  buf = nullptr;
  have = 0;
  (void)cudaGetLastError();
}

// A persistent buffer of `need` bytes registered as a window of `comm` (the K|V double buffer, the dK|dV
// accumulators): kept when `have` bytes suffice, else released (deregistered) and allocated again (cudaMalloc: not
// the stream-ordered pool, whose memory cannot be IPC-exported) and registered. Every rank gets here in the same
// call (the shapes are agreed), so the collective registration lines up; registered on every rank, then dropped again
// when `use_ce` is false, so that ranks with different opinions still make the same collective calls (and the
// registration's agreement decides).
unsigned char* window_buffer(Communicator& comm, bool use_ce, size_t need, unsigned char*& buf, size_t& have,
                             int& window, const char* op) {
  if (buf != nullptr && have >= need) return buf;
  release_window_buffer(comm, buf, have, window);
  void* p = nullptr;
  DISTATTN_CUDA_CHECK(cudaMalloc(&p, need));
  buf = static_cast<unsigned char*>(p);
  have = need;
  window = comm.register_window(buf, need, op);
  if (!use_ce && window >= 0) {
    const int id = window;
    window = -1;
    comm.deregister_window(id);
  }
  return buf;
}

}  // namespace

unsigned char* RingAttention::kv_double_buffer(size_t kv_bytes) {
  if (kv_idle_ == nullptr) {
    cudaEvent_t e = nullptr;
    DISTATTN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    kv_idle_ = e;
  }
  return window_buffer(comm_, config_.copy_engine_exchange, 2 * kv_bytes, kv_buffer_, kv_buffer_bytes_, kv_window_,
                       "RingAttention K|V window");
}

void RingAttention::release_kv_buffer() noexcept {
  release_window_buffer(comm_, kv_buffer_, kv_buffer_bytes_, kv_window_);
}

unsigned char* RingAttention::grad_double_buffer(size_t grad_bytes) {
  return window_buffer(comm_, config_.copy_engine_exchange, 2 * grad_bytes, grad_buffer_, grad_buffer_bytes_,
                       grad_window_, "RingAttention dK|dV window");
}

void RingAttention::release_grad_buffer() noexcept {
  release_window_buffer(comm_, grad_buffer_, grad_buffer_bytes_, grad_window_);
}

RingAttention::~RingAttention() {
  release_grad_buffer();  // the reverse of their registration order (the first backward registers K|V first)
  release_kv_buffer();
  if (kv_idle_ != nullptr) (void)cudaEventDestroy(kv_idle_);
}

void RingAttention::upload_step_layouts() {
  use_comm_device(comm_);
  for (RingStep& st : schedule_.steps) {
    // cudaMalloc + copy, synchronised; the view is kept so that calls need not ask the layout (which checks
    // the caller's current device) again.
    if (st.blocks != nullptr && !st.skipped()) st.device_blocks = st.blocks->device_view(nullptr);
  }
}

void RingAttention::forward_cuda(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                 float* lse, CUstream_st* stream_in) {
  // A null stream is the legacy default stream; name it explicitly so the exchange is ordered against it
  // (the communicator treats a null stream as "no ordering").
  const cudaStream_t stream = stream_in != nullptr ? stream_in : cudaStreamLegacy;
  const int64_t B = config_.batch, Sl = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const size_t es = dtype_size(config_.dtype);
  const int64_t nkv = B * Sl * Hkv * D;  // elements of one of K, V
  const size_t kv_bytes = 2 * static_cast<size_t>(nkv) * es;
  use_comm_device(comm_);

  // ALiBi cutoff across steps (fwd_alibi_merge_, agreed at construction): the own step holds every q row's own key,
  // so each step's engine call may skip the kv tiles whose scores lie 2^-176 below it (AttnParams::alibi_merge). The
  // norms of the held k travel with it: a slot is [K | V | held k norms (B Hkv floats) | own k norms (B Hkv) | q norms
  // (B Hq M)], and an exchange carries the first three; the last two, written once into kv[0], are never overwritten.
  const bool alibi_merge = fwd_alibi_merge_;
  const size_t k_norm_bytes = alibi_merge ? static_cast<size_t>(B * Hkv) * sizeof(float) : 0;
  const size_t norm_bytes = alibi_merge ? static_cast<size_t>(alibi_merge_norms_floats(q, k)) * sizeof(float) : 0;
  const size_t send_bytes = kv_bytes + k_norm_bytes;
  const size_t slot_bytes = (kv_bytes + k_norm_bytes + norm_bytes + 255) / 256 * 256;
  // K|V double buffer: kv[c] = [K | V], each packed [B, Sl, Hkv, D] in the input dtype (only KV heads travel).
  // Persistent (the window, see the header comment); C waits for the previous call's last use of it.
  unsigned char* kv_base = kv_double_buffer(slot_bytes);
  unsigned char* kv[2] = {kv_base, kv_base + slot_bytes};
  RingTrace trace("fwd", comm_.rank());
  const auto* nccl_comm = dynamic_cast<const NcclCommunicator*>(&comm_);
  const cudaStream_t comm_stream = nccl_comm != nullptr ? nccl_comm->stream() : stream;
  trace.mark("begin (C)", stream);
  DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(stream, kv_idle_, 0));
  kv_path_ = comm_.exchange_path(kv[0], kv[1], send_bytes);
  // Recorded on C when this call is done with the buffer (also on a throw: then after PendingExchanges' clean-up).
  KvIdle idle(kv_idle_, stream);
  const std::vector<int>& U = schedule_.useful_steps;
  // The computed steps among the useful ones (a useful step may still compute nothing on this rank).
  int first_computed = -1, last_computed = -1, n_computed = 0;
  for (size_t i = 0; i < U.size(); ++i) {
    if (schedule_.steps[static_cast<size_t>(U[i])].skipped()) continue;
    if (first_computed < 0) first_computed = static_cast<int>(i);
    last_computed = static_cast<int>(i);
    ++n_computed;
  }
  // Where the result is built:
  //  - one computed step: plain mode straight into o (and lse), no accumulator;
  //  - several, o in the input dtype: fp32 accumulator for all but the last step, which runs in final accumulate
  //    mode (AttnParams::o_final) and writes the merged result into o itself: no cast pass over O;
  //  - several, o fp32: the accumulator and one cast at the end (as for no computed step at all).
  // The running LSE is the caller's lse when given (packed [B, Hq, Sl] fp32, what the accumulator uses): no copy.
  const bool direct = n_computed == 1;
  const bool final_into_o = n_computed >= 2 && o.dtype == config_.dtype;
  const bool need_acc = !direct;
  // fp32 accumulators: O packed [B, Sl, Hq, D], LSE packed [B, Hq, Sl] (only when the caller gives no lse).
  PooledScratch acc_o(need_acc ? static_cast<size_t>(B * Sl * Hq * D) * sizeof(float) : 0, stream);
  PooledScratch acc_lse(lse == nullptr ? static_cast<size_t>(B * Hq * Sl) * sizeof(float) : 0, stream);
  float* run_lse = lse != nullptr ? lse : acc_lse.get<float>();
  // No clear of the accumulators: the first computed step writes them in plain mode (fp32 O, LSE; rows with no
  // visible key get O = 0 and LSE = -inf, exactly the empty accumulator), the later ones merge into them. Saves
  // a pass over O (B*Sl*Hq*D*4 bytes) that nothing overlaps. Only a rank with no computed step clears them.
  const TensorView acc_view = need_acc ? device_view(acc_o.get(), DType::kFloat32, B, Sl, Hq, D) : TensorView{};
  PendingExchanges pending(comm_, stream);  // after the buffers: destroyed before them
  ExchangeTicket& t = pending.tickets[0];
  // The K|V pack into the send buffer (only when something is sent) runs on C before step 0, or with
  // DISTATTN_RING_PACK=side on a greatest-priority side stream X beside it, the first exchange then ordered after X.
  // Step 0 (this rank's own K|V) reads the caller's k, v either way. Declared last: X's destructor (C waits for X)
  // runs first, before the frees and the K|V idle mark.
  const bool pack_side = pack_on_side_stream();
  const bool sends = U.size() > 1;
  // RoPE (RingConfig::rope): q and k rotated in place at their global positions before anything reads them, on C.
  // k in one launch that also writes the send buffer's K part (k read once, and no pack of k), q in that launch too;
  // or, where the own step's forward takes the fused path (flash_attention_forward_rope_fuses: from 8192 local rows
  // on), q inside that step's launch, beside the attention (its helpers rotate q only). This comes before the ALiBi
  // norms (they must see rotated values; ALiBi never takes the fused path) and before a side stream follows C (the
  // first send reads the rotated K).
  bool rope_q_in_own_step = false;
  if (rope_on()) {
    const RingStep& own = schedule_.steps[0];
    if (U[0] == 0 && !own.skipped() && config_.alibi_slopes == nullptr) {
      AttnParams p0 = step_params(q, k, v, own);  // as the loop below builds step 0's call
      p0.lse = run_lse;
      p0.o = direct ? o : acc_view;
      p0.persistent_max_rows = step_persistent_max_rows(p0.mask);
      rope_q_in_own_step = flash_attention_forward_rope_fuses(p0, config_.rope);
    }
    const TensorView k_send = sends ? device_view(kv[0], config_.dtype, B, Sl, Hkv, D) : TensorView{};
    rope_shards(rope_q_in_own_step ? TensorView{} : q, k, k_send, /*inverse=*/false, stream);
  }
  // The norms of the own k and of q (on C, before the side stream follows C), and a copy of the own k's into the
  // held-k place that the first send carries.
  const float* own_k_norms = nullptr;
  const float* q_norms = nullptr;
  if (alibi_merge) {
    float* own = reinterpret_cast<float*>(kv[0] + send_bytes);
    flash_attention_alibi_norms(q, k, own, stream);
    DISTATTN_CUDA_CHECK(cudaMemcpyAsync(kv[0] + kv_bytes, own, k_norm_bytes, cudaMemcpyDeviceToDevice, stream));
    own_k_norms = own;
    q_norms = own + B * Hkv;
  }
  // The side stream exists only for DISTATTN_RING_PACK=side (creating one per call costs a stream and four events).
  std::optional<SideStream> side;
  if (sends && !pack_side) {
    if (!rope_on()) detail::pack_view(k, kv[0], stream);  // with RoPE the rotation wrote it
    detail::pack_view(v, kv[0] + nkv * es, stream);
  }
  if (sends && pack_side) {
    side.emplace(stream, true);
    side->follow_main();  // X after C's wait for the previous call's last use of the buffer (and after the RoPE)
    if (!rope_on()) detail::pack_view(k, kv[0], side->get());
    detail::pack_view(v, kv[0] + nkv * es, side->get());
    trace.mark("packed (X)", side->get());
  }

  last_forward_ = RingCallStats();
  last_forward_.steps_run = static_cast<int>(U.size());
  last_forward_.alibi_merge_cutoff = alibi_merge;
  last_forward_.rope_q_in_own_step = rope_q_in_own_step;
  int cur = 0;
  for (size_t i = 0; i < U.size(); ++i) {
    const int s = U[i];
    const bool more = i + 1 < U.size();
    if (more) {
      trace.mark("post " + std::to_string(i) + " (N)", comm_stream);
      // The first send reads kv[0] as packed on X; later ones what arrived (ordered on C by its wait).
      t = post_jump("ring forward K|V exchange", U[i + 1], kv[cur], kv[1 - cur], send_bytes, U[i + 1] - s,
                    i == 0 && side ? side->get() : stream);
      trace.mark("posted " + std::to_string(i) + " (N)", comm_stream);
      ++last_forward_.kv_exchanges;
    }
    const RingStep& st = schedule_.steps[static_cast<size_t>(s)];
    if (!st.skipped()) {
      ++last_forward_.computed_steps;
      // Step 0 is this rank's own K|V: the caller's tensors (the packed copy is only for sending; with
      // DISTATTN_RING_PACK=side it may still be in flight on X, and with nothing to send it is never made).
      AttnParams p = s == 0 ? step_params(q, k, v, st)
                            : step_params(q, device_view(kv[cur], config_.dtype, B, Sl, Hkv, D),
                                          device_view(kv[cur] + nkv * es, config_.dtype, B, Sl, Hkv, D), st);
      p.lse = run_lse;
      // Banded / block-sparse steps never run the persistent forward (step_persistent_max_rows). Measured on 2 H200s
      // (bench/results/2026-11-23_h200x2_s9_ring_persistent): persistent up to 8K local rows made the 16K causal
      // forward 2.21 -> 3.02 ms (exposed communication 9% -> 33%, even with the K|V hops on the copy engine); and at 4K
      // local rows, where steps used to be persistent, never persistent runs the 8K causal forward in 0.65 ms instead
      // of 0.82 (fwd+bwd 3.13 instead of 3.35); full-mask steps keep session 8's limit (4K local rows).
      p.persistent_max_rows = step_persistent_max_rows(p.mask);
      if (alibi_merge) {  // k norms of the held shard: copied above for step 0 (cur = 0), received with it later
        p.alibi_merge.kv_norm_sq_max = reinterpret_cast<const float*>(kv[cur] + kv_bytes);
        p.alibi_merge.own_kv_norm_sq_max = own_k_norms;
        p.alibi_merge.q_norm_sq_max = q_norms;
      }
      if (direct) {
        p.o = o;  // the only computed step: plain mode into the caller's o
      } else {
        p.o = acc_view;
        p.accumulate = static_cast<int>(i) != first_computed;
        if (final_into_o && static_cast<int>(i) == last_computed) p.o_final = o;
      }
      trace.mark("compute " + std::to_string(i) + " start (C)", stream);
      if (s == 0 && rope_q_in_own_step) {
        flash_attention_forward_rope_q(p, config_.rope, stream);  // q rotated in this launch; k already is
      } else {
        flash_attention_forward(p, stream);
      }
      trace.mark("compute " + std::to_string(i) + " end (C)", stream);
    }
    if (more) {
      comm_.wait_exchange(t, stream);
      trace.mark("waited " + std::to_string(i) + " (C)", stream);
      cur = 1 - cur;
    }
  }
  if (n_computed == 0) {
    DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc_o.get(), 0, static_cast<size_t>(B * Sl * Hq * D) * sizeof(float), stream));
    detail::fill_f32(run_lse, B * Hq * Sl, -std::numeric_limits<float>::infinity(), stream);
  }
  if (need_acc && !final_into_o) detail::convert_packed_to_view(acc_o.get(), DType::kFloat32, o, stream);
  trace.mark("end (C)", stream);
  trace.dump();
}

void RingAttention::backward_cuda(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                                  const TensorView& o, const float* lse, const TensorView& dq, const TensorView& dk,
                                  const TensorView& dv, CUstream_st* stream_in) {
  // A null stream is the legacy default stream; name it explicitly so the exchange is ordered against it
  // (the communicator treats a null stream as "no ordering").
  const cudaStream_t stream = stream_in != nullptr ? stream_in : cudaStreamLegacy;
  const int64_t B = config_.batch, Sl = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const int P = comm_.size();
  const size_t es = dtype_size(config_.dtype);
  const int64_t nkv = B * Sl * Hkv * D;
  const size_t kv_bytes = 2 * static_cast<size_t>(nkv) * es;
  const DType gtype = config_.grad_travel == GradTravel::kFloat32 ? DType::kFloat32 : DType::kBFloat16;
  const size_t gbytes = 2 * static_cast<size_t>(nkv) * dtype_size(gtype);
  // The home hop carries the complete gradient: in dk/dv's own 16-bit dtype when both have it, rounded once by
  // the last add exactly as the final conversion would round it (identical results, half the bytes of fp32 on the
  // one hop that nothing overlaps); otherwise in the travel dtype.
  // With the own step split (part B is added at home, see the header comment) the hop carries the travel dtype.
  const std::vector<int>& U = schedule_.useful_steps;
  // The own step in two parts (header comment): by kv rows (DISTATTN_RING_BWD_OWN=split) or by kv heads (heads;
  // needs two kv heads, else the step stays whole). Part A runs first (step 0), part B after the last remote step.
  const bool dense_own = schedule_.steps[0].blocks == nullptr && U.size() >= 2 && U[0] == 0;
  const bool split =
      dense_own && ((bwd_own_split_ == kOwnSplitRows && Sl >= 2) || (bwd_own_split_ == kOwnSplitHeads && Hkv >= 2));
  const OwnPart whole_step{0, Sl, 0, Hkv};
  OwnPart part_a = whole_step, part_b = whole_step;
  int64_t own_row = 0, own_head = 0;
  if (split && bwd_own_split_ == kOwnSplitRows) {
    own_row = own_split_row(Sl);  // part A: kv rows [own_row, Sl); part B: [0, own_row)
    part_a.r0 = part_b.r1 = own_row;
  } else if (split) {
    own_head = Hkv / 2;  // part A: kv heads [0, own_head); part B: [own_head, Hkv)
    part_a.h1 = part_b.h0 = own_head;
  }
  // The dense ring's own step always has visible pairs (the diagonal), so `split` is the same on every rank.
  DISTATTN_CHECK(!split || !schedule_.steps[0].skipped(), "ring backward: the own step of a dense ring is empty");
  const DType home_dtype =
      (!split && dk.dtype == dv.dtype && dk.dtype != DType::kFloat32 && dtype_size(dk.dtype) <= dtype_size(gtype))
          ? dk.dtype
          : gtype;
  const bool home_direct_ok = home_direct_allowed();  // reads the environment: throws before anything is enqueued
  const bool side_high = bwd_side_high_priority();    // the same
  use_comm_device(comm_);

  unsigned char* kv_base = kv_double_buffer(kv_bytes);  // persistent K|V window (see forward_cuda)
  unsigned char* kv[2] = {kv_base, kv_base + kv_bytes};
  // The travelling dK|dV accumulators [dsend | drecv], gbytes each: persistent, a window of their own (see the
  // header comment); C waits for the previous call's last use of them (kv_idle_) below.
  unsigned char* grad_base = grad_double_buffer(gbytes);
  unsigned char* const dsend = grad_base;
  unsigned char* const drecv = grad_base + gbytes;
  // Where the home hop lands. On NCCL (no dK|dV window): straight in the caller's dk and dv when they are packed and
  // of the home dtype (two shifts, one per half; no conversion pass after it), else in drecv and converted. On the
  // copy engine always in drecv (the same half), then converted: a push needs the receive range mapped in the
  // sender's address space (CUDA IPC of a registered window), which the caller's dk, dv are not (they may be
  // stream-ordered pool memory, which cannot be exported, and opening a handle per call costs a collective and
  // milliseconds); and the transport of an exchange must be the same on every rank, while whether dk, dv are packed
  // is a per-rank fact (their strides are not agreed): a per-rank choice between the window and NCCL would pair a
  // copy-engine push with an NCCL receive and hang. Which transport the accumulators take is the same everywhere
  // (the registration decides for all ranks), so this choice is too; on NCCL the landing address is local anyway.
  const bool grad_on_ce = std::string(comm_.exchange_path(dsend, drecv, gbytes)) == "ce";
  const bool home_direct = home_direct_ok && !split && !grad_on_ce && is_packed_as(dk, home_dtype, B, Sl, Hkv, D) &&
                           is_packed_as(dv, home_dtype, B, Sl, Hkv, D);
  RingTrace trace("bwd", comm_.rank());
  const auto* nccl_comm = dynamic_cast<const NcclCommunicator*>(&comm_);
  const cudaStream_t comm_stream = nccl_comm != nullptr ? nccl_comm->stream() : stream;
  trace.mark(std::string("begin (C; dK|dV on ") + (grad_on_ce ? "ce" : "nccl") + ")", stream);
  const bool pack_side = pack_on_side_stream();
  DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(stream, kv_idle_, 0));
  kv_path_ = comm_.exchange_path(kv[0], kv[1], kv_bytes);
  KvIdle idle(kv_idle_, stream);
  // The pack is only for sending: step 0 (this rank's own K|V) always computes on the caller's k, v (also when nothing
  // is sent and the buffer is never filled: a rank whose only useful step is its own).
  if (!pack_side && schedule_.useful_steps.size() > 1) {
    detail::pack_view(k, kv[0], stream);
    detail::pack_view(v, kv[0] + nkv * es, stream);
  }
  PooledScratch delta(static_cast<size_t>(B * Hq * Sl) * sizeof(float), stream);
  detail::row_dot(dout, o, delta.get<float>(), stream);  // once for all steps
  // dQ accumulator, fp32 head-major [B, Hq, Sl, D] seen as [B, Sl, Hq, D] with strides (Hq*Sl*D, D, Sl*D, 1):
  // rows D apart, so the engine's accumulate mode reduces into it directly (no scratch, no conversion).
  const size_t dq_bytes = static_cast<size_t>(B * Sl * Hq * D) * sizeof(float);
  PooledScratch acc_dq(dq_bytes, stream);
  DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc_dq.get(), 0, dq_bytes, stream));
  TensorView acc_dq_view = device_view(acc_dq.get(), DType::kFloat32, B, Sl, Hq, D);
  acc_dq_view.stride = {Hq * Sl * D, D, Sl * D, 1};
  // This step's dK | dV, fp32, double-buffered: step i writes scratch[i % 2] on C (overwrite_dk_dv) while the side
  // stream X adds step i-1's into the travelling accumulator.
  const size_t scratch_bytes = 2 * static_cast<size_t>(nkv) * sizeof(float);
  PooledScratch scratch0(scratch_bytes, stream), scratch1(scratch_bytes, stream);
  float* scratch[2] = {scratch0.get<float>(), scratch1.get<float>()};
  SideStream side(stream, pack_side || side_high);  // after the buffers: joins C before they are freed
  PendingExchanges pending(comm_, stream);          // after the buffers: destroyed before them
  ExchangeTicket& tk = pending.tickets[0];
  ExchangeTicket& tg = pending.tickets[1];           // the travelling accumulator
  ExchangeTicket* const home = &pending.tickets[2];  // the home hop's pieces
  // Pieces of the home hop (kHomeSplit above): dK and dV each in home_split row ranges of the flattened [B * Sl] rows;
  // piece p = (half h = p / home_split, range q = p % home_split) covers flat rows [R q / home_split, R (q + 1) /
  // home_split), R = B * Sl, i.e. elements [h nkv + g0 Hkv D, h nkv + g1 Hkv D) of [dK | dV].
  const int home_split = split ? 1 : kHomeSplit;
  const int home_pieces = 2 * home_split;
  auto piece_rows = [&](int p, int64_t* g0, int64_t* g1) {
    const int q = p % home_split;
    *g0 = B * Sl * q / home_split;
    *g1 = B * Sl * (q + 1) / home_split;
  };
  auto piece_first = [&](int p, int64_t g0) { return (p / home_split) * nkv + g0 * Hkv * D; };  // element offset
  bool dq_converted = false;
  const cudaStream_t X = side.get();
  if (U.size() > 1) {    // scratch[1] is free; the K|V is packed for the first send on X (pack_side), beside step 0
    side.follow_main();  // after its allocation (and C's wait for the previous call's last use of the K|V buffer)
    side.mark_free(1);
    if (pack_side) {
      detail::pack_view(k, kv[0], X);
      detail::pack_view(v, kv[0] + nkv * es, X);
    }
    trace.mark("scratch1 free, packed (X)", X);
  }
  trace.mark("set up (C)", stream);

  const int L = schedule_.last_useful_step;
  last_backward_ = RingCallStats();
  last_backward_.steps_run = static_cast<int>(U.size());
  last_backward_.grad_home_shift = ((-L) % P + P) % P;
  last_backward_.own_split_row = own_row;
  last_backward_.own_split_kv_head = own_head;
  // Scratch buffers are marked free after their add when a later compute takes them again: steps i + 2, and part B
  // (which takes the buffer of step n - 2, n = U.size()) counts as one more use.
  const size_t scratch_uses = U.size() + (split ? 1 : 0);
  // One engine call of the backward on part `w` of the step (whole_step, or a part of the own step): kv rows [r0, r1)
  // of kv heads [h0, h1) of (sk, sv), the step's positions sliced alike, and the q heads of those kv heads (GQA group
  // g = Hq / Hkv: q heads [g h0, g h1); lse and delta [B, Hq, Sl] are addressed from head g h0 with their full
  // strides); its dK|dV written into the same rows and heads of the fp32 scratch `into` ([dK | dV], each
  // [B, Sl, Hkv, D]), its dQ added into acc_dq.
  auto step_backward = [&](const TensorView& sk, const TensorView& sv, const RingStep& st, float* into,
                           const OwnPart& w) {
    const int64_t g = Hq / Hkv, qh0 = w.h0 * g, qh1 = w.h1 * g;
    AttnBwdParams bp;
    bp.fwd = step_params(q.head_range(qh0, qh1), part_view(sk, w), part_view(sv, w), st);
    if (w.r0 != 0 || w.r1 != Sl) bp.fwd.kv_pos = st.kv_pos.slice(w.r0, w.r1);
    if (bp.fwd.alibi_slopes != nullptr) bp.fwd.alibi_slopes += qh0;
    bp.fwd.o = o.head_range(qh0, qh1);
    bp.fwd.lse = const_cast<float*>(lse) + qh0 * Sl;
    bp.fwd.lse_batch_stride = Hq * Sl;
    bp.fwd.lse_head_stride = Sl;
    bp.dout = dout.head_range(qh0, qh1);
    bp.dq = acc_dq_view.head_range(qh0, qh1);
    bp.dk = part_view(device_view(into, DType::kFloat32, B, Sl, Hkv, D), w);
    bp.dv = part_view(device_view(into + nkv, DType::kFloat32, B, Sl, Hkv, D), w);
    bp.accumulate = true;                      // dQ adds into acc_dq
    bp.overwrite_dk_dv = true;                 // dK|dV write the scratch: no clearing pass
    bp.delta = delta.get<float>() + qh0 * Sl;  // the lse strides
    flash_attention_backward(bp, stream);
  };
  // Part B of the own step (split), into the scratch buffer step n-2 used (free after its add):
  // enqueued on C right after the last remote step's compute, before the host blocks on any hop, so that C goes on
  // computing while X adds and N sends the accumulator home.
  auto enqueue_part_b = [&] {
    const int b = static_cast<int>(U.size() % 2);
    side.main_waits_free(b);
    trace.mark("own part B start (C)", stream);
    step_backward(k, v, schedule_.steps[0], scratch[b], part_b);
    trace.mark("own part B end (C)", stream);
  };
  int cur = 0;
  // Per step i (buffer b = i % 2), in host order:
  //   C: [wait until scratch[b] is free (initially for b = 1, else after step i-2's add)] write step i's dK|dV into
  //      scratch[b] (+ dQ into acc_dq)
  //   X: wait C (compute i done); wait the accumulator of step i-1 (drecv); dsend = drecv + scratch[b]; mark scratch[b]
  //      free; N: send dsend on (after X), receive the next accumulator into drecv
  // The free mark after X's add is what step i+2's compute waits for; the add overlaps step i+1's compute.
  for (size_t i = 0; i < U.size(); ++i) {
    const int s = U[i];
    const bool more = i + 1 < U.size();
    float* scr = scratch[i % 2];
    if (more) {
      // The first send reads kv[0] as packed on X; later ones what arrived (ordered on C by its wait).
      tk = post_jump("ring backward K|V exchange", U[i + 1], kv[cur], kv[1 - cur], kv_bytes, U[i + 1] - s,
                     i == 0 && pack_side ? X : stream);
      trace.mark("K|V posted " + std::to_string(i) + " (N)", comm_stream);
      ++last_backward_.kv_exchanges;
    }
    const RingStep& st = schedule_.steps[static_cast<size_t>(s)];
    if (!st.skipped()) {
      ++last_backward_.computed_steps;
      if (i >= 1) side.main_waits_free(static_cast<int>(i % 2));  // free (initially / after step i-2's add)
      // Step 0 is this rank's own K|V: the caller's tensors (the packed copy is only for sending; with
      // DISTATTN_RING_PACK=side it may still be in flight on X, and with nothing to send it is never made). Split:
      // part A of the own step.
      const bool own_a = s == 0 && split;
      trace.mark("compute " + std::to_string(i) + (own_a ? " (own part A)" : "") + " start (C)", stream);
      if (s == 0) {
        step_backward(k, v, st, scr, own_a ? part_a : whole_step);
      } else {
        step_backward(device_view(kv[cur], config_.dtype, B, Sl, Hkv, D),
                      device_view(kv[cur] + nkv * es, config_.dtype, B, Sl, Hkv, D), st, scr, whole_step);
      }
      trace.mark("compute " + std::to_string(i) + " end (C)", stream);
    }
    side.follow_main();                     // X after this step's compute (and everything before it on C)
    if (!more && split) enqueue_part_b();   // C: part B, not waited for by X (follow_main was recorded before it)
    if (i > 0) comm_.wait_exchange(tg, X);  // drecv holds the accumulator of step i-1; dsend is free
    const void* incoming = i > 0 ? drecv : nullptr;
    const float* mine = st.skipped() ? nullptr : scr;
    if (more) {
      detail::travel_add(incoming, gtype, mine, dsend, gtype, 2 * nkv, X);
      if (i == 0 && split) {
        // Part A wrote only its own rows / heads of the scratch, and the whole accumulator travels: part B's range
        // starts at zero (B is added at home). On X, beside step 1's compute, instead of clearing the scratch on C.
        for (int h = 0; h < 2; ++h)
          zero_part(dsend + static_cast<size_t>(h * nkv) * dtype_size(gtype), dtype_size(gtype), B, Sl, Hkv, D, part_b,
                    X);
      }
      if (!st.skipped() && i + 2 < scratch_uses) side.mark_free(static_cast<int>(i % 2));  // read by the add above
      // On with the K|V's jump.
      tg = post_jump("ring backward dK|dV exchange", s, dsend, drecv, gbytes, U[i + 1] - s, X);
    } else {
      // After the last useful step the accumulator is complete and goes straight home to rank r - L, in pieces (dK's,
      // then dV's; see kHomeSplit): piece p's hop (N) runs while X adds piece p + 1. The last add writes the home hop's
      // dtype (see home_dtype), dsend = [dK | dV] packed in it; each piece lands in the caller's dk / dv (home_direct)
      // or in the same range of drecv. Landing never overlaps what a later add still reads: piece p lands in bytes
      // [e0 hs, e1 hs) of drecv and the adds after it read from byte e1 gs on (hs <= gs).
      static const char* const kPieceOp[2][kMaxHomePieces] = {
          {"ring backward dK home", "ring backward dV home"},
          {"ring backward dK home (first rows)", "ring backward dK home (last rows)",
           "ring backward dV home (first rows)", "ring backward dV home (last rows)"}};
      const size_t gs = dtype_size(gtype), hs = dtype_size(home_dtype);
      for (int p = 0; p < home_pieces; ++p) {
        int64_t g0 = 0, g1 = 0;
        piece_rows(p, &g0, &g1);
        const int h = p / home_split;
        const int64_t e0 = piece_first(p, g0), n = (g1 - g0) * Hkv * D;
        unsigned char* send = dsend + static_cast<size_t>(e0) * hs;
        detail::travel_add(incoming != nullptr ? drecv + static_cast<size_t>(e0) * gs : nullptr, gtype,
                           mine != nullptr ? mine + e0 : nullptr, send, home_dtype, n, X);
        void* recv = home_direct ? static_cast<unsigned char*>(h == 0 ? dk.data : dv.data) +
                                       static_cast<size_t>(g0 * Hkv * D) * hs
                                 : drecv + static_cast<size_t>(e0) * hs;
        home[p] = comm_.post_shift(kPieceOp[home_split - 1][p], s, send, recv, static_cast<size_t>(n) * hs, -L, X);
        trace.mark(std::string("add + ") + kPieceOp[home_split - 1][p] + " posted (N, " +
                       (home_direct ? "into dk/dv" : "into drecv") + ")",
                   comm_stream);
        if (p == 0 && !split) {
          // dQ is complete with the last compute (it never travels). Its conversion goes on C after the first piece's
          // add (not beside it: both are memory-bound, and the add gates the first hop), so it runs beside the hops.
          side.main_follows();
          detail::convert_strided_to_view(acc_dq.get(), DType::kFloat32, Hq * Sl * D, D, Sl * D, dq, stream);
          trace.mark("dq converted (C)", stream);
          dq_converted = true;
        }
      }
    }
    if (more) trace.mark("add + dK|dV posted " + std::to_string(i) + " (N)", comm_stream);
    ++last_backward_.grad_exchanges;  // the home hop counts once (one exchange, posted in two halves)
    if (more) {
      comm_.wait_exchange(tk, stream);
      trace.mark("K|V waited " + std::to_string(i) + " (C)", stream);
      cur = 1 - cur;
    }
  }
  // Split: dQ is complete after part B; its conversion goes on C right after it, before C waits for the home hop, so it
  // runs beside the last add (X) and the hop (N). (Otherwise it was enqueued after the first home piece's add.)
  if (!dq_converted) {
    detail::convert_strided_to_view(acc_dq.get(), DType::kFloat32, Hq * Sl * D, D, Sl * D, dq, stream);
    trace.mark("dq converted (C)", stream);
  }
  if (split) {
    const int b = static_cast<int>(U.size() % 2);  // part B's scratch buffer (enqueued in the loop above)
    // Part A's range of dK, dV (rows [own_row, Sl) or heads [0, own_head)) is complete when its half arrives: converted
    // on X, beside part B. drecv = [dK | dV], each packed [B, Sl, Hkv, D] of the travel dtype; scratch[b] the same
    // layout in fp32.
    const size_t gs = dtype_size(gtype);
    const int64_t rs = Hkv * D, bs = Sl * rs;  // row and batch strides of the packed buffers (elements)
    const unsigned char* recv_half[2] = {drecv, drecv + static_cast<size_t>(nkv) * gs};
    const float* b_scratch[2] = {scratch[b], scratch[b] + nkv};
    const TensorView* out[2] = {&dk, &dv};
    auto first = [&](const OwnPart& w) { return w.r0 * rs + w.h0 * D; };  // element offset of a part's range
    for (int h = 0; h < 2; ++h) {
      comm_.wait_exchange(home[h], X);  // one piece per half when split
      detail::sum_strided_to_view(recv_half[h] + static_cast<size_t>(first(part_a)) * gs, gtype, nullptr, bs, rs, D,
                                  part_view(*out[h], part_a), X);
      trace.mark(std::string(h == 0 ? "dK" : "dV") + " home waited, part A's range converted (X)", X);
    }
    // Part B's range: home hop + part B, rounded once.
    side.main_follows();
    for (int h = 0; h < 2; ++h)
      detail::sum_strided_to_view(recv_half[h] + static_cast<size_t>(first(part_b)) * gs, gtype,
                                  b_scratch[h] + first(part_b), bs, rs, D, part_view(*out[h], part_b), stream);
    trace.mark("part B's range summed (C)", stream);
    trace.mark("end (C)", stream);
    trace.dump();
    return;
  }
  // This rank's own dK, then dV, complete piece by piece (in dk / dv already when home_direct, else converted out of
  // drecv while the later pieces travel).
  for (int p = 0; p < home_pieces; ++p) {
    int64_t g0 = 0, g1 = 0;
    piece_rows(p, &g0, &g1);
    comm_.wait_exchange(home[p], stream);
    if (!home_direct)
      convert_flat_rows(drecv + static_cast<size_t>(piece_first(p, g0)) * dtype_size(home_dtype), home_dtype, g0, g1,
                        p / home_split == 0 ? dk : dv, stream);
    trace.mark("home piece " + std::to_string(p) + " waited (C)", stream);
  }
  trace.mark("end (C)", stream);
  trace.dump();
}

}  // namespace ring
}  // namespace distattn
