-- mod_http_muc_kick loaded with a small fake `module` and MUC: HTTP answers, kicks, tokens and commands.
-- luacheck: ignore 212/self
package.path = "/usr/lib/prosody/?.lua;" .. package.path;
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath;

local json = require "util.json";
local native = require "prosody_native";

local host = "muc.example.org";
local static_header = "Basic dXNlcm5hbWU6cGFzc3dvcmQ=";
local secret = "0123456789abcdefghijklmnopqrstuvwxyz";

local function fake_room(room_jid, occupants)
	local room = { jid = room_jid; kicks = {} };
	function room:get_occupant_by_nick(occupant_jid)
		local occupant = occupants[occupant_jid:match("/(.*)$")];
		return occupant and { nick = occupant_jid; bare_jid = occupant.bare_jid };
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

-- Loads the module file as Prosody would, on `module_host` ("*" for prosodyctl), with these options.
local function load_module(options, module_host)
	local logs, provided, items, output = {}, {}, {}, {};
	local rooms = {
		["lobby@muc.example.org"] = fake_room("lobby@muc.example.org", {
			Bob = { bare_jid = "bob@example.org" };
			Olga = { bare_jid = "olga@example.org"; affiliation = "owner" };
			Adam = { bare_jid = "adam@example.org"; affiliation = "admin" };
		});
		["other@muc.example.org"] = fake_room("other@muc.example.org", { Bob = { bare_jid = "bob@example.org" } });
	};
	local module = { name = "http_muc_kick"; host = module_host or host };
	function module:require(name)
		if name == "prosody_native" then return native; end
		local lib = dofile("lua/" .. name .. ".lib.lua");
		if name == "prosody_native_compat" then
			-- These specs run against 0.12's libraries; act as 13 so that the shell command is registered too.
			function lib.add_shell_command(m, command) m:add_item("shell-command", command); return true; end
		end
		return lib;
	end
	function module:get_host_type() return self.host == "*" and "global" or "component"; end
	local function get_option(_, name, default)
		if options[name] == nil then return default; end
		return options[name];
	end
	module.get_option_string, module.get_option_boolean, module.get_option_number = get_option, get_option, get_option;
	function module:context(context_host) return setmetatable({ host = context_host }, { __index = self }); end
	function module:depends(name)
		if name == "muc" then return { get_room_from_jid = function (jid) return rooms[jid]; end }; end
		return {};
	end
	function module:provides(kind, item) provided[kind] = item; end
	function module:add_item(kind, item) items[kind] = item; end
	function module:log(level, format, ...) table.insert(logs, { level = level; text = format:format(...) }); end
	local shared = {};
	function module:shared(path) shared[path] = shared[path] or {}; return shared[path]; end
	local env = setmetatable({
		module = module;
		prosody = { hosts = { [host] = {} } };
		print = function (s) table.insert(output, s); end;
		io = { stderr = { write = function (_, ...) table.insert(output, table.concat({ ... })); end } };
	}, { __index = _G });
	assert(loadfile("lua/mod_http_muc_kick/mod_http_muc_kick.lua", "t", env))();
	return { module = module; http = provided.http; shell = items["shell-command"]; logs = logs; rooms = rooms;
		output = output };
end

local default_options = {
	component_module = "muc";
	http_muc_kick_authorization_header = static_header;
	http_muc_kick_token_secret = secret;
};

local function with_options(extra)
	local options = {};
	for k, v in pairs(default_options) do options[k] = v; end
	for k, v in pairs(extra or {}) do options[k] = v; end
	return options;
end

-- Sends a request to the module's route; returns status, decoded JSON body, response headers.
local function request(server, method, headers, body)
	local response = { headers = {} };
	local event = {
		request = { method = method; path = "/muc_kick"; ip = "127.0.0.1"; headers = headers; body = body };
		response = response;
	};
	local result = server.http.route[method](event);
	return response.status_code, json.decode(result), response.headers;
end

local json_headers = { authorization = static_header; content_type = "application/json" };

local function post(server, body, headers)
	return request(server, "POST", headers or json_headers, body);
end

local function bearer(token)
	return { authorization = "Bearer " .. token; content_type = "application/json; charset=utf-8" };
end

local function mint(rooms, now, ttl)
	return assert(native.token.mint(secret, host, rooms, now or os.time(), ttl or 3600, "0123456789abcdef", "ci-bot"));
end

local function log_text(server)
	local lines = {};
	for _, entry in ipairs(server.logs) do table.insert(lines, entry.level .. " " .. entry.text); end
	return table.concat(lines, "\n");
end

