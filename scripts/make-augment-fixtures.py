#!/usr/bin/env python3
"""Makes fixtures/augment/: small odd image files for the decoder and the bad-input tests, and the
torchvision/PIL expectations that lib/tests/data_ops.rs compares our augmentations with.

Run with the project's venv (torch 2.11, torchvision 0.26, pillow):
    .venv/bin/python scripts/make-augment-fixtures.py
Everything is derived from fixtures/photos-96/astronaut.png, so the outputs are reproducible.
"""
import io
import math
import os

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

top = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = os.path.join(top, "fixtures", "augment")
good = os.path.join(out, "decode")
bad = os.path.join(out, "bad")
exp = os.path.join(out, "expected")
for d in (good, bad, exp):
    os.makedirs(d, exist_ok=True)

src = Image.open(os.path.join(top, "fixtures", "photos-96", "astronaut.png")).convert("RGB")
small = src.resize((40, 30), Image.BILINEAR)


def save_decoded(name, im):
    """PIL's view of a fixture (convert('RGB'), upright), as uint8 [H, W, 3]."""
    np.save(os.path.join(exp, f"decoded-{name}.npy"), np.asarray(im.convert("RGB"), dtype=np.uint8))


# --- decoder fixtures -----------------------------------------------------------------------------
small.save(os.path.join(good, "rgb.jpg"), quality=92)
save_decoded("rgb", Image.open(os.path.join(good, "rgb.jpg")))
small.convert("L").save(os.path.join(good, "grey.jpg"), quality=92)
save_decoded("grey", Image.open(os.path.join(good, "grey.jpg")))
small.convert("CMYK").save(os.path.join(good, "cmyk.jpg"), quality=92)
save_decoded("cmyk", Image.open(os.path.join(good, "cmyk.jpg")))
# EXIF orientation 6 (rotate 90 CW to display): stored 40x30, shown 30x40.
exif = Image.Exif()
exif[0x0112] = 6
small.save(os.path.join(good, "exif-rotated.jpg"), quality=92, exif=exif.tobytes())
from PIL import ImageOps  # noqa: E402

save_decoded("exif-rotated", ImageOps.exif_transpose(Image.open(os.path.join(good, "exif-rotated.jpg"))))
# 16-bit RGB PNG (PIL cannot write 16-bit RGB; write it by hand with zlib).
import struct  # noqa: E402
import zlib  # noqa: E402

a16 = (np.asarray(small, dtype=np.uint16) * 257).astype(">u2")
raw = b"".join(b"\x00" + row.tobytes() for row in a16)


def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


png16 = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 30, 16, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(os.path.join(good, "deep16.png"), "wb").write(png16)
save_decoded("deep16", small)  # 16-bit v*257 scales back to v exactly
small.quantize(16).save(os.path.join(good, "palette.png"))
save_decoded("palette", Image.open(os.path.join(good, "palette.png")))
rgba = small.convert("RGBA")
alpha = Image.linear_gradient("L").resize((40, 30))
rgba.putalpha(alpha)
rgba.save(os.path.join(good, "rgba.png"))
save_decoded("rgba", Image.open(os.path.join(good, "rgba.png")))
small.save(os.path.join(good, "photo.webp"), lossless=True)
save_decoded("photo", Image.open(os.path.join(good, "photo.webp")))

# --- bad inputs: a folder with 3 good images, a truncated JPEG and a text file named .jpg ---------
for k in range(3):
    small.rotate(90 * k).save(os.path.join(bad, f"good-{k}.png"))
buf = io.BytesIO()
small.save(buf, "JPEG", quality=92)
open(os.path.join(bad, "truncated.jpg"), "wb").write(buf.getvalue()[: len(buf.getvalue()) // 3])
open(os.path.join(bad, "text.jpg"), "w").write("this is not a picture\n")

# --- expectations for the operations --------------------------------------------------------------
img = src.crop((8, 4, 8 + 60, 4 + 50))  # 60x50 u8
np.save(os.path.join(exp, "src.npy"), np.asarray(img, dtype=np.uint8))
t = F.to_dtype(F.to_image(img), torch.float32, scale=True)  # [3, 50, 60] in [0, 1]


def save(name, x):
    np.save(os.path.join(exp, name + ".npy"), np.ascontiguousarray(x.numpy().astype(np.float32)))


# Resized crops (top, left, h, w) -> (out_h, out_w): torchvision tensor antialias, and PIL BILINEAR.
crops = [((3, 5, 40, 52), (24, 24)), ((10, 8, 17, 13), (32, 32)), ((0, 0, 50, 60), (21, 33))]
for k, ((i, j, h, w), size) in enumerate(crops):
    save(f"crop{k}-tv", F.resized_crop(t, i, j, h, w, list(size), antialias=True))
    pil = img.crop((j, i, j + w, i + h)).resize(size[::-1], Image.BILINEAR)
    save(f"crop{k}-pil", torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1))
# Evaluation transform: Resize(32) -> CenterCrop(28), tensor antialias.
save("eval-tv", F.center_crop(F.resize(t, [32], antialias=True), [28, 28]))

# Colour operations on the first crop, float tensor formulas.
x = F.resized_crop(t, 3, 5, 40, 52, [24, 24], antialias=True)
save("colour-in", x)
save("brightness-1.3", F.adjust_brightness(x, 1.3))
save("contrast-0.7", F.adjust_contrast(x, 0.7))
save("contrast-1.4", F.adjust_contrast(x, 1.4))
save("saturation-1.4", F.adjust_saturation(x, 1.4))
save("saturation-0.6", F.adjust_saturation(x, 0.6))
save("hue-0.08", F.adjust_hue(x, 0.08))
save("hue--0.1", F.adjust_hue(x, -0.1))
save("hue-0.5", F.adjust_hue(x, 0.5))
save("grayscale", F.rgb_to_grayscale(x, num_output_channels=3))
save("solarize", F.solarize(x, 128 / 255))

# Blur: PIL's GaussianBlur(radius=sigma) on 8-bit, and torchvision's sampled Gaussian on float.
for sigma in (0.3, 1.0, 1.7):
    blurred = img.filter(ImageFilter.GaussianBlur(radius=sigma))
    save(f"blur-{sigma}-pil", torch.from_numpy(np.asarray(blurred, dtype=np.float32) / 255.0).permute(2, 0, 1))
    k = 2 * math.ceil(3 * sigma) + 1
    save(f"blur-{sigma}-tv", F.gaussian_blur(t, [k, k], [sigma, sigma]))

print("fixtures written to", out)
