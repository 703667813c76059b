#!/bin/sh
# Builds the native library inside an unpacked prosody-native rock or release tarball; the rockspec made by
# scripts/rocks.sh and debian/rules run it. Not meant to be run by hand: use `make` in a checkout.
#
#   sh scripts/rock-build.sh build                     cargo build --release into build/prosody_native.so: offline
#                                                      from vendor/ in a release tarball (`make dist`), else with
#                                                      --locked, fetching the crates from crates.io; for another
#                                                      architecture with PROSODY_NATIVE_TARGET=<rust target>
#
# The build is reproducible: the source, cargo home and target folders are remapped to fixed names in the library
# (--remap-path-prefix), and the release profile strips it, so two builds of one tarball give the same bytes wherever
# they run. The binary rocks and the Debian package are built by this script too.
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
	# A release tarball carries the crates: build with no network. A checkout fetches them.
	network="--locked"
	where="access to crates.io"
	if [ -d vendor ] && [ -f .cargo/config.toml ]; then
		network="--frozen"
		where="the crates in vendor/"
	fi
	target_dir=${CARGO_TARGET_DIR:-$PWD/target}
	output=$target_dir/release
	# A cross build (scripts/rocks.sh makes the linux-aarch64 rock this way): Debian's cross compiler links, and
	# compiles the TLS library's C and assembly.
	target=
	if [ -n "${PROSODY_NATIVE_TARGET:-}" ]; then
		target="--target=$PROSODY_NATIVE_TARGET"
		output=$target_dir/$PROSODY_NATIVE_TARGET/release
		triple=$(echo "$PROSODY_NATIVE_TARGET" | sed 's/-unknown-/-/') # aarch64-linux-gnu
		upper=$(echo "$PROSODY_NATIVE_TARGET" | tr 'a-z-' 'A-Z_')
		under=$(echo "$PROSODY_NATIVE_TARGET" | tr '-' '_')
		export "CARGO_TARGET_${upper}_LINKER=$triple-gcc" "CC_$under=$triple-gcc" "AR_$under=$triple-ar"
	fi
	version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
	# Each path a build machine has its own name for becomes a fixed one (rustc uses the last prefix that matches).
	RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
	RUSTFLAGS="$RUSTFLAGS --remap-path-prefix=$PWD=/usr/src/prosody-native-$version"
	RUSTFLAGS="$RUSTFLAGS --remap-path-prefix=$target_dir=/usr/src/prosody-native-$version/target"
	export RUSTFLAGS
	echo "prosody-native: building with $cargo ($("$cargo" --version 2>&1)), $network"
	# shellcheck disable=SC2086 # $target is one word or none
	"$cargo" build --release "$network" --features lua54 --target-dir "$target_dir" $target \
		|| fail "cargo build failed (see above); it needs Rust $(rust_version) or newer and $where"
	mkdir -p build
	cp "$output/libprosody_native.so" build/prosody_native.so
}

case ${1:-} in
	build) build ;;
	*) fail "usage: $0 build" ;;
esac
