"""Make the small image files that tests/inputs.rs feeds to kiln.

Each is a real photo (an ImageNet tench from ../shared/imagenet-sample, scaled down) written by
PIL in one colour type or container that kiln must read the way PIL reads it:

  rgb.jpg          plain RGB JPEG (the reference)
  gray.png         8-bit greyscale           gray16.png   16-bit greyscale (PIL mode I;16)
  rgba.png         RGB with an alpha channel (alpha dropped by PIL's convert("RGB"))
  palette.png      8-bit palette             palette.gif  GIF palette
  cmyk.jpg         CMYK JPEG (Adobe APP14)   cmyk.pil.png what PIL decodes cmyk.jpg to, as RGB
  rot6.jpg         the photo stored rotated, EXIF Orientation=6 (display rotated 90 deg clockwise)
  rot3.jpg         stored upside down, Orientation=3
  mirror2.jpg      stored mirrored, Orientation=2
  photo.webp, photo.bmp, photo.tiff   other containers

Rerun (Pillow only): python python/make_input_fixtures.py
"""
import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "tests", "fixtures", "inputs")
SRC = os.path.join(ROOT, "..", "shared", "imagenet-sample", "n01440764_tench.JPEG")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    base = Image.open(SRC).convert("RGB")
    base = base.resize((200, 150), Image.BILINEAR)
    p = lambda name: os.path.join(OUT, name)
    base.save(p("rgb.jpg"), quality=95)
    # Everything else derives from what a decoder reads back from rgb.jpg, so the comparisons
    # in the Rust tests are against the same pixels.
    base = Image.open(p("rgb.jpg")).convert("RGB")
    base.convert("L").save(p("gray.png"))
    g16 = base.convert("L").point(lambda v: v * 257, mode="I").convert("I;16")
    g16.save(p("gray16.png"))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    rgba.save(p("rgba.png"))
    base.convert("P", palette=Image.ADAPTIVE, colors=256).save(p("palette.png"))
    base.convert("P", palette=Image.ADAPTIVE, colors=256).save(p("palette.gif"))
    base.convert("CMYK").save(p("cmyk.jpg"), quality=95)
    Image.open(p("cmyk.jpg")).convert("RGB").save(p("cmyk.pil.png"))
    for name, orientation, stored in [
        # Orientation 6: the viewer rotates 90 deg clockwise, so store it rotated counter-clockwise.
        ("rot6.jpg", 6, base.transpose(Image.ROTATE_90)),
        ("rot3.jpg", 3, base.transpose(Image.ROTATE_180)),
        ("mirror2.jpg", 2, base.transpose(Image.FLIP_LEFT_RIGHT)),
    ]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(p(name), quality=95, exif=exif.tobytes())
    base.save(p("photo.webp"), lossless=True)
    base.save(p("photo.bmp"))
    base.save(p("photo.tiff"))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(p(f)), file=sys.stderr)


if __name__ == "__main__":
    main()
