#!/usr/bin/env python3
"""Benchmark of mod_muc_media_metadata under attack (issue 12), once per version in PROSODY_VERSIONS (default
"0.12 13"), with the module's default limits.

The same workload twice on one Prosody: first unloaded, then while an attacker floods tarpit URLs (a path of the
file server that reads the request and never answers). The workload: Alice posts ROUNDS messages (500), each with
one new image URL (never from the cache), each as soon as the previous one is delivered, or BENCH_LOAD_RATE a second
(at 25, a run lasts four times the module's 5 s hold); Bob is in the room. The attacker is one account with
ATTACKERS resources, each an occupant of another room, each sending a message with MAX_URLS new tarpit URLs as soon
as the room has delivered its previous one (at most BENCH_ATTACK_RATE, 20, a second each): as many held messages at
once as one sender can have. The attacker runs in a process of its own, so that parsing the flood's echoes does not
delay Bob's receipts in the benchmark's process.

For each run: the delivery delay of Alice's messages (send to Bob's receipt; p50, p99) and how many got their
metadata, Prosody's longest event-loop stall (tests/plugins/mod_bench_loop_stall.lua, as in bench_delivery.py), with
the CPU time Prosody's process used during it and how its Lua heap changed (a garbage collection frees hundreds of
KiB at once), and its peak RSS (VmHWM, reset before the run). Goals: p99 under attack at most 2x the unloaded p99;
no stall above 5 ms. A run stops after PHASE_SECONDS even if not every message went out (a starved module holds each
for the whole hold), so that one version takes under three minutes. For context, the loop's longest stall is
measured once more right after the attack run, for as long, with the attack still on and no messages of Alice's. The
peer: the same two runs on a Prosody without the module (the control), which tells what the flood costs Prosody
itself. Each version runs with Prosody's default garbage collector settings and with the incremental ones the module
README suggests (TUNED_GC, as bench_delivery.py does): most of the loop's stalls under the flood are collections.

Run by `make bench` (scripts/bench.sh; BENCH_ONLY=load for this one) or directly:
.venv/bin/python scripts/bench_load.py. Needs `make` and `make deps` first. Exits non-zero only when something
breaks, not when a goal is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_delivery import (  # noqa: E402 (after the path)
    ROOM,
    ROOT,
    STALL_GOAL_MS,
    TUNED_GC,
    install_modules,
    message,
    rig,
    rss_kib,
    timed_delivery,
    with_metadata,
)

FLOOD_ROOM = "flood@conference.localhost"
ROUNDS = int(os.environ.get("BENCH_LOAD_ROUNDS", "500"))
# Alice's messages a second; 0: each as soon as the previous one is delivered. At 25, ROUNDS messages take 20 s,
# four times the module's hold, so that holds end (and their probes are cancelled) while the attack is measured.
RATE = float(os.environ.get("BENCH_LOAD_RATE", "0"))
PHASE_SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
ATTACKERS = 4
ATTACK_RATE = float(os.environ.get("BENCH_ATTACK_RATE", "20"))  # messages a second per attacking occupant
MAX_URLS = 8  # the module's default muc_media_metadata_max_urls
RATIO_GOAL = 2.0


class ServerProcess:
    """tests/media_server.py in its own process, for its tarpit (and photo.png), on idle CPU time only (SCHED_IDLE,
    like the module's worker threads), so that serving does not compete with the Prosody being measured (in
    production the files come from another machine)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["chrt", "--idle", "0", sys.executable, str(ROOT / "tests/media_server.py"),
                                      "127.0.0.1"], stdout=subprocess.PIPE, text=True)
        _pid, port = self.proc.stdout.readline().split()
        self.port = int(port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def workload(server, alice, bob, media, tag: str) -> dict:
    """ROUNDS image messages (or PHASE_SECONDS), with the loop-stall timer and VmHWM around them."""
    pid = server.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    baseline_kib = rss_kib(pid, "VmRSS")
    delays, with_meta = [], 0
    async with server.http_client(host=rig.MUC_HOST) as http:
        await http.get("/bench_loop_stall/start")
        deadline = time.monotonic() + PHASE_SECONDS
        next_at = time.monotonic()
        for i in range(ROUNDS):
            if time.monotonic() > deadline:
                break
            if RATE > 0:  # Alice's pace, without catching up in a burst after a slow delivery
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + 1 / RATE, time.monotonic())
            ms, stanza = await timed_delivery(alice, bob, [media.url(f"/photo.png?{tag}-{i}")], f"{tag} {i}")
            delays.append(ms)
            with_meta += with_metadata(stanza)
        stall = (await http.get("/bench_loop_stall/stop")).json()
    return {"p50": statistics.median(delays), "p99": p(delays, 0.99), "n": len(delays), "with_meta": with_meta,
            "stall_ms": stall["max_ms"], "stall_in": stall.get("longest", {}), "baseline_kib": baseline_kib,
            "peak_kib": rss_kib(pid, "VmHWM")}


