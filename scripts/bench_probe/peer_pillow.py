#!/usr/bin/env python3
"""Peer for the media probe benchmark: Pillow (with draft() for JPEG) plus a BlurHash encoder.

Usage: peer_pillow.py blurhash-python|fast-blurhash SECONDS FILE...; prints one JSON line per file like
rust/benches/media.rs. Each probe starts from the file's bytes in memory: type and size from the header,
draft() so that libjpeg decodes at the smallest DCT scale that stays above 64 px, a thumbnail of at most
64x64 (the working size of ours), then the BlurHash 4x3.
"""
import io
import json
import statistics
import sys
import time

from PIL import Image


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def main():
    encoder, seconds, files = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    if encoder == "blurhash-python":
        import blurhash

        def encode(im):
            return blurhash.encode(im, 4, 3)
    else:
        import fast_blurhash

        def encode(im):
            # It takes an ImageFile or raw RGB bytes; a converted, thumbnailed image is neither.
            return fast_blurhash.encode(im.tobytes(), 4, 3, im.width, im.height)

    def probe(data):
        im = Image.open(io.BytesIO(data))
        mime, (width, height) = Image.MIME.get(im.format), im.size
        im.draft("RGB", (64, 64))
        im = im.convert("RGB")
        im.thumbnail((64, 64))
        return mime, width, height, encode(im)

    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        rss_before = status_kib("VmRSS:")
        mime, width, height, hash_ = probe(data)
        rss_growth = max(0, status_kib("VmHWM:") - rss_before)
        times = []
        start, cpu_start = time.perf_counter(), time.process_time()
        while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < 1000):
            t = time.perf_counter()
            probe(data)
            times.append((time.perf_counter() - t) * 1000)
        cpu = (time.process_time() - cpu_start) * 1000 / len(times)
        print(json.dumps({"file": path, "median_ms": statistics.median(times), "min_ms": min(times), "cpu_ms": cpu,
                          "runs": len(times), "rss_growth_kib": rss_growth, "mime": mime, "width": width,
                          "height": height, "blurhash": hash_}), flush=True)


main()
