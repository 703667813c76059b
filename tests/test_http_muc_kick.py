"""mod_http_muc_kick on a real Prosody: an HTTP client kicks and the occupant, a real XMPP client, sees it; every
refusal is a JSON error with a stable code that changes nothing; tokens minted by prosodyctl (and Prosody 13's shell)
work within their scope and lifetime only, can be revoked and rolled over; options follow `prosodyctl reload`; refused
attempts are rate limited and logged in a line that a real fail2ban matches."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

import rig
from rig import MUC_HOST, all_of, connect, create_room, has_status, join_room, match

ROOM = f"lobby@{MUC_HOST}"
OTHER_ROOM = f"other@{MUC_HOST}"
STATIC_HEADER = "Bearer c3RhdGljLWhlYWRlci1vZi10aGUtaW50ZWdyYXRpb24tc3VpdGU"
SECRET = "kJ3q8x0PzT5mW2vN9rB4yC7uE1aD6fH0sL3gK8jQ"
NEW_SECRET = "Zq7Ty2Lm9Pw4Rb8Nc1Vx6Hd3Gf0Js5Ka7Ue2Io9"
AUTH = {"Authorization": STATIC_HEADER}
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
TOKEN = re.compile(r"^v2\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$", re.M)
README = rig.ROOT / "lua/mod_http_muc_kick/README.markdown"
PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture
def start_kick_server(start_prosody, modules_dir):
    """A server with mod_http_muc_kick on the MUC host (static header and token secret), alice and bob. Keyword
    arguments are MUC options (None removes one); `listener` adds tests/plugins/mod_test_kick_listener."""

    def start(*, global_modules=(), global_options=None, listener=False, **muc_options):
        options = {"http_muc_kick_authorization_header": STATIC_HEADER, "http_muc_kick_token_secret": SECRET}
        options.update(muc_options)
        options = {k: v for k, v in options.items() if v is not None}
        # Prosody 13's prosodyctl refuses `reload` where it sees systemd; the tests send the signal it would.
        global_options = {"prosodyctl_service_warnings": False, **(global_options or {})}
        if listener:
            global_options["plugin_paths"] = [str(modules_dir), PLUGINS]
        server = start_prosody(
            muc_modules=["http_muc_kick", *(["test_kick_listener"] if listener else [])],
            muc_options=options,
            global_modules=global_modules,
            global_options=global_options,
        )
        server.register("alice", "alicepw")
        server.register("bob", "bobpw")
        return server

    return start


@contextlib.asynccontextmanager
async def lobby_with(server, nick="Bob"):
    """Alice creates and owns the lobby, bob joins it as `nick`; yields (alice, bob)."""
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await create_room(alice, ROOM, "Alice")
        await join_room(bob, ROOM, nick)
        await alice.wait_for(match("presence", from_=f"{ROOM}/{nick}"))
        yield alice, bob


def lobby_with_bob(server):
    return lobby_with(server)


async def kick(server, body=None, *, headers=AUTH, content=None, method="POST"):
    """Sends a request to /muc_kick on the MUC host: `body` as JSON, or raw `content` with the given headers."""
    async with server.http_client(host=server.muc_host) as http:
        return await http.request(method, "/muc_kick", json=body, content=content, headers=headers)


def bearer(token: str, **more) -> dict:
    return {"Authorization": f"Bearer {token}", **more}


def kicked(nick: str, room: str = ROOM):
    """Predicate: the presence saying `nick` was kicked from `room`."""
    return all_of(match("presence", from_=f"{room}/{nick}", type="unavailable"), has_status(307))


def kick_reason(presence) -> str | None:
    reason = presence.xml.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}item/{{{NS_MUC_USER}}}reason")
    return None if reason is None else reason.text


async def assert_still_in_room(alice, bob, text="still here"):
    """Bob can still talk in the room, so he was not kicked."""
    bob.send_message(mto=ROOM, mbody=text, mtype="groupchat")
    await alice.wait_for(match("message", from_=f"{ROOM}/Bob", type="groupchat", body=text))


def assert_refused(response, status: int, code: str, text: str | None = None):
    assert status == response.status_code, response.text
    assert "application/json" == response.headers["content-type"]
    body = response.json()
    assert code == body["code"], body
    if text is not None:
        assert text in body["error"], body


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(secret: str) -> str:
    return b64url(hmac.new(secret.encode(), b"prosody-native http_muc_kick key id v2", hashlib.sha256).digest()[:6])


def sign(secret: str, claims: str | bytes, host: str = MUC_HOST) -> str:
    """A token of the README's scheme around raw claims JSON, built independently of the module and its library."""
    claims = claims.encode() if isinstance(claims, str) else claims
    signed = f"v2.{key_id(secret)}.{b64url(claims)}"
    label = b"prosody-native http_muc_kick token signing key v2\0" + host.encode()
    signing_key = hmac.new(secret.encode(), label, hashlib.sha256).digest()
    return signed + "." + b64url(hmac.new(signing_key, signed.encode(), hashlib.sha256).digest())


def make_token(secret: str, *, rooms=None, iat: int, exp: int, host: str = MUC_HOST, nonce="cHl0ZXN0LW5vbmNl") -> str:
    claims = {"host": host, "scope": "service" if rooms is None else {"rooms": rooms}, "iat": iat, "exp": exp,
              "nonce": nonce}
    return sign(secret, json.dumps(claims), host)


