#!/usr/bin/env python3
"""Regenerates the media fixtures of rust/media/blurhash.rs, rust/media/jpeg.rs and rust/media/probe.rs.

Usage: make_media_fixtures.py PHOTO_DIR OUT_DIR, where PHOTO_DIR holds real photos (the `nature` folder
of Debian's mate-backgrounds package: /usr/share/backgrounds/mate/nature). Needs Pillow, blurhash-python
and pypng (pip) and cjpeg/jpegtran (Debian's libjpeg-turbo-progs). The outputs are committed; the
probe goldens (probe_golden.txt) are then written by the Rust side, see the end of this file.
"""
import io
import os
import struct
import subprocess
import sys
import zlib

import blurhash
import png as pypng
from PIL import Image

src_dir, out = sys.argv[1], sys.argv[2]
W, H = 76, 52  # not multiples of 8 or 16: partial blocks and MCUs


def photo(name, box, size):
    im = Image.open(os.path.join(src_dir, name)).convert("RGB")
    return im.crop(box).resize(size, Image.LANCZOS)


def ppm(im, path):
    im = im.convert("RGB")
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % im.size)
        f.write(im.tobytes())


def p(name):
    return os.path.join(out, name)


base = photo("LadyBird.jpg", (600, 300, 1800, 1130), (W, H))
tmp_ppm = "/tmp/fixture_base.ppm"
ppm(base, tmp_ppm)

# 8x8 block means of the source: what a DC-only decode should reproduce.
px = base.load()
bw, bh = (W + 7) // 8, (H + 7) // 8
blocks = Image.new("RGB", (bw, bh))
for by in range(bh):
    for bx in range(bw):
        cells = [px[x, y] for y in range(by * 8, min(by * 8 + 8, H)) for x in range(bx * 8, min(bx * 8 + 8, W))]
        blocks.putpixel((bx, by), tuple(round(sum(c[i] for c in cells) / len(cells)) for i in range(3)))
ppm(blocks, p("photo_blocks.ppm"))

# JPEG variants.
base.save(p("photo_420.jpg"), quality=90, subsampling=2)
base.save(p("photo_422.jpg"), quality=90, subsampling=1)
base.save(p("photo_444.jpg"), quality=90, subsampling=0)
base.save(p("photo_optimized.jpg"), quality=90, optimize=True)
# Quality 100: many blocks whose last coefficient is non-zero, which end without an EOB symbol.
base.save(p("photo_q100.jpg"), quality=100, subsampling=0)
base.save(p("photo_progressive.jpg"), quality=90, progressive=True)
base.save(p("photo_progressive_444.jpg"), quality=90, progressive=True, subsampling=0)
base.convert("L").save(p("photo_gray.jpg"), quality=90)
base.convert("CMYK").save(p("photo_cmyk.jpg"), quality=90)
exif = Image.Exif()
exif[0x0112] = 6
base.save(p("photo_exif6.jpg"), quality=90, exif=exif.tobytes())

def run(*args):
    subprocess.run(args, check=True)

run("cjpeg", "-quality", "90", "-restart", "3B", "-outfile", p("photo_restart.jpg"), tmp_ppm)
run("cjpeg", "-quality", "90", "-arithmetic", "-outfile", p("photo_arith.jpg"), tmp_ppm)
# Progressive with one DC scan per component, successive approximation, AC scans in between and
# restart markers.
scans = "/tmp/fixture_scans.txt"
with open(scans, "w") as f:
    f.write("0: 0 0 0 2;\n0: 1 63 0 0;\n1: 0 0 0 1;\n2: 0 0 0 0;\n1: 1 63 0 0;\n2: 1 63 0 0;\n"
            "0: 0 0 2 1;\n0: 0 0 1 0;\n1: 0 0 1 0;\n")
run("cjpeg", "-quality", "90", "-scans", scans, "-restart", "2B", "-outfile", p("photo_progressive_scans.jpg"),
    tmp_ppm)

