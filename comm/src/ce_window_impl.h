// Internal to comm/: the copy-engine window of NcclCommunicator and the driver entry points it uses
// (ce_window.cc). Not installed.
#pragma once

#include <cuda.h>          // CUresult, CUdeviceptr, CU_STREAM_WAIT_VALUE_GEQ
#include <cudaTypedefs.h>  // PFN_cuStreamWaitValue32 ...
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "distattn/comm/nccl_communicator.h"

namespace distattn {

// One registered window on this rank. Flag array (device memory of this rank, IPC-shared, 2 * size() uint32):
//   flags[q]          FREE  from rank q: the last sequence number for which rank q released its receive range to
//                      this rank (q is the rank this rank pushes to in that exchange)
//   flags[size() + q] READY from rank q: the last sequence number whose data rank q finished pushing into this
//                      rank's window
// Each entry has exactly one writer (rank q, from its communication stream, in sequence order), so it only grows.
struct NcclCommunicator::CeWindow {
  unsigned char* base = nullptr;  // this rank's window
  size_t bytes = 0;
  uint32_t* flags = nullptr;              // this rank's flags (cudaMalloc, owned)
  std::vector<unsigned char*> peer_base;  // per rank: its window as mapped here (own: base)
  std::vector<uint32_t*> peer_flags;      // per rank: its flags as mapped here (own: flags)
  std::vector<void*> opened;              // what cudaIpcOpenMemHandle returned (to close)
  uint32_t seq = 0;                       // the last sequence number posted on this window (every rank alike)
};

namespace ce {

// The driver's stream memory operations and address query, obtained through the runtime
// (cudaGetDriverEntryPointByVersion; no link against libcuda). `missing` names the first absent entry point.
struct DriverOps {
  PFN_cuStreamWaitValue32_v11070 wait32 = nullptr;
  PFN_cuStreamWriteValue32_v11070 write32 = nullptr;
  PFN_cuMemGetAddressRange_v3020 address_range = nullptr;
  PFN_cuDeviceGetAttribute_v2000 attribute = nullptr;
  std::string missing;
  bool ok() const { return missing.empty(); }
};
const DriverOps& driver_ops();  // looked up once (thread-safe static); never throws
// Polls the streams until all are idle or `seconds` passed; true when idle. Never throws (errors count as idle).
bool drain(cudaStream_t a, cudaStream_t b, double seconds) noexcept;

}  // namespace ce
}  // namespace distattn