def claims_of(token: str) -> dict:
    payload = token.split(".")[2]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def create_token(server, *args: str) -> str:
    """`prosodyctl mod_http_muc_kick create_token MUC_HOST args...`; returns the token, alone on its stdout."""
    output = server.prosodyctl("mod_http_muc_kick", "create_token", server.muc_host, *args)
    assert TOKEN.fullmatch(output.strip()), output
    return output.strip()


async def wait_for_log(server, text: str, since: int = 0) -> str:
    """Waits until the log (from byte `since`) has `text`; returns the log from `since`. Bounded by rig.TIMEOUT."""
    deadline = time.monotonic() + rig.TIMEOUT
    while True:
        log = server.log_text(since)
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged within {rig.TIMEOUT}s:\n{server.log_tail(30)}")
        await asyncio.sleep(0.05)  # the log file has no event to wait on


def log_size(server) -> int:
    return server.log_path.stat().st_size


async def prosodyctl_reload(server, expect="AUDIT kick-config-loaded"):
    """A real `prosodyctl reload` (a signal, not a restart), on the config file as edited (rig.reload would render
    options itself and send the signal without prosodyctl); returns once the module logged `expect`."""
    since = log_size(server)
    pid = server.pid
    server.prosodyctl("reload")
    await wait_for_log(server, expect, since)
    assert pid == server.pid and server.is_running()


def edit_config(server, old: str, new: str):
    text = server.config_path.read_text()
    assert old in text, old
    server.config_path.write_text(text.replace(old, new))


# --- The seed's API ---------------------------------------------------------------------------------------------


async def test_kick_removes_occupant_shows_the_reason_and_logs_one_audit_line(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM, "reason": "Spamming"})

        assert 200 == response.status_code, response.text
        assert {"kicked": "Bob", "nicknames": ["Bob"], "muc": ROOM} == response.json()
        assert "application/json" == response.headers["content-type"]
        own = await bob.wait_for(kicked("Bob"))
        assert 110 in own["muc"]["status_codes"]
        assert "Spamming" == kick_reason(own)
        assert "Spamming" == kick_reason(await alice.wait_for(kicked("Bob")))

    log = server.log_text()
    assert 1 == log.count("AUDIT occupant-kicked")
    assert (f"AUDIT occupant-kicked address=127.0.0.1 credential=static jid=bob@localhost nickname=Bob "
            f"reason=Spamming room={ROOM} target=nickname") in log
    assert STATIC_HEADER.split()[1] not in log


async def test_kick_without_reason_kicks(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM})

        assert 200 == response.status_code, response.text
        assert None is kick_reason(await bob.wait_for(kicked("Bob")))


async def test_module_refuses_to_load_with_neither_credential(start_prosody):
    server = start_prosody(muc_modules=["http_muc_kick"], check_modules=False)

    errors = server.module_errors("http_muc_kick")
    assert errors, server.log_tail()
    assert "Neither http_muc_kick_token_secret nor http_muc_kick_authorization_header is set" in errors[0]
    assert "Serving 'muc_kick'" not in server.log_text()


# One scenario each: (id, request, status, code, error text). Bob is in the room, and must still be after the refusal.
JSON = {"Content-Type": "application/json"}
REFUSALS = [
    ("missing_authorization", dict(body={"nickname": "Bob", "muc": ROOM}, headers={}),
     401, "unauthorized", "Missing Authorization header"),
    ("wrong_authorization", dict(body={"nickname": "Bob", "muc": ROOM}, headers={"Authorization": "Basic bm9wZTpub3Bl"}),
     401, "unauthorized", "Wrong Authorization header"),
    ("malformed_bearer_token", dict(body={"nickname": "Bob", "muc": ROOM}, headers=bearer("v3.abc.def.ghi")),
     401, "token-malformed", "Unsupported token version"),
    ("body_not_json", dict(content=b"nickname=Bob&muc=lobby", headers={**AUTH, **JSON}),
     400, "bad-request", "Body is not valid JSON"),
    ("body_not_an_object", dict(body=["Bob", ROOM]), 400, "bad-request", "Body must be a JSON object, not an array"),
    ("repeated_field", dict(content=f'{{"nickname":"Eve","muc":"{ROOM}","nickname":"Bob"}}'.encode(),
                            headers={**AUTH, **JSON}),
     400, "bad-request", "Field 'nickname' appears more than once"),
    ("missing_nickname", dict(body={"muc": ROOM}), 400, "bad-request", "Missing 'nickname'"),
    ("two_ways_to_name_the_occupant", dict(body={"nickname": "Bob", "jid": "bob@localhost", "muc": ROOM}),
     400, "bad-request", "one way only"),
    ("missing_muc", dict(body={"nickname": "Bob"}), 400, "bad-request", "Missing 'muc'"),
    ("nickname_of_wrong_type", dict(body={"nickname": ["Bob"], "muc": ROOM}),
     400, "bad-request", "'nickname' must be a string, not an array"),
    ("malformed_room_jid", dict(body={"nickname": "Bob", "muc": "lobby@conference..localhost"}),
     400, "bad-request", "'muc' is not a valid room JID"),
    ("room_jid_that_fails_stringprep", dict(body={"nickname": "Bob", "muc": f"lob\ufffeby@{MUC_HOST}"}),
     400, "bad-request", "'muc' is not a valid room JID: it has characters JIDs may not contain"),
    ("nickname_that_fails_stringprep", dict(body={"nickname": "B\ufffeob", "muc": ROOM}),
     400, "bad-request", "'nickname' is not valid: it has characters nicknames may not contain"),
    ("body_not_declared_as_json", dict(content=json.dumps({"nickname": "Bob", "muc": ROOM}).encode(),
                                       headers={**AUTH, "Content-Type": "text/plain"}),
     415, "unsupported-media-type", "Body must be sent as Content-Type: application/json"),
    ("body_too_large", dict(body={"nickname": "Bob", "muc": ROOM, "reason": "x" * 5000}),
     413, "too-large", "Body is larger than 4096 bytes"),
    ("room_on_another_host", dict(body={"nickname": "Bob", "muc": "lobby@localhost"}),
     404, "room-not-found", "Room lobby@localhost is not on this MUC service"),
    ("room_that_does_not_exist", dict(body={"nickname": "Bob", "muc": f"nowhere@{MUC_HOST}"}),
     404, "room-not-found", f"Room nowhere@{MUC_HOST} does not exist"),
    ("nickname_not_in_room", dict(body={"nickname": "Eve", "muc": ROOM}),
     404, "occupant-not-found", f'Nobody with the nickname "Eve" is in the room {ROOM}'),
    ("jid_not_in_room", dict(body={"jid": "eve@localhost", "muc": ROOM}),
     404, "occupant-not-found", f"Nobody with the JID eve@localhost is in the room {ROOM}"),
]


