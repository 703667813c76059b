"""mod_invites_adhoc on a real Prosody 0.12 and 13, driven the way XMPP clients drive it: the inviter runs ad-hoc
commands (XEP-0050, XEP-0401 v0.6), the invitee presents the token (XEP-0445 preauth) and registers in band
(XEP-0077), or sends a pre-authenticated subscription request (XEP-0379). Every test asserts what a user sees:
command lists, forms, URIs, IQ errors, logins, presence and rosters."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from slixmpp import Iq, Presence
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

import rig
from rig import TIMEOUT, connect, match, run_command

HOST = rig.HOST
OTHER_HOST = "other.localhost"
XMLNS_COMMANDS = "http://jabber.org/protocol/commands"

CONTACT = "urn:xmpp:invite#invite"
ACCOUNT = "urn:xmpp:invite#create-account"
RESET = "xmpp:prosody.im/mod_invites_adhoc#password-reset"
LIST = "urn:prosody-native:invites#list"
REVOKE = "urn:prosody-native:invites#revoke"
LIST_ALL = "urn:prosody-native:invites#list-all"
MANAGE = "urn:prosody-native:invites#manage"
OURS = {CONTACT, ACCOUNT, RESET, LIST, REVOKE, LIST_ALL, MANAGE}
USER_COMMANDS = {CONTACT, LIST, REVOKE}

# admin: in the rig's `admins`; alice and bob: ordinary users.
PASSWORDS = {"admin": "adminpw", "alice": "alicepw", "bob": "bobpw"}
MODULES = ["invites_adhoc", "invites_register"]
# Test-only modules (tests/plugins): mod_test_registration_barrier, mod_test_reduced_role.
PLUGINS_DIR = str(Path(__file__).parent / "plugins")


class PreAuth(ElementBase):
    """XEP-0445 / XEP-0379 token: <preauth xmlns='urn:xmpp:pars:0' token='...'/> in an IQ or a subscription."""

    name = "preauth"
    namespace = "urn:xmpp:pars:0"
    plugin_attrib = "preauth"
    interfaces = {"token"}


register_stanza_plugin(Iq, PreAuth)
register_stanza_plugin(Presence, PreAuth)


@pytest.fixture
def start(start_prosody, modules_dir):
    """start(**host_options): a server with the invite modules on localhost and the users of PASSWORDS.
    `test_plugins` adds modules of tests/plugins on localhost, `global_modules` modules in the global section."""

    def start_with(*, modules=MODULES, storage="internal", extra_hosts=None, global_options=None, global_modules=(),
                   test_plugins=(), **host_options):
        global_options = dict(global_options or {})
        if test_plugins:
            global_options["plugin_paths"] = [str(modules_dir), PLUGINS_DIR]
        server = start_prosody(
            host_modules=[*modules, *test_plugins],
            global_modules=global_modules,
            host_options=host_options,
            extra_hosts=extra_hosts,
            global_options=global_options,
            storage=storage,
        )
        for user, password in PASSWORDS.items():
            server.register(user, password)
        return server

    return start_with


def login(server, user, password=None):
    return connect(server, f"{user}@{HOST}", password or PASSWORDS[user])


async def listed_commands(client, host=HOST) -> set[str]:
    """The command nodes the host lists to this client (XEP-0050 discovery)."""
    iq = await client.plugin["xep_0030"].get_items(jid=host, node=XMLNS_COMMANDS, timeout=TIMEOUT)
    return {node for _jid, node, _name in iq["disco_items"]["items"]}


def invitation(command) -> dict:
    """The XEP-0401 result of a create command, as field values; checks the form's type and FORM_TYPE."""
    assert command["status"] == "completed", command
    form = command["form"]
    assert form["type"] == "result", form
    values = form.get_values()
    # slixmpp reads a hidden field of a result form as a list of values
    assert values.pop("FORM_TYPE") in ("urn:xmpp:invite#invitation", ["urn:xmpp:invite#invitation"]), form
    return values


def token_of(uri: str) -> str:
    """The preauth token of an xmpp: invite URI (xmpp:jid?action;preauth=TOKEN;...)."""
    params = dict(p.split("=", 1) for p in urlsplit(uri).query.split(";")[1:])
    return params["preauth"]


def parse_expire(value: str) -> float:
    """XEP-0082 DateTime (as Prosody writes it: 2026-01-02T03:04:05Z) to a Unix time."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


async def create_contact_invite(client) -> dict:
    return invitation(await run_command(client, HOST, CONTACT))


async def create_account_invite(client, **fields) -> dict:
    values = {"username": "", "roster-subscription": False, "validity": "", "note": "", **fields}
    return invitation(await run_command(client, HOST, ACCOUNT, values))


async def list_invites(client) -> list[dict]:
    command = await run_command(client, HOST, LIST)
    assert command["status"] == "completed", command
    return [dict(item) for item in command["form"].get_items()]


async def revoke(client, token):
    command = await run_command(client, HOST, REVOKE, {"token": token})
    assert command["status"] == "completed", command
    return command


class NewStream:
    """An unauthenticated client stream, held at in-band registration (XEP-0077): what an invitee's client opens."""

    def __init__(self, client: rig.Client):
        self.client = client

    async def preauth(self, token: str):
        """XEP-0445: presents the invite token; raises IqError when the server refuses it."""
        iq = self.client.make_iq_set(ito=HOST)
        iq["preauth"]["token"] = token
        return await iq.send(timeout=TIMEOUT)

    async def register(self, username: str, password: str):
        """XEP-0077: registers an account; raises IqError when the server refuses it."""
        iq = self.client.make_iq_set()
        iq["register"]["username"] = username
        iq["register"]["password"] = password
        return await iq.send(timeout=TIMEOUT)


@contextlib.asynccontextmanager
async def new_stream(server):
    client = rig.Client(f"newcomer@{HOST}", "no-password")
    # Before a session starts slixmpp only sends bind, session and registration IQs; XEP-0445's preauth IQ comes
    # before registration, so let everything through (slixmpp's own test harness does the same).
    client._always_send_everything = True
    loop = asyncio.get_running_loop()
    at_registration, done = loop.create_future(), loop.create_future()

    async def on_register(_form):
        at_registration.done() or at_registration.set_result(None)
        await done  # keep the stream unauthenticated while the test registers

    client.add_event_handler("register", on_register)
    client.add_event_handler("disconnected", lambda _: at_registration.done() or at_registration.set_exception(
        ConnectionError("disconnected before in-band registration")))
    client.connect("127.0.0.1", server.c2s_port)
    try:
        async with asyncio.timeout(TIMEOUT):
            await at_registration
        yield NewStream(client)
    finally:
        done.set_result(None)
        client.cancel_connection_attempt()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(TIMEOUT):
                await client.disconnect(wait=TIMEOUT)


async def register_with(server, token, username, password):
    """The invitee's whole journey: preauth with the token, then register username; raises IqError on refusal."""
    async with new_stream(server) as stream:
        await stream.preauth(token)
        await stream.register(username, password)


async def refusal(coroutine) -> tuple[str, str]:
    """Awaits a command or registration step that must be refused; returns the IQ error's (condition, text)."""
    with pytest.raises(IqError) as failure:
        await coroutine
    error = failure.value.iq["error"]
    return error["condition"], error["text"]


async def roster_subscription(client, contact) -> str:
    await client.get_roster(timeout=TIMEOUT)
    return client.client_roster[contact]["subscription"]


# --- Which module, which commands, for whom -------------------------------------------------------------------------


