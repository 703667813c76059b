#!/usr/bin/env bash
# Checks that the release version is the same everywhere: Cargo.toml has it (the library reports it), and the Lua
# helper, the top entries of CHANGELOG.md and debian/changelog must agree. The rockspecs and the tarball take it from
# Cargo.toml when they are made. `make lint` runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
status=0
check() { # what, value
	if [ "$2" != "$version" ]; then
		printf 'version: %s says %s, Cargo.toml says %s\n' "$1" "${2:-nothing}" "$version" >&2
		status=1
	fi
}
check "lua/prosody_native.lib.lua (expected_version)" \
	"$(sed -n 's/^local expected_version = "\(.*\)";$/\1/p' lua/prosody_native.lib.lua)"
check "Cargo.lock" "$(sed -n '/^name = "prosody-native"$/{n;s/^version = "\(.*\)"$/\1/p}' Cargo.lock)"
check "CHANGELOG.md (first release heading)" "$(sed -n 's/^## \[\([0-9][^]]*\)\].*/\1/p' CHANGELOG.md | head -n 1)"
check "debian/changelog (first entry, less the Debian revision)" \
	"$(sed -n '1s/^prosody-native (\([^)-]*\)-[^)]*).*/\1/p' debian/changelog)"
exit $status
