-- mod_muc_hats_adhoc: manage MUC hats from any XMPP client with ad-hoc commands (XEP-0050).
--
-- Two command sets share one store (mod_muc_hats_api, which keeps hats in affiliation data where core reads them):
-- - Prosody's original service commands, ...hats#add and ...hats#remove, on the MUC host, through mod_adhoc;
-- - XEP-0317 v0.3.1's hat catalogue commands (create, destroy, list, assign, unassign, list-assigned) on every room
--   JID. mod_adhoc only answers commands addressed to a host, so this module routes the room's commands itself:
--   disco of the commands node, <command/> iqs to room JIDs and their sessions.
-- Who may do what: service admins everything; a room's owners and admins read its hats, and change them only where
-- the service (muc_hats_room_commands) and the room (its enable_hats field) allow it, and never hats the service or
-- a module made (mod_muc_hats_api refuses those); occupants and members list the catalogue.
-- Every submitted value is checked by the native library; a command that fails ends with an error and changes
-- nothing. mod_muc_hats_api writes the audit line of every change.

local compat = module:require("prosody_native_compat");
compat.check_host(module, "muc");
local native = module:require("prosody_native");
local cache = compat.require("util.cache");
local dataforms = compat.require("util.dataforms");
local errors = compat.require("util.error");
local hashes = compat.require("util.hashes");
local id = compat.require("util.id");
local jid = compat.require("util.jid");
local st = compat.require("util.stanza");

module:depends("adhoc");
local adhoc_new = module:require("adhoc").new;
local hats_api = module:depends("muc_hats_api");
local mod_muc = module:depends("muc");

local room_commands_allowed;
local function read_options()
	room_commands_allowed = module:get_option_boolean("muc_hats_room_commands", false);
end
read_options();
-- `prosodyctl reload` re-reads the config file but reloads no module.
module:hook_global("config-reloaded", read_options);

local xmlns_commands = "http://jabber.org/protocol/commands";
local xmlns_data = "jabber:x:data";
local xmlns_disco_items = "http://jabber.org/protocol/disco#items";
local xmlns_hats_commands = "urn:xmpp:hats:commands";
local node_add = "http://prosody.im/protocol/hats#add";
local node_remove = "http://prosody.im/protocol/hats#remove";

-- Room command sessions waiting for their form are kept per actor (bare JID), at most max_sessions_per_actor each,
-- for the max_actors who started one last: abandoned sessions push out only their own actor's oldest ones.
local max_sessions_per_actor = 8;
local max_actors = 1024;

local commands_answered = module:metric("counter", "commands", "",
	"Hat commands answered, by command and outcome (completed, canceled, refused, failed)", { "command"; "outcome" });

-- Conditions in the XEP-0050 namespace (bad-payload, ...) are added to the error as its application condition.
local hats_errors = errors.init(module.name, xmlns_commands, {
	["forbidden"] = { "auth", "forbidden", "Only the room's owners and admins, and service admins, may manage its hats" };
	["forbidden-disabled"] = { "auth", "forbidden",
		"Room owners and admins may change hats only where the service and the room allow it (room option enable_hats)" };
	["forbidden-list"] = { "auth", "forbidden", "Only the room's occupants and members may list its hats" };
	["protected"] = { "auth", "forbidden", "Only service admins may change the hats the service assigned" };
	["forbidden-service"] = { "auth", "forbidden", "Only service admins may manage hats with this command" };
	["room-not-found"] = { "cancel", "item-not-found", "There is no such room on this service" };
	["not-affiliated"] = { "cancel", "item-not-found", "The user has no affiliation with the room; make them a member first" };
	["hat-not-found"] = { "cancel", "item-not-found", "The room has no hat with that URI" };
	["too-many-hats"] = { "wait", "resource-constraint", "The room or the user has as many hats as allowed" };
	["bad-payload"] = { "modify", "bad-request", "The form is incomplete or malformed", "bad-payload" };
	["bad-sessionid"] = { "modify", "bad-request", "Unknown or expired session; start the command again", "bad-sessionid" };
	["bad-action"] = { "modify", "bad-request", "This command only completes; use 'execute' or 'complete'", "bad-action" };
	["internal-error"] = { "cancel", "internal-server-error", "Could not change the hats" };
});

