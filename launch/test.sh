#!/usr/bin/env bash
# The test command: set-up, build, then every test (cpu; gpu tests skip cleanly without a GPU;
# mpi tests run under mpirun), then install the package and build the downstream example against it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DISTATTN_BUILD_DIR:-$here/build}
"$here/launch/setup.sh"

echo "# tests: ctest in $build"
ctest --test-dir "$build" --output-on-failure -j "${DISTATTN_JOBS:-$(nproc)}" "$@"

echo "# tests: install + find_package(distattn) from examples/"
cmake --install "$build" --prefix "$build/install" >/dev/null
cmake -S "$here/examples" -B "$build/example" -DCMAKE_PREFIX_PATH="$build/install" \
      -DCMAKE_CUDA_ARCHITECTURES="${DISTATTN_CUDA_ARCH:-90a}" >/dev/null
cmake --build "$build/example" -j "${DISTATTN_JOBS:-$(nproc)}" >/dev/null
"$build/example/distattn_example"
