-- mod_muc_hats_api: an API for other modules to manage XEP-0317 hats in MUC rooms: the hats users wear, and each
-- room's hat catalogue.
--
-- Storage, the same as 0.1.0's, so that an upgrade keeps every hat:
-- - A user's hats live in the room's affiliation data (key "hats"), where Prosody core reads them too. Core keeps
--   that data for any JID, including service admins, who are owners without an affiliation entry on 0.12 (and on 13
--   with component_admins_as_room_owners): wearers are found by walking the affiliation data, not the affiliations.
-- - The catalogue lives in the room's own data (room._data.hat_definitions), saved with its configuration.
-- Each hat records who assigned it (assigned_by) and each catalogue entry who defined it (defined_by): "room" (a
-- room owner or admin), "service" (a service admin) or "api" (another module). Room owners and admins may change
-- only what room owners and admins made. Hat ids and attachments are validated by the native library first.

local compat = module:require("prosody_native_compat");
compat.check_host(module, "muc");
local native = module:require("prosody_native");
local jid = compat.require("util.jid");
local st = compat.require("util.stanza");

local max_title_length, max_hats_per_user, max_hats_per_room;
local function read_options()
	max_title_length = compat.get_option_integer(module, "muc_hats_max_title_length", 128, 1, 1024);
	max_hats_per_user = compat.get_option_integer(module, "muc_hats_max_per_user", 32, 1, 1000);
	max_hats_per_room = compat.get_option_integer(module, "muc_hats_max_per_room", 100, 1, 10000);
end
read_options();
-- `prosodyctl reload` re-reads the config file but reloads no module.
module:hook_global("config-reloaded", read_options);

local mod_muc = module:depends("muc");

local xmlns_hats = "urn:xmpp:hats:0";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

local hat_changes = module:metric("counter", "hat_changes", "",
	"Hat changes: worn hats assigned, updated or unassigned; catalogue hats created, redefined or destroyed",
	{ "change"; "by" });

-- Who may act, and who made a hat or catalogue entry.
local kinds = { room = true; service = true; api = true };
-- The affiliations that may wear hats (on 0.12, get_affiliation also answers "owner" for service admins).
local wearing_affiliations = { owner = true; admin = true; member = true };

local function count(t)
	local n = 0;
	for _ in pairs(t) do n = n + 1; end
	return n;
end

local function format_hue(hue)
	return hue and ("%.14g"):format(hue);
end

-- Who acts, from an API call's optional last argument `{ kind = "room" | "service" | "api", actor = JID }`; another
-- module that passes nothing acts as "api". Returns the table, or nil, code, text.
local function acting(by)
	if by == nil then
		return { kind = "api" };
	end
	if type(by) ~= "table" or not kinds[by.kind or "api"] or (by.actor ~= nil and type(by.actor) ~= "string") then
		return nil, "bad-request", "'by' must be a table { kind = \"room\" | \"service\" | \"api\", actor = JID }";
	end
	return { kind = by.kind or "api"; actor = by.actor };
end

-- Finds the room on this host; a destroyed room's tombstone is no room. Returns room, or nil, code, text.
local function find_room(room_jid)
	if type(room_jid) ~= "string" then
		return nil, "bad-request", "Room JID must be a string";
	end
	local room_bare = jid.prep(room_jid);
	if not room_bare or jid.host(room_bare) ~= module.host or not jid.node(room_bare) then
		return nil, "item-not-found", "Room not found on this host";
	end
	local room = mod_muc.get_room_from_jid(room_bare);
	if not room or room._data.destroyed then
		return nil, "item-not-found", "Room not found on this host";
	end
	return room;
end

-- The hats stored for a user, or nil when there are none.
local function stored_hats(room, user_bare)
	local hats = room:get_affiliation_data(user_bare, "hats");
	if type(hats) == "table" and next(hats) ~= nil then
		return hats;
	end
end

local function stored_definitions(room)
	return room._data.hat_definitions or {};
end