@pytest.mark.parametrize("request_args, status, code, error", [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
async def test_refused_request_answers_json_error_with_code_and_changes_nothing(start_kick_server, request_args,
                                                                                status, code, error):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, **request_args)

        assert_refused(response, status, code, error)
        if status == 401:
            challenge = 'Bearer realm="conference.localhost"'
            if code.startswith("token-"):
                challenge += ', error="invalid_token"'
            assert challenge == response.headers["www-authenticate"]
        await assert_still_in_room(alice, bob)


async def test_a_room_jid_that_stringprep_makes_a_full_jid_leaves_the_live_room_alone(start_kick_server):
    # Stringprep makes "/" of a fullwidth solidus: mod_muc, asked for lobby@host/x, restored the stored copy of the
    # persistent room over the live one, whose occupants could then no longer talk.
    server = start_kick_server(muc_room_default_persistent=True)
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": f"lobby@{MUC_HOST}\uff0fx"})

        assert_refused(response, 404, "room-not-found", f"Room lobby@{MUC_HOST}/x is not on this MUC service")
        await assert_still_in_room(alice, bob)


async def test_owner_cannot_be_kicked(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Alice", "muc": ROOM})

        assert_refused(response, 403, "forbidden", "Alice is an owner of the room; owners and admins cannot be kicked")
        alice.send_message(mto=ROOM, mbody="I am still here", mtype="groupchat")
        await bob.wait_for(match("message", from_=f"{ROOM}/Alice", body="I am still here"))


async def test_admin_cannot_be_kicked(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        await alice.plugin["xep_0045"].set_affiliation(ROOM, jid="bob@localhost", affiliation="admin")
        await bob.wait_for(match("presence", from_=f"{ROOM}/Bob"))

        response = await kick(server, {"jid": "bob@localhost", "muc": ROOM})

        assert_refused(response, 403, "forbidden", "Bob is an admin of the room; owners and admins cannot be kicked")
        await assert_still_in_room(alice, bob)


async def test_owner_is_kicked_when_the_option_allows_it(start_kick_server):
    server = start_kick_server(http_muc_kick_allow_kicking_admins=True)
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Alice", "muc": ROOM, "reason": "Handover"})

        assert 200 == response.status_code, response.text
        assert "Handover" == kick_reason(await bob.wait_for(kicked("Alice")))


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_other_methods_answer_405(start_kick_server, method):
    server = start_kick_server()

    response = await kick(server, {"nickname": "Bob", "muc": ROOM}, method=method)

    assert_refused(response, 405, "method-not-allowed", "Only POST is allowed here")
    assert "POST" == response.headers["allow"]


# --- The review's defects ---------------------------------------------------------------------------------------


async def test_empty_static_header_lets_no_empty_authorization_in(start_kick_server):
    server = start_kick_server(http_muc_kick_authorization_header="")
    async with lobby_with_bob(server) as (alice, bob):
        for headers in ({"Authorization": ""}, {}):
            assert_refused(await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=headers), 401, "unauthorized")
        await assert_still_in_room(alice, bob)
    assert "http_muc_kick_authorization_header is empty: no static header is accepted" in server.log_text()


async def test_prosodyctl_reload_rotates_the_secret_and_the_header(start_kick_server):
    server = start_kick_server()
    old_token = create_token(server, "--service")
    new_header = STATIC_HEADER + "-rotated"
    async with lobby_with_bob(server) as (alice, bob):
        edit_config(server, SECRET, NEW_SECRET)
        edit_config(server, STATIC_HEADER, new_header)
        await prosodyctl_reload(server)

        assert_refused(await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(old_token)),
                       401, "token-invalid", "signed with an unknown key")
        assert 401 == (await kick(server, {"nickname": "Bob", "muc": ROOM})).status_code  # the old header
        await assert_still_in_room(alice, bob)
        new_token = create_token(server, "--service")
        assert key_id(NEW_SECRET) == new_token.split(".")[1]
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(new_token))
        assert 200 == response.status_code, response.text
        await bob.wait_for(kicked("Bob"))
    async with connect(server, "bob@localhost", "bobpw") as bob:
        await join_room(bob, ROOM, "Bob")
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers={"Authorization": new_header})
        assert 200 == response.status_code, response.text


