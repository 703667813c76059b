#!/usr/bin/env bash
# Makes the release tarball, FOLDER/prosody-native-<version>.tar.gz: the project's files with every crate that
# Cargo.lock names vendored (`cargo vendor`), so that the library builds from it with no network (the source rock, the
# Debian package, `make` in the unpacked folder).
#
#   prosody-native-<version>/            the files git knows of in this checkout (tracked, and new ones not ignored),
#                                        as they are in the working tree
#   prosody-native-<version>/vendor/     the crates, one folder per crate and version
#   prosody-native-<version>/.cargo/config.toml   points cargo at vendor/ instead of crates.io
#
# Usage: scripts/dist.sh [FOLDER]   (default build/dist)
# The tarball is reproducible: same files, same bytes (sorted, owner 0, file dates = the last commit's date, gzip -n).
# Make releases from a clean checkout of the release tag. Fetching the crates needs crates.io (or cargo's cache).
set -euo pipefail

OUT=$(realpath -m "${1:-$(dirname "$0")/../build/dist}")
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
NAME=prosody-native
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
TARBALL=$OUT/$NAME-$VERSION.tar.gz

die() { printf 'dist: %s\n' "$*" >&2; exit 1; }

[ -n "$VERSION" ] || die "no version in Cargo.toml"
git rev-parse --git-dir >/dev/null 2>&1 || die "not a git checkout: the tarball lists the files git knows of"
# The files' date: the last commit's, so that the tarball does not change with the time it is made.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/prosody-native-dist.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
TREE=$STAGE/$NAME-$VERSION
mkdir -p "$TREE" "$OUT"

# Tracked files and new ones that .gitignore does not exclude; files deleted in the working tree are left out.
git ls-files -z --cached --others --exclude-standard \
	| while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
	| tar --null -T - -cf - | tar -xf - -C "$TREE"

(cd "$TREE" && "$CARGO" vendor --locked --versioned-dirs vendor >/dev/null 2>"$STAGE/vendor.log") \
	|| { cat "$STAGE/vendor.log" >&2; die "cargo vendor failed; it needs crates.io or the crates in cargo's cache"; }
# The source replacement cargo vendor asks for, where cargo looks for it (relative to the unpacked folder).
mkdir -p "$TREE/.cargo"
cat >"$TREE/.cargo/config.toml" <<'TOML'
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "vendor"
TOML

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" --mode='u+rwX,go+rX,go-w' \
	-C "$STAGE" -cf - "$NAME-$VERSION" | gzip -n >"$TARBALL.tmp"
mv "$TARBALL.tmp" "$TARBALL"
echo "dist: $TARBALL"