async def test_ours_is_loaded_instead_of_core_module(start):
    server = start()
    async with login(server, "admin") as admin:
        commands = await listed_commands(admin)
    # Core's mod_invites_adhoc has no list and revoke commands (nor, on 0.12, a password reset one)...
    assert OURS <= commands
    # ...and only this file logs this line when it loads.
    assert "prosody-native mod_invites_adhoc serving XEP-0401 commands" in server.log_text()
    assert not server.module_errors("invites_adhoc")


async def test_users_see_contact_list_and_revoke_admins_see_all(start):
    server = start()
    async with login(server, "admin") as admin, login(server, "alice") as alice:
        assert OURS <= await listed_commands(admin)
        assert USER_COMMANDS == await listed_commands(alice) & OURS


async def test_without_contact_invites_users_get_no_invite_commands(start):
    server = start(allow_contact_invites=False)
    async with login(server, "admin") as admin, login(server, "alice") as alice:
        assert OURS <= await listed_commands(admin)
        assert set() == await listed_commands(alice) & OURS
        condition, _ = await refusal(run_command(alice, HOST, CONTACT))
        assert condition == "forbidden"


async def test_users_cannot_run_admin_commands(start):
    server = start()
    async with login(server, "alice") as alice:
        for node in (ACCOUNT, RESET):
            condition, _ = await refusal(run_command(alice, HOST, node))
            assert condition == "forbidden", node


async def test_users_of_other_hosts_get_a_clear_error(start):
    server = start(extra_hosts={OTHER_HOST: {}})
    server.prosodyctl("register", "carol", OTHER_HOST, "carolpw")
    async with connect(server, f"carol@{OTHER_HOST}", "carolpw") as carol:
        assert set() == await listed_commands(carol) & OURS
        condition, text = await refusal(run_command(carol, HOST, CONTACT))
    assert condition == "forbidden"
    assert text == f"Only users of {HOST} can create or manage its invitations"


# --- The ibr=y rule -------------------------------------------------------------------------------------------------


async def test_contact_invite_is_an_xep0401_result(start):
    server = start()
    async with login(server, "alice") as alice:
        before = int(time.time())
        result = await create_contact_invite(alice)
        after = int(time.time()) + 1
    assert result["uri"].startswith(f"xmpp:alice@{HOST}?roster;preauth=")
    assert ";ibr=y" not in result["uri"]  # allow_user_invites defaults to false
    week = 7 * 86400  # mod_invites' default invite_expiry
    assert before + week <= parse_expire(result["expire"]) <= after + week
    assert "landing-url" not in result  # no landing page configured


async def test_admins_contact_invites_allow_registration(start):
    server = start()
    async with login(server, "admin") as admin:
        result = await create_contact_invite(admin)
    assert result["uri"].startswith(f"xmpp:admin@{HOST}?roster;preauth=")
    assert result["uri"].endswith(";ibr=y")


async def test_allow_user_invites_lets_users_invite_new_users(start):
    server = start(allow_user_invites=True)
    async with login(server, "alice") as alice:
        result = await create_contact_invite(alice)
    assert result["uri"].endswith(";ibr=y")


async def test_no_ibr_without_invite_registration(start):
    server = start(modules=["invites_adhoc"])  # no mod_invites_register: invitees cannot register in band
    async with login(server, "admin") as admin:
        result = await create_contact_invite(admin)
    assert ";ibr=y" not in result["uri"]


def grant_role(server, user, role):
    """0.12: gives a user a role the way 0.12 stores it (mod_authz_internal's "roles" store, a set per user)."""
    path = server.data_dir / HOST / "roles" / f"{user}.dat"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'return {{\n\t["{role}"] = true;\n}};\n')


async def test_role_permission_lets_users_invite_new_users(start, prosody_version):
    if prosody_version == "0.12":
        server = start(allow_user_invites_by_roles=["inviter"])
        grant_role(server, "alice", "inviter")
    else:
        server = start(global_options={"add_permissions": {"prosody:registered": ["invites_adhoc:invite-users"]}})
    async with login(server, "alice") as alice, login(server, "bob") as bob:
        assert (await create_contact_invite(alice))["uri"].endswith(";ibr=y")
        if prosody_version == "0.12":
            assert ";ibr=y" not in (await create_contact_invite(bob))["uri"]  # bob has no such role


async def test_role_permission_can_withhold_registration(start, prosody_version):
    if prosody_version == "0.12":
        server = start(allow_user_invites=True, deny_user_invites_by_roles=["restricted"])
        grant_role(server, "alice", "restricted")
    else:
        server = start(
            allow_user_invites=True,
            global_options={"remove_permissions": {"prosody:registered": ["invites_adhoc:invite-users"]}},
        )
    async with login(server, "alice") as alice, login(server, "admin") as admin:
        assert ";ibr=y" not in (await create_contact_invite(alice))["uri"]
        assert (await create_contact_invite(admin))["uri"].endswith(";ibr=y")


async def test_landing_url_comes_from_the_servers_landing_page(start, prosody_version):
    if prosody_version == "0.12":
        pytest.skip("0.12's mod_invites has no invites_page option (the community mod_invites_page adds one)")
    server = start(invites_page="https://invite.example/{invite.token}")
    async with login(server, "admin") as admin:
        contact = await create_contact_invite(admin)  # with ibr=y: 13 offers no page for contact-only invites by default
        account = await create_account_invite(admin)
    for result in (contact, account):
        assert result["landing-url"] == f"https://invite.example/{token_of(result['uri'])}"


# --- Account invites ------------------------------------------------------------------------------------------------


async def test_account_invite_asks_for_username_and_roster_subscription(start):
    server = start()
    async with login(server, "admin") as admin:
        command = await run_command(admin, HOST, ACCOUNT)
    assert command["status"] == "executing"
    form = command["form"]
    assert form["type"] == "form"
    fields = form.get_fields()
    assert fields["username"]["type"] == "text-single"
    assert fields["roster-subscription"]["type"] == "boolean"
    assert {"validity", "note"} <= set(fields)


async def test_account_invite_registers_an_account_once(start):
    server = start()
    async with login(server, "admin") as admin:
        result = await create_account_invite(admin)
    assert result["uri"].startswith(f"xmpp:{HOST}?register;preauth=")
    token = token_of(result["uri"])
    await register_with(server, token, "juliet", "julietpw")
    async with login(server, "juliet", "julietpw"):
        pass
    condition, _ = await refusal(register_with(server, token, "romeo", "romeopw"))
    assert condition == "forbidden"
    with pytest.raises(rig.AuthError):
        async with login(server, "romeo", "romeopw"):
            pass


async def test_one_preauth_registers_only_one_account(start):
    server = start()
    async with login(server, "admin") as admin:
        token = token_of((await create_account_invite(admin))["uri"])
    async with new_stream(server) as stream:
        await stream.preauth(token)
        await stream.register("juliet", "julietpw")
        condition, text = await refusal(stream.register("romeo", "romeopw"))
    assert condition == "forbidden"
    assert "already used" in text


async def test_reserved_username_is_enforced(start):
    server = start()
    async with login(server, "admin") as admin:
        result = await create_account_invite(admin, username="Juliet")
    assert result["uri"].startswith(f"xmpp:juliet@{HOST}?register;preauth=")
    token = token_of(result["uri"])
    async with new_stream(server) as stream:
        await stream.preauth(token)
        condition, text = await refusal(stream.register("romeo", "romeopw"))
        assert (condition, text) == ("not-acceptable", "This invitation is for the username 'juliet'")
        await stream.register("juliet", "julietpw")
    async with login(server, "juliet", "julietpw"):
        pass


