"""mod_invites_adhoc on a real Prosody 0.12 and 13, driven the way XMPP clients drive it: the inviter runs ad-hoc
commands (XEP-0050, XEP-0401 v0.6), the invitee presents the token (XEP-0445 preauth) and registers in band
(XEP-0077), or sends a pre-authenticated subscription request (XEP-0379). Every test asserts what a user sees:
command lists, forms, URIs, IQ errors, logins, presence and rosters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timezone
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
OURS = {CONTACT, ACCOUNT, RESET, LIST, REVOKE}
USER_COMMANDS = {CONTACT, LIST, REVOKE}

# admin: in the rig's `admins`; alice and bob: ordinary users.
PASSWORDS = {"admin": "adminpw", "alice": "alicepw", "bob": "bobpw"}
MODULES = ["invites_adhoc", "invites_register"]


class PreAuth(ElementBase):
    """XEP-0445 / XEP-0379 token: <preauth xmlns='urn:xmpp:pars:0' token='...'/> in an IQ or a subscription."""

    name = "preauth"
    namespace = "urn:xmpp:pars:0"
    plugin_attrib = "preauth"
    interfaces = {"token"}


register_stanza_plugin(Iq, PreAuth)
register_stanza_plugin(Presence, PreAuth)


@pytest.fixture
def start(start_prosody):
    """start(**host_options): a server with the invite modules on localhost and the users of PASSWORDS."""

    def start_with(*, modules=MODULES, storage="internal", extra_hosts=None, global_options=None, **host_options):
        server = start_prosody(
            host_modules=modules,
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
