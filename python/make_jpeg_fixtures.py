"""Make the JPEG pixel-equality corpus: small JPEG files and the pixels PIL decodes from them.

What it makes (all under tests/fixtures/jpeg/, read by tests/jpeg.rs):
  - corpus/*.jpg        small JPEGs: crops of the shared ImageNet photos re-encoded by Pillow
                        (qualities 30-100, 4:4:4 / 4:2:2 / 4:2:0, baseline and progressive,
                        optimised Huffman tables, grayscale, CMYK), progressive files cut short
                        after some scans (so libjpeg-turbo's block smoothing runs), and files from
                        the small baseline encoder below for what Pillow cannot write: 4:4:0,
                        4:1:1, 4:1:0 and mixed sampling factors, restart intervals, YCCK, RGB
                        (Adobe transform 0), no JFIF marker. Sizes from 1x1 up, many not a
                        multiple of the MCU.
  - corpus/*.png        what Pillow 13.0.0 (libjpeg-turbo 3.2.0) decodes from each:
                        Image.open(f).convert("RGB"), lossless.
  - imagenet-sample.sha256   sha256 of Image.open(f).convert("RGB").tobytes() for each of the 500
                        photos in ../shared/imagenet-sample (too large to commit as pixels).

Rerun (from the repository root, with Pillow 13.0.0 and numpy):
    python python/make_jpeg_fixtures.py [--shared ../shared]
The output is deterministic for a given Pillow/libjpeg-turbo.
"""

import argparse
import hashlib
import io
import os
import struct

import numpy as np
from PIL import Image, features

ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58,
    59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
]

# ---------------------------------------------------------------------------------------------
# A small baseline JPEG encoder, for sampling factors, restart intervals and colour transforms
# that Pillow's encoder does not offer. Its quality does not matter: PIL decoding its output is
# the reference. Huffman codes are flat (every DC symbol 4 bits, every AC symbol 8 bits), which
# is valid and keeps the encoder short.

DC_SYMS = list(range(12))
AC_SYMS = [0x00, 0xF0] + [(r << 4) | s for r in range(16) for s in range(1, 11)]


def flat_table(symbols, length):
    counts = [0] * 16
    counts[length - 1] = len(symbols)
    codes = {sym: (i, length) for i, sym in enumerate(symbols)}
    return counts, symbols, codes


DC_TABLE = flat_table(DC_SYMS, 4)
AC_TABLE = flat_table(AC_SYMS, 8)


def quant_table(quality, chroma):
    base = np.array([
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
        56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81,
        104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ]) if not chroma else np.array([17, 18, 24, 47] + [99] * 60)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255).astype(np.int64)


def dct_matrix():
    m = np.zeros((8, 8))
    for k in range(8):
        for n in range(8):
            c = np.sqrt(1 / 8) if k == 0 else np.sqrt(2 / 8)
            m[k, n] = c * np.cos((2 * n + 1) * k * np.pi / 16)
    return m


DCT = dct_matrix()


class BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc = 0
                self.n = 0

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)


def magnitude(v):
    s = int(abs(v)).bit_length()
    bits = v if v >= 0 else v + (1 << s) - 1
    return s, bits


