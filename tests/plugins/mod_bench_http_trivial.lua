-- Bench-only: the smallest useful Prosody HTTP route, POST /bench_http_trivial answering a fixed JSON body. It is the
-- peer scripts/bench_kick.py measures mod_http_muc_kick against, on the same server and HTTP stack. Never load this in
-- production.

module:depends("http");

module:provides("http", {
	route = {
		["POST"] = function (event)
			event.response.headers.content_type = "application/json";
			return '{"ok":true}';
		end;
	};
});
