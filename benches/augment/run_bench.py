"""Driver of the augment benchmark (called by scripts/bench-augment.sh): runs `augment` and the
torchvision + PIL baseline side by side, interleaved, ROUNDS times, and prints a Markdown table of
medians. Two figures per configuration:

- images/s: wall-clock throughput (the tool's own `images_per_s`, which excludes process start; the
  `--dry-run` rows make 3 epochs of views, 600 pairs, so pipeline start and drain weigh less);
- images per CPU-second: images / (user + system CPU time of the work), the per-core throughput, which
  holds even when other work shares the machine (the tool's `images_per_cpu_s`; the baseline's
  `time.process_time()` around its loop).

Usage: run_bench.py AUGMENT_BIN IMAGES_DIR VIEWS_DIR ROUNDS
"""
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys

aug, images, views, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
here = os.path.dirname(os.path.abspath(__file__))
taskset = shutil.which("taskset")


def pinned(n, cmd):
    return ([taskset, "-c", f"0-{n - 1}"] if taskset else []) + cmd


def last_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


configs = {
    "py1": ("torchvision 0.26 + PIL, 1 thread, pinned to 1 core (benches/augment/baseline.py)",
            lambda: last_json(pinned(1, [sys.executable, os.path.join(here, "baseline.py"), images, "--repeats", "1", "--threads", "1"]),
                              env=dict(os.environ, OMP_NUM_THREADS="1"))),
    "r1": ("`augment --threads 1 --dry-run`, pinned to 1 core",
           lambda: last_json(pinned(1, [aug, images, "--recipe", "lewel-b", "--threads", "1", "--dry-run", "--epochs", "3", "-q"]))),
    "r2": ("`augment --threads 2 --dry-run`, pinned to 2 cores",
           lambda: last_json(pinned(2, [aug, images, "--recipe", "lewel-b", "--threads", "2", "--dry-run", "--epochs", "3", "-q"]))),
    "r1o": ("`augment --threads 1 --out views.npy` (tmpfs, 1.2 MB written per image), pinned to 1 core",
            lambda: last_json(pinned(1, [aug, images, "--recipe", "lewel-b", "--threads", "1", "--out", os.path.join(views, "views.npy"), "-q"]))),
}
res = {k: [] for k in configs}
for r in range(rounds):
    for k, (_, run) in configs.items():
        res[k].append(run())
    print(f"bench-augment: round {r + 1}/{rounds}", file=sys.stderr)


def med(k, key):
    return statistics.median(x[key] for x in res[k])


n_images = res["r1o"][0]["images"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
print(f"### augment: lewel-b, two 224 px views per image ({n_images} JPEGs of about 500x375)\n")
print(f"{datetime.date.today()}; `nproc` = {os.cpu_count()}; CPU: {cpu}; medians of {rounds} interleaved rounds.\n")
print("| configuration | images/s (wall) | images per CPU-second | vs baseline (wall) | vs baseline (per CPU-second) |")
print("|---|---|---|---|---|")
for k, (name, _) in configs.items():
    w, c = med(k, "images_per_s"), med(k, "images_per_cpu_s")
    print(f"| {name} | {w:.0f} | {c:.0f} | {w / med('py1', 'images_per_s'):.2f}x | {c / med('py1', 'images_per_cpu_s'):.2f}x |")
print()
print(f"2 threads vs 1 thread (wall): {med('r2', 'images_per_s') / med('r1', 'images_per_s'):.2f}x; "
      f"CPU-seconds per image, 2 threads vs 1: {med('r1', 'images_per_cpu_s') / med('r2', 'images_per_cpu_s'):.2f}x "
      "(1.00 = no parallel overhead).")
print()
print("Raw runs (images/s wall): " + "; ".join(f"{k}: " + ", ".join(f"{x['images_per_s']:.0f}" for x in v) for k, v in res.items()))
