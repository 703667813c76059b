-- Test-only driver: calls mod_muc_hats_api the way another module does (module:depends) and exposes each call
-- over HTTP, so the integration suite can drive the API of a real Prosody. Never install this in production.
--
-- POST /test_hats_driver/<function> with a JSON array of arguments -> {"ok": result, "code": ..., "text": ...}

local json = require "util.json";

local hats = module:depends("muc_hats_api");
module:depends("http");

local callable = { add_user_hat = true; remove_user_hat = true; set_user_hats = true; get_user_hats = true };

module:provides("http", {
	route = {
		["POST /*"] = function (event, name)
			if not callable[name] then return 404; end
			local args = json.decode(event.request.body);
			if type(args) ~= "table" then return 400; end
			local ok, code, text = hats[name](table.unpack(args, 1, args.n or #args));
			event.response.headers.content_type = "application/json";
			return json.encode({ ok = ok; code = code; text = text });
		end;
	};
});