-- An error from the registry, with a text that names what to fix.
local function fail(code, text)
	local err = hats_errors.new(code);
	if text then
		err.text = text;
	end
	return err;
end

-- mod_muc_hats_api answers nil, code, text; these are the answers its codes become.
local api_error_codes = {
	["item-not-found"] = "not-affiliated";
	["bad-request"] = "bad-payload";
	["resource-constraint"] = "too-many-hats";
	["forbidden"] = "protected";
};

local function api_fail(code, text)
	return fail(api_error_codes[code] or "internal-error", text);
end

-- Lua's own number precision: a hue comes back as it was given ("327.255249", "200").
local function format_hue(hue)
	return hue and ("%.14g"):format(hue);
end

-- Sorted array of { uri, title, hue } from a hat id -> definition table.
local function sorted_hats(hats)
	local list = {};
	for uri, hat in pairs(hats) do
		table.insert(list, { uri = uri; title = hat.title; hue = hat.hue });
	end
	table.sort(list, function (a, b) return a.uri < b.uri; end);
	return list;
end

-- The room on this host for a JID, or nil; a destroyed room's tombstone is no room.
local function find_room(room_jid)
	local room_bare = room_jid and jid.prep(jid.bare(room_jid));
	if not room_bare or jid.host(room_bare) ~= module.host or not jid.node(room_bare) then
		return nil;
	end
	local room = mod_muc.get_room_from_jid(room_bare);
	if not room or room._data.destroyed then
		return nil;
	end
	return room;
end

local function is_service_admin(actor)
	return compat.may(module, ":manage-hats", actor);
end

-- Where the actor stands with the room's hats: "service" (may manage hats on the whole service), "room" (owner or
-- admin of the room), "occupant" (in the room, or a member), or nil.
local function standing(room, actor)
	if is_service_admin(actor) then
		return "service";
	end
	local affiliation = room:get_affiliation(actor);
	if affiliation == "owner" or affiliation == "admin" then
		return "room";
	elseif affiliation == "member" or room:get_occupant_jid(actor) then
		return "occupant";
	end
end

-- Room owners and admins change hats only where the operator opted in and the room's owners enabled it.
local function room_commands_enabled(room)
	return room_commands_allowed and room._data.enable_hats == true;
end

-- What the API records about who acts: the kind decides which hats may be changed, the JID goes to the audit log.
local function acting(actor, kind)
	return { kind = kind; actor = actor };
end

local function room_hats(room)
	local hats, code, text = hats_api.get_room_hats(room.jid);
	if not hats then
		module:log("warn", "Cannot read the hats of %s: %s (%s)", room.jid, text, code);
		return {};
	end
	return hats;
end

-- Every wearer's hats (bare JID -> hat id -> attachment), service admins without an affiliation entry included.
local function assigned_hats(room)
	local assigned, code, text = hats_api.get_assigned_hats(room.jid);
	if not assigned then
		module:log("warn", "Cannot read the hats worn in %s: %s (%s)", room.jid, text, code);
		return {};
	end
	return assigned;
end

-- XEP-0317 leaves the hash to the implementation: SHA-1 over the sorted catalogue, titles and hues included, so
-- that clients also notice an updated title or colour.
local function catalogue_hash(hats)
	local lines = {};
	for _, hat in ipairs(sorted_hats(hats)) do
		table.insert(lines, table.concat({ hat.uri, hat.title or "", format_hue(hat.hue) or "" }, "\0"));
	end
	return hashes.sha1(table.concat(lines, "\n"), true);
end

-- Form reading