async def test_reserved_username_cannot_be_taken_with_another_invite(start):
    server = start()
    async with login(server, "admin") as admin:
        await create_account_invite(admin, username="juliet")
        other = token_of((await create_account_invite(admin))["uri"])
        condition, text = await refusal(run_command(admin, HOST, ACCOUNT, {"username": "juliet"}))
        assert (condition, text) == ("conflict", "The username 'juliet' is reserved by another invitation")
    condition, text = await refusal(register_with(server, other, "juliet", "stolenpw"))
    assert (condition, text) == ("conflict", "The username 'juliet' is reserved for an invitation")
    await register_with(server, other, "romeo", "romeopw")  # the other invitation still works for another name


async def test_existing_username_cannot_be_reserved(start):
    server = start()
    async with login(server, "admin") as admin:
        condition, text = await refusal(run_command(admin, HOST, ACCOUNT, {"username": "alice"}))
    assert (condition, text) == ("conflict", "The username 'alice' is already registered")


async def test_bogus_token_is_refused(start):
    server = start()
    async with new_stream(server) as stream:
        condition, _ = await refusal(stream.preauth("bogus-token-123"))
        assert condition == "forbidden"
        condition, text = await refusal(stream.register("mallory", "mallorypw"))
    assert condition == "not-acceptable"
    assert "invitation only" in text


async def test_revoked_token_is_refused(start):
    server = start()
    async with login(server, "admin") as admin:
        token = token_of((await create_account_invite(admin))["uri"])
        await revoke(admin, token)
    condition, _ = await refusal(register_with(server, token, "juliet", "julietpw"))
    assert condition == "forbidden"


async def test_token_revoked_after_preauth_cannot_register(start):
    server = start()
    async with login(server, "admin") as admin:
        token = token_of((await create_account_invite(admin))["uri"])
        async with new_stream(server) as stream:
            await stream.preauth(token)
            await revoke(admin, token)
            condition, text = await refusal(stream.register("juliet", "julietpw"))
    assert (condition, text) == ("forbidden", "The invitation has been revoked, has expired or was already used")


async def test_account_invite_with_roster_subscription_makes_contacts(start):
    server = start()
    async with login(server, "admin") as admin:
        await admin.get_roster(timeout=TIMEOUT)  # a client that has its roster gets roster pushes
        pushed = asyncio.get_running_loop().create_future()
        admin.add_event_handler(
            "roster_update",
            lambda iq: pushed.done() or (f"juliet@{HOST}" in iq["roster"]["items"] and pushed.set_result(iq)),
        )
        token = token_of((await create_account_invite(admin, **{"roster-subscription": True}))["uri"])
        await register_with(server, token, "juliet", "julietpw")
        async with asyncio.timeout(TIMEOUT):
            push = await pushed
        assert push["roster"]["items"][f"juliet@{HOST}"]["subscription"] == "both"
    async with login(server, "juliet", "julietpw") as juliet:
        assert await roster_subscription(juliet, f"admin@{HOST}") == "both"


async def test_validity_and_note_are_kept(start):
    server = start()
    async with login(server, "admin") as admin:
        before = int(time.time())
        result = await create_account_invite(admin, username="juliet", validity="2 days", note="For Juliet")
        after = int(time.time()) + 1
        assert before + 2 * 86400 <= parse_expire(result["expire"]) <= after + 2 * 86400
        [listed] = await list_invites(admin)
    assert listed == {
        "token": token_of(result["uri"]),
        "kind": "account",
        "username": "juliet",
        "expire": result["expire"],
        "note": "For Juliet",
        "uri": result["uri"],
    }


async def test_bad_form_values_are_refused_with_clear_errors(start):
    server = start(invites_adhoc_max_note_length=10)
    cases = [
        ({"validity": "2 months"}, "Months and years vary in length: give the validity period in days or weeks"),
        ({"validity": "31 days"}, "Validity period must be at most 30 days"),
        ({"validity": "soon"}, "Validity period 'soon' is not understood: write e.g. '1 hour', '7 days' or '2 weeks'"),
        ({"username": "juliet@example.com"}, "Username may not contain '@': give only the part before the @"),
        ({"username": "ju liet"}, "Username may not contain ' '"),
        ({"note": "a note that is too long"}, "Note is longer than 10 characters"),
    ]
    async with login(server, "admin") as admin:
        for fields, expected in cases:
            condition, text = await refusal(run_command(admin, HOST, ACCOUNT, fields))
            assert (condition, text) == ("bad-request", expected), fields
        assert await list_invites(admin) == []  # nothing was created


# --- Password reset -------------------------------------------------------------------------------------------------


async def invitation_of_reset(admin, account):
    return invitation(await run_command(admin, HOST, RESET, {"accountjid": account}))


async def test_password_reset_invite_sets_a_new_password(start):
    server = start()
    async with login(server, "admin") as admin:
        result = await invitation_of_reset(admin, f"alice@{HOST}")
    token = token_of(result["uri"])
    async with new_stream(server) as stream:
        await stream.preauth(token)
        condition, text = await refusal(stream.register("mallory", "mallorypw"))
        assert (condition, text) == ("not-acceptable", "This invitation is for the username 'alice'")
        await stream.register("alice", "newalicepw")
    async with login(server, "alice", "newalicepw"):
        pass


async def test_password_reset_for_an_unknown_account_is_refused(start):
    server = start()
    async with login(server, "admin") as admin:
        condition, text = await refusal(run_command(admin, HOST, RESET, {"accountjid": f"nobody@{HOST}"}))
    assert (condition, text) == ("item-not-found", f"nobody@{HOST} is not an account on {HOST}")


# --- Contact invites end to end -------------------------------------------------------------------------------------


async def fetch_rosters(*clients):
    """Prosody sends subscription stanzas and roster pushes only to resources that fetched their roster."""
    for client in clients:
        await client.get_roster(timeout=TIMEOUT)


def subscribe_with(client, contact, token):
    presence = client.make_presence(pto=contact, ptype="subscribe")
    presence["preauth"]["token"] = token
    presence.send()


async def test_contact_invite_preapproves_the_subscription(start):
    server = start()
    async with login(server, "alice") as alice, login(server, "bob") as bob:
        await fetch_rosters(alice, bob)
        token = token_of((await create_contact_invite(alice))["uri"])
        subscribe_with(bob, f"alice@{HOST}", token)
        # Alice's server approves at once, and asks for bob's presence in return: she does nothing.
        await bob.wait_for(match("presence", type="subscribed", from_=f"alice@{HOST}"))
        await bob.wait_for(match("presence", type="subscribe", from_=f"alice@{HOST}"))
        assert await roster_subscription(alice, f"bob@{HOST}") in ("from", "both")


async def test_revoked_contact_invite_no_longer_preapproves(start):
    server = start()
    async with login(server, "alice") as alice, login(server, "bob") as bob:
        await fetch_rosters(alice, bob)
        token = token_of((await create_contact_invite(alice))["uri"])
        await revoke(alice, token)
        subscribe_with(bob, f"alice@{HOST}", token)
        # An ordinary request: it reaches alice for her decision (a pre-approved one never does).
        await alice.wait_for(match("presence", type="subscribe", from_=f"bob@{HOST}"))


async def test_contact_invite_with_registration_makes_the_invitee_a_contact(start):
    server = start(allow_user_invites=True)
    async with login(server, "alice") as alice:
        result = await create_contact_invite(alice)
    assert result["uri"].endswith(";ibr=y")
    await register_with(server, token_of(result["uri"]), "juliet", "julietpw")
    async with login(server, "juliet", "julietpw") as juliet:
        assert await roster_subscription(juliet, f"alice@{HOST}") == "both"


# --- Quota, list, revoke --------------------------------------------------------------------------------------------


