"""The Python baseline of the augment benchmark: the official LEWEL_B two-view recipe written with
torchvision transforms on PIL images, exactly as the official `data/transforms.py` builds it (see
shared reference section 4), run in a single process with torch and PIL limited to one thread.

Usage: baseline.py IMAGE_DIR [--repeats R] [--threads T]

Prints one JSON line per repeat: {"images": N, "elapsed_s": .., "images_per_s": .., "cpu_s": ..,
"images_per_cpu_s": ..} (cpu_s: this process's CPU time for the repeat, all threads). Each image is
read and decoded once (PIL, `convert('RGB')` like torchvision's ImageFolder loader) and turned into two
normalised 224 px views (float tensors), which is what `augment` does per image.
"""
import argparse
import json
import os
import random
import time

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms


class GaussianBlur:
    """The official code's blur: PIL's extended-box Gaussian, radius = sigma ~ U(0.1, 2.0)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, x):
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class Solarize:
    def __call__(self, x):
        return ImageOps.solarize(x, 128)


def view(blur_p, solarize_p):
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.2, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([GaussianBlur([0.1, 2.0])], p=blur_p),
        transforms.RandomApply([Solarize()], p=solarize_p),
        transforms.ToTensor(),
        normalize,
    ])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    t1, t2 = view(1.0, 0.0), view(0.1, 0.2)
    files = sorted(os.path.join(args.images, f) for f in os.listdir(args.images) if f.endswith(".jpg"))
    for _ in range(args.repeats):
        start = time.perf_counter()
        cpu0 = time.process_time()
        for f in files:
            with open(f, "rb") as fh:
                img = Image.open(fh).convert("RGB")
            a, b = t1(img), t2(img)
            assert a.shape == (3, 224, 224) and b.shape == (3, 224, 224)
        el = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        print(json.dumps({"images": len(files), "elapsed_s": round(el, 4), "images_per_s": round(len(files) / el, 2),
                          "cpu_s": round(cpu, 4), "images_per_cpu_s": round(len(files) / cpu, 2)}), flush=True)


if __name__ == "__main__":
    main()