def stall_in(run: dict) -> str:
    """What Prosody's process did during a run's longest stall: its CPU time (all threads) and the Lua heap's
    change, which tell Prosody's own work, a garbage collection (a drop of hundreds of KiB) or time without
    the CPU apart."""
    d = run["stall_in"]
    if not d:
        return "no ticks"
    return f"CPU {d['cpu_ms']:.1f} ms, Lua heap {d['heap_kib']:+.0f} KiB"


async def flood(attacker, tarpit: str, k: int, sent: list[int]) -> None:
    """One attacking occupant: a message of MAX_URLS new tarpit URLs as soon as the room has delivered its previous
    one, at most ATTACK_RATE a second (a module that sheds at once would otherwise turn this into a flood of plain
    messages that loads the benchmark's own client and the machine, not the module)."""
    next_at = time.monotonic()
    while True:
        n = sent[k]
        urls = [f"{tarpit}{k}-{n}-{j}.png" for j in range(MAX_URLS)]
        attacker.send(message(attacker, urls, f"flood {k} {n}", room=FLOOD_ROOM))
        sent[k] += 1
        await attacker.wait_for(rig.match("message", type="groupchat", body=f"flood {k} {n}"))
        # At most ATTACK_RATE a second, also after a held message: no catching up in a burst.
        next_at = max(next_at + 1 / ATTACK_RATE, time.monotonic())
        await asyncio.sleep(next_at - time.monotonic())  # the attacker's pace, not a wait for an event


async def attack(c2s_port: int, tarpit: str) -> int:
    """The attacker's process (--attack): joins its occupants, prints "ready", floods until its standard input
    closes, then prints how many messages it sent. A process of its own, so that parsing the room's echoes of the
    flood does not delay the receipts of Bob's client, which the benchmark would count as Prosody's delay."""
    server = SimpleNamespace(c2s_port=c2s_port)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(rig.connect(server, "mallory@localhost", "pw", resource=f"r{k}"))
                   for k in range(ATTACKERS)]
        await rig.create_room(clients[0], FLOOD_ROOM, "M0", persistent=False)
        for k, client in enumerate(clients[1:], 1):
            await rig.join_room(client, FLOOD_ROOM, f"M{k}")
        sent = [0] * ATTACKERS
        floods = [asyncio.create_task(flood(c, tarpit, k, sent)) for k, c in enumerate(clients)]
        print("ready", flush=True)
        closed = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, sys.stdin.read))
        await asyncio.wait([closed, *floods], return_when=asyncio.FIRST_COMPLETED)
        for task in floods:
            task.cancel()
        results = await asyncio.gather(*floods, return_exceptions=True)
        for result in results:
            if not isinstance(result, asyncio.CancelledError):
                raise result  # an attacker's failure breaks the benchmark
        print(sum(sent), flush=True)
    return 0


