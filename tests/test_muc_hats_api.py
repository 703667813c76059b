"""mod_muc_hats_api on a real Prosody: another module (tests/plugins/mod_test_hats_driver.lua) calls the API, and
occupants see the result in presence."""

from pathlib import Path

import pytest

import rig

from rig import connect, create_room, join_room, match, all_of

XMLNS_HATS = "urn:xmpp:hats:0"
XMLNS_LEGACY_HATS = "xmpp:prosody.im/protocol/hats:1"
PROCTOR = "http://example.com/hats#proctor"
DRIVER_DIR = str(Path(__file__).parent / "plugins")
ROOM = "hatroom@conference.localhost"
TEACHER = "http://example.com/hats#teacher"


@pytest.fixture
def start_hats_server(start_prosody, modules_dir):
    """A server with mod_muc_hats_api and the test driver on the MUC host, alice (owner) and bob."""

    def start(storage="internal", muc_options=None, metrics=False):
        server = start_prosody(
            muc_modules=["muc_hats_api", "test_hats_driver"],
            global_modules=rig.METRICS_MODULES if metrics else (),
            global_options={"plugin_paths": [str(modules_dir), DRIVER_DIR],
                            **(rig.METRICS_OPTIONS if metrics else {})},
            muc_options=muc_options,
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


def hat_uris(presence):
    """The URIs of the XEP-0317 hats of a presence, in order."""
    return [hat["uri"] for hats in hats_in(presence) for hat in hats]


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
        assert [[{"uri": TEACHER, "title": TEACHER}]] == hats_in(presence)  # no title: its URI (XEP-0317 §3.1)
        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert {"urn:example:quiet", TEACHER} == set(hats)
        assert {"title": "urn:example:quiet", "assigned_by": "api"} == hats["urn:example:quiet"]


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


# --- Titles, presence and disco (XEP-0317) ----------------------------------------------------------------------


async def test_a_hat_without_title_takes_the_catalogue_title_or_its_uri(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        ok, _, text = await call(server, "define_room_hat", ROOM, TEACHER, {"title": "Teacher", "hue": 120})
        assert ok, text

        await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True})
        await call(server, "add_user_hat", "bob@localhost", ROOM, "urn:example:guest", {"active": True})

        # XEP-0317 §3.1: every <hat/> MUST have a title
        presence = await alice.wait_for(all_of(presence_of("Bob"), lambda p: len(hat_uris(p)) == 2))
        assert [[{"uri": TEACHER, "title": "Teacher", "hue": "120"},
                 {"uri": "urn:example:guest", "title": "urn:example:guest"}]] == hats_in(presence)
        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert ("Teacher", "urn:example:guest") == (hats[TEACHER]["title"], hats["urn:example:guest"]["title"])


async def test_presence_is_resent_only_when_what_it_shows_changed(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        teacher = [{"uri": TEACHER, "title": "Teacher"}]
        await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True, "title": "Teacher"})
        await alice.wait_for(all_of(presence_of("Bob"), lambda p: hats_in(p) == [teacher]))

        # the same hat again, and a hidden (inactive) hat: nothing others see changes
        await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True, "title": "Teacher"})
        await call(server, "add_user_hat", "bob@localhost", ROOM, "urn:example:hidden", {"title": "Hidden"})
        await call(server, "add_user_hat", "bob@localhost", ROOM, PROCTOR, {"active": True, "title": "Proctor"})

        await alice.wait_for(all_of(presence_of("Bob"), lambda p: len(hat_uris(p)) == 2))
        assert [] == alice.arrived(presence_of("Bob"))
        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert {TEACHER, PROCTOR, "urn:example:hidden"} == set(hats)


