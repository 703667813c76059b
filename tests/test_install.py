"""Installing the modules as an operator or a packager would, then running them on a real Prosody 0.12 and 13:

- `prosodyctl install --server=<rock server> mod_...` from a rock server folder made by scripts/rocks.sh: the
  module, the modules it depends on and the native library (the binary rock: no Rust toolchain on the PATH) go into
  the rocks tree in Prosody's data folder, and `modules_enabled` alone loads the module from there;
- the source rock, the fallback where no binary rock fits: it builds offline from the vendored crates, and gives
  the same bytes as the binary rock (two builds of one tarball);
- the Debian package, built offline with dpkg-buildpackage from the release tarball, installed with apt-get on the
  system's Prosody 0.12 and removed again;
- an upgrade from the previous release (v0.1.0) to this one on a running Prosody;
- `make install DESTDIR=... PREFIX=/usr` (a packager's tree) and `make install MODULES_DIR=...`, and `make uninstall`
  removing exactly what they installed;
- a module on the wrong kind of host stops with one log line that says where it belongs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import rig
from media_server import MediaServer
from rig import connect, create_room, join_room, match, run_command

LUA_DIR = rig.ROOT / "lua"
MODULES = sorted(p.name.removeprefix("mod_") for p in LUA_DIR.glob("mod_*") if p.is_dir())
HELPERS = sorted(p.name for p in LUA_DIR.glob("*.lib.lua"))
LIBRARY = "prosody_native.so"
VERSION = re.search(r'^version = "(.*)"$', (rig.ROOT / "Cargo.toml").read_text(), re.M).group(1)
ROCK_VERSION = f"{VERSION}-1"
ARCH = f"linux-{platform.machine()}"  # luarocks' name for this machine's binary rocks
TARBALL = f"prosody-native-{VERSION}.tar.gz"

# Where each module belongs, and the options it cannot load without (everything else keeps its default).
SCENARIOS = {
    "http_muc_kick": ("muc", {"http_muc_kick_authorization_header": "Bearer install-test-c2VjcmV0LW9mLXRoZS1yaWc"}),
    "invites_adhoc": ("host", {}),
    "muc_hats_adhoc": ("muc", {}),
    "muc_hats_api": ("muc", {}),
    "muc_media_metadata": ("muc", {}),
}
KICK_HEADER = SCENARIOS["http_muc_kick"][1]["http_muc_kick_authorization_header"]
# Installed first into an empty tree, so that the tree shows what its dependencies pulled in.
FIRST_INSTALL = "muc_hats_adhoc"

# The previous release, for the upgrade test: its tag, or the commit it names where a clone has no tags.
PREVIOUS_RELEASE = ("v0.1.0", "a594fd5")
# Its rocks build the library with cargo on install; they reuse compiled dependencies through this folder, across
# sessions (`make clean` empties it). Its rock-build.sh makes cargo rebuild the crate itself every time.
CARGO_TARGET_DIR = rig.ROOT / "target" / "rock-install"
INSTALL_TIMEOUT = 1800  # a cargo build of the library and its dependencies takes minutes on a small machine
DEB_MODULES_DIR = "/usr/lib/prosody/modules-native"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def offline(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own, with no network at all (we run as root, as CI does)."""
    if os.geteuid() != 0 or run(["unshare", "--net", "true"]).returncode != 0:
        pytest.fail("these tests build offline in a network namespace: run them as root (as CI does)")
    return ["unshare", "--net", *command]


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


def host_of(server: rig.Prosody, module: str) -> str:
    return server.muc_host if SCENARIOS[module][0] == "muc" else server.host


def loaded_from(server: rig.Prosody, host: str, module: str) -> str:
    """The file Prosody loaded `module` on `host` from (asked through `prosodyctl shell`; needs mod_admin_shell)."""
    out = server.prosodyctl("shell", f'>prosody.hosts["{host}"].modules["{module}"].module.path')
    return out.strip().removeprefix("Result: ")


