"""Driver of the end-to-end benchmark (called by scripts/bench-e2e.sh): `pretrain DATA --recipe R
--threads N` against benches/e2e/torch_loop.py (a PyTorch loop with a DataLoader of N worker processes,
the same recipe and the same model step), alternating ours and the peer, REPEATS rounds, for each case
and thread count. Prints a Markdown table of medians.

Both sides run one epoch and report, over its steady state (its steps but the first WARMUP: first-step
allocations, oneDNN set-up, the workers' start, the pipeline's fill; and the last TAIL: the batches made
ahead, at most 5 on our side and 2 x workers on the DataLoader's, are eaten with nothing left to make, so
no data work shares the cores with those steps), images/s = images / (wait + busy) and
data_wait_frac = wait / (wait + busy), where wait is the time the training loop is blocked getting the
next batch and busy the step; ours from the running `images_per_s` and `data_wait_frac` of
`pretrain`'s `step` events (`--log-every 1`). The median busy time per step (`step_s`) is given too: the
data workers share the cores with the step.

With `CASE=ref` arguments, each round also times that case's step alone on one batch of that case's
views, made once (`pretrain --views`, benches/pretrain/torch_lewel.py --views): what the step costs with
no data work beside it.

Usage: run_bench.py PRETRAIN_BIN REPEATS THREADS CASE=DATA_DIR... [CASE=ref...]
  CASE is one of the keys of CASES; THREADS a comma-separated list (1,2).
"""
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
benches = os.path.dirname(here)
WARMUP = 3
TAIL = 5

# name: (description, recipe, view size, batch, pretrain flags, torch_lewel.py model flags)
CASES = {
    "small": ("96x96 JPEGs (STL-10-sized), `lewel-b-small` (32 px views), ResNet-18 width 16, CIFAR stem "
              "(`--preset small-lewelb`), batch 128",
              "lewel-b-small", 32, 128,
              ["--preset", "small-lewelb"],
              ["--arch", "resnet18", "--stem", "cifar", "--width", "16", "--proj-dim", "128", "--hidden-dim", "512"]),
    "224": ("500x375 JPEGs (ImageNet-sized), `lewel-b` (224 px views, blur and solarize on), ResNet-18 width 8, "
            "ImageNet stem (`--preset small-lewelb --stem imagenet --width 8`), batch 32",
            "lewel-b", 224, 32,
            ["--preset", "small-lewelb", "--stem", "imagenet", "--width", "8"],
            ["--arch", "resnet18", "--stem", "imagenet", "--width", "8", "--proj-dim", "128", "--hidden-dim", "512"]),
}


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def ours(binary, data, threads, case, work, views=None):
    _, recipe, _, batch, flags, _ = case
    run = os.path.join(work, "run")
    shutil.rmtree(run, ignore_errors=True)
    # the step alone: 9 epochs of the one batch of views
    source = ["--views", views] if views else [data, "--recipe", recipe, "--threads", str(threads)]
    cmd = [binary, *source, *flags, "--epochs", "9" if views else "1", "--batch-size", str(batch),
           "--ckpt-every-epochs", "0", "--log-every", "1", "--device", "cpu", "--quiet", "--out", run]
    per_step = []  # (wait, busy) of each step, from the events' running figures (reset every epoch)
    prev = None
    for e in run_json(cmd):
        if e["event"] != "step":
            continue
        k = 1 if prev is None or prev[0] != e["epoch"] else prev[1] + 1
        t = k * batch / e["images_per_s"]
        w = e["data_wait_frac"] * t
        t0, w0 = (0.0, 0.0) if k == 1 else prev[2:]
        per_step.append((w - w0, t - t0 - (w - w0), e["step_s"]))
        prev = (e["epoch"], k, t, w)
    kept = per_step[WARMUP:] if views else per_step[WARMUP:-TAIL]
    wait, total = sum(s[0] for s in kept), sum(s[0] + s[1] for s in kept)
    return {"images_per_s": len(kept) * batch / total, "data_wait_frac": wait / total,
            "step_s": statistics.median(s[2] for s in kept), "cmd": cmd}


