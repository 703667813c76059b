-- The shared helpers' load-time checks: finding the native library where `prosodyctl install` puts it, refusing
-- one of another version, and compat.check_host on each kind of host.

local helper_path = "lua/prosody_native.lib.lua";
local helper_source = assert(io.open(helper_path)):read("a");
local library_path = assert(io.popen("realpath build/prosody_native.so")):read("l");

local function run(command)
	assert(os.execute(command), command);
end

-- A rocks tree as `prosodyctl install` lays it out, optionally without the library.
local function rocks_tree(with_library)
	local tree = assert(io.popen("mktemp -d")):read("l");
	run(("mkdir -p %s/share/lua/5.4 %s/lib/lua/5.4"):format(tree, tree));
	run(("cp %s %s/share/lua/5.4/"):format(helper_path, tree));
	if with_library then
		-- A link to the library the other specs load, so the process keeps one copy of it.
		run(("ln -s %s %s/lib/lua/5.4/prosody_native.so"):format(library_path, tree));
	end
	return tree;
end

-- Runs the helper as Prosody would (chunk name "@path"), with no cached library and an empty package.cpath.
local function load_helper(path, source)
	local saved_loaded, saved_cpath = package.loaded.prosody_native, package.cpath;
	package.loaded.prosody_native, package.cpath = nil, "";
	local ok, result = pcall(assert(load(source or helper_source, "@" .. path)));
	package.loaded.prosody_native, package.cpath = saved_loaded, saved_cpath;
	return ok, result;
end

describe("prosody_native helper", function ()
	local trees = {};
	local function new_tree(with_library)
		local tree = rocks_tree(with_library);
		table.insert(trees, tree);
		return tree;
	end
	teardown(function ()
		for _, tree in ipairs(trees) do run("rm -rf " .. tree); end
	end);

	it("finds the library in a rocks tree's lib/lua/5.4, which Prosody leaves out of package.cpath", function ()
		local tree = new_tree(true);
		local ok, native = load_helper(tree .. "/share/lua/5.4/prosody_native.lib.lua");
		assert.is_true(ok, native);
		assert.equal(helper_source:match('local expected_version = "([^"]+)"'), native.version);
	end);

	it("says where it looked when the library is missing", function ()
		local tree = new_tree(false);
		local ok, err = load_helper(tree .. "/share/lua/5.4/prosody_native.lib.lua");
		assert.is_false(ok);
		assert.matches("native library prosody_native.so not found", err, 1, true);
		assert.matches(tree .. "/share/lua/5.4/../../../lib/lua/5.4/prosody_native.so", err, 1, true);
		assert.matches("'prosodyctl install' of the module", err, 1, true);
	end);

	it("refuses a library of another version, naming its file and what to do", function ()
		local tree = new_tree(true);
		local source = helper_source:gsub('local expected_version = "', 'local expected_version = "9.9.9-', 1);
		local ok, err = load_helper(tree .. "/share/lua/5.4/prosody_native.lib.lua", source);
		assert.is_false(ok);
		assert.matches("/lib/lua/5.4/prosody_native.so is version ", err, 1, true);
		assert.matches("these modules need 9.9.9-", err, 1, true);
		assert.matches("reinstall both together", err, 1, true);
	end);

	it("asks for a restart when the process still runs the library of an earlier release", function ()
		local source = helper_source:gsub('local expected_version = "', 'local expected_version = "9.9.9-', 1);
		local saved = package.loaded.prosody_native;
		package.loaded.prosody_native = { version = "0.0.1" };
		local ok, err = pcall(assert(load(source, "@" .. helper_path)));
		package.loaded.prosody_native = saved;
		assert.is_false(ok);
		assert.matches("still runs native library 0.0.1, loaded before the upgrade to 9.9.9-", err, 1, true);
		assert.matches("restart Prosody to finish the upgrade", err, 1, true);
	end);

	it("tells each module once, at debug and in its status, which release it runs on", function ()
		local logged, statuses = {}, {};
		local fake = { status = nil };
		function fake.log(_, level, fmt, ...) table.insert(logged, level .. " " .. fmt:format(...)); end
		function fake:set_status(kind, text) self.status = text; table.insert(statuses, kind .. " " .. text); end
		function fake:get_status() return self.status and "info", self.status; end
		local env = setmetatable({ module = fake }, { __index = _G });
		local native;
		for _ = 1, 2 do -- the media module requires the helper twice
			native = assert(load(helper_source, "@" .. helper_path, "t", env))();
		end
		local expected = "prosody-native " .. native.version;
		assert.same({ "debug " .. expected }, logged);
		assert.same({ "info " .. expected }, statuses);
	end);
end);

