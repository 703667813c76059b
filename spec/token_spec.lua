-- The token and kick sub-tables of the native library: return shapes, error codes and argument errors.
local native = require "prosody_native";

local secret = "an operator's secret that is long enough";
local host = "muc.example.org";
local now = 1700000000;
local nonce = "0123456789abcdef";

local function mint(rooms, ttl, label)
	return native.token.mint(secret, host, rooms, now, ttl or 3600, nonce, label);
end

describe("token.mint", function ()
	it("returns a v1 token and its claims", function ()
		local token, claims = mint({ "lobby@muc.example.org" }, 60, "ci-bot");
		assert.matches("^v1%.[%w_-]+%.[%w_-]+$", token);
		assert.same({
			host = host; scope = "rooms"; rooms = { "lobby@muc.example.org" };
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
		local token, code = native.token.mint(secret, host, nil, now, 60, "short");
		assert.is_nil(token);
		assert.equal("bad-request", code);
	end);

	it("raises on wrong argument types", function ()
		assert.has_error(function () native.token.mint(secret, host, "lobby", now, 60, nonce); end);
		assert.has_error(function () native.token.mint(secret, host, nil, "soon", 60, nonce); end);
		assert.has_error(function () native.token.mint(nil, host, nil, now, 60, nonce); end);
	end);
end);

describe("token.verify", function ()
	it("returns the claims of a genuine token", function ()
		local token, minted = mint({ "lobby@muc.example.org" }, 3600, "ci-bot");
		assert.same(minted, native.token.verify(secret, host, token, now + 10));
	end);

	local refusals = {
		{ "an expired token", function (t) return secret, host, t, now + 3600; end, "token-expired" };
		{ "a token after the secret was rotated", function (t) return secret .. "!", host, t, now; end, "token-invalid" };
		{ "a token of another host", function (t) return secret, "other.example.org", t, now; end, "token-invalid" };
		{ "a tampered token", function (t) return secret, host, t:gsub("%.(.)", ".A", 1), now; end, "token-invalid" };
		{ "an unknown version", function (t) return secret, host, "v2" .. t:sub(3), now; end, "token-malformed" };
		{ "bad base64", function (t) return secret, host, t .. "=", now; end, "token-malformed" };
		{ "an oversize token", function () return secret, host, ("a"):rep(5000), now; end, "token-malformed" };
		{ "a token that is not a token", function () return secret, host, "Basic dXNlcjpwYXNz", now; end, "token-malformed" };
	};
	for _, case in ipairs(refusals) do
		it("refuses " .. case[1] .. " with " .. case[3], function ()
			local token = mint(nil);
			local claims, code, text = native.token.verify(case[2](token));
			assert.is_nil(claims);
			assert.equal(case[3], code);
			assert.is_string(text);
			assert.is_nil(text:find(secret, 1, true));
		end);
	end

	it("raises on wrong argument types", function ()
		assert.has_error(function () native.token.verify(secret, host, nil, now); end);
		assert.has_error(function () native.token.verify(secret, host, "v1.a.b", nil); end);
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
	it("returns the request as a flat table", function ()
		local request = native.kick.parse('{"nickname":"Bob","muc":"lobby@muc.example.org","reason":"Spam"}', 4096, 100);
		assert.same({ nickname = "Bob"; muc = "lobby@muc.example.org"; reason = "Spam" }, request);
	end);

	local refusals = {
		{ "not JSON", "nickname=Bob", "bad-request", "Body is not valid JSON" };
		{ "not an object", "[]", "bad-request", "Body must be a JSON object" };
		{ "no nickname", '{"muc":"lobby@muc.example.org"}', "bad-request", "Missing 'nickname'" };
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