describe("mod_http_muc_kick loading", function ()
	it("refuses to load without http_muc_kick_authorization_header", function ()
		assert.has_error(function ()
			load_module(with_options({ http_muc_kick_authorization_header = false }));
		end, "http_muc_kick_authorization_header is not set: refusing to serve kicks without authorization");
	end);

	it("refuses to load on a component that is not a MUC", function ()
		assert.has_error(function () load_module(with_options({ component_module = "http_file_share" })); end);
	end);

	it("refuses a token secret that is too short", function ()
		assert.has_error(function () load_module(with_options({ http_muc_kick_token_secret = "short" })); end);
	end);

	it("only defines the command when prosodyctl loads it globally", function ()
		local server = load_module({}, "*");
		assert.is_function(server.module.command);
		assert.is_nil(server.http);
	end);

	it("serves POST on /muc_kick", function ()
		local server = load_module(default_options);
		assert.equal("/muc_kick", server.http.default_path);
		assert.is_function(server.http.route.POST);
	end);
end);

describe("mod_http_muc_kick requests", function ()
	local server;
	before_each(function () server = load_module(default_options); end);

	it("kicks the occupant with the reason and logs the credential", function ()
		local status, body = post(server, '{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"Spam"}');
		assert.equal(200, status);
		assert.same({ kicked = "Bob"; muc = "lobby@muc.example.org" }, body);
		assert.same({ { actor = true; occupant = "lobby@muc.example.org/Bob"; role = "none"; reason = "Spam" } },
			server.rooms["lobby@muc.example.org"].kicks);
		assert.matches('info Kicked "Bob" from lobby@muc.example.org by HTTP request authorized with static header, '
			.. 'reason: "Spam"', log_text(server), 1, true);
		assert.is_nil(log_text(server):find(static_header, 1, true));
	end);

	local refusals = {
		{ "no Authorization header", { content_type = "application/json" }, "{}", 401, "Missing Authorization header" };
		{ "a wrong Authorization header", { authorization = "Basic bm9wZQ=="; content_type = "application/json" },
			"{}", 401, "Wrong Authorization header" };
		{ "a body not declared as JSON", { authorization = static_header; content_type = "text/plain" },
			'{"nickname":"Bob","muc":"lobby@muc.example.org"}', 415, "Content-Type: application/json" };
		{ "a body without Content-Type", { authorization = static_header }, "{}", 415, "application/json" };
		{ "a body that is not JSON", nil, "nickname=Bob", 400, "Body is not valid JSON" };
		{ "a JSON array", nil, '["Bob"]', 400, "Body must be a JSON object, not an array" };
		{ "a missing muc", nil, '{"nickname":"Bob"}', 400, "Missing 'muc'" };
		{ "a number as nickname", nil, '{"nickname":7,"muc":"lobby@muc.example.org"}', 400, "'nickname' must be a string" };
		{ "a malformed room JID", nil, '{"nickname":"Bob","muc":"lobby@muc..example.org"}', 400, "not a valid room JID" };
		{ "a large body", nil, '{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"' .. ("x"):rep(5000) .. '"}', 413,
			"Body is larger than 4096 bytes" };
		{ "a room of another host", nil, '{"nickname":"Bob","muc":"lobby@chat.example.net"}', 404,
			"is not on this MUC service" };
		{ "a room that does not exist", nil, '{"nickname":"Bob","muc":"nowhere@muc.example.org"}', 404, "does not exist" };
		{ "a nickname not in the room", nil, '{"nickname":"Eve","muc":"lobby@muc.example.org"}', 404,
			'Nobody with the nickname "Eve"' };
		{ "an owner", nil, '{"nickname":"Olga","muc":"lobby@muc.example.org"}', 403, "Olga is an owner of the room" };
		{ "an admin", nil, '{"nickname":"Adam","muc":"lobby@muc.example.org"}', 403, "Adam is an admin of the room" };
	};
	for _, case in ipairs(refusals) do
		it(("answers %d to %s and changes nothing"):format(case[4], case[1]), function ()
			local status, body, headers = post(server, case[3], case[2]);
			assert.equal(case[4], status);
			assert.equal("application/json", headers.content_type);
			assert.matches(case[5], body.error, 1, true);
			assert.same({}, server.rooms["lobby@muc.example.org"].kicks);
			if status == 401 then
				assert.equal('Basic realm="muc.example.org", Bearer realm="muc.example.org"', headers.www_authenticate);
			end
		end);
	end

	it("answers 405 with Allow: POST to other methods", function ()
		for _, method in ipairs({ "GET", "PUT", "PATCH", "DELETE" }) do
			local status, body, headers = request(server, method, {}, nil);
			assert.equal(405, status);
			assert.equal("POST", headers.allow);
			assert.equal("Only POST is allowed here", body.error);
		end
	end);

	it("kicks owners and admins when http_muc_kick_allow_kicking_admins is set", function ()
		server = load_module(with_options({ http_muc_kick_allow_kicking_admins = true }));
		assert.equal(200, (post(server, '{"nickname":"Olga","muc":"lobby@muc.example.org"}')));
	end);

	it("answers 500 without details when MUC refuses the kick, and logs why", function ()
		server.rooms["lobby@muc.example.org"].set_role = function () return nil, "cancel", "not-allowed"; end;
		local status, body = post(server, '{"nickname":"Bob","muc":"lobby@muc.example.org"}');
		assert.equal(500, status);
		assert.same({ error = "Internal error" }, body);
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

describe("mod_http_muc_kick tokens", function ()
	local server;
	before_each(function () server = load_module(default_options); end);
	local kick_bob = '{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"Bye"}';

	it("accepts a token scoped to the room and logs its nonce, never the token", function ()
		local token, claims = mint({ "lobby@muc.example.org" });
		assert.equal(200, (post(server, kick_bob, bearer(token))));
		assert.equal(1, #server.rooms["lobby@muc.example.org"].kicks);
		local log = log_text(server);
		assert.matches("authorized with token " .. claims.nonce .. " (ci-bot)", log, 1, true);
		assert.is_nil(log:find(token, 1, true));
	end);

	it("accepts a service-wide token for any room", function ()
		assert.equal(200, (post(server, '{"nickname":"Bob","muc":"other@muc.example.org"}', bearer(mint(nil)))));
	end);

	it("answers 403 to a token outside its scope", function ()
		local status, body = post(server, '{"nickname":"Bob","muc":"other@muc.example.org"}',
			bearer(mint({ "lobby@muc.example.org" })));
		assert.equal(403, status);
		assert.equal("This token does not cover the room other@muc.example.org", body.error);
		assert.same({}, server.rooms["other@muc.example.org"].kicks);
	end);

	it("answers 401 to an expired token", function ()
		local status, body = post(server, kick_bob, bearer(mint(nil, os.time() - 7200, 3600)));
		assert.equal(401, status);
		assert.equal("Token has expired", body.error);
	end);

	it("answers 401 to a token signed with another secret", function ()
		local token = native.token.mint(secret:reverse(), host, nil, os.time(), 3600, "0123456789abcdef");
		local status, body = post(server, kick_bob, bearer(token));
		assert.equal(401, status);
		assert.equal("Token signature does not match", body.error);
	end);

	it("answers 401 to a bearer token when tokens are not configured", function ()
		server = load_module(with_options({ http_muc_kick_token_secret = false }));
		local status, body, headers = post(server, kick_bob, bearer(mint(nil)));
		assert.equal(401, status);
		assert.equal("Wrong Authorization header", body.error);
		assert.equal('Basic realm="muc.example.org"', headers.www_authenticate);
	end);
end);

describe("mod_http_muc_kick token commands", function ()
	it("prosodyctl create_token prints a token that verifies, scoped to the named rooms", function ()
		local server = load_module(default_options, "*");
		local code = server.module.command({ "create_token", host, "--room", "lobby", "--room", "other@muc.example.org",
			"--expires-after", "2h", "--label", "bot" });
		assert.equal(0, code);
		local claims = assert(native.token.verify(secret, host, server.output[1], os.time()));
		assert.same({ "lobby@muc.example.org", "other@muc.example.org" }, claims.rooms);
		assert.equal(2 * 3600, claims.expires_at - claims.issued_at);
		assert.equal("bot", claims.label);
		assert.matches("valid until", server.output[2]);
	end);

	local bad_commands = {
		{ "no scope", { "create_token", host }, "--room ROOM" };
		{ "both scopes", { "create_token", host, "--service", "--room", "lobby" }, "not both" };
		{ "a room of another host", { "create_token", host, "--room", "lobby@chat.example.net" }, "Not a room of" };
		{ "an unreadable duration", { "create_token", host, "--service", "--expires-after", "soon" }, "Cannot read" };
		{ "an unknown host", { "create_token", "nowhere.example", "--service" }, "Unknown host" };
		{ "an unknown option", { "create_token", host, "--forever" }, "Unknown option --forever" };
	};
	for _, case in ipairs(bad_commands) do
		it("prosodyctl create_token refuses " .. case[1], function ()
			local server = load_module(default_options, "*");
			assert.is_not.equal(0, server.module.command(case[2]));
			assert.matches(case[3], table.concat(server.output, "\n"), 1, true);
		end);
	end

	it("the Prosody 13 shell command returns a service-wide token", function ()
		local server = load_module(default_options);
		local printed = {};
		local shell = { session = { print = function (s) table.insert(printed, s); end } };
		local ok, message = server.shell.handler(shell, host, { service = true });
		assert.is_true(ok);
		assert.matches("every room of muc.example.org", message, 1, true);
		assert.equal("service", assert(native.token.verify(secret, host, printed[1], os.time())).scope);
	end);
end);
