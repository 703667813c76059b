"""How the modules find the native library: installed with `make install`, `plugin_paths` is all a user adds;
a missing or mismatched library is one clear error and the module does not load."""

import shutil

import pytest

from rig import connect


@pytest.fixture
def broken_modules_dir(modules_dir, tmp_path):
    """A copy of the installed modules that a test may damage."""
    copy = tmp_path / "modules"
    shutil.copytree(modules_dir, copy)
    return copy


def start_with_plugins(start_prosody, plugin_dir):
    return start_prosody(muc_modules=["muc_hats_api"], global_options={"plugin_paths": [str(plugin_dir)]},
                         check_modules=False)


async def test_plugin_paths_alone_loads_the_module(start_prosody, modules_dir):
    server = start_with_plugins(start_prosody, modules_dir)
    assert [] == server.module_errors()
    server.register("alice", "pw")
    async with connect(server, "alice@localhost", "pw") as alice:
        info = await alice.plugin["xep_0030"].get_info(server.muc_host)
        assert "http://jabber.org/protocol/muc" in info["disco_info"]["features"]
    assert "prosody_native" not in "\n".join(server.log_errors())


def test_missing_library_is_one_clear_error(start_prosody, broken_modules_dir):
    (broken_modules_dir / "prosody_native.so").unlink()
    server = start_with_plugins(start_prosody, broken_modules_dir)
    errors = server.module_errors("muc_hats_api")
    assert 1 == len(errors), errors
    assert "native library prosody_native.so not found" in errors[0]
    assert "make install" in errors[0]


def test_mismatched_library_is_one_clear_error(start_prosody, broken_modules_dir):
    helper = broken_modules_dir / "prosody_native.lib.lua"
    source = helper.read_text()
    assert 'local expected_version = "' in source
    helper.write_text(source.replace('local expected_version = "', 'local expected_version = "0.0.0-', 1))
    server = start_with_plugins(start_prosody, broken_modules_dir)
    errors = server.module_errors("muc_hats_api")
    assert 1 == len(errors), errors
    assert "these modules need 0.0.0-" in errors[0]
    assert "reinstall both together" in errors[0]
