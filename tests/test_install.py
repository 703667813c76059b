"""Installing the modules as an operator or a packager would, then running them on a real Prosody 0.12 and 13:

- `prosodyctl install --server=<rock server> mod_...` from a rock server folder made by scripts/rocks.sh: the
  module, the modules it depends on and the native library (built by cargo on this machine) go into the rocks tree
  in Prosody's data folder, and `modules_enabled` alone loads the module from there;
- `make install DESTDIR=... PREFIX=/usr` (a packager's tree) and `make install MODULES_DIR=...`, and `make uninstall`
  removing exactly what they installed;
- a module on the wrong kind of host stops with one log line that says where it belongs.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import rig

LUA_DIR = rig.ROOT / "lua"
MODULES = sorted(p.name.removeprefix("mod_") for p in LUA_DIR.glob("mod_*") if p.is_dir())
HELPERS = sorted(p.name for p in LUA_DIR.glob("*.lib.lua"))
LIBRARY = "prosody_native.so"

# Where each module belongs, and the options it cannot load without (everything else keeps its default).
SCENARIOS = {
    "http_muc_kick": ("muc", {"http_muc_kick_authorization_header": "Bearer install-test-c2VjcmV0LW9mLXRoZS1yaWc"}),
    "invites_adhoc": ("host", {}),
    "muc_hats_adhoc": ("muc", {}),
    "muc_hats_api": ("muc", {}),
    "muc_media_metadata": ("muc", {}),
}
# Installed first into an empty tree, so that the tree shows what its dependencies pulled in.
FIRST_INSTALL = "muc_hats_adhoc"

# Rock builds reuse compiled dependencies through this folder, across versions and sessions (`make clean` empties
# it). scripts/rock-build.sh makes cargo rebuild the crate itself every time, so nothing stale is installed.
CARGO_TARGET_DIR = rig.ROOT / "target" / "rock-install"
INSTALL_TIMEOUT = 1800  # the first cargo build of the dependencies takes minutes on a small machine


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def make(*args: str) -> subprocess.CompletedProcess:
    # The session's modules_dir fixture has just built the library: only installing is under test here.
    proc = run(["make", "--no-print-directory", "-o", "build/prosody_native.so", *args], cwd=rig.ROOT)
    assert 0 == proc.returncode, f"make {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def installed_by_make() -> set[str]:
    """The files `make install` puts into MODULES_DIR, from the checkout."""
    module_files = {str(p.relative_to(LUA_DIR)) for m in MODULES for p in (LUA_DIR / f"mod_{m}").rglob("*")
                    if p.is_file() and not p.name.startswith(".")}
    return {LIBRARY, *HELPERS, *module_files}


def where(module: str, server_options: dict) -> dict:
    """start_prosody() arguments that enable `module` alone on the host it belongs on, with its required options."""
    kind, options = SCENARIOS[module]
    if kind == "muc":
        return {"muc_modules": [module], "muc_options": options, **server_options}
    return {"host_modules": [module], "host_options": options, **server_options}


def loaded_from(server: rig.Prosody, host: str, module: str) -> str:
    """The file Prosody loaded `module` on `host` from (asked through `prosodyctl shell`; needs mod_admin_shell)."""
    out = server.prosodyctl("shell", f'>prosody.hosts["{host}"].modules["{module}"].module.path')
    return out.strip().removeprefix("Result: ")


def mapped_libraries(server: rig.Prosody) -> set[str]:
    """The shared libraries the running Prosody has loaded."""
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    return {line.split(None, 5)[5] for line in maps.splitlines() if line.count(" ") >= 5 and ".so" in line}


def loaded_modules(server: rig.Prosody, host: str) -> set[str]:
    """The modules Prosody reports loaded on `host` (`prosodyctl shell module list`; needs mod_admin_shell)."""
    out = server.prosodyctl("shell", "module", "list", host)
    return {line.strip() for line in out.splitlines() if line.startswith((" ", "\t"))}


def in_manifest(manifest: str, rock: str) -> bool:
    """Whether a LuaRocks manifest (a Lua table) has an entry for `rock`."""
    return re.search(r'^\s*(%s|\["%s"\]) = \{' % (re.escape(rock), re.escape(rock)), manifest, re.M) is not None


def test_every_module_has_an_install_scenario():
    assert MODULES == sorted(SCENARIOS)


# --- prosodyctl install from a rock server -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def rock_server(tmp_path_factory) -> Path:
    """A rock server folder made by scripts/rocks.sh, once per session."""
    folder = tmp_path_factory.mktemp("rocks")
    proc = run([str(rig.ROOT / "scripts/rocks.sh"), str(folder)], cwd=rig.ROOT)
    if proc.returncode != 0:
        pytest.fail(f"scripts/rocks.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return folder


@dataclass
class RockTree:
    """One Prosody's data folder after `prosodyctl install` of every module, one at a time."""

    path: Path  # installer_plugin_path: the rocks tree inside the data folder
    after_first_install: set[str] = field(default_factory=set)
    outputs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)


