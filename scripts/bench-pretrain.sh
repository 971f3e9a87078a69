#!/usr/bin/env bash
# pretrain step time and peak memory against the same model in PyTorch eager
# (benches/pretrain/torch_lewel.py, written from the spec), side by side on this machine, and the
# cost of LEWEL_B over BYOL. Medians of REPEATS alternating runs. Writes bench-out/pretrain.md.
#   scripts/bench-pretrain.sh [quick]
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${LEWEL_BIN:-$top/target/release}
PY=$top/.venv/bin/python
OUT=$top/bench-out
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-10}
WARM=3
mkdir -p "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# make_views FILE N SIZE: random normalised view pairs (the step time does not depend on content).
make_views() {
  "$PY" -c "import numpy as np,sys; n,s=int(sys.argv[2]),int(sys.argv[3]); np.save(sys.argv[1], np.random.default_rng(0).standard_normal((n,2,3,s,s)).astype(np.float32))" "$@"
}

# ours METHOD ARGS...: prints "median_step_s peak_rss_kib"
ours() {
  local method=$1; shift
  rm -rf "$tmp/run"
  /usr/bin/time -f '%M' -o "$tmp/rss" "$BIN/pretrain" --method "$method" "$@" --device cpu --quiet --log-every 1 \
    --max-steps $((STEPS + WARM)) --ckpt-every-epochs 0 --out "$tmp/run" >"$tmp/ev.jsonl"
  "$PY" - "$tmp/ev.jsonl" "$WARM" <<'PYEOF'
import json, sys, statistics
ev = [json.loads(l) for l in open(sys.argv[1])]
t = [e["step_s"] for e in ev if e["event"] == "step"][int(sys.argv[2]):]
print(statistics.median(t), end=" ")
PYEOF
  cat "$tmp/rss"
}

# peer METHOD ARGS...: the same in PyTorch eager
peer() {
  local method=$1; shift
  /usr/bin/time -f '%M' -o "$tmp/rss" "$PY" "$top/benches/pretrain/torch_lewel.py" --method "$method" "$@" \
    --steps "$STEPS" --warmup-steps "$WARM" >"$tmp/peer.json"
  "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['step_s_median'], end=' ')" "$tmp/peer.json"
  cat "$tmp/rss"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# case NAME VIEWS OURS_ARGS PEER_ARGS
results=()
run_case() {
  local name=$1 views=$2 ours_args=$3 peer_args=$4
  for method in lewel-b byol; do
    local os=() om=() ps=() pm=()
    for _ in $(seq "$REPEATS"); do
      read -r s m < <(ours "$method" --views "$views" $ours_args); os+=("$s"); om+=("$m")
      read -r s m < <(peer "$method" --views "$views" $peer_args); ps+=("$s"); pm+=("$m")
    done
    results+=("$name|$method|$(median "${os[@]}")|$(median "${ps[@]}")|$(median "${om[@]}")|$(median "${pm[@]}")")
    echo "bench-pretrain: ${results[-1]}" >&2
  done
}

make_views "$tmp/v32.npy" 256 32
small="--preset small-lewelb --batch-size 256 --epochs 100"
small_peer="--arch resnet18 --stem cifar --width 16 --proj-dim 128 --hidden-dim 512 --batch-size 256"
run_case "ResNet-18 w16, 32 px, batch 256" "$tmp/v32.npy" "$small" "$small_peer"
if [ "${1:-}" != quick ]; then
  make_views "$tmp/v224.npy" 8 224
  big="--preset in1k-lewelb-eman-200ep --bn-splits 1 --batch-size 8"
  big_peer="--arch resnet50 --stem imagenet --width 64 --proj-dim 256 --hidden-dim 4096 --batch-size 8"
  run_case "ResNet-50, 224 px, batch 8" "$tmp/v224.npy" "$big" "$big_peer"
fi

{
  echo "## pretrain step time (CPU), $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo
  echo "Command: \`scripts/bench-pretrain.sh\` (REPEATS=$REPEATS, $STEPS timed steps after $WARM warm-up steps; medians)."
  echo
  echo "| case | method | ours s/step | PyTorch eager s/step | speed ratio (PyTorch/ours) | ours peak RSS MiB | PyTorch peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|"
  for r in "${results[@]}"; do
    IFS='|' read -r name method os ps om pm <<<"$r"
    awk -v n="$name" -v me="$method" -v os="$os" -v ps="$ps" -v om="$om" -v pm="$pm" \
      'BEGIN { printf "| %s | %s | %.4f | %.4f | %.2fx | %.0f | %.0f |\n", n, me, os, ps, ps/os, om/1024, pm/1024 }'
  done
  echo
  echo "LEWEL_B over BYOL (ours, same backbone):"
  for ((i = 0; i < ${#results[@]}; i += 2)); do
    IFS='|' read -r name _ lw _ <<<"${results[i]}"
    IFS='|' read -r _ _ by _ <<<"${results[i+1]}"
    awk -v n="$name" -v a="$lw" -v b="$by" 'BEGIN { printf "- %s: %+.1f%% time per step\n", n, 100*(a/b-1) }'
  done
} | tee "$OUT/pretrain.md"
