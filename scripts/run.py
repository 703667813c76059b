"""`make run`: a local Prosody 0.12 in the foreground with every module in lua/ enabled, to try them by hand.

Everything lives in the git-ignored .run/: the modules (installed by `make install`, as a user would), config,
data, log and the generated credentials, which are kept so that a configured client keeps working across runs.
Ctrl-C (or SIGTERM) stops Prosody and exits.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import rig  # noqa: E402 (after the path); the config rendering and process control are the rig's

RUN = ROOT / ".run"
MODULES_DIR = RUN / "modules"
VERSION = "0.12"

# Where each module of lua/ goes; a module not listed goes on the component if its name says muc, else on the host.
MUC_MODULES = {"muc_hats_api", "muc_hats_adhoc", "http_muc_kick", "muc_media_metadata"}
HOST_MODULES = {"invites_adhoc"}
# Core modules that make the project's modules usable from a client.
CORE_HOST_MODULES = ["invites", "invites_register", "register", "adhoc", "admin_adhoc", "version", "time"]


def available_modules() -> list[str]:
    return sorted(p.name.removeprefix("mod_") for p in (ROOT / "lua").glob("mod_*") if p.is_dir())


def placement(modules: list[str]) -> tuple[list[str], list[str]]:
    """(host modules, MUC modules) for the modules found in lua/."""
    muc = [m for m in modules if m in MUC_MODULES or (m not in HOST_MODULES and "muc" in m)]
    host = [m for m in modules if m not in muc]
    return host, muc


def credentials() -> dict:
    """The admin password and the kick endpoint's header: generated once, then kept in .run/credentials.json."""
    path = RUN / "credentials.json"
    creds = json.loads(path.read_text()) if path.exists() else {}
    creds.setdefault("admin_password", secrets.token_urlsafe(12))
    creds.setdefault("kick_authorization", f"Bearer {secrets.token_urlsafe(24)}")
    creds.setdefault("kick_token_secret", secrets.token_urlsafe(33))
    path.write_text(json.dumps(creds, indent=2) + "\n")
    path.chmod(0o600)
    return creds


def install_modules() -> None:
    subprocess.run(
        ["make", "--no-print-directory", "install", f"MODULES_DIR={MODULES_DIR}"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def make_server(host_modules: list[str], muc_modules: list[str], creds: dict) -> rig.Prosody:
    ports = tuple(rig.free_ports(5222, 5280))
    log = [
        {"levels": {"min": "info"}, "to": "console"},
        {"levels": {"min": "debug"}, "to": "file", "filename": str(RUN / "prosody.log")},
    ]
    muc_options = {
        "http_muc_kick_authorization_header": creds["kick_authorization"],
        "http_muc_kick_token_secret": creds["kick_token_secret"],
        "muc_hats_room_commands": True,  # opt-in (default off): room owners may then enable hats in their rooms
    }
    host_options = {"allow_registration": False}  # accounts come from invites (or prosodyctl)
    return rig.Prosody(
        VERSION,
        RUN,
        MODULES_DIR,
        host_modules=CORE_HOST_MODULES + host_modules,
        muc_modules=muc_modules,
        global_options={"log": log},
        host_options=host_options,
        muc_options=muc_options,
        ports=ports,
        console=True,
    )


def print_info(server: rig.Prosody, creds: dict, host_modules: list[str], muc_modules: list[str]) -> None:
    kick = (
        f"curl -i -X POST {server.http_url('/muc_kick')} -H 'Host: {server.muc_host}' \\\n"
        f"       -H 'Authorization: {creds['kick_authorization']}' -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"nickname": "Bob", "muc": "room@{server.muc_host}"}}\''
    )
    print(
        f"""
Prosody {server.version} is running (data and log in {RUN}).
  modules on {server.host}: {", ".join(host_modules) or "none"}
  modules on {server.muc_host}: {", ".join(muc_modules) or "none"}

Log in with an XMPP client (no TLS; allow plain authentication on an unencrypted connection):
  address   {rig.ADMIN}
  password  {creds["admin_password"]}
  server    127.0.0.1, port {server.c2s_port}
  rooms     <name>@{server.muc_host}

Ad-hoc commands (XEP-0050) for the admin:
  {"on " + server.host:<15} invitations: create (account, contact, password reset), list, revoke, manage;
  {"":<15} newcomers register in band with an invitation only
  {"on a room":<15} hats (XEP-0317); its owners too, once they turn on enable_hats in the room's configuration

Kick an occupant over HTTP (mod_http_muc_kick, port {server.http_port}):
  {kick}

Ctrl-C stops the server.
""",
        flush=True,
    )
    errors = server.module_errors()
    if errors:
        print("Some modules failed to load:\n  " + "\n  ".join(errors), file=sys.stderr, flush=True)


def main() -> int:
    RUN.mkdir(exist_ok=True)
    install_modules()
    modules = available_modules()
    host_modules, muc_modules = placement(modules)
    creds = credentials()
    server = make_server(host_modules, muc_modules, creds)
    server.register(rig.ADMIN, creds["admin_password"])

    def forward(_signum, _frame):
        if server.is_running():
            os.kill(server.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    server.start(check_modules=False)
    print_info(server, creds, CORE_HOST_MODULES + host_modules, muc_modules)
    code = server.wait()
    print(f"Prosody stopped (exit code {code}).", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
