-- mod_muc_hats_api: an API for other modules to add, remove and set XEP-0317 hats on MUC affiliations.
--
-- Hats live in the room's affiliation data (key "hats"), where Prosody core reads them too, so they persist
-- with the room. Hat ids and attachments are validated by the native library before anything is stored.

local compat = module:require("prosody_native_compat");
compat.check_host(module, "muc");
local native = module:require("prosody_native");
local jid = compat.require("util.jid");
local st = compat.require("util.stanza");

local max_title_length = compat.get_option_integer(module, "muc_hats_max_title_length", 128, 1, 1024);
local max_hats_per_user = compat.get_option_integer(module, "muc_hats_max_per_user", 32, 1, 1000);
local max_hats_per_room = compat.get_option_integer(module, "muc_hats_max_per_room", 100, 1, 10000);

local mod_muc = module:depends("muc");

local xmlns_hats = "urn:xmpp:hats:0";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

local function hats_element(hats)
	local hats_el;
	for hat_id, hat in pairs(hats) do
		if hat.active then
			hats_el = hats_el or st.stanza("hats", { xmlns = xmlns_hats });
			hats_el:tag("hat", { uri = hat_id; title = hat.title; hue = hat.hue and ("%.14g"):format(hat.hue) }):up();
		end
	end
	return hats_el;
end

local function check_hat_args(hat_id, attachment)
	if type(hat_id) ~= "string" then
		return nil, "bad-request", "Hat id must be a string";
	end
	if attachment ~= nil and type(attachment) ~= "table" then
		return nil, "bad-request", "Attachment must be a table";
	end
	return true;
end

-- Finds the room on this host. Returns room, or nil, code, text.
local function find_room(room_jid)
	if type(room_jid) ~= "string" then
		return nil, "bad-request", "Room JID must be a string";
	end
	local room_bare = jid.prep(room_jid);
	if not room_bare or jid.host(room_bare) ~= module.host or not jid.node(room_bare) then
		return nil, "item-not-found", "Room not found on this host";
	end
	local room = mod_muc.get_room_from_jid(room_bare);
	if not room then
		return nil, "item-not-found", "Room not found on this host";
	end
	return room;
end

-- Finds the room on this host and checks that the user has an affiliation with it.
-- Returns room, bare user JID, or nil, code, text.
local function find_affiliated(user_jid, room_jid)
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
	if not room:get_affiliation(user_bare) then
		return nil, "item-not-found", "User is not affiliated with the room";
	end
	return room, user_bare;
end

local function count(t)
	local n = 0;
	for _ in pairs(t) do n = n + 1; end
	return n;
end

-- Stores the user's hats and re-sends their presence so others see the change at once.
local function store_hats(room, user_bare, hats)
	if count(hats) > max_hats_per_user then
		return nil, "resource-constraint", ("A user may wear at most %d hats in a room"):format(max_hats_per_user);
	end
	room:set_affiliation_data(user_bare, "hats", next(hats) and hats or nil);
	for _, occupant in room:each_occupant() do
		if occupant.bare_jid == user_bare then
			room:publicise_occupant_status(occupant, st.stanza("x", { xmlns = xmlns_muc_user }));
		end
	end
	module:fire_event("muc-hats-changed", { room = room; jid = user_bare; hats = hats });
	return true;
end

local function copy_hats(room, user_bare)
	local hats = {};
	for hat_id, hat in pairs(room:get_affiliation_data(user_bare, "hats") or {}) do
		hats[hat_id] = hat;
	end
	return hats;
end

-- The room's hat catalogue (XEP-0317 "hat list"): hat id -> { title, hue }, kept in the room's own data so that
-- room:save() persists it with the room's configuration on both versions.
local function copy_definitions(room)
	local definitions = {};
	for hat_id, definition in pairs(room._data.hat_definitions or {}) do
		definitions[hat_id] = { title = definition.title; hue = definition.hue };
	end
	return definitions;
end