async def test_reload_with_a_wrong_secret_keeps_the_previous_configuration(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--service")
    edit_config(server, SECRET, "too-short")
    await prosodyctl_reload(server, expect="Configuration not reloaded, the previous one stays in force: The token secret must be")

    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))
        assert 200 == response.status_code, response.text


async def test_nickname_with_spaces_is_kicked_by_its_exact_nickname(start_kick_server):
    server = start_kick_server()
    async with lobby_with(server, " Spammer ") as (alice, bob):
        assert_refused(await kick(server, {"nickname": "Spammer", "muc": ROOM}), 404, "occupant-not-found")

        response = await kick(server, {"nickname": " Spammer ", "muc": ROOM, "reason": "Spam"})

        assert 200 == response.status_code, response.text
        assert " Spammer " == response.json()["kicked"]
        await alice.wait_for(kicked(" Spammer "))
    assert 'nickname=" Spammer "' in server.log_text()


def readme_examples() -> list[tuple[str, str]]:
    """The (option, value) pairs the module README shows for the header and the token secret."""
    examples = re.findall(r'(http_muc_kick_(?:token_secret|authorization_header)) = "([^"]*)"', README.read_text())
    assert len(examples) >= 2
    return examples


@pytest.mark.parametrize("option, value", [
    *readme_examples(),
    ("http_muc_kick_authorization_header", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),  # 0.1.0's README
    ("http_muc_kick_token_secret", "hJ0w3bqKpB0yBw0m3e0nq4mJ8XfWkE4oVqf7s9RZQ2c1"),  # 0.1.0's README
    ("http_muc_kick_authorization_header", "Basic dXNlcm5hbWU6cGFzc3dvcmQ="),  # short
])
async def test_example_or_weak_secret_stops_the_module_from_loading(start_prosody, option, value):
    others = {"http_muc_kick_authorization_header": STATIC_HEADER, "http_muc_kick_token_secret": SECRET}
    server = start_prosody(muc_modules=["http_muc_kick"], muc_options={**others, option: value}, check_modules=False)

    errors = server.module_errors("http_muc_kick")
    assert errors, server.log_tail()
    assert option in errors[0] or "token secret" in errors[0]
    assert value not in server.log_text()
    async with server.http_client(host=server.muc_host) as http:
        assert 404 == (await http.post("/muc_kick", json={}, headers={"Authorization": value})).status_code


async def test_challenge_never_echoes_the_static_header(start_kick_server):
    header = "s3cr3tPrefix c3RhdGljLWhlYWRlci1vZi10aGUtaW50ZWdyYXRpb24"
    server = start_kick_server(http_muc_kick_authorization_header=header, http_muc_kick_token_secret=None)

    response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers={"Authorization": "Basic bm9wZQ=="})

    assert_refused(response, 401, "unauthorized")
    assert 'Bearer realm="conference.localhost"' == response.headers["www-authenticate"]
    assert "s3cr3t" not in response.text


# Claims a genuine minter never writes, each signed with the server's secret: 0.1.0 accepted all of these.
NOW = int(time.time())
NONCE = "cHl0ZXN0LW5vbmNl"
LAX_CLAIMS = [
    ("expiry_near_i64_max", f'{{"host":"{MUC_HOST}","scope":"service","iat":{NOW},"exp":9223372036854775000,'
                            f'"nonce":"{NONCE}"}}', "lifetime"),
    ("issued_ten_years_ahead", f'{{"host":"{MUC_HOST}","scope":"service","iat":{NOW + 315360000},'
                               f'"exp":{NOW + 315363600},"nonce":"{NONCE}"}}', "issued in the future"),
    ("empty_nonce", f'{{"host":"{MUC_HOST}","scope":"service","iat":{NOW},"exp":{NOW + 3600},"nonce":""}}',
     "Token id"),
    ("empty_room_list", f'{{"host":"{MUC_HOST}","scope":{{"rooms":[]}},"iat":{NOW},"exp":{NOW + 3600},'
                        f'"nonce":"{NONCE}"}}', "at least one room"),
    ("repeated_field", f'{{"host":"{MUC_HOST}","scope":{{"rooms":["{OTHER_ROOM}"]}},"iat":{NOW},"exp":{NOW + 3600},'
                       f'"nonce":"{NONCE}","scope":"service"}}', "duplicate field"),
]


@pytest.mark.parametrize("claims, why", [case[1:] for case in LAX_CLAIMS], ids=[case[0] for case in LAX_CLAIMS])
async def test_lax_token_claims_are_refused(start_kick_server, claims, why):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(sign(SECRET, claims)))

        assert_refused(response, 401, "token-malformed", why)
        assert 'Bearer realm="conference.localhost", error="invalid_token"' == response.headers["www-authenticate"]
        await assert_still_in_room(alice, bob)