describe("compat.check_host", function ()
	local compat = dofile("lua/prosody_native_compat.lib.lua");
	local saved_prosody = _G.prosody;
	after_each(function () _G.prosody = saved_prosody; end);

	-- A module on a host of `host_type` ("local", "component", "global"), recording its log lines.
	local function fake_module(host_type, component_module, shared)
		local module = { name = "muc_hats_api"; host = host_type == "global" and "*" or "example.org"; logged = {} };
		function module.get_host_type() return host_type; end
		function module.get_option_string(_, name)
			if name == "component_module" then return component_module; end
		end
		function module.shared() return shared or {}; end
		function module:log(level, message, ...)
			table.insert(self.logged, level .. ": " .. message:format(...));
		end
		return module;
	end

	local accepted = {
		{ "muc", "component", "muc" };
		{ "component", "component", "muc" };
		{ "component", "component", nil };
		{ "local", "local", nil };
	};
	for _, case in ipairs(accepted) do
		it(("accepts a %s module on a %s %s"):format(case[1], case[2], case[3] or ""), function ()
			_G.prosody = { version = "13.0.2" };
			local module = fake_module(case[2], case[3]);
			compat.check_host(module, case[1]);
			assert.same({}, module.logged);
		end);
	end

	local refused = {
		{ "muc", "local", nil, 'mod_muc_hats_api only works on a MUC component, not on VirtualHost "example.org": '
			.. 'list it in modules_enabled under Component "rooms.example.org" "muc" instead' };
		{ "muc", "component", "http_file_share", 'not on Component "example.org" "http_file_share"' };
		{ "muc", "component", nil, 'not on Component "example.org":' };
		{ "muc", "global", nil, "not on the global section" };
		{ "local", "component", "muc", 'only works on a VirtualHost, not on Component "example.org" "muc": '
			.. 'list it in modules_enabled under VirtualHost "example.org" instead' };
		{ "component", "local", nil, "only works on a component" };
	};
	for _, case in ipairs(refused) do
		it(("stops a %s module on a %s %s with one line saying where it belongs"):format(case[1], case[2], case[3] or ""),
			function ()
				local ok, err = pcall(compat.check_host, fake_module(case[2], case[3]), case[1]);
				assert.is_false(ok);
				assert.matches(case[4], err, 1, true);
				assert.is_nil(err:find("\n"));
			end);
	end

	it("raises on an unknown host kind", function ()
		assert.has_error(function () compat.check_host(fake_module("local"), "virtualhost"); end);
	end);

	for _, version in ipairs({ "0.12.3", "0.12.5", "13.0.0", "13.0.2" }) do
		it("says nothing on Prosody " .. version, function ()
			_G.prosody = { version = version };
			local module = fake_module("component", "muc");
			compat.check_host(module, "muc");
			assert.same({}, module.logged);
		end);
	end

	it("warns once per process on an untested Prosody, and still loads", function ()
		_G.prosody = { version = "0.11.9" };
		local shared = {};
		local first, second = fake_module("component", "muc", shared), fake_module("component", "muc", shared);
		compat.check_host(first, "muc");
		compat.check_host(second, "muc");
		assert.equal(1, #first.logged);
		assert.matches("^warn: prosody%-native is tested on Prosody 0.12 and 13.0, not 0.11.9;", first.logged[1]);
		assert.same({}, second.logged);
	end);

	it("warns about a development build whose version names no release", function ()
		_G.prosody = { version = "hg:4f2a1b" };
		local module = fake_module("local");
		compat.check_host(module, "local");
		assert.matches("not hg:4f2a1b", module.logged[1], 1, true);
	end);
end);

describe("compat.audit", function ()
	local compat = dofile("lua/prosody_native_compat.lib.lua");

	local function audit(action, fields)
		local module = { logged = {} };
		function module:log(level, message, ...)
			table.insert(self.logged, level .. ": " .. message:format(...));
		end
		compat.audit(module, action, fields);
		return module.logged;
	end

	it("logs one info line with the fields sorted by key and nil ones left out", function ()
		assert.same({ "info: AUDIT hat-added actor=alice@example.org room=lobby@rooms.example.org" },
			audit("hat-added", { room = "lobby@rooms.example.org"; actor = "alice@example.org"; title = nil }));
	end);

	local quoted = {
		{ "two words", '"two words"' };
		{ "", '""' };
		{ 'say "hi"', '"say \\"hi\\""' };
		{ "a=b", '"a=b"' };
		{ "back\\slash", '"back\\\\slash"' };
		{ "line\nAUDIT forged x=1", '"line\\x0aAUDIT forged x=1"' };
		{ " Spammer ", '" Spammer "' };
	};
	for _, case in ipairs(quoted) do
		it(("quotes and escapes %q so it stays one field of one line"):format(case[1]), function ()
			local logged = audit("kick", { nickname = case[1] });
			assert.equal(1, #logged);
			assert.equal("info: AUDIT kick nickname=" .. case[2], logged[1]);
			assert.is_nil(logged[1]:find("\n"));
		end);
	end

	it("writes numbers and booleans as words", function ()
		assert.same({ "info: AUDIT invite-created remaining=3 reset=true" },
			audit("invite-created", { remaining = 3; reset = true }));
	end);

	it("logs from one coroutine of its own, not from the caller's, and returns to the caller", function ()
		local module, threads = {}, {};
		function module.log() table.insert(threads, (coroutine.running())); end
		local callers = {};
		for i = 1, 2 do
			local caller = coroutine.create(function () compat.audit(module, "kick-refused", { code = "x" }); return "back"; end);
			callers[i] = caller;
			assert.same({ true, "back" }, { coroutine.resume(caller) });
		end
		compat.audit(module, "kick-refused", { code = "x" }); -- from the main thread too
		assert.equal(3, #threads);
		assert.equal(threads[1], threads[2]);
		assert.equal(threads[1], threads[3]);
		assert.not_equal(callers[1], threads[1]);
		assert.not_equal(callers[2], threads[1]);
	end);

	it("passes an error of the logger on to the caller and logs the next line", function ()
		local module, logged, fail = {}, {}, true;
		function module.log(_, _, _, line)
			if fail then fail = false; error("disk full"); end
			table.insert(logged, line);
		end
		assert.has_error(function () compat.audit(module, "kick-refused", { code = "x" }); end, "disk full");
		compat.audit(module, "kick-refused", { code = "y" });
		assert.same({ "AUDIT kick-refused code=y" }, logged);
	end);

	it("logs a line audited from inside the logger too", function ()
		local module, logged = {}, {};
		function module.log(_, _, _, line)
			table.insert(logged, line);
			if #logged == 1 then compat.audit(module, "inner", {}); end
		end
		compat.audit(module, "outer", {});
		assert.same({ "AUDIT outer", "AUDIT inner" }, logged);
	end);
end);