async def test_quota_limits_open_invites_of_users(start):
    server = start(invites_adhoc_max_open_per_user=2)
    async with login(server, "alice") as alice, login(server, "admin") as admin:
        first = token_of((await create_contact_invite(alice))["uri"])
        await create_contact_invite(alice)
        condition, text = await refusal(run_command(alice, HOST, CONTACT))
        assert condition == "resource-constraint"
        assert text.startswith("You already have 2 open invitations (the limit is 2)")
        await revoke(alice, first)
        await create_contact_invite(alice)  # room again
        for _ in range(3):  # admins have no quota
            await create_contact_invite(admin)


async def test_used_invites_leave_the_quota(start):
    server = start(invites_adhoc_max_open_per_user=1, allow_user_invites=True)
    async with login(server, "alice") as alice:
        token = token_of((await create_contact_invite(alice))["uri"])
        condition, _ = await refusal(run_command(alice, HOST, CONTACT))
        assert condition == "resource-constraint"
        await register_with(server, token, "juliet", "julietpw")
        await create_contact_invite(alice)


async def test_list_shows_only_your_open_invites(start):
    server = start(allow_user_invites=True)
    async with login(server, "alice") as alice, login(server, "bob") as bob:
        first = await create_contact_invite(alice)
        second = await create_contact_invite(alice)
        await create_contact_invite(bob)
        listed = await list_invites(alice)
        assert [item["uri"] for item in listed] == [first["uri"], second["uri"]]
        assert {item["kind"] for item in listed} == {"account-and-contact"}
        await register_with(server, token_of(first["uri"]), "juliet", "julietpw")
        assert [item["uri"] for item in await list_invites(alice)] == [second["uri"]]


async def test_revoke_offers_your_open_invites(start):
    server = start()
    async with login(server, "alice") as alice, login(server, "bob") as bob:
        mine = await create_contact_invite(alice)
        theirs = await create_contact_invite(bob)
        command = await run_command(alice, HOST, REVOKE)
        assert command["status"] == "executing"
        options = command["form"].get_fields()["token"].get_options()
        assert [option["value"] for option in options] == [token_of(mine["uri"])]
        condition, text = await refusal(run_command(alice, HOST, REVOKE, {"token": token_of(theirs["uri"])}))
        assert (condition, text) == ("item-not-found", "You have no open invitation with that token")
        assert len(await list_invites(bob)) == 1  # untouched


async def test_revoke_with_nothing_open_says_so(start):
    server = start()
    async with login(server, "alice") as alice:
        command = await run_command(alice, HOST, REVOKE)
    assert command["status"] == "completed"
    assert command["notes"] == [("info", "You have no open invitations to revoke")]


async def test_invites_work_on_sql_storage(start):
    server = start(storage="sql")
    async with login(server, "alice") as alice, login(server, "bob") as bob:
        await fetch_rosters(alice, bob)
        kept = await create_contact_invite(alice)
        revoked = await create_contact_invite(alice)
        await revoke(alice, token_of(revoked["uri"]))
        assert [item["uri"] for item in await list_invites(alice)] == [kept["uri"]]
        subscribe_with(bob, f"alice@{HOST}", token_of(kept["uri"]))
        await bob.wait_for(match("presence", type="subscribed", from_=f"alice@{HOST}"))
        assert await list_invites(alice) == []  # used


# --- Helpers of the review's fixes (issue 14) ------------------------------------------------------------------------


@pytest.fixture
def shell_options():
    """Global options of a server that `prosodyctl shell` can talk to: mod_admin_shell on a socket path short enough
    for a sockaddr_un (pytest's temp paths may not be). Ask for it before `start`, so that it outlives the server."""
    with tempfile.TemporaryDirectory(prefix="inv") as folder:
        yield {"admin_socket": f"{folder}/admin.sock"}


def shell_invite(server, call: str) -> str:
    """Makes an invitation the way an admin does with `prosodyctl shell` (mod_invites itself, not this module's
    commands): `call` is a mod_invites function call, e.g. 'create_account_reset("alice")'; returns its token."""
    out = server.prosodyctl("shell", f'>prosody.hosts["{HOST}"].modules.invites.{call}.uri')
    return token_of(out.strip().removeprefix("Result: "))


def audited(server, since: int = 0, action: str | None = None) -> list:
    """This module's audit lines from byte offset `since` (all, or those of `action`), as (action, fields)."""
    return [(found, fields) for source, found, fields in server.audit(since)
            if source == f"{HOST}:invites_adhoc" and action in (None, found)]


async def logged(server, text: str, since: int = 0) -> str:
    """Waits until the log (from byte offset `since`) has a line containing `text`; returns that line."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            for line in server.log_text(since).splitlines():
                if text in line:
                    return line
            await asyncio.sleep(0.05)


async def can_login(server, user, password) -> bool:
    try:
        async with login(server, user, password):
            return True
    except rig.AuthError:
        return False


async def command_step(client, node, action, sessionid=None, form=None):
    """One request of an ad-hoc command session, as a client sends it: `action` with an optional form; returns the
    <command/> of the reply (raises IqError on an error reply)."""
    iq = client.make_iq_set(ito=HOST)
    iq["command"]["node"] = node
    iq["command"]["action"] = action
    if sessionid:
        iq["command"]["sessionid"] = sessionid
    if form is not None:
        iq["command"].append(form)
    return (await iq.send(timeout=TIMEOUT))["command"]


def gajim_form(client, fields: dict):
    """A submit form as Gajim (nbxmpp) sends it: each field with its var, type and value(s), nothing else."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    for var, (ftype, value) in fields.items():
        form.add_field(var=var, ftype=ftype, value=value)
    return form


def echoed_form(form, values: dict):
    """The form the server sent, filled in and sent back whole (title, instructions, labels, descriptions, options
    and <required/> kept, type='submit'), as clients that render a form and submit what they rendered do."""
    form["type"] = "submit"
    fields = form.get_fields()
    for var, value in values.items():
        fields[var]["value"] = value
    return form


def fields_of(command) -> dict:
    return {var: field["value"] for var, field in command["form"].get_fields().items()}


# --- 1. Two reservations of one username ----------------------------------------------------------------------------


async def test_a_new_password_reset_replaces_the_older_link(start):
    server = start()
    async with login(server, "admin") as admin:
        older = token_of((await invitation_of_reset(admin, f"alice@{HOST}"))["uri"])
        newer = token_of((await invitation_of_reset(admin, f"alice@{HOST}"))["uri"])
    condition, _ = await refusal(register_with(server, older, "alice", "olderpw"))
    assert condition == "forbidden"
    await register_with(server, newer, "alice", "newerpw")
    assert await can_login(server, "alice", "newerpw")
    assert audited(server, action="invite-created")[-1][1].get("replaced") == "1"


async def test_every_link_reserving_a_username_registers_it(shell_options, start):
    # Links made outside this module's commands (prosodyctl shell) are not replaced: several stay open, and each
    # must work. Before, the first reservation found in storage (hash) order refused all the others, so with four
    # links in turn this failed but for a 1 in 24 chance.
    server = start(global_modules=["admin_shell"], global_options=shell_options)
    tokens = [shell_invite(server, 'create_account_reset("alice")') for _ in range(4)]
    for n, token in enumerate(tokens):
        await register_with(server, token, "alice", f"alicepw{n}")
        assert await can_login(server, "alice", f"alicepw{n}")


# --- 2. Account quota, who invited whom -----------------------------------------------------------------------------


def user_invites(**options):
    """Options of a server whose users may invite new users, with the given account quota."""
    return {"allow_user_invites": True, **options}


