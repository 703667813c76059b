-- Test-only driver: calls mod_muc_hats_api the way another module does (module:depends) and exposes each call
-- over HTTP, so the integration suite can drive the API of a real Prosody. Never install this in production.
--
-- POST /test_hats_driver/<function> with a JSON array of arguments -> {"ok": result, "code": ..., "text": ...}
-- POST /test_hats_driver/store_as_0.1.0 with [room, user, hats]: stores hats as mod_muc_hats_api 0.1.0 did (no
--   assigned_by, maybe no title), straight into the affiliation data, to test the upgrade.
-- It also answers the room command node urn:example:hats-driver:ping, as another module's room command.

local json = require "util.json";
local st = require "util.stanza";

local hats = module:depends("muc_hats_api");
local mod_muc = module:depends("muc");
module:depends("http");

local callable = {
	add_user_hat = true; remove_user_hat = true; set_user_hats = true; get_user_hats = true;
	get_assigned_hats = true; get_room_hats = true; define_room_hat = true; destroy_room_hat = true;
};

local function store_as_0_1_0(room_jid, user_jid, user_hats)
	local room = mod_muc.get_room_from_jid(room_jid);
	if not room then return nil, "item-not-found", "no such room"; end
	room:set_affiliation_data(user_jid, "hats", user_hats);
	return true;
end

module:provides("http", {
	route = {
		["POST /*"] = function (event, name)
			local fn = callable[name] and hats[name] or name == "store_as_0.1.0" and store_as_0_1_0;
			if not fn then return 404; end
			local args = json.decode(event.request.body);
			if type(args) ~= "table" then return 400; end
			local ok, code, text = fn(table.unpack(args, 1, args.n or #args));
			event.response.headers.content_type = "application/json";
			return json.encode({ ok = ok; code = code; text = text });
		end;
	};
});

-- Another module's command on room JIDs, below mod_muc_hats_adhoc's handler, which must leave it alone.
module:hook("iq-set/bare/http://jabber.org/protocol/commands:command", function (event)
	local command = event.stanza.tags[1];
	if command.attr.node ~= "urn:example:hats-driver:ping" then return; end
	event.origin.send(st.reply(event.stanza):tag("command", { xmlns = "http://jabber.org/protocol/commands";
		node = command.attr.node; sessionid = "ping"; status = "completed" })
		:text_tag("note", "pong", { type = "info" }));
	return true;
end, -1);
