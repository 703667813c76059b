-- mod_http_muc_kick: kick occupants out of rooms of this MUC component over HTTP.
--
-- POST /muc_kick with {"nickname", "muc", "reason"?} and either the configured static Authorization header or a
-- scoped, expiring token (Authorization: Bearer v1....). Tokens are stateless: they carry their claims, signed with
-- HMAC(http_muc_kick_token_secret, host), so rotating the secret revokes them all. The native library parses the
-- body, verifies tokens and compares secrets in constant time; this file owns HTTP, the room and the logs.

local compat = module:require("prosody_native_compat");
local native = module:require("prosody_native");
local errors = compat.require("util.error");
local jid = compat.require("util.jid");
local json = compat.require("util.json");
local random = compat.require("util.random");

-- Token minting comes first: prosodyctl loads this module globally (host "*") only to run module.command, so the
-- host's options, dependencies and routes below must not be reached then.
local min_secret_length = 32;
local default_token_lifetime = "30d";
local nonce_bytes = 16;

local duration_units = { [""] = 1; s = 1; m = 60; h = 3600; d = 86400; w = 7 * 86400 };

-- "3600", "90m", "12h", "30d", "2w" -> seconds
local function parse_duration(text)
	local n, unit = tostring(text):match("^%s*(%d+)%s*([smhdw]?)%s*$");
	if not n then return nil; end
	return math.tointeger(tonumber(n) * duration_units[unit]);
end

local function check_token_secret(secret)
	if #secret < min_secret_length then
		return nil, ("http_muc_kick_token_secret must be at least %d characters long (try: openssl rand -base64 33)")
			:format(min_secret_length);
	end
	return true;
end

-- Mints a token for `host` from the options of the command line or shell command: room = { "lobby", ... } or
-- service = true, expires_after = "30d", label = "ci-bot". Returns token, claims or nil, message.
local function create_token(host, opts)
	local host_config = module:context(host);
	if host_config:get_option_string("component_module") ~= "muc" then
		return nil, ("%s is not a MUC component"):format(host);
	end
	local secret = host_config:get_option_string("http_muc_kick_token_secret");
	if not secret then
		return nil, ("http_muc_kick_token_secret is not set on %s"):format(host);
	end
	local ok, why = check_token_secret(secret);
	if not ok then return nil, why; end

	local room_names = opts.room or {};
	local rooms;
	if opts.service then
		if #room_names > 0 then
			return nil, "Use either --service or --room, not both";
		end
	elseif #room_names == 0 then
		return nil, "Name the rooms the token may act on with --room ROOM, or use --service for every room";
	else
		rooms = {};
		for _, name in ipairs(room_names) do
			local room_jid = jid.prep(name:find("@", 1, true) and name or (name .. "@" .. host));
			if not room_jid or jid.host(room_jid) ~= host or not jid.node(room_jid) or jid.resource(room_jid) then
				return nil, ("Not a room of %s: %s"):format(host, name);
			end
			table.insert(rooms, room_jid);
		end
	end

	local lifetime = parse_duration(opts.expires_after or default_token_lifetime);
	if not lifetime then
		return nil, ("Cannot read the duration %q (examples: 3600, 90m, 12h, 30d, 2w)"):format(opts.expires_after);
	end
	local token, claims_or_code, text = native.token.mint(secret, host, rooms, os.time(), lifetime,
		random.bytes(nonce_bytes), opts.label);
	if not token then return nil, text; end
	return token, claims_or_code;
end

local function describe_token(claims)
	local scope = claims.scope == "service" and ("every room of " .. claims.host) or table.concat(claims.rooms, ", ");
	return ("Token %s%s for %s, valid until %s"):format(claims.nonce, claims.label and (" (" .. claims.label .. ")") or "",
		scope, os.date("!%Y-%m-%d %H:%M:%S UTC", claims.expires_at));
end

local create_token_usage = "create_token HOST (--room ROOM [--room ROOM]... | --service) "
	.. "[--expires-after DURATION] [--label TEXT]";

-- 0.12's util.argparse has no repeatable options, so the command line is read by hand.
local function parse_create_token_args(args)
	local host, opts = nil, { room = {} };
	local i = 1;
	while args[i] do
		local a = args[i];
		if a == "--room" or a == "--expires-after" or a == "--label" then
			local value = args[i + 1];
			if not value then return nil, ("Expected a value after %s"):format(a); end
			if a == "--room" then
				table.insert(opts.room, value);
			elseif a == "--expires-after" then
				opts.expires_after = value;
			else
				opts.label = value;
			end
			i = i + 2;
		elseif a == "--service" then
			opts.service = true;
			i = i + 1;
		elseif a:sub(1, 1) == "-" then
			return nil, ("Unknown option %s"):format(a);
		elseif host then
			return nil, ("Unexpected argument %s"):format(a);
		else
			host = a;
			i = i + 1;
		end
	end
	if not host then return nil, "Missing HOST"; end
	return host, opts;
end