def peer(data, threads, case, views=None):
    _, recipe, _, batch, _, model = case
    if views:
        cmd = [sys.executable, os.path.join(benches, "pretrain", "torch_lewel.py"), "--views", views,
               "--batch-size", str(batch), "--steps", "6", "--warmup-steps", str(WARMUP), *model]
        s = run_json(cmd)[-1]
        return {"images_per_s": s["images_per_s"], "data_wait_frac": 0.0, "step_s": s["step_s_median"], "cmd": cmd}
    cmd = [sys.executable, os.path.join(here, "torch_loop.py"), data, "--recipe", recipe, "--workers", str(threads),
           "--batch-size", str(batch), "--warmup-steps", str(WARMUP), "--tail-steps", str(TAIL), *model]
    s = run_json(cmd)[-1]
    return {"images_per_s": s["images_per_s"], "data_wait_frac": s["data_wait_frac"], "step_s": s["step_s_median"],
            "torch_threads": s["torch_threads"], "cmd": cmd}


def cpu_seconds():
    """(CPU-seconds the whole machine was busy, CPU-seconds of this driver's finished children) so far."""
    import resource

    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait (guest time is inside user)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), ru.ru_utime + ru.ru_stime


def make_views(path, data, recipe, n):
    """One batch of real view pairs, float32 [n, 2, 3, S, S]: the first n images of `data` through the peer's
    transforms (the step's time depends a little on the content: random normal views are about 3% slower)."""
    import numpy as np

    import torch_loop

    size, views = torch_loop.recipe(recipe)
    ds = torch_loop.TwoViews(data, size, views)
    np.save(path, np.stack([np.stack([v.numpy() for v in ds[i]]) for i in range(n)]).astype(np.float32))


def show(cmd, dirs):
    """A command as the reader would type it: tool names without their folder, temporary folders named."""
    words = []
    for w in cmd:
        if w == sys.executable:
            w = "python"
        elif w.startswith(benches):
            w = "benches" + w[len(benches):]
        elif os.path.isabs(w) and os.access(w, os.X_OK) and os.path.isfile(w):
            w = os.path.basename(w)
        for d, label in dirs.items():
            w = w.replace(d, label)
        words.append(w)
    return " ".join(words)