-- Finds the room and a user who may wear hats in it: a member, admin or owner; with `or_wearer`, also anyone who
-- still holds hats there (so that they can be read and removed). Returns room, prepped bare JID, or nil, code, text.
local function find_user(user_jid, room_jid, or_wearer)
	if type(user_jid) ~= "string" then
		return nil, "bad-request", "User JID must be a string";
	end
	local user_bare = jid.prep(jid.bare(user_jid));
	if not user_bare then
		return nil, "bad-request", "Malformed user JID";
	end
	local room, code, text = find_room(room_jid);
	if not room then
		return nil, code, text;
	end
	if not (wearing_affiliations[room:get_affiliation(user_bare)] or (or_wearer and stored_hats(room, user_bare))) then
		return nil, "item-not-found", "User is not affiliated with the room";
	end
	return room, user_bare;
end

-- Bare JIDs of everyone who holds hats in the room, sorted. The walk covers the affiliation data of every JID, so
-- that wearers without an affiliation entry (service admins) are found too.
local function wearers(room)
	local found = {};
	for user_bare in pairs(room._affiliation_data) do
		if stored_hats(room, user_bare) then
			table.insert(found, user_bare);
		end
	end
	table.sort(found);
	return found;
end

-- XEP-0317 §3.1: every <hat/> has a title. 0.1.0 stored hats without one: they show the catalogue's, or the URI.
local function hat_title(room, uri, hat)
	local definition = stored_definitions(room)[uri];
	return hat.title or (definition and definition.title) or uri;
end

-- A stored hat as the API hands it out, with what 0.1.0 did not store filled in: the title, and who assigned it. A
-- 0.1.0 hat of the room's catalogue that is not required came from the room commands (0.1.0 assigned such hats no
-- other way); any other 0.1.0 hat counts as the service's.
local function normalize_hat(room, uri, hat)
	local assigned_by = hat.assigned_by;
	if not kinds[assigned_by] then
		assigned_by = (stored_definitions(room)[uri] and not hat.required) and "room" or "service";
	end
	return {
		active = hat.active;
		required = hat.required;
		title = hat_title(room, uri, hat);
		hue = hat.hue;
		assigned_by = assigned_by;
	};
end

local function copy_hats(room, user_bare)
	local hats = {};
	for uri, hat in pairs(stored_hats(room, user_bare) or {}) do
		hats[uri] = normalize_hat(room, uri, hat);
	end
	return hats;
end

-- The room's catalogue (hat id -> { title, hue, defined_by }), a copy; 0.1.0 entries came from the room commands.
local function copy_definitions(room)
	local definitions = {};
	for uri, definition in pairs(stored_definitions(room)) do
		definitions[uri] = {
			title = definition.title;
			hue = definition.hue;
			defined_by = kinds[definition.defined_by] and definition.defined_by or "room";
		};
	end
	return definitions;
end

local function same_hat(a, b)
	if a == nil or b == nil then
		return a == b;
	end
	return not a.active == not b.active and not a.required == not b.required and a.title == b.title
		and a.hue == b.hue and a.assigned_by == b.assigned_by;
end

-- What others see of a wardrobe: its active hats with title and hue, sorted, as one string.
local function shown(hats)
	local lines = {};
	for uri, hat in pairs(hats) do
		if hat.active then
			table.insert(lines, table.concat({ uri, hat.title or "", format_hue(hat.hue) or "" }, "\0"));
		end
	end
	table.sort(lines);
	return table.concat(lines, "\n");
end

-- Makes `new` the user's hats if it differs from `old` (both normalized): stores it, counts each changed hat,
-- re-sends the user's presence only when what presence shows has changed, and fires muc-hats-changed.
-- Returns whether anything changed.
local function store_hats(room, user_bare, old, new, by)
	local changes = {};
	for uri, hat in pairs(new) do
		if old[uri] == nil then
			table.insert(changes, "assigned");
		elseif not same_hat(old[uri], hat) then
			table.insert(changes, "updated");
		end
	end
	for uri in pairs(old) do
		if new[uri] == nil then
			table.insert(changes, "unassigned");
		end
	end
	if #changes == 0 then
		return false;
	end
	room:set_affiliation_data(user_bare, "hats", next(new) and new or nil);
	for _, change in ipairs(changes) do
		hat_changes:with_labels(change, by.kind):add(1);
	end
	if shown(old) ~= shown(new) then
		for _, occupant in room:each_occupant() do
			if occupant.bare_jid == user_bare then
				room:publicise_occupant_status(occupant, st.stanza("x", { xmlns = xmlns_muc_user }));
			end
		end
	end
	module:fire_event("muc-hats-changed", { room = room; jid = user_bare; hats = new });
	return true;