_rock_trees: dict[str, RockTree] = {}


@pytest.fixture
def rock_tree(prosody_version, rock_server, tmp_path_factory) -> RockTree:
    """Installs every module with this version's prosodyctl into a throw-away Prosody, once per session and version.

    The config only names the data folder's rocks tree (installer_plugin_path, absolute: a relative one is resolved
    against the data folder Prosody was built with, not data_path) and sets no plugin_paths.
    """
    if prosody_version not in _rock_trees:
        workdir = tmp_path_factory.mktemp(f"rocks-p{prosody_version}")
        data = workdir / "data"
        tree = RockTree(data / "custom_plugins")
        config = rig.Prosody(prosody_version, workdir, None,
                             global_options={"plugin_paths": None, "installer_plugin_path": str(tree.path)})
        prosodyctl = rig.BINARIES[prosody_version][1]
        env = {**os.environ, "CARGO_TARGET_DIR": str(CARGO_TARGET_DIR)}
        for module in [FIRST_INSTALL, *(m for m in MODULES if m != FIRST_INSTALL)]:
            tree.outputs[module] = run(
                [prosodyctl, "--config", str(config.config_path), "install", f"--server={rock_server}", f"mod_{module}"],
                cwd=workdir, env=env, timeout=INSTALL_TIMEOUT)
            if module == FIRST_INSTALL:
                tree.after_first_install = files_under(tree.path) if tree.path.exists() else set()
        _rock_trees[prosody_version] = tree
    return _rock_trees[prosody_version]


def assert_installed(tree: RockTree, module: str) -> None:
    proc = tree.outputs[module]
    assert 0 == proc.returncode, f"prosodyctl install mod_{module} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def test_rock_server_offers_the_native_library_and_every_module(rock_server):
    manifest = (rock_server / "manifest-5.4").read_text()
    for rock in ["prosody-native", *(f"mod_{m}" for m in MODULES)]:
        assert in_manifest(manifest, rock), f"{rock} is not on the rock server; did scripts/rocks.sh skip it?"
    rockspec = (rock_server / "mod_muc_hats_adhoc-0.1.0-1.rockspec").read_text()
    assert '"mod_muc_hats_api == 0.1.0"' in rockspec
    assert '"prosody-native == 0.1.0"' in rockspec


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
def test_prosodyctl_install_brings_dependencies_and_the_native_library(rock_tree):
    assert_installed(rock_tree, FIRST_INSTALL)
    assert {
        "share/lua/5.4/mod_muc_hats_adhoc.lua",
        "share/lua/5.4/mod_muc_hats_api.lua",
        *(f"share/lua/5.4/{helper}" for helper in HELPERS),
        f"lib/lua/5.4/{LIBRARY}",
    } <= rock_tree.after_first_install
    manifest = (rock_tree.path / "lib/luarocks/rocks-5.4/manifest").read_text()
    for rock in ("prosody-native", "mod_muc_hats_api", "mod_muc_hats_adhoc"):
        assert in_manifest(manifest, rock)


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
@pytest.mark.parametrize("module", MODULES)
def test_prosodyctl_installed_module_loads_from_modules_enabled_alone(module, rock_tree, start_prosody):
    assert_installed(rock_tree, module)
    server = start_prosody(**where(module, {
        "global_modules": ["admin_shell"],  # for `prosodyctl shell module list`
        "global_options": {"plugin_paths": None, "installer_plugin_path": str(rock_tree.path)},
    }))
    host = server.muc_host if SCENARIOS[module][0] == "muc" else server.host
    # Prosody's own module of the same name (mod_invites_adhoc) must not be the one that loaded.
    assert str(rock_tree.path / f"share/lua/5.4/mod_{module}.lua") == loaded_from(server, host, module)
    assert str(rock_tree.path / f"lib/lua/5.4/{LIBRARY}") in mapped_libraries(server)
    assert [] == server.log_errors()


