"""mod_muc_hats_adhoc on a real Prosody 0.12 and 13, driven the way an XMPP client drives it: ad-hoc commands
(XEP-0050) to the MUC service (Prosody's original hats#add/#remove) and to room JIDs (XEP-0317 v0.3.1), with the
results checked in what occupants receive: presence with hats, status 104 notices, disco and command answers."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import rig
from slixmpp.exceptions import IqError

from rig import all_of, connect, create_room, has_status, join_room, match, run_command

MUC = "conference.localhost"
ROOM = f"hats@{MUC}"
OTHER_ROOM = f"other@{MUC}"
XMLNS_HATS = "urn:xmpp:hats:0"
XMLNS_COMMANDS = "http://jabber.org/protocol/commands"
FORM_TYPE = "urn:xmpp:hats:commands"

ADD = "http://prosody.im/protocol/hats#add"
REMOVE = "http://prosody.im/protocol/hats#remove"
CREATE = f"{FORM_TYPE}:create"
DESTROY = f"{FORM_TYPE}:destroy"
LIST = f"{FORM_TYPE}:list"
ASSIGN = f"{FORM_TYPE}:assign"
UNASSIGN = f"{FORM_TYPE}:unassign"
LIST_ASSIGNED = f"{FORM_TYPE}:list-assigned"
ALL_ROOM_COMMANDS = [CREATE, DESTROY, LIST, ASSIGN, UNASSIGN, LIST_ASSIGNED]

TEACHER = "http://tech.example.edu/hats#Teacher"
ASSISTANT = "http://tech.example.edu/hats#TeacherAssistant"
PROCTOR = "http://tech.example.edu/hats#Proctor"

# admin: service admin (config `admins`), in no room; alice: owner of ROOM; bob and carol: members; dave: nobody.
PASSWORDS = {"admin": "adminpw", "alice": "alicepw", "bob": "bobpw", "carol": "carolpw", "dave": "davepw"}
# The operator's opt-in to the XEP-0317 room commands for room owners and admins, and the room's own switch.
ROOM_COMMANDS = {"muc_hats_room_commands": True}
ENABLE_HATS = {"enable_hats": True}
# tests/plugins/mod_test_hats_driver.lua: calls mod_muc_hats_api as another module would, over HTTP.
DRIVER_DIR = str(Path(__file__).parent / "plugins")


@pytest.fixture
def start_hats_server(start_prosody, modules_dir):
    """A server with mod_muc_hats_adhoc and the test driver on the MUC host, and every user of PASSWORDS."""

    def start(muc_options=ROOM_COMMANDS, **options):
        prosody = start_prosody(
            muc_modules=["muc_hats_adhoc", "test_hats_driver"],
            global_options={"plugin_paths": [str(modules_dir), DRIVER_DIR], **options.pop("global_options", {})},
            muc_options=muc_options,
            **options,
        )
        for user, password in PASSWORDS.items():
            prosody.register(user, password)
        return prosody

    return start


@pytest.fixture
def server(start_hats_server):
    """Room commands allowed by the operator (rooms made by hat_room enable them)."""
    return start_hats_server()


def login(server, user):
    return connect(server, f"{user}@localhost", PASSWORDS[user])


def hats_in(presence) -> list[dict]:
    """The XEP-0317 hats of a presence, as attribute dicts."""
    return [dict(hat.attrib) for hats in presence.xml.findall(f"{{{XMLNS_HATS}}}hats") for hat in hats]


def presence_of(nick, hats=None, room=ROOM):
    """Predicate: an available presence of `nick`, carrying exactly `hats` when given."""
    available = all_of(match("presence", from_=f"{room}/{nick}"), lambda p: p["type"] != "unavailable")
    if hats is None:
        return available
    return all_of(available, lambda p: hats_in(p) == hats)


config_changed = all_of(match("message", type="groupchat", from_=ROOM), has_status(104))


@contextlib.asynccontextmanager
async def hat_room(server, config=ENABLE_HATS):
    """Alice creates ROOM (persistent, with its hats switch on) and makes bob and carol members; all three are in
    it, joins seen."""
    async with login(server, "alice") as alice, login(server, "bob") as bob, login(server, "carol") as carol:
        await create_room(alice, ROOM, "Alice", persistent=True, config=config)
        for member in ("bob", "carol"):
            await alice.plugin["xep_0045"].set_affiliation(ROOM, jid=f"{member}@localhost", affiliation="member")
        await join_room(bob, ROOM, "Bob")
        await join_room(carol, ROOM, "Carol")
        for observer, nicks in ((alice, ("Bob", "Carol")), (bob, ("Alice", "Carol")), (carol, ("Alice", "Bob"))):
            for nick in nicks:
                await observer.wait_for(presence_of(nick))
        yield alice, bob, carol


async def command(client, to, node, fields=None):
    """Executes `node` at `to`; with `fields`, submits them to the returned form (FORM_TYPE included for
    XEP-0317 commands, as a client copying the form's hidden field does). Returns the last <command/>."""
    if fields is not None and node.startswith(FORM_TYPE):
        fields = {"FORM_TYPE": FORM_TYPE, **fields}
    return await run_command(client, to, node, fields)


async def one_step(client, to, node, fields, action="execute"):
    """Sends a filled form with the first request, without asking for the form (XEP-0317 §3.3, §3.5)."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in {"FORM_TYPE": FORM_TYPE, **fields}.items():
        form.add_field(var=var, value=value)
    result = await client.plugin["xep_0050"].send_command(to, node, action=action, payload=form, timeout=30)
    return result["command"]


async def refusal(awaitable):
    """Awaits a command expected to fail; returns (condition, text, XEP-0050 condition or None)."""
    with pytest.raises(IqError) as caught:
        await awaitable
    error = caught.value.iq["error"]
    specific = [child.tag.split("}")[1] for child in error.xml if child.tag.startswith(f"{{{XMLNS_COMMANDS}}}")]
    return error["condition"], error["text"], specific[0] if specific else None


def info_notes(result):
    return [text for kind, text in result["notes"] if kind == "info"]


async def catalogue(client, room=ROOM):
    """The room's hats as listed by the XEP-0317 list command: [(title, uri, hue)]."""
    result = await command(client, room, LIST)
    assert "completed" == result["status"]
    return [(item["hats#title"], item["hats#uri"], item["hats#hue"]) for item in result["form"]["items"]]


async def assigned(client, room=ROOM):
    """The hats assigned in the room as listed by list-assigned: [(jid, uri, title, hue)]."""
    result = await command(client, room, LIST_ASSIGNED)
    assert "completed" == result["status"]
    items = result["form"]["items"]
    return [(str(item["hats#jid"]), item["hats#uri"], item["hats#title"], item["hats#hue"]) for item in items]


async def create_hat(client, uri, title, hue=None, room=ROOM):
    fields = {"hats#uri": uri, "hats#title": title}
    if hue is not None:
        fields["hats#hue"] = hue
    result = await command(client, room, CREATE, fields)
    assert "completed" == result["status"], result
    return result


async def assign_hat(client, user_jid, uri, room=ROOM):
    result = await command(client, room, ASSIGN, {"hats#jid": user_jid, "hats#uri": uri})
    assert "completed" == result["status"], result
    return result


async def start_as_client(client, to, node):
    """Starts a command as Gajim and Conversations do: action='execute' and nothing else. Returns the <command/>."""
    result = await client.plugin["xep_0050"].send_command(to, node, action="execute", timeout=30)
    return result["command"]


async def submit_as_client(client, to, started, values, action="complete", empty_value=True):
    """Sends a stage's form back as Gajim (nbxmpp) and Conversations do: the very form element they received
    (title, instructions, each field with its type, label, options and <required/>), its type switched to
    'submit' and the values filled in, with the action the stage offered and its session id. A field the user
    left empty keeps an empty <value/> (Gajim) or has none (Conversations, `empty_value=False`)."""
    form = copy.deepcopy(started["form"].xml)
    form.set("type", "submit")
    for field in form.findall("{jabber:x:data}field"):
        var = field.get("var")
        if var not in values:
            continue
        for old in field.findall("{jabber:x:data}value"):
            field.remove(old)
        if values[var] or empty_value:
            ET.SubElement(field, "{jabber:x:data}value").text = values[var] or None
    iq = client.make_iq_set(ito=to)
    iq["command"]["node"] = started["node"]
    iq["command"]["sessionid"] = started["sessionid"]
    iq["command"]["action"] = action
    iq["command"].xml.append(form)
    return (await iq.send(timeout=30))["command"]


async def configure_room(owner, room, fields):
    """Submits the room's configuration form with `fields` (the others keep their values)."""
    form = owner.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    for var, value in fields.items():
        form.add_field(var=var, value=value)
    await owner.plugin["xep_0045"].set_room_config(room, form, timeout=30)


async def room_config_fields(owner, room):
    form = await owner.plugin["xep_0045"].get_room_config(room, timeout=30)
    return form.get_fields()


# --- The original service commands ------------------------------------------------------------------------------


async def test_admin_adds_a_hat_with_the_original_command_and_occupants_see_it(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        result = await command(admin, MUC, ADD, {
            "user": "bob@localhost", "room": ROOM, "title": "Teacher", "uri": TEACHER})

        assert "completed" == result["status"]
        assert ["The hat has been added successfully"] == info_notes(result)
        for observer in (alice, carol, bob):
            await observer.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher"}]))


async def test_admin_removes_a_hat_with_the_original_command(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await command(admin, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "title": "Teacher", "uri": TEACHER})
        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher"}]))

        result = await command(admin, MUC, REMOVE, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER})

        assert "completed" == result["status"]
        assert ["The hat has been removed successfully"] == info_notes(result)
        await carol.wait_for(presence_of("Bob", []))
        assert [] == await assigned(alice)


async def test_original_commands_are_listed_to_admins_only(server):
    async with login(server, "admin") as admin, login(server, "alice") as alice:
        admin_items = await admin.plugin["xep_0050"].get_commands(MUC, timeout=30)
        alice_items = await alice.plugin["xep_0050"].get_commands(MUC, timeout=30)

    admin_nodes = {item[1]: item[2] for item in admin_items["disco_items"]["items"]}
    assert "Add hat to a user" == admin_nodes.get(ADD)
    assert "Remove hat from a user" == admin_nodes.get(REMOVE)
    alice_nodes = {item[1] for item in alice_items["disco_items"]["items"]}
    assert not {ADD, REMOVE} & alice_nodes


async def test_non_admin_is_refused_the_original_commands(server):
    async with hat_room(server) as (alice, bob, carol):
        for node, fields in ((ADD, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER}),
                             (REMOVE, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER})):
            condition, text, _ = await refusal(command(alice, MUC, node, fields))
            assert "forbidden" == condition, node
            assert "Only service admins" in text

        # the room owner's XEP-0317 view shows that nothing was assigned
        assert [] == await assigned(alice)


