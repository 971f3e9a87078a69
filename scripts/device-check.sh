#!/usr/bin/env bash
# The prepared GPU check (issue 10): one call on a GPU machine, under 5 minutes on one H100/H200.
#
#   scripts/device-check.sh prepare   # here, before the device call: release build + stripped copy
#                                     # in target/device/ (the device tool carries at most 64 MiB)
#   scripts/device-check.sh           # on the GPU machine (carry target/device); results in $OUT
#
# Stages (each time-boxed with `timeout`; a failure is recorded and the next stage runs):
#   env           nvidia-smi, torch version, CUDA from python, ldd of our binary
#   views         random float32 view pairs [N,2,3,SIZE,SIZE] for `pretrain --views` (numpy, else torch)
#   cuda-*        tiny `pretrain --device cuda` runs: CUDA seen natively? with LD_PRELOAD of
#                 libtorch_cuda.so? with the --precision / --channels-last flags?
#   ours-lewelb   `pretrain --method lewel-b`, ResNet-50, SIZE px, BATCH, WARM + STEPS steps
#   peer-lewelb   the same step in PyTorch eager (benches/pretrain/torch_lewel.py), autocast
#   optional, while the budget lasts: ours-byol, ours-mocov2 and ours-lewelm (BATCH_M),
#                 peer-lewelb-tuned (--foreach --cudnn-benchmark), peer-byol
#   summary       summary.json and summary.md (medians, images/s, ratios, commands)
# $OUT gets four files (the device tool brings back at most 8): summary.md, summary.json, stages.tsv and
# logs.tar.gz (device-check/{logs/<stage>.{cmd,out,err,gpumem},env/,console.log,...}); they are written
# once right after the main comparison and again at the end.
# Exit status: 0 when both main stages (ours-lewelb, peer-lewelb) succeeded, else 1.
#
# Knobs (environment; defaults are the GPU check):
#   OUT=./device-out  DEVICE=cuda  ARCH=resnet50  SIZE=224  BATCH=128  BATCH_M=256 (lewel-m, mocov2)
#   WARM=5 (steps dropped)  STEPS=45 (timed steps)  PRECISION=bf16 (bf16|fp16|fp32)  CHANNELS_LAST=1
#   BN_SPLITS_M=8 (lewel-m, mocov2; lewel-b and byol use 1)  EXTRAS=1 (0: main comparison only)
#   BUDGET_S=285 (no stage starts or runs past this many seconds from the start)
#   PYTHON=python3 (needs torch)  LEWEL_BIN=target/device, else target/release
# A CPU dry run of every stage (under a minute on an idle 2-core machine):
#   DEVICE=cpu ARCH=resnet18 SIZE=32 BATCH=8 BATCH_M=16 WARM=1 STEPS=3 PRECISION=fp32 CHANNELS_LAST=0 \
#     scripts/device-check.sh
set -u
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "${1:-}" = prepare ]; then
  set -e
  cd "$top"
  ./scripts/setup.sh
  cargo build --release -p pretrain
  mkdir -p target/device
  strip -o target/device/pretrain target/release/pretrain
  # the NCCL group-of-one test (ffi/tests/nccl.rs), run with --ignored on the GPU
  nccl=$(cargo test --release -p lewel-ffi --test nccl --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
  [ -n "$nccl" ] && strip -o target/device/nccl-test "$nccl"
  ls -l target/device >&2
  # (libtorch_cuda is not linked: the binaries open it when --device cuda asks for it.)
  echo "device-check: carry target/device; on the machine run: OUT=\$OUT scripts/device-check.sh" >&2
  exit 0
fi

OUT=${OUT:-./device-out}
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-resnet50}
SIZE=${SIZE:-224}
BATCH=${BATCH:-128}
BATCH_M=${BATCH_M:-256}
WARM=${WARM:-5}
STEPS=${STEPS:-45}
PRECISION=${PRECISION:-bf16}
CHANNELS_LAST=${CHANNELS_LAST:-1}
BN_SPLITS_M=${BN_SPLITS_M:-8}
EXTRAS=${EXTRAS:-1}
BUDGET_S=${BUDGET_S:-285}
if [ -z "${LEWEL_BIN:-}" ]; then
  LEWEL_BIN=$top/target/release
  [ -x "$top/target/device/pretrain" ] && LEWEL_BIN=$top/target/device
