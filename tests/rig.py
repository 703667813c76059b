"""Integration rig: real Prosody 0.12 and 13 processes on loopback, and thin slixmpp/httpx helpers to drive them.

See tests/README.md for the API. scripts/run.py reuses the config rendering (`base_options`, `render_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = float(os.environ.get("RIG_TIMEOUT", "30"))  # only so that a missing event fails instead of hanging

# (prosody, prosodyctl) per version: 0.12 is the system's, 13 is unpacked by scripts/deps.sh.
BINARIES = {
    "0.12": ("/usr/bin/prosody", "/usr/bin/prosodyctl"),
    "13": (str(ROOT / ".deps/bin/prosody13"), str(ROOT / ".deps/bin/prosodyctl13")),
}
VERSIONS = os.environ.get("PROSODY_VERSIONS", "0.12 13").split()

HOST = "localhost"
MUC_HOST = "conference.localhost"
ADMIN = f"admin@{HOST}"
CORE_MODULES = ["roster", "saslauth", "disco", "ping", "posix"]
SQL = {"driver": "SQLite3", "database": "prosody.sqlite"}
# Global options and module that make a server export its metrics at /metrics (Prosody's mod_http_openmetrics, which
# answers loopback only), collected at each scrape: start_prosody(global_modules=METRICS_MODULES,
# global_options=METRICS_OPTIONS, ...), then `await prosody.metrics()`.
METRICS_MODULES = ["http_openmetrics"]
METRICS_OPTIONS = {"statistics": "internal", "statistics_interval": "manual"}
_METRIC_LINE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)')
_METRIC_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_AUDIT_FIELD = re.compile(r'([A-Za-z0-9_-]+)=(?:"((?:[^"\\]|\\.)*)"|(\S+))')
STORAGES = ("internal", "sql", "postgres")  # sql is SQLite3 in the data folder; postgres needs a PostgresServer
# Federation (s2s=True): each server listens for s2s on the standard port of its own loopback address, and resolves
# the names of its test's servers from one hosts file, with every other name under S2S_ZONE answered "no such name".
S2S_PORT = 5269  # where a server without SRV records is reached
S2S_ZONE = "test"  # RFC 6761's reserved name: federated servers are named <something>.test


# --- Config rendering -------------------------------------------------------------------------------------------

_LUA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def lua(value: Any) -> str:
    """Renders a Python value as a Lua literal, so that tests and run.py write options as plain Python."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = "".join(
            c if c.isprintable() and c not in '"\\' else "".join(f"\\{b:03d}" for b in c.encode()) for c in value
        )
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "{ " + "".join(f"{lua(v)}; " for v in value) + "}"
    if isinstance(value, dict):
        items = (f"{k} = {lua(v)}; " if _LUA_NAME.match(k) else f"[{lua(k)}] = {lua(v)}; " for k, v in value.items())
        return "{ " + "".join(items) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def base_options(
    workdir: Path,
    c2s_port: int,
    http_port: int,
    plugin_dir: Path | None,
    storage: str,
    sql: dict | None = None,
    host: str = HOST,
) -> dict:
    """Global options of a private loopback server: everything inside workdir, no TLS, no s2s (see s2s_options).
    `sql` is the connection of storage "postgres" (PostgresServer.create_database)."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
    if (storage == "postgres") != (sql is not None):
        raise ValueError("storage 'postgres', and only it, needs the sql connection of a PostgresServer")
    options = {
        "run_as_root": True,  # tests and CI run as root; Prosody refuses to otherwise
        "data_path": str(workdir / "data"),
        "pidfile": str(workdir / "prosody.pid"),
        "certificates": str(workdir / "certs"),  # empty: no TLS, but Prosody logs an error if it is missing
        "log": [{"levels": {"min": "debug"}, "to": "file", "filename": str(workdir / "prosody.log")}],
        "interfaces": ["127.0.0.1"],
        "c2s_ports": [c2s_port],
        "c2s_direct_tls_ports": [],
        "s2s_ports": [],
        "s2s_direct_tls_ports": [],
        "http_interfaces": ["127.0.0.1"],
        "http_ports": [http_port],
        "https_ports": [],
        "http_default_host": host,
        "admins": [f"admin@{host}"],
        "authentication": "internal_hashed",
        "c2s_require_encryption": False,
        "allow_unencrypted_plain_auth": True,
        "storage": "sql" if storage == "postgres" else storage,
        "modules_enabled": list(CORE_MODULES),
    }
    if storage == "sql":
        options["sql"] = dict(SQL)
    elif storage == "postgres":
        options["sql"] = dict(sql)
    if plugin_dir is not None:
        options["plugin_paths"] = [str(plugin_dir)]
    return options


def s2s_options(address: str, hosts_file: Path) -> dict:
    """Global options that let a server federate without TLS: s2s on `address`:S2S_PORT, server dialback, and
    names resolved from `hosts_file` (libunbound reads it; Prosody's own default ignores /etc/hosts)."""
    return {
        "s2s_ports": [S2S_PORT],
        "s2s_interfaces": [address],
        "s2s_require_encryption": False,
        "s2s_secure_auth": False,
        "unbound": {"hoststxt": str(hosts_file), "options": {"local-zone:": f"{S2S_ZONE}. static"}},
    }


def free_s2s_address() -> str:
    """A loopback address (127.64.0.1 to 127.254.255.254, away from the 127.0.0.x that tests bind) whose S2S_PORT
    is free."""
    for _attempt in range(100):
        address = f"127.{random.randint(64, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((address, S2S_PORT))
            except OSError:
                continue
            return address
    raise OSError(f"no loopback address with port {S2S_PORT} free")


def render_config(
    global_options: dict,
    host_options: dict,
    muc_options: dict,
    extra_hosts: dict[str, dict] | None = None,
    host: str = HOST,
) -> str:
    """The whole prosody.cfg.lua: global section, then VirtualHost `host` ("localhost"), its MUC component
    conference.`host` and any `extra_hosts` (VirtualHost name -> its options)."""
    lines = ["-- Generated by tests/rig.py; edits are overwritten.", ""]
    lines += [f"{k} = {lua(v)}" for k, v in global_options.items()]
    lines += ["", f"VirtualHost {lua(host)}"]
    lines += [f"\t{k} = {lua(v)}" for k, v in host_options.items()]
    lines += ["", f'Component {lua("conference." + host)} "muc"']
    lines += [f"\t{k} = {lua(v)}" for k, v in muc_options.items()]
    for name, options in (extra_hosts or {}).items():
        lines += ["", f"VirtualHost {lua(name)}"]
        lines += [f"\t{k} = {lua(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def write_config(
    workdir: Path,
    global_options: dict,
    host_options: dict,
    muc_options: dict,
    extra_hosts: dict | None = None,
    host: str = HOST,
) -> Path:
    """Writes workdir/prosody.cfg.lua and makes the folders base_options names; returns the config path."""
    for sub in ("data", "certs"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    path = workdir / "prosody.cfg.lua"
    path.write_text(render_config(global_options, host_options, muc_options, extra_hosts, host))
    return path


def free_ports(*preferred: int | None) -> list[int]:
    """Distinct loopback TCP ports nobody listens on, one per argument: the preferred port if it is free, else one
    the kernel picks. Every socket stays bound until all are picked, so the kernel never hands out one twice."""
    with contextlib.ExitStack() as held:
        ports = []
        for wish in preferred:
            s = held.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", wish or 0))
            except OSError:
                if not wish:
                    raise
                s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def free_port(preferred: int | None = None) -> int:
    """One port as `free_ports` picks them."""
    return free_ports(preferred)[0]


# --- The server -------------------------------------------------------------------------------------------------


class StartupError(RuntimeError):
    """Prosody did not come up, or a module the test asked for failed to load."""


class _PortTaken(Exception):
    pass


class Prosody:
    """One Prosody process with its own config, data, pid file and log in `workdir`."""

    def __init__(
        self,
        version: str,
        workdir: Path,
        plugin_dir: Path | None = None,
        *,
        host_modules: Iterable[str] = (),
        muc_modules: Iterable[str] = (),
        global_modules: Iterable[str] = (),
        global_options: dict | None = None,
        host_options: dict | None = None,
        muc_options: dict | None = None,
        extra_hosts: dict[str, dict] | None = None,
        storage: str = "internal",
        sql: dict | None = None,
        ports: tuple[int, int] | None = None,
        console: bool = False,
        domain: str = HOST,
        s2s_hosts: Path | None = None,
    ):
        if version not in BINARIES:
            raise ValueError(f"unknown Prosody version {version!r}; known: {' '.join(BINARIES)}")
        self.version = version
        self.host, self.muc_host = domain, f"conference.{domain}"
        self.dir = Path(workdir)
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self.console_path = self.dir / "console.log"
        self.pid_file = self.dir / "prosody.pid"
        self.data_dir = self.dir / "data"
        self.c2s_port, self.http_port = ports or free_ports(None, None)
        self._fixed_ports = ports is not None
        self.requested_modules = [*global_modules, *host_modules, *muc_modules]
        self.pid: int | None = None
        self.daemonized = False
        self.console = console  # True: Prosody's stdout goes to the terminal (run.py), else to console.log
        self._proc: subprocess.Popen | None = None

        self.storage = storage
        self._options = base_options(self.dir, self.c2s_port, self.http_port, plugin_dir, storage, sql, domain)
        self._options["modules_enabled"] += list(global_modules)
        self.s2s_address: str | None = None
        if s2s_hosts is not None:
            # Federated: its names go into the hosts file its test's servers share, before any of them looks one up.
            if not domain.endswith(f".{S2S_ZONE}"):
                raise ValueError(f"a federated server's domain must end in .{S2S_ZONE}, not {domain!r}")
            self.s2s_address = free_s2s_address()
            names = [self.host, self.muc_host, *(extra_hosts or {})]
            with open(s2s_hosts, "a") as f:
                f.write(f"{self.s2s_address} {' '.join(names)}\n")
            self._options.update(s2s_options(self.s2s_address, s2s_hosts))
            self._options["modules_enabled"].append("dialback")
        self._options.update(global_options or {})
        self._sections = (
            {"modules_enabled": list(host_modules), **(host_options or {})},
            {"modules_enabled": list(muc_modules), **(muc_options or {})},
            extra_hosts,
        )
        self._write_config()

    def _write_config(self) -> None:
        self._options.update(c2s_ports=[self.c2s_port], http_ports=[self.http_port])
        write_config(self.dir, self._options, *self._sections, self.host)

    def __repr__(self) -> str:
        return f"<Prosody {self.version} c2s={self.c2s_port} http={self.http_port} {self.dir}>"

    @property
    def sql(self) -> dict | None:
        """The `sql` option of storage "sql" and "postgres" (driver, database, and host, port, username for
        PostgreSQL), a copy; None for internal storage."""
        sql = self._options.get("sql")
        return dict(sql) if sql is not None else None

    # Process control

    def start(self, daemonize: bool = False, check_modules: bool = True) -> None:
        """Starts the server and returns once it serves XMPP; raises StartupError with the log tail otherwise."""
        if self.is_running():
            raise RuntimeError(f"{self} is already running")
        for _attempt in range(3):
            try:
                return self._start(daemonize, check_modules)
            except _PortTaken:
                # Another process bound a port between free_port() and Prosody: Prosody logs it and runs on.
                self.stop()
                if self._fixed_ports:
                    raise StartupError(f"{self}: port in use" + self._tail_for_error()) from None
                self.c2s_port, self.http_port = free_ports(None, None)
                self._write_config()
            except StartupError:
                with contextlib.suppress(Exception):
                    self.stop()  # a half-started server runs in its own session: nothing else would end it
                raise
        raise StartupError(f"{self}: ports kept being taken" + self._tail_for_error())

    def _start(self, daemonize: bool, check_modules: bool) -> None:
        prosody = BINARIES[self.version][0]
        args = [prosody, "-D" if daemonize else "-F", "--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.pid_file.unlink(missing_ok=True)
        self.daemonized = daemonize
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + TIMEOUT
        # Own session: a Ctrl-C meant for pytest or run.py does not reach Prosody; stop() does.
        with open(self.console_path, "ab") if not self.console else contextlib.nullcontext() as console:
            self._proc = subprocess.Popen(
                args,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT if console else None,
                start_new_session=True,
            )
        if daemonize:
            self._wait_for_daemon(deadline)
        else:
            self.pid = self._proc.pid
        self._wait_until_serving(deadline, log_start)
        if check_modules:
            failed = [line for m in self.requested_modules for line in self.module_errors(m, since=log_start)]
            if failed:
                raise StartupError(f"{self}: modules failed to load:\n" + "\n".join(failed) + self._tail_for_error())

    def stop(self) -> None:
        """SIGTERM and wait for the process to end; raises if it had to be killed (a shutdown bug)."""
        if not self.is_running():
            self._reap()
            return
        pid = self.pid
        os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, TIMEOUT):
            os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, TIMEOUT)
            self._reap()
            raise RuntimeError(f"{self} ignored SIGTERM for {TIMEOUT}s and was killed" + self._tail_for_error())
        self._reap()

    def wait(self) -> int:
        """Blocks until a foreground server exits by itself (run.py); returns its exit code."""
        return self._proc.wait()

    def restart(self) -> None:
        """Stops and starts on the same config and data (persistent rooms survive), in the same mode."""
        self.stop()
        self.start(daemonize=self.daemonized)

    def reload(self, *, global_options: dict | None = None, host_options: dict | None = None,
               muc_options: dict | None = None) -> None:
        """Merges options into the config's sections, rewrites it and makes Prosody re-read it with SIGHUP, as
        `prosodyctl reload` does: that fires config-reloaded but reloads no module. Returns once Prosody logged the
        reload; it handles the event before any stanza that arrives later."""
        self._options.update(global_options or {})
        self._sections[0].update(host_options or {})
        self._sections[1].update(muc_options or {})
        self._write_config()
        log_start = self.log_path.stat().st_size
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while "Reloading configuration file" not in self.log_text(log_start):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} did not reload its config within {TIMEOUT}s" + self._tail_for_error())
            time.sleep(0.05)  # a log line has no event to wait on; bounded by the deadline

    def is_running(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None and self._proc.pid == self.pid:
            return self._proc.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return not _is_zombie(self.pid)

    def _wait_for_daemon(self, deadline: float) -> None:
        """-D forks: wait for the launcher to exit, then for the daemon's pid in the pid file."""
        try:
            code = self._proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            raise StartupError(f"{self}: prosody -D did not detach" + self._tail_for_error()) from None
        if code != 0:
            raise StartupError(f"{self}: prosody -D exited with {code}" + self._tail_for_error())
        while time.monotonic() < deadline:
            text = self.pid_file.read_text().strip() if self.pid_file.exists() else ""
            if text.isdigit():
                self.pid = int(text)
                return
            time.sleep(0.05)  # the pid file has no event to wait on; bounded by the deadline
        raise StartupError(f"{self}: no pid in {self.pid_file}" + self._tail_for_error())

    def _wait_until_serving(self, deadline: float, log_start: int) -> None:
        """Ready means the main loop answers a stream header: startup, with every host and module, is over."""
        header = (
            f"<?xml version='1.0'?><stream:stream to='{self.host}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ).encode()
        while time.monotonic() < deadline:
            if not self.is_running():
                raise StartupError(f"{self} exited during startup" + self._tail_for_error())
            if "Failed to open server port" in self.log_text(log_start):
                raise _PortTaken()
            try:
                # Short probes: the port may belong to someone else (see _PortTaken) who never answers.
                with socket.create_connection(("127.0.0.1", self.c2s_port), timeout=1) as s:
                    s.sendall(header)
                    reply = b""
                    while b"features" not in reply:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        reply += chunk
                    if b"features" in reply and "Failed to open server port" not in self.log_text(log_start):
                        return
            except (TimeoutError, ConnectionRefusedError, ConnectionResetError):
                pass
            time.sleep(0.05)  # port not open yet; bounded by the deadline
        raise StartupError(f"{self} did not serve c2s within {TIMEOUT}s" + self._tail_for_error())

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        # Not our child (daemonized): a pidfd becomes readable when the process exits.
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=TIMEOUT)
        self._proc, self.pid = None, None

    # Accounts

    def register(self, user: str, password: str) -> str:
        """Creates an account with prosodyctl, as an admin would; returns the bare JID."""
        node = user.split("@")[0]
        for _attempt in range(50):
            try:
                self.prosodyctl("register", node, self.host, password)
                return f"{node}@{self.host}"
            except RuntimeError as e:
                # SQLite: the running server may hold the write lock (13's mod_cron writes 1 s after start), and
                # neither LuaDBI nor lsqlite3 waits for it. The lock is transient, so try again.
                if "database is locked" not in str(e):
                    raise
                last_error = e
                time.sleep(0.1)
        raise last_error

    def prosodyctl(self, *args: str) -> str:
        """Runs prosodyctl of this version on this config; raises with its output if it fails."""
        ctl = BINARIES[self.version][1]
        cmd = [ctl, "--config", str(self.config_path), *args]
        proc = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    # Logs

    def log_text(self, since: int = 0) -> str:
        """The log (of every start in this folder), from byte offset `since`."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_errors(self) -> list[str]:
        """Log lines at level error (the file sink writes `time source<TAB>level<TAB>message`)."""
        return [line for line in self.log_text().splitlines() if "\terror\t" in line]

    def audit(self, since: int = 0) -> list[tuple[str, str, dict[str, str]]]:
        """The audit lines of compat.audit (`AUDIT <action> key=value key="quoted" ...` at info) in the log, from
        byte offset `since`, as (source, action, fields): source is the logger, e.g. `conference.localhost:muc_x`."""
        found = []
        for line in self.log_text(since).splitlines():
            head, _, message = line.partition("\tinfo\tAUDIT ")
            if not message:
                continue
            action, _, rest = message.partition(" ")
            fields = {
                key: re.sub(r'\\x([0-9a-f]{2})|\\(.)', lambda m: chr(int(m[1], 16)) if m[1] else m[2], quoted)
                if quoted else bare
                for key, quoted, bare in _AUDIT_FIELD.findall(rest)
            }
            found.append((head.split()[-1], action, fields))
        return found

    def module_errors(self, name: str | None = None, since: int = 0) -> list[str]:
        """Lines where Prosody says a module (`name` without `mod_`, or any) failed to load or initialise."""
        pattern = re.compile(
            r"(Unable to load module|Error initializing module|Error loading module) '%s'"
            % (re.escape(name) if name else "[^']+")
        )
        return [line for line in self.log_text(since).splitlines() if pattern.search(line)]

    def console_text(self) -> str:
        return self.console_path.read_text(errors="replace") if self.console_path.exists() else ""

    def _tail_for_error(self) -> str:
        return f"\n--- console ---\n{self.console_text()[-2000:]}\n--- log tail ---\n{self.log_tail(40)}"

    # HTTP

    def http_url(self, path: str) -> str:
        """URL on the loopback HTTP port; without a Host header naming another host, Prosody serves localhost's."""
        return f"http://127.0.0.1:{self.http_port}/{path.lstrip('/')}"

    async def metrics(self) -> Metrics:
        """The server's /metrics, parsed (it must run with METRICS_MODULES and METRICS_OPTIONS)."""
        async with self.http_client() as http:
            response = await http.get("/metrics")
        response.raise_for_status()
        return Metrics(response.text)

    def http_client(self, host: str | None = None, **kwargs) -> httpx.AsyncClient:
        """An httpx client on this server; `host` (default localhost) selects the Prosody host of the route."""
        headers = {"Host": host or self.host, **kwargs.pop("headers", {})}
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.http_port}", headers=headers, timeout=TIMEOUT, **kwargs
        )


