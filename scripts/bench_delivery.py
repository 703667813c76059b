#!/usr/bin/env python3
"""Benchmarks of mod_muc_media_metadata on a real Prosody, once per version in PROSODY_VERSIONS (default "0.12 13").

The images come from nginx over loopback (FileServer: Debian's nginx, which scripts/bench_probe.sh unpacks into
.bench, started here on idle CPU time only).

1. Added delivery delay: a groupchat message with one image URL (probed for real, and again from the cache)
   against the same message without OOB, from Alice's send to Bob's receipt.
2. Event-loop stall while 20 large images are probed at once: the longest lateness of a timer that asks to run
   every millisecond inside Prosody (tests/plugins/mod_bench_loop_stall.lua). Goal: no stall above 5 ms while the
   probes run, that is between the message's arrival and its delivery. The arrival and the delivery themselves
   are timed too, against Prosody alone handling the same message as delivered (metadata included) but with URLs
   that the module leaves alone (aesgcm://, as OMEMO clients send them), in one go.
3. Peak memory of Prosody while those 20 probes run (VmHWM after resetting it). Goal: at most +24 MiB.
4. End to end, per image (the probe benchmark's photos, a 5120x2880 PNG of about 29 MB and a progressive JPEG of
   about 9 MB, made by scripts/bench_probe/driver.py from Debian's mate-backgrounds): the delivery delay a message
   with that one image URL adds over a plain message (and, of it, what the same message as delivered adds when the
   module leaves it alone), the body bytes the file server sent, Prosody's peak memory, against the in-memory
   time of the fastest peer (Pillow draft() + fast-blurhash or blurhash-python, sharp + blurhash) measured in the
   same run. Goals, as ratios to that peer: progressive JPEG at most 0.1 with under 25%
   of the file sent; baseline JPEG and PNG at most 0.6; images under 2 MP at most 1.2. Only with Prosody's default
   gc setting, and only when `make bench` has set up .bench (scripts/bench_probe.sh runs first).

Each version runs twice: with Prosody's default garbage collector settings, and with the incremental ones the
module README suggests (TUNED_GC), because most of the loop's stalls are Prosody's garbage collection.

Run by `make bench` (scripts/bench.sh) or directly: .venv/bin/python scripts/bench_delivery.py. Needs `make`,
`make deps` and .bench (from `make bench`) first. Prints the numbers and the goal comparison; exits non-zero only
when something breaks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import shutil
import socket
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
XMLNS_SFS = "urn:xmpp:sfs:0"
DELAY_ROUNDS = 30
CONCURRENT_PROBES = 20
STALL_GOAL_MS = 5.0
TUNED_GC = {"mode": "incremental", "threshold": 150, "speed": 200}  # the module README's suggestion
RSS_GOAL_MIB = 24
PHOTO = ROOT / ".bench/root/usr/share/backgrounds/mate/abstract/Elephants_3840x2160.jpg"
BENCH_PYTHON = ROOT / ".bench/venv/bin/python"
BENCH_PROBE = ROOT / "scripts/bench_probe"
NGINX = ROOT / ".bench/root/usr/sbin/nginx"  # Debian's, unpacked by scripts/bench_probe.sh
E2E_ROUNDS = int(os.environ.get("BENCH_E2E_ROUNDS", "30"))
PEER_SECONDS = os.environ.get("BENCH_PEER_SECONDS", "2")


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


def message(client, urls, body, room=ROOM):
    msg = client.make_message(mto=room, mbody=body, mtype="groupchat")
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


def unprobed_copy(client, delivered, body):
    """What `delivered` carries, as a new message from `client` that the module leaves alone: its OOB URLs become
    aesgcm:// links (as OMEMO clients send them) and its <metadata/> elements move into an element of another
    namespace. Prosody then handles as many bytes and elements by itself, with no probing to wait for."""
    msg = client.make_message(mto=ROOM, mbody=body, mtype="groupchat")
    holder = ET.SubElement(msg.xml, "{urn:example:bench}metadata-copies")
    for i, child in enumerate(delivered.xml):
        if child.tag == f"{{{XMLNS_OOB}}}x":
            x = ET.SubElement(msg.xml, child.tag)
            for part in child:
                if part.tag == f"{{{XMLNS_METADATA}}}metadata":
                    holder.append(copy.deepcopy(part))
                else:
                    x.append(copy.deepcopy(part))
                    if part.tag == f"{{{XMLNS_OOB}}}url":
                        x[-1].text = f"aesgcm://127.0.0.1/{i}.jpg#{'ab' * 44}"
        elif child.tag == f"{{{XMLNS_SFS}}}file-sharing":
            msg.xml.append(copy.deepcopy(child))
    return msg


def with_metadata(stanza) -> int:
    return len(stanza.xml.findall(f"{{{XMLNS_OOB}}}x/{{{XMLNS_METADATA}}}metadata"))


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def end_to_end(server, alice, bob, media, image: dict) -> dict:
    """One image, E2E_ROUNDS times (each URL new, so never from the cache), between plain messages. Then as many
    rounds of the message as delivered (metadata, file-sharing element), sent again in a form the module leaves
    alone, between plain messages: what handling that larger message costs Prosody and the two clients, part of the
    added delay that no probing causes (a round of its own, so that no probe's remaining work overlaps it)."""
    pid, path = server.pid, image["path"]
    sent_before = media.bytes_sent(path)
    baseline_kib = rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    plain, probed, fields = [], [], None
    for i in range(E2E_ROUNDS):
        plain.append((await timed_delivery(alice, bob, [], f"e2e plain {path} {i}"))[0])
        ms, stanza = await timed_delivery(alice, bob, [f"{media.url(path)}?e2e={i}"], f"e2e {path} {i}")
        probed.append(ms)
        metadata = stanza.xml.find(f"{{{XMLNS_OOB}}}x/{{{XMLNS_METADATA}}}metadata")
        fields = {child.tag.split("}")[1]: child.text for child in metadata} if metadata is not None else {}
    peak_kib = rss_kib(pid, "VmHWM")
    sent = media.settled_bytes_sent(path) - sent_before
    plain_again, unprobed = [], []
    for i in range(E2E_ROUNDS):
        plain_again.append((await timed_delivery(alice, bob, [], f"e2e plain again {path} {i}"))[0])
        copy_body = f"e2e unprobed {path} {i}"
        start = time.perf_counter()
        unprobed_copy(alice, stanza, copy_body).send()
        await bob.wait_for(rig.match("message", type="groupchat", body=copy_body))
        unprobed.append((time.perf_counter() - start) * 1000)
    return {**image, "plain_ms": statistics.median(plain), "probed_ms": statistics.median(probed),
            "unprobed_added_ms": statistics.median(unprobed) - statistics.median(plain_again),
            "sent": sent / E2E_ROUNDS, "rss_growth_kib": peak_kib - baseline_kib, "fields": fields}


async def bench_version(version: str, gc: dict | None, modules_dir: Path, media: FileServer, large: list[str],
                        images: list[dict]) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-media-{version}-"))
    server = rig.Prosody(
        version,
        workdir,
        modules_dir,
        muc_modules=["muc_media_metadata", "bench_loop_stall"],
        global_options={"plugin_paths": [str(modules_dir), str(ROOT / "tests/plugins")],
                        **({"gc": gc} if gc else {}),
                        "log": [{"levels": {"min": "info"}, "to": "file", "filename": str(workdir / "prosody.log")}]},
        muc_options={
            "muc_media_metadata_allowed_networks": ["127.0.0.1/32"],
            "muc_media_metadata_timeout": 60,
            "muc_media_metadata_fetch_timeout": 60,
            # Every one of the 20 images probed at once: the per-sender and per-room caps, and the download
            # slots, are raised to that (with the defaults, 4 would be probed and the rest delivered without).
            "muc_media_metadata_max_urls": CONCURRENT_PROBES,
            "muc_media_metadata_max_per_sender": CONCURRENT_PROBES,
            "muc_media_metadata_max_per_room": CONCURRENT_PROBES,
            "muc_media_metadata_max_downloads": CONCURRENT_PROBES,
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

            if images:
                result["e2e"] = [await end_to_end(server, alice, bob, media, image) for image in images]

            async with server.http_client(host=rig.MUC_HOST) as http:
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
                # The peer: Prosody alone with the message as it was delivered.
                await http.get("/bench_loop_stall/start")
                alice.send(unprobed_copy(alice, stanza, "the same, unprobed"))
                await bob.wait_for(rig.match("message", type="groupchat", body="the same, unprobed"))
                result["unprobed_stall"] = (await http.get("/bench_loop_stall/stop")).json()
                # The same time with nothing to do: how much the machine itself delays the loop.
                await http.get("/bench_loop_stall/start")
                await asyncio.sleep(ms / 1000)  # a benchmark phase of fixed length, not a wait for an event
                result["idle_stall"] = (await http.get("/bench_loop_stall/stop")).json()
        return result
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(version: str, gc: dict | None, r: dict, large_desc: str) -> None:
    extra_mib = (r["peak_kib"] - r["baseline_kib"]) / 1024
    idle, load = r["idle_stall"], r["load_stall"]
    phases = load["phases"]
    probing = phases.get("between", {"max_ms": 0.0, "p99_ms": 0.0, "ticks": 0})
    arrival = phases.get("arrival", {"max_ms": 0.0})["max_ms"]
    delivery = phases.get("delivery", {"max_ms": 0.0})["max_ms"]
    unprobed = r["unprobed_stall"]["phases"].get("message", {"max_ms": 0.0})["max_ms"]
    print(f"\n== mod_muc_media_metadata on Prosody {version}, gc = {rig.lua(gc) if gc else 'default'} ==")
    print(f"delivery, median of {DELAY_ROUNDS}: plain message {r['plain_ms']:.2f} ms | one image URL, probed "
          f"{r['probed_ms']:.2f} ms (added {r['probed_ms'] - r['plain_ms']:.2f} ms, "
          f"x{r['probed_ms'] / r['plain_ms']:.1f}) | cached {r['cached_ms']:.2f} ms "
          f"(added {r['cached_ms'] - r['plain_ms']:.2f} ms)")
    print(f"event loop, lateness of a 1 ms timer, while {CONCURRENT_PROBES} large images ({large_desc}) are probed "
          f"at once ({r['load_with_metadata']}/{CONCURRENT_PROBES} got metadata, delivered after {r['load_ms']:.0f} ms):")
    print(f"  while the probes run: max {probing['max_ms']:.2f} ms, p99 {probing['p99_ms']:.2f} ms over "
          f"{probing['ticks']} ticks | idle for as long: max {idle['max_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms")
    if probing["max_ms"] <= STALL_GOAL_MS:
        verdict = "met"
    elif idle["max_ms"] > STALL_GOAL_MS:
        verdict = (f"MISSED, but inconclusive: with nothing to do the loop stalls by {idle['max_ms']:.2f} ms too "
                   f"(Prosody's own work such as garbage collection, and other processes: load average "
                   f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    else:
        verdict = "MISSED"
    print(f"  goal: no stall above {STALL_GOAL_MS:.0f} ms while the probes run -> {verdict}")
    # Under a millisecond, the lateness of a 1 ms timer says little about how long the work took.
    ratio = f"ratio x{(arrival + delivery) / unprobed:.2f}" if unprobed >= 1 else "ratio n/a: under the timer's resolution"
    print(f"  the message itself: arrival {arrival:.2f} ms + delivery {delivery:.2f} ms | Prosody alone with the same "
          f"message as delivered (metadata included, URLs the module skips), handled at once: {unprobed:.2f} ms "
          f"({ratio}) | longest stall of the whole run: {load['max_ms']:.2f} ms")
    all_probed = r["load_with_metadata"] == CONCURRENT_PROBES
    verdict = "met" if extra_mib <= RSS_GOAL_MIB and all_probed else "MISSED"
    if not all_probed:
        verdict += f" (only {r['load_with_metadata']} of the {CONCURRENT_PROBES} images got metadata)"
    print(f"memory: RSS {r['baseline_kib'] / 1024:.1f} MiB before, peak {r['peak_kib'] / 1024:.1f} MiB during the "
          f"probes (+{extra_mib:.1f} MiB)")
    print(f"  goal: at most +{RSS_GOAL_MIB} MiB while {CONCURRENT_PROBES} large images are probed -> {verdict}")
    if "e2e" in r:
        report_e2e(r["e2e"])


def goal_of(image: dict) -> tuple[str, float]:
    """The ratio goal that applies to an image: small ones have their own; else by kind."""
    if image["pixels"] < 2_000_000:
        return "under 2 MP", 1.2
    if "progressive" in image["name"]:
        return "progressive JPEG", 0.1
    return "baseline JPEG or PNG", 0.6


def report_e2e(results: list[dict]) -> None:
    print(f"end to end, per image: delivery delay added over a plain message (medians of {E2E_ROUNDS}), against the "
          f"fastest peer's in-memory time (same run); of that delay, what the same message as delivered adds when the "
          f"module leaves it alone (Prosody and the clients handling a larger message); body bytes the file server "
          f"sent; Prosody's peak RSS growth")
    header = ["image", "MB", "plain ms", "added ms", "of it unprobed", "fastest peer", "peer ms", "ratio", "goal",
              "sent", "RSS +MiB", "metadata"]
    rows = []
    verdicts = []
    for r in results:
        added = r["probed_ms"] - r["plain_ms"]
        peer, peer_ms = min(r["peers"].items(), key=lambda kv: kv[1])
        ratio = added / peer_ms
        what, goal = goal_of(r)
        sent_share = r["sent"] / r["size"]
        met = ratio <= goal and (what != "progressive JPEG" or sent_share < 0.25)
        f = r["fields"]
        meta = f"{f.get('width')}x{f.get('height')} {'blurhash' if 'blurhash' in f else 'NO blurhash'}"
        rows.append([r["name"], f"{r['size'] / 1e6:.1f}", f"{r['plain_ms']:.2f}", f"{added:.2f}",
                     f"{r['unprobed_added_ms']:.2f}", peer, f"{peer_ms:.1f}",
                     f"{ratio:.3f}", f"<= {goal}", f"{sent_share:.0%}", f"{r['rss_growth_kib'] / 1024:.1f}", meta])
        extra = " and under 25% sent" if what == "progressive JPEG" else ""
        verdicts.append(f"  [{'met' if met else 'NOT met'}] {r['name']} ({what}): ratio {ratio:.3f} <= {goal}{extra}"
                        f" (sent {sent_share:.0%})")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + rows:
        print("  " + "  ".join(str(c).rjust(w) if k else str(c).ljust(w) for k, (c, w) in enumerate(zip(row, widths))))
    print("\n".join(verdicts))


def peer_times(images: list[dict]) -> None:
    """Adds to each image the in-memory median ms of each peer (scripts/bench_probe's peers), and its pixels."""
    files = [str(image["file"]) for image in images]
    peers = {
        "sharp+blurhash": (["node", str(BENCH_PROBE / "peer_sharp.cjs"), PEER_SECONDS],
                           {"NODE_PATH": str(ROOT / ".bench/node_modules")}),
        "pillow+blurhash-python": ([str(BENCH_PYTHON), str(BENCH_PROBE / "peer_pillow.py"), "blurhash-python",
                                    PEER_SECONDS], {}),
        "pillow+fast-blurhash": ([str(BENCH_PYTHON), str(BENCH_PROBE / "peer_pillow.py"), "fast-blurhash",
                                  PEER_SECONDS], {}),
    }
    for image in images:
        image["peers"] = {}
    for name, (cmd, env) in peers.items():
        print(f"  in-memory peer {name} ...", file=sys.stderr, flush=True)
        out = subprocess.run(cmd + files, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                             check=True)
        by_file = {json.loads(line)["file"]: json.loads(line) for line in out.stdout.splitlines()
                   if line.startswith("{")}
        for image in images:
            r = by_file[str(image["file"])]
            image["peers"][name] = r["median_ms"]
            image["pixels"] = r["width"] * r["height"]


def e2e_images() -> list[dict]:
    """The end-to-end images, made by the probe benchmark's driver (with its Pillow), or none without .bench."""
    if not BENCH_PYTHON.exists():
        print("no .bench (run `make bench`, whose probe section sets it up): no end-to-end section", file=sys.stderr)
        return []
    out = subprocess.run([str(BENCH_PYTHON), str(BENCH_PROBE / "driver.py"), "--make-images"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    images = []
    for file, desc in json.loads(out.stdout.strip().splitlines()[-1]):
        file = Path(file)
        images.append({"name": file.name, "file": file, "desc": desc, "path": f"/e2e/{file.name}",
                       "size": file.stat().st_size})
    return images


class FileServer:
    """nginx serving `files` (URL path -> (file, Content-Type)) over loopback, as operators serve uploads, for the
    delivery and end-to-end figures: the test server's own latency (a Python thread, at idle priority) was a fixed
    0.15 to 0.3 ms of every probe (README, "Measured"). Like that server it runs on idle CPU time only (in
    production the files come from another machine), and it writes the same way, 16 KiB at a time into a 32 KiB
    send buffer, so that the body bytes it counts (nginx's access log) are close to what the client took."""

    def __init__(self, files: dict[str, tuple[Path, str]]):
        if not NGINX.exists():
            raise RuntimeError(f"{NGINX} is missing: run `make bench`, whose probe section unpacks it")
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.port = rig.free_port()  # nginx cannot report a port it chose
        locations = "\n".join(f"    location = {path} {{ alias {Path(file).resolve()}; default_type {content_type}; }}"
                               for path, (file, content_type) in files.items())
        (self.dir / "nginx.conf").write_text(f"""{"user root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  log_format sent '$uri $body_bytes_sent';
  access_log {self.dir}/access.log sent;
  client_body_temp_path {self.dir}/body; proxy_temp_path {self.dir}/proxy; fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi; scgi_temp_path {self.dir}/scgi;
  types {{ }}
  sendfile off; output_buffers 1 16k; postpone_output 0;
  server {{
    listen 127.0.0.1:{self.port} sndbuf=32k;
{locations}
  }}
}}
""")
        self.proc = subprocess.Popen(["chrt", "--idle", "0", str(NGINX), "-p", str(self.dir), "-e",
                                      str(self.dir / "error.log"), "-c", str(self.dir / "nginx.conf")])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start: " + (self.dir / "error.log").read_text())
                time.sleep(0.05)  # nginx has no readiness signal but its port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bytes_sent(self, path: str) -> int:
        """Body bytes sent for `path` by the requests that have ended (nginx logs a request when it ends)."""
        log = self.dir / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return sum(int(sent) for uri, sent in (line.split() for line in lines) if uri == path)

    def settled_bytes_sent(self, path: str) -> int:
        """bytes_sent once no more requests for `path` end (a closed connection ends its request within moments)."""
        last = -1
        while (now := self.bytes_sent(path)) != last:
            last = now
            time.sleep(0.2)  # waiting for nginx to notice closed connections
        return now

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


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
    images = e2e_images()
    for image in images:
        files[image["path"]] = (image["file"], "application/octet-stream")
    if images:
        peer_times(images)
    files["/photo.jpg"] = (ROOT / "tests/data/photo_420.jpg", "image/jpeg")
    media = FileServer(files)
    try:
        for version in versions:
            for gc in (None, TUNED_GC):
                result = await bench_version(version, gc, modules_dir, media, [media.url(p) for p in large_paths],
                                             images if gc is None else [])
                report(version, gc, result, large_desc)
    finally:
        media.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
