#!/usr/bin/env bash
# Times knn-probe and linear-probe against plain-PyTorch references of the same protocols
# (benches/probe/reference.py), on the same synthetic features, in the same run, same threads.
#
#   scripts/bench-probe.sh                         # 20k train / 5k val, 512-d, 100 classes
#   N_TRAIN=100000 DIM=2048 scripts/bench-probe.sh
#
# Env: N_TRAIN N_VAL DIM CLASSES (data), THREADS (default: all cores), BIN_DIR (default
# target/release, else target/debug), PYTHON (default .venv/bin/python). Prints a markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N_TRAIN=${N_TRAIN:-20000} N_VAL=${N_VAL:-5000} DIM=${DIM:-512} CLASSES=${CLASSES:-100}
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-$root/.venv/bin/python}
BIN_DIR=${BIN_DIR:-$root/target/release}
[[ -x $BIN_DIR/knn-probe ]] || BIN_DIR=$root/target/debug
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS THREADS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ref="$PYTHON $root/benches/probe/reference.py"

$ref make "$work" "$N_TRAIN" "$N_VAL" "$DIM" "$CLASSES"
wall() { local t0; t0=$(date +%s.%N); "$@" >"$work/out.jsonl"; echo "$(date +%s.%N) - $t0" | bc; }

k_ours=$(wall "$BIN_DIR/knn-probe" --train-features "$work/train.npy" --val-features "$work/val.npy" \
  --k 20 --temperature 0.07 --device cpu -q)
k_acc=$(jq -r 'select(.event == "eval") | "\(.top1_pct) / \(.top5_pct)"' "$work/out.jsonl")
k_ref=$(wall $ref knn "$work" 20 0.07 256)
k_ref_acc=$(jq -r '"\(.top1_pct) / \(.top5_pct)"' "$work/out.jsonl")

l_ours=$(wall "$BIN_DIR/linear-probe" --train-features "$work/train.npy" --val-features "$work/val.npy" \
  --preset small --epochs 10 --milestones 6,8 --batch-size 256 --lr 0.4 --eval-every 10 --device cpu -q)
l_acc=$(jq -r 'select(.event == "end") | "\(.final_top1_pct) / \(.final_top5_pct)"' "$work/out.jsonl")
l_ref=$(wall $ref linear "$work" 10 256 0.4)
l_ref_acc=$(jq -r '"\(.top1_pct) / \(.top5_pct)"' "$work/out.jsonl")

echo "Features: $N_TRAIN train / $N_VAL val, $DIM-d, $CLASSES classes; $THREADS threads; binaries: $BIN_DIR"
echo
echo "| probe | implementation | wall s (incl. start-up and loading) | top-1 / top-5 % |"
echo "|---|---|---|---|"
printf '| kNN k=20 T=0.07 | lewel knn-probe | %.2f | %s |\n' "$k_ours" "$k_acc"
printf '| kNN k=20 T=0.07 | PyTorch reference | %.2f | %s |\n' "$k_ref" "$k_ref_acc"
printf '| linear, 10 epochs, bs 256 | lewel linear-probe | %.2f | %s |\n' "$l_ours" "$l_acc"
printf '| linear, 10 epochs, bs 256 | PyTorch reference | %.2f | %s |\n' "$l_ref" "$l_ref_acc"

# Issue 6 target: linear-probe, lewel-b protocol (50 epochs, batch 256) over 60,000 x 512 cached
# features, under one minute on 2 cores. BIG=0 skips it.
if [[ ${BIG:-1} != 0 ]]; then
  big=$work/big && mkdir -p "$big"
  $ref make "$big" 60000 10000 512 100
  b_ours=$(wall "$BIN_DIR/linear-probe" --train-features "$big/train.npy" --val-features "$big/val.npy" \
    --protocol lewel-b --epochs 50 --device cpu -q)
  b_acc=$(jq -r 'select(.event == "result") | .final_top1_pct' "$work/out.jsonl")
  echo
  printf '| linear, lewel-b 50 epochs, 60,000 x 512 | lewel linear-probe | %.2f | %s |\n' "$b_ours" "$b_acc"
fi
