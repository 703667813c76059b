#!/usr/bin/env bash
# Builds the Debian package from the release tarball, offline, as a packager would (see debian/README.source):
# unpacks the tarball into FOLDER and runs dpkg-buildpackage there; FOLDER/prosody-native_<version>-<revision>_<arch>.deb
# is the result.
#
# Usage: scripts/deb.sh [FOLDER [TARBALL]]   (defaults build/deb and build/dist/prosody-native-<version>.tar.gz)
#   DEB_BUILD_OPTIONS   passed on (nocheck skips cargo test)
set -euo pipefail

ROOT=$(realpath "$(dirname "$0")/..")
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
OUT=$(realpath -m "${1:-$ROOT/build/deb}")
TARBALL=$(realpath -m "${2:-$ROOT/build/dist/prosody-native-$VERSION.tar.gz}")

die() { printf 'deb: %s\n' "$*" >&2; exit 1; }

[ -f "$TARBALL" ] || die "$TARBALL is missing; make it with 'make dist'"
command -v dpkg-buildpackage >/dev/null || die "dpkg-buildpackage is missing: apt-get install dpkg-dev debhelper"
rm -rf "$OUT"
mkdir -p "$OUT"
tar -xzf "$TARBALL" -C "$OUT"
SOURCE=$(find "$OUT" -mindepth 1 -maxdepth 1 -type d -name 'prosody-native-*')
[ -d "$SOURCE/debian" ] || die "$TARBALL has no debian/ folder"
# -b: binary packages only (no source package, so no .orig tarball); -us -uc: unsigned.
(cd "$SOURCE" && dpkg-buildpackage -b -us -uc) >"$OUT/build.log" 2>&1 \
	|| { tail -n 60 "$OUT/build.log" >&2; die "dpkg-buildpackage failed; the whole log is $OUT/build.log"; }
rm -rf "$SOURCE"
ls "$OUT"/*.deb