async def test_operator_can_delegate_the_original_commands_to_a_role(start_hats_server, prosody_version):
    if prosody_version == "0.12":
        pytest.skip("Prosody 0.12 has no roles: the commands are for admins only")
    server = start_hats_server(muc_options={"add_permissions": {"prosody:registered": ["muc_hats_adhoc:manage-hats"]}})
    async with hat_room(server) as (alice, bob, carol):
        result = await command(alice, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER})

        assert ["The hat has been added successfully"] == info_notes(result)
        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": TEACHER}]))


async def test_original_add_takes_title_and_hue_from_the_room_catalogue(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await create_hat(alice, TEACHER, "Teacher", "327.255249")

        await command(admin, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER})

        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher", "hue": "327.255249"}]))


@pytest.mark.parametrize("fields, condition, text", [
    ({"user": "bob@localhost", "room": f"nosuchroom@{MUC}", "uri": TEACHER},
     "item-not-found", f"There is no room nosuchroom@{MUC}"),
    ({"user": "bob@localhost", "room": "hats@elsewhere.example", "uri": TEACHER},
     "item-not-found", "There is no room hats@elsewhere.example"),
    ({"user": "dave@localhost", "room": ROOM, "uri": TEACHER},
     "item-not-found", f"dave@localhost has no affiliation with {ROOM}"),
    ({"user": "bob@localhost", "room": "hats @conference.localhost", "uri": TEACHER},
     "bad-request", "Room JID: JID local part may not contain ' '"),
    ({"user": "bob@@localhost", "room": ROOM, "uri": TEACHER},
     "bad-request", "User JID: JID"),
    ({"user": "bob@localhost", "room": ROOM, "uri": "teacher"},
     "bad-request", "Hat URI: URI has no scheme"),
    ({"user": "bob@localhost", "room": ROOM, "uri": TEACHER, "title": "x" * 129},
     "bad-request", "longer than 128 characters"),
    ({"user": "bob@localhost", "room": ROOM},
     "bad-request", "Missing required field 'uri'"),
    ({"room": ROOM, "uri": TEACHER},
     "bad-request", "Missing required field 'user'"),
], ids=["unknown-room", "foreign-room", "not-affiliated", "malformed-room", "malformed-user", "malformed-uri",
        "long-title", "missing-uri", "missing-user"])