async def test_refused_attempt_is_logged_at_info_with_the_forwarded_client_address(start_kick_server):
    server = start_kick_server()
    forwarded = {"X-Forwarded-For": "203.0.113.7"}  # from 127.0.0.1, one of Prosody's default trusted_proxies

    assert_refused(await kick(server, {"nickname": "Bob", "muc": ROOM}, headers={"Authorization": "Basic bm9wZQ==",
                                                                                   **forwarded}), 401, "unauthorized")

    assert "\tinfo\tAUDIT kick-refused address=203.0.113.7 code=unauthorized status=401" in server.log_text()


async def test_forwarded_address_of_an_untrusted_peer_is_ignored(start_kick_server):
    server = start_kick_server(global_options={"trusted_proxies": ["192.0.2.1"]})

    await kick(server, {"nickname": "Bob", "muc": ROOM}, headers={"Authorization": "Basic bm9wZQ==",
                                                                   "X-Forwarded-For": "203.0.113.7"})

    log = server.log_text()
    assert "AUDIT kick-refused address=127.0.0.1 code=unauthorized" in log
    assert "203.0.113.7" not in log


@contextlib.contextmanager
def shell_server(start_kick_server, prosody_version):
    """A Prosody 13 server with mod_admin_shell, for `prosodyctl shell muc_kick ...`; skips on 0.12."""
    if prosody_version != "13":
        pytest.skip("Prosody 0.12 has no shell commands; its prosodyctl commands are tested too")
    # The admin socket path must fit in a sockaddr_un, which pytest's temp paths may not.
    with tempfile.TemporaryDirectory(prefix="kick") as socket_dir:
        server = start_kick_server(global_modules=["admin_shell"],
                                   global_options={"admin_socket": f"{socket_dir}/admin.sock"})
        yield server
        server.stop()  # while its socket folder still exists


async def test_prosody_13_shell_refuses_service_false(start_kick_server, prosody_version):
    with shell_server(start_kick_server, prosody_version) as server:
        with pytest.raises(RuntimeError, match="--service takes no value"):
            server.prosodyctl("shell", "muc_kick", "create_token", server.muc_host, "--service=false")
        assert "AUDIT kick-token-created" not in server.log_text()


# --- Rate limits --------------------------------------------------------------------------------------------------


async def until_limited(server, body, headers, limit=50):
    """Sends the request until it gets a 429 (at most `limit` times); returns (answers before it, the 429)."""
    answers = []
    for _ in range(limit):
        response = await kick(server, body, headers=headers)
        if response.status_code == 429:
            return answers, response
        answers.append(response.status_code)
    raise AssertionError(f"no 429 after {limit} requests: {answers}")


async def test_rate_limit_per_address_answers_429_with_retry_after_and_recovers(start_kick_server):
    # 2 at once, then one more every 5 s: however slow the machine, the 429 comes within a few requests.
    server = start_kick_server(http_muc_kick_rate_limit_per_address=2, http_muc_kick_rate_limit_window=10)
    nobody = {"nickname": "Eve", "muc": ROOM}
    limited_address = {**AUTH, "X-Forwarded-For": "203.0.113.7"}

    answers, refused = await until_limited(server, nobody, limited_address)

    assert len(answers) >= 2 and set(answers) == {404}
    assert_refused(refused, 429, "rate-limited", "Too many requests from your address")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 5
    assert 404 == (await kick(server, nobody, headers={**AUTH, "X-Forwarded-For": "203.0.113.8"})).status_code
    await asyncio.sleep(retry_after)  # what the answer asks for: then the next request goes through
    assert 404 == (await kick(server, nobody, headers=limited_address)).status_code
    assert 1 == server.log_text().count("AUDIT kick-refused address=203.0.113.7 code=rate-limited status=429")


async def test_rate_limit_per_credential_answers_429_from_any_address(start_kick_server):
    server = start_kick_server(http_muc_kick_rate_limit_per_credential=2, http_muc_kick_rate_limit_window=10)
    token = create_token(server, "--service", "--label", "busy")
    nobody = {"nickname": "Eve", "muc": ROOM}

    answers, refused = await until_limited(server, nobody, bearer(token, **{"X-Forwarded-For": "203.0.113.9"}))

    assert len(answers) >= 2
    assert_refused(refused, 429, "rate-limited", "Too many requests with this credential")
    response = await kick(server, nobody, headers=bearer(token, **{"X-Forwarded-For": "198.51.100.1"}))
    assert 429 == response.status_code
    assert 404 == (await kick(server, nobody)).status_code  # the static header is another credential
    await asyncio.sleep(int(refused.headers["retry-after"]))
    assert 404 == (await kick(server, nobody, headers=bearer(token))).status_code


# --- fail2ban ---------------------------------------------------------------------------------------------------


def readme_fail2ban_filter() -> str:
    """The filter the README ships: the first ini block under its fail2ban heading."""
    section = README.read_text().split("fail2ban\n--------", 1)[1]
    return re.search(r"``` ini\n(.*?)```", section, re.S).group(1)


