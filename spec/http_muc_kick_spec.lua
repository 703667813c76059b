-- mod_http_muc_kick loaded with a small fake `module` and MUC: HTTP answers, kicks, tokens, limits, reloads, commands.
-- luacheck: ignore 212/self
package.path = "/usr/lib/prosody/?.lua;" .. package.path;
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath;

local json = require "util.json";
local native = require "prosody_native";

-- What prosodyctl's commands use of Prosody outside a module: storage set-up and the reload signal.
package.loaded["core.storagemanager"] = { initialize_host = function () end };
package.loaded["util.prosodyctl"] = { reload = function () return false, "not-running"; end };

local host = "muc.example.org";
local static_header = "Bearer c3RhdGljLWhlYWRlci1mb3ItdGhlLXNwZWMtb25seQ";
local secret = "0123456789abcdefghijklmnopqrstuvwxyz";
local new_secret = "zyxwvutsrqponmlkjihgfedcba9876543210";

local function fake_room(room_jid, occupants)
	local room = { jid = room_jid; kicks = {} };
	local function occupant_of(nick)
		local o = occupants[nick];
		return o and { nick = room_jid .. "/" .. nick; bare_jid = o.bare_jid };
	end
	function room:get_occupant_by_nick(occupant_jid)
		return occupant_of(occupant_jid:match("/(.*)$"));
	end
	function room:each_occupant()
		local nicks = {};
		for nick in pairs(occupants) do table.insert(nicks, nick); end
		local i = 0;
		return function ()
			i = i + 1;
			if nicks[i] then return room_jid .. "/" .. nicks[i], occupant_of(nicks[i]); end
		end;
	end
	function room:get_occupant_id(occupant)
		return "id-of-" .. occupant.bare_jid;
	end
	function room:get_affiliation(bare_jid)
		for _, occupant in pairs(occupants) do
			if occupant.bare_jid == bare_jid then return occupant.affiliation; end
		end
	end
	function room:set_role(actor, occupant_jid, role, reason)
		table.insert(self.kicks, { actor = actor; occupant = occupant_jid; role = role; reason = reason });
		return true;
	end
	return room;
end

-- A keyval store in memory, with users() as Prosody's drivers have it.
local function fake_store(data)
	local store = {};
	function store:get(key) return data[key]; end
	function store:set(key, value) data[key] = value; return true; end
	function store:users() return next, data, nil; end
	return store;
end

-- Loads the module file as Prosody would, on `module_host` ("*" for prosodyctl), with these options. `storage` is the
-- token registry's data, shared between loads to play a server and prosodyctl on one data folder.
local function load_module(given_options, module_host, storage)
	local options = {};
	for k, v in pairs(given_options) do options[k] = v; end
	local logs, provided, items, output, events, fired, metrics = {}, {}, {}, {}, {}, {}, {};
	local rooms = {
		["lobby@muc.example.org"] = fake_room("lobby@muc.example.org", {
			Bob = { bare_jid = "bob@example.org" };
			[" Spammer "] = { bare_jid = "spam@example.net" };
			Spam2 = { bare_jid = "spam@example.net" };
			Olga = { bare_jid = "olga@example.org"; affiliation = "owner" };
			Adam = { bare_jid = "adam@example.org"; affiliation = "admin" };
		});
		["other@muc.example.org"] = fake_room("other@muc.example.org", { Bob = { bare_jid = "bob@example.org" } });
	};
	storage = storage or {};
	local module = { name = "http_muc_kick"; host = module_host or host };
	local env;
	function module:require(name)
		local path = "lua/mod_http_muc_kick/" .. name .. ".lib.lua";
		if name == "prosody_native" then return native; end
		if not io.open(path) then path = "lua/" .. name .. ".lib.lua"; end
		local lib = assert(loadfile(path, "t", env))();
		if name == "prosody_native_compat" then
			-- These specs run against 0.12's libraries; act as 13 so that the shell commands are registered too.
			function lib.add_shell_command(m, command) m:add_item("shell-command", command); return true; end
		end
		return lib;
	end
	function module:get_host_type() return self.host == "*" and "global" or "component"; end
	function module:get_option(name, default)
		if options[name] == nil then return default; end
		return options[name];
	end
	module.get_option_string, module.get_option_boolean, module.get_option_number =
		module.get_option, module.get_option, module.get_option;
	function module:context(context_host)
		return setmetatable({ host = context_host }, { __index = self; __newindex = self });
	end
	function module:depends(name)
		if name == "muc" then return { get_room_from_jid = function (jid) return rooms[jid]; end }; end
		return {};
	end
	function module:provides(kind, item) provided[kind] = item; end
	function module:add_item(kind, item)
		items[kind] = items[kind] or {};
		items[kind][item.name] = item;
	end
	function module:log(level, format, ...) table.insert(logs, { level = level; text = format:format(...) }); end
	function module:hook_global(name, handler) events[name] = handler; end
	function module:fire_event(name, payload) table.insert(fired, { name = name; payload = payload }); end
	function module:open_store(name)
		storage[name] = storage[name] or {};
		return fake_store(storage[name]);
	end
	function module:metric(kind, name, unit, description, labels)
		local family = { kind = kind; unit = unit; description = description; labels = labels; counts = {} };
		metrics[name] = family;
		family.with_labels = function (_, label)
			return { add = function (_, n) family.counts[label] = (family.counts[label] or 0) + n; end };
		end
		return family;
	end
	local shared = {};
	function module:shared(path) shared[path] = shared[path] or {}; return shared[path]; end
	local clock = {}; -- clock.now, when set, is what os.time() answers the module
	env = setmetatable({
		os = setmetatable({ time = function (...) return clock.now or os.time(...); end }, { __index = os });
		module = module;
		prosody = { hosts = { [host] = {} }; paths = { config = "/nonexistent" } };
		print = function (s) table.insert(output, s); end;
		io = { stderr = { write = function (_, ...) table.insert(output, table.concat({ ... })); end }; open = io.open };
	}, { __index = _G });
	assert(loadfile("lua/mod_http_muc_kick/mod_http_muc_kick.lua", "t", env))();
	return { module = module; http = provided.http; shell = items["shell-command"]; logs = logs; rooms = rooms;
		output = output; events = events; fired = fired; metrics = metrics; storage = storage; options = options;
		clock = clock };
