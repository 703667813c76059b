-- mod_http_muc_kick: kick occupants out of rooms of this MUC component over HTTP.
--
-- POST /muc_kick with {"muc", "nickname" | "occupant_id" | "jid", "reason"?} and either the configured static
-- Authorization header or a scoped, expiring token (Authorization: Bearer v2....) that can be revoked. The native
-- library parses the body, verifies tokens and compares secrets in constant time; kick_credentials.lib.lua owns the
-- secrets, the token registry and the token commands; this file owns HTTP, rate limits, the room, logs and metrics.

local compat = module:require("prosody_native_compat");
local native = module:require("prosody_native");
local credentials = module:require("kick_credentials");
local cache = compat.require("util.cache");
local errors = compat.require("util.error");
local ip = compat.require("util.ip");
local jid = compat.require("util.jid");
local json = compat.require("util.json");
local resourceprep = compat.require("util.encodings").stringprep.resourceprep;
local monotonic = compat.require("util.time").monotonic;

-- prosodyctl loads this module globally (host "*") only to run module.command, so the token commands come first and
-- the host's options, dependencies and routes below must not be reached then.

local function print_usage(command)
	io.stderr:write("usage: prosodyctl mod_", module.name, " ", credentials.usage[command] or
		table.concat({ credentials.usage.create_token, credentials.usage.list_tokens, credentials.usage.revoke_token },
			"\n   or: prosodyctl mod_" .. module.name .. " "), "\n");
	return 2;
end

-- 0.12's util.argparse has no repeatable options, so the command line is read by hand: HOST, then options. `options`
-- has the command's options that take a value and its flags; a command without options takes every argument as it
-- is, since a token id may begin with "-" (one in 64 do: ids are base64url) and must not be taken for an option.
local function parse_args(args, options)
	local positional, opts = {}, { room = {} };
	local i = 1;
	while args[i] do
		local a = args[i];
		local name = options and a:match("^%-%-([%w-]+)$");
		name = name and name:gsub("-", "_");
		if name and options.values[name] then
			local value = args[i + 1];
			if not value then return nil, ("Expected a value after %s"):format(a); end
			if name == "room" then table.insert(opts.room, value); else opts[name] = value; end
			i = i + 2;
		elseif name and options.flags[name] then
			opts[name] = true;
			i = i + 1;
		elseif options and a:sub(1, 1) == "-" then
			return nil, ("Unknown option %s"):format(a);
		else
			table.insert(positional, a);
			i = i + 1;
		end
	end
	return positional, opts;
end

-- prosodyctl logs info to stdout, where the commands' results go (TOKEN=$(prosodyctl ...)); their audit lines go to
-- stderr instead, beside the other details.
local function log_to_stderr(_, level, message, ...)
	io.stderr:write(level, "\t", message:format(...), "\n");
end

-- Under prosodyctl, opens the host the commands act on: ctx for its options and storage, which logs to stderr.
local function offline_host(host)
	if not prosody.hosts[host] then
		return nil, ("Unknown host: %s"):format(host);
	end
	local ctx = module:context(host);
	if ctx:get_option_string("component_module") ~= "muc" then
		return nil, ("%s is not a MUC component"):format(host);
	end
	rawset(ctx, "log", log_to_stderr); -- a context writes through to the module; this must stay on ctx
	compat.require("core.storagemanager").initialize_host(host);
	return ctx;
end

