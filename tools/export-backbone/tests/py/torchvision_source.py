"""Writes torchvision's resnet18 (random init, BN buffers perturbed) as a zip .pth, a legacy .pth and its
fc-less backbone as reference .safetensors: inputs for the import test. Usage: torchvision_source.py DIR"""
import sys

import torch
import torchvision
from safetensors.torch import save_file

d = sys.argv[1]
torch.manual_seed(5)
m = torchvision.models.resnet18()
sd = m.state_dict()
with torch.no_grad():
    for k, v in sd.items():
        if k.endswith("running_mean"):
            v.normal_(0, 0.1)
        elif k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
        elif k.endswith("num_batches_tracked"):
            v.fill_(1234)
torch.save(sd, f"{d}/tv.pth")
torch.save(sd, f"{d}/tv-legacy.pth", _use_new_zipfile_serialization=False)
save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith("fc.")}, f"{d}/tv-reference.safetensors")