# --- make install / uninstall ------------------------------------------------------------------------------------


def debian_plugin_dir() -> str:
    """The plugin folder Debian's Prosody 0.12 is built with (CFG_PLUGINDIR in /usr/bin/prosody)."""
    found = re.search(r"^CFG_PLUGINDIR='([^']*)'", Path(rig.BINARIES["0.12"][0]).read_text(), re.M)
    assert found, "no CFG_PLUGINDIR in Debian's /usr/bin/prosody"
    return found.group(1).rstrip("/")


def test_make_install_with_destdir_and_prefix_lays_out_a_package_tree(modules_dir, tmp_path):
    stage = tmp_path / "stage"
    make("install", f"DESTDIR={stage}", "PREFIX=/usr")
    plugins = "usr/lib/prosody/modules"
    assert "/" + plugins == debian_plugin_dir()  # where Debian's Prosody finds plugins without plugin_paths
    expected = {f"{plugins}/{f}" for f in installed_by_make()}
    expected |= {"usr/share/doc/prosody-native/README.md", "usr/share/doc/prosody-native/LICENSE"}
    assert expected == files_under(stage)
    assert {0o644} == {(stage / f).stat().st_mode & 0o777 for f in expected}


def test_packaged_tree_serves_the_modules(modules_dir, tmp_path, start_prosody):
    stage = tmp_path / "stage"
    make("install", f"DESTDIR={stage}", "PREFIX=/usr")
    server = start_prosody(muc_modules=["muc_hats_adhoc"],
                           global_options={"plugin_paths": [str(stage / "usr/lib/prosody/modules")]})
    assert [] == server.module_errors()


def test_make_uninstall_removes_exactly_what_install_put(modules_dir, tmp_path):
    stage = tmp_path / "stage"
    plugins = stage / "usr/lib/prosody/modules"
    foreign = {"usr/lib/prosody/modules/mod_other/mod_other.lua", "usr/lib/prosody/modules/other.lib.lua",
               "usr/share/doc/other/README"}
    for f in foreign:
        (stage / f).parent.mkdir(parents=True, exist_ok=True)
        (stage / f).write_text("-- not ours\n")
    make("install", f"DESTDIR={stage}", "PREFIX=/usr")
    make("uninstall", f"DESTDIR={stage}", "PREFIX=/usr")
    assert foreign == files_under(stage)
    assert not any((plugins / f"mod_{m}").exists() for m in MODULES)
    assert not (stage / "usr/share/doc/prosody-native").exists()


def test_make_install_into_modules_dir_writes_only_there(modules_dir, tmp_path):
    target, prefix = tmp_path / "plugins", tmp_path / "prefix"
    make("install", f"MODULES_DIR={target}", f"PREFIX={prefix}")
    assert installed_by_make() == files_under(target)
    assert not prefix.exists()  # no docs under PREFIX: this form installs into the plugin folder only
    make("uninstall", f"MODULES_DIR={target}", f"PREFIX={prefix}")
    assert set() == files_under(target)


# --- Compatibility checks at load ---------------------------------------------------------------------------------


def test_muc_module_on_a_virtualhost_stops_with_one_line_saying_where_it_belongs(start_prosody):
    server = start_prosody(host_modules=["muc_hats_api"], global_modules=["admin_shell"], check_modules=False)
    errors = server.module_errors("muc_hats_api")
    assert 1 == len(errors), errors
    assert 'mod_muc_hats_api only works on a MUC component, not on VirtualHost "localhost": list it in ' \
           'modules_enabled under Component "rooms.example.org" "muc" instead' in errors[0]
    # It stopped before loading anything: mod_muc did not come up on the VirtualHost.
    assert {"muc", "muc_hats_api"}.isdisjoint(loaded_modules(server, server.host))
