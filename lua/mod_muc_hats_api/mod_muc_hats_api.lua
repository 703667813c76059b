-- mod_muc_hats_api: an API for other modules to add, remove and set XEP-0317 hats on MUC affiliations.
--
-- Hats live in the room's affiliation data (key "hats"), where Prosody core reads them too, so they persist
-- with the room. Hat ids and attachments are validated by the native library before anything is stored.

local compat = module:require("prosody_native_compat");
local native = module:require("prosody_native");
local jid = compat.require("util.jid");
local st = compat.require("util.stanza");

local max_title_length = compat.get_option_integer(module, "muc_hats_max_title_length", 128, 1, 1024);
local max_hats_per_user = compat.get_option_integer(module, "muc_hats_max_per_user", 32, 1, 1000);

local mod_muc = module:depends("muc");

local xmlns_hats = "urn:xmpp:hats:0";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

local function hats_element(hats)
	local hats_el;
	for hat_id, hat in pairs(hats) do
		if hat.active then
			hats_el = hats_el or st.stanza("hats", { xmlns = xmlns_hats });
			hats_el:tag("hat", { uri = hat_id; title = hat.title; hue = hat.hue and ("%g"):format(hat.hue) }):up();
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

-- Finds the room on this host and checks that the user has an affiliation with it.
-- Returns room, bare user JID, or nil, code, text.
local function find_affiliated(user_jid, room_jid)
	if type(user_jid) ~= "string" or type(room_jid) ~= "string" then
		return nil, "bad-request", "User and room JIDs must be strings";
	end
	local user_bare = jid.prep(jid.bare(user_jid));
	if not user_bare then
		return nil, "bad-request", "Malformed user JID";
	end
	local room_bare = jid.prep(room_jid);
	if not room_bare or jid.host(room_bare) ~= module.host or not jid.node(room_bare) then
		return nil, "item-not-found", "Room not found on this host";
	end
	local room = mod_muc.get_room_from_jid(room_bare);
	if not room then
		return nil, "item-not-found", "Room not found on this host";
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
	local room, user_bare_or_code, why = find_affiliated(user_jid, room_jid);
	if not room then return nil, user_bare_or_code, why; end
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
