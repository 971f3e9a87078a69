"""The peer of `pretrain DATA --recipe R --threads N` in the end-to-end benchmark (scripts/bench-e2e.sh):
a plain PyTorch training loop reading JPEGs through torch.utils.data.DataLoader with N worker processes,
the same two-view recipe written with torchvision transforms on PIL images (as the official
`data/transforms.py`), and the same model and step as benches/pretrain/torch_lewel.py (imported from it:
forward of both views through online and target, symmetric loss, backward, LARS step, EMA update).

Usage:
  python torch_loop.py DATA_DIR --recipe lewel-b-small --workers N --batch-size B [--epochs 1] \\
      [--warmup-steps 3] [--tail-steps 5] [model flags of torch_lewel.py: --arch --stem --width --proj-dim --hidden-dim ...]

DATA_DIR is a flat folder of images (`.jpg`, `.jpeg`, `.png`), read with `PIL.Image.open(f).convert('RGB')`
like torchvision's ImageFolder loader. The DataLoader is built as the official main.py builds it:
shuffle, drop_last, a new iterator (new worker processes) every epoch; pin_memory is off (CPU).

Timing, the same as `pretrain`'s `step`/`epoch` events: per step, `wait` is the time blocked in
`next()` on the DataLoader iterator (the first step of an epoch includes starting the workers, as
`pretrain`'s includes starting its producer), `busy` the step itself; images/s = images / (wait + busy),
data_wait_frac = wait / (wait + busy). One JSON line per epoch, then a summary of the steady state, the
steps of the run but its first --warmup-steps (first-step allocations and oneDNN set-up, the workers'
start, the pipeline's fill) and its last --tail-steps (the batches made ahead, at most prefetch_factor 2
x workers, are eaten with nothing left to make, so the workers no longer share the cores with the step):
{"images_per_s", "data_wait_frac", "steps", ...}.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch
from PIL import Image
from torchvision import transforms

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "pretrain"))
sys.path.insert(0, os.path.join(here, "..", "augment"))
import torch_lewel  # noqa: E402  (model, LARS, EMA: the same step as the pretrain benchmark's peer)
from baseline import GaussianBlur, Solarize  # noqa: E402  (PIL's blur and solarize, as the official code)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def recipe(name):
    """The presets of lib/src/data/recipe.rs: (size, [view1, view2]) with each view's parameters."""
    base, small = (name[: -len("-small")], True) if name.endswith("-small") else (name, False)
    byol = dict(scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grey_p=0.2)
    if base in ("lewel-b", "byol"):
        views = [dict(byol, blur_p=1.0, solarize_p=0.0), dict(byol, blur_p=0.1, solarize_p=0.2)]
    elif base == "mocov2":
        v = dict(byol, jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5, solarize_p=0.0)
        views = [v, dict(v)]
    else:
        sys.exit(f"torch_loop.py: unknown recipe {name!r}")
    for v in views:
        if base != "byol":
            v["scale"] = (0.2, 1.0)  # NOTE(ref): LEWEL_B's official crop scale
        if small:
            v["blur_p"] = 0.0  # the -small presets: no blur on 32 px images
    return (32 if small else 224), views


def view_transform(size, v):
    ops = [
        transforms.RandomResizedCrop(size, scale=v["scale"]),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(*v["jitter"])], p=v["jitter_p"]),
        transforms.RandomGrayscale(p=v["grey_p"]),
    ]
    # A probability-0 step is left out, as one writes a recipe without it (the -small presets' blur).
    if v["blur_p"] > 0:
        ops.append(transforms.RandomApply([GaussianBlur([0.1, 2.0])], p=v["blur_p"]))
    if v["solarize_p"] > 0:
        ops.append(transforms.RandomApply([Solarize()], p=v["solarize_p"]))
    ops += [transforms.ToTensor(), transforms.Normalize(mean=MEAN, std=STD)]
    return transforms.Compose(ops)


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, root, size, views):
        exts = (".jpg", ".jpeg", ".png")
        self.files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.lower().endswith(exts))
        if not self.files:
            sys.exit(f"torch_loop.py: no images in {root}")
        self.t1, self.t2 = view_transform(size, views[0]), view_transform(size, views[1])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.t1(img), self.t2(img)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--recipe", default="lewel-b-small")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (`pretrain --threads`)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--warmup-steps", type=int, default=3, help="first steps left out of the summary")
    ap.add_argument("--tail-steps", type=int, default=5, help="last steps left out of the summary")
    ap.add_argument("--seed", type=int, default=0)
    a, model_flags = ap.parse_known_args()
    m = torch_lewel.args_parser().parse_args(model_flags + ["--batch-size", str(a.batch_size)])
    if m.threads:
        torch.set_num_threads(m.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)

    size, views = recipe(a.recipe)
    ds = TwoViews(a.data, size, views)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                         drop_last=True, pin_memory=False)
    net = torch_lewel.Lewel(m)
    net.train()
    net.target_net.eval()
    opt = torch_lewel.make_optimizer(net, 0.1, 1e-5)

    steps = []  # (wait, busy, images) of every step of the run
    for epoch in range(a.epochs):
        wait = busy = 0.0
        images, losses = 0, []
        t_epoch = time.perf_counter()
        t0 = t_epoch
        it = iter(loader)  # starts the worker processes: counted in the first step's wait
        while True:
            try:
                v1, v2 = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            loss = net(v1, v2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            net.momentum_update(0.99)
            losses.append(loss.item())
            t2 = time.perf_counter()
            wait += t1 - t0
            busy += t2 - t1
            images += v1.shape[0]
            steps.append((t1 - t0, t2 - t1, v1.shape[0]))
            t0 = time.perf_counter()
        del it
        wall = time.perf_counter() - t_epoch
        e = {"event": "epoch", "epoch": epoch, "images": images, "wait_s": round(wait, 4), "busy_s": round(busy, 4),
             "wall_s": round(wall, 4), "images_per_s": round(images / (wait + busy), 2),
             "data_wait_frac": round(wait / (wait + busy), 4), "loss_mean": statistics.fmean(losses)}
        print(json.dumps(e), flush=True)

    kept = steps[a.warmup_steps:len(steps) - a.tail_steps]
    if not kept:
        sys.exit(f"torch_loop.py: {len(steps)} steps, none left without the first {a.warmup_steps} and the last "
                 f"{a.tail_steps}")
    wait, busy, images = (sum(s[k] for s in kept) for k in range(3))
    print(json.dumps({
        "event": "summary", "peer": "pytorch-dataloader", "recipe": a.recipe, "size_px": size, "workers": a.workers,
        "batch": a.batch_size, "arch": m.arch, "stem": m.stem, "width": m.width, "method": m.method,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "steps": len(kept),
        "warmup_steps": a.warmup_steps, "tail_steps": a.tail_steps, "images": images, "images_per_s": round(images / (wait + busy), 2),
        "data_wait_frac": round(wait / (wait + busy), 4), "step_s_median": round(statistics.median(s[1] for s in kept), 4)}),
        flush=True)


if __name__ == "__main__":
    main()
