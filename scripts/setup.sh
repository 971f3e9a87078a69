#!/usr/bin/env bash
# Set up everything lewel needs to build, test and run, on a fresh machine. Idempotent: a second run
# takes seconds.
#
#   1. a Python virtual environment with the pinned torch (the carrier of libtorch for `tch`) and the
#      packages the interop tests use. It lives in a per-user cache keyed by the pinned versions
#      (~/.cache/lewel/...), linked from the project as `.venv`, so a fresh clone on the same machine
#      does not download 4.6 GB again;
#   2. the Debian packages the demo and tests use (dataset-fashion-mnist, jq, mate-backgrounds), when apt-get is
#      there;
#   3. `.cargo/config.toml` (git-ignored, machine-specific): LIBTORCH for torch-sys, and an rpath to
#      torch/lib so the built binaries run from any directory without LD_LIBRARY_PATH.
#
# Environment: LEWEL_CACHE overrides the cache folder; LEWEL_SKIP_APT=1 skips step 2.
set -euo pipefail

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
TIMM_VERSION=1.0.31
CUDA_CRT_VERSION=13.0.88
CUDA_CCCL_VERSION=13.0.85
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 ||
  die "python3 not found. Install Python 3.9 or newer (Debian: apt-get install python3 python3-venv) and run scripts/setup.sh again."
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cache=${LEWEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lewel}
venv="$cache/venv-py$pyver-torch$TORCH_VERSION-tv$TORCHVISION_VERSION"
stamp="$venv/.lewel-complete"

# --- 1. the virtual environment -------------------------------------------------------------------
if [ ! -f "$stamp" ]; then
  say "creating $venv (torch==$TORCH_VERSION is about 4.6 GB with its CUDA libraries: a few minutes)"
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv" ||
    die "python3 -m venv failed. On Debian: apt-get install python3-venv, then run scripts/setup.sh again."
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2 ||
    say "warning: could not upgrade pip; going on with the one there"
  "$venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" numpy safetensors pillow >&2 ||
    die "pip could not install torch==$TORCH_VERSION from PyPI. Check the network and the free disk space (about 10 GB needed under $cache), then run scripts/setup.sh again."
  # --no-deps: torchvision must not pull another torch.
  "$venv/bin/python" -m pip install --quiet --no-deps "torchvision==$TORCHVISION_VERSION" >&2 ||
    die "pip could not install torchvision==$TORCHVISION_VERSION. Check the network, then run scripts/setup.sh again."
  got=$("$venv/bin/python" -c 'import torch, torchvision; print(torch.__version__.split("+")[0], torchvision.__version__.split("+")[0])') ||
    die "the new environment cannot import torch and torchvision; remove $venv and run scripts/setup.sh again."
  [ "$got" = "$TORCH_VERSION $TORCHVISION_VERSION" ] ||
    die "expected torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION, got $got"
  touch "$stamp"
fi
# timm, for the export interop tests (--no-deps: it must not pull another torch; its two small
# dependencies explicitly). Also added to environments made before it was needed.
if ! "$venv/bin/python" -c 'import timm' 2>/dev/null; then
  say "adding timm==$TIMM_VERSION to $venv (export interop tests)"
  "$venv/bin/python" -m pip install --quiet --no-deps "timm==$TIMM_VERSION" >&2 &&
    "$venv/bin/python" -m pip install --quiet pyyaml huggingface_hub >&2 ||
    die "pip could not install timm==$TIMM_VERSION. Check the network, then run scripts/setup.sh again."
fi
# The CUDA headers that the c10d shim (ffi/, ProcessGroupNCCL) compiles against: the torch wheel brings the
# CUDA runtime's headers but not `crt/` (nvidia-cuda-crt) nor `nv/target` (nvidia-cuda-cccl); both are small.
nv_inc="$venv/lib/python$pyver/site-packages/nvidia/cu13/include"
if [ -d "$nv_inc" ] && { [ ! -f "$nv_inc/crt/host_config.h" ] || [ ! -f "$nv_inc/nv/target" ]; }; then
  say "adding the CUDA compiler headers (nvidia-cuda-crt, nvidia-cuda-cccl) to $venv (NCCL support)"
  "$venv/bin/python" -m pip install --quiet --no-deps "nvidia-cuda-crt==$CUDA_CRT_VERSION" "nvidia-cuda-cccl==$CUDA_CCCL_VERSION" >&2 ||
    die "pip could not install nvidia-cuda-crt / nvidia-cuda-cccl. Check the network, then run scripts/setup.sh again."
fi
ln -sfn "$venv" "$top/.venv"
torch_dir=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
[ -f "$torch_dir/lib/libtorch_cpu.so" ] || die "$torch_dir/lib/libtorch_cpu.so is missing; remove $venv and run scripts/setup.sh again."

# --- 2. Debian packages ---------------------------------------------------------------------------
apt_want=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || apt_want+=(dataset-fashion-mnist)
command -v jq >/dev/null 2>&1 || apt_want+=(jq)   # experiments/Makefile and its test read JSON lines with jq
# the natural photos of the where-to-learn scenes (benches/learning/make-scenes.sh) and of the benchmarks
[ -d /usr/share/backgrounds/mate/nature ] || apt_want+=(mate-backgrounds)
if [ "${LEWEL_SKIP_APT:-0}" != 1 ] && [ ${#apt_want[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    say "installing ${apt_want[*]} (the demo's data set; jq for experiments/; the scenes' photos)"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_want[@]}"; } >&2 ||
      say "warning: could not install ${apt_want[*]}; the demo falls back to the bundled fixtures/fashion-mnist-tiny"
  else
    say "warning: no apt-get to install ${apt_want[*]}; the demo falls back to the bundled fixtures/fashion-mnist-tiny"
  fi
fi

# --- 3. cargo configuration -----------------------------------------------------------------------
mkdir -p "$top/.cargo"
cfg="$top/.cargo/config.toml"
want=$(cat <<TOML
# Written by scripts/setup.sh for this machine (git-ignored). Run it again after moving the project.
[env]
LIBTORCH = "$torch_dir"
LIBTORCH_CXX11_ABI = "1"

[build]
rustflags = ["-C", "link-arg=-Wl,-rpath,$torch_dir/lib", "-C", "link-arg=-Wl,--no-as-needed"]
TOML
)
if [ ! -f "$cfg" ] || [ "$(cat "$cfg")" != "$want" ]; then
  printf '%s\n' "$want" >"$cfg"
  say "wrote $cfg"
fi
say "ready: torch $TORCH_VERSION at $torch_dir"