end

-- A refusal that matters to security: a room owner or admin tried to change what the service or a module made.
local function refuse_protected(by, room, fields, text)
	fields.actor, fields.by, fields.room, fields.reason = by.actor, by.kind, room.jid, "protected";
	compat.audit(module, "hat-change-refused", fields);
	return nil, "forbidden", text;
end

-- The first hat between `old` and `new` that a room owner or admin may not change: one assigned by the service or a
-- module, before or after the change.
local function protected_change(old, new)
	for uri, hat in pairs(new) do
		if not same_hat(old[uri], hat) and (hat.assigned_by ~= "room" or (old[uri] and old[uri].assigned_by ~= "room")) then
			return uri;
		end
	end
	for uri, hat in pairs(old) do
		if new[uri] == nil and hat.assigned_by ~= "room" then
			return uri;
		end
	end
end

-- The one step every change of a user's hats goes through: protection, the per-user limit, storing, and one
-- audit line (`action`, with `fields`) when something changed. Returns true, or nil, code, text.
local function change_user_hats(room, user_bare, old, new, by, action, fields)
	if by.kind == "room" then
		local uri = protected_change(old, new);
		if uri then
			fields.hat = uri;
			fields.user = user_bare;
			return refuse_protected(by, room, fields, ("The hat %s of %s was assigned by the service; only a service "
				.. "admin may change it"):format(uri, user_bare));
		end
	end
	local n = count(new);
	if n > max_hats_per_user and n > count(old) then
		return nil, "resource-constraint", ("A user may wear at most %d hats in a room"):format(max_hats_per_user);
	end
	if store_hats(room, user_bare, old, new, by) then
		fields.actor, fields.by, fields.room, fields.user = by.actor, by.kind, room.jid, user_bare;
		compat.audit(module, action, fields);
	end
	return true;
end

-- Checks an attachment for storage: returns uri, attachment (validated, with who assigned it), or nil, code, text.
-- Someone acting as a room owner or admin may only assign as "room".
local function check_hat(hat_id, attachment, by)
	if type(hat_id) ~= "string" then
		return nil, "bad-request", "Hat id must be a string";
	end
	if attachment ~= nil and type(attachment) ~= "table" then
		return nil, "bad-request", "Attachment must be a table";
	end
	local uri, clean, text = native.validate.hat(hat_id, attachment, max_title_length);
	if not uri then
		return nil, clean, text;
	end
	if by.kind == "room" and (clean.assigned_by or "room") ~= "room" then
		return nil, "forbidden", "A room owner or admin can only assign hats as 'room'";
	end
	clean.assigned_by = clean.assigned_by or by.kind;
	return uri, clean;
end

-- A hat of the catalogue takes the catalogue's title and hue unless it has its own; any other hat without a title
-- takes its URI (XEP-0317 §3.1: every hat has a title).
local function complete_hat(room, uri, hat)
	local definition = stored_definitions(room)[uri] or {};
	hat.title = hat.title or definition.title or uri;
	if hat.hue == nil then
		hat.hue = definition.hue;
	end
	return hat;
end

-- Bare JIDs of the users whose hat `uri` a room owner or admin may not change, if any.
local function protected_wearer(room, uri)
	for _, user_bare in ipairs(wearers(room)) do
		local hat = stored_hats(room, user_bare)[uri];
		if hat and normalize_hat(room, uri, hat).assigned_by ~= "room" then
			return user_bare;
		end
	end
end

