"""mod_muc_media_metadata under hostile load (issue 12): a flood of tarpit URLs from one sender does not starve
another room's probes, and a media server that misbehaves in every way we know of never holds a message past the
hold, never makes Prosody unresponsive and leaks nothing (jobs, queue, memory).

These tests read the module's admission metrics by name from mod_http_openmetrics (gauges probe_queue and
probes_in_flight); a missing metric fails the test. The hold itself is checked as Prosody saw it, with the
module's hold_seconds histogram, not with the client's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import rig
from media_server import DATA, MediaServer
from rig import connect, create_room, join_room, match

XMLNS_OOB = "jabber:x:oob"
XMLNS_METADATA = "xmpp:prosody.im/protocol/media-metadata#0"
PREFIX = "prosody_mod_muc_media_metadata__"
MAX_URLS = 8  # the module's default muc_media_metadata_max_urls: what one message may carry
SAMPLES = 7  # messages per median
FLOOD_MESSAGES = 16  # per attacking occupant: 4 x 16 x 8 = 512 tarpit URLs


@pytest.fixture
def media():
    with MediaServer("127.0.0.1") as server:
        yield server


def groupchat(client, room, body, *urls):
    msg = client.make_message(mto=room, mbody=body, mtype="groupchat")
    for url in urls:
        x = ET.SubElement(msg.xml, f"{{{XMLNS_OOB}}}x")
        ET.SubElement(x, f"{{{XMLNS_OOB}}}url").text = url
    return msg


def has_metadata(message) -> bool:
    return message.xml.find(f"{{{XMLNS_OOB}}}x/{{{XMLNS_METADATA}}}metadata") is not None


def gauge(metrics: rig.Metrics, name: str, host: str) -> float:
    """The module's metric `name` on `host` (a unit suffix allowed); fails when the module does not export it."""
    family = re.compile(rf"^{PREFIX}{name}(?:_[a-z]+)?$")
    found = [v for (n, labels), v in metrics.items() if family.match(n) and ("host", host) in labels]
    assert found, f"mod_muc_media_metadata exports no {name} metric on {host}; it has:\n" + "\n".join(
        sorted({n for n, _ in metrics if n.startswith(PREFIX)})
    )
    return sum(found)


async def jobs_drained(server) -> None:
    """Waits until the module's probe queue is empty and no probe is in flight."""
    async with asyncio.timeout(rig.TIMEOUT):
        while True:
            metrics = await server.metrics()
            queued, running = gauge(metrics, "probe_queue", server.muc_host), gauge(
                metrics, "probes_in_flight", server.muc_host
            )
            if (queued, running) == (0, 0):
                return


async def delivery_ms(sender, reader, room, nick, body, *urls):
    """Milliseconds from `sender` sending to `reader` receiving the room's copy; and that copy."""
    started = time.perf_counter()
    groupchat(sender, room, body, *urls).send()
    copy = await reader.wait_for(match("message", type="groupchat", from_=f"{room}/{nick}", body=body))
    return (time.perf_counter() - started) * 1000, copy


async def timed_pairs(sender, reader, room, nick, media, tag):
    """SAMPLES rounds of a plain message then a message with a new image URL: (plain ms, image ms) lists. Every
    image gets its metadata."""
    plain, image = [], []
    for i in range(SAMPLES):
        plain.append((await delivery_ms(sender, reader, room, nick, f"{tag} plain {i}"))[0])
        ms, copy = await delivery_ms(sender, reader, room, nick, f"{tag} image {i}", media.url(f"/photo.png?{tag}-{i}"))
        assert has_metadata(copy), f"{tag} image {i} got no metadata"
        image.append(ms)
    return plain, image