async def test_account_quota_counts_accounts_created_over_the_lifetime(start):
    server = start(**user_invites(invites_adhoc_max_accounts_per_user=1))
    async with login(server, "alice") as alice:
        first = await create_contact_invite(alice)
        assert first["uri"].endswith(";ibr=y")
        # The open invitation counts: another one would let a second account in.
        second = await run_command(alice, HOST, CONTACT)
        assert ";ibr=y" not in invitation(second)["uri"]
        assert second["notes"][0][1].startswith("This invitation does not let the invitee register here. You may "
                                                "invite 1 new account in all: 0 registered")
        await revoke(alice, token_of(invitation(second)["uri"]))
        await register_with(server, token_of(first["uri"]), "juliet", "julietpw")
        # Used, it still counts: the quota is of accounts created, not of open invitations.
        assert ";ibr=y" not in (await create_contact_invite(alice))["uri"]
    async with login(server, "juliet", "julietpw") as juliet:
        # The new account may invite in turn, within its own quota.
        assert (await create_contact_invite(juliet))["uri"].endswith(";ibr=y")


def set_invitee_time(server, inviter, invitee, when: int):
    """Dates an entry of an inviter's ledger (internal storage) back, as if the account had been made at `when`."""
    path = server.data_dir / HOST / "invites_adhoc_invitees" / f"{inviter}.dat"
    text, count = re.subn(r'(\["%s"\] = \{[^}]*\["at"\] = )\d+' % re.escape(invitee), rf"\g<1>{when}", path.read_text())
    assert count == 1, text
    path.write_text(text)


@pytest.mark.parametrize("period, again", [(86400, True), (0, False)], ids=["rolling-day", "lifetime"])
async def test_account_quota_over_a_rolling_period_frees_up(start, period, again):
    server = start(**user_invites(invites_adhoc_max_accounts_per_user=1, invites_adhoc_accounts_period=period))
    async with login(server, "alice") as alice:
        await register_with(server, token_of((await create_contact_invite(alice))["uri"]), "juliet", "julietpw")
        assert ";ibr=y" not in (await create_contact_invite(alice))["uri"]
    server.stop()
    set_invitee_time(server, "alice", "juliet", int(time.time()) - 2 * 86400)
    server.start()
    async with login(server, "alice") as alice:
        assert (await create_contact_invite(alice))["uri"].endswith(";ibr=y") is again


async def test_inviter_quota_is_checked_again_at_registration(start):
    # Invitations made under a higher quota stop registering accounts once the lower one is reached.
    server = start(**user_invites(invites_adhoc_max_accounts_per_user=2))
    async with login(server, "alice") as alice:
        tokens = [token_of((await create_contact_invite(alice))["uri"]) for _ in range(2)]
    server.reload(host_options={"invites_adhoc_max_accounts_per_user": 1})
    await register_with(server, tokens[0], "juliet", "julietpw")
    condition, text = await refusal(register_with(server, tokens[1], "romeo", "romeopw"))
    assert (condition, text) == ("resource-constraint", "Whoever invited you cannot invite more new accounts for now")


async def test_account_invites_count_against_the_quota_of_a_delegate(start, prosody_version):
    if prosody_version == "0.12":
        pytest.skip("0.12 has no permissions to delegate the account invite command with; admins have no quota")
    server = start(invites_adhoc_max_accounts_per_user=1,
                   global_options={"add_permissions": {"prosody:registered": [f"adhoc:{ACCOUNT}"]}})
    async with login(server, "alice") as alice:
        await create_account_invite(alice)
        condition, text = await refusal(run_command(alice, HOST, ACCOUNT, {"username": ""}))
    assert condition == "resource-constraint"
    assert text.startswith("You may invite 1 new account in all: 0 registered with your invitations, and 1 of")


async def manage(admin, account: str) -> dict:
    """Runs the manage command up to its second stage for `account`; returns (sessionid, fields, revoke options)."""
    first = await command_step(admin, MANAGE, "execute")
    assert first["status"] == "executing"
    second = await command_step(admin, MANAGE, "next", first["sessionid"],
                                gajim_form(admin, {"account": ("jid-single", account)}))
    assert second["status"] == "executing", second
    options = [option["value"] for option in second["form"].get_fields()["revoke"].get_options()]
    return {"sessionid": second["sessionid"], "fields": fields_of(second), "revoke": options}


async def test_admins_see_who_invited_whom(start):
    server = start(**user_invites())
    async with login(server, "admin") as admin:
        await register_with(server, token_of((await create_account_invite(admin))["uri"]), "carol", "carolpw")
        async with login(server, "carol", "carolpw") as carol:
            await register_with(server, token_of((await create_contact_invite(carol))["uri"]), "juliet", "julietpw")
        juliet = await manage(admin, f"juliet@{HOST}")
        assert juliet["fields"]["invited-by"].startswith(f"carol@{HOST} (account-and-contact, ")
        assert juliet["fields"]["chain"] == f"juliet@{HOST} < carol@{HOST} < admin@{HOST}"
        carol = await manage(admin, f"carol@{HOST}")
        assert carol["fields"]["invitees"] == [f"juliet@{HOST}"]
        assert carol["fields"]["accounts"] == "1 of 10 in all"
        alice = await manage(admin, f"alice@{HOST}")  # made with prosodyctl
        assert alice["fields"]["invited-by"] == "Nobody: this account was not made with an invitation"


# --- 3. and 4. Roles on Prosody 13 ----------------------------------------------------------------------------------


async def test_delegated_password_reset_cannot_reset_an_outranking_account(start, prosody_version):
    if prosody_version == "0.12":
        pytest.skip("0.12 has no roles to delegate the command with: only admins run it, and they rank alike")
    server = start(global_options={"add_permissions": {"prosody:registered": [f"adhoc:{RESET}"]}})
    async with login(server, "alice") as alice:
        since = server.log_path.stat().st_size
        condition, text = await refusal(run_command(alice, HOST, RESET, {"accountjid": f"admin@{HOST}"}))
        assert (condition, text) == (
            "forbidden", f"The role of admin@{HOST} (prosody:operator) outranks yours (prosody:registered)")
        assert audited(server, since) == [("invite-refused", {
            "account": "admin", "actor": f"alice@{HOST}", "actor_role": "prosody:registered", "kind": "password-reset",
            "reason": "outranked", "role": "prosody:operator"})]
        await invitation_of_reset(alice, f"bob@{HOST}")  # an equal


async def test_a_session_with_a_reduced_role_gets_only_what_its_role_allows(start, prosody_version):
    if prosody_version == "0.12":
        pytest.skip("0.12 sessions have no roles of their own: the account's admin status decides")
    server = start(invites_adhoc_max_open_per_user=1, test_plugins=["test_reduced_role"])
    async with connect(server, f"admin@{HOST}", PASSWORDS["admin"], resource="reduced-token") as reduced:
        first = await create_contact_invite(reduced)
        assert ";ibr=y" not in first["uri"]  # prosody:registered may not invite new users
        condition, _ = await refusal(run_command(reduced, HOST, CONTACT))
        assert condition == "resource-constraint"  # nor exceed the quota
        condition, _ = await refusal(run_command(reduced, HOST, ACCOUNT))
        assert condition == "forbidden"
    async with login(server, "admin") as admin:  # the full session: all of the admin role
        assert (await create_contact_invite(admin))["uri"].endswith(";ibr=y")


# --- 5. One token, one account, with two connections racing ---------------------------------------------------------