-- Changes hat `uri` of everyone who holds it with `change(hat)` (nil removes it); returns how many changed.
local function update_wearers(room, uri, change, by)
	local changed = 0;
	for _, user_bare in ipairs(wearers(room)) do
		local old = copy_hats(room, user_bare);
		if old[uri] ~= nil then
			local new = copy_hats(room, user_bare);
			new[uri] = change(new[uri]);
			if store_hats(room, user_bare, old, new, by) then
				changed = changed + 1;
			end
		end
	end
	return changed;
end

-- Stores the catalogue and tells the room: a changed hat list is a configuration change (XEP-0317, status 104).
local function save_definitions(room, definitions, hat_id)
	room._data.hat_definitions = next(definitions) and definitions or nil;
	room:save(true);
	module:fire_event("muc-room-hats-changed", { room = room; hat_id = hat_id; definition = definitions[hat_id] });
	room:broadcast_message(st.message({ type = "groupchat"; from = room.jid })
		:tag("x", { xmlns = xmlns_muc_user }):tag("status", { code = "104" }):up():up());
end

-- The catalogue entry a room owner or admin may not change, with the reason; nil when they may.
local function protected_definition(room, uri, definition)
	if definition and definition.defined_by ~= "room" then
		return ("The hat %s was defined by the service; only a service admin may change it"):format(uri);
	end
	local wearer = protected_wearer(room, uri);
	if wearer then
		return ("The hat %s of %s was assigned by the service; only a service admin may change it"):format(uri, wearer);
	end
end

-- Presence carries the active hats as XEP-0317 <hats xmlns='urn:xmpp:hats:0'> on both versions: 0.12 core only
-- emits the legacy namespace, 13 core emits the new one without hue. Runs after core so exactly one element,
-- ours, is left; this also drops any copy a client put into its own presence.
module:hook("muc-build-occupant-presence", function (event)
	event.stanza:remove_children("hats", xmlns_hats);
	local bare_jid = event.occupant and event.occupant.bare_jid or event.bare_jid;
	local hats = bare_jid and stored_hats(event.room, bare_jid);
	if not hats then return; end
	local uris = {};
	for uri, hat in pairs(hats) do
		if hat.active then
			table.insert(uris, uri);
		end
	end
	if #uris == 0 then return; end
	table.sort(uris);
	local hats_el = st.stanza("hats", { xmlns = xmlns_hats });
	for _, uri in ipairs(uris) do
		local hat = hats[uri];
		hats_el:tag("hat", { uri = uri; title = hat_title(event.room, uri, hat); hue = format_hue(hat.hue) }):up();
	end
	event.stanza:add_direct_child(hats_el);
end, -10);

-- XEP-0317: a room that supports hats advertises them, whichever module manages them.
module:hook("muc-disco#info", function (event)
	event.reply:tag("feature", { var = xmlns_hats }):up();
end);

-- The API. Every function takes an optional last argument `by` = { kind = "room" | "service" | "api", actor = JID }:
-- who acts ("api", another module, when omitted), for the audit log and the protection of hats.

--- Adds (or replaces) one hat of a user in a room. `attachment` defaults to `{}` (an inactive hat); a hat without a
-- title takes the catalogue's or its URI, and one without hue the catalogue's.
-- Returns true, or nil, code, text: "item-not-found" (no such room on this host, user not affiliated),
-- "bad-request" (malformed JID, hat id, attachment or `by`), "resource-constraint" (too many hats), "forbidden"
-- (`by.kind` "room" and the hat was assigned by the service or a module).
function add_user_hat(user_jid, room_jid, hat_id, attachment, by) --luacheck: ignore 131/add_user_hat
	local who, by_code, by_text = acting(by);
	if not who then return nil, by_code, by_text; end
	local uri, clean_or_code, text = check_hat(hat_id, attachment, who);
	if not uri then return nil, clean_or_code, text; end
	local room, user_bare_or_code, reason = find_user(user_jid, room_jid);
	if not room then return nil, user_bare_or_code, reason; end
	local old = copy_hats(room, user_bare_or_code);
	local new = copy_hats(room, user_bare_or_code);
	new[uri] = complete_hat(room, uri, clean_or_code);
	local action = old[uri] and "hat-updated" or "hat-assigned";
	return change_user_hats(room, user_bare_or_code, old, new, who, action, { hat = uri; title = new[uri].title });