async def test_a_flood_of_tarpit_urls_does_not_starve_another_room(start_prosody, media):
    server = start_prosody(
        muc_modules=["muc_media_metadata"],
        muc_options={
            "muc_media_metadata_allowed_networks": ["127.0.0.1/32"],
            "muc_media_metadata_timeout": 10,
            "muc_media_metadata_fetch_timeout": 10,
        },
        global_modules=rig.METRICS_MODULES,
        global_options=rig.METRICS_OPTIONS,
    )
    for user in ("mallory", "carol", "dave"):
        server.register(user, "pw")
    flood_room, quiet_room = f"flood@{server.muc_host}", f"quiet@{server.muc_host}"
    async with contextlib.AsyncExitStack() as stack:
        # The attacker: one account, four resources, each an occupant of the flood room: as many held messages at
        # once as one sender can have (each occupant's messages wait behind their held one).
        attackers = [
            await stack.enter_async_context(connect(server, "mallory@localhost", "pw", resource=f"r{k}"))
            for k in range(4)
        ]
        carol = await stack.enter_async_context(connect(server, "carol@localhost", "pw"))
        dave = await stack.enter_async_context(connect(server, "dave@localhost", "pw"))
        await create_room(attackers[0], flood_room, "M0", persistent=False)
        for k, attacker in enumerate(attackers[1:], 1):
            await join_room(attacker, flood_room, f"M{k}")
        await create_room(carol, quiet_room, "Carol", persistent=False)
        await join_room(dave, quiet_room, "Dave")

        await timed_pairs(carol, dave, quiet_room, "Carol", media, "warm-up")  # first messages cost more
        unloaded_plain, unloaded = await timed_pairs(carol, dave, quiet_room, "Carol", media, "unloaded")

        # The flood, all at once: every occupant of the attacker sends FLOOD_MESSAGES messages of MAX_URLS new
        # tarpit URLs each, far more than every limit that applies to one sender (per sender, per room, the queue)
        # admits. Then the attacker is quiet, so that the measurement below competes with the flood's probes and
        # held messages, not with the test's own client for the machine's two cores.
        for k, attacker in enumerate(attackers):
            for n in range(FLOOD_MESSAGES):
                urls = [media.url(f"/tarpit/{k}-{n}-{j}.png") for j in range(MAX_URLS)]
                groupchat(attacker, flood_room, f"flood {k} {n}", *urls).send()
        for attacker in attackers:  # answered once Prosody has read everything that resource sent before
            await attacker.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)
        assert await asyncio.to_thread(media.tarpit_requested.wait, rig.TIMEOUT), "the flood never reached us"
        try:
            loaded_plain, loaded = await timed_pairs(carol, dave, quiet_room, "Carol", media, "loaded")
            # The flood was still on: the attacker's probes were still hanging when the last image got through.
            assert gauge(await server.metrics(), "probes_in_flight", server.muc_host) >= 1
        finally:
            media.release_tarpit()
        # None of the flood is lost either: every message reaches the room.
        for k in range(len(attackers)):
            for n in range(FLOOD_MESSAGES):
                await attackers[0].wait_for(match("message", type="groupchat", from_=f"{flood_room}/M{k}",
                                                  body=f"flood {k} {n}"))

        # The bound is 2x the unloaded delay. On two shared cores a few milliseconds of probe time double
        # with any hiccup, so the bound is the larger of 2x and the unloaded delay plus what is not the module's
        # doing, both measured in this run: the slowdown of plain messages under the flood (the machine and
        # Prosody's loop with the flood's held messages and probes), plus the spread the unloaded images already
        # showed. A starved probe waits for the hold (10 s here): far beyond either.
        u, lp, up = statistics.median(unloaded), statistics.median(loaded_plain), statistics.median(unloaded_plain)
        bound = max(2 * u, u + max(0.0, lp - up) + (max(unloaded) - min(unloaded)))
        loaded_median = statistics.median(loaded)
        assert loaded_median <= bound, (
            f"image delivery under the flood: median {loaded_median:.1f} ms against {u:.1f} ms unloaded "
            f"(bound {bound:.1f} ms; plain {up:.1f} -> {lp:.1f} ms; samples {unloaded} / {loaded}; "
            f"flood of {len(attackers) * FLOOD_MESSAGES * MAX_URLS} URLs)"
        )
        await jobs_drained(server)


PHOTO = (DATA / "photo.png").read_bytes()
HOLD = 2  # seconds; the histogram bucket that must hold every message is the next one up, 2.5 s


HANGS = ("hang before the answer", "hang after the headers", "one byte per second")  # held for the whole hold


