-- The token and kick sub-tables of the native library: return shapes, error codes and argument errors.
local native = require "prosody_native";

local secret = "an operator's secret that is long enough";
local old_secret = "Tr0ub4dor&3, an older secret of 40 chars";
local host = "muc.example.org";
local now = 1700000000;
local nonce = "0123456789abcdef";

local function keyring(keys)
	return assert(native.token.keyring(host, keys or { { secret = secret } }));
end

local function mint(rooms, ttl, label)
	return keyring():mint(rooms, now, ttl or 3600, nonce, label);
end

describe("token.keyring", function ()
	it("lists its key ids, the signing key first", function ()
		local keys = keyring({ { secret = secret }; { secret = old_secret; accept_until = now + 60 } }):key_ids();
		assert.equal(2, #keys);
		assert.matches("^[%w_-]+$", keys[1].id);
		assert.equal(8, #keys[1].id);
		assert.is_nil(keys[1].accept_until);
		assert.equal(now + 60, keys[2].accept_until);
	end);

	local refusals = {
		{ "no secret", {}, "at least one secret" };
		{ "a short secret", { { secret = "short" } }, "The token secret must be at least 32 characters" };
		{ "a patterned secret", { { secret = ("ab"):rep(20) } }, "too predictable" };
		{ "0.1.0's README example", { { secret = "hJ0w3bqKpB0yBw0m3e0nq4mJ8XfWkE4oVqf7s9RZQ2c1" } }, "example" };
		{ "a signing secret with an end date", { { secret = secret; accept_until = now } }, "cannot have an end date" };
		{ "a secret twice", { { secret = secret }; { secret = secret; accept_until = now } }, "same as another" };
	};
	for _, case in ipairs(refusals) do
		it("refuses " .. case[1] .. " without quoting it", function ()
			local made, code, text = native.token.keyring(host, case[2]);
			assert.is_nil(made);
			assert.equal("bad-request", code);
			assert.matches(case[3], text, 1, true);
			assert.is_nil(text:find("hJ0w3bq", 1, true));
			assert.is_nil(text:find("abab", 1, true));
		end);
	end

	it("raises on wrong argument types", function ()
		assert.has_error(function () native.token.keyring(host, "secret"); end);
		assert.has_error(function () native.token.keyring(host, { { secret = {} } }); end);
	end);
end);

describe("keyring:mint", function ()
	it("returns a v2 token and its claims", function ()
		local token, claims = mint({ "lobby@muc.example.org" }, 60, "ci-bot");
		assert.matches("^v2%.[%w_-]+%.[%w_-]+%.[%w_-]+$", token);
		assert.same({
			host = host; scope = "rooms"; rooms = { "lobby@muc.example.org" }; key_id = keyring():key_ids()[1].id;
			issued_at = now; expires_at = now + 60; nonce = "MDEyMzQ1Njc4OWFiY2RlZg"; label = "ci-bot";
		}, claims);
	end);

	it("makes a service-wide token when rooms is nil", function ()
		local _, claims = mint(nil);
		assert.equal("service", claims.scope);
		assert.is_nil(claims.rooms);
		assert.is_nil(claims.label);
	end);

	local bad_requests = {
		{ "a room on another host", { "lobby@elsewhere.example" }, 3600, "is not on muc.example.org" };
		{ "an empty room list", {}, 3600, "at least one room" };
		{ "a zero lifetime", nil, 0, "lifetime" };
		{ "a lifetime over the maximum", nil, native.token.max_ttl + 1, "lifetime" };
	};
	for _, case in ipairs(bad_requests) do
		it("refuses " .. case[1], function ()
			local token, code, text = mint(case[2], case[3]);
			assert.is_nil(token);
			assert.equal("bad-request", code);
			assert.matches(case[4], text, 1, true);
		end);
	end

	it("refuses a short nonce", function ()
		local token, code = keyring():mint(nil, now, 60, "short");
		assert.is_nil(token);
		assert.equal("bad-request", code);
	end);

	it("raises on wrong argument types", function ()
		assert.has_error(function () keyring():mint("lobby", now, 60, nonce); end);
		assert.has_error(function () keyring():mint(nil, "soon", 60, nonce); end);
	end);
end);

describe("keyring:verify", function ()
	it("returns the claims of a genuine token with its key id", function ()
		local token, minted = mint({ "lobby@muc.example.org" }, 3600, "ci-bot");
		assert.same(minted, keyring():verify(token, now + 10));
	end);

	it("accepts a previous key's tokens until its end date", function ()
		local old_token = keyring({ { secret = old_secret } }):mint(nil, now, 3600, nonce);
		local rolled = keyring({ { secret = secret }; { secret = old_secret; accept_until = now + 60 } });
		assert.is_table(rolled:verify(old_token, now + 59));
		local claims, code, text = rolled:verify(old_token, now + 60);
		assert.is_nil(claims);
		assert.equal("token-invalid", code);
		assert.matches("no longer accepts", text, 1, true);
	end);

	local refusals = {
		{ "an expired token", function (t) return keyring(), t, now + 3600; end, "token-expired" };
		{ "a token after the secret was rotated", function (t) return keyring({ { secret = old_secret } }), t, now; end,
			"token-invalid" };
		{ "a token of another host", function (t)
			return assert(native.token.keyring("other.example.org", { { secret = secret } })), t, now;
		end, "token-invalid" };
		{ "a tampered token", function (t) return keyring(), t:gsub("%.(.)([^.]*)$", ".A%2", 1), now; end, "token-invalid" };
		{ "a v1 token of 0.1.0", function (t) return keyring(), "v1" .. t:sub(3), now; end, "token-malformed" };
		{ "bad base64", function (t) return keyring(), t .. "=", now; end, "token-malformed" };
		{ "an oversize token", function () return keyring(), ("a"):rep(5000), now; end, "token-malformed" };
		{ "a token that is not a token", function () return keyring(), "Basic dXNlcjpwYXNz", now; end, "token-malformed" };
	};
	for _, case in ipairs(refusals) do
		it("refuses " .. case[1] .. " with " .. case[3], function ()
			local token = mint(nil);
			local ring, candidate, at = case[2](token);
			local claims, code, text = ring:verify(candidate, at);
			assert.is_nil(claims);
			assert.equal(case[3], code);
			assert.is_string(text);
			assert.is_nil(text:find(secret, 1, true));
		end);
	end

	it("raises on wrong argument types", function ()
		assert.has_error(function () keyring():verify(nil, now); end);
		local token = keyring():mint(nil, now, 60, "0123456789abcdef");
		local header = "Bearer " .. token .. "  ";
		assert.same(keyring():verify(token, now), keyring():verify(header, now, 8, 8 + #token));
		assert.is_nil(keyring():verify(header, now, 8, 7 + #token));
		for _, bounds in ipairs({ { 0, 5 }; { 8, 7 }; { 8, #header + 2 }; { 8 } }) do
			assert.has_error(function () keyring():verify(header, now, bounds[1], bounds[2]); end);
		end
		assert.has_error(function () keyring():verify("v2.a.b.c", nil); end);
	end);
end);

describe("token.check_secret", function ()
	it("accepts a random secret and refuses a weak one, naming the option but not the value", function ()
		assert.is_true(native.token.check_secret("q2F0c8rVb1yL6mP+Hn3WxZkT9s4eJdGaUo5iRB7vNQ8M", "x"));
		local ok, code, text = native.token.check_secret("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "the header");
		assert.is_nil(ok);
		assert.equal("bad-request", code);
		assert.matches("^the header must be at least 32 characters", text);
	end);

	-- Every secret and header the module README shows must be refused, so that copying the example cannot hand out a
	-- public credential.
	it("refuses every example secret of the module README", function ()
		local f = assert(io.open("lua/mod_http_muc_kick/README.markdown"));
		local readme = f:read("a");
		f:close();
		local examples = 0;
		for option, value in readme:gmatch('(http_muc_kick_[%w_]+) *= *"([^"]*)"') do
			if option == "http_muc_kick_token_secret" or option == "http_muc_kick_authorization_header" then
				examples = examples + 1;
				assert.is_nil(native.token.check_secret(value, option), value);
			end
		end
		assert.is_true(examples >= 2);
	end);
end);

describe("token.check_id and token.parse_utc_time", function ()
	it("tells token ids from other strings", function ()
		assert.is_true(native.token.check_id("MDEyMzQ1Njc4OWFiY2RlZg"));
		for _, bad in ipairs({ "", "AAAA", "not an id!", ("A"):rep(200) }) do
			local ok, code = native.token.check_id(bad);
			assert.is_nil(ok);
			assert.equal("bad-request", code);
		end
	end);

	it("reads UTC dates and times", function ()
		assert.equal(1751328000, native.token.parse_utc_time("2025-07-01"));
		assert.equal(1751373045, native.token.parse_utc_time("2025-07-01T12:30:45Z"));
		local t, code, text = native.token.parse_utc_time("1 July");
		assert.is_nil(t);
		assert.equal("bad-request", code);
		assert.matches("YYYY-MM-DD", text, 1, true);
	end);
end);

describe("token.secrets_equal", function ()
	it("is true only for equal strings", function ()
		assert.is_true(native.token.secrets_equal("Basic abc", "Basic abc"));
		assert.is_false(native.token.secrets_equal("Basic abc", "Basic abd"));
		assert.is_false(native.token.secrets_equal("Basic abc", "Basic abc "));
		assert.is_false(native.token.secrets_equal("Basic abc", ""));
	end);

	it("compares bytes, including embedded zeros", function ()
		assert.is_false(native.token.secrets_equal("a\0b", "a\0c"));
		assert.is_true(native.token.secrets_equal("a\0b", "a\0b"));
	end);
end);

describe("kick.parse", function ()
	it("returns the room, how the occupant is named, the name and the reason", function ()
		assert.same({ "lobby@muc.example.org", "nickname", "Bob", "Spam" },
			{ native.kick.parse('{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"Spam"}', 4096, 100) });
	end);

	it("names the occupant by exact nickname, occupant id or real JID", function ()
		assert.same({ "l@m.example", "nickname", " Spammer " },
			{ native.kick.parse('{"nickname":" Spammer ","muc":"l@m.example"}', 4096, 100) });
		assert.same({ "l@m.example", "occupant-id", "abc+/=" },
			{ native.kick.parse('{"occupant_id":"abc+/=","muc":"l@m.example"}', 4096, 100) });
		assert.same({ "l@m.example", "jid", "bob@example.org" },
			{ native.kick.parse('{"jid":"bob@example.org","muc":"l@m.example"}', 4096, 100) });
	end);

	local refusals = {
		{ "not JSON", "nickname=Bob", "bad-request", "Body is not valid JSON" };
		{ "not an object", "[]", "bad-request", "Body must be a JSON object" };
		{ "no nickname", '{"muc":"lobby@muc.example.org"}', "bad-request", "Missing 'nickname'" };
		{ "two targets", '{"nickname":"Bob","jid":"b@e.example","muc":"l@m.example"}', "bad-request", "one way only" };
		{ "a repeated field", '{"nickname":"Eve","nickname":"Bob","muc":"l@m.example"}', "bad-request",
			"Field 'nickname' appears more than once" };
		{ "a wrong type", '{"nickname":1,"muc":"lobby@muc.example.org"}', "bad-request", "'nickname' must be a string" };
		{ "a malformed room", '{"nickname":"Bob","muc":"lobby@"}', "bad-request", "'muc' is not a valid room JID" };
		{ "a long reason", '{"nickname":"Bob","muc":"l@m.example","reason":"' .. ("x"):rep(101) .. '"}', "bad-request",
			"Reason is longer than 100 characters" };
		{ "a large body", ("{}"):rep(3000), "too-large", "Body is larger than 4096 bytes" };
	};
	for _, case in ipairs(refusals) do
		it("refuses a body with " .. case[1], function ()
			local request, code, text = native.kick.parse(case[2], 4096, 100);
			assert.is_nil(request);
			assert.equal(case[3], code);
			assert.matches(case[4], text, 1, true);
		end);
	end

	it("raises on wrong argument types", function ()
		assert.has_error(function () native.kick.parse(nil, 4096, 100); end);
		assert.has_error(function () native.kick.parse("{}", "big", 100); end);
	end);
end);
