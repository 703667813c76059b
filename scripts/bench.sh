#!/bin/sh
# Runs every benchmark section, each printing its own table: scripts/bench_*.sh with sh, then
# scripts/bench_*.py with $PYTHON. Add a section by adding a script; BENCH_ONLY=NAME runs one section
# (NAME is the file name without bench_ and the extension, e.g. probe or media).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
status=0
for section in scripts/bench_*.sh scripts/bench_*.py; do
	[ -f "$section" ] || continue
	name=$(basename "$section")
	name=${name#bench_}
	name=${name%.*}
	if [ -n "${BENCH_ONLY:-}" ] && [ "$BENCH_ONLY" != "$name" ]; then
		continue
	fi
	echo "== bench: $name ($section) =="
	case "$section" in
	*.sh) sh "$section" || status=1 ;;
	*.py) "$PYTHON" "$section" || status=1 ;;
	esac
done
exit $status