async def test_rooms_advertise_hats_with_the_api_module_alone(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice:
        await create_room(alice, ROOM, "Alice")
        info = await alice.plugin["xep_0030"].get_info(jid=ROOM, timeout=30)

    assert XMLNS_HATS in info["disco_info"]["features"]


# --- Who may change what ----------------------------------------------------------------------------------------


async def test_room_managers_cannot_change_hats_a_module_assigned(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        # the room's catalogue has the hat (a room owner made it), and a module gives it to bob
        as_owner = {"kind": "room", "actor": "alice@localhost/desk"}
        assert (True, None) == (await call(server, "define_room_hat", ROOM, TEACHER, {"title": "Teacher"}, as_owner))[:2]
        assert (await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True, "required": True}))[0]
        log_start = server.log_path.stat().st_size

        attempts = [
            ("remove_user_hat", "bob@localhost", ROOM, TEACHER, as_owner),
            ("add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": False}, as_owner),
            ("set_user_hats", "bob@localhost", ROOM, {}, as_owner),
            ("define_room_hat", ROOM, TEACHER, {"title": "Fake"}, as_owner),
            ("destroy_room_hat", ROOM, TEACHER, as_owner),
        ]
        for function, *args in attempts:
            ok, code, text = await call(server, function, *args)
            assert (None, "forbidden") == (ok, code), function
            assert f"The hat {TEACHER} of bob@localhost was assigned by the service" in text

        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert {TEACHER: {"active": True, "required": True, "title": "Teacher", "assigned_by": "api"}} == hats
        refusals = [fields for _, action, fields in server.audit(log_start) if action == "hat-change-refused"]
        assert len(attempts) == len(refusals)
        assert {("alice@localhost/desk", "room", "protected", TEACHER)} == {
            (f["actor"], f["by"], f["reason"], f["hat"]) for f in refusals}
        # a module (or a service admin) still may
        assert (await call(server, "remove_user_hat", "bob@localhost", ROOM, TEACHER))[0]


async def test_hats_of_service_admins_without_affiliation_are_found(start_hats_server):
    # 0.12 makes service admins owners without an affiliation entry; 13 does when asked to
    server = start_hats_server(muc_options={"component_admins_as_room_owners": True})
    server.register("admin", "adminpw")
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob, \
            connect(server, "admin@localhost", "adminpw") as admin:
        await room_with_member(server, alice, bob)
        await join_room(admin, ROOM, "Admin")
        await call(server, "define_room_hat", ROOM, TEACHER, {"title": "Teacher"})
        for user in ("admin@localhost", "bob@localhost"):
            ok, code, text = await call(server, "add_user_hat", user, ROOM, TEACHER, {"active": True})
            assert (True, None) == (ok, code), text
        await alice.wait_for(all_of(presence_of("Admin"), lambda p: hats_in(p)))

        await call(server, "define_room_hat", ROOM, TEACHER, {"title": "Head Teacher"})
        await alice.wait_for(all_of(presence_of("Admin"),
                                    lambda p: hats_in(p) == [[{"uri": TEACHER, "title": "Head Teacher"}]]))
        assigned, _, _ = await call(server, "get_assigned_hats", ROOM)
        assert ["admin@localhost", "bob@localhost"] == sorted(assigned)

        await call(server, "destroy_room_hat", ROOM, TEACHER)
        await alice.wait_for(all_of(presence_of("Admin"), lambda p: hats_in(p) == []))
        assigned, _, _ = await call(server, "get_assigned_hats", ROOM)
        assert {} == assigned or [] == assigned


async def test_hats_stored_by_0_1_0_keep_working(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        await call(server, "define_room_hat", ROOM, TEACHER, {"title": "Teacher"}, {"kind": "room"})
        # as 0.1.0 stored them: no assigned_by, and a title only where one was given
        ok, _, text = await call(server, "store_as_0.1.0", ROOM, "bob@localhost", {
            TEACHER: {"active": True},  # assigned by the room commands (in the catalogue, not required)
            PROCTOR: {"active": True, "required": True},  # by the service
        })
        assert ok, text
        bob.send_presence(pto=f"{ROOM}/Bob", pstatus="after the upgrade")  # core builds it again, with the hats

        presence = await alice.wait_for(all_of(presence_of("Bob"), lambda p: p["status"] == "after the upgrade"))
        assert [[{"uri": PROCTOR, "title": PROCTOR}, {"uri": TEACHER, "title": "Teacher"}]] == hats_in(presence)
        hats, _, _ = await call(server, "get_user_hats", "bob@localhost", ROOM)
        assert ("room", "service") == (hats[TEACHER]["assigned_by"], hats[PROCTOR]["assigned_by"])
        as_owner = {"kind": "room", "actor": "alice@localhost"}
        assert (None, "forbidden") == (await call(server, "remove_user_hat", "bob@localhost", ROOM, PROCTOR, as_owner))[:2]
        assert (True, None) == (await call(server, "remove_user_hat", "bob@localhost", ROOM, TEACHER, as_owner))[:2]


# --- Operators: options, audit, metrics -------------------------------------------------------------------------


async def test_options_are_read_again_on_config_reload(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        assert (await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"title": "Teacher"}))[0]

        server.reload(muc_options={"muc_hats_max_title_length": 5})

        ok, code, text = await call(server, "add_user_hat", "bob@localhost", ROOM, PROCTOR, {"title": "Proctor"})
        assert (None, "bad-request") == (ok, code)
        assert "longer than 5" in text