end

--- Removes one hat from a user in a room; removing a hat the user does not have is not an error.
-- Returns true, or nil, code, text: "item-not-found" (no such room, user neither affiliated nor wearing hats),
-- "bad-request", "forbidden" (`by.kind` "room" and the hat was assigned by the service or a module).
function remove_user_hat(user_jid, room_jid, hat_id, by) --luacheck: ignore 131/remove_user_hat
	local who, by_code, by_text = acting(by);
	if not who then return nil, by_code, by_text; end
	if type(hat_id) ~= "string" then return nil, "bad-request", "Hat id must be a string"; end
	local uri, code, text = native.validate.uri(hat_id);
	if not uri then return nil, code, "Hat id must be a URI: " .. text; end
	local room, user_bare_or_code, why = find_user(user_jid, room_jid, true);
	if not room then return nil, user_bare_or_code, why; end
	local old = copy_hats(room, user_bare_or_code);
	local new = copy_hats(room, user_bare_or_code);
	new[uri] = nil;
	return change_user_hats(room, user_bare_or_code, old, new, who, "hat-unassigned", { hat = uri });
end

--- Makes `hats` (hat id -> attachment) exactly the user's hats in the room, adding and removing as needed.
-- Returns true, or nil, code, text: "item-not-found", "bad-request" (any malformed entry: nothing changes),
-- "resource-constraint", "forbidden" (`by.kind` "room" and a hat that would change was assigned by the service or a
-- module).
function set_user_hats(user_jid, room_jid, hats, by) --luacheck: ignore 131/set_user_hats
	local who, by_code, by_text = acting(by);
	if not who then return nil, by_code, by_text; end
	if type(hats) ~= "table" then
		return nil, "bad-request", "Hats must be a table mapping hat ids to attachments";
	end
	local clean_hats = {};
	for hat_id, attachment in pairs(hats) do
		local uri, clean_or_code, text = check_hat(hat_id, attachment, who);
		if not uri then return nil, clean_or_code, text; end
		clean_hats[uri] = clean_or_code;
	end
	local room, user_bare_or_code, why = find_user(user_jid, room_jid, next(clean_hats) == nil);
	if not room then return nil, user_bare_or_code, why; end
	for uri, hat in pairs(clean_hats) do
		complete_hat(room, uri, hat);
	end
	local old = copy_hats(room, user_bare_or_code);
	return change_user_hats(room, user_bare_or_code, old, clean_hats, who, "hats-set", { hats = count(clean_hats) });
end

--- Returns the user's hats in the room (hat id -> attachment with title and assigned_by, a copy), or nil, code,
-- text: "item-not-found" (no such room, user neither affiliated nor wearing hats), "bad-request".
function get_user_hats(user_jid, room_jid) --luacheck: ignore 131/get_user_hats
	local room, user_bare_or_code, why = find_user(user_jid, room_jid, true);
	if not room then return nil, user_bare_or_code, why; end
	return copy_hats(room, user_bare_or_code);
end

--- Returns every wearer's hats in the room (bare JID -> hat id -> attachment, a copy), affiliated or not: service
-- admins who are owners without an affiliation entry are included. Errors: "item-not-found" (no such room).
function get_assigned_hats(room_jid) --luacheck: ignore 131/get_assigned_hats
	local room, code, text = find_room(room_jid);
	if not room then return nil, code, text; end
	local assigned = {};
	for _, user_bare in ipairs(wearers(room)) do
		assigned[user_bare] = copy_hats(room, user_bare);
	end
	return assigned;
end

--- Returns the room's hat catalogue (hat id -> { title = string, hue = number or nil, defined_by }, a copy), or
-- nil, code, text: "item-not-found" (no such room on this host).
function get_room_hats(room_jid) --luacheck: ignore 131/get_room_hats
	local room, code, text = find_room(room_jid);
	if not room then return nil, code, text; end
	return copy_definitions(room);
