#!/usr/bin/env python3
"""Benchmark of mod_http_muc_kick on a real Prosody, once per version in PROSODY_VERSIONS (default "0.12 13").

1. Throughput and latency under load: wrk (Debian's) keeps 32 connections busy with POSTs to
   - the peer: a trivial Prosody HTTP route on the same server (tests/plugins/mod_bench_http_trivial.lua, a fixed
     JSON answer), sent the very same request as the kick it is compared with, so only the route differs;
   - Prosody's own 404 for a path no module serves (the reference the review measured the original against);
   - /muc_kick with a valid token: every check runs (per-address and per-credential rate limits, the token (verified
     once, then found in the module's cache), the deny list of 1000 revoked ids, the body, the room), and the answer
     is a 404 because the nickname is nobody's (a real kick adds MUC's own work, the same for any caller);
   - /muc_kick with an invalid token (signed with another secret): refused with a 401 and an audit line each;
   - a trivial refusal (the same test module): the same 401 answer and audit line and nothing else, the least a
     refused credential can cost, to which the invalid token is compared as well.
   Reported per kind: requests per second, p50/p99 latency, and Prosody's CPU time per request (from
   /proc/<pid>/stat, which a shared machine disturbs least), with the ratios to the trivial route against the
   1.1x goal, and the count of 5xx answers (must be 0). Each kind runs ROUNDS times, interleaved; medians are
   reported. The rate limits are on, set high enough not to refuse. Then the invalid token again, from one address
   with the default limits: the flood an attacker would send, answered 429 after the first 60.
2. A large body: one 9 MiB POST with a wrong credential, with Prosody's default http_max_content_size (read whole,
   then refused) and with it lowered to 256 KiB as the module README suggests (refused before it is read):
   Prosody's CPU time and peak memory growth for each.

Run by `make bench` (scripts/bench.sh) or directly: .venv/bin/python scripts/bench_kick.py. Needs `make`, `make deps`
and wrk (`apt-get install wrk`; scripts/deps.sh installs it). Variables: BENCH_SECONDS (per run, default 5),
BENCH_ROUNDS (default 3). Exits non-zero when a 5xx or a socket error was seen, or something breaks; a missed
ratio goal is printed, not fatal, since a shared machine makes figures noisy.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import rig  # noqa: E402

WRK_SCRIPT = ROOT / "scripts/bench_kick/post.lua"
CONNECTIONS = 32
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
GOAL = 1.1
TRIVIAL = "trivial route"
OWN_404 = "Prosody's own 404 (unknown path)"
REFUSAL = "trivial refusal (401 + audit line)"
INVALID = "kick, invalid token"
REVOKED_IDS = 1000
ROOM = f"bench@{rig.MUC_HOST}"
SECRET = "bench-secret-4e1f0c9a7b2d8e3f6a5c1d0b9e8f7a6c"
OTHER_SECRET = "another-secret-9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4"
BODY = '{"nickname":"Nobody","muc":"%s","reason":"benchmark"}' % ROOM
NO_LIMIT = 1_000_000_000
LARGE_BODY = 9 * 1024 * 1024


def install_modules(target: Path) -> None:
    subprocess.run(["make", "--no-print-directory", "install", f"MODULES_DIR={target}"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def seed_deny_list(data_dir: Path, count: int) -> None:
    """Writes `count` revoked token ids into the token registry as Prosody's internal storage keeps it (one file per
    id), so that the deny list the module loads at start has that many entries."""
    store = data_dir / "conference%2elocalhost" / "http_muc_kick_tokens"
    store.mkdir(parents=True, exist_ok=True)
    expires = int(time.time()) + 86400
    for i in range(count):
        token_id = f"revoked{i:015d}"  # 22 base64url characters: 16 bytes, like a real id
        (store / f"{token_id}.dat").write_text(f'return {{ ["revoked_at"] = 1; ["expires_at"] = {expires}; }};\n')


def wrk(server, path: str, authorization: str) -> dict:
    url = f"http://127.0.0.1:{server.http_port}{path}"
    proc = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--timeout", "10s", "-s", str(WRK_SCRIPT), url, "--",
         rig.MUC_HOST, authorization, BODY],
        capture_output=True, text=True, timeout=SECONDS + 60, check=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{proc.stdout}{proc.stderr}")
    fields = dict(re.findall(r"(\w+)=(\d+)", line))
    statuses = {int(k[7:]): int(v) for k, v in fields.items() if k.startswith("status_")}
    return {
        "requests": int(fields["requests"]),
        "rps": int(fields["requests"]) / (int(fields["duration_us"]) / 1e6),
        "p50_ms": int(fields["p50_us"]) / 1000,
        "p99_ms": int(fields["p99_us"]) / 1000,
        "socket_errors": int(fields["socket_errors"]),
        "statuses": statuses,
    }


def start_server(version: str, modules_dir: Path, workdir: Path, limited: bool = False,
                 **global_options) -> rig.Prosody:
    """A server with the module and the trivial route, a seeded deny list, and rate limits that never refuse (or the
    module's defaults when `limited`)."""
    limits = {} if limited else {"http_muc_kick_rate_limit_per_address": NO_LIMIT,
                                 "http_muc_kick_rate_limit_per_credential": NO_LIMIT}
    server = rig.Prosody(
        version, workdir, modules_dir,
        muc_modules=["http_muc_kick", "bench_http_trivial"],
        global_options={
            "plugin_paths": [str(modules_dir), str(ROOT / "tests/plugins")],
            # info, as in production: the rig's debug log would write lines for every request of every kind
            "log": [{"levels": {"min": "info"}, "to": "file", "filename": str(workdir / "prosody.log")}],
            **global_options,
        },
        muc_options={"http_muc_kick_token_secret": SECRET, **limits},
    )
    seed_deny_list(server.data_dir, REVOKED_IDS)
    server.start()
    if f"revoked={REVOKED_IDS}" not in server.log_text():
        server.stop()
        raise RuntimeError("the module did not load the seeded deny list:\n" + server.log_tail(20))
    return server


def mint(version: str, modules_dir: Path, secret: str) -> str:
    """A service-wide token for the MUC host, minted offline by prosodyctl with `secret`."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-kick-mint-{version}-"))
    try:
        ctl = rig.Prosody(version, workdir, modules_dir, muc_modules=["http_muc_kick"],
                          muc_options={"http_muc_kick_token_secret": secret})
        return ctl.prosodyctl("mod_http_muc_kick", "create_token", rig.MUC_HOST, "--service").strip()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def throughput(version: str, modules_dir: Path, kinds: dict, limited: bool, rounds: int) -> dict:
    """Runs each kind (name -> (path, Authorization, expected statuses)) `rounds` times, interleaved, on one server."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-kick-{version}-"))
    server = start_server(version, modules_dir, workdir, limited)
    try:
        server.register("alice", "pw")
        async with rig.connect(server, "alice@localhost", "pw") as alice:
            await rig.create_room(alice, ROOM, "Alice")
            runs = {kind: [] for kind in kinds}
            first_path, first_authorization, _ = next(iter(kinds.values()))
            wrk(server, first_path, first_authorization)  # warm-up
            for round_ in range(rounds):
                order = list(kinds) if round_ % 2 == 0 else list(reversed(kinds))
                for kind in order:
                    path, authorization, expected = kinds[kind]
                    before = cpu_seconds(server.pid)
                    run = wrk(server, path, authorization)
                    run["cpu_us"] = (cpu_seconds(server.pid) - before) / max(run["requests"], 1) * 1e6
                    run["unexpected"] = {s: n for s, n in run["statuses"].items() if s not in expected}
                    runs[kind].append(run)
        if server.log_errors():
            raise RuntimeError("Prosody logged errors:\n" + "\n".join(server.log_errors()[:10]))
        return runs
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def large_body(version: str, modules_dir: Path, lowered: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-kick-large-{version}-"))
    options = {"http_max_content_size": 256 * 1024} if lowered else {}
    server = start_server(version, modules_dir, workdir, **options)
    try:
        pid = server.pid
        baseline = peak_kib(pid)
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = cpu_seconds(pid)
        async with server.http_client(host=rig.MUC_HOST) as http:
            try:
                response = await http.post("/muc_kick", content=b" " * LARGE_BODY,
                                           headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"})
                status = response.status_code
            except httpx.TransportError as e:  # closed with the body unread: the client may see a reset instead
                status = type(e).__name__
        return {"status": status, "cpu_ms": (cpu_seconds(pid) - before) * 1000,
                "growth_mib": (peak_kib(pid) - baseline) / 1024}
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_runs(title: str, runs: dict) -> bool:
    """Prints one table of medians and the ratios to the trivial route; whether no 5xx or socket error was seen."""
    print(f"\n{title}")
    print(f"{'kind':<34} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'5xx':>4} {'sock err':>8}")
    ok = True
    for kind, kind_runs in runs.items():
        fivexx = sum(n for r in kind_runs for s, n in r["statuses"].items() if s >= 500)
        socket_errors = sum(r["socket_errors"] for r in kind_runs)
        ok = ok and fivexx == 0 and socket_errors == 0
        print(f"{kind:<34} {median(kind_runs, 'rps'):7.0f} {median(kind_runs, 'p50_ms'):7.2f} "
              f"{median(kind_runs, 'p99_ms'):7.2f} {median(kind_runs, 'cpu_us'):10.1f} {fivexx:4d} {socket_errors:8d}")
        for r in kind_runs:
            if r["unexpected"]:
                print(f"  unexpected answers for {kind}: {r['unexpected']}")
    trivial = runs[TRIVIAL]
    for kind in runs:
        if kind in (TRIVIAL, OWN_404, REFUSAL):
            continue
        cost = median(runs[kind], "cpu_us") / median(trivial, "cpu_us")
        time_ratio = median(trivial, "rps") / median(runs[kind], "rps")
        tail = median(runs[kind], "p99_ms") / median(trivial, "p99_ms")
        verdict = "met" if max(cost, time_ratio) <= GOAL else "MISSED"
        print(f"  {kind} / {TRIVIAL}: CPU per request {cost:.2f}x, time per request (1/throughput) "
              f"{time_ratio:.2f}x, p99 {tail:.2f}x; goal <= {GOAL}x: {verdict}")
        # Prosody's own 404 for every kind; the trivial refusal for the refused token, whose least cost it is.
        for peer in (OWN_404, REFUSAL) if kind == INVALID else (OWN_404,):
            if peer in runs:
                print(f"  {kind} / {peer}: CPU per request "
                      f"{median(runs[kind], 'cpu_us') / median(runs[peer], 'cpu_us'):.2f}x")
    return ok


async def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install wrk (make deps installs it)", file=sys.stderr)
        return 1
    versions = os.environ.get("PROSODY_VERSIONS", "0.12 13").split()
    tmp = Path(tempfile.mkdtemp(prefix="bench-kick-"))
    ok = True
    try:
        modules_dir = tmp / "modules"
        install_modules(modules_dir)
        for version in versions:
            valid = f"Bearer {mint(version, modules_dir, SECRET)}"
            invalid = f"Bearer {mint(version, modules_dir, OTHER_SECRET)}"
            # The trivial route gets the same request as the kinds it is compared with: only the path differs.
            runs = await throughput(version, modules_dir, {
                TRIVIAL: ("/bench_http_trivial", valid, {200}),
                OWN_404: ("/no_such_route", valid, {404}),
                "kick, valid token": ("/muc_kick", valid, {404}),
                INVALID: ("/muc_kick", invalid, {401}),
                REFUSAL: ("/bench_http_trivial/refused", invalid, {401}),
            }, limited=False, rounds=ROUNDS)
            ok = print_runs(f"mod_http_muc_kick on Prosody {version}: {CONNECTIONS} connections, {ROUNDS} x {SECONDS} s "
                            f"per kind (medians), deny list of {REVOKED_IDS} ids, rate limits on but never reached",
                            runs) and ok
            flood = await throughput(version, modules_dir, {
                TRIVIAL: ("/bench_http_trivial", invalid, {200}),
                "kick, invalid token, default limits": ("/muc_kick", invalid, {401, 429}),
            }, limited=True, rounds=1)
            ok = print_runs(f"The same invalid token from one address with the default rate limits (60 per minute): "
                            f"all but the first 60 answered 429", flood) and ok
            default, lowered = [await large_body(version, modules_dir, lowered) for lowered in (False, True)]
            print(f"9 MiB body, wrong credential: default http_max_content_size: {default['status']}, "
                  f"{default['cpu_ms']:.0f} ms CPU, +{default['growth_mib']:.0f} MiB peak; "
                  f"http_max_content_size = 256 KiB: {lowered['status']}, {lowered['cpu_ms']:.0f} ms CPU, "
                  f"+{lowered['growth_mib']:.0f} MiB peak")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not ok:
        print("5xx answers or socket errors were seen", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