local offline_commands = {
	create_token = function (ctx, positional, opts)
		if #positional > 0 then return nil, ("Unexpected argument %s"):format(positional[1]); end
		local keyring, err = credentials.load_keyring(ctx);
		if not keyring then
			return nil, err or ("http_muc_kick_token_secret is not set on %s"):format(ctx.host);
		end
		local token, description = credentials.create_token(ctx, keyring, opts, "prosodyctl");
		if not token then return nil, description; end
		print(token);
		return description;
	end;
	list_tokens = function (ctx, positional)
		if #positional > 0 then return nil, ("Unexpected argument %s"):format(positional[1]); end
		local keyring = credentials.load_keyring(ctx);
		if keyring then
			print("Keys: " .. table.concat(credentials.describe_keys(keyring, os.time()), "; "));
		end
		local lines = credentials.list_tokens(ctx, keyring, os.time());
		for _, line in ipairs(lines) do print(line); end
		return ("%d token(s) in the registry of %s"):format(#lines, ctx.host);
	end;
	revoke_token = function (ctx, positional)
		if #positional ~= 1 then return nil, "Name one TOKEN_ID"; end
		local record, err = credentials.revoke_token(ctx, positional[1], "prosodyctl");
		if not record then return nil, err; end
		-- The running server re-reads the deny list when it reloads its configuration; ask it to, as
		-- `prosodyctl reload` does.
		local reloaded, why = compat.require("util.prosodyctl").reload();
		if reloaded then
			print(("Revoked %s; the running server was told to reload and now refuses it"):format(positional[1]));
		elseif why == "not-running" then
			print(("Revoked %s; Prosody is not running and will refuse it when it starts"):format(positional[1]));
		else
			print(("Revoked %s, but the running server could not be told (%s): run prosodyctl reload"):format(
				positional[1], tostring(why)));
		end
		return "";
	end;
};

-- The options each command takes; the others take none.
local command_options = {
	create_token = { values = { room = true; expires_after = true; label = true }; flags = { service = true } };
};

--- prosodyctl mod_http_muc_kick create_token|list_tokens|revoke_token HOST ...: results on stdout (the token alone, the
-- list, what became of the revocation), details and audit lines on stderr.
function module.command(arg)
	local command = table.remove(arg, 1);
	local run = offline_commands[command];
	if not run then return print_usage(); end
	local positional, opts = parse_args(arg, command_options[command]);
	if not positional then
		io.stderr:write(opts, "\n");
		return print_usage(command);
	end
	local host = table.remove(positional, 1);
	if not host then return print_usage(command); end
	local ctx, err = offline_host(host);
	if not ctx then
		io.stderr:write(err, "\n");
		return 1;
	end
	local message, failure = run(ctx, positional, opts);
	if not message then
		io.stderr:write(failure, "\n");
		return 1;
	end
	if message ~= "" then io.stderr:write(message, "\n"); end
	return 0;
end

if module:get_host_type() == "global" then
	-- prosodyctl loads the module globally only to run module.command; everything below serves a MUC host.
	return;
end

compat.check_host(module, "muc");

local mod_muc = module:depends("muc");
module:depends("http");

-- Entries in each rate limiter's table of recent clients; the least recently seen is forgotten first.
local max_tracked_addresses = 10000;
local max_tracked_credentials = 1000;
-- Tokens that verified, by Authorization header, so that a busy integration's requests skip parsing and verifying.
local max_cached_tokens = 256;
-- Room JIDs of this host as prepared, by 'muc' as sent: an integration kicks in a few rooms, and preparing one takes
-- two stringprep calls.
local max_cached_rooms = 256;

-- HTTP status in `code`; the JSON answer is {"error": text, "code": name}, where text often comes from the native
-- library. Refusals travel as `nil, name, text` and are rendered from the template (no util.error object per request:
-- the route writes its own JSON, and a refusal should allocate little, since each costs Prosody's collector more).
local kick_errors = errors.init(module.name, {
	["unauthorized"] = { code = 401; type = "auth"; condition = "not-authorized";
		text = "Missing or wrong Authorization header" };
	["token-malformed"] = { code = 401; type = "auth"; condition = "not-authorized"; text = "Malformed token" };
	["token-invalid"] = { code = 401; type = "auth"; condition = "not-authorized"; text = "Invalid token" };
	["token-expired"] = { code = 401; type = "auth"; condition = "not-authorized"; text = "Token has expired" };
	["token-revoked"] = { code = 401; type = "auth"; condition = "not-authorized"; text = "Token has been revoked" };
	["bad-request"] = { code = 400; type = "modify"; condition = "bad-request"; text = "Malformed request" };
	["out-of-scope"] = { code = 403; type = "auth"; condition = "forbidden"; text = "Token does not cover this room" };
	["forbidden"] = { code = 403; type = "auth"; condition = "forbidden"; text = "Not allowed to kick this occupant" };
	["room-not-found"] = { code = 404; type = "cancel"; condition = "item-not-found"; text = "No such room" };
	["occupant-not-found"] = { code = 404; type = "cancel"; condition = "item-not-found"; text = "No such occupant" };
	["method-not-allowed"] = { code = 405; type = "cancel"; condition = "not-allowed";
		text = "Only POST is allowed here" };
	["length-required"] = { code = 411; type = "modify"; condition = "bad-request";
		text = "Send the body with a Content-Length header, not in chunks" };
	["too-large"] = { code = 413; type = "modify"; condition = "policy-violation"; text = "Body is too large" };
	["unsupported-media-type"] = { code = 415; type = "modify"; condition = "bad-request";
		text = "Body must be sent as Content-Type: application/json" };
	["rate-limited"] = { code = 429; type = "wait"; condition = "policy-violation"; text = "Too many requests" };
	["internal-error"] = { code = 500; type = "wait"; condition = "internal-server-error"; text = "Internal error" };
});

-- Refusals that matter to security, logged at info as `AUDIT kick-refused address=... code=...` (the fail2ban line);
-- the others are the client's mistakes, logged at debug (bodies refused before authentication are audited too).
local audited_refusals = {
	["unauthorized"] = true; ["token-malformed"] = true; ["token-invalid"] = true; ["token-expired"] = true;
	["token-revoked"] = true; ["out-of-scope"] = true; ["rate-limited"] = true;
};

local requests_metric = module:metric("counter", "requests", "",
	"HTTP kick requests by outcome: kicked, or the code of the error answered", { "outcome" });
-- One counter per outcome, found once.
local request_counters = setmetatable({}, { __index = function (counters, outcome)
	local counter = requests_metric:with_labels(outcome);
	counters[outcome] = counter;
	return counter;
end });

--- A rate limiter: limit(key) -> nil when the request may go on, or seconds to wait and whether this is the first
-- refusal since the key was last allowed (to log a flood once, not once per request). A token bucket per key, `max`
-- requests at once, refilled at max/window per second, kept as one number (the generic cell rate algorithm): the
-- time at which the key's bucket is full again, negated after a refusal. A number in the cache rather than an object
-- per key, since each object a request allocates costs Prosody's collector more than the arithmetic.
local function new_limiter(max, window, size)
	local buckets = cache.new(size);
	local interval = window / max; -- what one request adds to the time until the bucket is full
	local burst = window - interval; -- a bucket full again later than now + burst has no room for this request
	return function (key)
		local now = monotonic();
		local full_at = buckets:get(key);
		local refused = full_at and full_at < 0;
		if refused then full_at = -full_at; end
		if not full_at or full_at < now then full_at = now; end
		local early = full_at - now - burst;
		if early <= 0 then
			buckets:set(key, full_at + interval);
			return nil;
		end
		if not refused then buckets:set(key, -full_at); end
		return math.max(1, math.ceil(early)), not refused;
	end
end

-- What an address counts as for its rate limit: an IPv6 address by its /64 (what one subscriber usually holds, so
-- that rotating addresses inside it gains nothing), anything else as itself.
local ipv4_mapped_prefix = ("\0"):rep(10) .. "\255\255";
local function address_key(address)
	if not address or not address:find(":", 1, true) then
		return address or "?";
	end
	local parsed = ip.new_ip(address);
	if parsed and parsed.proto == "IPv6" and parsed.packed:sub(1, 12) ~= ipv4_mapped_prefix then
		return parsed.packed:sub(1, 8);
	end
	return address;
end

-- Every option, read at load and again on config-reloaded. Returns settings, or nil, message.
local function read_settings()
	local new = {
		allow_kicking_admins = module:get_option_boolean("http_muc_kick_allow_kicking_admins", false);
		max_body_size = compat.get_option_integer(module, "http_muc_kick_max_body_size", 4096, 256, 65536);
		max_reason_length = compat.get_option_integer(module, "http_muc_kick_max_reason_length", 1000, 1, 10000);
		occupant_ids = module:get_option_boolean("muc_occupant_id", true);
	};
	local window = compat.get_option_integer(module, "http_muc_kick_rate_limit_window", 60, 1, 86400);
	new.limit_address = new_limiter(compat.get_option_integer(module, "http_muc_kick_rate_limit_per_address", 60, 1,
		1000000000), window, max_tracked_addresses);
	new.limit_credential = new_limiter(compat.get_option_integer(module, "http_muc_kick_rate_limit_per_credential",
		60, 1, 1000000000), window, max_tracked_credentials);

	local header, err = credentials.read_secret(module, "http_muc_kick_authorization_header");
	if header == false then return nil, err; end
	if header then
		local ok, _, why = native.token.check_secret(header, "http_muc_kick_authorization_header");
		if not ok then return nil, why; end
	elseif module:get_option("http_muc_kick_authorization_header") ~= nil then
		module:log("warn", "http_muc_kick_authorization_header is empty: no static header is accepted");
	end
	local keyring, why = credentials.load_keyring(module);
	if keyring == false then return nil, why; end
	if not header and not keyring then
		return nil, "Neither http_muc_kick_token_secret nor http_muc_kick_authorization_header is set: refusing to serve "
			.. "kicks without credentials (set http_muc_kick_token_secret_file to use tokens; see the README)";
	end
	new.static_header, new.keyring = header, keyring;
	new.key_accept_until = {};
	for _, key in ipairs(keyring and keyring:key_ids() or {}) do
		new.key_accept_until[key.id] = key.accept_until or math.huge;
	end
	new.verified_tokens = cache.new(max_cached_tokens);
	-- 401 challenges name Basic (for a Basic static header) and Bearer, never text from the configured header.
	local realm = ("realm=%q"):format(module.host);
	local scheme = header and header:match("^(%a+) ");
	local is_basic = scheme ~= nil and scheme:lower() == "basic";
	local basic = is_basic and ("Basic " .. realm) or nil;
	local bearer = (keyring or not is_basic) and ("Bearer " .. realm) or nil;
	local function challenge(bearer_error)
		local bearer_challenge = bearer and bearer_error and (bearer .. bearer_error) or bearer;
		return basic and bearer_challenge and (basic .. ", " .. bearer_challenge) or basic or bearer_challenge;
	end
	-- Built once: WWW-Authenticate for a missing or wrong header, and for a bad token (RFC 6750's invalid_token).
	new.challenge, new.token_challenge = challenge(nil), challenge(', error="invalid_token"');
	return new;
end

local settings, settings_error = read_settings();
if not settings then
	error(settings_error, 0);
end
local revoked = credentials.load_revoked(module, os.time());

local function count(set)
	local n = 0;
	for _ in pairs(set) do n = n + 1; end
	return n;
end

local function audit_configuration()
	local keys = settings.keyring and credentials.describe_keys(settings.keyring, os.time());
	compat.audit(module, "kick-config-loaded", { static_header = settings.static_header and "on" or "off";
		keys = keys and table.concat(keys, "; ") or "none"; revoked = count(revoked) });
end
audit_configuration();

-- Re-reads the deny list; logs each token it now refuses (prosodyctl's own audit line went to the operator's terminal).
local function reload_revoked()
	local now_revoked = credentials.load_revoked(module, os.time());
	for id, record in pairs(now_revoked) do
		if not revoked[id] then
			compat.audit(module, "kick-token-revoked", { by = "registry"; credential = "token:" .. id; label = record.label });
		end
	end
	revoked = now_revoked;
end

-- `prosodyctl reload` fires reloading-config, then config-reloaded if the file parses. The deny list is re-read on the
-- first, so that a revocation from prosodyctl reaches the server even while the config file has an error.
module:hook_global("reloading-config", reload_revoked);
-- COMPAT 0.12: started with -D (as `prosodyctl start` does), it writes its pid file only on server-started, after
-- this module read the deny list at load: a revocation in between finds no server to signal ("not running"), so read
-- the list again once the pid file is there (mod_posix writes it at priority 0). 13 writes it before loading modules.
module:hook_global("server-started", reload_revoked, -10);

module:hook_global("config-reloaded", function ()
	local new_settings, why = read_settings();
	if not new_settings then
		module:log("error", "Configuration not reloaded, the previous one stays in force: %s", why);
		return;
	end
	settings = new_settings;
	audit_configuration();
end);

local function json_answer(response, status, body)
	response.status_code = status;
	response.headers.content_type = "application/json";
	return json.encode(body);
end

-- What JSON must escape in a string: quotes, backslashes and control characters.
local json_escapes = { ['"'] = '\\"'; ["\\"] = "\\\\" };
for byte = 0, 31 do json_escapes[string.char(byte)] = ("\\u%04x"):format(byte); end
json_escapes["\127"] = "\\u007f";

local function json_string(text)
	return (text:gsub('[%c"\\]', json_escapes));
end

-- The JSON answer to a refusal, as one new string: for a text without control characters (nearly all), Lua's %q
-- escapes exactly what JSON needs, quotes and backslashes. Each byte a request allocates costs Prosody's collector.
local function error_body(text, name)
	if not text:find("^%C*$") then
		return ('{"error":"%s","code":"%s"}'):format(json_string(text), name);
	end
	return ('{"error":%q,"code":"%s"}'):format(text, name);
end

local refusal_fields = {};

-- The answer to a refused request: `name` is an entry of kick_errors and `text` replaces its default text. Counts it,
-- and logs it: an audit line when it matters to security (`audit` overrides the default of audited_refusals), else a
-- debug line. `credential` is what the request proved it holds, if anything; `body`, the answer's JSON when the caller
-- wrote it.
local function refuse(event, name, text, credential, audit, body)
	local request, response = event.request, event.response;
	local template = kick_errors.registry[name];
	if name == "internal-error" or not template then
		module:log("error", "Internal error (%s): %s", name, text);
		name, template, text = "internal-error", kick_errors.registry["internal-error"], nil;
	end
	text = text or body or template.text;
	local status = template.code;
	if status == 401 then
		response.headers.www_authenticate = name == "unauthorized" and settings.challenge or settings.token_challenge;
	end
	request_counters[name]:add(1);
	if audit == nil then audit = audited_refusals[name]; end
	if audit then
		-- One table for every refusal's fields, filled and emptied here: a flood of refusals allocates no table each.
		local fields = refusal_fields;
		fields.address, fields.code, fields.status = request.ip, name, status;
		fields.credential, fields.label = credential and credential.id, credential and credential.label;
		compat.audit(module, "kick-refused", fields);
		fields.address, fields.code, fields.status, fields.credential, fields.label = nil, nil, nil, nil, nil;
	else
		module:log("debug", "Refused %s %s from %s: %d %s", request.method, request.path, request.ip, status, text);
	end
	response.status_code = status;
	response.headers.content_type = "application/json";
	return body or error_body(text, name);
end

local function refuse_rate_limited(event, wait, first_refusal, text, credential)
	event.response.headers.retry_after = ("%d"):format(wait);
	return refuse(event, "rate-limited", text:format(wait), credential, first_refusal);
end

local static_credential = { id = "static" };

-- What a verified token proves: { id = "token:<id>", label = ?, claims, valid_until }, or nil, name, text. Verified
-- tokens are kept by header until they expire or their key is retired, so that a busy integration's requests skip
-- parsing and verifying (the cache goes with the settings, so a reload empties it). A lookup compares whole strings
-- only after a match of Lua's seeded hash, which a guess cannot aim at.
local function verify_token(authorization, now)
	-- Where the token lies in the header: the native library reads it there, so no copy of it is made per request.
	local first, after = authorization:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +()%S+() *$");
	if not first then
		return nil, "unauthorized", "Wrong Authorization header";
	end
	local claims, code, text = settings.keyring:verify(authorization, now, first, after);
	if not claims then
		return nil, code, text;
	end
	local credential = { id = "token:" .. claims.nonce; label = claims.label; claims = claims;
		valid_until = math.min(claims.expires_at, settings.key_accept_until[claims.key_id] or 0) };
	settings.verified_tokens:set(authorization, credential);
	return credential;
end

-- Returns the credential, or nil, name, text, and for a genuine but revoked token its credential (for the log).
local function authenticate(authorization, now)
	if not authorization or authorization == "" then
		return nil, "unauthorized", "Missing Authorization header";
	end
	local credential = settings.verified_tokens:get(authorization);
	if not (credential and now < credential.valid_until) then
		if settings.static_header and native.token.secrets_equal(settings.static_header, authorization) then
			return static_credential;
		end
		if not settings.keyring then
			return nil, "unauthorized", "Wrong Authorization header";
		end
		local name, text;
		credential, name, text = verify_token(authorization, now);
		if not credential then
			return nil, name, text;
		end
	end
	if revoked[credential.claims.nonce] then
		return nil, "token-revoked", "Token has been revoked", credential;
	end
	return credential;
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
	if content_type == "application/json" then return true; end -- what clients send, read without a new string
	local media_type = content_type and content_type:match("^%s*([^;%s]+)");
	return media_type ~= nil and media_type:lower() == "application/json";
end

local prepared_rooms = cache.new(max_cached_rooms);

-- The 404 for a nickname nobody in the room has, which an integration may well send often (the occupant left before
-- the moderator's click): written at once as one new string when neither part needs JSON's escapes, else as any
-- refusal (the same bytes, which %q would give for these).
local function occupant_not_found_body(nickname, room_jid)
	if nickname:find('^[^%c"\\]*$') and room_jid:find('^[^%c"\\]*$') then
		return ('{"error":"Nobody with the nickname \\"%s\\" is in the room %s","code":"occupant-not-found"}')
			:format(nickname, room_jid);
	end
	return error_body(("Nobody with the nickname %q is in the room %s"):format(nickname, room_jid), "occupant-not-found");
end

-- A nickname as resourceprep prepares it. Resourceprep leaves printable ASCII (spaces included) as it is: it maps
-- and prohibits only control characters and non-ASCII ones, and refuses 1024 bytes or more; so that case, which is
-- nearly every nickname, skips the call and the new string it makes (spec/http_muc_kick_spec.lua checks both paths).
local function prepare_nickname(nickname)
	if #nickname < 1024 and nickname:find("^[ -~]+$") then
		return nickname;
	end
	return resourceprep(nickname);
end

-- The occupants a checked request names (`kind` is "nickname", "occupant-id" or "jid"): one by nickname, or every
-- occupant of one account by occupant id (XEP-0421) or real bare JID (an account may be in a room under several
-- nicknames). Returns room, occupants, or nil, name, text (or nil, name, nil, the answer's JSON).
local function find_occupants(credential, muc, kind, target)
	local room_jid = prepared_rooms:get(muc);
	if not room_jid then
		-- The parser let through room@host only, but stringprep makes "/" of a fullwidth solidus: the host is compared
		-- as prepared, else "room@host\u{FF0F}x" would ask mod_muc for room@host/x, and it restores the stored room over
		-- the live one.
		local node, host, resource = jid.prepped_split(muc);
		if not node or resource then
			return nil, "bad-request", "'muc' is not a valid room JID: it has characters JIDs may not contain";
		end
		room_jid = node .. "@" .. host;
		if host ~= module.host then
			return nil, "room-not-found", ("Room %s is not on this MUC service (%s)"):format(room_jid, module.host);
		end
		prepared_rooms:set(muc, room_jid);
	end
	if not is_in_scope(credential, room_jid) then
		return nil, "out-of-scope", ("This token does not cover the room %s"):format(room_jid);
	end
	local room = mod_muc.get_room_from_jid(room_jid);
	if not room then
		return nil, "room-not-found", ("Room %s does not exist"):format(room_jid);
	end
	if kind == "nickname" then
		-- What jid.prep(room_jid .. "/" .. target) gives, without preparing the room's JID a second time.
		local nickname = prepare_nickname(target);
		if not nickname then
			return nil, "bad-request", "'nickname' is not valid: it has characters nicknames may not contain";
		end
		local occupant = room:get_occupant_by_nick(room_jid .. "/" .. nickname);
		if not occupant then
			return nil, "occupant-not-found", nil, occupant_not_found_body(target, room_jid);
		end
		return room, { occupant };
	end
	local matches;
	if kind == "occupant-id" then
		if not settings.occupant_ids then
			return nil, "bad-request", "This MUC service does not give occupants ids (XEP-0421)";
		end
		matches = function (occupant) return room:get_occupant_id(occupant) == target; end
	else
		local bare_jid = jid.prep(target);
		if not bare_jid then
			return nil, "bad-request", "'jid' is not valid: it has characters JIDs may not contain";
		end
		matches = function (occupant) return occupant.bare_jid == bare_jid; end
	end
	local occupants = {};
	for _, occupant in room:each_occupant() do
		if matches(occupant) then table.insert(occupants, occupant); end
	end
	if not occupants[1] then
		return nil, "occupant-not-found", kind == "occupant-id"
			and ("Nobody with the occupant id %q is in the room %s"):format(target, room_jid)
			or ("Nobody with the JID %s is in the room %s"):format(target, room_jid);
	end
	table.sort(occupants, function (a, b) return a.nick < b.nick; end);
	return room, occupants;
end

local function nickname_of(occupant)
	return select(3, jid.split(occupant.nick));
end

local function refuse_unread_body(event)
	if event.request.headers.transfer_encoding then
		return refuse(event, "length-required", nil, nil, true);
	end
	return refuse(event, "too-large", ("Body is larger than %d bytes"):format(settings.max_body_size), nil, true);
end

local function handle_kick(event)
	local request, response = event.request, event.response;
	if request.kick_answered then
		-- A request answered before its body was read, handed over again once the body is in: 0.12 and 13 never do
		-- this, but the request was answered and the connection closed.
		response.persistent = false;
		response:done();
		return true;
	end
	-- Headers only (partial): the body is larger than http_max_content_size and Prosody has not read it. Chunked:
	-- Prosody 0.12 and 13 do not read chunked request bodies; they would take the chunks for the next request.
	-- Whatever the answer, close the connection after it, so that the rest is never read.
	local unread_body = request.partial or request.headers.transfer_encoding ~= nil;
	if unread_body then
		request.kick_answered = true;
		response.persistent = false;
		response.headers.connection = "close";
	end
	local wait, first_refusal = settings.limit_address(address_key(request.ip));
	if wait then
		return refuse_rate_limited(event, wait, first_refusal, "Too many requests from your address; retry after %d s");
	end
	if unread_body then return refuse_unread_body(event); end

	local credential, name, text, refused_credential = authenticate(request.headers.authorization, os.time());
	if not credential then return refuse(event, name, text, refused_credential); end
	wait, first_refusal = settings.limit_credential(credential.id);
	if wait then
		return refuse_rate_limited(event, wait, first_refusal, "Too many requests with this credential; retry after %d s",
			credential);
	end
	if not is_json(request.headers.content_type) then
		return refuse(event, "unsupported-media-type", nil, credential);
	end
	local muc, kind, target, reason = native.kick.parse(request.body or "", settings.max_body_size,
		settings.max_reason_length);
	if not muc then return refuse(event, kind, target, credential); end

	local room, occupants, find_error, find_error_body = find_occupants(credential, muc, kind, target);
	if not room then return refuse(event, occupants, find_error, credential, nil, find_error_body); end
	for _, occupant in ipairs(occupants) do
		local affiliation = room:get_affiliation(occupant.bare_jid);
		if (affiliation == "owner" or affiliation == "admin") and not settings.allow_kicking_admins then
			return refuse(event, "forbidden", ("%s is an %s of the room; owners and admins cannot be kicked")
				:format(nickname_of(occupant), affiliation), credential);
		end
	end

	local nicknames = {};
	for _, occupant in ipairs(occupants) do
		local nickname = nickname_of(occupant);
		local ok, err_type, condition = room:set_role(true, occupant.nick, "none", reason);
		if not ok then
			return refuse(event, "internal-error", ("Could not kick %s: %s %s"):format(occupant.nick, err_type, condition),
				credential);
		end
		table.insert(nicknames, nickname);
		compat.audit(module, "occupant-kicked", { address = request.ip; credential = credential.id;
			label = credential.label; room = room.jid; nickname = nickname; jid = occupant.bare_jid; reason = reason;
			target = kind });
		module:fire_event("http-muc-kick", { room = room; nickname = nickname; occupant_jid = occupant.nick;
			jid = occupant.bare_jid; reason = reason; credential = credential.id; label = credential.label;
			address = request.ip; target = kind });
	end
	request_counters.kicked:add(1);
	return json_answer(response, 200, { kicked = nicknames[1]; nicknames = nicknames; muc = room.jid });
end

local function method_not_allowed(event)
	event.response.headers.allow = "POST";
	return refuse(event, "method-not-allowed");
end

module:provides("http", {
	default_path = "/muc_kick";
	-- Without this, mod_http hides requests whose body it has not read (handle_kick answers those at once).
	streaming_uploads = true;
	route = {
		["POST"] = handle_kick;
		-- OPTIONS is left to mod_http (CORS preflight); HEAD falls back to GET.
		["GET"] = method_not_allowed;
		["PUT"] = method_not_allowed;
		["PATCH"] = method_not_allowed;
		["DELETE"] = method_not_allowed;
	};
});

-- Prosody 13 also manages tokens from the shell of the running server: prosodyctl shell muc_kick create_token HOST ...
-- (0.12: module.command above). A revocation there takes effect at once.
local function shell_command(name, desc, args, flags, handler)
	compat.add_shell_command(module, { section = "muc_kick"; section_desc = "Tokens for the HTTP kick API (mod_http_muc_kick)";
		name = name; desc = desc; args = args; host_selector = "host"; flags = flags; handler = handler });
end

shell_command("create_token",
	"Create a token that may kick occupants of some rooms (--room ROOM, repeatable) or of every room (--service)",
	{ { name = "host"; type = "string" } },
	{ array_params = { room = true }; value_params = { expires_after = true; label = true }; kv_params = { service = true } },
	function (self, _, opts)
		if not settings.keyring then
			return false, "http_muc_kick_token_secret is not set on " .. module.host;
		end
		local token, description = credentials.create_token(module, settings.keyring, opts or {}, "shell");
		if not token then return false, description; end
		self.session.print(token);
		return true, description;
	end);

shell_command("list_tokens", "List the tokens minted for this host and the ones revoked",
	{ { name = "host"; type = "string" } }, nil,
	function (self)
		if settings.keyring then
			self.session.print("Keys: " .. table.concat(credentials.describe_keys(settings.keyring, os.time()), "; "));
		end
		local lines = credentials.list_tokens(module, settings.keyring, os.time());
		for _, line in ipairs(lines) do self.session.print(line); end
		return true, ("%d token(s) in the registry of %s"):format(#lines, module.host);
	end);

shell_command("revoke_token", "Revoke a token by its id (the nonce list_tokens and the audit log show), at once",
	{ { name = "host"; type = "string" }; { name = "token_id"; type = "string" } }, nil,
	function (_, _, id)
		local record, err = credentials.revoke_token(module, id, "shell");
		if not record then return false, err; end
		revoked[id] = record;
		return true, ("Revoked %s"):format(id);
	end);