-- Checks a submitted value: returns the clean value, or nil, code, text. The native library does the checking.
local checkers = {
	jid = function (value)
		local parts, code, text = native.validate.jid(value);
		if not parts then return nil, code, text; end
		local prepped = jid.prep(jid.bare(value));
		if not prepped then return nil, "bad-request", "JID is not valid (stringprep rejects it)"; end
		return prepped;
	end;
	uri = native.validate.uri;
	hue = native.validate.hue;
	-- titles are checked by mod_muc_hats_api (in the native library), against its configured length
	text = function (value) return value; end;
};

-- Reads the fields a layout declares from a submitted form: var -> checked value, or nil, error. Fields also
-- answer to their `alias` (XEP-0317 and ejabberd call the hat picker "hat" in some forms).
local function read_form(form, layout)
	if form.attr.type ~= "submit" then
		return nil, fail("bad-payload", "Expected a submitted form (type 'submit')");
	end
	local submitted = {};
	for field in form:childtags("field") do
		local var, value = field.attr.var, field:get_child_text("value");
		if var and value and value ~= "" and submitted[var] == nil then
			submitted[var] = value;
		end
	end
	local fields = {};
	for _, field in ipairs(layout) do
		local value = submitted[field.name];
		if value == nil and field.alias then
			value = submitted[field.alias];
		end
		if field.type == "hidden" then
			if value ~= nil and value ~= field.value then
				return nil, fail("bad-payload", ("Expected a form of type %s, not %s"):format(field.value, value));
			end
		elseif value == nil then
			if field.required then
				return nil, fail("bad-payload", ("Missing required field '%s' (%s)"):format(field.name, field.label));
			end
		else
			local checked, _, text = checkers[field.check](value);
			if checked == nil then
				return nil, fail("bad-payload", ("%s: %s"):format(field.label, text));
			end
			fields[field.name] = checked;
		end
	end
	return fields;
end

-- The original service commands (mod_adhoc on the MUC host)

local add_layout = dataforms.new {
	title = "Add a hat";
	instructions = "Assign a hat to a room member";
	{ name = "user"; type = "jid-single"; label = "User JID"; required = true; check = "jid" };
	{ name = "room"; type = "jid-single"; label = "Room JID"; required = true; check = "jid" };
	{ name = "title"; type = "text-single"; label = "Hat title"; check = "text" };
	{ name = "uri"; type = "text-single"; label = "Hat URI"; required = true; check = "uri" };
};

local remove_layout = dataforms.new {
	title = "Remove a hat";
	instructions = "Remove a hat from a room member";
	{ name = "user"; type = "jid-single"; label = "User JID"; required = true; check = "jid" };
	{ name = "room"; type = "jid-single"; label = "Room JID"; required = true; check = "jid" };
	{ name = "uri"; type = "text-single"; label = "Hat URI"; required = true; check = "uri" };
};

-- The room a form names, or nil, error.
local function named_room(room_jid)
	local room = find_room(room_jid);
	if not room then
		return nil, fail("room-not-found", ("There is no room %s on this service"):format(room_jid));
	end
	return room;
end

local function not_affiliated(room, user_bare)
	return fail("not-affiliated", ("%s has no affiliation with %s; make them a member first"):format(user_bare, room.jid));
end

-- The room a form names, where the user is a member, admin or owner; or nil, error.
local function affiliated_room(room_jid, user_bare)
	local room, err = named_room(room_jid);
	if not room then return nil, err; end
	local affiliation = room:get_affiliation(user_bare);
	if not affiliation or affiliation == "outcast" then
		return nil, not_affiliated(room, user_bare);
	end
	return room;
end

-- The hats a user wears in a room, or nil, error when they neither wear any nor are affiliated.
local function worn_hats(room, user_bare)
	local hats = hats_api.get_user_hats(user_bare, room.jid);
	if not hats then return nil, not_affiliated(room, user_bare); end
	return hats;
end

