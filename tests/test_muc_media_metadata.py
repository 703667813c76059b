"""mod_muc_media_metadata on a real Prosody: occupants of a room receive media metadata for what a local HTTP
server (tests/media_server.py) serves, blocked addresses are never contacted, and Prosody stays responsive.

Alice posts, Bob is the occupant whose view is asserted. The allowed server is 127.0.0.1 (allowed explicitly,
since loopback is blocked by default); the "blocked" server listens on 127.0.0.2 and records every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

import rig
from media_server import BIG_BYTES, BOMB_SIZE, DATA, PHOTO_SIZE, MediaServer
from rig import connect, create_room, join_room, match

XMLNS_OOB = "jabber:x:oob"
XMLNS_METADATA = "xmpp:prosody.im/protocol/media-metadata#0"
XMLNS_SFS = "urn:xmpp:sfs:0"
XMLNS_FILE = "urn:xmpp:file:metadata:0"
XMLNS_THUMBS = "urn:xmpp:thumbs:1"
XMLNS_URL_DATA = "http://jabber.org/protocol/url-data"
ROOM = "media@conference.localhost"
PLUGINS_DIR = str(Path(__file__).parent / "plugins")
BLURHASH = re.compile(r"^[0-9A-Za-z#$%*+,\-.:;=?@\[\]^_{|}~]{6,}$")

MUC_OPTIONS = {"muc_media_metadata_allowed_networks": ["127.0.0.1/32"]}


@pytest.fixture
def media():
    with MediaServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def blocked():
    """A server on an address outside the allowed networks: nothing may ever connect to it."""
    with MediaServer("127.0.0.2") as server:
        yield server


@pytest.fixture
def start_media_prosody(start_prosody, modules_dir):
    """A server with mod_muc_media_metadata on the MUC host (extra MUC options merged in) and users alice, bob."""

    def start(muc_options=None, **kwargs):
        server = start_prosody(
            muc_modules=["muc_media_metadata"],
            muc_options={**MUC_OPTIONS, **(muc_options or {})},
            **kwargs,
        )
        server.register("alice", "alicepw")
        server.register("bob", "bobpw")
        return server

    return start


@contextlib.asynccontextmanager
async def occupants(server):
    """Alice (who created the room) and Bob, both joined."""
    async with connect(server, "alice@localhost", "alicepw") as alice, connect(server, "bob@localhost", "bobpw") as bob:
        await create_room(alice, ROOM, "Alice", persistent=False)
        await join_room(bob, ROOM, "Bob")
        yield alice, bob


def post(client, *urls, body=None, spoof=None):
    """Sends a groupchat message with one <x xmlns='jabber:x:oob'> per URL; returns its body (unique per test)."""
    body = body or " ".join(urls) or "no media"
    msg = client.make_message(mto=ROOM, mbody=body, mtype="groupchat")
    for url in urls:
        x = ET.SubElement(msg.xml, f"{{{XMLNS_OOB}}}x")
        ET.SubElement(x, f"{{{XMLNS_OOB}}}url").text = url
        if spoof:
            metadata = ET.SubElement(x, f"{{{XMLNS_METADATA}}}metadata")
            for name, value in spoof:
                ET.SubElement(metadata, f"{{{XMLNS_METADATA}}}{name}").text = value
    msg.send()
    return body


async def received(client, body):
    """The room's copy of the message with this body."""
    return await client.wait_for(match("message", type="groupchat", body=body, from_=f"{ROOM}/Alice"))


def metadata_of(stanza) -> list[list[tuple[str, str]] | None]:
    """Per OOB element, in order: the (name, text) children of its <metadata/>, or None."""
    result = []
    for x in stanza.xml.findall(f"{{{XMLNS_OOB}}}x"):
        metadata = x.findall(f"{{{XMLNS_METADATA}}}metadata")
        assert len(metadata) <= 1, "one <metadata/> per OOB element"
        result.append([(child.tag.split("}")[1], child.text) for child in metadata[0]] if metadata else None)
    return result


async def assert_responsive(server, client):
    """Prosody answers a ping: its loop is alive and serving."""
    await client.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)