@pytest.mark.parametrize("storage", rig.STORAGES)
async def test_two_connections_racing_with_one_token_register_one_account(start, storage):
    # mod_test_registration_barrier holds each registration, as asynchronous storage would, until both
    # connections are inside it: without a claim taken at once, both would find the token unused.
    server = start(storage=storage, test_plugins=["test_registration_barrier"])
    async with login(server, "admin") as admin:
        token = token_of((await create_account_invite(admin))["uri"])
    since = server.log_path.stat().st_size
    async with new_stream(server) as first, new_stream(server) as second:
        await first.preauth(token)
        await second.preauth(token)
        results = await asyncio.gather(first.register("juliet", "julietpw"), second.register("romeo", "romeopw"),
                                       return_exceptions=True)
    refused = [r for r in results if isinstance(r, IqError)]
    assert len(refused) == 1, results
    error = refused[0].iq["error"]
    assert (error["condition"], error["text"]) == (
        "forbidden", "The invitation is being used to register on another connection")
    assert sorted([await can_login(server, "juliet", "julietpw"), await can_login(server, "romeo", "romeopw")]) == [
        False, True]
    assert [fields["reason"] for _, fields in audited(server, since, "registration-refused")] == ["invite-busy"]


# --- 6. Strict nodeprep ---------------------------------------------------------------------------------------------


async def test_a_username_registration_would_refuse_cannot_be_reserved(start):
    server = start()
    async with login(server, "admin") as admin:
        # Unassigned in Unicode 3.2: nodeprep lets it through, the strict nodeprep of registration does not.
        condition, text = await refusal(run_command(admin, HOST, ACCOUNT, {"username": "\U0001F600"}))
        assert (condition, text) == ("bad-request", "The username '\U0001F600' is not allowed on this server")
        assert await list_invites(admin) == []


# --- 7. Admins list and revoke everyone's invitations ---------------------------------------------------------------


async def list_all(admin) -> list[dict]:
    command = await run_command(admin, HOST, LIST_ALL)
    assert command["status"] == "completed", command
    return [dict(item) for item in command["form"].get_items()]


async def test_admins_list_every_users_invitations(shell_options, start):
    server = start(global_modules=["admin_shell"], global_options=shell_options)
    async with login(server, "alice") as alice, login(server, "bob") as bob, login(server, "admin") as admin:
        mine = token_of((await create_contact_invite(alice))["uri"])
        theirs = token_of((await create_contact_invite(bob))["uri"])
        by_server = shell_invite(server, 'create_account("juliet")')
        listed = {item["token"]: (item["creator"], item["kind"], item["username"]) for item in await list_all(admin)}
        assert listed == {
            mine: (f"alice@{HOST}", "contact", ""),
            theirs: (f"bob@{HOST}", "contact", ""),
            by_server: (HOST, "account", "juliet"),
        }
        condition, _ = await refusal(run_command(alice, HOST, LIST_ALL))
        assert condition == "forbidden"
    # Made outside the commands, and audited all the same.
    assert ("invite-created", {"account": "juliet", "kind": "account", "via": "mod_invites"}) in audited(server)


async def test_admins_revoke_a_users_invitations_in_a_multi_stage_session(start):
    server = start()
    async with login(server, "alice") as alice, login(server, "admin") as admin:
        kept = token_of((await create_contact_invite(alice))["uri"])
        gone = token_of((await create_contact_invite(alice))["uri"])
        stage = await manage(admin, f"alice@{HOST}")
        assert stage["revoke"] == [kept, gone]
        # Back to the first stage (Gajim's "Previous": no form), forward again, then complete with a choice.
        back = await command_step(admin, MANAGE, "prev", stage["sessionid"])
        assert back["status"] == "executing"
        assert fields_of(back)["account"] == f"alice@{HOST}"
        again = await command_step(admin, MANAGE, "next", back["sessionid"],
                                   gajim_form(admin, {"account": ("jid-single", f"alice@{HOST}")}))
        done = await command_step(admin, MANAGE, "complete", again["sessionid"],
                                  gajim_form(admin, {"revoke": ("list-multi", [gone])}))
        assert done["status"] == "completed"
        assert done["notes"] == [("info", f"Revoked 1 invitation of alice@{HOST}")]
        assert [item["token"] for item in await list_invites(alice)] == [kept]
    condition, _ = await refusal(register_with(server, gone, "juliet", "julietpw"))
    assert condition == "forbidden"
    assert audited(server, action="invite-revoked") == [("invite-revoked", {
        "actor": f"admin@{HOST}", "creator": f"alice@{HOST}", "kind": "contact", "reason": "revoked-by-admin"})]


async def test_cancelling_the_manage_session_revokes_nothing(start):
    server = start()
    async with login(server, "alice") as alice, login(server, "admin") as admin:
        token = token_of((await create_contact_invite(alice))["uri"])
        stage = await manage(admin, f"alice@{HOST}")
        canceled = await command_step(admin, MANAGE, "cancel", stage["sessionid"])
        assert canceled["status"] == "canceled"
        assert [item["token"] for item in await list_invites(alice)] == [token]


# --- 8. Read errors and pruning -------------------------------------------------------------------------------------


async def test_a_storage_read_error_forgets_no_invitation(start):
    server = start()
    async with login(server, "alice") as alice:
        token = token_of((await create_contact_invite(alice))["uri"])
        tokens_file = server.data_dir / HOST / "invite_token" / "alice.dat"
        saved = tokens_file.read_text()
        tokens_file.write_text("return {")  # unreadable: a read error, not "no record"
        condition, text = await refusal(run_command(alice, HOST, LIST))
        assert (condition, text) == ("internal-server-error", "Could not read your invitations")
        tokens_file.write_text(saved)
        assert [item["token"] for item in await list_invites(alice)] == [token]


def stored(server, request, store: str) -> str:
    """Everything stored in `store` on localhost, as text (internal: its files; postgres: its rows)."""
    if server.storage == "postgres":
        return request.getfixturevalue("postgres").psql(
            f"SELECT \"user\", \"key\", \"value\" FROM prosody WHERE host = '{HOST}' AND store = '{store}'",
            server.sql["database"])
    files = [server.data_dir / HOST / f"{store}.dat", *(server.data_dir / HOST / store).glob("*.dat")]
    return "".join(f"{path.name}: {path.read_text()}" for path in files if path.exists())


@pytest.mark.parametrize("storage", ["internal", "postgres"])
async def test_expired_and_closed_invitations_are_pruned(shell_options, start, request, storage):
    server = start(storage=storage, global_modules=["admin_shell"], global_options=shell_options)
    async with login(server, "admin") as admin:
        closed = token_of((await create_account_invite(admin))["uri"])
    expired = [shell_invite(server, 'create_account("juliet", nil, -60)'),  # expired a minute ago
               shell_invite(server, 'create_contact("alice", false, nil, -60)')]
    kept = shell_invite(server, 'create_account("romeo")')
    server.prosodyctl("shell", f'>prosody.hosts["{HOST}"].modules.invites.delete_account_invite("{closed}")')
    assert closed in stored(server, request, "invites_adhoc")
    assert all(token in stored(server, request, "invite_token") for token in expired)
    since = server.log_path.stat().st_size
    server.restart()  # pruning runs at start, then every invites_adhoc_prune_interval
    assert (await logged(server, "AUDIT invites-pruned", since)).endswith("AUDIT invites-pruned records=1 tokens=2")
    tokens = stored(server, request, "invite_token")
    assert kept in tokens and not any(token in tokens for token in expired)
    assert closed not in stored(server, request, "invites_adhoc")


# --- 9. Cancel ------------------------------------------------------------------------------------------------------


async def test_cancelling_the_contact_invite_command_creates_nothing(start):
    server = start()
    async with login(server, "alice") as alice:
        canceled = await command_step(alice, CONTACT, "cancel")
        assert canceled["status"] == "canceled"
        assert await list_invites(alice) == []
    assert audited(server, action="invite-created") == []


# --- Real clients' shapes -------------------------------------------------------------------------------------------


