"""Makes the benchmark images: ImageNet-sized (500x375 or 375x500) JPEG crops of real photos.

Usage: make_images.py SRC_DIR OUT_DIR [COUNT [WxH]]

Each photo of SRC_DIR (the Debian package mate-backgrounds: /usr/share/backgrounds/mate/nature/) gives
several crops at different positions and scales, resized with PIL's antialiased bilinear filter and
saved as quality-90 JPEGs, so that the set looks like ImageNet training images (mean about 400x350).
WxH (default 500x375) sets the size; every fourth crop is W and H swapped (portrait) unless W = H
(`96x96`: STL-10-sized images, for the end-to-end benchmark).
"""
import os
import sys

from PIL import Image


def main():
    src, out = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    w, h = map(int, sys.argv[4].split("x")) if len(sys.argv) > 4 else (500, 375)
    os.makedirs(out, exist_ok=True)
    photos = sorted(f for f in os.listdir(src) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not photos:
        sys.exit(f"no photos in {src}")
    per = -(-count // len(photos))
    n = 0
    for p in photos:
        im = Image.open(os.path.join(src, p)).convert("RGB")
        W, H = im.size
        for k in range(per):
            if n >= count:
                break
            portrait = k % 4 == 3
            tw, th = (h, w) if portrait else (w, h)
            # crop a box of the target aspect, 35%..100% of the largest such box, at a spread of positions
            frac = 0.35 + 0.65 * ((k * 7) % per) / max(per - 1, 1)
            bw = min(W, H * tw / th) * frac
            bh = bw * th / tw
            x = (W - bw) * ((k * 5) % 11) / 10
            y = (H - bh) * ((k * 3) % 7) / 6
            crop = im.resize((tw, th), Image.BILINEAR, box=(x, y, x + bw, y + bh))
            crop.save(os.path.join(out, f"{n:04d}-{os.path.splitext(p)[0]}.jpg"), quality=90)
            n += 1
    print(f"{n} images in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
