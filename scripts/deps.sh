#!/usr/bin/env bash
# Installs everything that building, testing and running prosody-native needs on Debian 12, as root.
# Idempotent and fast when all is there: each step runs only when its result is missing or its input changed.
#
#   apt packages      Prosody 0.12 (system), Lua 5.4, busted, luacheck, LuaDBI SQLite3 and PostgreSQL, a PostgreSQL
#                     server (the rig runs its own cluster in a temporary folder; the system's is never started), ...
#   .deps/prosody13/  Prosody 13 from bookworm-backports, unpacked beside the system's 0.12 (never installed)
#   .deps/bin/        prosody13 and prosodyctl13 wrappers that run it from there
#   .venv/            Python venv for the integration tests, from tests/requirements.txt
#   .deps/arm64/      Debian's arm64 Lua 5.4, busted's and Prosody's C modules, unpacked: the specs run under
#                     qemu-aarch64 against the linux-aarch64 library
#   rustup target     aarch64-unknown-linux-gnu, for the linux-aarch64 binary rock
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.deps

APT_PACKAGES=(
	prosody lua5.4 liblua5.4-dev lua-busted lua-check luarocks lua-dbi-sqlite3
	# building the Debian package (make deb, tests/test_install.py)
	debhelper
	# the linux-aarch64 binary rock: cross compiler, and qemu to run the specs against it
	gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
	postgresql lua-dbi-postgresql
	# mod_http_muc_kick: its README's fail2ban filter is tested with fail2ban-regex; wrk drives its benchmark
	fail2ban wrk
	# Prosody 13's Depends and Recommends that bookworm has (it needs nothing from backports but itself)
	lua-expat lua-filesystem lua-bitop lua-sec lua-socket lua-event lua-readline lua-unbound libicu72 libssl3 ssl-cert
)
BACKPORTS_SOURCE="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main"
PROSODY13=$DEPS/prosody13
PROSODY13_STAMP=$DEPS/prosody13.stamp
PIP_STAMP=$DEPS/pip.stamp
ARM64=$DEPS/arm64
# A root for `qemu-aarch64 -L`: libc, Lua and busted's C modules, and Prosody's util/*.so that module specs load.
ARM64_PACKAGES=(libc6 libgcc-s1 libstdc++6 libreadline8 libtinfo6 libicu72 libssl3 lua5.4 liblua5.4-0 lua-filesystem
	lua-system lua-term lua-socket prosody)
ARM64_SOURCE="deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main"

log() { printf 'deps: %s\n' "$*"; }

# Debian packages: apt-get update only when something is missing and the lists do not offer it.
install_apt_packages() {
	local installed missing=()
	installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null \
		| awk '/ install ok installed$/ {print $1}' || true)
	for pkg in "${APT_PACKAGES[@]}"; do
		grep -qx "$pkg" <<<"$installed" || missing+=("$pkg")
	done
	[ ${#missing[@]} -eq 0 ] && return
	[ "$(id -u)" -eq 0 ] || { log "missing ${missing[*]}; run as root"; exit 1; }
	log "installing ${missing[*]}"
	local need_update=
	for pkg in "${missing[@]}"; do
		apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]' || need_update=1
	done
	[ -n "$need_update" ] && apt-get update -q
	# Lists older than the mirror name files it no longer has: then update and try once more.
	apt_install "${missing[@]}" || { apt-get update -q && apt_install "${missing[@]}"; }
}

apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"; }

# The Debian package starts its service; tests and `make run` start their own Prosody, so it must not hold ports.
stop_system_prosody() {
	if [ -d /run/systemd/system ] && systemctl is-active --quiet prosody 2>/dev/null; then
		log "stopping the system's prosody service"
		systemctl disable --now prosody.service >/dev/null 2>&1 || true
	fi
	local pid
	pid=$(cat /run/prosody/prosody.pid 2>/dev/null || true)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		log "stopping the system's prosody (pid $pid)"
		/etc/init.d/prosody stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
	fi
}

# apt-get on a private state (own sources, lists and cache), so the system's apt and its Prosody 0.12 stay untouched.
private_apt() {
	local dir=$DEPS/apt
	apt-get -q \
		-o Dir::State="$dir/state" -o Dir::State::status="$dir/state/status" \
		-o Dir::Cache="$dir/cache" \
		-o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts="$dir/empty.d" \
		-o Dir::Etc::Preferences="$dir/preferences" -o Dir::Etc::PreferencesParts="$dir/empty.d" \
		-o APT::Sandbox::User=root \
		"$@"
}

# An empty private apt state in $DEPS/apt with one source line; private_apt uses it.
new_private_apt() { # source line
	local dir=$DEPS/apt
	rm -rf "$dir"
	mkdir -p "$dir/state/lists/partial" "$dir/cache/archives/partial" "$dir/empty.d" "$dir/download"
	: >"$dir/state/status"
	: >"$dir/preferences"
	echo "$1" >"$dir/sources.list"
}