fi
if [ "$top/target/release/pretrain" -nt "$LEWEL_BIN/pretrain" ]; then
  echo "device-check: warning: $LEWEL_BIN/pretrain is older than target/release/pretrain; run $0 prepare" >&2
fi
# The python with torch (the peer's, and the libtorch our binary loads): python3, else this checkout's venv.
PY=${PYTHON:-python3}
torch_dir() { timeout 60 "$PY" -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null; }
TORCH_DIR=$(torch_dir)
if [ -z "$TORCH_DIR" ] && [ -x "$top/.venv/bin/python" ]; then
  PY=$top/.venv/bin/python
  TORCH_DIR=$(torch_dir)
fi
PEER=$top/benches/pretrain/torch_lewel.py
STEPS_ALL=$((WARM + STEPS))
N_VIEWS=$((2 * (BATCH > BATCH_M ? BATCH : BATCH_M)))
QUEUE=$((2 * BATCH_M))

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
W=$tmp/device-check # the working files; published by `publish`
mkdir -p "$W/logs" "$W/env"
exec 2> >(tee "$W/console.log" >&2)
sampler=
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
printf 'stage\trc\tseconds\tstatus\tlimit_s\n' >"$W/stages.tsv"
log() { echo "device-check: [$SECONDS s] $*" >&2; }
export PYTHONUNBUFFERED=1