def main():
    binary, repeats, threads = sys.argv[1], int(sys.argv[2]), [int(t) for t in sys.argv[3].split(",")]
    cases = [arg.split("=", 1) for arg in sys.argv[4:]]
    for name, _ in cases:
        if name not in CASES:
            sys.exit(f"run_bench.py: unknown case {name!r}; cases: {', '.join(CASES)}")
    refs = [name for name, d in cases if d == "ref"]
    cases = [(name, d) for name, d in cases if d != "ref"]
    res = {(name, t): {"ours": [], "peer": []} for name, _ in cases for t in threads}
    res.update({(name, "ref"): {"ours": [], "peer": []} for name in refs})
    loads = [os.getloadavg()[0]]
    start = datetime.datetime.now(datetime.timezone.utc)
    busy0, ours0 = cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="lewel-bench-e2e.") as work:
        views = {}
        data_of = dict(cases)
        for name in refs:
            if name not in data_of:
                sys.exit(f"run_bench.py: {name}=ref needs {name}=DATA_DIR too (its views come from that data)")
            views[name] = os.path.join(work, f"views-{name}.npy")
            make_views(views[name], data_of[name], CASES[name][1], CASES[name][3])
        work_dirs = {os.path.join(work, "run"): "RUN", **{d: f"DATA_{n.upper()}" for n, d in cases},
                     **{v: f"VIEWS_{n.upper()}.npy" for n, v in views.items()}}
        jobs = [(name, data, t) for name, data in cases for t in threads] + [(name, None, "ref") for name in refs]
        for r in range(repeats):
            for name, data, t in jobs:
                # alternate which side goes first, so neither always follows the same process
                order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
                v = views.get(name) if t == "ref" else None
                for side in order:
                    if side == "ours":
                        x = ours(binary, data, t, CASES[name], work, views=v)
                    else:
                        x = peer(data, t, CASES[name], views=v)
                    res[(name, t)][side].append(x)
                    loads.append(os.getloadavg()[0])
                o, p = res[(name, t)]["ours"][-1], res[(name, t)]["peer"][-1]
                print(f"bench-e2e: round {r + 1}/{repeats} {name} threads {t}: ours {o['images_per_s']:.1f} "
                      f"images/s (wait {o['data_wait_frac']:.3f}), PyTorch {p['images_per_s']:.1f} "
                      f"(wait {p['data_wait_frac']:.3f}), load {loads[-1]:.2f}", file=sys.stderr, flush=True)

    busy1, ours1 = cpu_seconds()
    wall = (datetime.datetime.now(datetime.timezone.utc) - start).total_seconds()
    others = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (wall * os.cpu_count())

    def med(key, side, k):
        return statistics.median(x[k] for x in res[key][side])

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "unknown CPU")
    torch_threads = res[(cases[0][0], threads[0])]["peer"][0]["torch_threads"] if cases else "?"
    print("### End to end: JPEG decode + augmentation + training step, `pretrain` against a PyTorch DataLoader loop\n")
    print(f"{start:%Y-%m-%d %H:%M} UTC; `nproc` = {os.cpu_count()}; CPU: {cpu}; medians of {repeats} rounds, "
          f"ours and the peer alternating (and which goes first); torch intra-op threads {torch_threads} on both "
          f"sides (libtorch's default); one epoch per run, its first {WARMUP} and last {TAIL} steps left out (the steady "
          f"state of a long epoch); {wall / 60:.1f} minutes in all. "
          f"Other processes used {100 * others:.0f}% of the machine's CPU time during the runs (the benchmark's "
          f"own runs excluded); 1-minute load average (the benchmark's runs included) min {min(loads):.2f}, "
          f"median {statistics.median(loads):.2f}, max {max(loads):.2f}.\n")
    for name, data in cases:
        n = len([f for f in os.listdir(data) if f.lower().endswith(".jpg")])
        print(f"- **{name}**: {n} {CASES[name][0]}: {n // CASES[name][3]} steps.")
    print()
    print("| case | threads = DataLoader workers | ours images/s | PyTorch images/s | ours / PyTorch | ours data wait | "
          "PyTorch data wait | ours step s | PyTorch step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in res:
        name, t = key
        label = "step alone (one batch of views, no data work)" if t == "ref" else t
        oi, pi = med(key, "ours", "images_per_s"), med(key, "peer", "images_per_s")
        print(f"| {name} | {label} | {oi:.1f} | {pi:.1f} | {oi / pi:.2f}x | "
              f"{100 * med(key, 'ours', 'data_wait_frac'):.1f}% | {100 * med(key, 'peer', 'data_wait_frac'):.1f}% | "
              f"{med(key, 'ours', 'step_s'):.3f} | {med(key, 'peer', 'step_s'):.3f} |")
    print()
    print("Data wait: the share of the loop's time blocked getting the next batch. Step s: median time of one "
          "step (busy), which grows when data workers take the cores the step's threads run on.\n")
    for name in refs:
        parts = []
        for t in threads:
            if (name, t) not in res:
                continue
            o, p = (1 - med((name, t), side, "images_per_s") / med((name, "ref"), side, "images_per_s")
                    for side in ("ours", "peer"))
            parts.append(f"{t} thread{'s' if t > 1 else ''}: ours {100 * o:.0f}%, PyTorch {100 * p:.0f}%")
        if parts:
            print(f"Throughput lost to reading, decoding and augmenting the JPEGs ({name}; 1 - end to end / step "
                  f"alone, each side against its own step): " + "; ".join(parts) + ".\n")
    print("Commands (the last round's):\n")
    for key in res:
        for side in ("ours", "peer"):
            print(f"- `{show(res[key][side][-1]['cmd'], work_dirs)}`")
    print()
    print("Raw runs (images/s, data wait %): " + "; ".join(
        f"{name} t{t} {side}: " + ", ".join(f"{x['images_per_s']:.1f} ({100 * x['data_wait_frac']:.1f}%)" for x in v)
        for (name, t), sides in res.items() for side, v in sides.items()))


if __name__ == "__main__":
    main()
