#!/bin/sh
# Builds and installs the native library inside an unpacked prosody-native rock; the rockspec made by
# scripts/rocks.sh runs it (luarocks "command" build). Not meant to be run by hand: use `make` in a checkout.
#
#   sh scripts/rock-build.sh build                     cargo build --release --locked (fetches crates from crates.io)
#   sh scripts/rock-build.sh install LUADIR LIBDIR     helpers into LUADIR, prosody_native.so into LIBDIR
#
# `prosodyctl install` runs luarocks with HOME set to Prosody's data folder (and, started as root, as the prosody
# user), so a Rust toolchain installed with rustup for your own user is not found by default. Set CARGO (and
# RUSTUP_HOME for rustup) to point at one the installing user can run; see "With prosodyctl install" in README.md.
set -eu

fail() {
	printf 'prosody-native: %s\n' "$*" >&2
	exit 1
}

# The home folder of the user we run as, which prosodyctl's HOME (the data folder) hides.
user_home() {
	getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6
}

rust_version() {
	sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml
}

find_cargo() {
	if [ -n "${CARGO:-}" ]; then
		command -v "$CARGO" || fail "CARGO=$CARGO is not a program"
		return
	fi
	if command -v cargo; then return; fi
	for dir in "$HOME/.cargo/bin" "$(user_home)/.cargo/bin"; do
		if [ -x "$dir/cargo" ]; then
			echo "$dir/cargo"
			return
		fi
	done
	fail "cargo (Rust $(rust_version) or newer) not found for user $(id -un) with HOME=$HOME." \
		"Install Rust (https://rustup.rs) where this user can run it, or set CARGO=/path/to/cargo" \
		"(and RUSTUP_HOME for a rustup toolchain); see 'With prosodyctl install' in prosody-native's README.md."
}

build() {
	cargo=$(find_cargo)
	# rustup's cargo finds its toolchains under $HOME/.rustup, and prosodyctl has changed HOME.
	if [ -z "${RUSTUP_HOME:-}" ] && [ ! -d "$HOME/.rustup" ] && [ -d "$(user_home)/.rustup" ]; then
		RUSTUP_HOME="$(user_home)/.rustup"
		export RUSTUP_HOME
	fi
	# cargo fetches the crates pinned in Cargo.lock. Use the user's own cargo home (its cache and settings) when
	# prosodyctl's HOME hides it; when there is none, keep cargo's files in the build folder, not in Prosody's data.
	if [ -z "${CARGO_HOME:-}" ] && [ ! -d "$HOME/.cargo" ]; then
		if [ -d "$(user_home)/.cargo" ]; then
			CARGO_HOME="$(user_home)/.cargo"
		else
			CARGO_HOME="$PWD/.cargo-home"
		fi
		export CARGO_HOME
	fi
	# The tarball's files all carry one fixed date; with a CARGO_TARGET_DIR shared between builds, cargo would take
	# an older build of other sources for fresh. Dating them now makes it always rebuild this crate.
	find Cargo.toml Cargo.lock rust -type f -exec touch {} +
	echo "prosody-native: building with $cargo ($("$cargo" --version 2>&1))"
	"$cargo" build --release --locked --features lua54 \
		|| fail "cargo build failed (see above); it needs Rust $(rust_version) or newer and access to crates.io"
	mkdir -p build
	cp "${CARGO_TARGET_DIR:-target}/release/libprosody_native.so" build/prosody_native.so
}

install_files() {
	luadir=$1
	libdir=$2
	[ -f build/prosody_native.so ] || fail "build/prosody_native.so is missing; the build step did not run"
	mkdir -p "$luadir" "$libdir"
	# Exact file names: module:require("prosody_native") looks for share/lua/5.4/prosody_native.lib.lua.
	cp lua/*.lib.lua "$luadir/"
	cp build/prosody_native.so "$libdir/"
}

case ${1:-} in
	build) build ;;
	install) [ $# -eq 3 ] || fail "usage: $0 install LUADIR LIBDIR"; install_files "$2" "$3" ;;
	*) fail "usage: $0 build | install LUADIR LIBDIR" ;;
esac
