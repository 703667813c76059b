-- COMPAT: the one place that hides the differences between Prosody 0.12 and 13.
--
-- Load with `local compat = module:require("prosody_native_compat")`.
-- - Prosody 13 renamed its libraries to prosody.util.* (the old names still load, with a warning).
-- - Prosody 13 has roles and permissions (module:may); 0.12 only knows admins.
-- - Prosody 13 bounds numeric options itself and reads periods ("2 days"); 0.12 does not.
-- - Prosody 0.12's mod_invites fails on contact-only tokens (invites_get_fails_on_contact_tokens).

local compat = {};

-- Prosody 13 answers to the new names; on 0.12 the first require fails and we use the old ones.
local has_prefixed_names = pcall(require, "prosody.util.jid");

--- Requires a Prosody library by its 0.12 name ("util.jid", "core.usermanager") on either version.
function compat.require(name)
	if has_prefixed_names then
		return require("prosody." .. name);
	end
	return require(name);
end

-- The Prosody series `make test` runs these modules on.
local tested_series = { ["0.12"] = true; ["13.0"] = true };

local host_kinds = {
	muc = { "a MUC component", 'Component "rooms.example.org" "muc"' };
	component = { "a component", 'Component "service.example.org" "<its module>"' };
	["local"] = { "a VirtualHost", 'VirtualHost "example.org"' };
};

-- How the config file names this host: `VirtualHost "example.org"`, `Component "rooms.example.org" "muc"`.
local function config_section(module)
	local host_type = module:get_host_type();
	if host_type == "global" then
		return "the global section";
	elseif host_type == "component" then
		local component_module = module:get_option_string("component_module");
		if component_module then
			return ("Component %q %q"):format(module.host, component_module);
		end
		return ("Component %q"):format(module.host);
	end
	return ("VirtualHost %q"):format(module.host);
end

local function is_host_kind(module, kind)
	local host_type = module:get_host_type();
	if kind == "muc" then
		return host_type == "component" and module:get_option_string("component_module") == "muc";
	elseif kind == "component" then
		return host_type == "component";
	end
	return host_type == "local";
end

--- Checks, first thing at load, that the module runs where it can work; every module calls it once:
--   compat.check_host(module, "muc")    -- or "local" (a VirtualHost), or "component" (any component)
-- On the wrong kind of host it stops loading with one error line that says where to list the module instead.
-- On a Prosody series these modules are not tested on, it logs one warning per process and goes on.
function compat.check_host(module, kind)
	local wanted = host_kinds[kind];
	if not wanted then
		error(("compat.check_host: unknown host kind %q"):format(tostring(kind)), 2);
	end
	if not is_host_kind(module, kind) then
		error(("mod_%s only works on %s, not on %s: list it in modules_enabled under %s instead")
			:format(module.name, wanted[1], config_section(module), wanted[2]), 0);
	end
	local version = prosody and prosody.version or "unknown";
	local warned = module:shared("/*/prosody_native_compat/warned");
	if not tested_series[version:match("^%d+%.%d+")] and not warned.version then
		warned.version = true;
		module:log("warn", "prosody-native is tested on Prosody 0.12 and 13.0, not %s; if something fails, report it "
			.. "with this version (see 'Reporting problems' in its README.md)", version);
	end
end

--- Reads an integer option bounded to [min, max]; a value outside is clamped with a warning, as Prosody 13 does.
function compat.get_option_integer(module, name, default, min, max)
	local value = module:get_option_number(name, default);
	if math.type(value) ~= "integer" then
		module:log("warn", "Config option '%s' expected an integer, using %d", name, default);
		return default;
	end
	if value < min or value > max then
		local clamped = math.max(min, math.min(max, value));
		module:log("warn", "Config option '%s' out of bounds [%d, %d], using %d", name, min, max, clamped);
		return clamped;
	end
	return value;
end