local function save_definitions(room, definitions, hat_id)
	room._data.hat_definitions = next(definitions) and definitions or nil;
	room:save(true);
	module:fire_event("muc-room-hats-changed", { room = room; hat_id = hat_id; definition = definitions[hat_id] });
end

-- Bare JIDs of the affiliated users who hold the hat, collected first so that storing may change the data.
local function hat_holders(room, hat_id)
	local holders = {};
	for user_bare in room:each_affiliation() do
		local hats = room:get_affiliation_data(user_bare, "hats");
		if hats and hats[hat_id] ~= nil then
			table.insert(holders, user_bare);
		end
	end
	return holders;
end

-- Changes the hat of every holder with `change(old_attachment)` (nil removes it), storing and re-sending each.
local function update_holders(room, hat_id, change)
	for _, user_bare in ipairs(hat_holders(room, hat_id)) do
		local hats = copy_hats(room, user_bare);
		hats[hat_id] = change(hats[hat_id]);
		local ok, code, text = store_hats(room, user_bare, hats);
		if not ok then
			module:log("warn", "Could not update hat %s of %s in %s: %s (%s)", hat_id, user_bare, room.jid, text, code);
		end
	end
end

-- Presence carries the active hats as XEP-0317 <hats xmlns='urn:xmpp:hats:0'> on both versions: 0.12 core only
-- emits the legacy namespace, 13 core emits the new one without hue. Runs after core so exactly one element,
-- ours, is left; this also drops any copy a client put into its own presence.
module:hook("muc-build-occupant-presence", function (event)
	event.stanza:remove_children("hats", xmlns_hats);
	local bare_jid = event.occupant and event.occupant.bare_jid or event.bare_jid;
	local hats = bare_jid and event.room:get_affiliation_data(bare_jid, "hats");
	local hats_el = hats and hats_element(hats);
	if hats_el then
		event.stanza:add_direct_child(hats_el);
	end
end, -10);

--- Adds (or replaces) one hat of a user in a room. `attachment` defaults to `{}` (an inactive hat).
-- Returns true, or nil, code, text: "item-not-found" (no such room on this host, user not affiliated),
-- "bad-request" (malformed JID, hat id or attachment), "resource-constraint" (too many hats).
function add_user_hat(user_jid, room_jid, hat_id, attachment) --luacheck: ignore 131/add_user_hat
	local ok, code, why = check_hat_args(hat_id, attachment);
	if not ok then return nil, code, why; end
	local uri, clean_or_code, text = native.validate.hat(hat_id, attachment, max_title_length);
	if not uri then return nil, clean_or_code, text; end
	local room, user_bare_or_code, reason = find_affiliated(user_jid, room_jid);
	if not room then return nil, user_bare_or_code, reason; end
	local hats = copy_hats(room, user_bare_or_code);
	hats[uri] = clean_or_code;
	return store_hats(room, user_bare_or_code, hats);
end

--- Removes one hat from a user in a room; removing a hat the user does not have is not an error.
-- Returns true, or nil, code, text: "item-not-found" (no such room, user not affiliated), "bad-request".
function remove_user_hat(user_jid, room_jid, hat_id) --luacheck: ignore 131/remove_user_hat
	if type(hat_id) ~= "string" then return nil, "bad-request", "Hat id must be a string"; end
	local uri, code, text = native.validate.uri(hat_id);
	if not uri then return nil, code, "Hat id must be a URI: " .. text; end
	local room, user_bare_or_code, why = find_affiliated(user_jid, room_jid);
	if not room then return nil, user_bare_or_code, why; end
	local hats = copy_hats(room, user_bare_or_code);
	if hats[uri] == nil then return true; end
	hats[uri] = nil;
	return store_hats(room, user_bare_or_code, hats);
end