end

local default_options = {
	component_module = "muc";
	http_muc_kick_authorization_header = static_header;
	http_muc_kick_token_secret = secret;
};

local unset = {}; -- with_options({ name = unset }) removes an option

local function with_options(extra)
	local options = {};
	for k, v in pairs(default_options) do options[k] = v; end
	for k, v in pairs(extra or {}) do
		if v == unset then options[k] = nil; else options[k] = v; end
	end
	return options;
end

-- Sends a request to the module's route; returns status, decoded JSON body, response headers, response.
local function request(server, method, headers, body, extra)
	local response = { headers = {}; persistent = true };
	local req = { method = method; path = "/muc_kick"; ip = "192.0.2.7"; headers = headers; body = body };
	for k, v in pairs(extra or {}) do req[k] = v; end
	local result = server.http.route[method]({ request = req; response = response });
	return response.status_code, json.decode(result), response.headers, response, result;
end

local json_headers = { authorization = static_header; content_type = "application/json" };

local function post(server, body, headers, extra)
	return request(server, "POST", headers or json_headers, body, extra);
end

local function bearer(token)
	return { authorization = "Bearer " .. token; content_type = "application/json; charset=utf-8" };
end

local function keyring(s)
	return assert(native.token.keyring(host, { { secret = s or secret } }));
end

local function mint(rooms, now, ttl, s)
	return assert(keyring(s):mint(rooms, now or os.time(), ttl or 3600, "0123456789abcdef", "ci-bot"));
end

local function log_text(server)
	local lines = {};
	for _, entry in ipairs(server.logs) do table.insert(lines, entry.level .. " " .. entry.text); end
	return table.concat(lines, "\n");
end

local kick_bob = '{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"Bye"}';
local kick_eve = '{"nickname":"Eve","muc":"lobby@muc.example.org"}'; -- passes every check, then 404: nobody to kick