async def test_every_change_through_the_api_logs_one_audit_line(start_hats_server):
    server = start_hats_server()
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        log_start = server.log_path.stat().st_size
        calls = [
            ("define_room_hat", ROOM, TEACHER, {"title": "Teacher"}),
            ("add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True}, {"actor": "bot@localhost"}),
            ("add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True}),  # no change: no line
            ("add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": False}),
            ("set_user_hats", "bob@localhost", ROOM, {PROCTOR: {"title": "Proctor"}}),
            ("define_room_hat", ROOM, PROCTOR, {"title": "Head Proctor"}),
            ("remove_user_hat", "bob@localhost", ROOM, PROCTOR),
            ("destroy_room_hat", ROOM, PROCTOR),
        ]
        for function, *args in calls:
            ok, _, text = await call(server, function, *args)
            assert ok, (function, text)

    lines = [(source, action, fields) for source, action, fields in server.audit(log_start)]
    assert {f"{server.muc_host}:muc_hats_api"} == {source for source, _, _ in lines}
    assert [
        ("hat-defined", {"by": "api", "room": ROOM, "hat": TEACHER, "title": "Teacher", "wearers": "0"}),
        ("hat-assigned", {"actor": "bot@localhost", "by": "api", "room": ROOM, "user": "bob@localhost",
                          "hat": TEACHER, "title": "Teacher"}),
        ("hat-updated", {"by": "api", "room": ROOM, "user": "bob@localhost", "hat": TEACHER, "title": "Teacher"}),
        ("hats-set", {"by": "api", "room": ROOM, "user": "bob@localhost", "hats": "1"}),
        ("hat-defined", {"by": "api", "room": ROOM, "hat": PROCTOR, "title": "Head Proctor", "wearers": "1"}),
        ("hat-unassigned", {"by": "api", "room": ROOM, "user": "bob@localhost", "hat": PROCTOR}),
        ("hat-destroyed", {"by": "api", "room": ROOM, "hat": PROCTOR, "wearers": "0"}),
    ] == [(action, fields) for _, action, fields in lines]


async def test_metrics_count_hat_changes(start_hats_server):
    server = start_hats_server(metrics=True)
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await room_with_member(server, alice, bob)
        await call(server, "define_room_hat", ROOM, TEACHER, {"title": "Teacher"})
        await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True})
        await call(server, "add_user_hat", "bob@localhost", ROOM, TEACHER, {"active": True})  # no change
        await call(server, "define_room_hat", ROOM, TEACHER, {"title": "Head Teacher"}, {"kind": "service"})
        await call(server, "destroy_room_hat", ROOM, TEACHER)

    metrics = await server.metrics()
    name = "prosody_mod_muc_hats_api__hat_changes_total"
    assert metrics.help[name.removesuffix("_total")]
    counts = {(dict(labels)["change"], dict(labels)["by"]): value
              for (sample, labels), value in metrics.items() if sample == name}
    assert {("created", "api"): 1, ("assigned", "api"): 1, ("redefined", "service"): 1, ("updated", "service"): 1,
            ("destroyed", "api"): 1, ("unassigned", "api"): 1} == counts
