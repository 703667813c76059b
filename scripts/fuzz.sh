#!/bin/sh
# Short fuzzing run: each cargo-fuzz target under fuzz/ for FUZZ_SECONDS (default 30), its corpus seeded
# from tests/data, built with debug assertions and overflow checks (-a). Needs a nightly toolchain (rustup)
# and cargo-fuzz, which it installs when missing. Without nightly it falls back to a long proptest run of
# the crate's "never panics" and "any split gives the answer of the whole" properties.
set -eu
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
CARGO=${CARGO:-cargo}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	echo "no nightly toolchain: running the proptest properties with many cases instead" >&2
	PROPTEST_CASES=${PROPTEST_CASES:-20000} "$CARGO" test --release --lib never_panic
	PROPTEST_CASES=${PROPTEST_CASES:-2000} exec "$CARGO" test --release --lib random_splits
fi
if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
	"$CARGO" install --locked cargo-fuzz
fi
for target in $(cd fuzz && "$CARGO" +nightly fuzz list); do
	corpus=fuzz/corpus/$target
	mkdir -p "$corpus"
	# Seeds: the test images, each behind a selector byte (0: default limits), and for probe_chunks a count
	# of cuts (0: none; the fuzzer adds them).
	prefix='\000'
	[ "$target" = probe_chunks ] && prefix='\000\000'
	for f in tests/data/*.jpg tests/data/*.png tests/data/*.gif tests/data/*.webp tests/data/*.avif; do
		[ -f "$f" ] || continue
		seed="$corpus/seed-$(basename "$f")"
		[ -f "$seed" ] || { printf "$prefix" | cat - "$f" > "$seed"; }
	done
	echo "== fuzz: $target for ${FUZZ_SECONDS}s =="
	# libFuzzer reports progress many times a second: keep it in a log, show it whole only on a failure.
	log=fuzz/target/$target.log
	mkdir -p fuzz/target
	if (cd fuzz && "$CARGO" +nightly fuzz run -a "$target" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 \
		-max_len=65536) > "$log" 2>&1; then
		grep '^Done ' "$log"
	else
		cat "$log"
		echo "fuzz: $target failed; the crashing input is in fuzz/artifacts/$target/" >&2
		exit 1
	fi
done
