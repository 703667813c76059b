-- Credentials of mod_http_muc_kick: the secrets a host's options name (inline, from a file, or Prosody 13's
-- Credential()), the token keyring made from them, and the token registry in module storage (what was minted, and
-- the deny list of revoked token ids), with the commands that manage tokens from prosodyctl and Prosody 13's shell.
--
-- `ctx` below is the module on a MUC host, or, under prosodyctl, module:context(host) of the global module.

local compat = module:require("prosody_native_compat");
local native = module:require("prosody_native");
local jid = compat.require("util.jid");
local paths = compat.require("util.paths");
local random = compat.require("util.random");

local credentials = {};

local default_token_lifetime = "30d";
local nonce_bytes = 16;
local registry_store = "http_muc_kick_tokens";

local duration_units = { [""] = 1; s = 1; m = 60; h = 3600; d = 86400; w = 7 * 86400 };

-- "3600", "90m", "12h", "30d", "2w" -> seconds
local function parse_duration(text)
	local n, unit = tostring(text):match("^%s*(%d+)%s*([smhdw]?)%s*$");
	if not n then return nil; end
	return math.tointeger(tonumber(n) * duration_units[unit]);
end

local function trim(s)
	return (s:gsub("^%s+", ""):gsub("%s+$", ""));
end

local function utc(seconds)
	return os.date("!%Y-%m-%d %H:%M UTC", seconds);
end

local function read_file(path)
	local f, err = io.open(path, "rb");
	if not f then return nil, err; end
	local content = f:read("a");
	f:close();
	if not content then return nil, "cannot read it"; end
	return content;
end