async def test_conversations_gets_a_shareable_contact_invite(start):
    # Conversations looks for urn:xmpp:invite#invite among the server's commands, executes it once without a
    # session and shares landing-url, or uri when there is none.
    server = start()
    async with login(server, "alice") as alice:
        assert CONTACT in await listed_commands(alice)
        command = await command_step(alice, CONTACT, "execute")
    assert command["status"] == "completed"
    assert invitation(command)["uri"].startswith(f"xmpp:alice@{HOST}?roster;preauth=")


async def test_gajim_creates_an_account_invite_in_two_steps(start):
    server = start()
    async with login(server, "admin") as admin:
        shown = await command_step(admin, ACCOUNT, "execute")
        assert shown["status"] == "executing"
        done = await command_step(admin, ACCOUNT, "complete", shown["sessionid"], gajim_form(admin, {
            "username": ("text-single", "juliet"), "roster-subscription": ("boolean", "1"),
            "validity": ("text-single", "2 days"), "note": ("text-single", "Gajim"),
        }))
        assert invitation(done)["uri"].startswith(f"xmpp:juliet@{HOST}?register;preauth=")
        [listed] = await list_invites(admin)
        assert (listed["username"], listed["note"]) == ("juliet", "Gajim")


async def test_a_client_that_echoes_the_whole_form_creates_an_account_invite(start):
    server = start()
    async with login(server, "admin") as admin:
        shown = await command_step(admin, ACCOUNT, "execute")
        form = echoed_form(shown["form"], {"username": "romeo", "roster-subscription": True, "note": "Echoed"})
        done = await command_step(admin, ACCOUNT, "execute", shown["sessionid"], form)
        assert invitation(done)["uri"].startswith(f"xmpp:romeo@{HOST}?register;preauth=")


async def test_cancelling_a_form_command_after_its_form_creates_nothing(start):
    server = start()
    async with login(server, "admin") as admin:
        shown = await command_step(admin, ACCOUNT, "execute")
        canceled = await command_step(admin, ACCOUNT, "cancel", shown["sessionid"])
        assert canceled["status"] == "canceled"
        assert await list_invites(admin) == []


# --- Storage: every backend, across a restart -----------------------------------------------------------------------


@pytest.mark.parametrize("storage", rig.STORAGES)
async def test_invites_and_quotas_survive_a_restart(start, storage):
    server = start(storage=storage, **user_invites(invites_adhoc_max_accounts_per_user=2))
    async with login(server, "alice") as alice, login(server, "admin") as admin:
        used = token_of((await create_contact_invite(alice))["uri"])
        kept = await create_contact_invite(alice)
        reserved = token_of((await create_account_invite(admin, username="romeo"))["uri"])
    await register_with(server, used, "juliet", "julietpw")
    server.restart()
    async with login(server, "alice") as alice, login(server, "admin") as admin:
        assert [item["uri"] for item in await list_invites(alice)] == [kept["uri"]]
        # One account made and one invitation open: the quota of 2 is full.
        assert ";ibr=y" not in (await create_contact_invite(alice))["uri"]
        assert (await manage(admin, f"juliet@{HOST}"))["fields"]["chain"] == f"juliet@{HOST} < alice@{HOST}"
    condition, _ = await refusal(register_with(server, token_of(kept["uri"]), "romeo", "stolenpw"))
    assert condition == "conflict"  # still reserved
    await register_with(server, reserved, "romeo", "romeopw")


# --- Operators: metrics, audit, reload ------------------------------------------------------------------------------


async def test_metrics_count_invitations_created_redeemed_and_revoked_by_kind(start):
    server = start(global_modules=rig.METRICS_MODULES, global_options=rig.METRICS_OPTIONS)
    async with login(server, "admin") as admin, login(server, "alice") as alice, login(server, "bob") as bob:
        await register_with(server, token_of((await create_account_invite(admin))["uri"]), "juliet", "julietpw")
        await revoke(alice, token_of((await create_contact_invite(alice))["uri"]))
        await fetch_rosters(alice, bob)
        subscribe_with(bob, f"alice@{HOST}", token_of((await create_contact_invite(alice))["uri"]))
        await bob.wait_for(match("presence", type="subscribed", from_=f"alice@{HOST}"))
        await register_with(server, token_of((await invitation_of_reset(admin, f"bob@{HOST}"))["uri"]), "bob", "newpw")
        await create_contact_invite(admin)
    metrics = await server.metrics()
    family = "prosody_mod_invites_adhoc__%s_total"
    expected = {
        ("created", "account"): 1, ("created", "contact"): 2, ("created", "password-reset"): 1,
        ("created", "account-and-contact"): 1, ("redeemed", "account"): 1, ("redeemed", "contact"): 1,
        ("redeemed", "password-reset"): 1, ("revoked", "contact"): 1, ("revoked", "account"): None,
    }
    for (name, kind), count in expected.items():
        assert metrics.value(family % name, host=HOST, kind=kind) == count, (name, kind)
    assert metrics.help["prosody_mod_invites_adhoc__created"] == "Invitations created, by kind"


async def test_every_change_leaves_one_audit_line(start):
    server = start()
    async with login(server, "admin") as admin, login(server, "alice") as alice:
        contact = token_of((await create_contact_invite(alice))["uri"])
        account = token_of((await create_account_invite(admin, username="juliet"))["uri"])
        await revoke(alice, contact)
        await invitation_of_reset(admin, f"bob@{HOST}")
    await register_with(server, account, "juliet", "julietpw")
    assert audited(server) == [
        ("invite-created", {"actor": f"alice@{HOST}", "kind": "contact"}),
        ("invite-created", {"account": "juliet", "actor": f"admin@{HOST}", "kind": "account"}),
        ("invite-revoked", {"actor": f"alice@{HOST}", "creator": f"alice@{HOST}", "kind": "contact", "reason": "revoked"}),
        ("invite-created", {"account": "bob", "actor": f"admin@{HOST}", "kind": "password-reset"}),
        ("invite-redeemed", {"account": "juliet", "inviter": f"admin@{HOST}", "kind": "account"}),
    ]
    assert not [line for line in server.log_text().splitlines() if "AUDIT" in line and (contact in line or account in line)]


async def test_options_are_read_again_on_reload(start):
    server = start(invites_adhoc_max_open_per_user=1, allow_contact_invites=True)
    async with login(server, "alice") as alice:
        await create_contact_invite(alice)
        condition, _ = await refusal(run_command(alice, HOST, CONTACT))
        assert condition == "resource-constraint"
        server.reload(host_options={"invites_adhoc_max_open_per_user": 2, "allow_contact_invites": False})
        assert set() == await listed_commands(alice) & OURS  # allow_contact_invites = false took effect too
        server.reload(host_options={"allow_contact_invites": True})
        await create_contact_invite(alice)


# --- Follow-ups: pruning in batches, deleted accounts, the shell's contact invites ----------------------------------


def watched_storage(modules_dir, **options) -> dict:
    """Global options that put this module's `invites_adhoc` store on tests/plugins' mod_storage_test_watched (internal
    storage that logs each name its listing hands out, and holds the listing at the `test_watched_hold_at`-th name
    until a client pings)."""
    return {"plugin_paths": [str(modules_dir), PLUGINS_DIR], "storage": {"invites_adhoc": "test_watched"}, **options}


def write_closed_records(server, creators):
    """Records of invitations that expired long ago, one per creator, as internal storage keeps them: what pruning
    deletes, one creator per step. Write them while the server is stopped."""
    folder = server.data_dir / HOST / "invites_adhoc"
    folder.mkdir(parents=True, exist_ok=True)
    for n, creator in enumerate(creators):
        (folder / f"{creator}.dat").write_text(
            f'return {{ ["closed{n}"] = {{ ["type"] = "contact"; ["created"] = 1; ["expires"] = 2; ["serial"] = 1 }} }};\n')