-- The hat is added active and required; the API gives it the catalogue's title and hue unless a title is given.
local function add_hat(fields, by)
	local room, err = affiliated_room(fields.room, fields.user);
	if not room then return nil, err; end
	local ok, code, text = hats_api.add_user_hat(fields.user, room.jid, fields.uri,
		{ active = true; required = true; title = fields.title }, by);
	if not ok then return nil, api_fail(code, text); end
	return "The hat has been added successfully";
end

local function remove_hat(fields, by)
	local room, room_err = named_room(fields.room);
	if not room then return nil, room_err; end
	local hats, err = worn_hats(room, fields.user);
	if not hats then return nil, err; end
	if hats[fields.uri] == nil then
		return nil, fail("hat-not-found", ("%s does not wear the hat %s in %s"):format(fields.user, fields.uri, room.jid));
	end
	local ok, remove_code, remove_text = hats_api.remove_user_hat(fields.user, room.jid, fields.uri, by);
	if not ok then return nil, api_fail(remove_code, remove_text); end
	return "The hat has been removed successfully";
end

-- A refused attempt, which matters to security: one audit line, and counted.
local function refused(actor, command_name, reason, room)
	compat.audit(module, "hat-command-refused", { actor = actor; command = command_name; reason = reason;
		room = room and room.jid });
	commands_answered:with_labels(command_name, "refused"):add(1);
end

-- A mod_adhoc handler: form, then submission; permission is checked at every step.
local function service_command(command_name, layout, submit)
	return function (_, data, state)
		if not is_service_admin(data.from) then
			refused(data.from, command_name, "not-a-service-admin");
			return { status = "error"; error = fail("forbidden-service") };
		end
		if data.action == "cancel" or (data.form and data.form.attr.type == "cancel") then
			commands_answered:with_labels(command_name, "canceled"):add(1);
			return { status = "canceled" };
		end
		if not data.form then
			if state then
				return { status = "error"; error = fail("bad-payload", "Submit the form to complete the command") };
			end
			return { status = "executing"; actions = { "complete"; default = "complete" }; form = layout }, "executing";
		end
		local fields, err = read_form(data.form, layout);
		local info;
		if fields then
			info, err = submit(fields, acting(data.from, "service"));
		end
		if not info then
			commands_answered:with_labels(command_name, "failed"):add(1);
			return { status = "error"; error = err };
		end
		commands_answered:with_labels(command_name, "completed"):add(1);
		return { status = "completed"; info = info };
	end;
end

local service_nodes = { [node_add] = true; [node_remove] = true };

-- The commands are open to anyone in mod_adhoc's terms; service_command decides with Prosody's permissions
-- (":manage-hats", granted to admins, delegable to any role on 13).
compat.default_permission(module, "prosody:admin", ":manage-hats");
module:provides("adhoc", adhoc_new("Add hat to a user", node_add, service_command("add", add_layout, add_hat), "any"));
module:provides("adhoc", adhoc_new("Remove hat from a user", node_remove,
	service_command("remove", remove_layout, remove_hat), "any"));

-- ...and they are only listed to those who may run them.
module:hook("host-disco-items-node", function (event)
	if event.node ~= xmlns_commands or is_service_admin(event.stanza.attr.from) then return; end
	event.reply:get_child("query", xmlns_disco_items):maptags(function (item)
		if item.name == "item" and service_nodes[item.attr.node] then return nil; end
		return item;
	end);
end, -1);

-- XEP-0317 commands on room JIDs

local form_type = { name = "FORM_TYPE"; type = "hidden"; value = xmlns_hats_commands };

local create_layout = dataforms.new {
	title = "Creating a Hat";
	instructions = "Fill out this form to create a hat. A hat URI the room already has updates that hat.";
	form_type;
	{ name = "hats#title"; type = "text-single"; label = "Hat Title"; required = true; check = "text" };
	{ name = "hats#uri"; type = "text-single"; label = "Hat URI"; required = true; check = "uri" };
	{ name = "hats#hue"; type = "text-single"; label = "Hat Hue"; desc = "Colour angle in degrees, 0 to 360";
		check = "hue" };
};