--- prosodyctl mod_http_muc_kick create_token HOST ...: prints the token alone on stdout, details on stderr.
function module.command(arg)
	local command = table.remove(arg, 1);
	if command ~= "create_token" then
		print("usage: prosodyctl mod_" .. module.name .. " " .. create_token_usage);
		return 2;
	end
	local host, opts = parse_create_token_args(arg);
	if not host then
		io.stderr:write(opts, "\nusage: prosodyctl mod_", module.name, " ", create_token_usage, "\n");
		return 2;
	end
	if not prosody.hosts[host] then
		io.stderr:write("Unknown host: ", host, "\n");
		return 1;
	end
	local token, claims_or_err = create_token(host, opts);
	if not token then
		io.stderr:write(claims_or_err, "\n");
		return 1;
	end
	print(token);
	io.stderr:write(describe_token(claims_or_err), "\n");
	return 0;
end

if module:get_host_type() == "global" then
	-- prosodyctl loads the module globally only to run module.command; everything below serves a MUC host.
	return;
end

local authorization_header = module:get_option_string("http_muc_kick_authorization_header");
local token_secret = module:get_option_string("http_muc_kick_token_secret");
local allow_kicking_admins = module:get_option_boolean("http_muc_kick_allow_kicking_admins", false);
local max_body_size = compat.get_option_integer(module, "http_muc_kick_max_body_size", 4096, 256, 65536);
local max_reason_length = compat.get_option_integer(module, "http_muc_kick_max_reason_length", 1000, 1, 10000);

compat.check_host(module, "muc");
if not authorization_header then
	error("http_muc_kick_authorization_header is not set: refusing to serve kicks without authorization", 0);
end
if token_secret then
	local ok, why = check_token_secret(token_secret);
	if not ok then error(why, 0); end
end

local mod_muc = module:depends("muc");
module:depends("http");

-- HTTP status in `code`; the JSON answer is {"error": text}, where text often comes from the native library.
local kick_errors = errors.init(module.name, {
	["unauthorized"] = { code = 401; type = "auth"; condition = "not-authorized";
		text = "Missing or wrong Authorization header" };
	["token-malformed"] = { code = 401; type = "auth"; condition = "not-authorized"; text = "Malformed token" };
	["token-invalid"] = { code = 401; type = "auth"; condition = "not-authorized"; text = "Invalid token" };
	["token-expired"] = { code = 401; type = "auth"; condition = "not-authorized"; text = "Token has expired" };
	["bad-request"] = { code = 400; type = "modify"; condition = "bad-request"; text = "Malformed request" };
	["out-of-scope"] = { code = 403; type = "auth"; condition = "forbidden"; text = "Token does not cover this room" };
	["forbidden"] = { code = 403; type = "auth"; condition = "forbidden"; text = "Not allowed to kick this occupant" };
	["not-found"] = { code = 404; type = "cancel"; condition = "item-not-found"; text = "Not found" };
	["method-not-allowed"] = { code = 405; type = "cancel"; condition = "not-allowed";
		text = "Only POST is allowed here" };
	["too-large"] = { code = 413; type = "modify"; condition = "policy-violation"; text = "Body is too large" };
	["unsupported-media-type"] = { code = 415; type = "modify"; condition = "bad-request";
		text = "Body must be sent as Content-Type: application/json" };
	["internal-error"] = { code = 500; type = "wait"; condition = "internal-server-error"; text = "Internal error" };
});

-- Challenges for 401 answers: the scheme of the static header (never its value) and Bearer when tokens are on.
local www_authenticate;
do
	local realm = ("realm=%q"):format(module.host);
	local static_scheme = authorization_header:match("^(%S+)%s") or "Basic";
	local challenges = { static_scheme .. " " .. realm };
	if token_secret and static_scheme:lower() ~= "bearer" then
		table.insert(challenges, "Bearer " .. realm);
	end
	www_authenticate = table.concat(challenges, ", ");
end

-- An error from the registry, with a precise text where one is known (from the native library or here). Internal
-- errors keep their details in the log, not in the answer.
local function kick_error(name, text)
	if name == "internal-error" or not kick_errors.registry[name] then
		module:log("error", "Internal error (%s): %s", name, text);
		return kick_errors.new("internal-error");
	end
	local err = kick_errors.new(name);
	if text then err.text = text; end
	return err;
end

local function json_answer(response, status, body)
	response.status_code = status;
	response.headers.content_type = "application/json";
	return json.encode(body);
end

local function error_answer(event, err)
	local request, response = event.request, event.response;
	if err.code == 401 then
		response.headers.www_authenticate = www_authenticate;
	end
	module:log("debug", "Refused %s %s from %s: %d %s", request.method, request.path, request.ip, err.code, err.text);
	return json_answer(response, err.code, { error = err.text });
end