describe("mod_http_muc_kick loading", function ()
	it("refuses to load with neither a static header nor a token secret, saying why", function ()
		assert.has_error(function ()
			load_module(with_options({ http_muc_kick_authorization_header = unset; http_muc_kick_token_secret = unset }));
		end, "Neither http_muc_kick_token_secret nor http_muc_kick_authorization_header is set: refusing to serve "
			.. "kicks without credentials (set http_muc_kick_token_secret_file to use tokens; see the README)");
	end);

	it("loads with tokens only", function ()
		local server = load_module(with_options({ http_muc_kick_authorization_header = unset }));
		assert.equal(200, (post(server, kick_bob, bearer(mint(nil)))));
	end);

	it("takes an empty static header for no static header, which an empty Authorization never matches", function ()
		local server = load_module(with_options({ http_muc_kick_authorization_header = "" }));
		assert.matches("warn http_muc_kick_authorization_header is empty", log_text(server), 1, true);
		for _, authorization in ipairs({ "", " " }) do
			local status, body = post(server, kick_bob, { authorization = authorization; content_type = "application/json" });
			assert.equal(401, status);
			assert.equal("unauthorized", body.code);
		end
		assert.same({}, server.rooms["lobby@muc.example.org"].kicks);
		assert.has_error(function ()
			load_module(with_options({ http_muc_kick_authorization_header = ""; http_muc_kick_token_secret = unset }));
		end);
	end);

	local weak = {
		{ "a short static header", { http_muc_kick_authorization_header = "Basic dXNlcm5hbWU6cGFzc3dvcmQ=" },
			"http_muc_kick_authorization_header must be at least 32 characters" };
		{ "0.1.0's README header", { http_muc_kick_authorization_header = "Basic YWxhZGRpbjpvcGVuc2VzYW1l" },
			"at least 32 characters" };
		{ "a short token secret", { http_muc_kick_token_secret = "short" }, "The token secret must be at least 32" };
		{ "0.1.0's README secret", { http_muc_kick_token_secret = "hJ0w3bqKpB0yBw0m3e0nq4mJ8XfWkE4oVqf7s9RZQ2c1" },
			"example from the documentation" };
		{ "a secret both inline and from a file", { http_muc_kick_token_secret_file = "/etc/secret" }, "not both" };
		{ "an unreadable secret file", { http_muc_kick_token_secret = unset; http_muc_kick_token_secret_file = "/nope" },
			"Cannot read http_muc_kick_token_secret_file /nope" };
		{ "a previous secret without an end date", { http_muc_kick_previous_token_secrets = { { secret = new_secret } } },
			"needs accept_until" };
		{ "a previous secret with an unreadable end date", {
			http_muc_kick_previous_token_secrets = { { secret = new_secret; accept_until = "soon" } } }, "YYYY-MM-DD" };
		{ "a previous secret with a typo", {
			http_muc_kick_previous_token_secrets = { { secret = new_secret; until_date = "2025-01-01" } } },
			"unknown field \"until_date\"" };
		{ "previous secrets without a current one", { http_muc_kick_token_secret = unset;
			http_muc_kick_previous_token_secrets = { { secret = new_secret; accept_until = "2030-01-01" } } },
			"needs http_muc_kick_token_secret" };
	};
	for _, case in ipairs(weak) do
		it("refuses to load with " .. case[1], function ()
			local ok, err = pcall(load_module, with_options(case[2]));
			assert.is_false(ok);
			assert.matches(case[3], err, 1, true);
			assert.is_nil(err:find("dXNlcm5hbWU6", 1, true));
			assert.is_nil(err:find("hJ0w3bq", 1, true));
		end);
	end

	it("reads the token secret from a file, trimming its final newline", function ()
		local path = os.tmpname();
		local f = assert(io.open(path, "w"));
		f:write(secret, "\n");
		f:close();
		local server = load_module(with_options({ http_muc_kick_token_secret = unset; http_muc_kick_token_secret_file = path }));
		os.remove(path);
		assert.equal(200, (post(server, kick_bob, bearer(mint(nil)))));
	end);

	it("refuses to load on a component that is not a MUC", function ()
		assert.has_error(function () load_module(with_options({ component_module = "http_file_share" })); end);
	end);

	it("only defines the command when prosodyctl loads it globally", function ()
		local server = load_module({}, "*");
		assert.is_function(server.module.command);
		assert.is_nil(server.http);
	end);

	it("serves POST on /muc_kick and logs its configuration once, without secrets", function ()
		local server = load_module(default_options);
		assert.equal("/muc_kick", server.http.default_path);
		assert.is_function(server.http.route.POST);
		assert.is_true(server.http.streaming_uploads); -- else mod_http never shows it a request before its body
		local log = log_text(server);
		assert.matches('info AUDIT kick-config-loaded keys="' .. keyring():key_ids()[1].id
			.. ' (signs new tokens)" revoked=0 static_header=on', log, 1, true);
		assert.is_nil(log:find(secret, 1, true));
	end);
end);

