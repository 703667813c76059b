"""mod_http_muc_kick on a real Prosody: an HTTP client kicks and the occupant, a real XMPP client, sees it; every
refusal is a JSON error that changes nothing; tokens minted by prosodyctl (and Prosody 13's shell) work within their
scope and lifetime only."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import tempfile
import time

import pytest

from rig import MUC_HOST, all_of, connect, create_room, has_status, join_room, match

ROOM = f"lobby@{MUC_HOST}"
OTHER_ROOM = f"other@{MUC_HOST}"
STATIC_HEADER = "Basic dXNlcm5hbWU6cGFzc3dvcmQ="
SECRET = "kJ3q8x0PzT5mW2vN9rB4yC7uE1aD6fH0sL3gK8jQ"
AUTH = {"Authorization": STATIC_HEADER}
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
TOKEN = re.compile(r"^v1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$", re.M)


@pytest.fixture
def start_kick_server(start_prosody):
    """A server with mod_http_muc_kick on the MUC host (static header and token secret), alice and bob."""

    def start(*, global_modules=(), global_options=None, **muc_options):
        options = {"http_muc_kick_authorization_header": STATIC_HEADER, "http_muc_kick_token_secret": SECRET}
        server = start_prosody(
            muc_modules=["http_muc_kick"],
            muc_options={**options, **muc_options},
            global_modules=global_modules,
            global_options=global_options,
        )
        server.register("alice", "alicepw")
        server.register("bob", "bobpw")
        return server

    return start


@contextlib.asynccontextmanager
async def lobby_with_bob(server):
    """Alice creates and owns the lobby, bob joins it as Bob; yields (alice, bob)."""
    async with connect(server, "alice@localhost", "alicepw") as alice, \
            connect(server, "bob@localhost", "bobpw") as bob:
        await create_room(alice, ROOM, "Alice")
        await join_room(bob, ROOM, "Bob")
        await alice.wait_for(match("presence", from_=f"{ROOM}/Bob"))
        yield alice, bob


async def kick(server, body=None, *, headers=AUTH, content=None, method="POST"):
    """Sends a request to /muc_kick on the MUC host: `body` as JSON, or raw `content` with the given headers."""
    async with server.http_client(host=server.muc_host) as http:
        return await http.request(method, "/muc_kick", json=body, content=content, headers=headers)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


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


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(secret: str, *, rooms=None, iat: int, exp: int, host: str = MUC_HOST) -> str:
    """A token built from the README's scheme, independently of the module and its native library."""
    claims = {"host": host, "scope": "service" if rooms is None else {"rooms": rooms}, "iat": iat, "exp": exp,
              "nonce": "cHl0ZXN0LW5vbmNl"}
    signed = "v1." + b64url(json.dumps(claims).encode())
    per_host_key = hmac.new(secret.encode(), host.encode(), hashlib.sha256).digest()
    return signed + "." + b64url(hmac.new(per_host_key, signed.encode(), hashlib.sha256).digest())


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def create_token(server, *args: str) -> str:
    """`prosodyctl mod_http_muc_kick create_token MUC_HOST args...`; returns the token it printed."""
    output = server.prosodyctl("mod_http_muc_kick", "create_token", server.muc_host, *args)
    tokens = TOKEN.findall(output)
    assert len(tokens) == 1, output
    return tokens[0]


# --- The seed's API ---------------------------------------------------------------------------------------------


async def test_kick_removes_occupant_and_shows_the_reason(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM, "reason": "Spamming"})

        assert (200, {"kicked": "Bob", "muc": ROOM}) == (response.status_code, response.json())
        assert "application/json" == response.headers["content-type"]
        own = await bob.wait_for(kicked("Bob"))
        assert 110 in own["muc"]["status_codes"]
        assert "Spamming" == kick_reason(own)
        assert "Spamming" == kick_reason(await alice.wait_for(kicked("Bob")))

    log = server.log_text()
    assert (f'Kicked "Bob" from {ROOM} by HTTP request authorized with static header, reason: "Spamming"') in log
    assert STATIC_HEADER.split()[1] not in log


async def test_kick_without_reason_kicks(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM})

        assert 200 == response.status_code, response.text
        assert None is kick_reason(await bob.wait_for(kicked("Bob")))


async def test_module_refuses_to_load_without_authorization_header(start_prosody):
    server = start_prosody(muc_modules=["http_muc_kick"], check_modules=False)

    errors = server.module_errors("http_muc_kick")
    assert errors, server.log_tail()
    assert "http_muc_kick_authorization_header is not set" in errors[0]
    assert "Serving 'muc_kick'" not in server.log_text()