def module_info(server: rig.Prosody, host: str, module: str) -> str:
    """`module:info()` in Prosody's shell: path, status and what the module provides (needs mod_admin_shell)."""
    return server.prosodyctl("shell", "module", "info", module, host)


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


def installed_versions(tree: Path, rock: str) -> set[str]:
    """The versions of `rock` installed in a rocks tree."""
    folder = tree / "lib/luarocks/rocks-5.4" / rock
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def without_rust(folder: Path) -> tuple[dict, Path]:
    """An environment with no Rust toolchain: no PATH entry that has cargo, rustc or rustup, no CARGO_*/RUSTUP_*
    variables, and first in PATH a `cargo` that only records that it was called (in the returned file) and fails."""
    calls = folder / "cargo-calls"
    fake = folder / "bin" / "cargo"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >>{calls}\nexit 1\n')
    fake.chmod(0o755)
    path = [d for d in os.environ["PATH"].split(os.pathsep)
            if d and not any((Path(d) / tool).exists() for tool in ("cargo", "rustc", "rustup"))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP"))}
    env["PATH"] = os.pathsep.join([str(fake.parent), *path])
    return env, calls


def prosodyctl_install(version: str, config: Path, server: Path, rock: str, env: dict) -> subprocess.CompletedProcess:
    prosodyctl = rig.BINARIES[version][1]
    return run([prosodyctl, "--config", str(config), "install", f"--server={server}", rock],
               cwd=config.parent, env=env, timeout=INSTALL_TIMEOUT)


def test_every_module_has_an_install_scenario():
    assert MODULES == sorted(SCENARIOS)


# --- prosodyctl install from a rock server -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def rock_server(tmp_path_factory) -> Path:
    """A rock server folder made by scripts/rocks.sh, once per session: the tarball, the binary rock of the library
    for this machine (one cargo build, from the tarball) and the source rock, and one rock per module."""
    folder = tmp_path_factory.mktemp("rocks")
    proc = run([str(rig.ROOT / "scripts/rocks.sh"), str(folder)], cwd=rig.ROOT, timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"scripts/rocks.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return folder


def binary_rock_library(rock_server: Path) -> bytes:
    with zipfile.ZipFile(rock_server / f"prosody-native-{ROCK_VERSION}.{ARCH}.rock") as rock:
        return rock.read(f"lib/{LIBRARY}")


@dataclass
class RockTree:
    """One Prosody's data folder after `prosodyctl install` of every module, one at a time, with no Rust toolchain."""

    path: Path  # installer_plugin_path: the rocks tree inside the data folder
    cargo_calls: Path  # written by the fake cargo, if anything called it
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
        env, calls = without_rust(workdir / "no-rust")
        tree = RockTree(workdir / "data" / "custom_plugins", calls)
        config = rig.Prosody(prosody_version, workdir, None,
                             global_options={"plugin_paths": None, "installer_plugin_path": str(tree.path)})
        for module in [FIRST_INSTALL, *(m for m in MODULES if m != FIRST_INSTALL)]:
            tree.outputs[module] = prosodyctl_install(prosody_version, config.config_path, rock_server,
                                                      f"mod_{module}", env)
            if module == FIRST_INSTALL:
                tree.after_first_install = files_under(tree.path) if tree.path.exists() else set()
        _rock_trees[prosody_version] = tree
    return _rock_trees[prosody_version]


def assert_installed(tree: RockTree, module: str) -> None:
    proc = tree.outputs[module]
    assert 0 == proc.returncode, f"prosodyctl install mod_{module} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def test_rock_server_offers_binary_and_source_rocks_of_one_version(rock_server):
    manifest = (rock_server / "manifest-5.4").read_text()
    for rock in ["prosody-native", *(f"mod_{m}" for m in MODULES)]:
        assert in_manifest(manifest, rock), f"{rock} is not on the rock server; did scripts/rocks.sh skip it?"
    # linux-aarch64 too where the cross toolchain is installed (test_aarch64_rock_passes_the_specs_under_qemu)
    rocks = {p.name for p in rock_server.glob("*.rock")} - {f"prosody-native-{ROCK_VERSION}.linux-aarch64.rock"}
    assert {f"prosody-native-{ROCK_VERSION}.{ARCH}.rock", f"prosody-native-{ROCK_VERSION}.src.rock",
            *(f"mod_{m}-{ROCK_VERSION}.all.rock" for m in MODULES)} == rocks
    rockspec = (rock_server / f"mod_muc_hats_adhoc-{ROCK_VERSION}.rockspec").read_text()
    assert f'"mod_muc_hats_api == {VERSION}"' in rockspec
    assert f'"prosody-native == {VERSION}"' in rockspec
    # prosodyctl's closing link points to modules.prosody.im; the rock says where this module's documentation is.
    assert f"Documentation: README.markdown, installed with the rock (<tree>/lib/luarocks/rocks-5.4/" \
           f"mod_muc_hats_adhoc/{ROCK_VERSION}/doc/README.markdown" in rockspec


def test_binary_rock_library_is_stripped_and_names_no_build_path(rock_server):
    library = binary_rock_library(rock_server)
    assert library.startswith(b"\x7fELF")
    assert b".symtab" not in library  # no symbol table (the dynamic one, with luaopen_prosody_native, stays)
    assert b"luaopen_prosody_native" in library
    # the build ran in a temporary folder of scripts/rocks.sh, with crates from vendor/ and cargo's home
    for path in ("prosody-native-rocks.", str(rig.ROOT), str(Path.home() / ".cargo")):
        assert path.encode() not in library, path
    assert f"/usr/src/prosody-native-{VERSION}/".encode() in library  # where the remapped paths point


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
def test_prosodyctl_install_takes_the_binary_rock_without_cargo(rock_tree):
    assert_installed(rock_tree, FIRST_INSTALL)
    assert f"prosody-native-{ROCK_VERSION}.{ARCH}.rock" in rock_tree.outputs[FIRST_INSTALL].stdout
    assert not rock_tree.cargo_calls.exists(), "something ran cargo: " + rock_tree.cargo_calls.read_text()


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
def test_prosodyctl_install_brings_dependencies_and_the_native_library(rock_tree):
    assert_installed(rock_tree, FIRST_INSTALL)
    assert {
        "share/lua/5.4/mod_muc_hats_adhoc.lua",
        "share/lua/5.4/mod_muc_hats_api.lua",
        *(f"share/lua/5.4/{helper}" for helper in HELPERS),
        f"lib/lua/5.4/{LIBRARY}",
        f"lib/luarocks/rocks-5.4/mod_muc_hats_adhoc/{ROCK_VERSION}/doc/README.markdown",
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
    host = host_of(server, module)
    # Prosody's own module of the same name (mod_invites_adhoc) must not be the one that loaded.
    assert str(rock_tree.path / f"share/lua/5.4/mod_{module}.lua") == loaded_from(server, host, module)
    assert str(rock_tree.path / f"lib/lua/5.4/{LIBRARY}") in mapped_libraries(server)
    assert f"status: [info] prosody-native {VERSION}" in module_info(server, host, module)
    assert [] == server.log_errors()


# --- the source rock: the fallback, offline and reproducible ------------------------------------------------------


@pytest.fixture(scope="session")
def source_rock_install(rock_server, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """prosody-native installed from a server that offers only its source rock, as where no binary rock fits: luarocks
    unpacks the tarball and cargo builds the library from the vendored crates, with no network at all."""
    folder = tmp_path_factory.mktemp("source-rocks")
    for f in rock_server.iterdir():
        if f.name.endswith((".rockspec", ".src.rock")) or f.name == TARBALL:
            shutil.copy(f, folder)
    proc = run(["luarocks-admin", "make-manifest", "--lua-version=5.4", str(folder)])
    assert 0 == proc.returncode, proc.stderr
    tree = folder.parent / f"{folder.name}-tree"
    proc = run(offline(["luarocks", "--lua-version=5.4", f"--tree={tree}", f"--server={folder}",
                        "install", "prosody-native"]), timeout=INSTALL_TIMEOUT)
    return tree, proc


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
def test_source_rock_builds_offline_from_the_vendored_crates(source_rock_install):
    tree, proc = source_rock_install
    assert 0 == proc.returncode, f"install from the source rock failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert f"prosody-native-{ROCK_VERSION}.src.rock" in proc.stdout
    assert "prosody-native: building with" in proc.stdout and "--frozen" in proc.stdout
    assert (tree / f"lib/lua/5.4/{LIBRARY}").exists()


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
def test_two_builds_of_one_tarball_give_identical_libraries(rock_server, source_rock_install):
    # The binary rock was built by scripts/rocks.sh in one temporary folder, the source rock by luarocks in another,
    # each with a target folder of its own, from the same tarball.
    tree, proc = source_rock_install
    assert 0 == proc.returncode, proc.stderr[-4000:]
    assert binary_rock_library(rock_server) == (tree / f"lib/lua/5.4/{LIBRARY}").read_bytes()


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


# --- the linux-aarch64 rock, exercised under qemu-user -------------------------------------------------------------

# Debian's arm64 libc, Lua 5.4 and the C modules the specs load, unpacked by scripts/deps.sh (the system's dpkg never
# sees them).
ARM64_ROOT = Path(os.environ.get("RIG_ARM64_ROOT", rig.ROOT / ".deps" / "arm64"))
EM_AARCH64 = 183  # e_machine of an ELF file for aarch64


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
def test_aarch64_rock_passes_the_specs_under_qemu(rock_server, tmp_path):
    targets = run(["rustup", "target", "list", "--installed"]).stdout.split() if shutil.which("rustup") else []
    if "aarch64-unknown-linux-gnu" not in targets:
        pytest.skip("Rust's aarch64-unknown-linux-gnu target is not installed (scripts/deps.sh adds it with rustup, "
                    "from Rust's server): scripts/rocks.sh made no linux-aarch64 rock")
    rock = rock_server / f"prosody-native-{ROCK_VERSION}.linux-aarch64.rock"
    assert rock.exists(), "no linux-aarch64 rock: scripts/deps.sh installs the cross compiler (gcc-aarch64-linux-gnu)"
    with zipfile.ZipFile(rock) as archive:
        library = archive.read(f"lib/{LIBRARY}")
        assert set(archive.namelist()) >= {f"lua/{helper}" for helper in HELPERS}
    assert library.startswith(b"\x7fELF") and EM_AARCH64 == int.from_bytes(library[18:20], "little")
    # The tarball's specs, with the aarch64 library where .busted looks for it, run by Debian's arm64 Lua.
    tree = tmp_path / f"prosody-native-{VERSION}"
    proc = run(["tar", "-xzf", str(rock_server / TARBALL), "-C", str(tmp_path), *(f"{tree.name}/{part}" for part in
                ("spec", "lua", "tests", ".busted"))])  # the media specs serve tests/data with tests/media_server.py
    assert 0 == proc.returncode, proc.stderr
    (tree / "build").mkdir()
    (tree / "build" / LIBRARY).write_bytes(library)
    # qemu looks up every absolute path in ARM64_ROOT first: the guest finds arm64 libc, Lua's and Prosody's C modules
    # there, and the pure-Lua files (busted, Prosody's util/*.lua) on this machine.
    proc = run(["qemu-aarch64", "-L", str(ARM64_ROOT), str(ARM64_ROOT / "usr/bin/lua5.4"), "/usr/bin/busted"],
               cwd=tree, timeout=INSTALL_TIMEOUT)
    summary = re.search(r"^(\d+) successes / (\d+) failures / (\d+) errors", proc.stdout, re.M)
    assert summary and 0 == proc.returncode, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert ("0", "0") == summary.group(2, 3) and int(summary.group(1)) > 200, summary.group(0)


# --- the Debian package -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def deb_package(rock_server, tmp_path_factory) -> Path:
    """prosody-native_<version>-1_<arch>.deb, built by scripts/deb.sh from the rock server's release tarball with
    dpkg-buildpackage, with no network (DEB_BUILD_OPTIONS=nocheck: cargo test is a suite of its own)."""
    folder = tmp_path_factory.mktemp("deb") / "build"
    proc = run(offline([str(rig.ROOT / "scripts/deb.sh"), str(folder), str(rock_server / TARBALL)]),
               env={**os.environ, "DEB_BUILD_OPTIONS": "nocheck"}, timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"scripts/deb.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    deb = folder / f"prosody-native_{VERSION}-1_{arch}.deb"
    assert deb.exists(), sorted(p.name for p in folder.iterdir())
    return deb


def deb_status() -> str:
    return run(["dpkg-query", "-W", "-f=${Status}", "prosody-native"]).stdout


def apt_get(*args: str) -> subprocess.CompletedProcess:
    proc = run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *args],
               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
    assert 0 == proc.returncode, f"apt-get {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def installed_deb(deb_package):
    """The package installed with apt-get on this machine for the test, and purged again afterwards."""
    if "installed" in deb_status().split():
        pytest.fail("prosody-native is already installed on this machine: the test installs and purges it itself; "
                    "remove it first (apt-get purge prosody-native)", pytrace=False)
    apt_get("install", "--no-install-recommends", str(deb_package))
    try:
        yield deb_package
    finally:
        apt_get("purge", "prosody-native")
    assert not Path(DEB_MODULES_DIR).exists()


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
def test_deb_puts_modules_in_a_folder_of_their_own_and_docs_under_usr_share_doc(deb_package):
    listing = run(["dpkg-deb", "--contents", str(deb_package)]).stdout
    files = {line.split()[-1].removeprefix(".") for line in listing.splitlines() if not line.startswith("d")}
    docs = {f.removesuffix(".gz") for f in files}  # dh_compress compresses the larger ones
    # what `make install` puts in a plugin folder, less the READMEs, which go under /usr/share/doc
    assert {f"{DEB_MODULES_DIR}/{f}" for f in installed_by_make() if not f.endswith("/README.markdown")} \
        == {f for f in files if f.startswith(DEB_MODULES_DIR + "/")}
    doc = "/usr/share/doc/prosody-native"
    assert {f"{doc}/README.md", f"{doc}/README.Debian", f"{doc}/copyright", f"{doc}/changelog",
            f"{doc}/changelog.Debian", f"{doc}/crates.txt", *(f"{doc}/mod_{m}/README.markdown" for m in MODULES)} \
        <= docs
    # Nothing in Prosody's own module folder: core's mod_invites_adhoc stays in charge until the operator opts in.
    assert not any(f.startswith("/usr/lib/prosody/modules/") for f in files)
    fields = run(["dpkg-deb", "--field", str(deb_package), "Version", "Depends"]).stdout
    assert f"Version: {VERSION}-1" in fields
    assert re.search(r"^Depends: .*prosody \(>= 0\.12\)", fields, re.M), fields


TEACHER = "http://example.org/hats#Teacher"
XMLNS_HATS = "urn:xmpp:hats:0"
XMLNS_OOB = "jabber:x:oob"
XMLNS_METADATA = "xmpp:prosody.im/protocol/media-metadata#0"


def wears(nick: str, room: str, uri: str):
    """Predicate: a presence of `nick` in `room` wearing the hat `uri`."""
    def predicate(presence) -> bool:
        hats = [hat.get("uri") for hats in presence.xml.findall(f"{{{XMLNS_HATS}}}hats") for hat in hats]
        return str(presence["from"]) == f"{room}/{nick}" and uri in hats
    return predicate


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
@pytest.mark.parametrize("prosody_version", ["0.12"])  # the package is for the system's Prosody
async def test_deb_installed_with_apt_serves_every_module_on_the_system_prosody(installed_deb, start_prosody,
                                                                                prosody_version):
    with MediaServer("127.0.0.1") as media:
        server = start_prosody(
            global_modules=["admin_shell"],
            global_options={"plugin_paths": [DEB_MODULES_DIR]},  # the operator's opt-in (README.Debian)
            host_modules=["invites_adhoc"],
            muc_modules=["muc_hats_adhoc", "muc_media_metadata", "http_muc_kick"],
            muc_options={**SCENARIOS["http_muc_kick"][1], "muc_media_metadata_allowed_networks": ["127.0.0.1/32"]})
        for module in MODULES:
            assert f"{DEB_MODULES_DIR}/mod_{module}/mod_{module}.lua" == loaded_from(server, host_of(server, module),
                                                                                     module)
        assert f"{DEB_MODULES_DIR}/{LIBRARY}" in mapped_libraries(server)
        for user in ("admin", "alice", "bob"):
            server.register(user, f"{user}pw")
        room = f"smoke@{server.muc_host}"
        async with connect(server, "admin@localhost", "adminpw") as admin, \
                connect(server, "alice@localhost", "alicepw") as alice, \
                connect(server, "bob@localhost", "bobpw") as bob:
            await create_room(alice, room, "Alice", persistent=True)
            await alice.plugin["xep_0045"].set_affiliation(room, jid="bob@localhost", affiliation="member")
            await join_room(bob, room, "Bob")

            # mod_muc_hats_adhoc, through mod_muc_hats_api: the admin gives Bob a hat, and Alice sees him wear it.
            result = await run_command(admin, server.muc_host, "http://prosody.im/protocol/hats#add",
                                       {"user": "bob@localhost", "room": room, "title": "Teacher", "uri": TEACHER})
            assert "completed" == result["status"]
            await alice.wait_for(wears("Bob", room, TEACHER))

            # mod_muc_media_metadata: Bob's copy of Alice's image link carries the image's dimensions.
            message = alice.make_message(mto=room, mbody="a photo", mtype="groupchat")
            x = message.xml.makeelement(f"{{{XMLNS_OOB}}}x", {})
            url = x.makeelement(f"{{{XMLNS_OOB}}}url", {})
            url.text = media.url("/photo.png")
            x.append(url)
            message.xml.append(x)
            message.send()
            copy = await bob.wait_for(match("message", type="groupchat", body="a photo"))
            width = copy.xml.find(f"{{{XMLNS_OOB}}}x/{{{XMLNS_METADATA}}}metadata/{{{XMLNS_METADATA}}}width")
            assert width is not None and "76" == width.text

            # mod_invites_adhoc: Alice invites a contact and gets an invitation URI.
            result = await run_command(alice, server.host, "urn:xmpp:invite#invite")
            assert "completed" == result["status"]
            assert str(result["form"].get_values()["uri"]).startswith("xmpp:alice@localhost?roster;preauth=")

            # mod_http_muc_kick: an HTTP request kicks Bob, and Bob is told.
            async with server.http_client(host=server.muc_host) as http:
                response = await http.post("/muc_kick", json={"nickname": "Bob", "muc": room},
                                           headers={"Authorization": KICK_HEADER})
            assert 200 == response.status_code, response.text
            await bob.wait_for(match("presence", from_=f"{room}/Bob", type="unavailable"))
        assert [] == server.log_errors()


# --- versions and upgrades ----------------------------------------------------------------------------------------


async def test_each_module_says_once_which_release_it_runs(start_prosody):
    server = start_prosody(global_modules=["admin_shell"], host_modules=["invites_adhoc"],
                           muc_modules=["muc_hats_adhoc", "muc_media_metadata", "http_muc_kick"],
                           muc_options=SCENARIOS["http_muc_kick"][1])
    log = server.log_text()
    for module in MODULES:  # mod_muc_hats_api comes with mod_muc_hats_adhoc
        host = host_of(server, module)
        lines = re.findall(rf"^.*\s{re.escape(host)}:{module}\s+debug\s+prosody-native (\S+)$", log, re.M)
        assert [VERSION] == lines, module
        assert f"status: [info] prosody-native {VERSION}" in module_info(server, host, module)


@pytest.fixture(scope="session")
def previous_rock_server(tmp_path_factory) -> Path:
    """The rock server of the previous release, made by its own scripts/rocks.sh from `git archive` of its tag."""
    for ref in PREVIOUS_RELEASE:
        if run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=rig.ROOT).returncode == 0:
            break
    else:
        pytest.skip(f"neither {' nor '.join(PREVIOUS_RELEASE)} is in this clone (a shallow one?): no release to "
                    "upgrade from")
    source = tmp_path_factory.mktemp("previous-release")
    archive = run(["sh", "-c", f'git archive "{ref}" | tar -x -C "{source}"'], cwd=rig.ROOT)
    assert 0 == archive.returncode, archive.stderr
    folder = source / "rocks"
    proc = run([str(source / "scripts/rocks.sh"), str(folder)], cwd=source)
    assert 0 == proc.returncode, f"{ref}'s scripts/rocks.sh failed:\n{proc.stdout}\n{proc.stderr}"
    # Its crates (its own Cargo.lock, which may name crates this release no longer uses) into cargo's cache, so that
    # the offline install below finds them on a fresh machine too.
    fetch = run(["cargo", "fetch", "--locked", "--manifest-path", str(source / "Cargo.toml")], cwd=source)
    assert 0 == fetch.returncode, f"cargo fetch of {ref}'s crates failed:\n{fetch.stderr}"
    return folder


@pytest.mark.timeout(INSTALL_TIMEOUT * 2)
async def test_upgrade_from_the_previous_release_asks_for_a_restart_then_runs_the_new_one(
        prosody_version, previous_rock_server, rock_server, start_prosody, tmp_path):
    workdir = tmp_path / "installer"
    tree = workdir / "data" / "custom_plugins"
    options = {"plugin_paths": None, "installer_plugin_path": str(tree)}
    config = rig.Prosody(prosody_version, workdir, None, global_options=options).config_path
    # The previous release has only a source rock: cargo builds it, from cargo's cache of the crates (no network).
    env = {**os.environ, "CARGO_TARGET_DIR": str(CARGO_TARGET_DIR), "CARGO_NET_OFFLINE": "true"}
    proc = prosodyctl_install(prosody_version, config, previous_rock_server, "mod_muc_hats_adhoc", env)
    assert 0 == proc.returncode, proc.stdout[-4000:] + proc.stderr[-4000:]
    previous = installed_versions(tree, "prosody-native")
    assert 1 == len(previous) and ROCK_VERSION not in previous

    server = start_prosody(muc_modules=["muc_hats_adhoc"], global_modules=["admin_shell"], global_options=options)
    assert str(tree / f"lib/lua/5.4/{LIBRARY}") in mapped_libraries(server)

    # The upgrade, while Prosody runs: luarocks moves the old library aside instead of overwriting the mapped file.
    env, cargo_calls = without_rust(tmp_path / "no-rust")
    proc = prosodyctl_install(prosody_version, config, rock_server, "mod_muc_hats_adhoc", env)
    assert 0 == proc.returncode, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert not cargo_calls.exists()
    assert ROCK_VERSION in installed_versions(tree, "prosody-native")
    assert server.is_running()

    # A reload loads the new Lua files, which find the previous library still loaded: they ask for a restart.
    before_reload = len(server.log_text())
    with contextlib.suppress(subprocess.CalledProcessError, AssertionError, RuntimeError):
        server.prosodyctl("shell", "module", "reload", "muc_hats_adhoc", server.muc_host)
    after = server.log_text()[before_reload:]
    assert (f"this Prosody process still runs native library {next(iter(previous)).rsplit('-', 1)[0]}, loaded before "
            f"the upgrade to {VERSION}; restart Prosody to finish the upgrade") in after
    assert server.is_running()

    before_restart = len(server.log_text())
    server.restart()
    assert "muc_hats_adhoc" in loaded_modules(server, server.muc_host)
    assert f"status: [info] prosody-native {VERSION}" in module_info(server, server.muc_host, "muc_hats_adhoc")
    assert not re.search(r"\serror\s", server.log_text()[before_restart:]), server.log_text()[before_restart:]