def listing(server, since: int) -> list[str]:
    """For each name the watched listing handed out since `since`, whether the event loop turned before it."""
    return re.findall(r"Listed name \d+ \(loop turned since the previous: (yes|no)\)", server.log_text(since))


async def ping(client):
    await client.plugin["xep_0199"].send_ping(HOST, timeout=TIMEOUT)


async def test_pruning_works_in_batches_and_serves_clients_between_them(start, modules_dir):
    server = start(invites_adhoc_prune_batch_size=2, global_options=watched_storage(modules_dir, test_watched_hold_at=3))
    server.stop()
    write_closed_records(server, [f"creator{n}" for n in range(6)])
    since = server.log_path.stat().st_size
    server.start()  # pruning runs at every start
    # Held at the start of its second batch (as storage that waits would hold it): the server still serves clients.
    await logged(server, "Holding the listing until a ping", since)
    async with login(server, "alice") as alice:
        await ping(alice)
    line = await logged(server, "AUDIT invites-pruned", since)
    assert line.endswith("AUDIT invites-pruned records=6 tokens=0")
    # Six creators in batches of two: the pass gave the loop back before the 3rd and the 5th, and only there.
    assert listing(server, since) == ["no", "no", "yes", "no", "yes", "no"]
    assert "Pruning pass done: 6 steps, in batches of up to 2" in server.log_text(since)


async def test_a_pass_that_a_module_reload_interrupts_stops_and_the_new_one_prunes(shell_options, start, modules_dir):
    server = start(invites_adhoc_prune_batch_size=2, global_modules=["admin_shell"],
                   global_options=watched_storage(modules_dir, test_watched_hold_at=3, **shell_options))
    server.stop()
    write_closed_records(server, [f"creator{n}" for n in range(6)])
    since = server.log_path.stat().st_size
    server.start()
    await logged(server, "Holding the listing until a ping", since)  # two records pruned, four left
    server.prosodyctl("shell", f'module:reload("invites_adhoc", "{HOST}")')
    line = await logged(server, "AUDIT invites-pruned", since)  # the new instance's pass, at load
    assert line.endswith("AUDIT invites-pruned records=4 tokens=0")
    async with login(server, "alice") as alice:
        await ping(alice)  # releases the interrupted pass: it ends its batch, then waits for a timer that never fires
        await ping(alice)  # a later turn of the loop, where that timer would have fired
    log = server.log_text(since)
    assert log.count("AUDIT invites-pruned") == 1
    assert log.count("Pruning pass done") == 1
    assert server.log_errors() == []


async def test_a_deleted_accounts_invitations_are_closed(shell_options, start, prosody_version):
    server = start(allow_user_invites=True, global_modules=["admin_shell"], global_options=shell_options)
    async with login(server, "alice") as alice, login(server, "admin") as admin:
        invite = token_of((await create_contact_invite(alice))["uri"])  # with ibr=y: it can register an account
        reset = token_of((await invitation_of_reset(admin, f"alice@{HOST}"))["uri"])
    since = server.log_path.stat().st_size
    server.prosodyctl("deluser", f"alice@{HOST}")
    if prosody_version == "0.12":
        # 0.12's prosodyctl deletes the account in a process of its own, so the server never hears of it:
        # registration refuses the invitations at once, and pruning (at every start) closes them.
        for token, username in ((invite, "juliet"), (reset, "alice")):
            condition, _ = await refusal(register_with(server, token, username, "newpw"))
            assert condition == "forbidden"
        restarted = server.log_path.stat().st_size
        server.restart()
        await logged(server, "Pruning pass done", restarted)
    # The reset link would have registered the name anew; neither works any more.
    for token, username in ((invite, "juliet"), (reset, "alice")):
        condition, _ = await refusal(register_with(server, token, username, "newpw"))
        assert condition == "forbidden"
    assert not await can_login(server, "alice", "newpw")
    assert sorted(audited(server, since, "invite-revoked"), key=str) == sorted([
        ("invite-revoked", {"creator": f"alice@{HOST}", "kind": "account-and-contact", "reason": "account-deleted"}),
        ("invite-revoked", {"account": "alice", "creator": HOST, "kind": "password-reset", "reason": "account-deleted"}),
    ], key=str)


async def unregister(server, user, password):
    """The user deletes their own account in band (XEP-0077), which the server sees on both versions."""
    async with login(server, user, password) as client:
        await client.plugin["xep_0077"].cancel_registration(timeout=TIMEOUT)


async def test_a_name_registered_again_after_its_deletion_has_no_stale_chain(start):
    server = start(modules=[*MODULES, "user_account_management"], **user_invites(invites_adhoc_max_accounts_per_user=2))
    async with login(server, "alice") as alice:
        await register_with(server, token_of((await create_contact_invite(alice))["uri"]), "juliet", "julietpw")
    await unregister(server, "juliet", "julietpw")
    server.register("juliet", "anotherpw")  # another person, without an invitation
    async with login(server, "admin") as admin:
        juliet = await manage(admin, f"juliet@{HOST}")
        assert juliet["fields"]["invited-by"] == "Nobody: this account was not made with an invitation"
        assert juliet["fields"]["chain"] == f"juliet@{HOST}"
        alice = await manage(admin, f"alice@{HOST}")
        assert alice["fields"]["invitees"] == [f"juliet@{HOST} (deleted)"]
        assert alice["fields"]["accounts"] == "1 of 2 in all"  # a deleted account still counts


async def test_a_deleted_invitee_still_counts_when_its_inviter_brings_the_name_again(start):
    server = start(modules=[*MODULES, "user_account_management"], **user_invites())
    async with login(server, "alice") as alice:
        await register_with(server, token_of((await create_contact_invite(alice))["uri"]), "juliet", "firstpw")
        await unregister(server, "juliet", "firstpw")
        await register_with(server, token_of((await create_contact_invite(alice))["uri"]), "juliet", "secondpw")
    async with login(server, "admin") as admin:
        alice = await manage(admin, f"alice@{HOST}")
        assert alice["fields"]["invitees"] == [f"juliet@{HOST} (deleted)", f"juliet@{HOST}"]
        assert alice["fields"]["accounts"] == "2 of 10 in all"
        juliet = await manage(admin, f"juliet@{HOST}")
        assert juliet["fields"]["chain"] == f"juliet@{HOST} < alice@{HOST}"


async def test_contact_invites_made_with_the_shell_are_listed_and_revocable(shell_options, start):
    server = start(global_modules=["admin_shell"], global_options=shell_options)
    token = shell_invite(server, 'create_contact("alice", false)')  # contact-only: core keeps only its expiry
    async with login(server, "alice") as alice, login(server, "bob") as bob, login(server, "admin") as admin:
        [listed] = await list_all(admin)
        assert (listed["token"], listed["creator"], listed["kind"], listed["uri"]) == (
            token, HOST, "contact", f"xmpp:alice@{HOST}?roster;preauth={token}")
        stage = await manage(admin, HOST)
        assert stage["revoke"] == [token]
        done = await command_step(admin, MANAGE, "complete", stage["sessionid"],
                                  gajim_form(admin, {"revoke": ("list-multi", [token])}))
        assert done["status"] == "completed"
        await fetch_rosters(alice, bob)
        subscribe_with(bob, f"alice@{HOST}", token)
        # Revoked: an ordinary request, for alice to decide.
        await alice.wait_for(match("presence", type="subscribe", from_=f"bob@{HOST}"))
    assert audited(server, action="invite-revoked") == [("invite-revoked", {
        "actor": f"admin@{HOST}", "creator": HOST, "kind": "contact", "reason": "revoked-by-admin"})]