# Points a script of the unpacked package at its own tree instead of /usr/lib/prosody and /etc/prosody.
relocate() {
	sed -i \
		-e "s|^CFG_SOURCEDIR=.*|CFG_SOURCEDIR='$PROSODY13/usr/lib/prosody';|" \
		-e "s|^CFG_CONFIGDIR=.*|CFG_CONFIGDIR='$PROSODY13/etc/prosody';|" \
		-e "s|^CFG_PLUGINDIR=.*|CFG_PLUGINDIR='$PROSODY13/usr/lib/prosody/modules/';|" \
		-e "s|^CFG_DATADIR=.*|CFG_DATADIR='$PROSODY13/var/lib/prosody';|" \
		"$1"
	grep -q "^CFG_SOURCEDIR='$PROSODY13/" "$1" || { log "could not relocate $1"; exit 1; }
}

write_wrapper() { # name, script
	printf '#!/bin/sh\n# Runs Prosody 13 unpacked in %s (made by scripts/deps.sh).\nexec lua5.4 %s "$@"\n' \
		"$PROSODY13" "$PROSODY13/usr/bin/$2" >"$DEPS/bin/$1"
	chmod 755 "$DEPS/bin/$1"
}

# Prosody 13 from bookworm-backports, unpacked into .deps/prosody13 and relocated there. The stamp names the
# version and the folder, so a moved checkout unpacks again.
install_prosody13() {
	if [ -f "$PROSODY13_STAMP" ] && [ "$(sed -n 2p "$PROSODY13_STAMP")" = "$PROSODY13" ] \
		&& [ -x "$DEPS/bin/prosody13" ] && [ -x "$DEPS/bin/prosodyctl13" ]; then
		return
	fi
	log "fetching Prosody 13 from bookworm-backports"
	local dir=$DEPS/apt
	new_private_apt "$BACKPORTS_SOURCE"
	private_apt update
	(cd "$dir/download" && private_apt download prosody)
	local deb version
	deb=$(ls "$dir"/download/prosody_*.deb)
	version=$(dpkg-deb -f "$deb" Version)
	case $version in 13.*) ;; *) log "bookworm-backports has prosody $version, expected 13.x"; exit 1 ;; esac

	rm -rf "$PROSODY13" "$PROSODY13.tmp"
	dpkg-deb -x "$deb" "$PROSODY13.tmp"
	mv "$PROSODY13.tmp" "$PROSODY13"
	mkdir -p "$PROSODY13/var/lib/prosody" "$DEPS/bin"
	relocate "$PROSODY13/usr/bin/prosody"
	relocate "$PROSODY13/usr/bin/prosodyctl"
	write_wrapper prosody13 prosody
	write_wrapper prosodyctl13 prosodyctl
	printf '%s\n%s\n' "$version" "$PROSODY13" >"$PROSODY13_STAMP"
	rm -rf "$dir"
	log "Prosody $version in $PROSODY13"
}

# Debian's arm64 Lua 5.4 and the C modules the specs load, unpacked into .deps/arm64 (the system's dpkg never sees
# them), so that `qemu-aarch64 -L .deps/arm64` runs the specs against the linux-aarch64 library
# (tests/test_install.py); and Rust's aarch64 target.
install_arm64() {
	if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
		log "adding Rust's aarch64-unknown-linux-gnu target"
		# rustup downloads it from Rust's own server; without it there is no linux-aarch64 rock, and its test skips.
		rustup target add aarch64-unknown-linux-gnu || log "warning: no aarch64 target, so no linux-aarch64 rock"
	fi
	[ "$(cat "$ARM64.stamp" 2>/dev/null)" = "${ARM64_PACKAGES[*]}" ] && [ -x "$ARM64/usr/bin/lua5.4" ] && return
	log "fetching arm64 ${ARM64_PACKAGES[*]}"
	local dir=$DEPS/apt deb
	new_private_apt "$ARM64_SOURCE"
	private_apt -o APT::Architecture=arm64 -o APT::Architectures::=arm64 update
	(cd "$dir/download" && private_apt -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
		download "${ARM64_PACKAGES[@]}")
	rm -rf "$ARM64"
	for deb in "$dir"/download/*.deb; do dpkg-deb -x "$deb" "$ARM64"; done
	rm -rf "$dir"
	echo "${ARM64_PACKAGES[*]}" >"$ARM64.stamp"
}

# The test venv, reinstalled when tests/requirements.txt (or the Python) changes.
install_venv() {
	local want
	want="$(sha256sum tests/requirements.txt | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version)' | head -1)"
	if [ -x .venv/bin/python ] && [ -f "$PIP_STAMP" ] && [ "$(cat "$PIP_STAMP")" = "$want" ]; then
		return
	fi
	if ! python3 -c 'import ensurepip' 2>/dev/null; then
		log "python3 has no ensurepip; installing python3-venv"
		apt_install python3-venv || { apt-get update -q && apt_install python3-venv; }
	fi
	log "creating .venv from tests/requirements.txt"
	[ -x .venv/bin/python ] || python3 -m venv .venv
	.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	mkdir -p "$DEPS"
	echo "$want" >"$PIP_STAMP"
}

mkdir -p "$DEPS"
install_apt_packages
stop_system_prosody
install_prosody13
install_arm64
install_venv
