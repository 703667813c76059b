-- Bench-only: the smallest useful Prosody HTTP routes, the peers scripts/bench_kick.py measures mod_http_muc_kick
-- against, on the same server and HTTP stack. Never load this in production.
--   POST /bench_http_trivial          a fixed JSON answer
--   POST /bench_http_trivial/refused  what a refused credential must get at least: the kick module's 401 (RFC 6750's
--                                     WWW-Authenticate, a JSON body with its code) and one audit line at info, the
--                                     line fail2ban reads, logged with module:log as any module would

module:depends("http");

local challenge = ('Bearer realm=%q, error="invalid_token"'):format(module.host);

module:provides("http", {
	route = {
		["POST"] = function (event)
			event.response.headers.content_type = "application/json";
			return '{"ok":true}';
		end;
		["POST /refused"] = function (event)
			local response = event.response;
			response.status_code = 401;
			response.headers.www_authenticate = challenge;
			response.headers.content_type = "application/json";
			module:log("info", "AUDIT kick-refused address=%s code=token-invalid status=401", event.request.ip);
			return '{"error":"Token was signed with an unknown key","code":"token-invalid"}';
		end;
	};
});