async def bench_version(version: str, gc: dict | None, modules_dir: Path, media: ServerProcess,
                        with_module: bool = True) -> dict:
    """Both runs on one Prosody with `gc` (None: the default); with_module=False is the control: Prosody alone
    under the same flood."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-load-{version}-"))
    server = rig.Prosody(
        version,
        workdir,
        modules_dir,
        muc_modules=["muc_media_metadata", "bench_loop_stall"] if with_module else ["bench_loop_stall"],
        global_options={"plugin_paths": [str(modules_dir), str(ROOT / "tests/plugins")],
                        **({"gc": gc} if gc else {}),
                        "log": [{"levels": {"min": "info"}, "to": "file", "filename": str(workdir / "prosody.log")}]},
        muc_options={"muc_media_metadata_allowed_networks": ["127.0.0.1/32"]},
    )
    server.start()
    try:
        for user in ("alice", "bob", "mallory"):
            server.register(user, "pw")
        async with rig.connect(server, "alice@localhost", "pw") as alice, \
                rig.connect(server, "bob@localhost", "pw") as bob:
            await rig.create_room(alice, ROOM, "Alice", persistent=False)
            await rig.join_room(bob, ROOM, "Bob")
            await timed_delivery(alice, bob, [media.url("/photo.png?warm-up")], "warm-up")
            result = {"unloaded": await workload(server, alice, bob, media, "unloaded")}
            attacker = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--attack", str(server.c2s_port), media.url("/tarpit/"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            try:
                if await attacker.stdout.readline() != b"ready\n":
                    raise RuntimeError("the attacker's process failed to start")
                started = time.monotonic()
                result["attack"] = await workload(server, alice, bob, media, "attack")
                # The loop's stalls with nothing to do for as long (the attack still on): the machine's share.
                async with server.http_client(host=rig.MUC_HOST) as http:
                    await http.get("/bench_loop_stall/start")
                    await asyncio.sleep(time.monotonic() - started)  # a phase of fixed length, not a wait
                    result["idle_stall_ms"] = (await http.get("/bench_loop_stall/stop")).json()["max_ms"]
            finally:
                attacker.stdin.close()
                out, _ = await attacker.communicate()
            if attacker.returncode != 0:
                raise RuntimeError(f"the attacker's process failed (exit status {attacker.returncode})")
            result["attack"]["attacker_messages"] = int(out)
        return result
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(version: str, gc: dict | None, r: dict, control: dict) -> None:
    u, a = r["unloaded"], r["attack"]
    pace = f"{RATE:g} messages a second" if RATE > 0 else "messages back to back"
    print(f"\n== mod_muc_media_metadata under a tarpit flood, Prosody {version}, gc = "
          f"{rig.lua(gc) if gc else 'default'} (default limits, {pace}) ==")
    rows = [
        ("image messages delivered", f"{u['n']}", f"{a['n']}"),
        ("  of which with metadata", f"{u['with_meta']}", f"{a['with_meta']}"),
        ("delivery delay p50 (ms)", f"{u['p50']:.2f}", f"{a['p50']:.2f}"),
        ("delivery delay p99 (ms)", f"{u['p99']:.2f}", f"{a['p99']:.2f}"),
        ("longest loop stall (ms)", f"{u['stall_ms']:.2f}", f"{a['stall_ms']:.2f}"),
        ("RSS before (MiB)", f"{u['baseline_kib'] / 1024:.1f}", f"{a['baseline_kib'] / 1024:.1f}"),
        ("peak RSS (MiB)", f"{u['peak_kib'] / 1024:.1f}", f"{a['peak_kib'] / 1024:.1f}"),
        ("attacker messages sent", "-", f"{a['attacker_messages']} ({a['attacker_messages'] * MAX_URLS} URLs)"),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"  {'':{width}}  {'unloaded':>10}  {'attack':>10}")
    for name, x, y in rows:
        print(f"  {name:{width}}  {x:>10}  {y:>10}")
    ratio = a["p99"] / u["p99"]
    starved = a["n"] < ROUNDS or a["with_meta"] < a["n"]
    verdict = "MET" if ratio <= RATIO_GOAL and not starved else "MISSED"
    extra = f" ({a['n']}/{ROUNDS} sent in {PHASE_SECONDS:.0f} s, {a['with_meta']} with metadata)" if starved else ""
    print(f"  goal: p99 under attack <= {RATIO_GOAL:.0f}x unloaded p99 -> ratio x{ratio:.2f}: {verdict}{extra}")
    cu, ca = control["unloaded"], control["attack"]
    print(f"    (control, Prosody without the module under the same flood: p99 {cu['p99']:.2f} -> {ca['p99']:.2f} ms, "
          f"x{ca['p99'] / cu['p99']:.2f}; longest stall {max(cu['stall_ms'], ca['stall_ms']):.2f} ms)")
    print(f"    (during the longest stall, unloaded: {stall_in(u)}; under attack: {stall_in(a)}; control under "
          f"attack: {stall_in(ca)})")
    longest = max(u, a, key=lambda run: run["stall_ms"])
    stall = longest["stall_ms"]
    # CPU time of all of Prosody's threads during that stall: less than the goal means that the loop waited for a
    # core (other processes had both) rather than worked.
    ran_ms = longest["stall_in"].get("cpu_ms", stall)
    verdict = "MET" if stall <= STALL_GOAL_MS else "MISSED"
    if stall > STALL_GOAL_MS and r["idle_stall_ms"] > STALL_GOAL_MS:
        verdict += ", but inconclusive: the loop stalls past the goal without Alice's messages too"
    elif stall > STALL_GOAL_MS and ran_ms <= STALL_GOAL_MS:
        verdict += (f", but inconclusive: Prosody's threads ran {ran_ms:.1f} ms of it in all, and waited for a core "
                    f"the rest")
    print(f"  goal: no stall above {STALL_GOAL_MS:.0f} ms -> longest {stall:.2f} ms: {verdict}")
    print(f"    (right after, the attack on and no messages of Alice's, for as long: {r['idle_stall_ms']:.2f} ms; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")



async def main() -> int:
    versions = os.environ.get("PROSODY_VERSIONS", "0.12 13").split()
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    modules_dir = tmp / "modules"
    install_modules(modules_dir)
    media = ServerProcess()
    try:
        for version in versions:
            for gc in (None, TUNED_GC):
                started = time.monotonic()
                result = await bench_version(version, gc, modules_dir, media)
                control = await bench_version(version, gc, modules_dir, media, with_module=False)
                report(version, gc, result, control)
                print(f"  ({time.monotonic() - started:.0f} s for this version and gc setting)")
    finally:
        media.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--attack"]:
        sys.exit(asyncio.run(attack(int(sys.argv[2]), sys.argv[3])))
    sys.exit(asyncio.run(main()))