async def test_original_add_refuses_bad_input_and_changes_nothing(server, fields, condition, text):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        got_condition, got_text, specific = await refusal(command(admin, MUC, ADD, fields))

        assert condition == got_condition
        assert text in got_text
        if condition == "bad-request":
            assert "bad-payload" == specific
        assert [] == await assigned(alice)


async def test_original_remove_of_a_hat_not_worn_is_refused(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await command(admin, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER, "title": "Teacher"})

        condition, text, _ = await refusal(command(admin, MUC, REMOVE,
                                                   {"user": "bob@localhost", "room": ROOM, "uri": PROCTOR}))

        assert "item-not-found" == condition
        assert f"bob@localhost does not wear the hat {PROCTOR}" in text
        assert [("bob@localhost", TEACHER, "Teacher", None)] == await assigned(alice)


# --- XEP-0317 on room JIDs --------------------------------------------------------------------------------------


async def test_create_form_follows_xep_0317(server):
    async with login(server, "alice") as alice:
        await create_room(alice, ROOM, "Alice", config=ENABLE_HATS)
        result = await command(alice, ROOM, CREATE)

    assert "executing" == result["status"]
    assert result["sessionid"]
    assert {"complete"} == result["actions"]
    fields = result["form"].get_fields()
    assert ["FORM_TYPE", "hats#title", "hats#uri", "hats#hue"] == list(fields)
    form_type = fields["FORM_TYPE"]
    assert ("hidden", FORM_TYPE) == (form_type["type"], form_type.xml.findtext("{jabber:x:data}value"))
    assert [True, True, False] == [fields[var]["required"] for var in ("hats#title", "hats#uri", "hats#hue")]


async def test_owner_creates_and_lists_hats(server):
    async with hat_room(server) as (alice, bob, carol):
        result = await create_hat(alice, TEACHER, "Teacher", "327.255249")
        assert [f"Created the hat 'Teacher' ({TEACHER})"] == info_notes(result)
        await create_hat(alice, ASSISTANT, "Teacher's Assistant")

        assert [("Teacher", TEACHER, "327.255249"), ("Teacher's Assistant", ASSISTANT, None)] == await catalogue(alice)
        assert [] == await assigned(alice)


