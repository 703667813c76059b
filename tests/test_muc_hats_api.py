"""mod_muc_hats_api on a real Prosody: another module (tests/plugins/mod_test_hats_driver.lua) calls the API, and
occupants see the result in presence."""

from pathlib import Path

import pytest

import rig

from rig import connect, create_room, join_room, match, all_of

XMLNS_HATS = "urn:xmpp:hats:0"
XMLNS_LEGACY_HATS = "xmpp:prosody.im/protocol/hats:1"
DRIVER_DIR = str(Path(__file__).parent / "plugins")
ROOM = "hatroom@conference.localhost"
TEACHER = "http://example.com/hats#teacher"


@pytest.fixture
def start_hats_server(start_prosody, modules_dir):
    """A server with mod_muc_hats_api and the test driver on the MUC host, alice (owner) and bob."""

    def start(storage="internal"):
        server = start_prosody(
            muc_modules=["muc_hats_api", "test_hats_driver"],
            global_options={"plugin_paths": [str(modules_dir), DRIVER_DIR]},
            storage=storage,
        )
        server.register("alice", "alicepw")
        server.register("bob", "bobpw")
        return server

    return start


async def call(server, function, *args):
    """Calls a mod_muc_hats_api function through the driver; returns (result, code, text)."""
    async with server.http_client(host=server.muc_host) as http:
        response = await http.post(f"/test_hats_driver/{function}", json=list(args))
    assert response.status_code == 200, response.text
    body = response.json()
    return body.get("ok"), body.get("code"), body.get("text")


def hats_in(presence, xmlns=XMLNS_HATS):
    """The <hats/> elements of the given namespace in a presence, as lists of hat attribute dicts."""
    return [[dict(hat.attrib) for hat in el] for el in presence.xml.findall(f"{{{xmlns}}}hats")]


def presence_of(nick):
    return all_of(match("presence", from_=f"{ROOM}/{nick}"), lambda s: s["type"] != "unavailable")


async def room_with_member(server, alice, bob):
    """Alice creates the persistent room and makes bob a member; both are in it."""
    await create_room(alice, ROOM, "Alice", persistent=True)
    await alice.plugin["xep_0045"].set_affiliation(ROOM, jid="bob@localhost", affiliation="member")
    await join_room(bob, ROOM, "Bob")
    await alice.wait_for(presence_of("Bob"))


async def test_added_hat_appears_in_presence_at_once(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)

        ok, code, text = await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER,
                                    {"active": True, "title": "Teacher", "hue": 200})
        assert (True, None) == (ok, code), text

        presence = await alice.wait_for(all_of(presence_of("Bob"), lambda p: hats_in(p)))
        assert [[{"uri": TEACHER, "title": "Teacher", "hue": "200"}]] == hats_in(presence)
        if server.version == "0.12":
            # core's legacy element stays next to ours
            assert [[{"uri": TEACHER, "title": "Teacher"}]] == hats_in(presence, XMLNS_LEGACY_HATS)


async def test_removed_hat_disappears_from_presence(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True})
        await alice.wait_for(all_of(presence_of("Bob"), lambda p: hats_in(p)))

        ok, code, text = await call(server, "remove_user_hat", "bob@localhost", ROOM, TEACHER)
        assert (True, None) == (ok, code), text

        presence = await alice.wait_for(presence_of("Bob"))
        assert [] == hats_in(presence)
        assert [] == hats_in(presence, XMLNS_LEGACY_HATS)


async def test_inactive_hats_are_stored_but_not_shown(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)

        # attachment omitted: means {} (an inactive hat), not an error
        ok, code, text = await call(server, "add_user_hat", "bob@localhost", ROOM, "urn:example:quiet")
        assert (True, None) == (ok, code), text
        ok, code, text = await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True})
        assert (True, None) == (ok, code), text

        presence = await alice.wait_for(all_of(presence_of("Bob"), lambda p: hats_in(p)))
        assert [[{"uri": TEACHER}]] == hats_in(presence)
        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert {"urn:example:quiet", TEACHER} == set(hats)
        assert hats["urn:example:quiet"] in ({}, [])  # util.json writes an empty table as []


async def test_set_user_hats_replaces_the_wardrobe(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        await call(server, "set_user_hats", "bob@localhost", ROOM,
                   {"urn:example:a": {"active": True}, "urn:example:b": {"active": True}})
        ok, code, text = await call(server, "set_user_hats", "bob@localhost", ROOM,
                                    {"urn:example:b": {"active": True, "title": "B"}})
        assert (True, None) == (ok, code), text

        presence = await alice.wait_for(all_of(
            presence_of("Bob"), lambda p: hats_in(p) == [[{"uri": "urn:example:b", "title": "B"}]]))
        assert presence is not None
        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert ["urn:example:b"] == list(hats)


@pytest.mark.parametrize("storage", rig.STORAGES)
async def test_hats_survive_a_restart(start_hats_server, storage):
    server = start_hats_server(storage)
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        ok, _, text = await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER,
                                 {"active": True, "title": "Teacher"})
        assert ok, text

    server.restart()

    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await join_room(alice, ROOM, "Alice")
        await join_room(bob, ROOM, "Bob")
        presence = await alice.wait_for(presence_of("Bob"))
        assert [[{"uri": TEACHER, "title": "Teacher"}]] == hats_in(presence)


@pytest.mark.parametrize("args, code, text", [
    (["bob@localhost", ROOM, "teacher", {"active": True}], "bad-request", "Hat id must be a URI"),
    (["bob@localhost", ROOM, TEACHER, {"active": "yes"}], "bad-request", "'active' must be a boolean"),
    (["bob@localhost", ROOM, TEACHER, {"title": "x" * 129}], "bad-request", "longer than 128"),
    (["bob@localhost", ROOM, TEACHER, {"hue": 360}], "bad-request", "Hue"),
    (["bob@localhost", ROOM, TEACHER, {"colour": "red"}], "bad-request", "unknown field"),
    (["not a jid@", ROOM, TEACHER, {}], "bad-request", "Malformed user JID"),
    (["carol@localhost", ROOM, TEACHER, {}], "item-not-found", "not affiliated"),
    (["bob@localhost", "nosuchroom@conference.localhost", TEACHER, {}], "item-not-found", "Room not found"),
    (["bob@localhost", "hatroom@elsewhere.example", TEACHER, {}], "item-not-found", "Room not found"),
])
async def test_bad_input_is_refused_and_changes_nothing(start_hats_server, args, code, text):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        await call(server, "add_user_hat", "bob@localhost", ROOM, "urn:example:kept", {"active": True})

        result = await call(server, "add_user_hat", *args)
        assert (None, code) == result[:2]
        assert text in result[2]

        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert ["urn:example:kept"] == list(hats)


async def test_client_cannot_claim_hats_in_its_own_presence(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        spoofed = bob.make_presence(pto=f"{ROOM}/Bob", pstatus="spoofing")
        hats = spoofed.xml.makeelement(f"{{{XMLNS_HATS}}}hats", {})
        hats.append(hats.makeelement(f"{{{XMLNS_HATS}}}hat", {"uri": "urn:example:fake", "title": "Admin"}))
        spoofed.xml.append(hats)
        spoofed.send()

        presence = await alice.wait_for(all_of(presence_of("Bob"), lambda p: p["status"] == "spoofing"))
        assert [] == hats_in(presence)