end

--- Defines a hat in the room's catalogue, or updates its title and hue; `definition` is
-- `{ title = string, hue = number? }`. Everyone who holds the hat gets the new title and hue at once.
-- Returns true, or nil, code, text: "item-not-found" (no such room), "bad-request" (malformed hat id, missing or
-- malformed title, malformed hue, any other field), "resource-constraint" (the room already defines
-- muc_hats_max_per_room hats), "forbidden" (`by.kind` "room", and the service or a module defined the hat or
-- assigned it to someone).
function define_room_hat(room_jid, hat_id, definition, by) --luacheck: ignore 131/define_room_hat
	local who, by_code, by_text = acting(by);
	if not who then return nil, by_code, by_text; end
	if type(definition) ~= "table" then return nil, "bad-request", "Hat definition must be a table"; end
	if definition.active ~= nil or definition.required ~= nil or definition.assigned_by ~= nil then
		return nil, "bad-request", "A hat definition has only a title and a hue";
	end
	local uri, clean_or_code, text = check_hat(hat_id, definition, who);
	if not uri then return nil, clean_or_code, text; end
	if not clean_or_code.title then return nil, "bad-request", "A hat definition needs a title"; end
	local room, room_code, room_text = find_room(room_jid);
	if not room then return nil, room_code, room_text; end
	local definitions = copy_definitions(room);
	local old = definitions[uri];
	local title, hue = clean_or_code.title, clean_or_code.hue;
	if who.kind == "room" then
		local refusal = protected_definition(room, uri, old);
		if refusal then return refuse_protected(who, room, { hat = uri }, refusal); end
	end
	if old == nil and count(definitions) >= max_hats_per_room then
		return nil, "resource-constraint", ("A room may define at most %d hats"):format(max_hats_per_room);
	end
	if old and old.title == title and old.hue == hue and old.defined_by == who.kind then
		return true;
	end
	definitions[uri] = { title = title; hue = hue; defined_by = who.kind };
	local changed = update_wearers(room, uri, function (hat)
		hat.title, hat.hue = title, hue;
		return hat;
	end, who);
	save_definitions(room, definitions, uri);
	hat_changes:with_labels(old and "redefined" or "created", who.kind):add(1);
	compat.audit(module, old and "hat-redefined" or "hat-defined", { actor = who.actor; by = who.kind; room = room.jid;
		hat = uri; title = title; hue = format_hue(hue); wearers = changed });
	return true;
end

--- Removes a hat from the room's catalogue and from everyone who holds it. Returns true, or nil, code, text:
-- "item-not-found" (no such room, or the room defines no such hat), "bad-request" (malformed hat id), "forbidden"
-- (`by.kind` "room", and the service or a module defined the hat or assigned it to someone).
function destroy_room_hat(room_jid, hat_id, by) --luacheck: ignore 131/destroy_room_hat
	local who, by_code, by_text = acting(by);
	if not who then return nil, by_code, by_text; end
	if type(hat_id) ~= "string" then return nil, "bad-request", "Hat id must be a string"; end
	local uri, code, text = native.validate.uri(hat_id);
	if not uri then return nil, code, "Hat id must be a URI: " .. text; end
	local room, room_code, room_text = find_room(room_jid);
	if not room then return nil, room_code, room_text; end
	local definitions = copy_definitions(room);
	if definitions[uri] == nil then return nil, "item-not-found", "The room defines no hat with that id"; end
	if who.kind == "room" then
		local refusal = protected_definition(room, uri, definitions[uri]);
		if refusal then return refuse_protected(who, room, { hat = uri }, refusal); end
	end
	local changed = update_wearers(room, uri, function () return nil; end, who);
	definitions[uri] = nil;
	save_definitions(room, definitions, uri);
	hat_changes:with_labels("destroyed", who.kind):add(1);
	compat.audit(module, "hat-destroyed", { actor = who.actor; by = who.kind; room = room.jid; hat = uri;
		wearers = changed });
	return true;
end