-- A secret given inline, as Prosody 13's Credential("name") (which reads $CREDENTIALS_DIRECTORY/name), or as a path in
-- `<option>_file` (relative to the config file's folder). Surrounding whitespace, such as a file's final newline, is
-- dropped. Returns the secret (nil or "" when unset), or false, message.
local function read_secret_value(value, file, what)
	if value ~= nil and file ~= nil then
		return false, ("Set %s or %s_file, not both"):format(what, what);
	end
	if file ~= nil then
		if type(file) ~= "string" then
			return false, ("%s_file must be a path"):format(what);
		end
		local path = paths.resolve_relative_path(prosody.paths.config, file);
		local content, err = read_file(path);
		if not content then
			return false, ("Cannot read %s_file %s: %s"):format(what, path, err);
		end
		return trim(content);
	end
	if value == nil then return nil; end
	if type(value) ~= "string" then
		-- Prosody 13's Credential() without $CREDENTIALS_DIRECTORY (prosodyctl outside systemd) gives an error object.
		local text = type(value) == "table" and value.text;
		return false, text and ("%s: %s"):format(what, text) or ("%s must be a string"):format(what);
	end
	return trim(value);
end

--- The secret of option `name` (or `name_file`) on ctx's host: secret, or nil when unset or blank, or false, message.
function credentials.read_secret(ctx, name)
	local secret, err = read_secret_value(ctx:get_option(name), ctx:get_option(name .. "_file"), name);
	if secret == "" then return nil; end
	return secret, err;
end

local previous_fields = { secret = true; file = true; accept_until = true };

-- http_muc_kick_previous_token_secrets = { { secret = "..." or file = "...", accept_until = "2025-07-01" }, ... }
local function read_previous_secrets(ctx)
	local name = "http_muc_kick_previous_token_secrets";
	local entries = ctx:get_option(name, {});
	if type(entries) ~= "table" then
		return nil, ("%s must be a list of { secret = ... or file = ..., accept_until = \"YYYY-MM-DD\" }"):format(name);
	end
	local keys = {};
	for i, entry in ipairs(entries) do
		local what = ("%s[%d]"):format(name, i);
		if type(entry) ~= "table" then
			return nil, ("%s must be a table { secret = ... or file = ..., accept_until = ... }"):format(what);
		end
		for field in pairs(entry) do
			if not previous_fields[field] then
				return nil, ("%s has an unknown field %q (expected secret or file, and accept_until)"):format(what, tostring(field));
			end
		end
		local secret, err = read_secret_value(entry.secret, entry.file, what .. ".secret");
		if not secret or secret == "" then
			return nil, err or ("%s has no secret"):format(what);
		end
		if type(entry.accept_until) ~= "string" then
			return nil, ("%s needs accept_until, the UTC date from which its tokens are refused (\"2025-07-01\")"):format(what);
		end
		local accept_until, _, why = native.token.parse_utc_time(entry.accept_until);
		if not accept_until then
			return nil, ("%s.accept_until: %s"):format(what, why);
		end
		keys[i] = { secret = secret; accept_until = accept_until };
	end
	return keys;
end

--- The token keyring of ctx's host, made from http_muc_kick_token_secret(_file) and
-- http_muc_kick_previous_token_secrets: keyring, or nil when tokens are not configured, or false, message.
function credentials.load_keyring(ctx)
	local secret, err = credentials.read_secret(ctx, "http_muc_kick_token_secret");
	if secret == false then return false, err; end
	local previous, why = read_previous_secrets(ctx);
	if not previous then return false, why; end
	if not secret then
		if #previous > 0 then
			return false, "http_muc_kick_previous_token_secrets needs http_muc_kick_token_secret (or _file) to sign new tokens";
		end
		return nil;
	end
	local keys = { { secret = secret } };
	for _, key in ipairs(previous) do
		table.insert(keys, key);
	end
	local keyring, _, text = native.token.keyring(ctx.host, keys);
	if not keyring then return false, text; end
	return keyring;
end

--- One line per key: "Ab12Cd34 (signs new tokens)", "Xy98Zw76 (accepted until 2025-07-01 00:00 UTC)".
function credentials.describe_keys(keyring, now)
	local lines = {};
	for i, key in ipairs(keyring:key_ids()) do
		local state;
		if i == 1 then
			state = "signs new tokens";
		elseif key.accept_until > now then
			state = "accepted until " .. utc(key.accept_until);
		else
			state = "retired on " .. utc(key.accept_until) .. ": remove it from the configuration";
		end
		table.insert(lines, ("%s (%s)"):format(key.id, state));
	end
	return lines;
end

-- The token registry: a keyval store keyed by token id (nonce). A minted token's record has its label, scope, key id
-- and times; a revoked one also revoked_at. Records outlive their token by nothing: once expired, a token is refused
-- anyway, and load_revoked removes the record.
local function registry(ctx)
	return ctx:open_store(registry_store);
end

--- Token ids revoked and not yet expired on ctx's host, as a map { [id] = record }; drops records of expired tokens.
function credentials.load_revoked(ctx, now)
	local store = registry(ctx);
	local revoked, expired = {}, {};
	for id in store:users() do
		local record = store:get(id);
		if record and record.expires_at and record.expires_at <= now then
			table.insert(expired, id);
		elseif record and record.revoked_at then
			revoked[id] = record;
		end
	end
	for _, id in ipairs(expired) do
		store:set(id, nil);
	end
	return revoked;
end

local function scope_text(record)
	if record.scope == "service" then
		return "every room";
	end
	return table.concat(record.rooms or {}, ", ");
end

local function describe_token(claims)
	return ("Token %s%s for %s, signed with key %s, valid until %s"):format(claims.nonce,
		claims.label and (" (" .. claims.label .. ")") or "", scope_text(claims), claims.key_id, utc(claims.expires_at));
end

--- Mints a token for ctx's host with `keyring` from the options of the command line or shell command: room = { "lobby",
-- ... } or service = true, expires_after = "30d", label = "ci-bot"; records it and logs one audit line. `by` says who
-- asked ("prosodyctl", "shell"). Returns token, description, claims or nil, message.
function credentials.create_token(ctx, keyring, opts, by)
	local host = ctx.host;
	local room_names = opts.room or {};
	if opts.service ~= nil and type(opts.service) ~= "boolean" then
		-- Prosody 13's shell turns --service=false into the string "false", which must not mean yes.
		return nil, "--service takes no value: give --service alone for every room, or --room ROOM";
	end
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
		return nil, ("Cannot read the duration %q (examples: 3600, 90m, 12h, 30d, 2w)"):format(tostring(opts.expires_after));
	end
	local token, claims, text = keyring:mint(rooms, os.time(), lifetime, random.bytes(nonce_bytes), opts.label);
	if not token then return nil, text; end
	local ok, err = registry(ctx):set(claims.nonce, {
		label = claims.label; scope = claims.scope; rooms = claims.rooms; key_id = claims.key_id;
		issued_at = claims.issued_at; expires_at = claims.expires_at;
	});
	if not ok then
		return nil, ("Could not record the token, so none was issued: %s"):format(tostring(err));
	end
	compat.audit(ctx, "kick-token-created", { by = by; credential = "token:" .. claims.nonce; label = claims.label;
		scope = scope_text(claims); key = claims.key_id; expires = os.date("!%Y-%m-%dT%H:%M:%SZ", claims.expires_at) });
	return token, describe_token(claims), claims;
