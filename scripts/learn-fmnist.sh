#!/usr/bin/env bash
# The learning comparison of BENCHMARKS.md (issue 11): LEWEL_B, BYOL, LEWEL_M and MoCo v2 pre-trained on
# the 60,000 Fashion-MNIST training images without labels, at one budget (the small presets: ResNet-18,
# CIFAR stem, width 16, 32 px, batch 256, EPOCHS epochs), then a kNN probe (k 20, T 0.07, fixed: nothing
# is chosen on the test set) and a linear probe (the paper's LEWEL_B protocol, final epoch) on the 10,000
# test images. Baselines in the same table: the randomly initialised backbone (the same weights the runs
# start from), logistic regression on raw pixels, and the same backbone trained with all labels
# (finetune-semi from the random initialisation: the upper bound).
#
#   scripts/learn-fmnist.sh                      # everything, on this machine (CPU: about 28 min per
#                                                # LEWEL_B run of 8 epochs on 2 cores; 4 h for all)
#   scripts/learn-fmnist.sh summary              # only (re)write summary.{json,md} from what exists
#   DEVICE=cuda JOBS=4 THREADS=4 scripts/learn-fmnist.sh      # on a GPU machine, 4 runs at a time
#
# BENCH=scenes runs the same comparison on the where-to-learn scenes (benches/learning/make-scenes.sh: train
# split to pre-train on and as the memory, test split as the queries; PRETRAIN_FLAGS defaults to --size 48).
#
# Knobs (environment): BENCH=fmnist|scenes, TRAIN_N (pre-train on, and take the memory from, the first TRAIN_N
# training images only; default all), PRETRAIN_FLAGS (added to every pre-training, the random backbone's
# included: a budget such as "--width 8"), SUPERVISED=1 (0 skips the upper bound), SCENES (a made scenes
# folder), DATA (folder with the four IDX files, .gz or not; default the Debian package),
# OUT (results; default ./learning-out), WORK (run folders and features; default OUT/runs), EPOCHS=8,
# SEEDS="1 2", METHODS="lewel-b byol lewel-m mocov2", DEVICE=cpu, JOBS=1 (tasks at a time), THREADS=0
# (data workers per task; 0 = one per core), BUDGET_S=0 (no task starts after this many seconds; 0 =
# none), MAX_STEPS (dry runs only: caps every pre-training and makes the figures meaningless), PYTHON.
# A finished task is not run again (rerun after an interruption); delete its folder under WORK to redo it.
# Outputs: OUT/summary.md, OUT/summary.json (every figure, per seed), OUT/learning.tar.gz (events, configs,
# probe results, logs of every task) and OUT/lewel-b-s<first seed>.safetensors (for viz-maps).
#
# On a lent GPU machine (no Debian package there; the device tool carries at most 64 MiB):
#   scripts/learn-fmnist.sh prepare-device       # here: stripped binaries and the data in target/learning
#   scripts/learn-fmnist.sh device               # there (carry target/learning), OUT=$OUT; DEVICE=cuda,
#                                                # JOBS=5, THREADS=3, libtorch from python3's torch
set -u
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case ${1:-} in
  prepare-device)
    set -e
    cd "$top" && cargo build --release -p pretrain -p embed -p knn-probe -p linear-probe -p finetune-semi
    rm -rf target/learning && mkdir -p target/learning/bin target/learning/data
    for t in pretrain embed knn-probe linear-probe finetune-semi; do strip -o "target/learning/bin/$t" "target/release/$t"; done
    cp "${DATA:-/usr/share/datasets/fashion-mnist}"/*-ubyte* target/learning/data/
    du -sh target/learning >&2
    echo "learn-fmnist: carry target/learning; there run: OUT=\$OUT scripts/learn-fmnist.sh device" >&2
    exit 0 ;;
  device)
    torch_dir=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
    libs=$torch_dir/lib
    for d in "$torch_dir"/../nvidia/*/lib; do [ -d "$d" ] && libs=$libs:$d; done
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LEWEL_BIN=${LEWEL_BIN:-$top/target/learning/bin} DATA=${DATA:-$top/target/learning/data}
    export DEVICE=${DEVICE:-cuda} JOBS=${JOBS:-5} THREADS=${THREADS:-3} WORK=${WORK:-/tmp/learn-work}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
    shift
    exec "$0" all "$@" ;;
