#!/usr/bin/env bash
# The where-to-learn scenes benchmark (Fashion-MNIST garments on crops of natural photos): runs
# make-scenes.py with the given arguments and the project's Python. Prints the cached folder on stdout
# (or, with --baselines, one JSON line). See make-scenes.py for the arguments and the output layout.
#   benches/learning/make-scenes.sh                 # the defaults: ~/.cache/lewel/scenes-<hash>
#   benches/learning/make-scenes.sh --baselines     # raw-pixel kNN / logistic regression of that folder
# Python: $PYTHON, else the project's .venv, else python3 (numpy and Pillow; torch for --baselines).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x "$here/../../.venv/bin/python" ]; then
  py=$here/../../.venv/bin/python
else
  py=python3
fi
die() { echo "make-scenes: error: $*" >&2; exit 1; }

# the inputs the arguments name (the .py checks them again, in detail)
fmnist=/usr/share/datasets/fashion-mnist photos=/usr/share/backgrounds/mate/nature baselines_dir=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --fmnist) fmnist=${args[i + 1]:-} ;;
    --fmnist=*) fmnist=${args[i]#--fmnist=} ;;
    --photos) photos=${args[i + 1]:-} ;;
    --photos=*) photos=${args[i]#--photos=} ;;
    --baselines) case ${args[i + 1]:-} in -*|'') ;; *) baselines_dir=${args[i + 1]} ;; esac ;;
    --baselines=*) baselines_dir=${args[i]#--baselines=} ;;
  esac
done
command -v "$py" >/dev/null 2>&1 || die "no Python ($py); run scripts/setup.sh or set PYTHON"
"$py" -c 'import numpy, PIL' 2>/dev/null || die "$py lacks numpy or Pillow; run scripts/setup.sh or set PYTHON"
if [ -z "$baselines_dir" ]; then
  [ -f "$fmnist/train-images-idx3-ubyte.gz" ] || [ -f "$fmnist/train-images-idx3-ubyte" ] ||
    die "no Fashion-MNIST in $fmnist (apt-get install dataset-fashion-mnist, or scripts/setup.sh, or --fmnist DIR)"
  [ -d "$photos" ] || die "no photos in $photos (apt-get install mate-backgrounds, or bash scripts/photos.sh, or --photos DIR)"
fi
exec "$py" "$here/make-scenes.py" "$@"