# One scenario each: (id, request, status, error text). Bob is in the room, and must still be after the refusal.
JSON = {"Content-Type": "application/json"}
REFUSALS = [
    ("missing_authorization", dict(body={"nickname": "Bob", "muc": ROOM}, headers={}),
     401, "Missing Authorization header"),
    ("wrong_authorization", dict(body={"nickname": "Bob", "muc": ROOM}, headers={"Authorization": "Basic bm9wZTpub3Bl"}),
     401, "Wrong Authorization header"),
    ("malformed_bearer_token", dict(body={"nickname": "Bob", "muc": ROOM}, headers=bearer("v2.abc.def")),
     401, "Unsupported token version"),
    ("body_not_json", dict(content=b"nickname=Bob&muc=lobby", headers={**AUTH, **JSON}),
     400, "Body is not valid JSON"),
    ("body_not_an_object", dict(body=["Bob", ROOM]), 400, "Body must be a JSON object, not an array"),
    ("missing_nickname", dict(body={"muc": ROOM}), 400, "Missing 'nickname'"),
    ("missing_muc", dict(body={"nickname": "Bob"}), 400, "Missing 'muc'"),
    ("nickname_of_wrong_type", dict(body={"nickname": ["Bob"], "muc": ROOM}),
     400, "'nickname' must be a string, not an array"),
    ("reason_of_wrong_type", dict(body={"nickname": "Bob", "muc": ROOM, "reason": 42}),
     400, "'reason' must be a string, not a number"),
    ("malformed_room_jid", dict(body={"nickname": "Bob", "muc": "lobby@conference..localhost"}),
     400, "'muc' is not a valid room JID"),
    ("room_jid_that_fails_stringprep", dict(body={"nickname": "Bob", "muc": f"lob\ufffeby@{MUC_HOST}"}),
     400, "'muc' is not a valid room JID: it has characters JIDs may not contain"),
    ("nickname_that_fails_stringprep", dict(body={"nickname": "B\ufffeob", "muc": ROOM}),
     400, "'nickname' is not valid: it has characters nicknames may not contain"),
    ("occupant_jid_as_room", dict(body={"nickname": "Bob", "muc": f"{ROOM}/Bob"}),
     400, "'muc' must be a bare room JID"),
    ("body_not_declared_as_json", dict(content=json.dumps({"nickname": "Bob", "muc": ROOM}).encode(),
                                       headers={**AUTH, "Content-Type": "text/plain"}),
     415, "Body must be sent as Content-Type: application/json"),
    ("body_too_large", dict(body={"nickname": "Bob", "muc": ROOM, "reason": "x" * 5000}),
     413, "Body is larger than 4096 bytes"),
    ("room_on_another_host", dict(body={"nickname": "Bob", "muc": "lobby@localhost"}),
     404, "Room lobby@localhost is not on this MUC service"),
    ("room_that_does_not_exist", dict(body={"nickname": "Bob", "muc": f"nowhere@{MUC_HOST}"}),
     404, f"Room nowhere@{MUC_HOST} does not exist"),
    ("nickname_not_in_room", dict(body={"nickname": "Eve", "muc": ROOM}),
     404, f'Nobody with the nickname "Eve" is in the room {ROOM}'),
]