local destroy_layout = dataforms.new {
	title = "Destroying a Hat";
	instructions = "Fill out this form to destroy a hat. Everyone wearing it loses it.";
	form_type;
	{ name = "hats#uri"; alias = "hat"; type = "list-single"; label = "The hat"; required = true; check = "uri" };
};

local assign_layout = dataforms.new {
	title = "Assigning a Hat";
	instructions = "Fill out this form to assign a hat.";
	form_type;
	{ name = "hats#jid"; type = "jid-single"; label = "User Address"; required = true; check = "jid" };
	{ name = "hats#uri"; alias = "hat"; type = "list-single"; label = "The hat"; required = true; check = "uri" };
};

local unassign_layout = dataforms.new {
	title = "Removing a Hat";
	instructions = "Fill out this form to remove a hat from a user.";
	form_type;
	{ name = "hats#jid"; type = "jid-single"; label = "User Address"; required = true; check = "jid" };
	{ name = "hats#uri"; alias = "hat"; type = "list-single"; label = "The hat"; required = true; check = "uri" };
};

-- list-single options for a hat picker, labelled with titles.
local function hat_options(hats)
	local options = {};
	for _, hat in ipairs(sorted_hats(hats)) do
		table.insert(options, { label = hat.title or hat.uri; value = hat.uri });
	end
	return options;
end

-- A multi-item result form (XEP-0004 <reported/> and <item/>).
local function result_form(title, columns, rows)
	local form = st.stanza("x", { xmlns = xmlns_data; type = "result" }):text_tag("title", title):tag("reported");
	for _, column in ipairs(columns) do
		form:tag("field", { var = column.var; label = column.label; type = column.type or "text-single" }):up();
	end
	form:up();
	for _, row in ipairs(rows) do
		form:tag("item");
		for _, column in ipairs(columns) do
			form:tag("field", { var = column.var });
			if row[column.var] then
				form:text_tag("value", row[column.var]);
			end
			form:up();
		end
		form:up();
	end
	return form;
end

local hat_columns = {
	{ var = "hats#title"; label = "Hat Title" };
	{ var = "hats#uri"; label = "Hat URI" };
	{ var = "hats#hue"; label = "Hat Hue" };
};

local assigned_columns = {
	{ var = "hats#jid"; label = "User Address"; type = "jid-single" };
	{ var = "hats#uri"; label = "Hat URI" };
	{ var = "hats#title"; label = "Hat Title" };
	{ var = "hats#hue"; label = "Hat Hue" };
};

local function list_hats(room)
	local rows = {};
	for _, hat in ipairs(sorted_hats(room_hats(room))) do
		table.insert(rows, { ["hats#title"] = hat.title; ["hats#uri"] = hat.uri; ["hats#hue"] = format_hue(hat.hue) });
	end
	return result_form("Hats List", hat_columns, rows);
end

local function list_assigned(room)
	local assigned = assigned_hats(room);
	local users = {};
	for user_bare in pairs(assigned) do
		table.insert(users, user_bare);
	end
	table.sort(users);
	local rows = {};
	for _, user_bare in ipairs(users) do
		for _, hat in ipairs(sorted_hats(assigned[user_bare])) do
			table.insert(rows, {
				["hats#jid"] = user_bare;
				["hats#uri"] = hat.uri;
				["hats#title"] = hat.title;
				["hats#hue"] = format_hue(hat.hue);
			});
		end
	end
	return result_form("Assigned Hats List", assigned_columns, rows);
end

local function describe_hat(uri, hat)
	return hat and hat.title and ("'%s' (%s)"):format(hat.title, uri) or uri;
end