# PNG, GIF and WebP.
base.save(p("photo.png"), optimize=True)
rows = [list(base.tobytes()[y * W * 3:(y + 1) * W * 3]) for y in range(H)]
with open(p("photo_interlaced.png"), "wb") as f:
    pypng.Writer(W, H, greyscale=False, interlace=True, compression=9).write(f, rows)
rgba = base.convert("RGBA")
rgba.putalpha(Image.linear_gradient("L").resize((W, H)))
rgba.save(p("photo_alpha.png"), optimize=True)
base.quantize(256).save(p("photo.gif"), interlace=True)
base.quantize(256).save(p("photo_plain.gif"), interlace=False)
base.save(p("photo_lossy.webp"), quality=90)
base.save(p("photo_lossless.webp"), lossless=True)
Image.new("RGB", (24, 16), (200, 30, 60)).save(p("tiny.avif"))


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Decompression bombs: headers claiming huge sizes over a few KiB of data.
side = 100_000
row = b"\0" + b"\0" * (side // 8)
idat = zlib.compress(row * 1000, 9)  # the first 1000 rows only
with open(p("bomb.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))
    f.write(chunk(b"IDAT", idat) + chunk(b"IEND", b""))
# A complete, valid 6000x6000 PNG (36 megapixels) of under 10 KiB: within the default limits, decoded
# with bounded memory.
side = 6000
comp = zlib.compressobj(9)
data = b"".join(comp.compress(b"\0" + bytes([0x55]) * (side // 8)) for _ in range(side)) + comp.flush()
with open(p("bomb_small.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))
    f.write(chunk(b"IDAT", data) + chunk(b"IEND", b""))
buf = io.BytesIO()
Image.new("P", (16, 16)).save(buf, "GIF")
gif = bytearray(buf.getvalue())
gif[6:10] = struct.pack("<HH", 65535, 65535)
with open(p("bomb.gif"), "wb") as f:
    f.write(gif)

# BlurHash goldens from blurhash-python (the C reference encoder) on small real photos.
golden = [
    ("bh_32x24.ppm", photo("Garden.jpg", (0, 0, 2560, 1600), (32, 24)), [(4, 3), (9, 9), (1, 1)]),
    ("bh_64x40.ppm", photo("Aqua.jpg", (0, 0, 2560, 1600), (64, 40)), [(4, 3), (5, 5)]),
    ("bh_17x31.ppm", photo("YellowFlower.jpg", (900, 200, 1500, 1300), (17, 31)), [(3, 7), (9, 2), (4, 3)]),
    ("bh_5x3.ppm", photo("TwoWings.jpg", (0, 0, 2560, 1600), (5, 3)), [(2, 2), (4, 3)]),
]
with open(p("blurhash_golden.txt"), "w") as f:
    f.write("# file cx cy blurhash, from blurhash-python %s on the file's pixels\n" % blurhash.__version__)
    for name, im, comps in golden:
        ppm(im, p(name))
        for cx, cy in comps:
            f.write("%s %d %d %s\n" % (name, cx, cy, blurhash.encode(im.copy(), cx, cy)))

# WebPs of every kind image-webp decodes differently, large enough (240,000 pixels) that what a decode
# allocates per pixel shows next to its fixed costs: rust/tests/memory.rs checks webp::estimate against them.
mem = photo("LadyBird.jpg", (300, 100, 2100, 1300), (600, 400))
mem_alpha = mem.convert("RGBA")
mem_alpha.putalpha(Image.linear_gradient("L").resize((600, 400)))
mem.save(p("mem_lossy.webp"), quality=60)
mem_alpha.save(p("mem_alpha.webp"), quality=60)
smooth = Image.linear_gradient("L").resize((600, 400)).convert("RGB")
smooth.save(p("mem_lossless.webp"), lossless=True)
frames = [mem.rotate(a) for a in (0, 8)]
frames[0].save(p("mem_animated.webp"), save_all=True, append_images=frames[1:], duration=100, quality=40)
smooth_frames = [smooth, Image.eval(smooth, lambda v: 255 - v)]
smooth_frames[0].save(p("mem_animated_lossless.webp"), save_all=True, append_images=smooth_frames[1:],
                      duration=100, lossless=True, method=6, quality=100)
