#!/usr/bin/env python3
"""Media probe benchmark driver: ours (rust/benches/media.rs) against peers, on real photos, in one run.

Run by scripts/bench_probe.sh, which fetches the photos and installs the peers into .bench/. Makes the
test images from the photos of Debian's mate-backgrounds (resized and re-encoded with Pillow), runs each
implementation on all of them (bytes in memory -> type, width, height, BlurHash 4x3), then prints a table:
median milliseconds of each, ours / fastest peer, and memory (ours: peak heap bytes of one probe from a
counting allocator; everyone: growth of the process's peak RSS over its first probe). Then the goals:
ours <= 0.8x the fastest peer on every image, >= 10x faster than every peer on the progressive JPEG.
Exits non-zero only when something breaks, not when a goal is missed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / os.environ.get("BENCH_DIR", ".bench")
PHOTOS = BENCH / "root/usr/share/backgrounds/mate"
IMAGES = BENCH / "images"
SECONDS = os.environ.get("BENCH_SECONDS", "3")
CARGO = os.environ.get("CARGO", "cargo")

# (file, description); made by make_images() from the wallpapers' photos.
CASES = [
    ("progressive_17.9MP.jpg", "17.9 MP progressive JPEG (Elephants_5640x3172.jpg as shipped)"),
    ("baseline_12MP.jpg", "12 MP baseline JPEG, 4000x3000, q92 4:2:0 (from Elephants)"),
    ("photo_12MP.png", "12 MP PNG, 4000x3000 RGB (same photo)"),
    ("photo_1MP.jpg", "1 MP JPEG, 1224x816, q90 (from Storm.jpg)"),
    ("photo_256.png", "256x256 PNG (from LadyBird.jpg)"),
    ("progressive_5120x2880.jpg", "14.7 MP progressive JPEG, 5120x2880, q96 4:4:4, about 9 MB (from Elephants)"),
    ("photo_5120x2880.png", "14.7 MP PNG, 5120x2880 RGB, about 29 MB (same photo)"),
]


def make_images():
    IMAGES.mkdir(parents=True, exist_ok=True)
    if all((IMAGES / name).exists() for name, _ in CASES):
        return
    elephants = PHOTOS / "abstract/Elephants_5640x3172.jpg"
    (IMAGES / "progressive_17.9MP.jpg").write_bytes(elephants.read_bytes())
    im = Image.open(elephants).convert("RGB")
    w, h = im.size
    crop = h * 4 // 3
    x0 = (w - crop) // 2
    twelve = im.crop((x0, 0, x0 + crop, h)).resize((4000, 3000), Image.LANCZOS)
    twelve.save(IMAGES / "baseline_12MP.jpg", quality=92, subsampling=2, progressive=False)
    twelve.save(IMAGES / "photo_12MP.png")
    storm = Image.open(PHOTOS / "nature/Storm.jpg").convert("RGB").resize((1224, 816), Image.LANCZOS)
    storm.save(IMAGES / "photo_1MP.jpg", quality=90)
    bird = Image.open(PHOTOS / "nature/LadyBird.jpg").convert("RGB")
    w, h = bird.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)
    bird.crop(box).resize((256, 256), Image.LANCZOS).save(IMAGES / "photo_256.png")
    w, h = im.size
    crop_h = w * 9 // 16
    y0 = (h - crop_h) // 2
    wide = im.crop((0, y0, w, y0 + crop_h)).resize((5120, 2880), Image.LANCZOS)
    wide.save(IMAGES / "progressive_5120x2880.jpg", quality=96, subsampling=0, progressive=True)
    wide.save(IMAGES / "photo_5120x2880.png")


def run(name, cmd, env=None):
    """Runs one implementation over all images; returns {file name: result}."""
    print(f"  running {name} ...", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name} failed ({out.returncode}):\n{out.stderr}")
    results = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[Path(r["file"]).name] = r
    return results


def main():
    make_images()
    if sys.argv[1:] == ["--make-images"]:
        # For the delivery benchmark, which runs in another Python: the images and what they are.
        print(json.dumps([[str(IMAGES / name), desc] for name, desc in CASES]))
        return
    files = [str(IMAGES / name) for name, _ in CASES]
    py = str(BENCH / "venv/bin/python")
    here = Path(__file__).resolve().parent
    impls = [
        ("ours", [CARGO, "bench", "-q", "--bench", "media", "--"] + files, {"BENCH_SECONDS": SECONDS}),
        ("sharp+blurhash", ["node", str(here / "peer_sharp.cjs"), SECONDS] + files,
         {"NODE_PATH": str(BENCH / "node_modules")}),
        ("pillow+blurhash-python", [py, str(here / "peer_pillow.py"), "blurhash-python", SECONDS] + files, None),
        ("pillow+fast-blurhash", [py, str(here / "peer_pillow.py"), "fast-blurhash", SECONDS] + files, None),
    ]
    results = {name: run(name, cmd, env) for name, cmd, env in impls}
    peers = [name for name, _, _ in impls if name != "ours"]
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")

    print()
    print(f"Media probe: bytes in memory -> (type, width, height, BlurHash 4x3). Wall-clock median ms of >= 5 "
          f"runs ({SECONDS} s per image and implementation), {os.cpu_count()} cores, load average {load:.1f}.")
    print("CPU = mean user+system CPU ms per probe, all threads (less disturbed by other load than wall time).")
    print("Memory: ours = peak heap bytes during one probe (counting allocator); RSS = growth of the "
          "process's peak RSS over its first probe, MiB, in the order ours / " + " / ".join(peers) + ".")
    short = {"ours": "ours", "sharp+blurhash": "sharp", "pillow+blurhash-python": "pil+bh-py",
             "pillow+fast-blurhash": "pil+fast"}
    header = (["image"] + [short[i] + " ms" for i in ["ours"] + peers] + ["ours/fastest"]
              + [short[i] + " CPU" for i in ["ours"] + peers] + ["CPU ours/fastest", "ours heap", "RSS MiB"])
    rows = []
    goals = []
    for name, desc in CASES:
        ours = results["ours"][name]
        peer_ms = {p: results[p][name]["median_ms"] for p in peers}
        peer_cpu = {p: results[p][name]["cpu_ms"] for p in peers}
        ratio = ours["median_ms"] / min(peer_ms.values())
        cpu_ratio = ours["cpu_ms"] / min(peer_cpu.values())
        rss = [results[i][name]["rss_growth_kib"] for i in ["ours"] + peers]
        rows.append([name, f"{ours['median_ms']:.2f}"] + [f"{peer_ms[p]:.2f}" for p in peers] + [f"{ratio:.3f}"]
                    + [f"{results[i][name]['cpu_ms']:.2f}" for i in ["ours"] + peers] + [f"{cpu_ratio:.3f}"]
                    + [f"{ours['peak_alloc_bytes'] / 1024:.0f} KiB", " / ".join(f"{v / 1024:.1f}" for v in rss)])
        goals.append((f"{name}: ours <= 0.8x fastest peer", ratio <= 0.8,
                      f"wall {ratio:.3f}x, CPU {cpu_ratio:.3f}x"))
        if name.startswith("progressive"):
            speedup = min(peer_ms.values()) / ours["median_ms"]
            goals.append((f"{name}: >= 10x faster than every peer", speedup >= 10,
                          f"{speedup:.1f}x faster than the fastest peer"))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).rjust(w) if k else str(c).ljust(w) for k, (c, w) in enumerate(zip(r, widths))))
    print()
    for name, desc in CASES:
        print(f"  {name}: {desc}")

    print()
    print("Results (type, width x height, BlurHash):")
    for name, _ in CASES:
        for impl in ["ours"] + peers:
            r = results[impl][name]
            print(f"  {name:24} {impl:24} {r['mime']:11} {r['width']}x{r['height']}  {r['blurhash']}")
    heap = max(results["ours"][name]["peak_alloc_bytes"] for name, _ in CASES)
    print()
    print("Goals:")
    for what, met, detail in goals:
        print(f"  [{'met' if met else 'NOT met'}] {what} ({detail})")
    print(f"  [{'met' if heap < 1 << 20 else 'NOT met'}] memory per probe bounded by a small constant "
          f"(largest heap peak {heap / 1024:.0f} KiB, for up to {18_000_000:,} pixels)")


if __name__ == "__main__":
    main()