-- Returns the credential { name = "..." for logs, claims = token claims or nil }, or nil, error.
local function authenticate(authorization)
	if not authorization then
		return nil, kick_error("unauthorized", "Missing Authorization header");
	end
	if native.token.secrets_equal(authorization_header, authorization) then
		return { name = "static header" };
	end
	local bearer = token_secret and authorization:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +(%S+)%s*$");
	if not bearer then
		return nil, kick_error("unauthorized", "Wrong Authorization header");
	end
	local claims, code, text = native.token.verify(token_secret, module.host, bearer, os.time());
	if not claims then
		return nil, kick_error(code, text);
	end
	local name = ("token %s"):format(claims.nonce) .. (claims.label and (" (" .. claims.label .. ")") or "");
	return { name = name; claims = claims };
end

local function is_in_scope(credential, room_jid)
	local claims = credential.claims;
	if not claims or claims.scope == "service" then
		return true;
	end
	for _, room in ipairs(claims.rooms) do
		if room == room_jid then return true; end
	end
	return false;
end

local function is_json(content_type)
	local media_type = content_type and content_type:match("^%s*([^;%s]+)");
	return media_type ~= nil and media_type:lower() == "application/json";
end

-- Finds the occupant a checked request names. Returns room, occupant, or nil, error.
local function find_occupant(credential, request)
	local room_jid = jid.prep(request.muc);
	if not room_jid then
		return nil, kick_error("bad-request", "'muc' is not a valid room JID: it has characters JIDs may not contain");
	end
	if jid.host(room_jid) ~= module.host then
		return nil, kick_error("not-found", ("Room %s is not on this MUC service (%s)"):format(room_jid, module.host));
	end
	if not is_in_scope(credential, room_jid) then
		return nil, kick_error("out-of-scope", ("This token does not cover the room %s"):format(room_jid));
	end
	local room = mod_muc.get_room_from_jid(room_jid);
	if not room then
		return nil, kick_error("not-found", ("Room %s does not exist"):format(room_jid));
	end
	local occupant_jid = jid.prep(room_jid .. "/" .. request.nickname);
	if not occupant_jid then
		return nil, kick_error("bad-request", "'nickname' is not valid: it has characters nicknames may not contain");
	end
	local occupant = room:get_occupant_by_nick(occupant_jid);
	if not occupant then
		return nil, kick_error("not-found", ("Nobody with the nickname %q is in the room %s"):format(request.nickname, room_jid));
	end
	return room, occupant;
end

local function handle_kick(event)
	local request = event.request;
	local credential, auth_err = authenticate(request.headers.authorization);
	if not credential then return error_answer(event, auth_err); end
	if not is_json(request.headers.content_type) then
		return error_answer(event, kick_error("unsupported-media-type"));
	end
	local kick, code, text = native.kick.parse(request.body or "", max_body_size, max_reason_length);
	if not kick then return error_answer(event, kick_error(code, text)); end

	local room, occupant_or_err = find_occupant(credential, kick);
	if not room then return error_answer(event, occupant_or_err); end
	local occupant = occupant_or_err;
	local affiliation = room:get_affiliation(occupant.bare_jid);
	if (affiliation == "owner" or affiliation == "admin") and not allow_kicking_admins then
		return error_answer(event, kick_error("forbidden",
			("%s is an %s of the room; owners and admins cannot be kicked"):format(kick.nickname, affiliation)));
	end

	local ok, err_type, condition = room:set_role(true, occupant.nick, "none", kick.reason);
	if not ok then
		local why = ("Could not kick %s: %s %s"):format(occupant.nick, err_type, condition);
		return error_answer(event, kick_error("internal-error", why));
	end
	module:log("info", "Kicked %q from %s by HTTP request authorized with %s, reason: %q", kick.nickname, room.jid,
		credential.name, kick.reason or "");
	return json_answer(event.response, 200, { kicked = kick.nickname; muc = room.jid });
end

local function method_not_allowed(event)
	event.response.headers.allow = "POST";
	return error_answer(event, kick_error("method-not-allowed"));
end

module:provides("http", {
	default_path = "/muc_kick";
	route = {
		["POST"] = handle_kick;
		-- OPTIONS is left to mod_http (CORS preflight); HEAD falls back to GET.
		["GET"] = method_not_allowed;
		["PUT"] = method_not_allowed;
		["PATCH"] = method_not_allowed;
		["DELETE"] = method_not_allowed;
	};
});

-- Prosody 13 also mints from its shell: prosodyctl shell muc_kick create_token HOST ... (0.12: module.command above).
compat.add_shell_command(module, {
	section = "muc_kick";
	section_desc = "Tokens for the HTTP kick API (mod_http_muc_kick)";
	name = "create_token";
	desc = "Create a token that may kick occupants of some rooms (--room ROOM, repeatable) or of every room (--service)";
	args = { { name = "host"; type = "string" } };
	host_selector = "host";
	flags = {
		array_params = { room = true };
		value_params = { expires_after = true; label = true };
		kv_params = { service = true };
	};
	handler = function (self, host, opts)
		local token, claims_or_err = create_token(host, opts or {});
		if not token then return false, claims_or_err; end
		self.session.print(token);
		return true, describe_token(claims_or_err);
	end;
});
