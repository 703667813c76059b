# prosody-native: build, install, run, test.
# Every command sits in an overridable variable; `make test` and `make run` install what they need first.

CARGO ?= cargo
LUA ?= lua5.4
BUSTED ?= $(LUA) /usr/bin/busted
LUACHECK ?= luacheck
PYTHON ?= .venv/bin/python
PROSODY_VERSIONS ?= 0.12 13

PREFIX ?= /usr/local
DESTDIR ?=
MODULES_DIR ?= $(DESTDIR)$(PREFIX)/lib/prosody/modules

MODULES := $(notdir $(wildcard lua/mod_*))
LIBRARY := build/prosody_native.so

.PHONY: all deps install uninstall run test test-rust test-lua test-integration lint bench clean

all: $(LIBRARY)

# The Lua module is Cargo's cdylib under the name Lua's loader expects.
$(LIBRARY): Cargo.toml $(wildcard rust/*.rs)
	$(CARGO) build --release --features lua54
	mkdir -p build
	cp target/release/libprosody_native.so $@

deps:
	scripts/deps.sh

install: $(LIBRARY)
	install -d $(MODULES_DIR)
	install -m 644 $(LIBRARY) $(wildcard lua/*.lib.lua) $(MODULES_DIR)/
	for m in $(MODULES); do \
		install -d $(MODULES_DIR)/$$m && \
		install -m 644 lua/$$m/$$m.lua lua/$$m/README.markdown $(MODULES_DIR)/$$m/ || exit 1; \
	done

uninstall:
	rm -f $(MODULES_DIR)/prosody_native.so $(addprefix $(MODULES_DIR)/,$(notdir $(wildcard lua/*.lib.lua)))
	for m in $(MODULES); do rm -rf $(MODULES_DIR)/$$m; done

run: deps $(LIBRARY)
	$(PYTHON) scripts/run.py

test: deps $(LIBRARY) test-rust test-lua test-integration

test-rust:
	$(CARGO) test --all-targets

test-lua: $(LIBRARY)
	$(BUSTED)

test-integration: $(LIBRARY)
	PROSODY_VERSIONS="$(PROSODY_VERSIONS)" $(PYTHON) -m pytest tests

lint:
	$(LUACHECK) lua spec
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features lua54 -- -D warnings

bench: deps $(LIBRARY)
	scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf build