end

--- Revokes the token `id` on ctx's host: its id joins the deny list, even for a token this registry never saw (minted
-- elsewhere, or by hand). Returns the record, or nil, message.
function credentials.revoke_token(ctx, id, by)
	local ok, _, why = native.token.check_id(tostring(id or ""));
	if not ok then
		return nil, ("Not a token id: %s (the id is the nonce that list_tokens and the audit log show)"):format(why);
	end
	local store = registry(ctx);
	local record, err = store:get(id);
	if err then return nil, ("Could not read the token registry: %s"):format(tostring(err)); end
	local now = os.time();
	record = record or { expires_at = now + native.token.max_ttl };
	if record.revoked_at then
		return nil, ("Token %s was already revoked on %s"):format(id, utc(record.revoked_at));
	end
	record.revoked_at = now;
	local saved, save_err = store:set(id, record);
	if not saved then return nil, ("Could not record the revocation: %s"):format(tostring(save_err)); end
	compat.audit(ctx, "kick-token-revoked", { by = by; credential = "token:" .. id; label = record.label });
	return record;
end

--- The registry as lines for people, newest first: id, state, label, scope, key and expiry.
function credentials.list_tokens(ctx, keyring, now)
	local store = registry(ctx);
	local records = {};
	for id in store:users() do
		local record = store:get(id);
		if record then
			record.id = id;
			table.insert(records, record);
		end
	end
	table.sort(records, function (a, b)
		return (a.issued_at or a.revoked_at or 0) > (b.issued_at or b.revoked_at or 0);
	end);
	local key_states = {};
	for i, key in ipairs(keyring and keyring:key_ids() or {}) do
		key_states[key.id] = i == 1 and "current key" or ("previous key, accepted until " .. utc(key.accept_until));
	end
	local lines = {};
	for _, r in ipairs(records) do
		local state = r.revoked_at and "revoked" or (r.expires_at <= now and "expired") or "active";
		if r.issued_at then
			table.insert(lines, ("%s  %s  %s  %s  key %s (%s)  until %s"):format(r.id, state, r.label or "-", scope_text(r),
				r.key_id, key_states[r.key_id] or "a key this server no longer holds", utc(r.expires_at)));
		else
			table.insert(lines, ("%s  revoked  (not minted here)  forgotten after %s"):format(r.id, utc(r.expires_at)));
		end
	end
	return lines;
end

credentials.usage = {
	create_token = "create_token HOST (--room ROOM [--room ROOM]... | --service) [--expires-after DURATION] [--label TEXT]";
	list_tokens = "list_tokens HOST";
	revoke_token = "revoke_token HOST TOKEN_ID";
};

return credentials;