local function create_hat(room, fields, by)
	local existed = room_hats(room)[fields["hats#uri"]] ~= nil;
	local ok, code, text = hats_api.define_room_hat(room.jid, fields["hats#uri"], {
		title = fields["hats#title"];
		hue = fields["hats#hue"];
	}, by);
	if not ok then return nil, api_fail(code, text); end
	return ("%s the hat %s"):format(existed and "Updated" or "Created", describe_hat(fields["hats#uri"], {
		title = fields["hats#title"];
	}));
end

local function unknown_hat(room, uri)
	return fail("hat-not-found", ("The room %s has no hat %s; create it first"):format(room.jid, uri));
end

local function destroy_hat(room, fields, by)
	local uri = fields["hats#uri"];
	local hat = room_hats(room)[uri];
	if not hat then return nil, unknown_hat(room, uri); end
	local ok, code, text = hats_api.destroy_room_hat(room.jid, uri, by);
	if not ok then return nil, api_fail(code, text); end
	return ("Destroyed the hat %s"):format(describe_hat(uri, hat));
end

local function assign_hat(room, fields, by)
	local user, uri = fields["hats#jid"], fields["hats#uri"];
	local hat = room_hats(room)[uri];
	if not hat then return nil, unknown_hat(room, uri); end
	local _, err = affiliated_room(room.jid, user);
	if err then return nil, err; end
	local ok, code, text = hats_api.add_user_hat(user, room.jid, uri, { active = true; title = hat.title; hue = hat.hue },
		by);
	if not ok then return nil, api_fail(code, text); end
	return ("Assigned the hat %s to %s"):format(describe_hat(uri, hat), user);
end

local function unassign_hat(room, fields, by)
	local user, uri = fields["hats#jid"], fields["hats#uri"];
	local hats, err = worn_hats(room, user);
	if not hats then return nil, err; end
	if hats[uri] == nil then
		return nil, fail("hat-not-found", ("%s does not wear the hat %s in this room"):format(user, uri));
	end
	local ok, remove_code, remove_text = hats_api.remove_user_hat(user, room.jid, uri, by);
	if not ok then return nil, api_fail(remove_code, remove_text); end
	return ("Removed the hat %s from %s"):format(describe_hat(uri, hats[uri]), user);
end

-- Values for a picker form, or nil and a note when there is nothing to pick.
local function catalogue_picker(room)
	local hats = room_hats(room);
	if next(hats) == nil then
		return nil, "This room has no hats yet; create one with " .. xmlns_hats_commands .. ":create";
	end
	return { ["hats#uri"] = hat_options(hats) };
end

local function held_picker(room)
	local hats = room_hats(room);
	for _, worn in pairs(assigned_hats(room)) do
		for uri, hat in pairs(worn) do
			hats[uri] = hats[uri] or hat;
		end
	end
	if next(hats) == nil then
		return nil, "Nobody in this room wears a hat";
	end
	return { ["hats#uri"] = hat_options(hats) };
end

-- Each command: `layout` and `initial` (values, or nil and a note) for a form, and `submit`; or `result` alone.
-- `access` says who may run it: "list" (occupants and members too), "review" (owners and admins, and service
-- admins) or "change" (service admins, and owners and admins where room_commands_enabled).
local room_commands = {
	{ node = "create"; name = "Create or update a hat"; access = "change"; layout = create_layout; submit = create_hat;
		initial = function () return {}; end };
	{ node = "destroy"; name = "Destroy a hat"; access = "change"; layout = destroy_layout; submit = destroy_hat;
		initial = catalogue_picker };
	{ node = "list"; name = "List hats"; access = "list"; result = list_hats };
	{ node = "assign"; name = "Assign a hat"; access = "change"; layout = assign_layout; submit = assign_hat;
		initial = catalogue_picker };
	{ node = "unassign"; name = "Remove a hat from a user"; access = "change"; layout = unassign_layout;
		submit = unassign_hat; initial = held_picker };
	{ node = "list-assigned"; name = "List assigned hats"; access = "review"; result = list_assigned };
};
local room_command_by_node = {};
for _, command in ipairs(room_commands) do
	command.short_name = command.node;
	command.node = xmlns_hats_commands .. ":" .. command.node;
	room_command_by_node[command.node] = command;
