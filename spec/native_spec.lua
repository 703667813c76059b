-- The Lua-facing API of the native library: return shapes, error codes and argument errors.
local native = require "prosody_native";

describe("native library", function ()
	it("exports the version the Lua helper expects", function ()
		local source = assert(io.open("lua/prosody_native.lib.lua")):read("a");
		assert.equal(source:match('local expected_version = "([^"]+)"'), native.version);
	end);

	it("turns a Rust panic into nil, internal-error", function ()
		local ok, code, text = native.test_panic();
		assert.is_nil(ok);
		assert.equal("internal-error", code);
		assert.matches("deliberate panic", text);
	end);
end);

describe("validate.uri", function ()
	local cases = {
		{ "urn:uuid:164c41a2-7461-4cff-bdae-3f93078a6607", true };
		{ "http://example.com/hats#teacher", true };
		{ "teacher", false };
		{ "/relative", false };
		{ "http://exa mple.com/", false };
		{ "http://example.com/%zz", false };
		{ "", false };
		{ "urn:" .. ("a"):rep(2000), false };
	};
	for _, case in ipairs(cases) do
		local uri, is_valid = case[1], case[2];
		it((is_valid and "accepts " or "rejects ") .. ("%q"):format(uri:sub(1, 40)), function ()
			local result, code, text = native.validate.uri(uri);
			if is_valid then
				assert.equal(uri, result);
			else
				assert.is_nil(result);
				assert.equal("bad-request", code);
				assert.is_string(text);
			end
		end);
	end

	it("raises on a wrong argument type", function ()
		assert.has_error(function () native.validate.uri(nil); end);
		assert.has_error(function () native.validate.uri({}); end);
	end);
end);

describe("validate.jid", function ()
	it("splits a full JID into parts", function ()
		local parts = native.validate.jid("user@example.com/phone");
		assert.same({ node = "user"; host = "example.com"; resource = "phone" }, parts);
	end);

	it("leaves absent parts nil", function ()
		assert.same({ host = "example.com" }, native.validate.jid("example.com"));
	end);

	it("rejects a JID with an empty local part", function ()
		local parts, code, text = native.validate.jid("@example.com");
		assert.is_nil(parts);
		assert.equal("bad-request", code);
		assert.matches("local part", text);
	end);
end);

describe("validate.text and validate.nickname", function ()
	it("accepts a bounded UTF-8 title", function ()
		assert.equal("Lehrerin ✓", native.validate.text("Lehrerin ✓", 10, "Title"));
	end);

	it("names the field in its error", function ()
		local ok, code, text = native.validate.text(("x"):rep(11), 10, "Title");
		assert.is_nil(ok);
		assert.equal("bad-request", code);
		assert.equal("Title is longer than 10 characters", text);
	end);

	it("rejects invalid UTF-8", function ()
		assert.is_nil(native.validate.text("\xff\xfe", 10, "Title"));
	end);

	it("rejects a nickname with surrounding whitespace", function ()
		assert.is_nil(native.validate.nickname(" Bob", 20));
		assert.equal("Bob", native.validate.nickname("Bob", 20));
	end);
end);

describe("validate.hue", function ()
	it("accepts numbers and numeric strings in [0, 360)", function ()
		assert.equal(120.5, native.validate.hue("120.5"));
		assert.equal(0, native.validate.hue(0));
	end);

	it("rejects out-of-range and non-numeric hues", function ()
		for _, bad in ipairs({ 360, -1, "red", "nan" }) do
			local ok, code = native.validate.hue(bad);
			assert.is_nil(ok);
			assert.equal("bad-request", code);
		end
	end);
end);

describe("validate.hat", function ()
	it("returns the URI and a clean attachment", function ()
		local uri, attachment = native.validate.hat("urn:x:teacher", { active = true; title = "Teacher"; hue = 200;
			assigned_by = "service" });
		assert.equal("urn:x:teacher", uri);
		assert.same({ active = true; title = "Teacher"; hue = 200; assigned_by = "service" }, attachment);
	end);

	it("treats a missing attachment as {}", function ()
		local uri, attachment = native.validate.hat("urn:x:teacher", nil);
		assert.equal("urn:x:teacher", uri);
		assert.same({}, attachment);
	end);

	local bad_attachments = {
		{ { active = "yes" }, "'active' must be a boolean" };
		{ { title = 42 }, "'title' must be a string" };
		{ { title = ("t"):rep(200) }, "longer than 128" };
		{ { hue = 400 }, "Hue" };
		{ { colour = "red" }, "unknown field 'colour'" };
		{ { assigned_by = "owner" }, "'assigned_by' must be \"room\", \"service\" or \"api\"" };
		{ { [1] = true }, "integer key" };
	};
	for _, case in ipairs(bad_attachments) do
		it("rejects an attachment: " .. case[2], function ()
			local uri, code, text = native.validate.hat("urn:x:teacher", case[1]);
			assert.is_nil(uri);
			assert.equal("bad-request", code);
			assert.matches(case[2], text, 1, true);
		end);
	end

	it("honours the caller's title limit", function ()
		assert.is_nil(native.validate.hat("urn:x:t", { title = "abcdef" }, 5));
		assert.is_string(native.validate.hat("urn:x:t", { title = "abcde" }, 5));
	end);

	it("rejects a hat id that is not a URI", function ()
		local uri, code, text = native.validate.hat("teacher", {});
		assert.is_nil(uri);
		assert.equal("bad-request", code);
		assert.matches("^Hat id must be a URI", text);
	end);
end);