async def test_owner_assigns_a_hat_and_occupants_see_it_with_hue(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher", "200")

        result = await assign_hat(alice, "bob@localhost", TEACHER)

        assert [f"Assigned the hat 'Teacher' ({TEACHER}) to bob@localhost"] == info_notes(result)
        for observer in (carol, alice, bob):
            await observer.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher", "hue": "200"}]))
        assert [("bob@localhost", TEACHER, "Teacher", "200")] == await assigned(alice)


async def test_assign_form_offers_the_room_hats(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        await create_hat(alice, PROCTOR, "Test Proctor")

        result = await command(alice, ROOM, ASSIGN)

    fields = result["form"].get_fields()
    assert ["FORM_TYPE", "hats#jid", "hats#uri"] == list(fields)
    assert "jid-single" == fields["hats#jid"]["type"]
    assert "list-single" == fields["hats#uri"]["type"]
    options = [(o["label"], o["value"]) for o in fields["hats#uri"]["options"]]
    assert [("Test Proctor", PROCTOR), ("Teacher", TEACHER)] == options


async def test_owner_unassigns_a_hat_and_occupants_see_it_go(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        await assign_hat(alice, "bob@localhost", TEACHER)
        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher"}]))

        result = await command(alice, ROOM, UNASSIGN, {"hats#jid": "bob@localhost", "hats#uri": TEACHER})

        assert "completed" == result["status"]
        assert [f"Removed the hat 'Teacher' ({TEACHER}) from bob@localhost"] == info_notes(result)
        await carol.wait_for(presence_of("Bob", []))
        assert [] == await assigned(alice)
        assert [("Teacher", TEACHER, None)] == await catalogue(alice)  # the definition stays


async def test_destroying_a_hat_removes_it_from_everyone_who_wore_it(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher", "120")
        await create_hat(alice, PROCTOR, "Proctor")
        await assign_hat(alice, "bob@localhost", TEACHER)
        await assign_hat(alice, "carol@localhost", TEACHER)
        await assign_hat(alice, "carol@localhost", PROCTOR)
        await alice.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher", "hue": "120"}]))

        form = await command(alice, ROOM, DESTROY)
        assert [("Proctor", PROCTOR), ("Teacher", TEACHER)] == [
            (o["label"], o["value"]) for o in form["form"].get_fields()["hats#uri"]["options"]]
        result = await command(alice, ROOM, DESTROY, {"hats#uri": TEACHER})

        assert [f"Destroyed the hat 'Teacher' ({TEACHER})"] == info_notes(result)
        await alice.wait_for(presence_of("Bob", []))
        await alice.wait_for(presence_of("Carol", [{"uri": PROCTOR, "title": "Proctor"}]))
        assert [("carol@localhost", PROCTOR, "Proctor", None)] == await assigned(alice)
        assert [("Proctor", PROCTOR, None)] == await catalogue(alice)


async def test_destroy_in_one_step_without_asking_for_the_form(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        await assign_hat(alice, "bob@localhost", TEACHER)

        # XEP-0317 example: the hat picker submitted as "hats#uri" straight with action='execute'
        result = await one_step(alice, ROOM, DESTROY, {"hats#uri": TEACHER})

        assert "completed" == result["status"]
        assert [] == await catalogue(alice)
        assert [] == await assigned(alice)


async def test_unassign_in_one_step_accepts_the_hat_field_name_of_ejabberd(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        await assign_hat(alice, "bob@localhost", TEACHER)

        result = await one_step(alice, ROOM, UNASSIGN, {"hats#jid": "bob@localhost", "hat": TEACHER}, "complete")

        assert "completed" == result["status"]
        assert [] == await assigned(alice)


async def test_updating_a_hat_refreshes_the_wearers_presence(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher", "10")
        await assign_hat(alice, "bob@localhost", TEACHER)
        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher", "hue": "10"}]))

        result = await create_hat(alice, TEACHER, "Head Teacher", "240.5")

        assert [f"Updated the hat 'Head Teacher' ({TEACHER})"] == info_notes(result)
        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Head Teacher", "hue": "240.5"}]))
        assert [("Head Teacher", TEACHER, "240.5")] == await catalogue(alice)


async def test_every_catalogue_change_sends_status_104_to_the_room(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        await carol.wait_for(config_changed)
        await create_hat(alice, TEACHER, "Head Teacher")
        await carol.wait_for(config_changed)
        await command(alice, ROOM, DESTROY, {"hats#uri": TEACHER})
        await bob.wait_for(config_changed)
        await bob.wait_for(config_changed)
        await bob.wait_for(config_changed)


async def test_room_advertises_hats_and_a_hash_of_its_catalogue(server):
    async with hat_room(server) as (alice, bob, carol):
        async def room_info():
            info = await bob.plugin["xep_0030"].get_info(jid=ROOM, timeout=30)
            features = info["disco_info"]["features"]
            forms = [form for form in info["disco_info"].xml.findall("{jabber:x:data}x")]
            values = {}
            for form in forms:
                for field in form.findall("{jabber:x:data}field"):
                    value = field.find("{jabber:x:data}value")
                    values[field.get("var")] = value.text if value is not None else None
            return features, values

        features, values = await room_info()
        assert XMLNS_HATS in features
        assert XMLNS_COMMANDS in features
        assert "hats#hash" not in values  # no hats configured yet

        await create_hat(alice, TEACHER, "Teacher")
        _, values = await room_info()
        first = values["hats#hash"]
        assert "http://jabber.org/protocol/muc#roominfo" == values["FORM_TYPE"]
        assert 40 == len(first)

        await create_hat(alice, TEACHER, "Head Teacher")
        _, values = await room_info()
        assert values["hats#hash"] not in (None, first)


async def test_room_lists_to_each_the_commands_they_may_run(server):
    async with hat_room(server) as (alice, bob, carol):
        owner_items = await alice.plugin["xep_0050"].get_commands(ROOM, timeout=30)
        member_items = await carol.plugin["xep_0050"].get_commands(ROOM, timeout=30)
        info = await alice.plugin["xep_0030"].get_info(jid=ROOM, node=CREATE, timeout=30)

    assert set(ALL_ROOM_COMMANDS) == {item[1] for item in owner_items["disco_items"]["items"]}
    assert {ROOM} == {str(item[0]) for item in owner_items["disco_items"]["items"]}
    assert [LIST] == [item[1] for item in member_items["disco_items"]["items"]]
    assert {("automation", "command-node")} == {identity[:2] for identity in info["disco_info"]["identities"]}


async def test_plain_member_is_refused_every_room_command_but_list(server):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        attempts = {
            CREATE: {"hats#uri": PROCTOR, "hats#title": "Proctor"},
            DESTROY: {"hats#uri": TEACHER},
            ASSIGN: {"hats#jid": "carol@localhost", "hats#uri": TEACHER},
            UNASSIGN: {"hats#jid": "carol@localhost", "hats#uri": TEACHER},
            LIST_ASSIGNED: None,
        }
        for node, fields in attempts.items():
            condition, text, _ = await refusal(command(carol, ROOM, node, fields))
            assert ("forbidden", True) == (condition, "owners and admins" in text), node

        assert [("Teacher", TEACHER, None)] == await catalogue(alice)
        assert [] == await assigned(alice)


async def test_room_admin_may_manage_hats(server):
    async with hat_room(server) as (alice, bob, carol):
        await alice.plugin["xep_0045"].set_affiliation(ROOM, jid="carol@localhost", affiliation="admin")

        await create_hat(carol, TEACHER, "Teacher")
        await assign_hat(carol, "bob@localhost", TEACHER)

        await alice.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher"}]))


async def test_service_admin_manages_hats_in_any_room(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await create_hat(admin, TEACHER, "Teacher")
        await assign_hat(admin, "bob@localhost", TEACHER)

        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher"}]))
        items = await admin.plugin["xep_0050"].get_commands(ROOM, timeout=30)
        assert set(ALL_ROOM_COMMANDS) == {item[1] for item in items["disco_items"]["items"]}


async def test_owner_of_another_room_is_refused(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "dave") as dave:
        await create_room(dave, OTHER_ROOM, "Dave", config=ENABLE_HATS)

        condition, _, _ = await refusal(command(dave, ROOM, CREATE, {"hats#uri": TEACHER, "hats#title": "Teacher"}))

        assert "forbidden" == condition
        assert [] == await catalogue(alice)
        await create_hat(dave, TEACHER, "Teacher", room=OTHER_ROOM)  # his own room works


async def test_both_command_sets_see_the_same_hats(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await create_hat(alice, TEACHER, "Teacher", "30")
        await assign_hat(alice, "bob@localhost", TEACHER)
        await command(admin, MUC, ADD, {"user": "carol@localhost", "room": ROOM, "uri": PROCTOR, "title": "Proctor"})

        assert [("bob@localhost", TEACHER, "Teacher", "30"),
                ("carol@localhost", PROCTOR, "Proctor", None)] == await assigned(alice)

        await command(admin, MUC, REMOVE, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER})
        await command(admin, ROOM, UNASSIGN, {"hats#jid": "carol@localhost", "hats#uri": PROCTOR})
        assert [] == await assigned(alice)


@pytest.mark.parametrize("storage", rig.STORAGES)
async def test_catalogue_assignments_and_who_made_them_survive_a_restart(start_hats_server, storage):
    server = start_hats_server(storage=storage)
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await create_hat(alice, TEACHER, "Teacher", "75")
        await assign_hat(alice, "bob@localhost", TEACHER)
        await command(admin, MUC, ADD, {"user": "carol@localhost", "room": ROOM, "uri": PROCTOR, "title": "Proctor"})

    server.restart()

    async with login(server, "alice") as alice, login(server, "bob") as bob:
        await join_room(alice, ROOM, "Alice")
        assert [("Teacher", TEACHER, "75")] == await catalogue(alice)
        await join_room(bob, ROOM, "Bob")
        await alice.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher", "hue": "75"}]))
        assert [("bob@localhost", TEACHER, "Teacher", "75"),
                ("carol@localhost", PROCTOR, "Proctor", None)] == await assigned(alice)
        # the service's hat is still protected, and the room still lets its owner manage its own
        condition, _, _ = await refusal(command(alice, ROOM, UNASSIGN, {"hats#jid": "carol@localhost",
                                                                        "hats#uri": PROCTOR}))
        assert "forbidden" == condition
        await command(alice, ROOM, UNASSIGN, {"hats#jid": "bob@localhost", "hats#uri": TEACHER})
        assert [("carol@localhost", PROCTOR, "Proctor", None)] == await assigned(alice)


async def test_cancelling_a_command_ends_it_and_changes_nothing(server):
    async with hat_room(server) as (alice, bob, carol):
        started = await start_as_client(alice, ROOM, CREATE)
        # Gajim and Conversations cancel with action='cancel', the session id and no form
        result = await alice.plugin["xep_0050"].send_command(ROOM, CREATE, action="cancel",
                                                             sessionid=started["sessionid"], timeout=30)

        assert "canceled" == result["command"]["status"]
        condition, _, specific = await refusal(submit_as_client(alice, ROOM, started, {
            "hats#title": "Teacher", "hats#uri": TEACHER}))
        assert ("bad-request", "bad-sessionid") == (condition, specific)
        assert [] == await catalogue(alice)


async def test_a_session_cannot_be_continued_by_someone_else(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        started = await command(alice, ROOM, CREATE)
        form = admin.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(var="hats#uri", value=TEACHER)
        form.add_field(var="hats#title", value="Teacher")

        condition, _, specific = await refusal(admin.plugin["xep_0050"].send_command(
            ROOM, CREATE, action="complete", sessionid=started["sessionid"], payload=form, timeout=30))

        assert ("bad-request", "bad-sessionid") == (condition, specific)
        assert [] == await catalogue(alice)


async def test_commands_to_a_missing_room_are_answered_item_not_found(server):
    async with login(server, "admin") as admin:
        condition, text, _ = await refusal(command(admin, f"nosuchroom@{MUC}", LIST))

    assert ("item-not-found", "There is no such room on this service") == (condition, text)


CREATE_CASES = [
    ({"hats#uri": TEACHER}, "bad-request", "Missing required field 'hats#title' (Hat Title)"),
    ({"hats#title": "Teacher"}, "bad-request", "Missing required field 'hats#uri' (Hat URI)"),
    ({"hats#uri": "teacher", "hats#title": "Teacher"}, "bad-request", "Hat URI: URI has no scheme"),
    ({"hats#uri": "http://exa mple.com/", "hats#title": "Teacher"}, "bad-request", "must be percent-encoded"),
    ({"hats#uri": TEACHER, "hats#title": "Teacher", "hats#hue": "red"}, "bad-request",
     "Hat Hue: Hue must be a number of degrees"),
    ({"hats#uri": TEACHER, "hats#title": "Teacher", "hats#hue": "360"}, "bad-request",
     "Hat Hue: Hue must be at least 0 and less than 360"),
    ({"hats#uri": TEACHER, "hats#title": "   "}, "bad-request", "Hat title is empty"),
    ({"hats#uri": TEACHER, "hats#title": "x" * 129}, "bad-request", "Hat title is longer than 128 characters"),
]


@pytest.mark.parametrize("fields, condition, text", CREATE_CASES,
                         ids=["no-title", "no-uri", "relative-uri", "space-in-uri", "hue-word", "hue-360",
                              "blank-title", "long-title"])
async def test_create_refuses_bad_input_and_changes_nothing(server, fields, condition, text):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, PROCTOR, "Proctor", "5")

        got_condition, got_text, specific = await refusal(command(alice, ROOM, CREATE, fields))

        assert (condition, "bad-payload") == (got_condition, specific)
        assert text in got_text
        assert [("Proctor", PROCTOR, "5")] == await catalogue(alice)


ASSIGN_CASES = [
    (ASSIGN, {"hats#jid": "bob@localhost", "hats#uri": TEACHER},
     "item-not-found", f"The room {ROOM} has no hat {TEACHER}; create it first"),
    (ASSIGN, {"hats#jid": "dave@localhost", "hats#uri": PROCTOR},
     "item-not-found", f"dave@localhost has no affiliation with {ROOM}; make them a member first"),
    (ASSIGN, {"hats#jid": "bob@@localhost", "hats#uri": PROCTOR}, "bad-request", "User Address: JID"),
    (ASSIGN, {"hats#jid": "bob@localhost", "hats#uri": "not a uri"}, "bad-request", "The hat: URI"),
    (ASSIGN, {"hats#uri": PROCTOR}, "bad-request", "Missing required field 'hats#jid' (User Address)"),
    (UNASSIGN, {"hats#jid": "carol@localhost", "hats#uri": PROCTOR},
     "item-not-found", f"carol@localhost does not wear the hat {PROCTOR} in this room"),
    (UNASSIGN, {"hats#jid": "dave@localhost", "hats#uri": PROCTOR},
     "item-not-found", "dave@localhost has no affiliation"),
    (UNASSIGN, {"hats#jid": "bob@localhost"}, "bad-request", "Missing required field 'hats#uri' (The hat)"),
    (DESTROY, {"hats#uri": TEACHER}, "item-not-found", f"The room {ROOM} has no hat {TEACHER}; create it first"),
    (DESTROY, {"hats#uri": "urn:"}, "bad-request", "The hat: URI has nothing after its scheme"),
]


@pytest.mark.parametrize("node, fields, condition, text", ASSIGN_CASES,
                         ids=["assign-unknown-hat", "assign-not-affiliated", "assign-malformed-jid",
                              "assign-malformed-uri", "assign-no-jid", "unassign-not-worn",
                              "unassign-not-affiliated", "unassign-no-uri", "destroy-unknown-hat",
                              "destroy-malformed-uri"])
async def test_assignment_commands_refuse_bad_input_and_change_nothing(server, node, fields, condition, text):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, PROCTOR, "Proctor")
        await assign_hat(alice, "bob@localhost", PROCTOR)

        got_condition, got_text, specific = await refusal(command(alice, ROOM, node, fields))

        assert condition == got_condition
        assert text in got_text
        if condition == "bad-request":
            assert "bad-payload" == specific
        assert [("Proctor", PROCTOR, None)] == await catalogue(alice)
        assert [("bob@localhost", PROCTOR, "Proctor", None)] == await assigned(alice)


async def test_pickers_on_an_empty_room_say_what_to_do(server):
    async with hat_room(server) as (alice, bob, carol):
        result = await command(alice, ROOM, ASSIGN)

    assert "completed" == result["status"]
    assert [f"This room has no hats yet; create one with {FORM_TYPE}:create"] == info_notes(result)


# --- Who may do what (room commands are opt-in; the service's hats are protected) ---------------------------------


async def test_room_commands_are_off_unless_the_operator_allows_them(start_hats_server):
    server = start_hats_server(muc_options={})
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        # the room's configuration offers no switch, and the one hat_room submitted changed nothing
        assert "enable_hats" not in await room_config_fields(alice, ROOM)
        condition, text, _ = await refusal(command(alice, ROOM, CREATE, {"hats#uri": TEACHER, "hats#title": "T"}))
        assert "forbidden" == condition
        assert "only where the service and the room allow it" in text

        # service admins still manage hats in every room, owners still review them, occupants read the catalogue
        await create_hat(admin, TEACHER, "Teacher")
        await assign_hat(admin, "bob@localhost", TEACHER)
        assert [("bob@localhost", TEACHER, "Teacher", None)] == await assigned(alice)
        assert [("Teacher", TEACHER, None)] == await catalogue(carol)


async def test_room_commands_need_the_rooms_own_switch(server):
    async with hat_room(server, config={}) as (alice, bob, carol):
        fields = await room_config_fields(alice, ROOM)
        assert ("boolean", False) == (fields["enable_hats"]["type"], fields["enable_hats"]["value"])
        condition, _, _ = await refusal(command(alice, ROOM, CREATE, {"hats#uri": TEACHER, "hats#title": "T"}))
        assert "forbidden" == condition

        await configure_room(alice, ROOM, {"enable_hats": True})

        await carol.wait_for(config_changed)
        await create_hat(alice, TEACHER, "Teacher")
        assert [("Teacher", TEACHER, None)] == await catalogue(carol)


@pytest.mark.parametrize("assigner", ["original-add", "service-admin-assign", "module"])
async def test_room_managers_cannot_change_hats_the_service_assigned(server, assigner):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await create_hat(alice, TEACHER, "Teacher")
        if assigner == "original-add":
            await command(admin, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "uri": TEACHER})
        elif assigner == "service-admin-assign":
            await assign_hat(admin, "bob@localhost", TEACHER)
        else:
            async with server.http_client(host=server.muc_host) as http:
                response = await http.post("/test_hats_driver/add_user_hat",
                                           json=["bob@localhost", ROOM, TEACHER, {"active": True}])
            assert response.json()["ok"], response.text
        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": "Teacher"}]))

        attempts = [
            (UNASSIGN, {"hats#jid": "bob@localhost", "hats#uri": TEACHER}),
            (ASSIGN, {"hats#jid": "bob@localhost", "hats#uri": TEACHER}),
            (CREATE, {"hats#uri": TEACHER, "hats#title": "Fake"}),
            (DESTROY, {"hats#uri": TEACHER}),
        ]
        for node, fields in attempts:
            condition, text, _ = await refusal(command(alice, ROOM, node, fields))
            assert "forbidden" == condition, node
            assert f"The hat {TEACHER} of bob@localhost was assigned by the service" in text, node

        assert [("Teacher", TEACHER, None)] == await catalogue(alice)
        assert [("bob@localhost", TEACHER, "Teacher", None)] == await assigned(alice)
        await command(admin, ROOM, UNASSIGN, {"hats#jid": "bob@localhost", "hats#uri": TEACHER})
        assert [] == await assigned(alice)


async def test_room_managers_use_but_cannot_change_catalogue_hats_the_service_defined(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await create_hat(admin, PROCTOR, "Proctor")

        for node, fields in ((CREATE, {"hats#uri": PROCTOR, "hats#title": "Fake"}), (DESTROY, {"hats#uri": PROCTOR})):
            condition, text, _ = await refusal(command(alice, ROOM, node, fields))
            assert ("forbidden", True) == (condition, f"The hat {PROCTOR} was defined by the service" in text), node

        await assign_hat(alice, "bob@localhost", PROCTOR)
        await carol.wait_for(presence_of("Bob", [{"uri": PROCTOR, "title": "Proctor"}]))
        await command(alice, ROOM, UNASSIGN, {"hats#jid": "bob@localhost", "hats#uri": PROCTOR})
        assert [("Proctor", PROCTOR, None)] == await catalogue(alice)


async def test_hats_of_service_admins_are_listed_updated_and_removed(start_hats_server):
    # 0.12 makes service admins owners without an affiliation entry; 13 does when asked to
    server = start_hats_server(muc_options={**ROOM_COMMANDS, "component_admins_as_room_owners": True})
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await join_room(admin, ROOM, "Admin")
        await create_hat(admin, TEACHER, "Teacher")
        await assign_hat(admin, "admin@localhost", TEACHER)
        await carol.wait_for(presence_of("Admin", [{"uri": TEACHER, "title": "Teacher"}]))
        assert [("admin@localhost", TEACHER, "Teacher", None)] == await assigned(alice)

        await create_hat(admin, TEACHER, "Head Teacher", "300")
        await carol.wait_for(presence_of("Admin", [{"uri": TEACHER, "title": "Head Teacher", "hue": "300"}]))

        await command(admin, ROOM, DESTROY, {"hats#uri": TEACHER})
        await carol.wait_for(presence_of("Admin", []))
        assert [] == await assigned(alice)


async def test_original_add_without_a_title_gives_the_hat_its_uri_as_title(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        await command(admin, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "uri": PROCTOR})

        await carol.wait_for(presence_of("Bob", [{"uri": PROCTOR, "title": PROCTOR}]))
        assert [("bob@localhost", PROCTOR, PROCTOR, None)] == await assigned(alice)


async def test_occupants_and_members_list_the_catalogue_but_not_who_wears_what(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "dave") as dave:
        await create_hat(alice, TEACHER, "Teacher")

        assert [("Teacher", TEACHER, None)] == await catalogue(carol)
        condition, text, _ = await refusal(command(dave, ROOM, LIST))
        assert ("forbidden", "Only the room's occupants and members may list its hats") == (condition, text)
        condition, _, _ = await refusal(command(carol, ROOM, LIST_ASSIGNED))
        assert "forbidden" == condition

        await join_room(dave, ROOM, "Dave")  # an open room: anyone who joins may read it
        assert [("Teacher", TEACHER, None)] == await catalogue(dave)


async def test_each_actor_has_its_own_session_limit(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        kept = await start_as_client(alice, ROOM, CREATE)
        # admin abandons more sessions than the whole service used to keep (256)
        started = []
        for _ in range(6):
            started += await asyncio.gather(*(start_as_client(admin, ROOM, CREATE) for _ in range(50)))

        result = await submit_as_client(alice, ROOM, kept, {"hats#title": "Teacher", "hats#uri": TEACHER})
        assert "completed" == result["status"]
        # admin's own oldest sessions made room for the newer ones
        condition, _, specific = await refusal(submit_as_client(admin, ROOM, started[0], {
            "hats#title": "Proctor", "hats#uri": PROCTOR}))
        assert ("bad-request", "bad-sessionid") == (condition, specific)
        assert "completed" == (await submit_as_client(admin, ROOM, started[-1], {
            "hats#title": "Proctor", "hats#uri": PROCTOR}))["status"]


async def test_room_commands_of_other_modules_are_left_to_them(server):
    async with hat_room(server) as (alice, bob, carol):
        result = await alice.plugin["xep_0050"].send_command(ROOM, "urn:example:hats-driver:ping", timeout=30)
        assert ("completed", [("info", "pong")]) == (result["command"]["status"], result["command"]["notes"])

        condition, _, _ = await refusal(alice.plugin["xep_0050"].send_command(ROOM, "urn:example:nobody",
                                                                              timeout=30))
        assert "service-unavailable" == condition


# --- Real clients: the forms as Gajim and Conversations send them -------------------------------------------------


@pytest.mark.parametrize("empty_value", [True, False], ids=["gajim", "conversations"])
async def test_clients_create_a_hat_in_two_stages_leaving_the_hue_empty(server, empty_value):
    async with hat_room(server) as (alice, bob, carol):
        started = await start_as_client(alice, ROOM, CREATE)
        assert ("executing", {"complete"}) == (started["status"], started["actions"])

        result = await submit_as_client(alice, ROOM, started, {
            "hats#title": "Teacher", "hats#uri": TEACHER, "hats#hue": ""}, empty_value=empty_value)

        assert "completed" == result["status"]
        assert [("Teacher", TEACHER, None)] == await catalogue(alice)


@pytest.mark.parametrize("empty_value", [True, False], ids=["gajim", "conversations"])
async def test_clients_assign_a_hat_picked_from_the_list(server, empty_value):
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        await create_hat(alice, PROCTOR, "Proctor", "20")
        started = await start_as_client(alice, ROOM, ASSIGN)

        # the echoed list-single still holds every <option><value/></option>; only the picked value counts
        result = await submit_as_client(alice, ROOM, started, {"hats#jid": "bob@localhost", "hats#uri": PROCTOR},
                                        empty_value=empty_value)

        assert "completed" == result["status"]
        await carol.wait_for(presence_of("Bob", [{"uri": PROCTOR, "title": "Proctor", "hue": "20"}]))


async def test_clients_run_the_original_add_in_two_stages(server):
    async with hat_room(server) as (alice, bob, carol), login(server, "admin") as admin:
        started = await start_as_client(admin, MUC, ADD)
        result = await submit_as_client(admin, MUC, started, {
            "user": "bob@localhost", "room": ROOM, "title": "", "uri": TEACHER})

        assert ["The hat has been added successfully"] == info_notes(result)
        await carol.wait_for(presence_of("Bob", [{"uri": TEACHER, "title": TEACHER}]))


# --- Operators: audit, metrics, reload --------------------------------------------------------------------------


async def test_every_change_and_every_refusal_logs_one_audit_line(server):
    async with hat_room(server, config={}) as (alice, bob, carol), login(server, "admin") as admin:
        log_start = server.log_path.stat().st_size
        await command(admin, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "uri": PROCTOR})
        await command(admin, MUC, REMOVE, {"user": "bob@localhost", "room": ROOM, "uri": PROCTOR})
        await refusal(command(carol, MUC, ADD, {"user": "bob@localhost", "room": ROOM, "uri": PROCTOR}))
        await refusal(command(alice, ROOM, CREATE, {"hats#uri": TEACHER, "hats#title": "Teacher"}))
        await configure_room(alice, ROOM, {"enable_hats": True})
        await create_hat(alice, TEACHER, "Teacher")
        await assign_hat(alice, "bob@localhost", TEACHER)
        await assign_hat(alice, "bob@localhost", TEACHER)  # no change: no line
        await command(admin, MUC, ADD, {"user": "carol@localhost", "room": ROOM, "uri": TEACHER})
        await refusal(command(alice, ROOM, UNASSIGN, {"hats#jid": "carol@localhost", "hats#uri": TEACHER}))
        await refusal(command(carol, ROOM, CREATE, {"hats#uri": PROCTOR, "hats#title": "Proctor"}))
        await command(admin, ROOM, DESTROY, {"hats#uri": TEACHER})

    admin_jid, alice_jid, carol_jid = (str(c.boundjid) for c in (admin, alice, carol))
    api, adhoc = f"{MUC}:muc_hats_api", f"{MUC}:muc_hats_adhoc"
    lines = [(source, action, fields.get("actor"), fields.get("reason") or fields.get("user") or fields.get("room"))
             for source, action, fields in server.audit(log_start)]
    assert [
        (api, "hat-assigned", admin_jid, "bob@localhost"),
        (api, "hat-unassigned", admin_jid, "bob@localhost"),
        (adhoc, "hat-command-refused", carol_jid, "not-a-service-admin"),
        (adhoc, "hat-command-refused", alice_jid, "room-commands-disabled"),
        (adhoc, "hat-commands-enabled", alice_jid, ROOM),
        (api, "hat-defined", alice_jid, ROOM),
        (api, "hat-assigned", alice_jid, "bob@localhost"),
        (api, "hat-assigned", admin_jid, "carol@localhost"),
        (api, "hat-change-refused", alice_jid, "protected"),
        (adhoc, "hat-command-refused", carol_jid, "not-a-room-manager"),
        (api, "hat-destroyed", admin_jid, ROOM),
    ] == lines


async def test_metrics_count_commands_by_outcome(start_hats_server):
    server = start_hats_server(global_modules=rig.METRICS_MODULES, global_options=rig.METRICS_OPTIONS)
    async with hat_room(server) as (alice, bob, carol):
        await create_hat(alice, TEACHER, "Teacher")
        await catalogue(carol)
        await refusal(command(carol, ROOM, CREATE, {"hats#uri": PROCTOR, "hats#title": "Proctor"}))
        await refusal(command(alice, ROOM, ASSIGN, {"hats#jid": "dave@localhost", "hats#uri": TEACHER}))
        started = await start_as_client(alice, ROOM, CREATE)
        await alice.plugin["xep_0050"].send_command(ROOM, CREATE, action="cancel", sessionid=started["sessionid"],
                                                    timeout=30)
        await assign_hat(alice, "bob@localhost", TEACHER)

    metrics = await server.metrics()
    name = "prosody_mod_muc_hats_adhoc__commands_total"
    counts = {(dict(labels)["command"], dict(labels)["outcome"]): value
              for (sample, labels), value in metrics.items() if sample == name}
    assert {("create", "completed"): 1, ("list", "completed"): 1, ("create", "refused"): 1,
            ("assign", "failed"): 1, ("create", "canceled"): 1, ("assign", "completed"): 1} == counts
    changes = "prosody_mod_muc_hats_api__hat_changes_total"
    assert 1 == metrics.value(changes, change="assigned", by="room")
    assert 1 == metrics.value(changes, change="created", by="room")


async def test_the_operators_switch_is_read_again_on_config_reload(start_hats_server):
    server = start_hats_server(muc_options={})
    async with hat_room(server) as (alice, bob, carol):
        condition, _, _ = await refusal(command(alice, ROOM, CREATE, {"hats#uri": TEACHER, "hats#title": "T"}))
        assert "forbidden" == condition

        server.reload(muc_options=ROOM_COMMANDS)

        await configure_room(alice, ROOM, ENABLE_HATS)
        await create_hat(alice, TEACHER, "Teacher")
        assert [("Teacher", TEACHER, None)] == await catalogue(carol)