async def test_readme_fail2ban_filter_matches_refused_attempts_in_prosody_log(start_kick_server, tmp_path):
    server = start_kick_server(http_muc_kick_rate_limit_per_address=3, http_muc_kick_rate_limit_window=3600)
    now = int(time.time())
    expired = make_token(SECRET, iat=now - 7200, exp=now - 3600)
    token = create_token(server, "--room", "other")
    body = {"nickname": "Eve", "muc": ROOM}
    attempts = [  # (client address, headers, expected status): four failed authentications, from two addresses
        ("203.0.113.7", {"Authorization": "Basic bm9wZTpub3Bl"}, 401),
        ("203.0.113.7", bearer("v2.AAAAAAAA.e30.AAAA"), 401),
        ("2001:db8::7", bearer(expired), 401),
        ("203.0.113.7", {}, 401),
        ("203.0.113.7", AUTH, 429),  # rate limited: not an authentication failure
        ("198.51.100.1", AUTH, 404),  # authorized
        ("198.51.100.1", bearer(token), 403),  # out of scope
    ]
    for address, headers, status in attempts:
        response = await kick(server, body, headers={**headers, "X-Forwarded-For": address})
        assert status == response.status_code, (address, response.text)
    (tmp_path / "filter.conf").write_text(readme_fail2ban_filter())

    proc = subprocess.run(["fail2ban-regex", "-o", "ip", str(server.log_path), str(tmp_path / "filter.conf")],
                          capture_output=True, text=True, timeout=rig.TIMEOUT, check=False)

    assert 0 == proc.returncode, proc.stdout + proc.stderr
    assert ["203.0.113.7", "203.0.113.7", "2001:db8::7", "203.0.113.7"] == proc.stdout.split(), proc.stdout


# --- Tokens -------------------------------------------------------------------------------------------------------


async def test_room_token_from_prosodyctl_kicks_in_its_room(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--room", "lobby", "--label", "ci-bot")
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM, "reason": "Token kick"}, headers=bearer(token))

        assert 200 == response.status_code, response.text
        assert "Token kick" == kick_reason(await bob.wait_for(kicked("Bob")))

    log = server.log_text()
    nonce = claims_of(token)["nonce"]
    assert (f"AUDIT occupant-kicked address=127.0.0.1 credential=token:{nonce} jid=bob@localhost label=ci-bot "
            f'nickname=Bob reason="Token kick" room={ROOM} target=nickname') in log
    assert token not in log and token.split(".")[3] not in log and SECRET not in log


async def test_room_token_is_refused_in_another_room(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--room", OTHER_ROOM)
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))

        assert_refused(response, 403, "out-of-scope", f"This token does not cover the room {ROOM}")
        await assert_still_in_room(alice, bob)


async def test_service_token_kicks_in_any_room(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--service", "--expires-after", "1h")
    assert 3600 == claims_of(token)["exp"] - claims_of(token)["iat"]
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))

        assert 200 == response.status_code, response.text
        await bob.wait_for(kicked("Bob"))


async def test_token_built_from_the_documented_scheme_is_accepted(start_kick_server):
    server = start_kick_server()
    now = int(time.time())
    token = make_token(SECRET, rooms=[ROOM], iat=now, exp=now + 3600)
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))

        assert 200 == response.status_code, response.text
        await bob.wait_for(kicked("Bob"))


async def test_expired_forged_widened_and_v1_tokens_are_refused_with_401(start_kick_server):
    server = start_kick_server()
    now = int(time.time())
    room_token = create_token(server, "--room", "other")
    widened_claims = b64url(json.dumps({**claims_of(room_token), "scope": "service"}).encode())
    widened = f"v2.{key_id(SECRET)}.{widened_claims}.{room_token.split('.')[3]}"
    v1 = "v1.eyJob3N0IjoiY29uZmVyZW5jZS5sb2NhbGhvc3QifQ.AAAA"
    cases = [
        (make_token(SECRET, rooms=[ROOM], iat=now - 7200, exp=now - 3600), "token-expired", "Token has expired"),
        (make_token(NEW_SECRET, iat=now, exp=now + 3600), "token-invalid", "unknown key"),
        (widened, "token-invalid", "Token signature does not match"),
        (v1, "token-malformed", "older v1 format (prosody-native 0.1.0)"),
    ]
    async with lobby_with_bob(server) as (alice, bob):
        for token, code, text in cases:
            response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))
            assert_refused(response, 401, code, text)
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
        await assert_still_in_room(alice, bob)


async def test_prosodyctl_refuses_a_token_without_scope(start_kick_server):
    server = start_kick_server()

    with pytest.raises(RuntimeError, match="--room ROOM"):
        server.prosodyctl("mod_http_muc_kick", "create_token", server.muc_host)


async def test_prosodyctl_revocation_reaches_the_running_server(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--service", "--label", "leaked")
    spare = create_token(server, "--service", "--label", "spare")
    token_id = claims_of(token)["nonce"]
    async with lobby_with_bob(server) as (alice, bob):
        assert 404 == (await kick(server, {"nickname": "Eve", "muc": ROOM}, headers=bearer(token))).status_code
        since = log_size(server)

        output = server.prosodyctl("mod_http_muc_kick", "revoke_token", server.muc_host, token_id)

        assert f"Revoked {token_id}; the running server was told to reload and now refuses it" in output
        await wait_for_log(server, f"AUDIT kick-token-revoked by=registry credential=token:{token_id} label=leaked",
                           since)
        assert_refused(await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token)),
                       401, "token-revoked")
        await assert_still_in_room(alice, bob)
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(spare))
        assert 200 == response.status_code, response.text
    listing = server.prosodyctl("mod_http_muc_kick", "list_tokens", server.muc_host)
    assert f"{token_id}  revoked  leaked  every room  key {key_id(SECRET)} (current key)" in listing
    assert f"{claims_of(spare)['nonce']}  active  spare" in listing


