#!/usr/bin/env bash
# try.sh NAME FLAGS... : LEWEL guard-like run on the 2k fixture; prints init and trained kNN
set -u
BIN=/work/main/target/release F=/work/main/fixtures/fashion-mnist-2k
TRAIN=$F/train-images-idx3-ubyte.gz TEST=/tmp/g/ho1k-images-idx3-ubyte
name=$1; shift
cd /tmp/g && rm -rf "$name"
knn() { "$BIN/knn-probe" --ckpt "$1/ckpt/latest" --train-data "$TRAIN" --val-data "$TEST" --k 20 --temperature 0.07 --device cpu -q | jq -r 'select(.event == "end") | .best_top1_pct'; }
if [ ! -f init.txt ]; then rm -rf init; "$BIN/pretrain" "$TRAIN" --preset small-lewelb --width 8 --batch-size 64 --max-steps 0 --out init -q >/dev/null && knn init > init.txt; fi
t=$(date +%s)
LEWEL_FAULT=${FAULT:-} "$BIN/pretrain" "$TRAIN" --width 8 --batch-size 64 --device cpu --log-every 10 --quiet "$@" --out "$name" > "$name.jsonl" 2>"$name.err" || { echo "$name failed: $(tail -1 $name.err)"; exit 1; }
k=$(knn "$name")
w=$(grep -c '"warn"' "$name.jsonl")
last=$(grep '"event":"step"' "$name.jsonl" | tail -1 | jq -c '{loss, collapse_std, target_collapse_std, update_ratio_median, map_entropy_ratio}')
echo "$name init $(cat init.txt) trained $k secs $(( $(date +%s) - t )) warns $w last $last flags: $*" | tee -a results.txt
