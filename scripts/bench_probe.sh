#!/bin/sh
# Media probe benchmark (the Rust core alone): bytes in memory -> (type, width, height, BlurHash 4x3), ours against peers on
# real photos, in one run. Fetches its photos (Debian's mate-backgrounds) and installs its peers (sharp +
# blurhash from npm; Pillow + blurhash-python / fast-blurhash from PyPI) into the git-ignored .bench/, with nginx
# for the delivery benchmark.
# Variables: BENCH_DIR, BENCH_SECONDS (time per image and implementation), PYTHON3, NPM, CARGO.
set -eu
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-.bench}
PYTHON3=${PYTHON3:-python3}
NPM=${NPM:-npm}
CARGO=${CARGO:-cargo}
export BENCH_DIR CARGO

# Unpacks Debian's package $1 into $BENCH_DIR/root, without installing it (nginx's would start its service).
unpack_deb() {
	mkdir -p "$BENCH_DIR/debs"
	(cd "$BENCH_DIR/debs" && apt-get download "$1") || {
		echo "apt-get download $1 failed (run apt-get update first?)" >&2
		exit 1
	}
	dpkg-deb -x "$BENCH_DIR/debs/$1"_*.deb "$BENCH_DIR/root"
}

photos="$BENCH_DIR/root/usr/share/backgrounds/mate"
if [ ! -f "$photos/abstract/Elephants_5640x3172.jpg" ]; then
	unpack_deb mate-backgrounds
fi
# The delivery benchmark's file server (scripts/bench_delivery.py).
if [ ! -x "$BENCH_DIR/root/usr/sbin/nginx" ]; then
	unpack_deb nginx
fi

if [ ! -x "$BENCH_DIR/venv/bin/python" ]; then
	"$PYTHON3" -m venv "$BENCH_DIR/venv"
fi
"$BENCH_DIR/venv/bin/pip" install -q --disable-pip-version-check \
	pillow==13.0.0 blurhash-python==1.2.2 fast-blurhash==0.4.0
if [ ! -d "$BENCH_DIR/node_modules/sharp" ] || [ ! -d "$BENCH_DIR/node_modules/blurhash" ]; then
	"$NPM" install --prefix "$BENCH_DIR" --no-audit --no-fund --no-save sharp@0.35.5 blurhash@2.0.5
fi

"$CARGO" build --release --bench media
exec "$BENCH_DIR/venv/bin/python" scripts/bench_probe/driver.py
