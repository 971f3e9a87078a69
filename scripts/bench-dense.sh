#!/usr/bin/env bash
# Times dense-probe's two protocols against plain-PyTorch loops of the same protocols (benches/dense/reference.py),
# on the same synthetic cached feature maps, in the same run, on the same device:
#   knn     N val images of 8x8 patches against the bank of N train images (N = 10,000: 640,000 patch queries
#           against a 640,000-patch bank), k 20, T 0.07; both sides free to chunk (ours: --query-chunk x
#           --bank-chunk blocks; PyTorch: QUERY_CHUNK queries against the whole bank);
#   linear  the mean epoch time over EPOCHS epochs of the same loop (batch 16 images, lr 0.1).
# Times exclude start-up and file loading (ours: the result's protocol_s and the epoch events' epoch_s).
#
#   scripts/bench-dense.sh                              # N=10000 DIM=128 CLASSES=11 on DEVICE=cuda if present
#   N=200 DEVICE=cpu scripts/bench-dense.sh             # a quick check
#
# Env: N DIM CLASSES EPOCHS QUERY_CHUNK BANK_CHUNK DEVICE (cpu|cuda; default cuda when available),
# THREADS (default: all cores), BIN_DIR (default target/release, else target/debug), PYTHON (.venv/bin/python).
# Prints a markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-10000} DIM=${DIM:-128} CLASSES=${CLASSES:-11} EPOCHS=${EPOCHS:-3}
QUERY_CHUNK=${QUERY_CHUNK:-1024} BANK_CHUNK=${BANK_CHUNK:-1048576}
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-$root/.venv/bin/python}
BIN_DIR=${BIN_DIR:-$root/target/release}
[[ -x $BIN_DIR/dense-probe ]] || BIN_DIR=$root/target/debug
DEVICE=${DEVICE:-$($PYTHON -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ref="$PYTHON $root/benches/dense/reference.py"

$ref make "$work" "$N" "$DIM" "$CLASSES"
feats=(--train-features "$work/train.npy" --val-features "$work/val.npy" --device "$DEVICE" -q)

"$BIN_DIR/dense-probe" "${feats[@]}" --protocol knn --k 20 --temperature 0.07 \
  --query-chunk "$QUERY_CHUNK" --bank-chunk "$BANK_CHUNK" >"$work/knn.jsonl"
k_ours=$(jq -r 'select(.event == "result") | .protocol_s' "$work/knn.jsonl")
k_miou=$(jq -r 'select(.event == "result") | .miou_pct' "$work/knn.jsonl")
bank=$(jq -r 'select(.event == "result") | .bank_patches' "$work/knn.jsonl")
$ref knn "$work" 20 0.07 "$QUERY_CHUNK" "$DEVICE" >"$work/knn-ref.json"
k_ref=$(jq -r '.knn_s' "$work/knn-ref.json")
k_ref_miou=$(jq -r '.miou_pct' "$work/knn-ref.json")

"$BIN_DIR/dense-probe" "${feats[@]}" --protocol linear --epochs "$EPOCHS" --batch-size 16 --lr 0.1 >"$work/lin.jsonl"
l_ours=$(jq -s '[.[] | select(.event == "epoch") | .epoch_s] | add / length' "$work/lin.jsonl")
l_miou=$(jq -r 'select(.event == "result") | .miou_pct' "$work/lin.jsonl")
$ref linear "$work" "$EPOCHS" 16 0.1 "$DEVICE" >"$work/lin-ref.json"
l_ref=$(jq -r '.epoch_s' "$work/lin-ref.json")
l_ref_miou=$(jq -r '.miou_pct' "$work/lin-ref.json")

echo "Feature maps: $N train / $N val images of 8x8 patches, $DIM-d, $CLASSES classes, masks 64x64; bank $bank patches;"
echo "device $DEVICE; $THREADS threads; binaries: $BIN_DIR"
echo
echo "| protocol | implementation | seconds | mIoU % | ours / PyTorch |"
echo "|---|---|---|---|---|"
printf '| knn k=20 T=0.07 (whole protocol) | lewel dense-probe | %.3f | %.2f | %.2f |\n' "$k_ours" "$k_miou" \
  "$(echo "$k_ours / $k_ref" | bc -l)"
printf '| knn k=20 T=0.07 (whole protocol) | PyTorch reference | %.3f | %.2f | |\n' "$k_ref" "$k_ref_miou"
printf '| linear, one epoch (batch 16 images) | lewel dense-probe | %.3f | %.2f | %.2f |\n' "$l_ours" "$l_miou" \
  "$(echo "$l_ours / $l_ref" | bc -l)"
printf '| linear, one epoch (batch 16 images) | PyTorch reference | %.3f | %.2f | |\n' "$l_ref" "$l_ref_miou"