--- Reads a number option (fractions allowed) bounded to [min, max]; a value outside is clamped with a warning.
function compat.get_option_number(module, name, default, min, max)
	local value = module:get_option_number(name, default);
	if value ~= value or value < min or value > max then
		local clamped = value == value and math.max(min, math.min(max, value)) or default;
		module:log("warn", "Config option '%s' out of bounds [%g, %g], using %g", name, min, max, clamped);
		return clamped;
	end
	return value;
end

--- Reads a period option in whole seconds, bounded to [min, max]. Prosody 13 also reads "2 days" (and "never", which
-- becomes max); 0.12 only reads numbers, so there a period must be given in seconds.
function compat.get_option_period(module, name, default, min, max)
	if not module.get_option_period then
		return compat.get_option_integer(module, name, default, min, max);
	end
	local value = module:get_option_period(name, default, min, max);
	if value == nil then
		return default; -- 13 has logged why
	end
	return math.floor(math.max(min, math.min(max, value)));
end

--- Declares a permission (":action") granted by default to `role` ("prosody:admin", "prosody:member", ...).
-- On 0.12 there are no roles: only admins are granted admin permissions, every local user the others.
function compat.default_permission(module, role, action)
	if module.default_permission then
		module:default_permission(role, action);
	else
		module:shared("prosody_native_compat_roles")[action] = role;
	end
end

--- Whether `actor_jid` may perform `action`, on the module's host. `actor_jid` may also be the context of a request
-- (an event, or ad-hoc command data: with `origin`, the session, and `stanza` or `from`): on 13 the session's own role
-- then decides, so that a session with a reduced role (a token login) gets only what that role allows; 0.12 takes
-- the sender's JID from it. On 13 the answer is nil when no role says anything about `action`.
function compat.may(module, action, actor_jid)
	if module.may then
		return module:may(action, actor_jid);
	end
	if type(actor_jid) == "table" then
		actor_jid = actor_jid.from or actor_jid.stanza.attr.from;
	end
	local usermanager = require "core.usermanager";
	local role = module:shared("prosody_native_compat_roles")[action];
	if usermanager.is_admin(actor_jid, module.host) then
		return true;
	end
	if role == "prosody:admin" or role == "prosody:operator" then
		return false;
	end
	-- any other role means "a user of this server" on 0.12
	local jid = compat.require("util.jid");
	return jid.host(actor_jid) == module.host;
end

-- The priority of a role (13), 0 for a custom role without one.
local function role_priority(role)
	return tonumber(role.priority) or 0;
end

--- Whether the account `username` of the module's host holds a role that outranks the actor's (a higher priority),
-- and both roles' names: `actor` is a JID or a request context as for compat.may (its session's role counts). An
-- account whose role cannot be read outranks everyone. 0.12 has no ranks (admins and users), so nothing outranks.
function compat.outranks(module, username, actor)
	if not module.may then
		return false;
	end
	local usermanager = compat.require("core.usermanager");
	local target = usermanager.get_user_role(username, module.host);
	local session = type(actor) == "table" and (actor.origin or actor.session);
	local mine;
	if session and session.type == "c2s" and session.host == module.host then
		mine = session.role;
	else
		local jid = type(actor) == "table" and (actor.from or actor.stanza.attr.from) or actor;
		mine = usermanager.get_jid_role(jid, module.host);
	end
	local target_name, my_name = target and target.name or "unknown", mine and mine.name or "none";
	if not target or not mine then
		return true, target_name, my_name;
	end
	return role_priority(target) > role_priority(mine), target_name, my_name;
end

--- COMPAT 0.12: the set of roles a user holds ({ ["prosody:admin"] = true, ... }; empty when none). 0.12 keeps role
-- sets per user; 13 gives each user one primary role with permissions (ask compat.may there), so on 13 this is nil.
function compat.legacy_roles(module, actor_jid)
	if module.may then
		return nil;
	end
	local usermanager = require "core.usermanager";
	return usermanager.get_roles(actor_jid, module.host) or {};
end

-- COMPAT 0.12: mod_invites' get(token, username) raises on a contact-only invite (it reads the account record such
-- an invite does not have), so 0.12's mod_invites_register cannot pre-approve a subscription with one. 13 fixed it.
compat.invites_get_fails_on_contact_tokens = not has_prefixed_names;

