#!/usr/bin/env bash
# Starts N processes of a lewel tool on this machine as one data-parallel run, with the variables torchrun
# sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT: a free port, or $MASTER_PORT).
#
#   scripts/launch-local.sh N TOOL [ARGS...]
#   scripts/launch-local.sh 2 pretrain --views v.npy --preset small-lewelb --device cpu --out run
#
# On CPU the processes join through Gloo (each with cores/N intra-op threads unless OMP_NUM_THREADS is set); with CUDA each takes cuda:LOCAL_RANK and NCCL. Rank 0 writes stdout, events and checkpoints. When one
# process fails the others stop at their next exchange; the script exits with the first non-zero status (or 0).
# TOOL is looked up in $LEWEL_BIN (default target/release next to this script), then on PATH.
set -uo pipefail
usage() { echo "usage: scripts/launch-local.sh N TOOL [ARGS...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
n=$1; shift
[[ "$n" =~ ^[1-9][0-9]*$ ]] || usage
tool=$1; shift
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${LEWEL_BIN:-$top/target/release}
if [ -x "$bin/$tool" ]; then exe="$bin/$tool"; else exe=$(command -v "$tool") || { echo "launch-local: $tool not found in $bin nor on PATH" >&2; exit 2; }; fi
# As torchrun, keep N processes from fighting over the cores: each gets cores/N intra-op threads unless
# OMP_NUM_THREADS says otherwise (Gloo's waiting ranks would otherwise starve the working ones).
cores=$(nproc 2>/dev/null || echo 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / n > 0 ? cores / n : 1 ))}
port=${MASTER_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; }
# Ctrl-C reaches every process of the terminal's group by itself; a TERM to this script is passed on.
trap 'wait; exit 130' INT
trap 'cleanup; wait; exit 143' TERM
for ((r = 0; r < n; r++)); do
  RANK=$r LOCAL_RANK=$r WORLD_SIZE=$n LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$exe" "$@" &
  pids+=($!)
done
status=0
for ((k = 0; k < n; k++)); do
  wait -n
  rc=$?
  if [ $rc -ne 0 ] && [ $status -eq 0 ]; then status=$rc; fi
done
exit $status