class Metrics(dict):
    """Samples of an OpenMetrics text: (sample name, frozenset of (label, value)) -> float; plus the HELP and UNIT
    lines by family name. `value(name, **labels)` finds one sample."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text
        self.help: dict[str, str] = {}
        self.unit: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# UNIT "):
                _, kind, family, *rest = line.split(" ", 3)
                (self.help if kind == "HELP" else self.unit)[family] = rest[0] if rest else ""
                continue
            found = _METRIC_LINE.match(line)
            if not found or line.startswith("#"):
                continue
            name, labels, value = found.groups()
            self[(name, frozenset(_METRIC_LABEL.findall(labels or "")))] = float(value)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` whose labels include `labels` (exactly one must match), or None when none does."""
        wanted = set(labels.items())
        found = [v for (n, ls), v in self.items() if n == name and wanted <= ls]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples of {name} match {labels}; name more labels")
        return found[0] if found else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --- PostgreSQL ------------------------------------------------------------------------------------------------


class PostgresServer:
    """A private PostgreSQL cluster for storage "postgres": Debian's server binaries, `initdb` into `workdir`,
    listening on a free loopback port with trust authentication, run as the `postgres` user (initdb refuses root).
    Its folder is a new one under the system's temp folder, since pytest's (mode 700, root's) is closed to that user;
    stop() removes it. The system's own cluster is never touched. Each Prosody gets a database of its own
    (`create_database`)."""

    USER = "postgres"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="prosody-native-postgres-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = free_port()
        self._databases = 0
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bindirs:
            raise RuntimeError("PostgreSQL server binaries are missing: run `make deps` (Debian's postgresql package)")
        self.bin = bindirs[-1]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        as_postgres = ["runuser", "-u", self.USER, "--"] if os.geteuid() == 0 else []
        proc = subprocess.run(
            [*as_postgres, *args], cwd="/", capture_output=True, text=True, timeout=TIMEOUT * 2, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.USER, self.USER)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-o", options,
                  "-w", "-t", str(int(TIMEOUT)), "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Runs SQL as the superuser; returns psql's unaligned output."""
        return self._run(
            str(self.bin / "psql"),
            "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, "-d", database, "-At", "-v", "ON_ERROR_STOP=1",
            "-c", sql,
        ).stdout

    def create_database(self) -> dict:
        """A new empty database; returns the `sql` option that points Prosody's mod_storage_sql at it."""
        self._databases += 1
        name = f"prosody{self._databases}"
        self.psql(f"CREATE DATABASE {name}")
        return {"driver": "PostgreSQL", "database": name, "host": "127.0.0.1", "port": self.port,
                "username": self.USER, "password": ""}


