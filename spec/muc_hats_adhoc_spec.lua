-- mod_muc_hats_adhoc with mod_muc_hats_api, loaded into a small fake MUC host: the original service commands as
-- mod_adhoc runs them, the XEP-0317 room commands as the host routes their iqs, and the room disco.
-- Prosody's own util.* libraries (0.12, system install) build and parse the stanzas.
-- luacheck: ignore 212/self
package.path = package.path .. ";/usr/lib/prosody/?.lua";
package.cpath = package.cpath .. ";/usr/lib/prosody/?.so";

local st = require "util.stanza";
local jid = require "util.jid";

local muc_host = "conference.localhost";
local room_jid = "hats@" .. muc_host;
local admin = "admin@localhost/laptop";
local xmlns_commands = "http://jabber.org/protocol/commands";
local xmlns_hats_commands = "urn:xmpp:hats:commands";
local teacher = "http://tech.example.edu/hats#Teacher";

-- A room with just what the two modules use; Bob is in it.
local function new_room(affiliations)
	local room = { jid = room_jid; _data = { enable_hats = true }; _affiliations = affiliations; _affiliation_data = {};
		notices = {}; presences = {}; saves = 0 };
	function room:get_affiliation(user) return self._affiliations[jid.bare(user)]; end
	function room:get_occupant_jid(real_jid)
		return jid.bare(real_jid) == "bob@localhost" and room_jid .. "/Bob" or nil;
	end
	function room:each_affiliation() return next, self._affiliations, nil; end
	function room:get_affiliation_data(user, key)
		local data = self._affiliation_data[user];
		return data and data[key];
	end
	function room:set_affiliation_data(user, key, value)
		self._affiliation_data[user] = self._affiliation_data[user] or {};
		self._affiliation_data[user][key] = value;
	end
	function room:save() self.saves = self.saves + 1; end
	function room:each_occupant()
		local occupants = { Bob = { bare_jid = "bob@localhost" } };
		return next, occupants, nil;
	end
	function room:publicise_occupant_status(occupant) table.insert(self.presences, occupant.bare_jid); end
	function room:broadcast_message(message) table.insert(self.notices, message); end
	return room;
end

-- Loads both modules on one fake host with `options` (muc_hats_room_commands on unless given); returns the host
-- (hooks, global hooks, provided commands, options, audit lines, counted metrics, the room).
local function new_host(options)
	local host = { hooks = {}; global_hooks = {}; commands = {}; permissions = {}; shared = {}; audit = {}; counts = {};
		options = options or { muc_hats_room_commands = true } };
	host.room = new_room({ ["alice@localhost"] = "owner"; ["bob@localhost"] = "member";
		["carol@localhost"] = "member" });
	local environments = {};

	function host.fire(name, event)
		for _, handler in ipairs(host.hooks[name] or {}) do
			local ret = handler(event);
			if ret ~= nil then return ret; end
		end
	end

	local function add_handler(hooks, event, handler)
		hooks[event] = hooks[event] or {};
		table.insert(hooks[event], handler);
	end

	local function load(name)
		local module = { name = name; host = muc_host };
		local env = setmetatable({ module = module }, { __index = _G });
		function module:log(level, format, ...)
			local line = format:format(...);
			if level == "info" and line:match("^AUDIT ") then table.insert(host.audit, line); end
		end
		function module:get_option_number(option, default) return host.options[option] or default; end
		function module:get_option_boolean(option, default)
			if host.options[option] == nil then return default; end
			return host.options[option];
		end
		function module:hook_global(event, handler) add_handler(host.global_hooks, event, handler); end
		-- a counter family: counts[name][label values joined with " "]
		function module:metric(_, metric_name)
			local counts = {};
			host.counts[name .. "/" .. metric_name] = counts;
			return { with_labels = function (_, ...)
				local key = table.concat({ ... }, " ");
				return { add = function (_, n) counts[key] = (counts[key] or 0) + n; end };
			end };
		end
		function module:get_host_type() return "component"; end
		function module:get_option_string(option, default)
			return ({ component_module = "muc" })[option] or default;
		end
		function module:shared(what)
			host.shared[what] = host.shared[what] or {};
			return host.shared[what];
		end
		function module:hook(event, handler) add_handler(host.hooks, event, handler); end
		function module:fire_event(event, data) return host.fire(event, data); end
		function module:provides(kind, item)
			assert.equal("adhoc", kind);
			host.commands[item.node] = item;
		end
		-- Prosody 13's role API: admin@localhost holds every permission declared for prosody:admin
		function module:default_permission(role, action)
			host.permissions[action:gsub("^:", self.name .. ":")] = role;
		end
		function module:may(action, actor)
			return host.permissions[action:gsub("^:", self.name .. ":")] == "prosody:admin"
				and jid.bare(actor) == "admin@localhost";
		end
		function module:require(lib)
			local path = ({
				prosody_native_compat = "lua/prosody_native_compat.lib.lua";
				adhoc = "/usr/lib/prosody/modules/adhoc/adhoc.lib.lua";
			})[lib];
			if not path then return require(lib); end
			return assert(loadfile(path, "t", env))();
		end
		function module:depends(other)
			if other == "muc" then
				return { get_room_from_jid = function (j) return j == room_jid and host.room or nil; end };
			end
			return environments[other];
		end
		assert(loadfile(("lua/mod_%s/mod_%s.lua"):format(name, name), "t", env))();
		environments[name] = env;
	end
	environments.adhoc = {};
	load("muc_hats_api");
	load("muc_hats_adhoc");
	return host;
