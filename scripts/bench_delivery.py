#!/usr/bin/env python3
"""Benchmarks of mod_muc_media_metadata on a real Prosody, once per version in PROSODY_VERSIONS (default "0.12 13").

1. Added delivery delay: a groupchat message with one image URL (served over loopback, probed for real, and again
   from the cache) against the same message without OOB, from Alice's send to Bob's receipt.
2. Event-loop stall while 20 large images are probed at once: the longest lateness of a timer that asks to run
   every millisecond inside Prosody (tests/plugins/mod_bench_loop_stall.lua). Goal: no stall above 5 ms.
3. Peak memory of Prosody while those 20 probes run (VmHWM after resetting it), against the bound that the limits
   give (module README): 8 downloads x max_bytes + decoder threads x max_decode_memory.

Run by `make bench` (scripts/bench.sh) or directly: .venv/bin/python scripts/bench_delivery.py. Needs `make` and
`make deps` first. Prints the numbers and the goal comparison; exits non-zero only when something breaks.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import rig  # noqa: E402

ROOM = "bench@conference.localhost"
XMLNS_OOB = "jabber:x:oob"
XMLNS_METADATA = "xmpp:prosody.im/protocol/media-metadata#0"
DELAY_ROUNDS = 30
CONCURRENT_PROBES = 20
STALL_GOAL_MS = 5.0
MAX_BYTES = 16 * 1024 * 1024
MAX_DECODE_MEMORY = 64 * 1024 * 1024
FETCH_CONCURRENCY = 8  # rust/media.rs FETCH_CONCURRENCY
PHOTO = ROOT / ".bench/root/usr/share/backgrounds/mate/abstract/Elephants_3840x2160.jpg"


def large_png(width: int, height: int) -> bytes:
    """A photo-sized PNG that compresses about as well as a photo (a gradient with noise), made without Pillow."""
    rng = random.Random(7)
    stride = width * 3
    patterns = [
        bytes(((x * 200) // stride + k * 3 + rng.getrandbits(3)) & 0xFF for x in range(stride)) for k in range(64)
    ]
    rows = []
    for y in range(height):
        row = patterns[y % 64]
        shift = (y * 31) % stride
        rows.append(b"\0" + row[shift:] + row[:shift])
    data = zlib.compress(b"".join(rows), 6)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def install_modules(target: Path) -> None:
    subprocess.run(["make", "--no-print-directory", "install", f"MODULES_DIR={target}"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def message(client, urls, body):
    msg = client.make_message(mto=ROOM, mbody=body, mtype="groupchat")
    for url in urls:
        x = ET.SubElement(msg.xml, f"{{{XMLNS_OOB}}}x")
        ET.SubElement(x, f"{{{XMLNS_OOB}}}url").text = url
    return msg


async def timed_delivery(alice, bob, urls, body) -> tuple[float, object]:
    msg = message(alice, urls, body)
    start = time.perf_counter()
    msg.send()
    stanza = await bob.wait_for(rig.match("message", type="groupchat", body=body))
    return (time.perf_counter() - start) * 1000, stanza


def with_metadata(stanza) -> int:
    return len(stanza.xml.findall(f"{{{XMLNS_OOB}}}x/{{{XMLNS_METADATA}}}metadata"))


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def bench_version(version: str, modules_dir: Path, media: ServerProcess, large: list[str]) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-media-{version}-"))
    server = rig.Prosody(
        version,
        workdir,
        modules_dir,
        host_modules=["bench_loop_stall"],
        muc_modules=["muc_media_metadata"],
        global_options={"plugin_paths": [str(modules_dir), str(ROOT / "tests/plugins")],
                        "log": [{"levels": {"min": "info"}, "to": "file", "filename": str(workdir / "prosody.log")}]},
        muc_options={
            "muc_media_metadata_allowed_networks": ["127.0.0.1/32"],
            "muc_media_metadata_timeout": 60,
            "muc_media_metadata_fetch_timeout": 60,
            "muc_media_metadata_max_urls": CONCURRENT_PROBES,
        },
    )
    server.start()
    try:
        server.register("alice", "pw")
        server.register("bob", "pw")
        result = {}
        alice_client = rig.connect(server, "alice@localhost", "pw")
        async with alice_client as alice, rig.connect(server, "bob@localhost", "pw") as bob:
            await rig.create_room(alice, ROOM, "Alice", persistent=False)
            await rig.join_room(bob, ROOM, "Bob")
            photo = media.url("/photo.jpg")
            await timed_delivery(alice, bob, [], "warm-up")
            plain, probed, cached = [], [], []
            for i in range(DELAY_ROUNDS):
                plain.append((await timed_delivery(alice, bob, [], f"plain {i}"))[0])
                ms, stanza = await timed_delivery(alice, bob, [f"{photo}?round={i}"], f"probed {i}")
                assert with_metadata(stanza) == 1, stanza
                probed.append(ms)
                ms, stanza = await timed_delivery(alice, bob, [f"{photo}?round={i}"], f"cached {i}")
                assert with_metadata(stanza) == 1, stanza
                cached.append(ms)
            result["plain_ms"] = statistics.median(plain)
            result["probed_ms"] = statistics.median(probed)
            result["cached_ms"] = statistics.median(cached)

            async with server.http_client() as http:
                pid = server.pid
                baseline_kib = rss_kib(pid, "VmRSS")
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                await http.get("/bench_loop_stall/start")
                urls = [f"{large[i % len(large)]}?n={i}" for i in range(CONCURRENT_PROBES)]
                ms, stanza = await timed_delivery(alice, bob, urls, "twenty large images")
                result["load_stall"] = (await http.get("/bench_loop_stall/stop")).json()
                result["load_ms"] = ms
                result["load_with_metadata"] = with_metadata(stanza)
                result["baseline_kib"] = baseline_kib
                result["peak_kib"] = rss_kib(pid, "VmHWM")
                # The same time with nothing to do: how much the machine itself delays the loop.
                await http.get("/bench_loop_stall/start")
                await asyncio.sleep(ms / 1000)  # a benchmark phase of fixed length, not a wait for an event
                result["idle_stall"] = (await http.get("/bench_loop_stall/stop")).json()
        return result
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(version: str, r: dict, large_desc: str) -> None:
    cpus = min(max((os.cpu_count() or 1) - 1, 1), 4)  # rust/jobs.rs cpu_slots()
    bound_mib = (FETCH_CONCURRENCY * MAX_BYTES + cpus * MAX_DECODE_MEMORY) / 2**20
    extra_mib = (r["peak_kib"] - r["baseline_kib"]) / 1024
    idle, load = r["idle_stall"], r["load_stall"]
    print(f"\n== mod_muc_media_metadata on Prosody {version} ==")
    print(f"delivery, median of {DELAY_ROUNDS}: plain message {r['plain_ms']:.2f} ms | one image URL, probed "
          f"{r['probed_ms']:.2f} ms (added {r['probed_ms'] - r['plain_ms']:.2f} ms, "
          f"x{r['probed_ms'] / r['plain_ms']:.1f}) | cached {r['cached_ms']:.2f} ms "
          f"(added {r['cached_ms'] - r['plain_ms']:.2f} ms)")
    print(f"event loop, lateness of a 1 ms timer: while {CONCURRENT_PROBES} large images ({large_desc}) are probed "
          f"at once, max {load['max_ms']:.2f} ms, p99 {load['p99_ms']:.2f} ms over {load['ticks']} ticks "
          f"({r['load_with_metadata']}/{CONCURRENT_PROBES} got metadata, delivered after {r['load_ms']:.0f} ms) | "
          f"idle for as long: max {idle['max_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms")
    if load["max_ms"] <= STALL_GOAL_MS:
        verdict = "met"
    elif idle["max_ms"] > STALL_GOAL_MS:
        verdict = (f"MISSED, but inconclusive: with nothing to do the loop stalls by {idle['max_ms']:.2f} ms too "
                   f"(Prosody's own work such as garbage collection, and other processes: load average "
                   f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    else:
        verdict = "MISSED"
    print(f"  goal: no stall above {STALL_GOAL_MS:.0f} ms -> {verdict}")
    verdict = "met" if extra_mib <= bound_mib else "MISSED"
    print(f"memory: RSS {r['baseline_kib'] / 1024:.1f} MiB before, peak {r['peak_kib'] / 1024:.1f} MiB during the "
          f"probes (+{extra_mib:.1f} MiB)")
    print(f"  goal: within the limits' bound of {bound_mib:.0f} MiB ({FETCH_CONCURRENCY} x max_bytes "
          f"{MAX_BYTES >> 20} MiB + {cpus} decoders x {MAX_DECODE_MEMORY >> 20} MiB) -> {verdict}")


class ServerProcess:
    """tests/media_server.py in its own process at the lowest priority, so that serving the files competes as
    little as possible with the Prosody being measured (in production the files come from another machine)."""

    def __init__(self, files: dict[str, tuple[Path, str]]):
        specs = [f"{path}={file}={ctype}" for path, (file, ctype) in files.items()]
        self.proc = subprocess.Popen(["nice", "-n", "19", sys.executable, str(ROOT / "tests/media_server.py"),
                                      "127.0.0.1", *specs], stdout=subprocess.PIPE, text=True)
        _pid, port = self.proc.stdout.readline().split()
        self.port = int(port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def main() -> int:
    versions = os.environ.get("PROSODY_VERSIONS", "0.12 13").split()
    tmp = Path(tempfile.mkdtemp(prefix="bench-media-"))
    modules_dir = tmp / "modules"
    install_modules(modules_dir)
    png = large_png(3000, 2000)
    (tmp / "large.png").write_bytes(png)
    files = {"/large.png": (tmp / "large.png", "image/png")}
    large_paths = ["/large.png"]
    large_desc = f"3000x2000 PNG of {len(png) / 2**20:.1f} MiB"
    if PHOTO.exists():
        files["/large.jpg"] = (PHOTO, "image/jpeg")
        large_paths.append("/large.jpg")
        large_desc += f" and 3840x2160 JPEG of {PHOTO.stat().st_size / 2**20:.1f} MiB, alternating"
    media = ServerProcess(files)
    try:
        for version in versions:
            result = await bench_version(version, modules_dir, media, [media.url(p) for p in large_paths])
            report(version, result, large_desc)
    finally:
        media.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
