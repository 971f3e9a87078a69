"""PyTorch eager reference of `embed`, for scripts/bench-embed.sh (not part of the product).

  reference.py make DIR N          N synthetic 320x256 JPEGs in DIR/img/ and a torchvision resnet18 state dict
  reference.py run DIR BATCH       decode, resize 256 + centre crop 224, normalise, eval-mode forward,
                                   global average pool; one JSON line with images_per_s

Same work as `embed --ckpt DIR/resnet18.pth --data DIR/img` (torchvision ResNet-18, BN in eval mode).
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms


def make(d, n):
    os.makedirs(f"{d}/img", exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = (rng.random((256, 320, 3)) * 255).astype(np.uint8)
        Image.fromarray(a).save(f"{d}/img/{i:05d}.jpg", quality=90)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), f"{d}/resnet18.pth")


def run(d, batch):
    t0 = time.time()
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(f"{d}/resnet18.pth"))
    model.fc = torch.nn.Identity()
    model.eval()
    tf = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    files = sorted(os.listdir(f"{d}/img"))
    ds = [f"{d}/img/{f}" for f in files]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, num_workers=0,
        collate_fn=lambda paths: torch.stack([tf(Image.open(p).convert("RGB")) for p in paths]))
    rows = 0
    with torch.no_grad():
        for x in loader:
            rows += model(x).shape[0]
    dt = time.time() - t0
    print(json.dumps({"rows": rows, "elapsed_s": dt, "images_per_s": rows / dt}))


if __name__ == "__main__":
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "make":
        make(d, int(sys.argv[3]))
    else:
        run(d, int(sys.argv[3]))
