"""The rig itself, on Prosody core features only: accounts, a persistent room, groupchat, restart."""

import socket

import pytest

import rig

from rig import all_of, connect, create_room, has_status, join_room, match, room_exists

ROOM = "lounge@conference.localhost"


@pytest.mark.parametrize("storage", rig.STORAGES)
async def test_persistent_room_carries_groupchat_and_survives_restart(start_prosody, storage):
    prosody = start_prosody(storage=storage)
    alice = prosody.register("alice", "alice-pw")
    bob = prosody.register("bob", "bob-pw")

    async with connect(prosody, alice, "alice-pw") as a, connect(prosody, bob, "bob-pw") as b:
        await create_room(a, ROOM, "Alice", persistent=True)
        await join_room(b, ROOM, "Bob")
        await a.wait_for(all_of(match("presence", from_=f"{ROOM}/Bob"), lambda p: p["type"] != "unavailable"))

        a.send_message(mto=ROOM, mbody="hello from alice", mtype="groupchat")
        message = await b.wait_for(match("message", type="groupchat", body="hello from alice"))
        assert message["from"] == f"{ROOM}/Alice"

    prosody.restart()

    async with connect(prosody, bob, "bob-pw") as b:
        assert await room_exists(b, ROOM)
        presence = await join_room(b, ROOM, "Bob")
        assert 201 not in presence["muc"]["status_codes"]  # joined the old room, not a new one


async def test_transient_room_is_gone_after_restart(prosody):
    alice = prosody.register("alice", "alice-pw")
    async with connect(prosody, alice, "alice-pw") as a:
        await create_room(a, ROOM, "Alice", persistent=False)
        assert await room_exists(a, ROOM)

    prosody.restart()

    async with connect(prosody, alice, "alice-pw") as a:
        assert not await room_exists(a, ROOM)


async def test_wrong_password_is_refused(prosody):
    from rig import AuthError

    prosody.register("alice", "alice-pw")
    with pytest.raises(AuthError):
        async with connect(prosody, "alice@localhost", "wrong"):
            pass


async def test_daemonized_server_serves_and_stops(start_prosody):
    prosody = start_prosody(daemonize=True)
    assert prosody.pid and int(prosody.pid_file.read_text()) == prosody.pid
    alice = prosody.register("alice", "alice-pw")
    async with connect(prosody, alice, "alice-pw") as a:
        presence = await join_room(a, ROOM, "Alice")
        assert 201 in presence["muc"]["status_codes"]
        assert has_status(110, 201)(presence)
    prosody.stop()
    assert not prosody.is_running()


def test_sql_is_the_storage_connection_of_a_server(tmp_path):
    assert rig.Prosody("0.12", tmp_path / "internal").sql is None
    assert rig.Prosody("0.12", tmp_path / "sqlite", storage="sql").sql == rig.SQL
    connection = {"driver": "PostgreSQL", "database": "prosody7", "host": "127.0.0.1", "port": 5432,
                  "username": "postgres", "password": ""}
    server = rig.Prosody("0.12", tmp_path / "postgres", storage="postgres", sql=connection)
    assert server.sql == connection
    server.sql["database"] = "other"  # a copy: the server's config stays as it is
    assert server.sql["database"] == "prosody7"


def test_free_ports_are_distinct_and_fall_back_from_a_taken_wish():
    # The kernel may hand out a just-closed ephemeral port again: one server once got c2s and http on the same port.
    assert len(set(rig.free_ports(*[None] * 500))) == 500  # one at a time: duplicates in 50 of 50 tries
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        first, second = rig.free_ports(busy, busy)
    assert busy not in (first, second) and first != second
