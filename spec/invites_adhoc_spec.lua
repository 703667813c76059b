-- The native library's invite API (form values of mod_invites_adhoc): return shapes, error codes, argument errors.
local native = require "prosody_native";
local invite = native.invite;

local day, week = 86400, 7 * 86400;

describe("invite.validity", function ()
	local accepted = {
		{ "3600", 3600 };
		{ "90 min", 5400 };
		{ "36 hours", 36 * 3600 };
		{ "2 weeks", 2 * week };
		{ "1d 12h", 36 * 3600 };
		{ "P7D", week };
		{ "PT12H", 12 * 3600 };
	};
	for _, case in ipairs(accepted) do
		it(("reads %q as %d seconds"):format(case[1], case[2]), function ()
			assert.equal(case[2], invite.validity(case[1], 60, 30 * day));
		end);
	end

	it("returns an integer", function ()
		assert.equal("integer", math.type(invite.validity("1 day", 60, 30 * day)));
	end);

	local refused = {
		{ "soon", "not understood" };
		{ "5 m", "ambiguous" };
		{ "2 months", "vary in length" };
		{ "-1 day", "not understood" };
		{ "", "empty" };
		{ "31 days", "at most 30 days" };
		{ "30", "at least 1 minute" };
		{ "\255 days", "UTF-8" };
	};
	for _, case in ipairs(refused) do
		it(("refuses %q: %s"):format(case[1], case[2]), function ()
			local seconds, code, text = invite.validity(case[1], 60, 30 * day);
			assert.is_nil(seconds);
			assert.equal("bad-request", code);
			assert.matches(case[2], text, 1, true);
		end);
	end

	it("raises on wrong argument types", function ()
		assert.has_error(function () invite.validity(nil, 60, 120); end);
		assert.has_error(function () invite.validity("1 day", "sixty", 120); end);
		assert.has_error(function () invite.validity("1 day", -1, 120); end);
	end);
end);

describe("invite.describe_period", function ()
	it("writes the largest whole unit", function ()
		assert.equal("30 days", invite.describe_period(30 * day));
		assert.equal("1 week", invite.describe_period(week));
		assert.equal("90 seconds", invite.describe_period(90));
	end);
end);

describe("invite.username", function ()
	it("returns a well-formed local part unchanged", function ()
		assert.equal("Jüliet.C-2", invite.username("Jüliet.C-2"));
	end);

	local refused = {
		{ "juliet@example.com", "only the part before the @" };
		{ "ju liet", "may not contain ' '" };
		{ "a/b", "may not contain '/'" };
		{ "", "empty" };
		{ ("a"):rep(1024), "longer than 1023 bytes" };
		{ "\195", "UTF-8" };
	};
	for _, case in ipairs(refused) do
		it(("refuses %q: %s"):format(case[1]:sub(1, 20), case[2]), function ()
			local name, code, text = invite.username(case[1]);
			assert.is_nil(name);
			assert.equal("bad-request", code);
			assert.matches(case[2], text, 1, true);
		end);
	end
end);

describe("invite.note", function ()
	it("trims surrounding whitespace", function ()
		assert.equal("For Juliet", invite.note("  For Juliet \t", 200));
	end);

	it("counts characters, not bytes", function ()
		assert.equal("ééé", invite.note("ééé", 3));
		local note, code, text = invite.note("éééé", 3);
		assert.is_nil(note);
		assert.equal("bad-request", code);
		assert.equal("Note is longer than 3 characters", text);
	end);

	it("refuses more than one line", function ()
		local note, code, text = invite.note("one\ntwo", 200);
		assert.is_nil(note);
		assert.equal("bad-request", code);
		assert.matches("single line", text);
	end);
end);

describe("invite.token", function ()
	it("accepts Prosody's URL-safe tokens", function ()
		assert.equal("Zm9v-YmFy_123", invite.token("Zm9v-YmFy_123"));
	end);

	for _, bad in ipairs({ "", "a b", "../etc", ("x"):rep(65) }) do
		it(("refuses %q"):format(bad:sub(1, 20)), function ()
			local token, code = invite.token(bad);
			assert.is_nil(token);
			assert.equal("bad-request", code);
		end);
	end
end);

describe("invite.quota", function ()
	it("returns how many remain after this one", function ()
		assert.equal(9, invite.quota(0, 10));
		assert.equal(0, invite.quota(9, 10));
	end);

	it("answers quota-exceeded at the limit", function ()
		local remaining, code, text = invite.quota(10, 10);
		assert.is_nil(remaining);
		assert.equal("quota-exceeded", code);
		assert.matches("10 open invitations (the limit is 10)", text, 1, true);
	end);

	it("lets a limit of 0 allow none", function ()
		assert.is_nil(invite.quota(0, 0));
	end);

	it("raises on negative counts", function ()
		assert.has_error(function () invite.quota(-1, 10); end);
	end);
end);

describe("invite.account_quota", function ()
	it("returns how many new accounts remain after this invitation", function ()
		assert.equal(7, invite.account_quota(1, 1, 10, 0));
		assert.equal(0, invite.account_quota(0, 2, 3, 86400));
	end);

	it("counts accounts created and open invitations together", function ()
		local remaining, code, text = invite.account_quota(2, 1, 3, 0);
		assert.is_nil(remaining);
		assert.equal("quota-exceeded", code);
		assert.equal("You may invite 3 new accounts in all: 2 registered with your invitations, and 1 of your open "
			.. "invitations could still register one", text);
	end);

	it("names a rolling period", function ()
		local _, _, text = invite.account_quota(1, 0, 1, 30 * day);
		assert.matches("^You may invite 1 new account every 30 days:", text);
	end);

	it("raises on negative counts", function ()
		assert.has_error(function () invite.account_quota(-1, 0, 10, 0); end);
	end);
end);
