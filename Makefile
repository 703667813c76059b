# prosody-native: build, install, run, test.
# Every command sits in an overridable variable; `make test` and `make run` install what they need first.

CARGO ?= cargo
LUA ?= lua5.4
BUSTED ?= $(LUA) /usr/bin/busted
LUACHECK ?= luacheck
PYTHON ?= .venv/bin/python
PROSODY_VERSIONS ?= 0.12 13
FUZZ_SECONDS ?= 20

# Two ways to install: `make install MODULES_DIR=<a plugin_paths folder>` (modules, library and their READMEs only),
# or for packagers `make install DESTDIR=<staging> PREFIX=/usr`, which adds the project docs under share/doc.
PREFIX ?= /usr/local
DESTDIR ?=
MODULES_DIR ?= $(DESTDIR)$(PREFIX)/lib/prosody/modules
DOC_DIR ?= $(if $(filter file undefined,$(origin MODULES_DIR)),$(DESTDIR)$(PREFIX)/share/doc/prosody-native)

MODULES := $(notdir $(wildcard lua/mod_*))
LIBRARY := build/prosody_native.so
HELPERS := $(wildcard lua/*.lib.lua)
MODULE_FILES := $(patsubst lua/%,%,$(shell find $(addprefix lua/,$(MODULES)) -type f -not -name '.*' 2>/dev/null))
DOCS := README.md LICENSE

.PHONY: all deps install uninstall rocks dist deb run test test-rust test-lua test-integration test-fuzz lint bench clean

all: $(LIBRARY)

# The Lua module is Cargo's cdylib under the name Lua's loader expects.
$(LIBRARY): Cargo.toml Cargo.lock $(shell find rust -name '*.rs')
	$(CARGO) build --release --features lua54
	mkdir -p build
	cp target/release/libprosody_native.so $@

deps:
	scripts/deps.sh

# Installs exactly: the library, the shared helpers, every file of each lua/mod_*/ (module, README, resources),
# and the docs when DOC_DIR is set; uninstall removes exactly these and the folders install made for them.
install: $(LIBRARY)
	install -d $(MODULES_DIR)
	install -m 644 $(LIBRARY) $(HELPERS) $(MODULES_DIR)/
	for f in $(MODULE_FILES); do install -D -m 644 lua/$$f $(MODULES_DIR)/$$f || exit 1; done
	$(if $(DOC_DIR),install -d $(DOC_DIR) && install -m 644 $(DOCS) $(DOC_DIR)/)

uninstall:
	rm -f $(addprefix $(MODULES_DIR)/,$(notdir $(LIBRARY) $(HELPERS)) $(MODULE_FILES))
	for d in $(MODULES); do [ ! -d $(MODULES_DIR)/$$d ] || find $(MODULES_DIR)/$$d -depth -type d -empty -delete; done
	$(if $(DOC_DIR),rm -f $(addprefix $(DOC_DIR)/,$(DOCS)))
	$(if $(DOC_DIR),[ ! -d $(DOC_DIR) ] || rmdir --ignore-fail-on-non-empty $(DOC_DIR))

# A LuaRocks server folder for `prosodyctl install --server=$(CURDIR)/build/rocks mod_...`: binary rocks for this
# machine and the source rock as fallback (see scripts/rocks.sh).
rocks:
	scripts/rocks.sh build/rocks

# The release tarball with the crates vendored, build/dist/prosody-native-<version>.tar.gz (see scripts/dist.sh).
dist:
	scripts/dist.sh build/dist

# The Debian package, built offline from that tarball with dpkg-buildpackage, into build/deb/ (see scripts/deb.sh).
deb: dist
	scripts/deb.sh build/deb

run: deps $(LIBRARY)
	$(PYTHON) scripts/run.py

test: deps $(LIBRARY) lint test-rust test-fuzz test-lua test-integration

test-rust:
	$(CARGO) test --all-targets

# A short run of every cargo-fuzz target (image probing, address checks); see scripts/fuzz.sh.
test-fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

test-lua: $(LIBRARY)
	$(BUSTED)

test-integration: $(LIBRARY)
	PROSODY_VERSIONS="$(PROSODY_VERSIONS)" $(PYTHON) -m pytest tests

lint:
	scripts/version.sh
	$(LUACHECK) lua spec tests/plugins
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features lua54 -- -D warnings

bench: deps $(LIBRARY)
	scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf build