# --- XMPP clients -----------------------------------------------------------------------------------------------

PLUGINS = ["xep_0030", "xep_0004", "xep_0045", "xep_0050", "xep_0199", "xep_0077", "xep_0092", "xep_0066"]
Predicate = Callable[[Any], bool]


class AuthError(Exception):
    """The server refused the credentials."""


class Client(slixmpp.ClientXMPP):
    """A slixmpp client for loopback tests: plain TCP, PLAIN/SCRAM without TLS, and an inbox to wait on."""

    def __init__(self, jid: str, password: str):
        super().__init__(
            jid,
            password,
            plugin_config={"feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}},
            sasl_mech="PLAIN",  # loopback only; slixmpp's SCRAM costs ~0.15 s of CPU per login
        )
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        for plugin in PLUGINS:
            self.register_plugin(plugin)
        self._arrivals: asyncio.Queue = asyncio.Queue()
        self._held: list = []  # arrived, not yet taken by a wait_for
        for kind in ("message", "presence"):  # raw handlers: slixmpp's events skip repeated MUC presences
            self.register_handler(Callback(f"rig inbox {kind}", StanzaPath(kind), self._arrivals.put_nowait))

    async def wait_for(self, predicate: Predicate, timeout: float = TIMEOUT):
        """The next received stanza matching `predicate` (earlier arrivals included); others stay for later waits."""
        for i, stanza in enumerate(self._held):
            if predicate(stanza):
                return self._held.pop(i)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    stanza = await self._arrivals.get()
                    if predicate(stanza):
                        return stanza
                    self._held.append(stanza)
        except TimeoutError:
            seen = "\n".join(str(s) for s in self._held[-10:]) or "(nothing)"
            raise TimeoutError(
                f"{self.boundjid}: no matching stanza within {timeout}s; last received:\n{seen}"
            ) from None

    def arrived(self, predicate: Predicate) -> list:
        """Stanzas received so far that match `predicate` and no wait_for took, without waiting (they stay)."""
        while not self._arrivals.empty():
            self._held.append(self._arrivals.get_nowait())
        return [stanza for stanza in self._held if predicate(stanza)]


def match(kind: str, **fields: str) -> Predicate:
    """Predicate on the stanza name ("message" or "presence") and fields, e.g. match("message", body="hi")."""
    wanted = {k.rstrip("_"): str(v) for k, v in fields.items()}
    return lambda st: st.name == kind and all(str(st[k]) == v for k, v in wanted.items())


def has_status(*codes: int) -> Predicate:
    """Predicate: a MUC presence/message carrying all these status codes (110 self, 201 created, 307 kicked...)."""
    return lambda st: set(codes) <= set(st["muc"]["status_codes"]) if st.name in ("presence", "message") else False


def all_of(*predicates: Predicate) -> Predicate:
    return lambda st: all(p(st) for p in predicates)


@contextlib.asynccontextmanager
async def connect(prosody: Prosody, jid: str, password: str, *, resource: str | None = None):
    """An authenticated, available client on `prosody`; disconnects on exit."""
    client = Client(f"{jid}/{resource}" if resource else jid, password)
    started = asyncio.get_running_loop().create_future()

    def fail(error):
        if not started.done():
            started.set_exception(error)

    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(None))
    client.add_event_handler("failed_all_auth", lambda _: fail(AuthError(f"{jid} was refused by {prosody}")))
    client.add_event_handler("connection_failed", lambda e: fail(ConnectionError(f"{jid}: {e}")))
    client.add_event_handler("disconnected", lambda reason: fail(ConnectionError(f"{jid}: disconnected: {reason}")))
    client.connect("127.0.0.1", prosody.c2s_port)
    try:
        async with asyncio.timeout(TIMEOUT):
            await started
        client.send_presence()
        yield client
    finally:
        client.cancel_connection_attempt()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(TIMEOUT):
                await client.disconnect(wait=TIMEOUT)