--- Adds a `prosodyctl shell` command (a "shell-command" item with a host_selector) for this host on Prosody 13;
-- 0.12 has no such commands and gets nothing. Prosody loads no global module such as mod_admin_shell on components,
-- so when the server enables the shell globally it is attached to this component too; when it does not, nothing
-- opens an admin socket and the command stays unreachable.
function compat.add_shell_command(module, command)
	if not has_prefixed_names then
		return false;
	end
	local global_modules = module:context("*"):get_option_set("modules_enabled", {});
	if module:get_host_type() == "component" and global_modules:contains("admin_shell") then
		module:depends("admin_shell");
	end
	module:add_item("shell-command", command);
	return true;
end

-- A value as it stands in an audit line: bare when it is a plain word, else quoted with every control character,
-- quote and backslash escaped, so that a nickname or reason can never forge a second line or a field.
local function audit_value(value)
	local s = tostring(value);
	if s ~= "" and not s:find("[%c%s\"\\=]") then
		return s;
	end
	return '"' .. (s:gsub("[%c\"\\]", function (c)
		if c == "\"" or c == "\\" then return "\\" .. c; end
		return ("\\x%02x"):format(c:byte());
	end)) .. '"';
end

--- Logs one audit line at info for a state change, or for a refused attempt that matters to security:
--   compat.audit(module, "hat-added", { actor = "alice@example.org"; room = "lobby@rooms.example.org"; ... })
-- Every module writes the same shape, which a log filter (fail2ban, a SIEM) can match:
--   AUDIT <action> key=value key="quoted value" ...
-- `action` is a kebab-case word; keys come sorted, absent (nil) values are left out. Never pass secrets.
-- The line is built in two tables kept for every call (filled, used, emptied before the line is logged) and joined
-- once, as a flood of refused attempts is what an attacker sends, and each table or string per line would cost
-- Prosody's collector.
local audit_keys, audit_parts = {}, { "AUDIT " };

-- Audit lines are logged from a coroutine of their own. Prosody runs each connection's requests and stanzas in a
-- coroutine, and every collection cycle shrinks the stacks of the idle ones; the call into Prosody's logger is the
-- deepest thing a refused request does, so it made every connection's stack grow back after every cycle, memory the
-- collector counts: a cycle every 10 refusals instead of every 14 requests. This one stack regrows once a cycle (an
-- invalid-token flood on 32 connections cost 1.40x the CPU of a trivial route on 0.12, then 1.20x; bench_kick.py).
local writer;
local function write_audit_line(writing_module, line)
	while true do
		writing_module:log("info", "%s", line);
		writing_module, line = coroutine.yield();
	end
end

local function log_line(module, line)
	if not writer or coroutine.status(writer) ~= "suspended" then
		-- First use; or the logger raised, which ended the writer; or a line audited from inside the logger.
		writer = coroutine.create(write_audit_line);
	end
	local ok, err = coroutine.resume(writer, module, line);
	if not ok then error(err, 0); end
end

function compat.audit(module, action, fields)
	local n = 0;
	for key in pairs(fields or {}) do
		n = n + 1;
		audit_keys[n] = key;
	end
	for i = n + 1, #audit_keys do audit_keys[i] = nil; end -- left by a call that raised, if one ever did
	table.sort(audit_keys);
	-- "AUDIT ", action, then " ", key, "=", value for each field
	audit_parts[2] = action;
	local last = 2;
	for i = 1, n do
		local key = audit_keys[i];
		audit_parts[last + 1], audit_parts[last + 2], audit_parts[last + 3], audit_parts[last + 4] =
			" ", key, "=", audit_value(fields[key]);
		last = last + 4;
		audit_keys[i] = nil;
	end
	local line = table.concat(audit_parts, "", 1, last);
	for i = 2, last do audit_parts[i] = nil; end
	log_line(module, line);
end

return compat;
