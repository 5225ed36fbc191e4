#!/usr/bin/env bash
# Launches a distattn program with one MPI rank per GPU.
#
#   launch/mpirun.sh [-n RANKS] [--hostfile FILE] [--] PROGRAM [ARGS...]
#
#   one node:      launch/mpirun.sh build/bench/distattn_bench -o ring -b 32K -e 128K -f 2
#                  (RANKS defaults to the number of GPUs nvidia-smi lists on this node)
#   several nodes: launch/mpirun.sh --hostfile hosts -n 16 build/bench/distattn_bench -o ring ...
#                  with a hostfile of "nodeA slots=8" lines (Open MPI syntax), the same build path on every node
#
# Each rank picks its GPU itself from its node-local rank (MPI_Comm_split_type), so no CUDA_VISIBLE_DEVICES
# juggling is needed. Forwarded to every rank with -x: every NCCL_* and DISTATTN_* variable set here, plus
# CUDA_VISIBLE_DEVICES and LD_LIBRARY_PATH when set. NCCL_NVLS_ENABLE defaults to 0 (NVLink multicast off:
# it can take shared hosts' GPUs out of service). Extra mpirun options: MPIRUN_ARGS="...".
set -euo pipefail

ranks=""
hostfile=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n | -np) ranks=$2; shift 2 ;;
    --hostfile) hostfile=$2; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "launch/mpirun.sh: no program given (see --help)" >&2; exit 2; }

if [ -z "$ranks" ]; then
  if [ -n "$hostfile" ]; then
    ranks=$(awk '/slots=/ { split($2, a, "="); n += a[2] } END { print n + 0 }' "$hostfile")
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    ranks=$(nvidia-smi -L | wc -l)
  else
    ranks=1
  fi
fi
[ "$ranks" -ge 1 ] 2>/dev/null || { echo "launch/mpirun.sh: bad rank count '$ranks'" >&2; exit 2; }

export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
forward=()
for name in $(env | sed -n 's/^\(NCCL_[A-Za-z0-9_]*\)=.*/\1/p; s/^\(DISTATTN_[A-Za-z0-9_]*\)=.*/\1/p'); do
  forward+=(-x "$name")
done
for name in CUDA_VISIBLE_DEVICES LD_LIBRARY_PATH; do
  [ -n "${!name:-}" ] && forward+=(-x "$name")
done

args=(-np "$ranks" --bind-to none)
[ -n "$hostfile" ] && args+=(--hostfile "$hostfile")
[ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
# shellcheck disable=SC2086
exec mpirun "${args[@]}" "${forward[@]}" ${MPIRUN_ARGS:-} "$@"