esac
BIN=${LEWEL_BIN:-$top/target/release}
BENCH=${BENCH:-fmnist}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
TRAIN_N=${TRAIN_N:-}
SUPERVISED=${SUPERVISED:-1}
OUT=${OUT:-./learning-out}
WORK=${WORK:-$OUT/runs}
EPOCHS=${EPOCHS:-8}
SEEDS=${SEEDS:-"1 2"}
METHODS=${METHODS:-"lewel-b byol lewel-m mocov2"}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-1}
THREADS=${THREADS:-0}
BUDGET_S=${BUDGET_S:-0}
MAX_STEPS=${MAX_STEPS:-}
PYTHON=${PYTHON:-python3}
case $BENCH in
  fmnist) PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-} ;;
  scenes) PRETRAIN_FLAGS=${PRETRAIN_FLAGS:---size 48} ;;
  *) echo "learn-fmnist: unknown BENCH=$BENCH (fmnist or scenes)" >&2; exit 2 ;;
esac
export BIN BENCH DATA OUT WORK EPOCHS SEEDS METHODS DEVICE JOBS THREADS BUDGET_S MAX_STEPS PYTHON TRAIN_N \
  SUPERVISED PRETRAIN_FLAGS
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd) WORK=$(cd "$WORK" && pwd)
export LEARN_T0=${LEARN_T0:-$(date +%s)}

idx() { # idx NAME: the IDX file NAME in DATA, compressed or not
  if [ -f "$DATA/$1.gz" ]; then echo "$DATA/$1.gz"; else echo "$DATA/$1"; fi
}
if [ "$BENCH" = scenes ]; then
  if [ -z "${SCENES:-}" ] && [ "${1:-all}" = all ]; then SCENES=$("$top/benches/learning/make-scenes.sh") || exit 1; fi
  export SCENES
  TRAIN=${SCENES:-}/train.npy TEST=${SCENES:-}/test.npy
else
  TRAIN=$(idx train-images-idx3-ubyte) TEST=$(idx t10k-images-idx3-ubyte)
fi
# subset: the first TRAIN_N training images (with their labels) as a file in OUT/data, made once; prints it.
subset() {
  local sub=$OUT/data/first$TRAIN_N-images-idx3-ubyte
  case $TRAIN in *.npy) sub=$OUT/data/train-first$TRAIN_N.npy ;; esac
  if [ ! -f "$sub" ]; then
    mkdir -p "$OUT/data"
    "$PYTHON" "$top/benches/learning/subset.py" "$TRAIN" 0 "$TRAIN_N" "$sub" >&2 || return 1
  fi
  echo "$sub"
}
if [ "${1:-all}" != summary ]; then
  for f in "$TRAIN" "$TEST"; do
    [ -f "$f" ] || { echo "learn-fmnist: $f is missing ($( [ "$BENCH" = scenes ] && echo "set SCENES to a folder made by benches/learning/make-scenes.sh" || echo "apt-get install dataset-fashion-mnist, or set DATA"))" >&2; exit 1; }
  done
  if [ -n "$TRAIN_N" ]; then TRAIN=$(subset) || exit 1; fi
fi
say() { printf 'learn-fmnist [%4ss] %s\n' $(( $(date +%s) - LEARN_T0 )) "$*" >&2; }
preset() { case $1 in lewel-b) echo small-lewelb ;; byol) echo small-byol ;; lewel-m) echo small-lewelm ;;
  mocov2) echo small-mocov2 ;; *) echo "unknown method $1" >&2; return 1 ;; esac; }
cap() { if [ -n "$MAX_STEPS" ]; then echo "--max-steps $MAX_STEPS"; fi; }

