-- Test-only storage driver: Prosody's internal storage, except that walking the users of a keyval store logs each
-- name it hands out and whether Prosody's event loop turned since the previous one (a timer of 0 s set after each
-- name has run by then), and that the walk stops at its `test_watched_hold_at`-th name (0: never) until a client pings
-- the host, as storage that waits on the network would. Map a store to it with `storage = { store = "test_watched" }`.
-- Never install this in production.

local ok, async = pcall(require, "prosody.util.async");
local storagemanager;
if ok then
	storagemanager = require "prosody.core.storagemanager";
else -- Prosody 0.12
	async = require "util.async";
	storagemanager = require "core.storagemanager";
end

local internal = assert(storagemanager.load_driver(module.host, "internal"));
local hold_at = module:get_option_number("test_watched_hold_at", 0);
local listed, turned, release = 0, false, nil;

local function hand_out(name)
	listed = listed + 1;
	module:log("info", "Listed name %d (loop turned since the previous: %s)", listed, turned and "yes" or "no");
	if listed == hold_at then
		if async.ready() then
			module:log("info", "Holding the listing until a ping");
			local wait, done = async.waiter();
			release = done;
			wait();
		else
			module:log("info", "Cannot hold the listing: not in an async runner");
		end
	end
	turned = false;
	module:add_timer(0, function ()
		turned = true;
	end);
	return name;
end

-- Runs before mod_ping answers; the walk goes on at the next tick, after the reply.
module:hook("iq-get/host/urn:xmpp:ping:ping", function ()
	if release then
		module:log("info", "Ping received: releasing the listing");
		module:add_timer(0, release);
		release = nil;
	end
end, 1);

local driver = {};

function driver:open(store, typ) -- luacheck: ignore 212/self
	local opened, err = internal:open(store, typ);
	if not opened or (typ or "keyval") ~= "keyval" then
		return opened, err;
	end
	return setmetatable({
		users = function ()
			local iterate, state, name = opened:users();
			return function ()
				name = iterate(state, name);
				if name ~= nil then
					return hand_out(name);
				end
			end;
		end;
	}, { __index = opened });
end

function driver:purge(user) -- luacheck: ignore 212/self
	return internal:purge(user);
end

module:provides("storage", driver);