async def join_room(client: Client, room: str, nick: str, password: str | None = None):
    """Joins `room` as `nick` with no history; returns the self-presence (raises PresenceError on error)."""
    presence, _subject, _occupants, _history = await client.plugin["xep_0045"].join_muc_wait(
        slixmpp.JID(room), nick, password=password, maxstanzas=0, timeout=TIMEOUT
    )
    return presence


async def create_room(client: Client, room: str, nick: str, *, persistent: bool = True, config: dict | None = None):
    """Creates `room` with `client` as owner and submits its config form, which also unlocks it."""
    presence = await join_room(client, room, nick)
    if 201 not in presence["muc"]["status_codes"]:
        raise AssertionError(f"{room} already existed: {presence}")
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    fields = {"muc#roomconfig_persistentroom": persistent, **(config or {})}
    for var, value in fields.items():
        form.add_field(var=var, value=value)
    await client.plugin["xep_0045"].set_room_config(room, form, timeout=TIMEOUT)
    return presence


async def room_exists(client: Client, room: str) -> bool:
    """disco#info on the room: True if it answers, False on item-not-found."""
    try:
        await client.plugin["xep_0030"].get_info(jid=room, timeout=TIMEOUT)
    except IqError as e:
        if e.iq["error"]["condition"] == "item-not-found":
            return False
        raise
    return True


async def run_command(client: Client, jid: str, node: str, fields: dict | None = None):
    """Runs an ad-hoc command (XEP-0050): execute, then submit `fields` if given; returns the last <command/>."""
    iq = client.make_iq_set(ito=jid)
    iq["command"]["node"] = node
    iq["command"]["action"] = "execute"
    result = await iq.send(timeout=TIMEOUT)
    command = result["command"]
    if fields is None or command["status"] == "completed":
        return command
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in fields.items():
        form.add_field(var=var, value=value)
    iq = client.make_iq_set(ito=jid)
    iq["command"]["node"] = node
    iq["command"]["sessionid"] = command["sessionid"]
    iq["command"]["action"] = "complete"
    iq["command"].append(form)
    result = await iq.send(timeout=TIMEOUT)
    return result["command"]
