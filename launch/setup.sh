#!/usr/bin/env bash
# All set-up on a fresh machine: Debian packages (when missing), configure, build.
# Used by launch/bench.sh and launch/test.sh; safe to run again (it only does what is missing).
#   DISTATTN_BUILD_DIR   build folder (default: build)
#   DISTATTN_CUDA_ARCH   CUDA architectures (default: 90a; the mma.sync kernels also build for 80)
#   DISTATTN_JOBS        parallel build jobs (default: nproc)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DISTATTN_BUILD_DIR:-$here/build}
arch=${DISTATTN_CUDA_ARCH:-90a}
jobs=${DISTATTN_JOBS:-$(nproc)}

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v mpicxx >/dev/null || need+=(libopenmpi-dev openmpi-bin)
command -v mpirun >/dev/null || need+=(openmpi-bin)
[ -e /usr/include/boost/program_options.hpp ] || need+=(libboost-program-options-dev)
[ -e /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "# setup: installing ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break; done
fi
command -v nvcc >/dev/null || { echo "setup: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" \
        -DCMAKE_INSTALL_PREFIX="$build/install" >/dev/null
fi
echo "# setup: building in $build with $jobs jobs (CUDA arch $arch)"
cmake --build "$build" -j "$jobs"