@pytest.mark.parametrize("token_id", ["-3Jldm9rZWQtYnktZGFzaA", "--9yZXZva2VkLWRhc2hlcw"])
async def test_prosodyctl_revokes_a_token_whose_id_begins_with_a_dash(start_kick_server, token_id):
    # Ids are base64url, so one in 64 begins with "-": prosodyctl once took such an id for an unknown option.
    server = start_kick_server()
    now = int(time.time())
    token = make_token(SECRET, iat=now, exp=now + 3600, nonce=token_id)
    assert 404 == (await kick(server, {"nickname": "Eve", "muc": ROOM}, headers=bearer(token))).status_code
    since = log_size(server)

    output = server.prosodyctl("mod_http_muc_kick", "revoke_token", server.muc_host, token_id)

    assert f"Revoked {token_id}; the running server was told to reload and now refuses it" in output
    await wait_for_log(server, f"AUDIT kick-token-revoked by=registry credential=token:{token_id}", since)
    assert_refused(await kick(server, {"nickname": "Eve", "muc": ROOM}, headers=bearer(token)), 401, "token-revoked")


async def test_a_revocation_written_while_the_server_starts_is_in_force_once_it_has_started(start_kick_server,
                                                                                            modules_dir):
    token_id = b64url(b"revoked-at-start")
    server = start_kick_server(global_modules=["test_kick_revoke_at_startup"], global_options={
        "plugin_paths": [str(modules_dir), PLUGINS],
        "test_kick_revoke_at_startup": {"host": MUC_HOST, "id": token_id}})
    now = int(time.time())
    token = make_token(SECRET, iat=now, exp=now + 3600, nonce=token_id)

    assert_refused(await kick(server, {"nickname": "Eve", "muc": ROOM}, headers=bearer(token)), 401, "token-revoked")
    log = server.log_text()
    assert "revoked=0" in log  # the module had read the deny list before the plugin wrote it
    assert f"AUDIT kick-token-revoked by=registry credential=token:{token_id}" in log


async def test_revocation_survives_a_restart(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--service")
    server.stop()
    output = server.prosodyctl("mod_http_muc_kick", "revoke_token", server.muc_host, claims_of(token)["nonce"])
    assert "Prosody is not running and will refuse it when it starts" in output
    server.start()

    assert_refused(await kick(server, {"nickname": "Eve", "muc": ROOM}, headers=bearer(token)), 401, "token-revoked")
    assert "AUDIT kick-config-loaded" in server.log_text() and "revoked=1" in server.log_text()


async def test_prosody_13_shell_mints_lists_and_revokes_at_once(start_kick_server, prosody_version):
    with shell_server(start_kick_server, prosody_version) as server:
        output = server.prosodyctl("shell", "muc_kick", "create_token", server.muc_host, "--room", "lobby",
                                   "--label", "shell-bot")
        tokens = TOKEN.findall(output)
        assert 1 == len(tokens), output
        assert f"(shell-bot) for {ROOM}, signed with key {key_id(SECRET)}, valid until" in output
        token_id = claims_of(tokens[0])["nonce"]
        assert f"{token_id}  active  shell-bot" in server.prosodyctl("shell", "muc_kick", "list_tokens",
                                                                     server.muc_host)
        async with lobby_with_bob(server) as (alice, bob):
            assert_refused(await kick(server, {"nickname": "Bob", "muc": OTHER_ROOM}, headers=bearer(tokens[0])),
                           403, "out-of-scope")

            server.prosodyctl("shell", "muc_kick", "revoke_token", server.muc_host, token_id)

            assert_refused(await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(tokens[0])),
                           401, "token-revoked")
            await assert_still_in_room(alice, bob)
        log = server.log_text()
        assert tokens[0] not in log
        assert f"AUDIT kick-token-created by=shell credential=token:{token_id}" in log
        assert f"AUDIT kick-token-revoked by=shell credential=token:{token_id} label=shell-bot" in log


async def test_key_rollover_accepts_old_tokens_until_the_date_then_refuses_them(start_kick_server, tmp_path):
    old_file, new_file = tmp_path / "old.secret", tmp_path / "new.secret"
    old_file.write_text(SECRET + "\n")
    new_file.write_text(NEW_SECRET + "\n")
    server = start_kick_server(http_muc_kick_token_secret=None, http_muc_kick_token_secret_file=str(old_file))
    old_token = create_token(server, "--service")
    rollover = (f'http_muc_kick_token_secret_file = "{new_file}"\n'
                f'\thttp_muc_kick_previous_token_secrets = {{ {{ file = "{old_file}"; accept_until = "2999-01-01" }} }}')
    edit_config(server, f'http_muc_kick_token_secret_file = "{old_file}"', rollover)
    await prosodyctl_reload(server)
    new_token = create_token(server, "--service")
    assert key_id(NEW_SECRET) == new_token.split(".")[1] != old_token.split(".")[1]
    nobody = {"nickname": "Eve", "muc": ROOM}

    assert 404 == (await kick(server, nobody, headers=bearer(old_token))).status_code
    assert 404 == (await kick(server, nobody, headers=bearer(new_token))).status_code
    listing = server.prosodyctl("mod_http_muc_kick", "list_tokens", server.muc_host)
    assert "previous key, accepted until 2999-01-01 00:00 UTC" in listing

    edit_config(server, 'accept_until = "2999-01-01"', 'accept_until = "2000-01-01"')
    await prosodyctl_reload(server)

    assert_refused(await kick(server, nobody, headers=bearer(old_token)), 401, "token-invalid", "no longer accepts")
    assert 404 == (await kick(server, nobody, headers=bearer(new_token))).status_code
    assert "retired on 2000-01-01 00:00 UTC: remove it from the configuration" in server.log_text()