end

-- A <command/> iq from `from` to `to`; `fields` (var -> value) become a submitted form.
local function command_iq(from, to, node, fields, attrs)
	local iq = st.iq({ type = "set"; from = from; to = to; id = "c1" })
		:tag("command", { xmlns = xmlns_commands; node = node; action = attrs and attrs.action;
			sessionid = attrs and attrs.sessionid });
	if fields then
		iq:tag("x", { xmlns = "jabber:x:data"; type = "submit" });
		for var, value in pairs(fields) do
			iq:tag("field", { var = var }):text_tag("value", value):up();
		end
		iq:up();
	end
	return iq;
end

-- Sends a room command iq through the host; returns the one reply.
local function send(host, iq)
	local replies = {};
	local handled = host.fire("iq-set/bare/" .. xmlns_commands .. ":command", {
		origin = { send = function (reply) table.insert(replies, reply); end };
		stanza = iq;
	});
	assert.is_true(handled);
	assert.equal(1, #replies);
	return replies[1];
end

local function error_of(reply)
	assert.equal("error", reply.attr.type);
	local kind, condition, text = reply:get_error();
	local specific = reply:get_child("error"):get_child(nil, xmlns_commands);
	return kind, condition, text, specific and specific.name;
end

local function note_of(reply)
	return reply:get_child("command", xmlns_commands):get_child_text("note");
end

describe("mod_muc_hats_adhoc service commands", function ()
	local host;
	before_each(function () host = new_host(); end);

	-- Runs a mod_adhoc command handler the way mod_adhoc does: execute, then submit the form.
	local function run(node, from, fields)
		local command = assert(host.commands[node], node);
		local data, state = command:handler({ from = from; to = muc_host; action = "execute" }, nil);
		if data.status ~= "executing" then return data; end
		local form = command_iq(from, muc_host, node, fields):get_child("command", xmlns_commands):get_child("x", "jabber:x:data");
		return (command:handler({ from = from; to = muc_host; action = "complete"; form = form }, state));
	end

	it("keeps the original nodes and names", function ()
		assert.equal("Add hat to a user", host.commands["http://prosody.im/protocol/hats#add"].name);
		assert.equal("Remove hat from a user", host.commands["http://prosody.im/protocol/hats#remove"].name);
	end);

	it("grants :manage-hats to prosody:admin by default", function ()
		assert.equal("prosody:admin", host.permissions["muc_hats_adhoc:manage-hats"]);
	end);

	it("adds an active hat as the service's, taking title and hue from the room catalogue", function ()
		host.room._data.hat_definitions = { [teacher] = { title = "Teacher"; hue = 200 } };
		local result = run("http://prosody.im/protocol/hats#add", admin,
			{ user = "bob@localhost"; room = room_jid; uri = teacher });
		assert.same({ status = "completed"; info = "The hat has been added successfully" }, result);
		assert.same({ [teacher] = { active = true; required = true; title = "Teacher"; hue = 200; assigned_by = "service" } },
			host.room:get_affiliation_data("bob@localhost", "hats"));
		assert.same({ "bob@localhost" }, host.room.presences);
		assert.same({ "AUDIT hat-assigned actor=admin@localhost/laptop by=service hat=" .. teacher
			.. " room=" .. room_jid .. " title=Teacher user=bob@localhost" }, host.audit);
		assert.same({ ["assigned service"] = 1 }, host.counts["muc_hats_api/hat_changes"]);
		assert.same({ ["add completed"] = 1 }, host.counts["muc_hats_adhoc/commands"]);
	end);

	it("gives a hat without title its URI as title", function ()
		run("http://prosody.im/protocol/hats#add", admin, { user = "bob@localhost"; room = room_jid; uri = teacher });
		assert.equal(teacher, host.room:get_affiliation_data("bob@localhost", "hats")[teacher].title);
	end);

	it("refuses anyone without the permission, before showing the form, and audits it", function ()
		local data = host.commands["http://prosody.im/protocol/hats#add"]:handler(
			{ from = "alice@localhost/phone"; to = muc_host; action = "execute" }, nil);
		assert.equal("error", data.status);
		assert.equal("forbidden", data.error.condition);
		assert.same({ "AUDIT hat-command-refused actor=alice@localhost/phone command=add reason=not-a-service-admin" },
			host.audit);
	end);

	local bad_inputs = {
		{ "an unknown room", { user = "bob@localhost"; room = "nope@" .. muc_host; uri = teacher }, "item-not-found",
			"There is no room nope@" .. muc_host .. " on this service" };
		{ "a user without affiliation", { user = "dave@localhost"; room = room_jid; uri = teacher }, "item-not-found",
			"dave@localhost has no affiliation with " .. room_jid .. "; make them a member first" };
		{ "a relative URI", { user = "bob@localhost"; room = room_jid; uri = "teacher" }, "bad-request",
			"Hat URI: URI has no scheme (expected e.g. urn:uuid:… or https://…)" };
		{ "a malformed user JID", { user = "bob@@localhost"; room = room_jid; uri = teacher }, "bad-request",
			"User JID: JID domain may not contain '@'" };
		{ "a missing URI", { user = "bob@localhost"; room = room_jid }, "bad-request",
			"Missing required field 'uri' (Hat URI)" };
	};
	for _, case in ipairs(bad_inputs) do
		it("answers " .. case[1] .. " with an error and changes nothing", function ()
			local result = run("http://prosody.im/protocol/hats#add", admin, case[2]);
			assert.equal("error", result.status);
			assert.equal(case[3], result.error.condition);
			assert.equal(case[4], result.error.text);
			assert.same({}, host.room._affiliation_data);
		end);
	end
end);

describe("mod_muc_hats_adhoc room commands", function ()
	local host;
	before_each(function () host = new_host(); end);

	local function create(from, fields)
		return send(host, command_iq(from, room_jid, xmlns_hats_commands .. ":create", fields));
	end

	it("answers the first request with the XEP-0317 form and a session", function ()
		local reply = send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":create"));
		local command = reply:get_child("command", xmlns_commands);
		assert.equal("executing", command.attr.status);
		assert.is_string(command.attr.sessionid);
		local vars = {};
		for field in command:get_child("x", "jabber:x:data"):childtags("field") do
			table.insert(vars, field.attr.var);
		end
		assert.same({ "FORM_TYPE"; "hats#title"; "hats#uri"; "hats#hue" }, vars);
	end);

	it("creates a hat in one step, saves the room and notifies it with status 104", function ()
		local reply = create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher";
			["hats#hue"] = "327.255249" });
		assert.equal("Created the hat 'Teacher' (" .. teacher .. ")", note_of(reply));
		assert.same({ [teacher] = { title = "Teacher"; hue = 327.255249; defined_by = "room" } },
			host.room._data.hat_definitions);
		assert.equal(1, host.room.saves);
		assert.equal(1, #host.room.notices);
		local x = host.room.notices[1]:get_child("x", "http://jabber.org/protocol/muc#user");
		assert.same({ name = "status"; code = "104" }, { name = x.tags[1].name; code = x.tags[1].attr.code });
	end);

	it("updates the title and hue of everyone wearing a hat when it is redefined", function ()
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher" });
		send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":assign",
			{ ["hats#jid"] = "bob@localhost"; hat = teacher }));
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Head"; ["hats#hue"] = "10" });
		assert.same({ [teacher] = { active = true; title = "Head"; hue = 10; assigned_by = "room" } },
			host.room:get_affiliation_data("bob@localhost", "hats"));
	end);

	it("finds wearers without an affiliation entry, as service admins on 0.12", function ()
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher" });
		host.room._affiliation_data["admin@localhost"] = { hats = { [teacher] = { active = true; title = "Teacher" } } };
		create(admin, { ["hats#uri"] = teacher; ["hats#title"] = "Head" });
		assert.equal("Head", host.room:get_affiliation_data("admin@localhost", "hats")[teacher].title);
		send(host, command_iq(admin, room_jid, xmlns_hats_commands .. ":destroy", { ["hats#uri"] = teacher }));
		assert.is_nil(host.room:get_affiliation_data("admin@localhost", "hats"));
	end);

	it("refuses owners a hat the service assigned, and audits it", function ()
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher" });
		send(host, command_iq(admin, room_jid, xmlns_hats_commands .. ":assign",
			{ ["hats#jid"] = "bob@localhost"; ["hats#uri"] = teacher }));
		host.audit = {};
		local kind, condition, text = error_of(send(host, command_iq("alice@localhost/a", room_jid,
			xmlns_hats_commands .. ":unassign", { ["hats#jid"] = "bob@localhost"; ["hats#uri"] = teacher })));
		assert.same({ "auth"; "forbidden" }, { kind; condition });
		assert.matches("was assigned by the service", text, 1, true);
		assert.equal("service", host.room:get_affiliation_data("bob@localhost", "hats")[teacher].assigned_by);
		assert.same({ "AUDIT hat-change-refused actor=alice@localhost/a by=room hat=" .. teacher
			.. " reason=protected room=" .. room_jid .. " user=bob@localhost" }, host.audit);
	end);

	it("refuses owners where the room's switch is off, and lets them turn it on", function ()
		host.room._data.enable_hats = nil;
		local _, condition, text = error_of(create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "T" }));
		assert.equal("forbidden", condition);
		assert.matches("enable_hats", text, 1, true);
		local event = { room = host.room; actor = "alice@localhost/a"; value = true; status_codes = {} };
		host.fire("muc-config-submitted/enable_hats", event);
		assert.same({ ["104"] = true }, event.status_codes);
		assert.is_true(host.room._data.enable_hats);
		assert.equal("completed", create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "T" })
			:get_child("command", xmlns_commands).attr.status);
	end);

	it("offers the room's switch only where the operator allows room commands, read again on reload", function ()
		local function form_vars()
			local event = { room = host.room; form = {} };
			host.fire("muc-config-form", event);
			local vars = {};
			for _, field in ipairs(event.form) do table.insert(vars, field.name); end
			return vars;
		end
		assert.same({ "enable_hats" }, form_vars());
		host.options.muc_hats_room_commands = nil;
		assert.same({ "enable_hats" }, form_vars()); -- not before the config is reloaded
		for _, handler in ipairs(host.global_hooks["config-reloaded"]) do handler({}); end
		assert.same({}, form_vars());
		local _, condition = error_of(create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "T" }));
		assert.equal("forbidden", condition);
	end);

	it("lets occupants list the catalogue, and nobody else", function ()
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher" });
		local list = xmlns_hats_commands .. ":list";
		assert.equal("completed", send(host, command_iq("bob@localhost/b", room_jid, list))
			:get_child("command", xmlns_commands).attr.status);
		local _, condition, text = error_of(send(host, command_iq("dave@localhost/d", room_jid, list)));
		assert.equal("forbidden", condition);
		assert.equal("Only the room's occupants and members may list its hats", text);
	end);

	it("keeps each actor's sessions apart", function ()
		local function start(from)
			return send(host, command_iq(from, room_jid, xmlns_hats_commands .. ":create"))
				:get_child("command", xmlns_commands).attr.sessionid;
		end
		local kept = start("alice@localhost/a");
		local first = start(admin);
		for _ = 1, 300 do start(admin); end
		local fields = { ["hats#uri"] = teacher; ["hats#title"] = "T" };
		local _, _, _, specific = error_of(send(host, command_iq(admin, room_jid, xmlns_hats_commands .. ":create",
			fields, { action = "complete"; sessionid = first })));
		assert.equal("bad-sessionid", specific);
		assert.equal("completed", send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":create",
			fields, { action = "complete"; sessionid = kept })):get_child("command", xmlns_commands).attr.status);
	end);

	it("removes a destroyed hat from its wearers", function ()
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher" });
		send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":assign",
			{ ["hats#jid"] = "bob@localhost"; ["hats#uri"] = teacher }));
		local reply = send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":destroy",
			{ ["hats#uri"] = teacher }));
		assert.equal("completed", reply:get_child("command", xmlns_commands).attr.status);
		assert.is_nil(host.room:get_affiliation_data("bob@localhost", "hats"));
		assert.is_nil(host.room._data.hat_definitions);
	end);

	local refusals = {
		{ "a plain member", "carol@localhost/c", { ["hats#uri"] = teacher; ["hats#title"] = "T" }, "auth",
			"forbidden" };
		{ "a missing title", "alice@localhost/a", { ["hats#uri"] = teacher }, "modify", "bad-request",
			"Missing required field 'hats#title' (Hat Title)", "bad-payload" };
		{ "a hue out of range", "alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "T";
			["hats#hue"] = "360" }, "modify", "bad-request", "Hat Hue: Hue must be at least 0 and less than 360",
			"bad-payload" };
		{ "a form of another type", "alice@localhost/a", { FORM_TYPE = "jabber:iq:register"; ["hats#uri"] = teacher;
			["hats#title"] = "T" }, "modify", "bad-request",
			"Expected a form of type urn:xmpp:hats:commands, not jabber:iq:register", "bad-payload" };
	};
	for _, case in ipairs(refusals) do
		it("refuses " .. case[1] .. " and changes nothing", function ()
			local kind, condition, text, specific = error_of(create(case[2], case[3]));
			assert.equal(case[4], kind);
			assert.equal(case[5], condition);
			if case[6] then assert.equal(case[6], text); end
			assert.equal(case[7], specific);
			assert.is_nil(host.room._data.hat_definitions);
			assert.same({}, host.room.notices);
		end);
	end

	it("refuses a session continued by someone else", function ()
		local first = send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":create"));
		local sessionid = first:get_child("command", xmlns_commands).attr.sessionid;
		local reply = send(host, command_iq(admin, room_jid, xmlns_hats_commands .. ":create",
			{ ["hats#uri"] = teacher; ["hats#title"] = "T" }, { action = "complete"; sessionid = sessionid }));
		local _, condition, _, specific = error_of(reply);
		assert.equal("bad-request", condition);
		assert.equal("bad-sessionid", specific);
	end);

	it("refuses to go back, as no command has a previous step", function ()
		local first = send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":create"));
		local sessionid = first:get_child("command", xmlns_commands).attr.sessionid;
		local reply = send(host, command_iq("alice@localhost/a", room_jid, xmlns_hats_commands .. ":create", nil,
			{ action = "prev"; sessionid = sessionid }));
		local _, condition, _, specific = error_of(reply);
		assert.equal("bad-request", condition);
		assert.equal("bad-action", specific);
	end);

	it("answers an unknown room with item-not-found, and leaves other command nodes to other modules", function ()
		local _, condition = error_of(send(host, command_iq(admin, "nope@" .. muc_host, xmlns_hats_commands .. ":list")));
		assert.equal("item-not-found", condition);
		assert.is_nil(host.fire("iq-set/bare/" .. xmlns_commands .. ":command", {
			origin = { send = function () error("answered"); end };
			stanza = command_iq(admin, room_jid, xmlns_hats_commands .. ":don");
		}));
	end);

	it("advertises hats and a hash that follows the catalogue", function ()
		local function info()
			local event = { room = host.room; reply = st.reply(st.iq({ type = "get"; from = admin; to = room_jid; id = "d" }))
				:query("http://jabber.org/protocol/disco#info"); form = {}; formdata = {} };
			host.fire("muc-disco#info", event);
			return event;
		end
		local before = info();
		local features = {};
		for _, tag in ipairs(before.reply.tags[1].tags) do
			features[tag.attr.var] = tag.name == "feature";
		end
		assert.same({ ["urn:xmpp:hats:0"] = true; [xmlns_commands] = true }, features);
		assert.is_nil(before.formdata["hats#hash"]);
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher" });
		local first = info().formdata["hats#hash"];
		assert.matches("^%x+$", first);
		assert.equal(40, #first);
		assert.equal(first, info().formdata["hats#hash"]);
		create("alice@localhost/a", { ["hats#uri"] = teacher; ["hats#title"] = "Teacher"; ["hats#hue"] = "1" });
		assert.not_equal(first, info().formdata["hats#hash"]);
	end);
end);