@pytest.mark.parametrize(
    "path, mime",
    [
        ("/photo.png", "image/png"),
        ("/photo.jpg", "image/jpeg"),
        ("/photo.gif", "image/gif"),
        ("/photo.webp", "image/webp"),
    ],
)
async def test_image_gets_bytes_type_dimensions_and_blurhash_in_order(start_media_prosody, media, path, mime):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url(path))
        [fields] = metadata_of(await received(bob, body))
        assert ["bytes", "type", "width", "height", "blurhash"] == [name for name, _ in fields]
        values = dict(fields)
        assert int(values["bytes"]) > 0
        assert (mime, str(PHOTO_SIZE[0]), str(PHOTO_SIZE[1])) == (values["type"], values["width"], values["height"])
        assert BLURHASH.match(values["blurhash"]) and len(values["blurhash"]) == 4 + 2 * 4 * 3, values["blurhash"]


async def test_blurhash_components_are_configurable(start_media_prosody, media):
    server = start_media_prosody({"muc_media_metadata_blurhash_x": 2, "muc_media_metadata_blurhash_y": 5})
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/photo.png"))
        [fields] = metadata_of(await received(bob, body))
        assert 4 + 2 * 2 * 5 == len(dict(fields)["blurhash"])


async def test_image_gets_a_file_sharing_element_with_blurhash_thumbnail(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        url = media.url("/photo.png")
        msg = await received(bob, post(alice, url))
        [sfs] = msg.xml.findall(f"{{{XMLNS_SFS}}}file-sharing")
        file = sfs.find(f"{{{XMLNS_FILE}}}file")
        assert "image/png" == file.findtext(f"{{{XMLNS_FILE}}}media-type")
        dimensions = (file.findtext(f"{{{XMLNS_FILE}}}width"), file.findtext(f"{{{XMLNS_FILE}}}height"))
        assert (str(PHOTO_SIZE[0]), str(PHOTO_SIZE[1])) == dimensions
        assert dict(metadata_of(msg)[0])["bytes"] == file.findtext(f"{{{XMLNS_FILE}}}size")
        thumbnail = file.find(f"{{{XMLNS_THUMBS}}}thumbnail")
        assert "image/blurhash" == thumbnail.get("media-type")
        assert thumbnail.get("uri").startswith("data:image/blurhash,")
        assert url == sfs.find(f"{{{XMLNS_SFS}}}sources/{{{XMLNS_URL_DATA}}}url-data").get("target")


async def test_file_sharing_element_can_be_turned_off(start_media_prosody, media):
    server = start_media_prosody({"muc_media_metadata_file_sharing": False})
    async with occupants(server) as (alice, bob):
        msg = await received(bob, post(alice, media.url("/photo.png")))
        assert [] == msg.xml.findall(f"{{{XMLNS_SFS}}}file-sharing")
        assert metadata_of(msg)[0] is not None


async def test_non_image_file_gets_bytes_and_type_only(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/notes.txt"))
        assert [[("bytes", "29"), ("type", "text/plain")]] == metadata_of(await received(bob, body))


async def test_each_oob_element_gets_its_own_metadata(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/photo.gif"), media.url("/notes.txt"), media.url("/missing.png"))
        first, second, third = metadata_of(await received(bob, body))
        assert "image/gif" == dict(first)["type"]
        assert "text/plain" == dict(second)["type"]
        assert third is None


async def test_missing_file_is_delivered_without_metadata(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/missing.png"))
        assert [None] == metadata_of(await received(bob, body))
        assert 1 == media.count("/missing.png")


async def test_message_without_oob_passes_untouched(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, body="just words, https://example.com/not-oob.png")
        msg = await received(bob, body)
        assert [] == msg.xml.findall(f"{{{XMLNS_OOB}}}x")
        assert [] == msg.xml.findall(f"{{{XMLNS_SFS}}}file-sharing")
        assert [] == media.requests


async def test_metadata_sent_by_a_client_is_replaced(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        spoof = [("bytes", "1"), ("type", "image/png"), ("blurhash", "LEHV6nWB2yk8pyo0adR*.7kCMdnj")]
        body = post(alice, media.url("/notes.txt"), spoof=spoof)
        assert [[("bytes", "29"), ("type", "text/plain")]] == metadata_of(await received(bob, body))


async def test_spoofed_metadata_is_removed_when_the_probe_fails(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/missing.png"), spoof=[("bytes", "1"), ("type", "image/png")])
        assert [None] == metadata_of(await received(bob, body))


async def test_redirect_to_allowed_server_is_followed(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/redirect/photo"))
        [fields] = metadata_of(await received(bob, body))
        assert "image/png" == dict(fields)["type"]
        assert 1 == media.count("/photo.png")


async def test_redirect_loop_gives_no_metadata(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/redirect/loop"))
        assert [None] == metadata_of(await received(bob, body))
        assert 4 == media.count("/redirect/loop"), "the first request and 3 redirects, no more"


async def test_blocked_address_is_never_contacted(start_media_prosody, blocked):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, blocked.url("/photo.png"))
        assert [None] == metadata_of(await received(bob, body))
        assert [] == blocked.connections
        await assert_responsive(server, bob)


async def test_redirect_to_blocked_address_is_not_followed(start_media_prosody, media, blocked):
    server = start_media_prosody()
    media.redirect("/redirect/blocked", blocked.url("/photo.png"))
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/redirect/blocked"))
        assert [None] == metadata_of(await received(bob, body))
        assert 1 == media.count("/redirect/blocked")
        assert [] == blocked.connections


async def test_loopback_is_blocked_without_allowed_networks(start_media_prosody, media):
    server = start_media_prosody({"muc_media_metadata_allowed_networks": []})
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/photo.png"), f"http://localhost:{media.port}/photo.png")
        assert [None, None] == metadata_of(await received(bob, body))
        assert [] == media.connections


async def test_stalled_response_is_delivered_at_the_timeout_without_metadata(start_media_prosody, media):
    # The stalled server never finishes and the fetch limit is far beyond the rig's timeout, so the message can
    # only arrive because the module stopped holding it at its 1 s timeout. The probe's own deadline is the hold's,
    # so the stalled download ends at about the same moment with what arrived (the header: type and size, never a
    # BlurHash), whichever of the two comes first.
    server = start_media_prosody({"muc_media_metadata_timeout": 1, "muc_media_metadata_fetch_timeout": 300})
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/stall.png"), media.url("/notes.txt"))
        stalled, ready = metadata_of(await received(bob, body))
        assert stalled is None or [("bytes", "100000"), ("type", "image/png")] == stalled
        assert "text/plain" == dict(ready)["type"], "what was ready is delivered"
        await assert_responsive(server, bob)
        await assert_responsive(server, alice)


async def test_prosody_serves_others_while_a_message_is_held(start_media_prosody, media):
    server = start_media_prosody({"muc_media_metadata_timeout": 60})
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/slow/1.png"))
        assert await asyncio.to_thread(media.slow_requested.wait, rig.TIMEOUT), "the probe started"
        # Had the message not been held, its broadcast would precede this ping's answer on Bob's stream.
        await assert_responsive(server, bob)
        assert [] == bob.arrived(match("message", type="groupchat", body=body)), "still held"
        media.release_slow()
        [fields] = metadata_of(await received(bob, body))
        assert "image/png" == dict(fields)["type"]


async def test_oversized_file_gets_its_size_from_headers_and_type_from_its_first_bytes(start_media_prosody, media):
    server = start_media_prosody({"muc_media_metadata_max_bytes": 64 * 1024})
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/big.png"))
        expected = [[("bytes", str(BIG_BYTES)), ("type", "image/png")]]
        assert expected == metadata_of(await received(bob, body))


async def test_oversized_body_without_length_gets_type_only(start_media_prosody, media):
    server = start_media_prosody({"muc_media_metadata_max_bytes": 64 * 1024})
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/big-chunked.png"))
        assert [[("type", "image/png")]] == metadata_of(await received(bob, body))


def padded_progressive_jpeg(kib: int) -> bytes:
    """The progressive photo fixture with `kib` KiB of comment segments right after its first (DC) scan, where a
    large photo has its AC scans: a decoder that stops after the first scan never needs them."""
    jpeg = (DATA / "photo_progressive.jpg").read_bytes()
    sos = jpeg.index(b"\xff\xda")
    end = sos + 14
    while not (jpeg[end] == 0xFF and jpeg[end + 1] not in (0x00, 0xFF, *range(0xD0, 0xD8))):
        end += 1
    comment = b"\xff\xfe\x04\x02" + b"x" * 1024
    return jpeg[:end] + comment * kib + jpeg[end:]


def noise_png(width: int, height: int) -> bytes:
    """An RGB PNG of random pixels (incompressible: about 3 bytes a pixel)."""
    rng = random.Random(11)
    rows = b"".join(b"\0" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


async def test_progressive_jpeg_download_stops_after_its_first_scan(start_media_prosody, media):
    padded = padded_progressive_jpeg(8 * 1024)
    media.serve("/padded.jpg", padded, "image/jpeg")
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        [plain] = metadata_of(await received(bob, post(alice, media.url("/progressive.jpg"))))
        [fields] = metadata_of(await received(bob, post(alice, media.url("/padded.jpg"))))
        assert [("bytes", str(len(padded)))] + plain[1:] == fields, "the same picture, and the whole file's size"
        assert "blurhash" in dict(fields)
    sent = media.bytes_sent("/padded.jpg")
    assert sent < len(padded) // 4, f"sent {sent} of {len(padded)} bytes"


async def test_png_over_the_cap_gets_width_and_height(start_media_prosody, media):
    png = noise_png(1200, 900)
    media.serve("/noise.png", png, "image/png")
    cap = 64 * 1024
    server = start_media_prosody({"muc_media_metadata_max_bytes": cap})
    async with occupants(server) as (alice, bob):
        [fields] = metadata_of(await received(bob, post(alice, media.url("/noise.png"))))
        assert [("bytes", str(len(png))), ("type", "image/png"), ("width", "1200"), ("height", "900")] == fields
    assert media.bytes_sent("/noise.png") < len(png) // 4


async def test_body_without_content_length_is_counted(start_media_prosody, media):
    photo = (DATA / "photo.png").read_bytes()
    media.serve("/chunked.png", photo, "image/png", chunked=True)
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        [fields] = metadata_of(await received(bob, post(alice, media.url("/chunked.png"))))
        assert ["bytes", "type", "width", "height", "blurhash"] == [name for name, _ in fields]
        assert str(len(photo)) == dict(fields)["bytes"]


async def test_content_length_longer_than_the_body_leaves_the_size_out(start_media_prosody, media):
    photo = (DATA / "photo.png").read_bytes()
    # Cut inside the image data: the prober needs more than the server sends, so it sees the body end short of
    # what the header claimed, whenever the server's close arrives.
    media.serve("/long-claim.png", photo[:len(photo) // 2], "image/png", declared_length=10 * len(photo))
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        [fields] = metadata_of(await received(bob, post(alice, media.url("/long-claim.png"))))
        expected = [("type", "image/png"), ("width", str(PHOTO_SIZE[0])), ("height", str(PHOTO_SIZE[1]))]
        assert expected == fields, "no size from a body that broke off before its stated length"


async def test_content_length_longer_than_a_whole_image_changes_nothing_else(start_media_prosody, media):
    photo = (DATA / "photo.png").read_bytes()
    media.serve("/whole-long-claim.png", photo, "image/png", declared_length=10 * len(photo))
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        [fields] = metadata_of(await received(bob, post(alice, media.url("/whole-long-claim.png"))))
        values = dict(fields)
        assert ["type", "width", "height", "blurhash"] == [name for name, _ in fields if name != "bytes"]
        assert (str(PHOTO_SIZE[0]), str(PHOTO_SIZE[1])) == (values["width"], values["height"]), "every pixel arrived"
        # The image ends at its IEND. If the server's close arrived by then, the body broke off and there is no
        # size; if not, the prober stopped before the claimed rest, as it does for any file it is done with, and
        # the size is the claim: Content-Length is all anyone has until the rest is downloaded.
        assert values.get("bytes") in (None, str(10 * len(photo)))


async def test_content_length_shorter_than_the_body_is_all_that_is_read(start_media_prosody, media):
    photo = (DATA / "photo.png").read_bytes()
    tail = b"\0" * (8 * 1024 * 1024)
    media.serve("/short-claim.png", photo + tail, "image/png", declared_length=len(photo) // 2)
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        [fields] = metadata_of(await received(bob, post(alice, media.url("/short-claim.png"))))
        expected = [("bytes", str(len(photo) // 2)), ("type", "image/png"), ("width", "76"), ("height", "52")]
        assert expected == fields, "a PNG cut where its length says"
    assert media.bytes_sent("/short-claim.png") < len(tail) // 4


async def test_decompression_bomb_gets_dimensions_but_no_blurhash(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/bomb.png"))
        [fields] = metadata_of(await received(bob, body))
        assert ["bytes", "type", "width", "height"] == [name for name, _ in fields]
        assert ("image/png", str(BOMB_SIZE[0]), str(BOMB_SIZE[1])) == (
            dict(fields)["type"],
            dict(fields)["width"],
            dict(fields)["height"],
        )
        await assert_responsive(server, bob)


async def test_reposted_link_is_answered_from_the_cache(start_media_prosody, media):
    server = start_media_prosody()
    async with occupants(server) as (alice, bob):
        url = media.url("/photo.png")
        first = metadata_of(await received(bob, post(alice, url, body="first post")))
        second = metadata_of(await received(bob, post(alice, url, body="second post")))
        assert first == second
        assert 1 == media.count("/photo.png")


async def test_expired_cache_entry_is_revalidated_with_its_etag(start_media_prosody, media):
    # A time to live of 0: every repost asks the server again, with the ETag it sent.
    server = start_media_prosody({"muc_media_metadata_cache_ttl": 0})
    async with occupants(server) as (alice, bob):
        url = media.url("/etag.png")
        first = metadata_of(await received(bob, post(alice, url, body="first post")))
        second = metadata_of(await received(bob, post(alice, url, body="second post")))
        assert first == second
        assert (2, 1) == (media.count("/etag.png"), media.not_modified)


async def test_probing_works_when_prosody_is_daemonized(start_media_prosody, media, modules_dir):
    # mod_test_media_prefork starts the worker threads while modules load, before the daemonizing fork.
    server = start_media_prosody(
        daemonize=True,
        global_modules=["test_media_prefork"],
        global_options={"plugin_paths": [str(modules_dir), PLUGINS_DIR]},
    )
    assert "Successfully daemonized" in server.log_text()
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/photo.png"))
        [fields] = metadata_of(await received(bob, body))
        assert "76" == dict(fields)["width"]


async def test_sighup_with_worker_threads_running_keeps_prosody_alive(start_media_prosody, media, modules_dir):
    server = start_media_prosody(
        global_modules=["test_media_prefork"],
        global_options={"plugin_paths": [str(modules_dir), PLUGINS_DIR]},
    )
    async with occupants(server) as (alice, bob):
        post(alice, media.url("/photo.png"), body="before reload")
        await received(bob, "before reload")
        os.kill(server.pid, signal.SIGHUP)  # reload: must reach Prosody's main thread, never a worker
        await assert_responsive(server, bob)
        body = post(alice, media.url("/photo.jpg"), body="after reload")
        [fields] = metadata_of(await received(bob, body))
        assert "image/jpeg" == dict(fields)["type"]
        assert server.is_running()


async def test_metrics_count_probes_by_outcome(start_media_prosody, media, blocked):
    server = start_media_prosody(
        global_modules=["http_openmetrics"],
        global_options={"statistics": "internal", "statistics_interval": "manual"},
    )
    async with occupants(server) as (alice, bob):
        await received(bob, post(alice, media.url("/photo.png"), body="done"))
        await received(bob, post(alice, media.url("/photo.png"), body="cached"))
        await received(bob, post(alice, media.url("/missing.png"), body="failed"))
        await received(bob, post(alice, blocked.url("/photo.png"), body="blocked"))
    async with server.http_client() as http:
        response = await http.get("/metrics")
    assert 200 == response.status_code, response.text

    assert (1, 1, 1, 1, 0) == tuple(
        metric_value(response.text, "probe_duration_seconds_count", outcome=outcome)
        for outcome in ("done", "cached", "failed", "blocked", "timeout")
    )
    assert metric_value(response.text, "fetched_bytes_total") > 0
    assert 0 == metric_value(response.text, "probe_queue")
    assert 0 == metric_value(response.text, "probes_in_flight")


def metric_value(text, name, **labels):
    """The value of one series of the module's metric `name` on the MUC host in openmetrics `text` (0 when the
    series is absent: a labelled counter appears with its first sample)."""
    wanted = {"host": "conference.localhost", **labels}
    for found in re.finditer(rf"^prosody_mod_muc_media_metadata[/_:]+{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        series = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if series == wanted:
            return float(found.group(2))
    assert name in text or labels, f"no {name} in:\n{text}"
    return 0


async def test_probes_over_the_sender_limit_are_shed_and_the_message_still_goes(start_media_prosody, media):
    server = start_media_prosody(
        {"muc_media_metadata_max_per_sender": 1, "muc_media_metadata_timeout": 60},
        global_modules=["http_openmetrics"],
        global_options={"statistics": "internal", "statistics_interval": "manual"},
    )
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/slow/1.png"), media.url("/slow/2.png"))
        assert await asyncio.to_thread(media.slow_requested.wait, rig.TIMEOUT), "the admitted probe started"
        async with server.http_client() as http:
            response = await http.get("/metrics")
        assert 1 == metric_value(response.text, "probes_shed_total", reason="sender-busy")
        assert 1 == metric_value(response.text, "probes_in_flight")
        media.release_slow()
        fetched, shed = metadata_of(await received(bob, body))
        assert "image/png" == dict(fetched)["type"]
        assert shed is None


async def test_malformed_allowed_network_stops_the_module_with_a_clear_message(start_prosody):
    server = start_prosody(
        muc_modules=["muc_media_metadata"],
        muc_options={"muc_media_metadata_allowed_networks": ["10.0.0.0/33"]},
        check_modules=False,
    )
    [line] = server.module_errors("muc_media_metadata")
    assert "Prefix length /33 is longer than 32 bits" in line


async def test_module_on_a_virtualhost_refuses_to_load_and_says_where_it_belongs(start_prosody):
    server = start_prosody(host_modules=["muc_media_metadata"], check_modules=False)
    [line] = server.module_errors("muc_media_metadata")
    assert "only works on" in line


async def test_url_outside_an_allowed_target_prefix_is_never_contacted(start_media_prosody, media):
    # The media server's port is neither 80 nor 443. A URL-prefix target on its host and port is the narrower
    # rule there (even inside the allowed loopback network): /photo.png is allowed, /photo.jpg is not.
    server = start_media_prosody({"muc_media_metadata_allowed_targets": [media.url("/photo.png"), media.url("/redirect/")]})
    media.redirect("/redirect/out", "/photo.jpg")
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/photo.jpg"), media.url("/photo.png"), media.url("/redirect/out"))
        refused, allowed, redirected = metadata_of(await received(bob, body))
        assert refused is None and redirected is None, "delivered, without metadata"
        assert "image/png" == dict(allowed)["type"], "the target lets its URLs through"
        assert 0 == media.count("/photo.jpg"), "never requested, directly or by the redirect"
        assert 1 == media.count("/redirect/out")
        assert 1 == media.count("/photo.png")


async def test_port_not_allowed_without_networks_is_never_contacted(start_media_prosody, media):
    # Without allowed networks, a target allows the port only: loopback is still refused by its address, and
    # without the target the port alone refuses it, before any lookup.
    server = start_media_prosody({
        "muc_media_metadata_allowed_networks": [],
        "muc_media_metadata_allowed_targets": [f"localhost:{media.port}"],
    })
    async with occupants(server) as (alice, bob):
        body = post(alice, media.url("/photo.png"), f"http://localhost:{media.port}/photo.gif")
        assert [None, None] == metadata_of(await received(bob, body))
        assert [] == media.connections
        await assert_responsive(server, bob)


async def test_only_hosts_refuses_other_hosts(start_media_prosody, media):
    server = start_media_prosody({"muc_media_metadata_only_hosts": ["127.0.0.1"]})
    media.redirect("/redirect/elsewhere", f"http://localhost:{media.port}/photo.gif")
    async with occupants(server) as (alice, bob):
        body = post(alice, f"http://localhost:{media.port}/photo.jpg", media.url("/photo.png"),
                    media.url("/redirect/elsewhere"))
        other, listed, redirected = metadata_of(await received(bob, body))
        assert other is None and redirected is None
        assert "image/png" == dict(listed)["type"]
        assert 0 == media.count("/photo.jpg")
        assert 0 == media.count("/photo.gif"), "the redirect to another host is not followed"
        assert 1 == media.count("/redirect/elsewhere")