end

-- Whether someone of `standing` may run the command in the room; if not, the error and the reason to audit.
local function may_run(command, room, actor_standing)
	if command.access == "list" and actor_standing then
		return true;
	elseif command.access ~= "change" and (actor_standing == "service" or actor_standing == "room") then
		return true;
	elseif actor_standing == "service" or (actor_standing == "room" and room_commands_enabled(room)) then
		return true;
	elseif actor_standing == "room" then
		return false, "forbidden-disabled", "room-commands-disabled";
	elseif command.access == "list" then
		return false, "forbidden-list", "not-an-occupant";
	end
	return false, "forbidden", "not-a-room-manager";
end

local sessions_by_actor = cache.new(max_actors);

local function session_of(actor, sessionid)
	local sessions = sessions_by_actor:get(jid.bare(actor));
	return sessions and sessions:get(sessionid);
end

local function forget_session(actor, sessionid)
	local sessions = sessions_by_actor:get(jid.bare(actor));
	if sessions then
		sessions:set(sessionid, nil);
	end
end

local function open_session(actor, session)
	local actor_bare = jid.bare(actor);
	local sessions = sessions_by_actor:get(actor_bare);
	if not sessions then
		sessions = cache.new(max_sessions_per_actor);
	end
	sessions_by_actor:set(actor_bare, sessions); -- also makes this actor the most recent
	local sessionid = id.medium();
	sessions:set(sessionid, session);
	return sessionid;
end

local function command_element(node, sessionid, status)
	return st.stanza("command", { xmlns = xmlns_commands; node = node; sessionid = sessionid; status = status });
end

local function completed(node, sessionid, info)
	local element = command_element(node, sessionid or id.medium(), "completed");
	if info then
		element:text_tag("note", info, { type = "info" });
	end
	return element;
end

-- Runs one step of a room command for someone who may run it: returns the <command/> to answer with, or nil, error.
local function run_room_command(command, room, actor, kind, request)
	local action = request.attr.action or "execute";
	local sessionid = request.attr.sessionid;
	if sessionid then
		local session = session_of(actor, sessionid);
		if not (session and session.node == command.node and session.room == room.jid and session.actor == actor) then
			return nil, fail("bad-sessionid");
		end
		forget_session(actor, sessionid); -- every answer below ends the session or starts a new one
	end
	local form = request:get_child("x", xmlns_data);
	if action == "cancel" or (form and form.attr.type == "cancel") then
		return command_element(command.node, sessionid or id.medium(), "canceled");
	end
	if action ~= "execute" and action ~= "complete" and action ~= "next" then
		return nil, fail("bad-action");
	end
	if command.result then
		return completed(command.node, sessionid):add_child(command.result(room));
	end
	if form then -- a submission, also allowed straight away without asking for the form first (XEP-0317 §3.3)
		local fields, err = read_form(form, command.layout);
		if not fields then return nil, err; end
		local info, submit_err = command.submit(room, fields, acting(actor, kind));
		if not info then return nil, submit_err; end
		return completed(command.node, sessionid, info);
	end
	if sessionid then
		return nil, fail("bad-payload", "Submit the form to complete the command");
	end
	local values, note = command.initial(room);
	if not values then
		return completed(command.node, nil, note);
	end
	sessionid = open_session(actor, { node = command.node; room = room.jid; actor = actor });
	return command_element(command.node, sessionid, "executing")
		:tag("actions", { execute = "complete" }):tag("complete"):up():up()
		:add_child(command.layout:form(values));
end

