-- Test-only (Prosody 13): a session whose resource starts with "reduced" gets the role `test_reduced_role`
-- (prosody:registered by default) instead of its account's, as a token login (OAuth2, SASL2 with FAST) with a
-- narrower grant would give it; Prosody's core alone offers no such login for c2s. Never install this in production.

local sessionlib = require "prosody.util.session";
local usermanager = require "prosody.core.usermanager";

local role_name = module:get_option_string("test_reduced_role", "prosody:registered");

module:hook("resource-bind", function (event)
	local session = event.session;
	if session.resource and session.resource:match("^reduced") then
		sessionlib.set_role(session, usermanager.get_role_by_name(role_name, module.host));
		module:log("debug", "Session %s now has the role %s", session.full_jid, role_name);
	end
end);
