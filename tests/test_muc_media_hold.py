"""mod_muc_media_metadata holds a message without pausing anyone: a held message is taken out of the flow and
delivered later, only its sender's later stanzas to that room wait behind it, and it is delivered (or bounced, if
its sender may no longer speak) whatever happens meanwhile: federation, bursts, shutdown, reload, moderation.

The media server's /tarpit/ path reads a request and never answers until the test calls release_tarpit(), so a
message with such a URL stays held for exactly as long as the test wants: the hold timeout and the fetch limit are
far beyond rig.TIMEOUT. Then the probe fails and the message goes out without metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import xml.etree.ElementTree as ET

import pytest

import rig
from media_server import MediaServer
from rig import connect, create_room, join_room, match

XMLNS_OOB = "jabber:x:oob"
XMLNS_METADATA = "xmpp:prosody.im/protocol/media-metadata#0"
XMLNS_SID = "urn:xmpp:sid:0"
HOLD_OPTIONS = {
    "muc_media_metadata_allowed_networks": ["127.0.0.1/32"],
    "muc_media_metadata_timeout": 60,
    "muc_media_metadata_fetch_timeout": 300,
}
ROOM = "hold@conference.localhost"


@pytest.fixture
def media():
    with MediaServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def start_hold_prosody(start_prosody):
    """A server with mod_muc_media_metadata (held messages wait for 60 s) and users alice and bob."""

    def start(muc_modules=("muc_media_metadata",), muc_options=None, **kwargs):
        server = start_prosody(muc_modules=muc_modules, muc_options={**HOLD_OPTIONS, **(muc_options or {})}, **kwargs)
        server.register("alice", "alicepw")
        server.register("bob", "bobpw")
        return server

    return start


@contextlib.asynccontextmanager
async def occupants(server, config=None):
    """Bob (who created ROOM, its owner) and Alice, both joined."""
    async with connect(server, "alice@localhost", "alicepw") as alice, connect(server, "bob@localhost", "bobpw") as bob:
        await create_room(bob, ROOM, "Bob", persistent=False, config=config)
        await join_room(alice, ROOM, "Alice")
        yield alice, bob


def groupchat(client, room, body, url=None):
    """A groupchat message to `room`, with an OOB element for `url` if given (not sent yet)."""
    msg = client.make_message(mto=room, mbody=body, mtype="groupchat")
    if url:
        x = ET.SubElement(msg.xml, f"{{{XMLNS_OOB}}}x")
        ET.SubElement(x, f"{{{XMLNS_OOB}}}url").text = url
    return msg


def from_room(room, nick, body):
    return match("message", type="groupchat", from_=f"{room}/{nick}", body=body)


def has_metadata(message) -> bool:
    return message.xml.find(f"{{{XMLNS_OOB}}}x/{{{XMLNS_METADATA}}}metadata") is not None


async def tarpit_started(media):
    """Returns once the module has asked the tarpit: the message with its URL is being held."""
    assert await asyncio.to_thread(media.tarpit_requested.wait, rig.TIMEOUT), "the probe never started"


async def test_remote_users_are_not_paused_by_a_held_message_of_their_server(start_prosody, media):
    # Every server is created before any starts: each reads the others' names when it starts.
    rooms = start_prosody(
        domain="rooms.test", s2s=True, start=False, muc_modules=["muc_media_metadata"], muc_options=HOLD_OPTIONS
    )
    remote = start_prosody(domain="remote.test", s2s=True, start=False)
    rooms.start()
    remote.start()
    rooms.register("bob", "bobpw")
    remote.register("ann", "annpw")
    remote.register("cat", "catpw")
    room = f"lobby@{rooms.muc_host}"
    async with (
        connect(rooms, "bob@rooms.test", "bobpw") as bob,
        connect(remote, "ann@remote.test", "annpw") as ann,
        connect(remote, "cat@remote.test", "catpw") as cat,
    ):
        await create_room(bob, room, "Bob", persistent=False)
        await join_room(ann, room, "Ann")
        groupchat(ann, room, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        # Cat's join and message cross the same s2s stream as Ann's held message.
        await join_room(cat, room, "Cat")
        await bob.wait_for(match("presence", from_=f"{room}/Cat"))
        groupchat(cat, room, "not paused").send()
        await bob.wait_for(from_room(room, "Cat", "not paused"))
        assert [] == bob.arrived(from_room(room, "Ann", "held")), "still held"
        media.release_tarpit()
        held = await bob.wait_for(from_room(room, "Ann", "held"))
        assert not has_metadata(held)


async def test_every_message_of_a_burst_arrives_in_order(start_hold_prosody, media):
    # Each burst holds 50 images of one sender at once: lift the per-sender and per-room admission limits (4 and 8
    # by default, over which probes are shed) so that every one is probed.
    server = start_hold_prosody(
        muc_options={"muc_media_metadata_max_per_sender": 64, "muc_media_metadata_max_per_room": 64}
    )
    async with occupants(server) as (alice, bob):
        for burst in range(20):
            bodies = [f"burst {burst} message {i}" for i in range(150)]
            messages = [
                groupchat(alice, ROOM, body, media.url(f"/photo.png?{burst}-{i}") if i % 3 == 2 else None)
                for i, body in enumerate(bodies)
            ]
            for message in messages:  # queued at once: slixmpp writes them out back to back
                message.send()
            # Alice sends nothing more: everything she sent must come through by itself, in order.
            arrived = [await bob.wait_for(match("message", type="groupchat", from_=f"{ROOM}/Alice")) for _ in bodies]
            assert bodies == [str(message["body"]) for message in arrived], f"burst {burst}"
            # The images were held for their metadata (the hold outlasts any probe here), the others were not.
            assert [i % 3 == 2 for i in range(150)] == [has_metadata(message) for message in arrived]


async def test_sender_who_disconnects_while_held_leaves_after_their_message(start_hold_prosody, media):
    server = start_hold_prosody()
    async with connect(server, "bob@localhost", "bobpw") as bob:
        await create_room(bob, ROOM, "Bob", persistent=False)
        async with connect(server, "alice@localhost", "alicepw") as alice:
            await join_room(alice, ROOM, "Alice")
            groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
            await tarpit_started(media)
        # Alice's stream is closed; her server-side leave waits behind her held message.
        await bob.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)
        left = match("presence", type="unavailable", from_=f"{ROOM}/Alice")
        assert [] == bob.arrived(left)
        media.release_tarpit()
        held = from_room(ROOM, "Alice", "held")
        first = await bob.wait_for(lambda stanza: held(stanza) or left(stanza))  # the earlier of the two
        assert "message" == first.name, "she left after her message"
        await bob.wait_for(left)


async def test_held_message_is_archived_once_with_the_stanza_id_it_was_broadcast_with(start_hold_prosody, media):
    server = start_hold_prosody(muc_modules=["muc_media_metadata", "muc_mam"])
    server.register("carol", "carolpw")
    async with occupants(server) as (alice, bob), connect(server, "carol@localhost", "carolpw") as carol:
        groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        media.release_tarpit()
        broadcast = await bob.wait_for(from_room(ROOM, "Alice", "held"))
        [stanza_id] = broadcast.xml.findall(f"{{{XMLNS_SID}}}stanza-id")
        assert ROOM == stanza_id.get("by")
        # mod_muc_mam serves the room's history from its archive.
        _, _, _, history = await carol.plugin["xep_0045"].join_muc_wait(
            ROOM, "Carol", maxstanzas=20, timeout=rig.TIMEOUT
        )
        archived = [m for m in history if str(m["body"]) == "held"]
        assert 1 == len(archived)
        assert [stanza_id.get("id")] == [e.get("id") for e in archived[0].xml.findall(f"{{{XMLNS_SID}}}stanza-id")]


async def test_held_message_and_what_waits_behind_it_are_delivered_at_shutdown(start_hold_prosody, media):
    server = start_hold_prosody()
    async with occupants(server) as (alice, bob):
        groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        groupchat(alice, ROOM, "behind it").send()
        await alice.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)  # "behind it" has arrived too
        assert [] == bob.arrived(match("message", type="groupchat", from_=f"{ROOM}/Alice"))
        os.kill(server.pid, signal.SIGTERM)
        first = await bob.wait_for(match("message", type="groupchat", from_=f"{ROOM}/Alice"))
        second = await bob.wait_for(match("message", type="groupchat", from_=f"{ROOM}/Alice"))
        assert ["held", "behind it"] == [str(first["body"]), str(second["body"])]
        assert 0 == await asyncio.to_thread(server.wait), "a clean exit"


async def test_module_reload_delivers_held_messages_at_once(start_hold_prosody, media):
    server = start_hold_prosody(global_modules=["admin_shell"])
    async with occupants(server) as (alice, bob):
        groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        await asyncio.to_thread(server.prosodyctl, "shell", "module", "reload", "muc_media_metadata", server.muc_host)
        await bob.wait_for(from_room(ROOM, "Alice", "held"))
        # The reloaded module holds again.
        groupchat(alice, ROOM, "after reload", media.url("/photo.png")).send()
        assert has_metadata(await bob.wait_for(from_room(ROOM, "Alice", "after reload")))


async def test_config_reload_leaves_held_messages_held(start_hold_prosody, media):
    server = start_hold_prosody()
    async with occupants(server) as (alice, bob):
        groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        os.kill(server.pid, signal.SIGHUP)  # what `prosodyctl reload` sends (13's refuses to under systemd)
        async with asyncio.timeout(rig.TIMEOUT):  # each round trip gives the loop a turn to handle the signal
            while "Reloading configuration file" not in server.log_text():
                await bob.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)
        assert [] == bob.arrived(from_room(ROOM, "Alice", "held")), "still held"
        media.release_tarpit()
        await bob.wait_for(from_room(ROOM, "Alice", "held"))


async def kick(bob):
    await bob.plugin["xep_0045"].set_role(ROOM, "Alice", "none", timeout=rig.TIMEOUT)


async def ban(bob):
    await bob.plugin["xep_0045"].set_affiliation(ROOM, "outcast", jid="alice@localhost", timeout=rig.TIMEOUT)


async def devoice(bob):
    await bob.plugin["xep_0045"].set_role(ROOM, "Alice", "visitor", timeout=rig.TIMEOUT)


@pytest.mark.parametrize(
    "action, error",
    [(kick, ("cancel", "not-acceptable")), (ban, ("cancel", "not-acceptable")), (devoice, ("auth", "forbidden"))],
    ids=["kicked", "banned", "devoiced"],
)
async def test_message_of_a_sender_who_lost_the_right_to_speak_is_bounced_not_broadcast(
    start_hold_prosody, media, action, error
):
    server = start_hold_prosody()
    async with occupants(server, config={"muc#roomconfig_moderatedroom": True}) as (alice, bob):
        await bob.plugin["xep_0045"].set_role(ROOM, "Alice", "participant", timeout=rig.TIMEOUT)  # voice to speak
        held = groupchat(alice, ROOM, "held", media.url("/tarpit/1.png"))
        held.send()
        await tarpit_started(media)
        await action(bob)
        media.release_tarpit()
        bounce = await alice.wait_for(match("message", type="error", id=held["id"]))
        assert error == (bounce["error"]["type"], bounce["error"]["condition"])
        # Had the room broadcast it, Bob would have it before his own next message.
        groupchat(bob, ROOM, "after").send()
        await bob.wait_for(from_room(ROOM, "Bob", "after"))
        assert [] == bob.arrived(from_room(ROOM, "Alice", "held"))


async def test_metrics_show_held_messages_what_waits_behind_them_and_how_long_they_were_held(start_hold_prosody, media):
    server = start_hold_prosody(global_modules=rig.METRICS_MODULES, global_options=rig.METRICS_OPTIONS)
    labels = {"host": server.muc_host}
    async with occupants(server) as (alice, bob):
        groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        alice.send_presence(pto=f"{ROOM}/Alice", pstatus="away for a moment")  # waits behind the held message
        await alice.plugin["xep_0199"].ping(jid=server.host, timeout=rig.TIMEOUT)
        metrics = await server.metrics()
        assert (1, 1) == (
            metrics.value("prosody_mod_muc_media_metadata__held_messages", **labels),
            metrics.value("prosody_mod_muc_media_metadata__waiting_stanzas", **labels),
        )
        assert "prosody_mod_muc_media_metadata__hold_seconds" in metrics.help
        media.release_tarpit()
        await bob.wait_for(from_room(ROOM, "Alice", "held"))
        await bob.wait_for(match("presence", from_=f"{ROOM}/Alice", status="away for a moment"))
        metrics = await server.metrics()
        assert (0, 0, 1) == (
            metrics.value("prosody_mod_muc_media_metadata__held_messages", **labels),
            metrics.value("prosody_mod_muc_media_metadata__waiting_stanzas", **labels),
            metrics.value("prosody_mod_muc_media_metadata__hold_seconds_count", **labels),
        )


async def test_probe_over_a_full_queue_is_shed_and_its_message_goes_without_metadata(start_hold_prosody, media):
    # One download at a time and no queue: while Alice's tarpit probe holds the only slot, Bob's probe is shed.
    server = start_hold_prosody(
        muc_options={"muc_media_metadata_max_downloads": 1, "muc_media_metadata_max_queued": 0},
        global_modules=rig.METRICS_MODULES,
        global_options=rig.METRICS_OPTIONS,
    )
    labels = {"host": server.muc_host}
    async with occupants(server) as (alice, bob):
        groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        groupchat(bob, ROOM, "shed", media.url("/photo.png")).send()
        shed = await alice.wait_for(from_room(ROOM, "Bob", "shed"))  # at once: the hold is 60 s
        assert not has_metadata(shed)
        assert 0 == media.count("/photo.png")
        metrics = await server.metrics()
        assert 1 == metrics.value("prosody_mod_muc_media_metadata__probes_shed_total", reason="queue-full", **labels)
        assert [] == bob.arrived(from_room(ROOM, "Alice", "held")), "still held"
        media.release_tarpit()
        await bob.wait_for(from_room(ROOM, "Alice", "held"))


async def test_probe_that_gets_no_slot_before_its_hold_ends_is_dropped_as_too_late(start_hold_prosody, media):
    # Alice's tarpit probe holds the only slot for her 60 s hold. Then the hold becomes 1 s: Bob's probe waits
    # in the queue until his hold ends, is dropped and counted as too late, and his message goes without metadata.
    server = start_hold_prosody(
        muc_options={"muc_media_metadata_max_downloads": 1, "muc_media_metadata_max_queued": 1},
        global_modules=rig.METRICS_MODULES,
        global_options=rig.METRICS_OPTIONS,
    )
    labels = {"host": server.muc_host}
    async with occupants(server) as (alice, bob):
        groupchat(alice, ROOM, "held", media.url("/tarpit/1.png")).send()
        await tarpit_started(media)
        await asyncio.to_thread(server.reload, muc_options={"muc_media_metadata_timeout": 1})
        groupchat(bob, ROOM, "too late", media.url("/photo.png")).send()
        late = await alice.wait_for(from_room(ROOM, "Bob", "too late"))
        assert not has_metadata(late)
        assert 0 == media.count("/photo.png"), "it never started"
        metrics = await server.metrics()
        assert (1, 0) == (
            metrics.value("prosody_mod_muc_media_metadata__probes_shed_total", reason="too-late", **labels),
            metrics.value("prosody_mod_muc_media_metadata__probe_duration_seconds_count", outcome="cut-short",
                          **labels) or 0,
        )
        assert [] == bob.arrived(from_room(ROOM, "Alice", "held")), "still held"
        media.release_tarpit()
        await bob.wait_for(from_room(ROOM, "Alice", "held"))