# evaluate NAME CKPT: kNN and linear probe of CKPT's backbone, results in WORK/NAME/eval/.
evaluate() {
  local name=$1 ckpt=$2 ev=$WORK/$1/eval
  mkdir -p "$ev"
  "$BIN/embed" --ckpt "$ckpt" --data "$TRAIN" --out "$ev/train.npy" --device "$DEVICE" --threads "$THREADS" -q >"$ev/embed-train.jsonl" &&
    "$BIN/embed" --ckpt "$ckpt" --data "$TEST" --out "$ev/test.npy" --device "$DEVICE" --threads "$THREADS" -q >"$ev/embed-test.jsonl" &&
    probe "$ev" && rm -f "$ev"/train*.npy "$ev"/test*.npy
}
# probe DIR: the two probes on DIR/train.npy and DIR/test.npy (labels beside them).
probe() {
  local ev=$1
  "$BIN/knn-probe" --train-features "$ev/train.npy" --val-features "$ev/test.npy" --k 20 --temperature 0.07 \
    --device "$DEVICE" --out "$ev/knn.json.tmp" -q >"$ev/knn.jsonl" && mv "$ev/knn.json.tmp" "$ev/knn.json" &&
    "$BIN/linear-probe" --train-features "$ev/train.npy" --val-features "$ev/test.npy" --protocol lewel-b \
      --normalize --seed 1 --device "$DEVICE" --out "$ev/linear.json.tmp" -q >"$ev/linear.jsonl" &&
    mv "$ev/linear.json.tmp" "$ev/linear.json"
}