-- Commands to room JIDs. Nodes that are not XEP-0317's are left to other modules (or to Prosody's
-- service-unavailable).
module:hook("iq-set/bare/" .. xmlns_commands .. ":command", function (event)
	local origin, stanza = event.origin, event.stanza;
	local request = stanza.tags[1];
	local command = room_command_by_node[request.attr.node];
	if not command then return; end
	local room = find_room(stanza.attr.to);
	if not room then
		origin.send(st.error_reply(stanza, fail("room-not-found")));
		return true;
	end
	local actor = stanza.attr.from;
	local actor_standing = standing(room, actor);
	local allowed, refusal, reason = may_run(command, room, actor_standing);
	if not allowed then
		refused(actor, command.short_name, reason, room);
		origin.send(st.error_reply(stanza, fail(refusal)));
		return true;
	end
	local kind = actor_standing == "service" and "service" or "room";
	local answer, err = run_room_command(command, room, actor, kind, request);
	if not answer then
		module:log("debug", "%s: %s failed in %s: %s", actor, command.node, room.jid, err.text);
		commands_answered:with_labels(command.short_name, err.condition == "forbidden" and "refused" or "failed"):add(1);
		origin.send(st.error_reply(stanza, err));
		return true;
	end
	if answer.attr.status ~= "executing" then
		commands_answered:with_labels(command.short_name, answer.attr.status):add(1);
	end
	origin.send(st.reply(stanza):add_child(answer));
	return true;
end);

-- Room disco: the commands node lists the commands to those who may run them (mod_muc answers every other node).
module:hook("iq-get/bare/http://jabber.org/protocol/disco#items:query", function (event)
	local origin, stanza = event.origin, event.stanza;
	if stanza.tags[1].attr.node ~= xmlns_commands then return; end
	local room = find_room(stanza.attr.to);
	if not room then return; end -- mod_muc answers for missing and destroyed rooms
	local reply = st.reply(stanza):tag("query", { xmlns = xmlns_disco_items; node = xmlns_commands });
	local actor_standing = standing(room, stanza.attr.from);
	for _, command in ipairs(room_commands) do
		if may_run(command, room, actor_standing) then
			reply:tag("item", { jid = room.jid; node = command.node; name = command.name }):up();
		end
	end
	origin.send(reply);
	return true;
end, 1);

module:hook("muc-disco#info/" .. xmlns_commands, function (event)
	event.reply:tag("identity", { category = "automation"; type = "command-list"; name = "Ad-Hoc Commands" }):up();
end);

for _, command in ipairs(room_commands) do
	module:hook("muc-disco#info/" .. command.node, function (event)
		if not may_run(command, event.room, standing(event.room, event.stanza.attr.from)) then return; end
		event.reply:tag("identity", { category = "automation"; type = "command-node"; name = command.name }):up();
		event.reply:tag("feature", { var = xmlns_commands }):up();
		event.reply:tag("feature", { var = xmlns_data }):up();
	end);
end

-- mod_muc_hats_api advertises urn:xmpp:hats:0; the room also answers commands, and its catalogue has a hash.
module:hook("muc-disco#info", function (event)
	event.reply:tag("feature", { var = xmlns_commands }):up();
	local hats = room_hats(event.room);
	if next(hats) ~= nil then
		table.insert(event.form, { name = "hats#hash"; type = "text-single"; label = "Hats hash" });
		event.formdata["hats#hash"] = catalogue_hash(hats);
	end
end);

-- The room's switch for its owners and admins, in the style of ejabberd's enable_hats, offered only where the
-- operator opted in with muc_hats_room_commands.
module:hook("muc-config-form", function (event)
	if not room_commands_allowed then return; end
	table.insert(event.form, {
		name = "enable_hats";
		type = "boolean";
		label = "Let the room's owners and admins manage its hats (XEP-0317)";
		value = event.room._data.enable_hats == true;
	});
end, 80 - 5);

module:hook("muc-config-submitted/enable_hats", function (event)
	local room, enabled = event.room, event.value == true;
	if (room._data.enable_hats == true) == enabled then return; end
	room._data.enable_hats = enabled or nil;
	event.status_codes["104"] = true;
	compat.audit(module, enabled and "hat-commands-enabled" or "hat-commands-disabled", { actor = event.actor;
		room = room.jid });
end);