def segment(marker, body):
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def encode(planes, factors, quality=75, restart=0, ids=None, jfif=True, adobe=None):
    """planes: full-resolution uint8 arrays (one per component, all the same shape);
    factors: (h, v) per component; adobe: None or the APP14 transform byte."""
    height, width = planes[0].shape
    n = len(planes)
    ids = ids or list(range(1, n + 1))
    max_h = max(h for h, _ in factors)
    max_v = max(v for _, v in factors)
    mcux = -(-width // (8 * max_h))
    mcuy = -(-height // (8 * max_v))
    qts = [quant_table(quality, False), quant_table(quality, True)]
    tq = [0] + [1] * (n - 1) if n in (3, 4) and adobe != 0 else [0] * n
    if n == 4:
        tq = [0, 1, 1, 0]
    comps = []
    for p, (h, v) in zip(planes, factors):
        # Box-downsample to the component's size, then pad to whole MCUs by edge replication.
        cw = -(-width * h // max_h)
        ch = -(-height * v // max_v)
        fx, fy = max_h // h, max_v // v
        padded = np.pad(p.astype(np.float64), ((0, ch * fy - height), (0, cw * fx - width)), mode="edge")
        small = padded.reshape(ch, fy, cw, fx).mean(axis=(1, 3))
        full = np.pad(small, ((0, mcuy * v * 8 - ch), (0, mcux * h * 8 - cw)), mode="edge")
        comps.append(full - 128)

    out = bytearray(b"\xff\xd8")
    if jfif:
        out += segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    if adobe is not None:
        out += segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, adobe))
    for i, q in enumerate(qts):
        out += segment(0xDB, bytes([i]) + bytes(int(q[ZIGZAG[k]]) for k in range(64)))
    sof = struct.pack(">BHHB", 8, height, width, n)
    for i, (h, v) in enumerate(factors):
        sof += bytes([ids[i], (h << 4) | v, tq[i]])
    out += segment(0xC0, sof)
    for cls, tbl in ((0x00, DC_TABLE), (0x10, AC_TABLE)):
        counts, syms, _ = tbl
        out += segment(0xC4, bytes([cls]) + bytes(counts) + bytes(syms))
    if restart:
        out += segment(0xDD, struct.pack(">H", restart))
    sos = bytes([n]) + b"".join(bytes([ids[i], 0x00]) for i in range(n)) + b"\x00\x3f\x00"
    out += segment(0xDA, sos)

    bw = BitWriter()
    pred = [0] * n
    rst = 0
    for m in range(mcux * mcuy):
        if restart and m and m % restart == 0:
            bw.flush()
            bw.out += bytes([0xFF, 0xD0 + rst])
            rst = (rst + 1) % 8
            pred = [0] * n
        mx, my = m % mcux, m // mcux
        for ci, (h, v) in enumerate(factors):
            q = qts[tq[ci]]
            for by in range(v):
                for bx in range(h):
                    y0, x0 = (my * v + by) * 8, (mx * h + bx) * 8
                    blk = comps[ci][y0:y0 + 8, x0:x0 + 8]
                    coef = DCT @ blk @ DCT.T
                    qc = np.round(coef.flatten() / q).astype(np.int64)
                    zz = [int(qc[ZIGZAG[k]]) for k in range(64)]
                    diff = zz[0] - pred[ci]
                    pred[ci] = zz[0]
                    s, bits = magnitude(diff)
                    code, length = DC_TABLE[2][s]
                    bw.put(code, length)
                    bw.put(bits, s)
                    run = 0
                    for k in range(1, 64):
                        c = zz[k]
                        if c == 0:
                            run += 1
                            continue
                        while run > 15:
                            bw.put(*AC_TABLE[2][0xF0])
                            run -= 16
                        s, bits = magnitude(c)
                        bw.put(*AC_TABLE[2][(run << 4) | s])
                        bw.put(bits, s)
                        run = 0
                    if run:
                        bw.put(*AC_TABLE[2][0x00])
    bw.flush()
    out += bw.out + b"\xff\xd9"
    return bytes(out)


def ycc_planes(rgb):
    a = np.asarray(rgb, dtype=np.float64)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return [np.clip(np.round(p), 0, 255) for p in (y, cb, cr)]


# ---------------------------------------------------------------------------------------------


def truncate_scans(data, keep):
    """The progressive file `data` with only its first `keep` scans, then EOI."""
    pos, scans = 2, 0
    while True:
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        end = pos + 2 + length
        if marker == 0xDA:
            scans += 1
            # Skip the entropy-coded data to the next marker.
            p = end
            while not (data[p] == 0xFF and data[p + 1] not in (0x00,) and not 0xD0 <= data[p + 1] <= 0xD7):
                p += 1
            end = p
            if scans == keep:
                return data[:end] + b"\xff\xd9"
        pos = end


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "jpeg")
    corpus = os.path.join(root, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for f in os.listdir(corpus):
        # damaged_* files belong to make_jpeg_damaged_fixtures.py.
        if not f.startswith("damaged_"):
            os.remove(os.path.join(corpus, f))
    sample = os.path.join(args.shared, "imagenet-sample")
    print("Pillow", Image.__version__, "libjpeg-turbo", features.version("libjpeg_turbo"))

    photos = sorted(f for f in os.listdir(sample) if f.endswith(".JPEG"))
    srcs = [Image.open(os.path.join(sample, photos[i])).convert("RGB") for i in (0, 37, 211, 402)]

    files = {}

    def crop(img, w, h, k=0):
        x = (img.width - w) * (k % 3) // 3
        y = (img.height - h) * (k % 2) // 2
        return img.crop((x, y, x + w, y + h))

    # Pillow's encoder.
    sizes = [(1, 1), (2, 3), (7, 5), (8, 8), (9, 17), (16, 16), (17, 9), (33, 31), (65, 47), (161, 120)]
    k = 0
    for ss_name, ss in (("444", 0), ("422", 1), ("420", 2)):
        for prog in (False, True):
            for w, h in sizes:
                q = [30, 50, 75, 90, 95, 100][k % 6]
                img = crop(srcs[k % 4], w, h, k)
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=q, subsampling=ss, progressive=prog, optimize=(k % 3 == 0))
                files[f"pil_{ss_name}_{'prog' if prog else 'base'}_{w}x{h}_q{q}.jpg"] = buf.getvalue()
                k += 1
    for w, h in [(1, 1), (5, 3), (31, 33), (120, 90)]:
        for prog in (False, True):
            buf = io.BytesIO()
            crop(srcs[1], w, h).convert("L").save(buf, "JPEG", quality=85, progressive=prog)
            files[f"pil_gray_{'prog' if prog else 'base'}_{w}x{h}.jpg"] = buf.getvalue()
            buf = io.BytesIO()
            crop(srcs[2], w, h).convert("CMYK").save(buf, "JPEG", quality=85, progressive=prog)
            files[f"pil_cmyk_{'prog' if prog else 'base'}_{w}x{h}.jpg"] = buf.getvalue()
    # Progressive files cut after some of their scans: coefficients not known to full precision,
    # so libjpeg-turbo's block smoothing runs (and, with DC only, predicts DC too).
    for name, img, ss in (("420", crop(srcs[3], 150, 110), 2), ("444", crop(srcs[0], 97, 71), 0)):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80, subsampling=ss, progressive=True)
        full = buf.getvalue()
        for keep in (1, 2, 3, 4, 6, 8):
            files[f"pil_{name}_prog_{keep}scans.jpg"] = truncate_scans(full, keep)
    buf = io.BytesIO()
    crop(srcs[1], 90, 70).convert("L").save(buf, "JPEG", quality=80, progressive=True)
    for keep in (1, 2, 3):
        files[f"pil_gray_prog_{keep}scans.jpg"] = truncate_scans(buf.getvalue(), keep)

    # The small encoder above.
    samplings = {
        "440": [(1, 2), (1, 1), (1, 1)],
        "411": [(4, 1), (1, 1), (1, 1)],
        "410": [(4, 2), (1, 1), (1, 1)],
        "422v": [(2, 2), (1, 2), (1, 2)],
        "mixed": [(2, 2), (1, 1), (2, 1)],
        "444": [(1, 1), (1, 1), (1, 1)],
        "420": [(2, 2), (1, 1), (1, 1)],
    }
    k = 0
    for sname, fac in samplings.items():
        for w, h in [(1, 1), (3, 2), (13, 7), (33, 19), (70, 45)]:
            img = crop(srcs[k % 4], w, h, k)
            restart = [0, 1, 3][k % 3]
            data = encode(ycc_planes(img), fac, quality=[60, 85, 95][k % 3], restart=restart)
            files[f"enc_{sname}_{w}x{h}_rst{restart}.jpg"] = data
            k += 1
    img = crop(srcs[2], 45, 37)
    ycc = ycc_planes(img)
    rgb = [np.asarray(img)[..., i].astype(np.float64) for i in range(3)]
    files["enc_adobe_rgb_45x37.jpg"] = encode(rgb, [(1, 1)] * 3, 90, jfif=False, adobe=0)
    files["enc_rgb_ids_45x37.jpg"] = encode(rgb, [(1, 1)] * 3, 90, ids=[82, 71, 66], jfif=False)
    files["enc_nojfif_ycc_45x37.jpg"] = encode(ycc, [(2, 2), (1, 1), (1, 1)], 90, jfif=False)
    files["enc_adobe_ycc_45x37.jpg"] = encode(ycc, [(2, 1), (1, 1), (1, 1)], 90, jfif=False, adobe=1)
    kplane = np.asarray(crop(srcs[3], 45, 37).convert("L"), dtype=np.float64) * 0.5
    # YCCK (Adobe transform 2), as Photoshop writes CMYK: stored inverted, Y/Cb/Cr of 255-CMY.
    for fac, tag in (([(1, 1)] * 4, "444"), ([(2, 2), (1, 1), (1, 1), (2, 2)], "420")):
        for restart in (0, 2):
            files[f"enc_ycck_{tag}_45x37_rst{restart}.jpg"] = encode(
                ycc + [255 - kplane], fac, 85, restart=restart, jfif=False, adobe=2)
    cmyk = [255 - p for p in rgb] + [255 - kplane]
    files["enc_cmyk_adobe0_45x37.jpg"] = encode(cmyk, [(1, 1)] * 4, 85, jfif=False, adobe=0)
    files["enc_cmyk_noadobe_45x37.jpg"] = encode(cmyk, [(2, 1), (1, 1), (1, 1), (1, 1)], 85, jfif=False)
    gray = np.asarray(crop(srcs[0], 29, 23).convert("L"), dtype=np.float64)
    files["enc_gray_29x23_rst1.jpg"] = encode([gray], [(1, 1)], 80, restart=1)

    total = 0
    for name, data in sorted(files.items()):
        path = os.path.join(corpus, name)
        with open(path, "wb") as f:
            f.write(data)
        im = Image.open(path)
        rgb_img = im.convert("RGB")
        rgb_img.save(path[:-4] + ".png", optimize=True)
        total += len(data) + os.path.getsize(path[:-4] + ".png")
    print(f"{len(files)} files, {total / 1e6:.2f} MB")

    lines = []
    for f in photos:
        px = Image.open(os.path.join(sample, f)).convert("RGB").tobytes()
        lines.append(f"{hashlib.sha256(px).hexdigest()}  {f}\n")
    with open(os.path.join(root, "imagenet-sample.sha256"), "w") as out:
        out.writelines(lines)
    print(f"{len(lines)} hashes")


if __name__ == "__main__":
    main()