@pytest.mark.parametrize("request_args, status, error", [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
async def test_refused_request_answers_json_error_and_changes_nothing(start_kick_server, request_args, status, error):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, **request_args)

        assert status == response.status_code, response.text
        assert "application/json" == response.headers["content-type"]
        assert error in response.json()["error"]
        if status == 401:
            assert 'Basic realm="conference.localhost", Bearer realm="conference.localhost"' \
                == response.headers["www-authenticate"]
        await assert_still_in_room(alice, bob)


async def test_owner_cannot_be_kicked(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Alice", "muc": ROOM})

        assert 403 == response.status_code
        assert {"error": "Alice is an owner of the room; owners and admins cannot be kicked"} == response.json()
        alice.send_message(mto=ROOM, mbody="I am still here", mtype="groupchat")
        await bob.wait_for(match("message", from_=f"{ROOM}/Alice", body="I am still here"))


async def test_admin_cannot_be_kicked(start_kick_server):
    server = start_kick_server()
    async with lobby_with_bob(server) as (alice, bob):
        await alice.plugin["xep_0045"].set_affiliation(ROOM, jid="bob@localhost", affiliation="admin")
        await bob.wait_for(match("presence", from_=f"{ROOM}/Bob"))

        response = await kick(server, {"nickname": "Bob", "muc": ROOM})

        assert 403 == response.status_code
        assert {"error": "Bob is an admin of the room; owners and admins cannot be kicked"} == response.json()
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

    assert 405 == response.status_code
    assert "POST" == response.headers["allow"]
    assert "application/json" == response.headers["content-type"]
    assert {"error": "Only POST is allowed here"} == response.json()


# --- Tokens -----------------------------------------------------------------------------------------------------


async def test_room_token_from_prosodyctl_kicks_in_its_room(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--room", "lobby", "--label", "ci-bot")
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM, "reason": "Token kick"}, headers=bearer(token))

        assert 200 == response.status_code, response.text
        assert "Token kick" == kick_reason(await bob.wait_for(kicked("Bob")))

    log = server.log_text()
    nonce = claims_of(token)["nonce"]
    assert f'Kicked "Bob" from {ROOM} by HTTP request authorized with token {nonce} (ci-bot)' in log
    assert token not in log and token.split(".")[2] not in log and SECRET not in log


async def test_room_token_is_refused_in_another_room(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--room", OTHER_ROOM)
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))

        assert 403 == response.status_code
        assert {"error": f"This token does not cover the room {ROOM}"} == response.json()
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


async def test_expired_token_is_refused_with_401(start_kick_server):
    server = start_kick_server()
    now = int(time.time())
    token = make_token(SECRET, rooms=[ROOM], iat=now - 7200, exp=now - 3600)
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))

        assert 401 == response.status_code
        assert {"error": "Token has expired"} == response.json()
        assert "Bearer" in response.headers["www-authenticate"]
        await assert_still_in_room(alice, bob)


async def test_forged_token_is_refused_with_401(start_kick_server):
    server = start_kick_server()
    now = int(time.time())
    forged = make_token("not the server's secret, but long enough", iat=now, exp=now + 3600)
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(forged))

        assert 401 == response.status_code
        assert {"error": "Token signature does not match"} == response.json()
        await assert_still_in_room(alice, bob)


async def test_widened_token_scope_is_refused_with_401(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--room", "other")
    claims = {**claims_of(token), "scope": "service"}
    widened = f"v1.{b64url(json.dumps(claims).encode())}.{token.split('.')[2]}"
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(widened))

        assert 401 == response.status_code
        assert {"error": "Token signature does not match"} == response.json()
        await assert_still_in_room(alice, bob)


async def test_rotating_the_secret_revokes_tokens(start_kick_server):
    server = start_kick_server()
    token = create_token(server, "--service")
    server.config_path.write_text(server.config_path.read_text().replace(SECRET, SECRET[::-1]))
    server.restart()
    async with lobby_with_bob(server) as (alice, bob):
        response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(token))

        assert 401 == response.status_code
        assert {"error": "Token signature does not match"} == response.json()
        await assert_still_in_room(alice, bob)


async def test_prosodyctl_refuses_a_token_without_scope(start_kick_server):
    server = start_kick_server()

    with pytest.raises(RuntimeError, match="--room ROOM"):
        server.prosodyctl("mod_http_muc_kick", "create_token", server.muc_host)


async def test_prosody_13_shell_mints_a_room_token(start_kick_server, prosody_version):
    if prosody_version != "13":
        pytest.skip("Prosody 0.12 has no shell commands; its prosodyctl command is tested above")
    # The admin socket path must fit in a sockaddr_un, which pytest's temp paths may not.
    with tempfile.TemporaryDirectory(prefix="kick") as socket_dir:
        server = start_kick_server(global_modules=["admin_shell"],
                                   global_options={"admin_socket": f"{socket_dir}/admin.sock"})
        output = server.prosodyctl("shell", "muc_kick", "create_token", server.muc_host, "--room", "lobby",
                                   "--label", "shell-bot")
        tokens = TOKEN.findall(output)
        assert 1 == len(tokens), output
        assert f"(shell-bot) for {ROOM}, valid until" in output
        async with lobby_with_bob(server) as (alice, bob):
            response = await kick(server, {"nickname": "Bob", "muc": OTHER_ROOM}, headers=bearer(tokens[0]))
            assert 403 == response.status_code, response.text

            response = await kick(server, {"nickname": "Bob", "muc": ROOM}, headers=bearer(tokens[0]))
            assert 200 == response.status_code, response.text
            await bob.wait_for(kicked("Bob"))
        assert tokens[0] not in server.log_text()
        server.stop()  # while its socket folder still exists
