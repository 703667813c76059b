"""Fixtures of the integration suite: modules installed once per session, Prosody servers per test and version."""

from __future__ import annotations

import os
import subprocess

import pytest

import rig


@pytest.fixture(params=rig.VERSIONS, ids=lambda v: f"p{v}")
def prosody_version(request) -> str:
    """Every test that needs a server runs once per version in PROSODY_VERSIONS."""
    return request.param


@pytest.fixture(scope="session")
def modules_dir(tmp_path_factory):
    """Installs the modules as a user would (`make install MODULES_DIR=...`), once per session."""
    target = tmp_path_factory.mktemp("modules")
    command = ["make", "--no-print-directory", "install", f"MODULES_DIR={target}"]
    if os.environ.get("RIG_NO_REBUILD"):
        # Install the library as built last time, for quick runs of Lua-only changes.
        command += ["-o", "build/prosody_native.so"]
    proc = subprocess.run(
        command,
        cwd=rig.ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"make install failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return target


@pytest.fixture(scope="session")
def postgres():
    """One private PostgreSQL cluster for the session, started on first use (storage="postgres")."""
    server = rig.PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_prosody(request, prosody_version, modules_dir, tmp_path):
    """Factory: start_prosody(host_modules=..., muc_options=..., ...) -> a started rig.Prosody, stopped at teardown.
    storage="postgres" gives the server a new database in the session's PostgreSQL cluster. s2s=True (with
    domain="<name>.test") lets it federate with the test's other s2s servers; since a server reads their names when
    it starts, create them all with start=False (which returns the server unstarted), then start() each."""
    servers: list[rig.Prosody] = []
    request.node.prosody_servers = servers  # for the log tail on failure

    def start(
        *, daemonize: bool = False, check_modules: bool = True, s2s: bool = False, start: bool = True, **options
    ) -> rig.Prosody:
        if options.get("storage") == "postgres":
            options["sql"] = request.getfixturevalue("postgres").create_database()
        if s2s:
            options["s2s_hosts"] = tmp_path / "s2s-hosts"  # one per test: its federated servers find each other
        server = rig.Prosody(prosody_version, tmp_path / f"prosody{len(servers)}", modules_dir, **options)
        servers.append(server)
        if start:
            server.start(daemonize=daemonize, check_modules=check_modules)
        return server

    yield start
    errors = []
    for server in servers:
        try:
            server.stop()
        except Exception as e:  # stop every server, then report
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def prosody(start_prosody) -> rig.Prosody:
    """A started server with the rig's defaults and no extra modules."""
    return start_prosody()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Adds the tail of each Prosody log of a failed test to its report."""
    report = yield
    if report.failed:
        for i, server in enumerate(getattr(item, "prosody_servers", [])):
            name = f"prosody p{server.version}" + (f" #{i}" if i else "")
            report.sections.append((f"{name} log ({server.log_path})", server.log_tail(60) or "(empty)"))
            console = server.console_text().strip()
            if console:
                report.sections.append((f"{name} console", console[-3000:]))
    return report
