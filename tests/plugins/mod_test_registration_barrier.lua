-- Test-only: holds in-band registrations the way asynchronous storage or an authentication backend that waits on
-- the network would, until `test_registration_barrier` registrations (2 by default; refused ones count) have
-- reached this point, then lets all of them go on. Two connections that register with one token are then both
-- inside the registration at once. Never install this in production.

local ok, async = pcall(require, "prosody.util.async");
if not ok then
	async = require "util.async"; -- Prosody 0.12
end

local expected = module:get_option_number("test_registration_barrier", 2);
local arrived, waiting = 0, {};

-- After every other user-registering handler (mod_invites_adhoc claims the token at 10, mod_invites_register
-- checks it at 0), before mod_register_ibr creates the account.
module:hook("user-registering", function (event)
	arrived = arrived + 1;
	module:log("debug", "Registration %d of %d at the barrier (%s)", arrived, expected,
		event.allowed == false and "refused" or "held");
	if arrived >= expected then
		for _, done in ipairs(waiting) do
			done();
		end
		waiting = {};
		return;
	end
	if event.allowed == false then
		return;
	end
	local wait, done = async.waiter();
	table.insert(waiting, done);
	wait();
end, -100);
