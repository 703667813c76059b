-- Test plugin (global): revokes a token in mod_http_muc_kick's registry while the server starts, after the module
-- read its deny list and before Prosody 0.12 -D writes its pid file (server-started), which is when a real
-- `prosodyctl mod_http_muc_kick revoke_token` finds no server to signal. Options: test_kick_revoke_at_startup = {
-- host = MUC host, id = token id }.

local target = module:get_option("test_kick_revoke_at_startup");

module:hook_global("server-started", function ()
	local store = module:context(target.host):open_store("http_muc_kick_tokens");
	assert(store:set(target.id, { revoked_at = os.time(); expires_at = os.time() + 86400 }));
	module:log("info", "Revoked %s in the registry of %s", target.id, target.host);
end, 100);