def faults(media, round_: int) -> list[tuple[str, str]]:
    """(what goes wrong, URL) for every fault, each URL new in this round (so never from a cache)."""
    garbage = random.Random(round_).randbytes(64 * 1024)
    media.serve("/longer.png", PHOTO, "image/png", declared_length=len(PHOTO) + 4096)
    media.serve("/shorter.png", PHOTO, "image/png", declared_length=len(PHOTO) // 2)
    media.serve("/garbage.png", garbage, "image/png")
    return [
        ("reset", media.url(f"/reset/{round_}.png")),
        ("hang before the answer", media.url(f"/tarpit/{round_}.png")),
        ("hang after the headers", media.url(f"/stall.png?{round_}")),
        ("one byte per second", media.url(f"/drip/{round_}.png")),
        ("redirect loop", media.url(f"/redirect/loop?{round_}")),
        ("Content-Length too long", media.url(f"/longer.png?{round_}")),
        ("Content-Length too short", media.url(f"/shorter.png?{round_}")),
        ("garbage labelled image/png", media.url(f"/garbage.png?{round_}")),
    ]


def hold_histogram(metrics: rig.Metrics, host: str) -> tuple[float, float]:
    """(held messages so far, of which delivered within the HOLD bucket), from the module's hold histogram."""
    name = f"{PREFIX}hold_seconds"
    count = metrics.value(f"{name}_count", host=host)
    within = metrics.value(f"{name}_bucket", host=host, le="2.5")
    assert count is not None and within is not None, f"no {name} histogram with a 2.5 s bucket"
    return count, within


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def settled_rss(server) -> int:
    """Prosody's RSS in KiB once the module's jobs are done and Lua has collected its garbage (twice: finalizers
    of the first cycle free more in the second)."""
    await jobs_drained(server)
    for _ in range(2):
        await asyncio.to_thread(server.prosodyctl, "shell", ">collectgarbage('collect')")
    return rss_kib(server.pid)


async def test_a_misbehaving_media_server_neither_holds_messages_past_the_hold_nor_leaks(start_prosody, media):
    server = start_prosody(
        muc_modules=["muc_media_metadata"],
        muc_options={
            "muc_media_metadata_allowed_networks": ["127.0.0.1/32"],
            "muc_media_metadata_timeout": HOLD,
            "muc_media_metadata_fetch_timeout": HOLD,
        },
        global_modules=[*rig.METRICS_MODULES, "admin_shell"],
        global_options=rig.METRICS_OPTIONS,
    )
    server.register("alice", "pw")
    server.register("bob", "pw")
    room = f"faults@{server.muc_host}"
    async with connect(server, "alice@localhost", "pw") as alice, connect(server, "bob@localhost", "pw") as bob:
        await create_room(alice, room, "Alice", persistent=False)
        await join_room(bob, room, "Bob")

        # Warm-up: every path of a good probe taken once, so that the baseline includes what stays allocated.
        for i in range(MAX_URLS):
            _, copy = await delivery_ms(alice, bob, room, "Alice", f"warm {i}", media.url(f"/photo.png?warm{i}"))
            assert has_metadata(copy)
        baseline = await settled_rss(server)
        rss = []
        for round_ in (1, 2):
            before, _ = hold_histogram(await server.metrics(), server.muc_host)
            cases = faults(media, round_)
            for what, url in cases:
                groupchat(alice, room, f"{what} {round_}", url).send()
                # Prosody answers others while this message is held (Alice's answer: it has read her message).
                await alice.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)
                await bob.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)
                delivered = match("message", type="groupchat", from_=f"{room}/Alice", body=f"{what} {round_}")
                if what in HANGS:
                    assert [] == bob.arrived(delivered), f"{what}: the ping was answered only after the delivery"
                await bob.wait_for(delivered)
            count, within = hold_histogram(await server.metrics(), server.muc_host)
            assert count - before == len(cases), "every fault message was held"
            assert count == within, f"round {round_}: {count - within} messages held past {HOLD} s (+0.5 s)"
            rss.append(await settled_rss(server))
        mib = [round((kib - baseline) / 1024, 1) for kib in rss]
        # Round 1 may leave the allocator's pools larger than the warm-up did (glibc keeps freed memory for reuse);
        # a leak shows as round 2 growing again over round 1.
        assert mib[0] <= 8, f"RSS after the faults, MiB over the baseline of {baseline // 1024} MiB: {mib}"
        assert mib[1] - mib[0] <= 2, f"RSS grew again in the second round (MiB over the baseline): {mib}"
        # Still serving probes.
        _, copy = await delivery_ms(alice, bob, room, "Alice", "after", media.url("/photo.png?after"))
        assert has_metadata(copy)