--- Makes `hats` (hat id -> attachment) exactly the user's hats in the room, adding and removing as needed.
-- Returns true, or nil, code, text: "item-not-found", "bad-request" (any malformed entry: nothing changes),
-- "resource-constraint".
function set_user_hats(user_jid, room_jid, hats) --luacheck: ignore 131/set_user_hats
	if type(hats) ~= "table" then
		return nil, "bad-request", "Hats must be a table mapping hat ids to attachments";
	end
	local clean_hats = {};
	for hat_id, attachment in pairs(hats) do
		local ok, code, why = check_hat_args(hat_id, attachment);
		if not ok then return nil, code, why; end
		local uri, clean_or_code, text = native.validate.hat(hat_id, attachment, max_title_length);
		if not uri then return nil, clean_or_code, text; end
		clean_hats[uri] = clean_or_code;
	end
	local room, user_bare_or_code, why = find_affiliated(user_jid, room_jid);
	if not room then return nil, user_bare_or_code, why; end
	return store_hats(room, user_bare_or_code, clean_hats);
end

--- Returns the user's hats in the room (hat id -> attachment, a copy), or nil, code, text as above.
function get_user_hats(user_jid, room_jid) --luacheck: ignore 131/get_user_hats
	local room, user_bare_or_code, why = find_affiliated(user_jid, room_jid);
	if not room then return nil, user_bare_or_code, why; end
	return copy_hats(room, user_bare_or_code);
end

--- Returns the room's hat catalogue (hat id -> { title = string, hue = number or nil }, a copy), or nil, code, text:
-- "item-not-found" (no such room on this host).
function get_room_hats(room_jid) --luacheck: ignore 131/get_room_hats
	local room, code, text = find_room(room_jid);
	if not room then return nil, code, text; end
	return copy_definitions(room);
end

--- Defines a hat in the room's catalogue, or updates its title and hue; `definition` is
-- `{ title = string, hue = number? }`. Everyone who holds the hat gets the new title and hue at once.
-- Returns true, or nil, code, text: "item-not-found" (no such room), "bad-request" (malformed hat id, missing or
-- malformed title, malformed hue, any other field), "resource-constraint" (the room already defines
-- muc_hats_max_per_room hats).
function define_room_hat(room_jid, hat_id, definition) --luacheck: ignore 131/define_room_hat
	if type(definition) ~= "table" then return nil, "bad-request", "Hat definition must be a table"; end
	local ok, code, why = check_hat_args(hat_id, definition);
	if not ok then return nil, code, why; end
	if definition.active ~= nil or definition.required ~= nil then
		return nil, "bad-request", "A hat definition has only a title and a hue";
	end
	local uri, clean_or_code, text = native.validate.hat(hat_id, definition, max_title_length);
	if not uri then return nil, clean_or_code, text; end
	if not clean_or_code.title then return nil, "bad-request", "A hat definition needs a title"; end
	local room, room_code, room_text = find_room(room_jid);
	if not room then return nil, room_code, room_text; end
	local definitions = copy_definitions(room);
	if definitions[uri] == nil and count(definitions) >= max_hats_per_room then
		return nil, "resource-constraint", ("A room may define at most %d hats"):format(max_hats_per_room);
	end
	local title, hue = clean_or_code.title, clean_or_code.hue;
	definitions[uri] = { title = title; hue = hue };
	update_holders(room, uri, function (old)
		return { active = old.active; required = old.required; title = title; hue = hue };
	end);
	save_definitions(room, definitions, uri);
	return true;
end

--- Removes a hat from the room's catalogue and from everyone who holds it. Returns true, or nil, code, text:
-- "item-not-found" (no such room, or the room defines no such hat), "bad-request" (malformed hat id).
function destroy_room_hat(room_jid, hat_id) --luacheck: ignore 131/destroy_room_hat
	if type(hat_id) ~= "string" then return nil, "bad-request", "Hat id must be a string"; end
	local uri, code, text = native.validate.uri(hat_id);
	if not uri then return nil, code, "Hat id must be a URI: " .. text; end
	local room, room_code, room_text = find_room(room_jid);
	if not room then return nil, room_code, room_text; end
	local definitions = copy_definitions(room);
	if definitions[uri] == nil then return nil, "item-not-found", "The room defines no hat with that id"; end
	update_holders(room, uri, function () return nil; end);
	definitions[uri] = nil;
	save_definitions(room, definitions, uri);
	return true;
end