describe("mod_http_muc_kick requests", function ()
	local server;
	before_each(function () server = load_module(default_options); end);

	it("kicks the occupant with the reason, logs one audit line, counts it and fires an event", function ()
		local status, body = post(server, '{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"Spam"}');
		assert.equal(200, status);
		assert.same({ kicked = "Bob"; nicknames = { "Bob" }; muc = "lobby@muc.example.org" }, body);
		assert.same({ { actor = true; occupant = "lobby@muc.example.org/Bob"; role = "none"; reason = "Spam" } },
			server.rooms["lobby@muc.example.org"].kicks);
		assert.matches("info AUDIT occupant-kicked address=192.0.2.7 credential=static jid=bob@example.org nickname=Bob "
			.. "reason=Spam room=lobby@muc.example.org target=nickname", log_text(server), 1, true);
		assert.is_nil(log_text(server):find(static_header, 1, true));
		assert.equal(1, server.metrics.requests.counts.kicked);
		assert.same({ { name = "http-muc-kick"; payload = {
			room = server.rooms["lobby@muc.example.org"]; nickname = "Bob"; occupant_jid = "lobby@muc.example.org/Bob";
			jid = "bob@example.org"; reason = "Spam"; credential = "static"; address = "192.0.2.7"; target = "nickname";
		} } }, server.fired);
	end);

	it("kicks a nickname with spaces exactly as given", function ()
		local status, body = post(server, '{"nickname":" Spammer ","muc":"lobby@muc.example.org"}');
		assert.equal(200, status);
		assert.equal(" Spammer ", body.kicked);
		assert.equal("lobby@muc.example.org/ Spammer ", server.rooms["lobby@muc.example.org"].kicks[1].occupant);
		assert.matches('nickname=" Spammer "', log_text(server), 1, true);
	end);

	it("kicks a non-ASCII nickname as resourceprep prepares it, and an ASCII one as sent", function ()
		-- Printable ASCII skips resourceprep; anything else goes through it (NFKC makes fullwidth letters ASCII).
		local status, body = post(server, '{"nickname":"\u{FF22}\u{FF4F}\u{FF42}","muc":"lobby@muc.example.org"}');
		assert.equal(200, status);
		assert.equal("Bob", body.kicked);
		assert.equal(404, (post(server, '{"nickname":"bob","muc":"lobby@muc.example.org"}')));
		assert.equal(404, (post(server, '{"nickname":"Spammer","muc":"lobby@muc.example.org"}')));
	end);

	it("answers 404 occupant-not-found naming the nickname, escaped or not, byte for byte", function ()
		local _, _, _, _, raw = post(server, kick_eve);
		assert.equal('{"error":"Nobody with the nickname \\"Eve\\" is in the room lobby@muc.example.org",'
			.. '"code":"occupant-not-found"}', raw);
		local status, body = post(server, '{"nickname":"E\\\\v\\"e \u{e9}","muc":"lobby@muc.example.org"}');
		assert.equal(404, status);
		assert.equal('Nobody with the nickname "E\\\\v\\"e \u{e9}" is in the room lobby@muc.example.org', body.error);
		assert.equal("occupant-not-found", body.code);
	end);

	it("kicks every nickname of one account by real JID or occupant id", function ()
		for _, body in ipairs({ '{"jid":"spam@example.net","muc":"lobby@muc.example.org"}',
				'{"occupant_id":"id-of-spam@example.net","muc":"lobby@muc.example.org"}' }) do
			server = load_module(default_options);
			local status, answer = post(server, body);
			assert.equal(200, status);
			assert.same({ " Spammer ", "Spam2" }, answer.nicknames);
			assert.equal(2, #server.rooms["lobby@muc.example.org"].kicks);
			assert.equal(2, #server.fired);
		end
	end);

	it("refuses an occupant id when the service gives none", function ()
		server = load_module(with_options({ muc_occupant_id = false }));
		local status, body = post(server, '{"occupant_id":"id-of-bob@example.org","muc":"lobby@muc.example.org"}');
		assert.equal(400, status);
		assert.matches("does not give occupants ids", body.error, 1, true);
	end);

	local refusals = {
		{ "no Authorization header", { content_type = "application/json" }, "{}", 401, "unauthorized",
			"Missing Authorization header" };
		{ "a wrong Authorization header", { authorization = "Basic bm9wZQ=="; content_type = "application/json" },
			"{}", 401, "unauthorized", "Wrong Authorization header" };
		{ "a body not declared as JSON", { authorization = static_header; content_type = "text/plain" },
			'{"nickname":"Bob","muc":"lobby@muc.example.org"}', 415, "unsupported-media-type", "Content-Type: application/json" };
		{ "a body without Content-Type", { authorization = static_header }, "{}", 415, "unsupported-media-type",
			"application/json" };
		{ "a body that is not JSON", nil, "nickname=Bob", 400, "bad-request", "Body is not valid JSON" };
		{ "a JSON array", nil, '["Bob"]', 400, "bad-request", "Body must be a JSON object, not an array" };
		{ "a repeated field", nil, '{"nickname":"Eve","muc":"lobby@muc.example.org","nickname":"Bob"}', 400,
			"bad-request", "Field 'nickname' appears more than once" };
		{ "a missing muc", nil, '{"nickname":"Bob"}', 400, "bad-request", "Missing 'muc'" };
		{ "a number as nickname", nil, '{"nickname":7,"muc":"lobby@muc.example.org"}', 400, "bad-request",
			"'nickname' must be a string" };
		{ "a malformed room JID", nil, '{"nickname":"Bob","muc":"lobby@muc..example.org"}', 400, "bad-request",
			"not a valid room JID" };
		{ "a large body", nil, '{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"' .. ("x"):rep(5000) .. '"}',
			413, "too-large", "Body is larger than 4096 bytes" };
		{ "a room of another host", nil, '{"nickname":"Bob","muc":"lobby@chat.example.net"}', 404, "room-not-found",
			"is not on this MUC service" };
		{ "a room whose host stringprep turns into a full JID", nil, '{"nickname":"Bob","muc":"lobby@muc.example.org\xef\xbc\x8fx"}',
			404, "room-not-found", "Room lobby@muc.example.org/x is not on this MUC service" };
		{ "a room that does not exist", nil, '{"nickname":"Bob","muc":"nowhere@muc.example.org"}', 404, "room-not-found",
			"does not exist" };
		{ "a nickname not in the room", nil, '{"nickname":"Eve","muc":"lobby@muc.example.org"}', 404, "occupant-not-found",
			'Nobody with the nickname "Eve"' };
		{ "a nickname with a quote and a backslash", nil, [[{"nickname":"E\"v\\e","muc":"lobby@muc.example.org"}]], 404,
			"occupant-not-found", [[Nobody with the nickname "E\"v\\e" is in the room]] };
		{ "a trimmed nickname", nil, '{"nickname":"Spammer","muc":"lobby@muc.example.org"}', 404, "occupant-not-found",
			'Nobody with the nickname "Spammer"' };
		{ "a JID not in the room", nil, '{"jid":"eve@example.org","muc":"lobby@muc.example.org"}', 404,
			"occupant-not-found", "Nobody with the JID eve@example.org" };
		{ "an owner", nil, '{"nickname":"Olga","muc":"lobby@muc.example.org"}', 403, "forbidden",
			"Olga is an owner of the room" };
		{ "an admin", nil, '{"jid":"adam@example.org","muc":"lobby@muc.example.org"}', 403, "forbidden",
			"Adam is an admin of the room" };
	};
	for _, case in ipairs(refusals) do
		it(("answers %d %s to %s and changes nothing"):format(case[4], case[5], case[1]), function ()
			local status, body, headers = post(server, case[3], case[2]);
			assert.equal(case[4], status);
			assert.equal("application/json", headers.content_type);
			assert.equal(case[5], body.code);
			assert.matches(case[6], body.error, 1, true);
			assert.same({}, server.rooms["lobby@muc.example.org"].kicks);
			assert.equal(1, server.metrics.requests.counts[case[5]]);
			if status == 401 then
				assert.equal('Bearer realm="muc.example.org"', headers.www_authenticate);
				assert.matches("info AUDIT kick-refused address=192.0.2.7 code=unauthorized status=401", log_text(server), 1, true);
			else
				assert.is_nil(log_text(server):find("AUDIT kick-refused", 1, true));
			end
		end);
	end

	it("writes a refusal's text into JSON escaped as JSON escapes it, byte for byte", function ()
		local escapes = { ['"'] = '\\"'; ["\\"] = "\\\\" };
		for _, nickname in ipairs({ 'E"v\\e', "\\", "Ève ☃", "tab\\t" }) do
			local response = { headers = {} };
			local raw = server.http.route.POST({ response = response; request = { method = "POST"; path = "/muc_kick";
				ip = "192.0.2.7"; headers = json_headers; body = json.encode({ nickname = nickname; muc = "lobby@muc.example.org" }) } });
			local text = ("Nobody with the nickname %q is in the room lobby@muc.example.org"):format(nickname);
			assert.equal(('{"error":"%s","code":"occupant-not-found"}'):format((text:gsub('["\\]', escapes))), raw);
			assert.equal(text, json.decode(raw).error);
		end
	end);

	it("answers 405 with Allow: POST to other methods", function ()
		for _, method in ipairs({ "GET", "PUT", "PATCH", "DELETE" }) do
			local status, body, headers = request(server, method, {}, nil);
			assert.equal(405, status);
			assert.equal("POST", headers.allow);
			assert.same({ error = "Only POST is allowed here"; code = "method-not-allowed" }, body);
		end
	end);

	it("answers a request whose body Prosody has not read at once, and closes the connection", function ()
		local status, body, headers, response = post(server, false, { content_length = "9437184" }, { partial = true });
		assert.equal(413, status);
		assert.equal("too-large", body.code);
		assert.equal("close", headers.connection);
		assert.is_false(response.persistent);
		assert.matches("info AUDIT kick-refused address=192.0.2.7 code=too-large status=413", log_text(server), 1, true);
	end);

	it("answers a chunked request 411 and closes the connection, whose chunks Prosody would take for a request", function ()
		local status, body, headers, response = post(server, "", { authorization = static_header;
			content_type = "application/json"; transfer_encoding = "chunked" });
		assert.equal(411, status);
		assert.equal("length-required", body.code);
		assert.equal("close", headers.connection);
		assert.is_false(response.persistent);
		assert.same({}, server.rooms["lobby@muc.example.org"].kicks);
	end);

	it("does not act on a request handed over again after it was answered", function ()
		local req = { method = "POST"; path = "/muc_kick"; ip = "192.0.2.7"; partial = true; headers = {
			authorization = static_header; content_type = "application/json"; content_length = tostring(#kick_bob) } };
		local response = { headers = {} };
		server.http.route.POST({ request = req; response = response });
		assert.equal(413, response.status_code);
		req.partial, req.body = nil, kick_bob;
		local finished = false;
		local again = { headers = {}; done = function () finished = true; end };
		assert.is_true(server.http.route.POST({ request = req; response = again }));
		assert.is_true(finished);
		assert.is_nil(again.status_code);
		assert.same({}, server.rooms["lobby@muc.example.org"].kicks);
	end);

	it("never puts the configured header in its challenge", function ()
		local header = "Sekrit c3RhdGljLWhlYWRlci1mb3ItdGhlLXNwZWMtb25seQ";
		server = load_module(with_options({ http_muc_kick_authorization_header = header }));
		local _, _, headers = post(server, kick_bob, { content_type = "application/json" });
		assert.equal('Bearer realm="muc.example.org"', headers.www_authenticate);
		server = load_module(with_options({ http_muc_kick_authorization_header = "Basic " .. header:sub(8) }));
		_, _, headers = post(server, kick_bob, { content_type = "application/json" });
		assert.equal('Basic realm="muc.example.org", Bearer realm="muc.example.org"', headers.www_authenticate);
	end);

	it("kicks owners and admins when http_muc_kick_allow_kicking_admins is set", function ()
		server = load_module(with_options({ http_muc_kick_allow_kicking_admins = true }));
		assert.equal(200, (post(server, '{"nickname":"Olga","muc":"lobby@muc.example.org"}')));
	end);

	it("answers 500 without details when MUC refuses the kick, and logs why", function ()
		server.rooms["lobby@muc.example.org"].set_role = function () return nil, "cancel", "not-allowed"; end;
		local status, body = post(server, '{"nickname":"Bob","muc":"lobby@muc.example.org"}');
		assert.equal(500, status);
		assert.same({ error = "Internal error"; code = "internal-error" }, body);
		assert.matches("error Internal error (internal-error): Could not kick lobby@muc.example.org/Bob: cancel not-allowed",
			log_text(server), 1, true);
	end);

	it("honours http_muc_kick_max_reason_length", function ()
		server = load_module(with_options({ http_muc_kick_max_reason_length = 5 }));
		local status, body = post(server, '{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"123456"}');
		assert.equal(400, status);
		assert.equal("Reason is longer than 5 characters", body.error);
	end);
end);

describe("mod_http_muc_kick rate limits", function ()
	it("answers 429 with Retry-After past the per-address limit, logging the flood once", function ()
		local server = load_module(with_options({ http_muc_kick_rate_limit_per_address = 2;
			http_muc_kick_rate_limit_window = 60 }));
		local wrong = { authorization = "Basic bm9wZQ=="; content_type = "application/json" };
		assert.equal(401, (post(server, kick_bob, wrong)));
		assert.equal(401, (post(server, kick_bob, wrong)));
		for _ = 1, 3 do
			local status, body, headers = post(server, kick_eve);
			assert.equal(429, status);
			assert.equal("rate-limited", body.code);
			assert.equal("30", headers.retry_after); -- one request's worth of a 2-per-60 s bucket
		end
		local _, occurrences = log_text(server):gsub("AUDIT kick%-refused address=192%.0%.2%.7 code=rate%-limited", "");
		assert.equal(1, occurrences);
		-- Another address is not limited; an IPv6 address counts by its /64.
		assert.equal(404, (post(server, kick_eve, nil, { ip = "192.0.2.8" })));
		assert.equal(404, (post(server, kick_eve, nil, { ip = "2001:db8::1" })));
		assert.equal(404, (post(server, kick_eve, nil, { ip = "2001:db8::2" })));
		assert.equal(429, (post(server, kick_eve, nil, { ip = "2001:db8::3" })));
		assert.equal(404, (post(server, kick_eve, nil, { ip = "2001:db8:0:1::1" })));
	end);

	it("answers 429 past the per-credential limit, whatever the address", function ()
		local server = load_module(with_options({ http_muc_kick_rate_limit_per_credential = 1 }));
		local token = mint(nil);
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		local status, body, headers = post(server, kick_bob, bearer(token), { ip = "192.0.2.99" });
		assert.equal(429, status);
		assert.matches("with this credential", body.error, 1, true);
		assert.equal("60", headers.retry_after);
		assert.equal(404, (post(server, kick_eve)));
	end);
end);

describe("mod_http_muc_kick tokens", function ()
	local server;
	before_each(function () server = load_module(default_options); end);

	it("accepts a token scoped to the room and logs its id and label, never the token", function ()
		local token, claims = mint({ "lobby@muc.example.org" });
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		assert.equal(1, #server.rooms["lobby@muc.example.org"].kicks);
		local log = log_text(server);
		assert.matches("credential=token:" .. claims.nonce .. " jid=bob@example.org label=ci-bot", log, 1, true);
		assert.is_nil(log:find(token, 1, true));
	end);

	it("accepts a service-wide token for any room", function ()
		assert.equal(200, (post(server, '{"nickname":"Bob","muc":"other@muc.example.org"}', bearer(mint(nil)))));
	end);

	it("answers 403 to a token outside its scope", function ()
		local status, body = post(server, '{"nickname":"Bob","muc":"other@muc.example.org"}',
			bearer(mint({ "lobby@muc.example.org" })));
		assert.equal(403, status);
		assert.same({ error = "This token does not cover the room other@muc.example.org"; code = "out-of-scope" }, body);
		assert.same({}, server.rooms["other@muc.example.org"].kicks);
		assert.matches("AUDIT kick-refused address=192.0.2.7 code=out-of-scope credential=token:", log_text(server), 1, true);
	end);

	local bad_tokens = {
		{ "an expired token", function () return mint(nil, os.time() - 7200, 3600); end, "token-expired", "Token has expired" };
		{ "a token signed with another secret", function () return mint(nil, nil, nil, new_secret); end, "token-invalid",
			"signed with an unknown key" };
		{ "a 0.1.0 token", function () return "v1.eyJob3N0IjoibXVjLmV4YW1wbGUub3JnIn0.AAAA"; end, "token-malformed",
			"older v1 format (prosody-native 0.1.0)" };
	};
	for _, case in ipairs(bad_tokens) do
		it("answers 401 invalid_token to " .. case[1], function ()
			local status, body, headers = post(server, kick_bob, bearer(case[2]()));
			assert.equal(401, status);
			assert.equal(case[3], body.code);
			assert.matches(case[4], body.error, 1, true);
			assert.equal('Bearer realm="muc.example.org", error="invalid_token"', headers.www_authenticate);
		end);
	end

	it("refuses a token it verified before once the token expires or its key is retired", function ()
		local now = os.time();
		local token = mint(nil, now, 60);
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		server.clock.now = now + 60;
		assert.equal("token-expired", select(2, post(server, kick_bob, bearer(token))).code);

		local retired_on = os.date("!%Y-%m-%d", now + 2 * 86400);
		server = load_module(with_options({ http_muc_kick_token_secret = new_secret;
			http_muc_kick_previous_token_secrets = { { secret = secret; accept_until = retired_on } } }));
		token = mint(nil, now, 30 * 86400);
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		server.clock.now = native.token.parse_utc_time(retired_on);
		local status, body = post(server, kick_bob, bearer(token));
		assert.equal(401, status);
		assert.matches("no longer accepts", body.error, 1, true);
	end);

	it("answers 401 to a bearer token when tokens are not configured", function ()
		server = load_module(with_options({ http_muc_kick_token_secret = unset }));
		local status, body, headers = post(server, kick_bob, bearer(mint(nil)));
		assert.equal(401, status);
		assert.equal("Wrong Authorization header", body.error);
		assert.equal('Bearer realm="muc.example.org"', headers.www_authenticate);
	end);

	it("refuses a revoked token at once after the shell revokes it, and names it in the log", function ()
		local token, claims = mint(nil);
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		local ok, message = server.shell.revoke_token.handler({}, host, claims.nonce);
		assert.is_true(ok, message);
		local status, body, headers = post(server, kick_bob, bearer(token));
		assert.equal(401, status);
		assert.equal("token-revoked", body.code);
		assert.equal('Bearer realm="muc.example.org", error="invalid_token"', headers.www_authenticate);
		local log = log_text(server);
		assert.matches("AUDIT kick-token-revoked by=shell credential=token:" .. claims.nonce, log, 1, true);
		assert.matches("AUDIT kick-refused address=192.0.2.7 code=token-revoked credential=token:" .. claims.nonce
			.. " label=ci-bot status=401", log, 1, true);
	end);
end);

describe("mod_http_muc_kick reloads", function ()
	it("re-reads its options on config-reloaded: a new secret revokes old tokens, a new header replaces the old", function ()
		local server = load_module(default_options);
		local old_token = mint(nil);
		assert.equal(200, (post(server, kick_bob, bearer(old_token))));
		server.options.http_muc_kick_token_secret = new_secret;
		server.options.http_muc_kick_authorization_header = static_header .. "2";
		server.events["config-reloaded"]();
		assert.equal("token-invalid", select(2, post(server, kick_bob, bearer(old_token))).code);
		assert.equal(200, (post(server, kick_bob, bearer(mint(nil, nil, nil, new_secret)))));
		assert.equal(401, (post(server, kick_bob)));
		assert.equal(200, (post(server, kick_bob, { authorization = static_header .. "2"; content_type = "application/json" })));
	end);

	it("keeps accepting a previous secret's tokens until its end date", function ()
		local server = load_module(default_options);
		local old_token = mint(nil);
		server.options.http_muc_kick_token_secret = new_secret;
		server.options.http_muc_kick_previous_token_secrets = { { secret = secret; accept_until = "2999-01-01" } };
		server.events["config-reloaded"]();
		assert.equal(200, (post(server, kick_bob, bearer(old_token))));
		server.options.http_muc_kick_previous_token_secrets = { { secret = secret; accept_until = "2000-01-01" } };
		server.events["config-reloaded"]();
		local status, body = post(server, kick_bob, bearer(old_token));
		assert.equal(401, status);
		assert.matches("no longer accepts", body.error, 1, true);
	end);

	it("keeps the previous configuration when the new one is wrong, and says so", function ()
		local server = load_module(default_options);
		server.options.http_muc_kick_token_secret = "short";
		server.events["config-reloaded"]();
		assert.matches("error Configuration not reloaded, the previous one stays in force: The token secret must be",
			log_text(server), 1, true);
		assert.equal(200, (post(server, kick_bob, bearer(mint(nil)))));
	end);

	it("re-reads the deny list on reloading-config, which prosodyctl revoke_token asks for", function ()
		local storage = {};
		local server = load_module(default_options, nil, storage);
		local ctl = load_module(default_options, "*", storage);
		local token, claims = mint(nil);
		ctl.module.command({ "revoke_token", host, claims.nonce });
		assert.matches("Revoked " .. claims.nonce, table.concat(ctl.output, "\n"), 1, true);
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		server.events["reloading-config"]();
		assert.equal(401, (post(server, kick_bob, bearer(token))));
		assert.matches("AUDIT kick-token-revoked by=registry credential=token:" .. claims.nonce, log_text(server), 1, true);
	end);

	it("re-reads the deny list on server-started (0.12 -D writes its pid file only then)", function ()
		local storage = {};
		local server = load_module(default_options, nil, storage);
		local token, claims = mint(nil);
		load_module(default_options, "*", storage).module.command({ "revoke_token", host, claims.nonce });
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		server.events["server-started"]();
		assert.equal(401, (post(server, kick_bob, bearer(token))));
	end);
end);

describe("mod_http_muc_kick token commands", function ()
	local function run(args, storage)
		local ctl = load_module(default_options, "*", storage);
		local code = ctl.module.command(args);
		return code, table.concat(ctl.output, "\n"), ctl;
	end

	it("prosodyctl create_token prints a token alone on stdout that verifies, scoped to the named rooms", function ()
		local code, output = run({ "create_token", host, "--room", "lobby", "--room", "other@muc.example.org",
			"--expires-after", "2h", "--label", "bot" });
		assert.equal(0, code);
		local claims = assert(keyring():verify(output:match("v2%.[^\n]+"), os.time()));
		assert.same({ "lobby@muc.example.org", "other@muc.example.org" }, claims.rooms);
		assert.equal(2 * 3600, claims.expires_at - claims.issued_at);
		assert.equal("bot", claims.label);
		assert.matches("info\tAUDIT kick-token-created by=prosodyctl credential=token:" .. claims.nonce, output, 1, true);
		assert.matches("valid until", output, 1, true);
	end);

	it("prosodyctl list_tokens and revoke_token work on the registry", function ()
		local storage = {};
		local _, created = run({ "create_token", host, "--service", "--label", "ci" }, storage);
		local id = assert(keyring():verify(created:match("v2%.[^\n]+"), os.time())).nonce;
		local code, output = run({ "list_tokens", host }, storage);
		assert.equal(0, code);
		assert.matches(id .. "  active  ci  every room  key " .. keyring():key_ids()[1].id .. " (current key)", output, 1, true);
		assert.equal(0, (run({ "revoke_token", host, id }, storage)));
		code, output = run({ "revoke_token", host, id }, storage);
		assert.equal(1, code);
		assert.matches("already revoked", output, 1, true);
		assert.matches(id .. "  revoked  ci", select(2, run({ "list_tokens", host }, storage)), 1, true);
		assert.equal(0, (run({ "revoke_token", host, "MDEyMzQ1Njc4OWFiY2RlZg" }, storage)));
		assert.matches("MDEyMzQ1Njc4OWFiY2RlZg  revoked  (not minted here)", select(2, run({ "list_tokens", host }, storage)),
			1, true);
	end);

	it("prosodyctl revoke_token takes an id that begins with a dash (one id in 64 does), not as an option", function ()
		local storage = {};
		for _, id in ipairs({ "-3Jldm9rZWQtYnktZGFzaA", "--9yZXZva2VkLWRhc2hlcw" }) do
			local code, output = run({ "revoke_token", host, id }, storage);
			assert.equal(0, code, output);
			assert.matches("Revoked " .. id, output, 1, true);
			assert.matches(id .. "  revoked  (not minted here)", select(2, run({ "list_tokens", host }, storage)), 1, true);
		end
	end);

	local bad_commands = {
		{ "no scope", { "create_token", host }, "--room ROOM" };
		{ "both scopes", { "create_token", host, "--service", "--room", "lobby" }, "not both" };
		{ "a room of another host", { "create_token", host, "--room", "lobby@chat.example.net" }, "Not a room of" };
		{ "an unreadable duration", { "create_token", host, "--service", "--expires-after", "soon" }, "Cannot read" };
		{ "an unknown host", { "create_token", "nowhere.example", "--service" }, "Unknown host" };
		{ "an unknown option", { "create_token", host, "--forever" }, "Unknown option --forever" };
		{ "an unknown command", { "mint", host }, "usage:" };
		{ "a bad token id", { "revoke_token", host, "not-an-id!" }, "Not a token id" };
		{ "a missing token id", { "revoke_token", host }, "Name one TOKEN_ID" };
	};
	for _, case in ipairs(bad_commands) do
		it("prosodyctl refuses " .. case[1], function ()
			local code, output = run(case[2]);
			assert.is_not.equal(0, code);
			assert.matches(case[3], output, 1, true);
		end);
	end

	it("the Prosody 13 shell command returns a service-wide token, and refuses --service=false", function ()
		local server = load_module(default_options);
		local printed = {};
		local shell = { session = { print = function (s) table.insert(printed, s); end } };
		local ok, message = server.shell.create_token.handler(shell, host, { service = true });
		assert.is_true(ok);
		assert.matches("every room", message, 1, true);
		assert.equal("service", assert(keyring():verify(printed[1], os.time())).scope);
		-- Prosody 13's argument parser turns --service=false into the string "false".
		ok, message = server.shell.create_token.handler(shell, host, { service = "false" });
		assert.is_false(ok);
		assert.matches("--service takes no value", message, 1, true);
		assert.equal(1, #printed);
	end);
end);

-- The module skips resourceprep for printable ASCII nicknames under 1024 bytes, as the identity it is there: checked
-- against the resourceprep of 0.12 and, when it is installed for the integration tests, of 13.
describe("resourceprep on printable ASCII", function ()
	local preps = { ["0.12"] = require "util.encodings".stringprep.resourceprep };
	local library13 = ".deps/prosody13/usr/lib/prosody/util/encodings.so";
	if io.open(library13) then
		local open = package.loadlib(library13, "luaopen_prosody_util_encodings")
			or package.loadlib(library13, "luaopen_util_encodings");
		preps["13"] = open and open().stringprep.resourceprep;
	end

	for version, resourceprep in pairs(preps) do
		it("is the identity on " .. version .. ", spaces included, and refuses 1024 bytes", function ()
			local printable = {};
			for byte = 32, 126 do
				local c = string.char(byte);
				table.insert(printable, c);
				assert.equal(c, resourceprep(c));
				assert.equal("x" .. c .. "y", resourceprep("x" .. c .. "y"));
			end
			local all = table.concat(printable);
			assert.equal(all, resourceprep(all));
			for _, nickname in ipairs({ " Spammer ", "  ", " ", "Spam mer", "a\\b", '"quoted"', "@/", ("~"):rep(1023) }) do
				assert.equal(nickname, resourceprep(nickname));
			end
			assert.is_nil(resourceprep(("a"):rep(1024)));
			assert.equal("Bob", resourceprep("\u{FF22}\u{FF4F}\u{FF42}"));
		end);
	end
end);