# Our binary finds libtorch through LD_LIBRARY_PATH: its rpath names the build machine's venv.
if [ -n "$TORCH_DIR" ]; then
  libs=$TORCH_DIR/lib
  for d in "$TORCH_DIR"/../nvidia/*/lib; do [ -d "$d" ] && libs=$libs:$d; done
  export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
OURS=(env)          # the prefix of every `pretrain` call; gains LD_PRELOAD=... if CUDA needs it
AMP_FLAGS=()
[ "$PRECISION" != fp32 ] && AMP_FLAGS+=(--precision "$PRECISION")
[ "$CHANNELS_LAST" = 1 ] && AMP_FLAGS+=(--channels-last)
PEER_AMP=(--precision "$PRECISION")
[ "$CHANNELS_LAST" = 1 ] && PEER_AMP+=(--channels-last)

gpu_sampler_start() {
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$W/logs/$1.gpumem" 2>/dev/null &
  sampler=$!
}
gpu_sampler_stop() {
  [ -n "$sampler" ] || return 0
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  sampler=
}

# stage NAME NEED_S MAX_S CMD...: runs CMD with stdout to logs/NAME.out and stderr to logs/NAME.err, killed
# after MAX_S seconds or at the budget's end, whichever comes first; skipped when less than NEED_S seconds
# of the budget are left. Appends its line to stages.tsv and returns CMD's exit status (99: skipped).
stage() {
  local name=$1 need=$2 max=$3
  shift 3
  local left=$((BUDGET_S - SECONDS))
  local limit=$((max < left ? max : left))
  printf '%q ' "$@" >"$W/logs/$name.cmd"
  echo >>"$W/logs/$name.cmd"
  if ((left < need || limit < 1)); then
    log "$name: skipped ($left s of the budget left, needs $need s)"
    printf '%s\t\t0\tskipped\t%s\n' "$name" "$limit" >>"$W/stages.tsv"
    return 99
  fi
  log "$name: start (limit $limit s)"
  local t0=$SECONDS rc status
  gpu_sampler_start "$name"
  timeout -k 5 "$limit" "$@" >"$W/logs/$name.out" 2>"$W/logs/$name.err"
  rc=$?
  gpu_sampler_stop
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  log "$name: $status (rc $rc, $((SECONDS - t0)) s)"
  [ "$status" = ok ] || tail -n 5 "$W/logs/$name.err" | sed "s/^/  $name: /" >&2
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$status" "$limit" >>"$W/stages.tsv"
  return $rc
}

# ---- 1. environment -----------------------------------------------------------------------------------
env_info() {
  date -u +%FT%TZ
  uname -a
  echo "nproc $(nproc)"
  free -g 2>/dev/null | head -2
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "--- nvidia-smi"
  nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  echo "--- ldd $LEWEL_BIN/pretrain"
  ldd "$LEWEL_BIN/pretrain" 2>&1
  echo "--- pretrain --version"
  "$LEWEL_BIN/pretrain" --version 2>&1
}
export -f env_info
export LEWEL_BIN
stage env 0 30 bash -c env_info
timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader >"$W/env/gpu-name.txt" 2>/dev/null
stage torch 0 60 "$PY" -c '
import json, torch
d = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
     "cudnn": torch.backends.cudnn.version()}
try:
    import numpy
    d["numpy"] = numpy.__version__
except ImportError:
    d["numpy"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(device_name=p.name, memory_mib=p.total_memory // 2**20, capability=f"{p.major}.{p.minor}",
             bf16_supported=torch.cuda.is_bf16_supported())
print(json.dumps(d))'

# ---- 2. random view pairs -----------------------------------------------------------------------------
# make_views FILE N SIZE: float32 [N,2,3,SIZE,SIZE], standard normal (the step time does not depend on it).
MAKE_VIEWS='
import sys
path, n, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shape = (n, 2, 3, s, s)
try:
    import numpy as np
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    rng = np.random.default_rng(0)
    for i in range(n):
        a[i] = rng.standard_normal(shape[1:], dtype=np.float32)
    a.flush()
    print("numpy", shape)
except ImportError:
    import ctypes, torch
    h = "{%r: %r, %r: False, %r: %r, }" % ("descr", "<f4", "fortran_order", "shape", shape)
    h += " " * (63 - (10 + len(h)) % 64) + "\n"
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h.encode("latin1"))
        for i in range(n):
            t = torch.randn(shape[1:], generator=g).contiguous()
            f.write(ctypes.string_at(t.data_ptr(), t.numel() * 4))
    print("torch", shape)
'
VIEWS=$tmp/views.npy
TINY=$tmp/tiny.npy
stage views 0 90 "$PY" -c "$MAKE_VIEWS" "$VIEWS" "$N_VIEWS" "$SIZE"
stage views-tiny 0 30 "$PY" -c "$MAKE_VIEWS" "$TINY" 8 32

# ---- 3. CUDA from our binary --------------------------------------------------------------------------
# smoke NAME FLAGS...: two steps of the small preset at 32 px; the start event names the device.
smoke() {
  local name=$1
  shift
  rm -rf "$tmp/run-$name"
  stage "$name" 10 90 "${OURS[@]}" "$LEWEL_BIN/pretrain" --views "$TINY" --preset small-lewelb --batch-size 4 \
    --device "$DEVICE" --max-steps 2 --log-every 1 --quiet --out "$tmp/run-$name" "$@"
  local rc=$?
  rm -rf "$tmp/run-$name"
  return $rc
}
if ! smoke cuda-native; then
  # The release link may drop libtorch_cuda.so (the linker's --as-needed: nothing calls into it directly),
  # and libtorch then sees no CUDA. Loading it first is enough.
  if [ -n "$TORCH_DIR" ] && [ -f "$TORCH_DIR/lib/libtorch_cuda.so" ]; then
    OURS=(env "LD_PRELOAD=$TORCH_DIR/lib/libtorch_cuda.so")
    if ! smoke cuda-preload; then
      # Which libraries the loader found, for the post-mortem.
      OURS=(env LD_DEBUG=libs "LD_PRELOAD=$TORCH_DIR/lib/libtorch_cuda.so")
      smoke cuda-diag-ld-debug 2>/dev/null
      OURS=(env)
      mv "$W/logs/cuda-diag-ld-debug.err" "$W/logs/cuda-diag-ld-debug.full" 2>/dev/null
      grep -E 'torch|cuda|cudnn|cublas|not found|error' "$W/logs/cuda-diag-ld-debug.full" 2>/dev/null |
        head -n 400 >"$W/logs/cuda-diag-ld-debug.err"
      rm -f "$W/logs/cuda-diag-ld-debug.full"
    fi
  fi
fi
# fp16 with loss scaling on the GPU (the main comparison is bf16)
[ "$DEVICE" = cuda ] && smoke cuda-fp16 --precision fp16
# The NCCL process group (a group of one: NCCL refuses two ranks on one GPU), built through libtorch_cuda's
# exported symbols: every collective on CUDA tensors.
if [ -x "$LEWEL_BIN/nccl-test" ]; then
  stage nccl 5 60 "$LEWEL_BIN/nccl-test" --ignored --nocapture --test-threads 1
fi
OURS_PRECISION=$PRECISION
OURS_CL=$CHANNELS_LAST
if [ ${#AMP_FLAGS[@]} -gt 0 ] && ! smoke cuda-amp-flags "${AMP_FLAGS[@]}"; then
  log "ours: ${AMP_FLAGS[*]} failed in the tiny run; ours runs in fp32 without them (see logs/cuda-amp-flags.err)"
  AMP_FLAGS=()
  OURS_PRECISION=fp32
  OURS_CL=0
fi
printf '{"ours_env": "%s", "ours_precision": "%s", "ours_channels_last": %s}\n' \
  "${OURS[*]:1}" "$OURS_PRECISION" "$OURS_CL" >"$W/env/ours.json"

# publish: summary.json and summary.md from stages.tsv and the logs (printed too), then the four files in $OUT.
publish() {
  timeout 60 "$PY" - "$W" "$WARM" <<'PYEOF' || log "summary: failed"
import json, os, statistics, sys, time

out, warm = sys.argv[1], int(sys.argv[2])
logs = os.path.join(out, "logs")


def read(name, ext):
    try:
        with open(os.path.join(logs, f"{name}.{ext}")) as f:
            return f.read()
    except OSError:
        return ""


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


stages = []
with open(os.path.join(out, "stages.tsv")) as f:
    next(f)
    for line in f:
        name, rc, secs, status, limit = line.rstrip("\n").split("\t")
        stages.append({"stage": name, "rc": int(rc) if rc else None, "seconds": int(secs), "status": status,
                       "limit_s": int(limit)})
status = {s["stage"]: s["status"] for s in stages}
torch_env = next((json.loads(l) for l in read("torch", "out").splitlines() if l.startswith("{")), {})
ours_env = load_json(os.path.join(out, "env", "ours.json"))


def peak_mib(name):
    v = [int(x) for x in read(name, "gpumem").split() if x.isdigit()]
    return max(v) if v else None


def ours(name):
    ev = []
    for l in read(name, "out").splitlines():
        try:
            ev.append(json.loads(l))
        except ValueError:
            pass
    start = next((e for e in ev if e.get("event") == "start"), {})
    steps = [e["step_s"] for e in ev if e.get("event") == "step" and e.get("step_s") is not None]
    timed = steps[warm:]
    cl = start.get("channels_last", ours_env.get("ours_channels_last"))
    r = {"side": "ours", "stage": name, "status": status.get(name, "not run"), "device": start.get("device"),
         "git_revision": start.get("git_revision"),
         "method": start.get("model.method"), "arch": start.get("model.arch"), "batch": start.get("batch_size"),
         "precision": start.get("precision", ours_env.get("ours_precision")),
         "channels_last": None if cl is None else bool(cl),
         "steps_timed": len(timed), "step_s_all": [round(s, 4) for s in steps],
         "peak_gpu_mem_mib_nvidia_smi": peak_mib(name), "command": read(name, "cmd").strip()}
    if timed:
        med = statistics.median(timed)
        r.update(step_s_median=round(med, 4), step_s_mean=round(statistics.fmean(timed), 4),
                 images_per_s=round(r["batch"] / med, 1) if r["batch"] else None)
    return r


def peer(name):
    j = next((json.loads(l) for l in read(name, "out").splitlines() if l.startswith("{")), {})
    r = {"side": "pytorch-eager", "stage": name, "status": status.get(name, "not run"), "device": j.get("device"),
         "method": j.get("method"), "arch": j.get("arch"), "batch": j.get("batch"), "precision": j.get("precision"),
         "channels_last": j.get("channels_last"), "foreach": j.get("foreach"),
         "cudnn_benchmark": j.get("cudnn_benchmark"), "steps_timed": j.get("steps"), "step_s_all": j.get("step_s_all"),
         "peak_gpu_mem_mib_nvidia_smi": peak_mib(name), "peak_allocated_mib": j.get("peak_allocated_mib"),
         "peak_reserved_mib": j.get("peak_reserved_mib"), "command": read(name, "cmd").strip()}
    if j.get("step_s_median"):
        r.update(step_s_median=j["step_s_median"], images_per_s=j.get("images_per_s"))
    return r


runs = {n: ours(n) for n in ["ours-lewelb", "ours-byol", "ours-mocov2", "ours-lewelm"]}
runs.update({n: peer(n) for n in ["peer-lewelb", "peer-lewelb-fp32", "peer-lewelb-tuned", "peer-byol"]})
runs = {k: v for k, v in runs.items() if v["status"] not in ("not run", "skipped")}
notes = []


def ratio(a, b):
    ra, rb = runs.get(a, {}), runs.get(b, {})
    x, y = ra.get("step_s_median"), rb.get("step_s_median")
    if not (x and y):
        return None
    if (ra["precision"], ra["channels_last"]) != (rb["precision"], rb["channels_last"]):
        notes.append(f"{a} / {b}: different settings ({ra['precision']}, channels-last {ra['channels_last']} "
                     f"against {rb['precision']}, channels-last {rb['channels_last']}); no verdict")
        return {"value": round(x / y, 4), "comparable": False}
    return round(x / y, 4)


ratios = {
    "ours_over_pytorch_step_time": ratio("ours-lewelb", "peer-lewelb"),
    "ours_over_pytorch_tuned_step_time": ratio("ours-lewelb", "peer-lewelb-tuned"),
    "ours_over_pytorch_fp32_step_time": ratio("ours-lewelb", "peer-lewelb-fp32"),
    "ours_lewelb_over_byol_step_time": ratio("ours-lewelb", "ours-byol"),
    "ours_lewelm_over_mocov2_step_time": ratio("ours-lewelm", "ours-mocov2"),
    "pytorch_lewelb_over_byol_step_time": ratio("peer-lewelb", "peer-byol"),
}
targets = {
    "ours_over_pytorch_step_time": (1.0, "ours at least as fast as PyTorch eager with AMP (issue 10)"),
    "ours_lewelb_over_byol_step_time": (1.05, "LEWEL_B at most 5% over BYOL (issue 4)"),
    "ours_lewelm_over_mocov2_step_time": (1.03, "LEWEL_M at most 3% over MoCo v2 (issue 5)"),
}
try:
    with open(os.path.join(out, "env", "gpu-name.txt")) as f:
        smi_name = f.readline().strip()
except OSError:
    smi_name = ""
device_name = torch_env.get("device_name") or smi_name or None
summary = {
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device_name": device_name,
    "git_revision": runs.get("ours-lewelb", {}).get("git_revision"),
    "cuda_from_our_binary": {"native": status.get("cuda-native"), "with_ld_preload": status.get("cuda-preload"),
                             "precision_flags": status.get("cuda-amp-flags"), "nccl_group": status.get("nccl"),
                             "device_in_start_event": runs.get("ours-lewelb", {}).get("device")}, "torch": torch_env.get("torch"), "cuda": torch_env.get("cuda"),
    "cudnn": torch_env.get("cudnn"), "numpy": torch_env.get("numpy"), "warmup_steps_dropped": warm,
    "ours_env_prefix": ours_env.get("ours_env"), "stages": stages, "runs": runs, "ratios": ratios,
    "targets": {k: {"max": m, "what": w, "value": ratios[k],
                    "met": ratios[k] <= m if isinstance(ratios[k], float) else None}
                for k, (m, w) in targets.items()},
    "notes": notes,
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


md = [f"## GPU check: {device_name or 'no CUDA device seen by torch'}", "",
      f"{summary['date_utc']}, commit {summary['git_revision']}, torch {summary['torch']} (CUDA {summary['cuda']}, "
      f"cuDNN {summary['cudnn']}). Median step time over the timed steps (the first {warm} dropped); images/s = "
      "batch / median (an image is a pair of views); peak GPU memory from nvidia-smi (the whole device, 200 ms "
      "samples). CUDA from our binary: " + ", ".join(f"{k} {v}" for k, v in summary["cuda_from_our_binary"].items()
                                                     if v is not None) + ".", ""]
if summary["ours_env_prefix"]:
    md += [f"Our binary ran with `{summary['ours_env_prefix']}` (it does not see CUDA without it).", ""]
md += ["| run | side | method | precision | channels-last | batch | median s/step | images/s | peak GPU MiB | status |",
       "|---|---|---|---|---|---|---|---|---|---|"]
for n, r in runs.items():
    extra = " foreach+cudnn.benchmark" if r.get("foreach") else ""
    md.append(f"| {n} | {r['side']}{extra} | {r['method'] or '-'} | {r['precision'] or '-'} | {r['channels_last']} | "
              f"{r['batch'] or '-'} | {fmt(r.get('step_s_median'), '.4f')} | {fmt(r.get('images_per_s'), '.1f')} | "
              f"{fmt(r['peak_gpu_mem_mib_nvidia_smi'], 'd')} | {r['status']} |")
md += ["", "| ratio (step time) | value | target |", "|---|---|---|"]
for k, v in ratios.items():
    t = summary["targets"].get(k)
    met = {None: "not measured" if v is None else "no verdict (different settings)", True: "met", False: "NOT met"}
    verdict = "-" if not t else f"<= {t['max']:.2f}: {met[t['met']]}"
    shown = v["value"] if isinstance(v, dict) else v
    md.append(f"| {k} | {fmt(shown, '.3f')} | {verdict} |")
md += [f"- {n}" for n in notes]
md += ["", "Stages: " + ", ".join(f"{s['stage']} {s['status']} ({s['seconds']} s)" for s in stages), "",
       "Commands:", ""]
md += [f"- {n}: `{r['command']}`" for n, r in runs.items()]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))
PYEOF
  cp "$W/stages.tsv" "$OUT/"
  cp "$W"/summary.* "$OUT/" 2>/dev/null
  tar czf "$OUT/logs.tar.gz.part" -C "$tmp" device-check && mv "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"
}

# ---- 4. the main comparison, then the optional stages -------------------------------------------------
# ours NAME NEED BATCH ARGS...: pretrain on the views for WARM + STEPS steps; stdout (events) to logs/NAME.out.
ours() {
  local name=$1 need=$2 batch=$3
  shift 3
  rm -rf "$tmp/run-$name"
  stage "$name" "$need" 180 "${OURS[@]}" "$LEWEL_BIN/pretrain" --views "$VIEWS" --arch "$ARCH" --batch-size "$batch" \
    --device "$DEVICE" "${AMP_FLAGS[@]}" --max-steps "$STEPS_ALL" --log-every 1 --ckpt-every-epochs 0 --quiet \
    --out "$tmp/run-$name" "$@"
  local rc=$?
  rm -rf "$tmp/run-$name"
  return $rc
}
# peer NAME NEED METHOD ARGS...: the same model and step in PyTorch eager; one JSON line to logs/NAME.out.
peer() {
  local name=$1 need=$2 method=$3
  shift 3
  stage "$name" "$need" 180 "$PY" "$PEER" --views "$VIEWS" --method "$method" --device "$DEVICE" \
    --arch "$ARCH" --stem imagenet --width 64 --proj-dim 256 --hidden-dim 4096 --groups 4 --batch-size "$BATCH" \
    --steps "$STEPS" --warmup-steps "$WARM" "$@"
}
LEWELB=(--preset in1k-lewelb-eman-200ep --bn-splits 1)
main_ok=1
ours ours-lewelb 30 "$BATCH" "${LEWELB[@]}" --method lewel-b || main_ok=0
peer peer-lewelb 30 lewel-b "${PEER_AMP[@]}" || main_ok=0
publish >/dev/null # a first summary, in case the call is cut short during the optional stages
if [ "$EXTRAS" = 1 ]; then
  if [ "$OURS_PRECISION" != "$PRECISION" ]; then
    peer peer-lewelb-fp32 35 lewel-b --precision fp32
  fi
  ours ours-byol 40 "$BATCH" "${LEWELB[@]}" --method byol
  MOCO=(--bn-splits "$BN_SPLITS_M" --queue-size "$QUEUE")
  ours ours-mocov2 45 "$BATCH_M" --preset in1k-mocov2-200ep --method mocov2 "${MOCO[@]}"
  ours ours-lewelm 45 "$BATCH_M" --preset in1k-lewelm-200ep --method lewel-m "${MOCO[@]}"
  peer peer-lewelb-tuned 35 lewel-b "${PEER_AMP[@]}" --foreach --cudnn-benchmark
  peer peer-byol 35 byol "${PEER_AMP[@]}"
fi

# ---- 5. summary ---------------------------------------------------------------------------------------
log "summary"
publish
log "done; results in $OUT (summary.md, summary.json, stages.tsv, logs.tar.gz)"
[ "$main_ok" = 1 ]
