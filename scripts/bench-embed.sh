#!/usr/bin/env bash
# Images per second of `embed` against PyTorch eager (benches/embed/reference.py) on the same
# torchvision ResNet-18 at 224 px, the same JPEGs, the same batch and threads, in the same run.
# Both sides include start-up, model loading, decoding and the eval transform; median of REPS runs.
#
#   scripts/bench-embed.sh                 # 256 images, batch 64, 3 repetitions
#   N=1024 BATCH=128 REPS=5 scripts/bench-embed.sh
#
# Env: N BATCH REPS, THREADS (default: all cores), BIN_DIR, PYTHON. Prints a markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-256} BATCH=${BATCH:-64} REPS=${REPS:-3}
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-$root/.venv/bin/python}
BIN_DIR=${BIN_DIR:-$root/target/release}
[[ -x $BIN_DIR/embed ]] || BIN_DIR=$root/target/debug
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ref="$PYTHON $root/benches/embed/reference.py"
$ref make "$work" "$N"

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ours=() theirs=()
for _ in $(seq "$REPS"); do
  t0=$(date +%s.%N)
  "$BIN_DIR/embed" --ckpt "$work/resnet18.pth" --data "$work/img" --out "$work/f.npy" \
    --batch-size "$BATCH" --threads "$THREADS" --device cpu -q >/dev/null
  ours+=("$(echo "$N / ($(date +%s.%N) - $t0)" | bc -l)")
  t0=$(date +%s.%N)
  $ref run "$work" "$BATCH" >/dev/null
  theirs+=("$(echo "$N / ($(date +%s.%N) - $t0)" | bc -l)")
done
# Same features: the two agree to float tolerance (same weights, same transform).
$PYTHON - "$work" <<'PY'
import sys, numpy as np, torch, torchvision
from PIL import Image
from torchvision import transforms
d = sys.argv[1]
m = torchvision.models.resnet18(); m.load_state_dict(torch.load(f"{d}/resnet18.pth")); m.fc = torch.nn.Identity(); m.eval()
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
x = torch.stack([tf(Image.open(f"{d}/img/{i:05d}.jpg").convert("RGB")) for i in range(4)])
with torch.no_grad():
    ref = m(x).numpy()
ours = np.load(f"{d}/f.npy")[:4]
err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-9)
print(f"max relative difference of the first 4 rows: {err:.2e}", file=sys.stderr)
PY
echo "$N images 320x256 JPEG, ResNet-18 (torchvision) at 224, batch $BATCH, $THREADS threads, median of $REPS; binaries: $BIN_DIR"
echo
echo "| implementation | images/s (wall, incl. start-up) |"
echo "|---|---|"
printf '| lewel embed | %.1f |\n' "$(printf '%s\n' "${ours[@]}" | median)"
printf '| PyTorch eager (torchvision) | %.1f |\n' "$(printf '%s\n' "${theirs[@]}" | median)"