async def test_prosody_13_credential_is_read_by_the_server_and_by_prosodyctl(start_kick_server, prosody_version,
                                                                              tmp_path, monkeypatch):
    if prosody_version != "13":
        pytest.skip("Credential() is new in Prosody 13")
    (tmp_path / "kick").write_text(NEW_SECRET + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # as systemd's LoadCredential= sets it
    server = start_kick_server()
    edit_config(server, f'http_muc_kick_token_secret = "{SECRET}"', 'http_muc_kick_token_secret = Credential("kick")')
    await prosodyctl_reload(server)

    token = create_token(server, "--service")

    assert key_id(NEW_SECRET) == token.split(".")[1]
    assert 404 == (await kick(server, {"nickname": "Eve", "muc": ROOM}, headers=bearer(token))).status_code


# --- Targets, bodies, the event, metrics ---------------------------------------------------------------------


async def test_kick_by_occupant_id_and_by_real_jid(start_kick_server):
    server = start_kick_server(listener=True)
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await create_room(alice, ROOM, "Alice")
        await join_room(bob, ROOM, "Bob")
        presence = await alice.wait_for(match("presence", from_=f"{ROOM}/Bob"))
        occupant_id = presence.xml.find(f"{{{NS_OCCUPANT_ID}}}occupant-id").get("id")

        response = await kick(server, {"occupant_id": occupant_id, "muc": ROOM, "reason": "By id"})

        assert 200 == response.status_code, response.text
        assert ["Bob"] == response.json()["nicknames"]
        assert "By id" == kick_reason(await bob.wait_for(kicked("Bob")))
        await join_room(bob, ROOM, "Bob2")
        response = await kick(server, {"jid": "bob@localhost", "muc": ROOM})
        assert 200 == response.status_code, response.text
        await alice.wait_for(kicked("Bob2"))
    log = server.log_text()
    assert f"AUDIT occupant-kicked address=127.0.0.1 credential=static jid=bob@localhost nickname=Bob " \
           f'reason="By id" room={ROOM} target=occupant-id' in log
    assert "target=jid" in log
    assert (f'http-muc-kick event: room={ROOM} nickname="Bob" occupant_jid="{ROOM}/Bob" jid=bob@localhost '
            f'reason="By id" target=occupant-id credential=static label=nil address=127.0.0.1') in log


async def kick_unread(server, content, headers):
    """A request whose body Prosody does not read: the answer, or None when the connection was reset first (Prosody
    closes it with the body unread, and the kernel may then reset it before the client reads the answer)."""
    try:
        return await kick(server, content=content, headers=headers)
    except httpx.TransportError:
        return None


async def test_large_body_is_refused_before_prosody_reads_it(start_kick_server):
    server = start_kick_server(global_options={"http_max_content_size": 65536})
    size = 1024 * 1024

    async def one_mebibyte():
        for _ in range(size // 65536):
            yield b" " * 65536

    async def chunked_kick():
        yield json.dumps({"nickname": "Bob", "muc": ROOM}).encode()

    async with lobby_with_bob(server) as (alice, bob):
        response = await kick_unread(server, one_mebibyte(), {**AUTH, **JSON, "Content-Length": str(size)})
        if response is not None:
            assert_refused(response, 413, "too-large", "Body is larger than 4096 bytes")
            assert "close" == response.headers["connection"]

        response = await kick_unread(server, chunked_kick(), {**AUTH, **JSON})
        if response is not None:
            assert_refused(response, 411, "length-required")
        await assert_still_in_room(alice, bob)
    log = server.log_text()
    assert "AUDIT kick-refused address=127.0.0.1 code=too-large status=413" in log
    assert "AUDIT kick-refused address=127.0.0.1 code=length-required status=411" in log
    assert "AUDIT occupant-kicked" not in log


async def test_requests_are_counted_by_outcome_in_metrics(start_kick_server):
    server = start_kick_server(global_modules=rig.METRICS_MODULES, global_options=rig.METRICS_OPTIONS)
    async with lobby_with_bob(server) as (alice, bob):
        assert 200 == (await kick(server, {"nickname": "Bob", "muc": ROOM})).status_code
        await bob.wait_for(kicked("Bob"))
    for headers in ({}, {"Authorization": "Basic bm9wZQ=="}):
        assert 401 == (await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=headers)).status_code
    assert 404 == (await kick(server, {"nickname": "Eve", "muc": ROOM})).status_code

    metrics = await server.metrics()

    name = "prosody_mod_http_muc_kick__requests_total"
    assert 1 == metrics.value(name, host=MUC_HOST, outcome="kicked")
    assert 2 == metrics.value(name, host=MUC_HOST, outcome="unauthorized")
    assert 1 == metrics.value(name, host=MUC_HOST, outcome="occupant-not-found")
    assert "by outcome" in metrics.help["prosody_mod_http_muc_kick__requests"]