# task NAME: one unit of work (a pre-training and its evaluation, or a baseline).
task() {
  local name=$1 dir=$WORK/$1 seed=${1##*-s}
  if [ -f "$dir/eval/linear.json" ]; then say "$name: done before"; return 0; fi
  if [ "$BUDGET_S" != 0 ] && [ $(( $(date +%s) - LEARN_T0 )) -ge "$BUDGET_S" ]; then
    say "$name: skipped (BUDGET_S=$BUDGET_S spent)"; return 0
  fi
  say "$name: start"
  local t=$(date +%s) ok=0
  mkdir -p "$dir"
  case $name in
    random-s*)
      rm -rf "$dir/run"
      "$BIN/pretrain" "$TRAIN" --preset small-lewelb $PRETRAIN_FLAGS --seed "$seed" --max-steps 0 --device "$DEVICE" -q \
        --out "$dir/run" >"$dir/pretrain.jsonl" 2>"$dir/pretrain.err" && evaluate "$name" "$dir/run" && ok=1 ;;
    supervised-s*)
      # the random initialisation of the same seed (the same weights as random-s<seed>), then all labels
      rm -rf "$dir/init" "$dir/run"
      "$BIN/pretrain" "$TRAIN" --preset small-lewelb $PRETRAIN_FLAGS --seed "$seed" --max-steps 0 --device "$DEVICE" -q \
        --out "$dir/init" >"$dir/init.jsonl" 2>"$dir/init.err" &&
        "$BIN/finetune-semi" --ckpt "$dir/init" --train-data "$TRAIN" --val-data "$TEST" --fraction 1.0 \
          --preset semi-small --epochs "$EPOCHS" --batch-size 256 --lr-backbone 0.1 --lr-classifier 0.1 \
          --wd 5e-4 --milestones "$(( EPOCHS * 6 / 10 )),$(( EPOCHS * 8 / 10 ))" --eval-every "$EPOCHS" \
          --seed "$seed" --device "$DEVICE" --threads "$THREADS" $(cap) -q --out "$dir/run" \
          >"$dir/finetune.jsonl" 2>"$dir/finetune.err" &&
        evaluate "$name" "$dir/run" && ok=1 ;;
    raw-pixels)
      mkdir -p "$dir/eval"
      "$PYTHON" - "$TRAIN" "$TEST" "$dir/eval" <<'PYEOF' && probe "$dir/eval" && rm -f "$dir/eval"/*.npy && ok=1
import gzip, sys, numpy as np
def idx(path):
    if path.endswith(".npy"):
        x = np.load(path)
        return x.reshape(len(x), -1)
    raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
    n = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, -1)
def labels(path):
    if path.endswith(".npy"):
        return np.load(path.replace("images-idx3", "labels-idx1")[:-4] + ".labels.npy")
    return np.frombuffer((gzip.open if path.endswith(".gz") else open)(path, "rb").read(), np.uint8, offset=8)
for src, name in ((sys.argv[1], "train"), (sys.argv[2], "test")):
    np.save(f"{sys.argv[3]}/{name}.npy", idx(src).astype(np.float32) / 255.0)
    np.save(f"{sys.argv[3]}/{name}.labels.npy", labels(src.replace("images-idx3", "labels-idx1")).astype(np.int64))
PYEOF
      ;;
    *)
      local method=${name%-s*}
      local p; p=$(preset "$method") || return 1
      local how=(--out "$dir/run" "$TRAIN" --preset "$p" --epochs "$EPOCHS" --seed "$seed" --log-every 20)
      if [ -f "$dir/run/ckpt/latest" ]; then how=(--resume "$dir/run"); else how+=($PRETRAIN_FLAGS); rm -rf "$dir/run"; fi
      "$BIN/pretrain" "${how[@]}" --device "$DEVICE" --threads "$THREADS" $(cap) -q \
        >>"$dir/pretrain.jsonl" 2>>"$dir/pretrain.err" && evaluate "$name" "$dir/run" && ok=1 ;;
  esac
  local dt=$(( $(date +%s) - t ))
  if [ "$ok" = 1 ]; then
    echo "$dt" >"$dir/task_s"
    say "$name: done in ${dt}s"
  else
    say "$name: FAILED after ${dt}s (logs in $dir)"
    tail -n 5 "$dir"/*.err >&2 2>/dev/null
  fi
  pack
}

# describe: the data and the budget, in words, for the summary.
describe() {
  local n=${TRAIN_N:-all} what="Fashion-MNIST 32 px"
  [ "$BENCH" = scenes ] && what="the scenes ($SCENES)"
  echo "$what, $n training images to pre-train on and as the kNN memory, the test split as the queries; pre-training flags over the small presets: [${PRETRAIN_FLAGS:-none}]"
}
# pack: the summary and the tarball of everything small, so a run cut short still leaves its results.
pack() {
  (
    flock 9
    "$PYTHON" "$top/benches/learning/summary.py" "$WORK" "$OUT" "$EPOCHS" "$(describe)" || say "summary failed"
    (cd "$WORK" && find . \( -name '*.jsonl' -o -name '*.json' -o -name '*.err' -o -name task_s \) \
      -not -path '*/ckpt/*' -print0 | tar --null -czf "$OUT/learning.tar.gz.tmp" -T - 2>/dev/null) &&
      mv "$OUT/learning.tar.gz.tmp" "$OUT/learning.tar.gz"
    local first=${SEEDS%% *} ck
    local run=$WORK/lewel-b-s$first/run
    if [ -f "$run/ckpt/latest" ] && [ -f "$WORK/lewel-b-s$first/eval/linear.json" ]; then
      ck="$run/ckpt/$(cat "$run/ckpt/latest")"
      cp "$ck" "$OUT/lewel-b-s$first.safetensors"
      cp "${ck%.safetensors}.json" "$OUT/lewel-b-s$first.json"
    fi
  ) 9>"$WORK/.pack.lock"
}

case ${1:-all} in
  task) task "$2"; exit 0 ;;
  summary) pack; exit 0 ;;
  all) ;;
  *) echo "usage: $0 [all|summary|task NAME]" >&2; exit 2 ;;
esac

say "$BENCH, training images $TRAIN, pre-training flags [$PRETRAIN_FLAGS], epochs $EPOCHS, seeds $SEEDS, methods $METHODS, device $DEVICE, $JOBS task(s) at a time, out $OUT"
# The order is the priority (a BUDGET_S cut drops the tail): every method and the random backbone seed by
# seed, raw pixels after the first, then the upper bound.
tasks=()
first=1
for s in $SEEDS; do
  for m in $METHODS; do tasks+=("$m-s$s"); done
  tasks+=("random-s$s")
  if [ "$first" = 1 ]; then tasks+=(raw-pixels); first=0; fi
done
if [ "$SUPERVISED" = 1 ]; then for s in $SEEDS; do tasks+=("supervised-s$s"); done; fi
printf '%s\n' "${tasks[@]}" | xargs -P "$JOBS" -I{} "$0" task {}
pack
cat "$OUT/summary.md" >&2
