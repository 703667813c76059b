-- The job seam: native worker jobs, the wake-up descriptor, and the once-per-process Lua helper that settles
-- promises by job id (lua/prosody_native_jobs.lib.lua).
local fakes = require "media_fakes";
local native = require "prosody_native";

local owner = fakes.new_module("jobs_test", "muc.example.org");
local jobs = fakes.load_lib("prosody_native_jobs", owner);

-- Settles `p` by pumping the fake server loop; returns "resolved", value or "rejected", reason.
local function settle(p)
	local outcome, value;
	p:next(function (v) outcome, value = "resolved", v; end, function (e) outcome, value = "rejected", e; end);
	fakes.pump_until(function () return outcome ~= nil; end);
	return outcome, value;
end

describe("media.wakeup_fd", function ()
	it("returns the same descriptor every time", function ()
		local fd = native.media.wakeup_fd();
		assert.is_number(fd);
		assert.equal(fd, native.media.wakeup_fd());
	end);
end);

describe("media.take_results", function ()
	it("returns an empty list when nothing finished", function ()
		assert.same({}, native.media.take_results());
	end);

	it("returns a finished job by id with its fields, once", function ()
		local id = native.media.test_job("echo", "hello");
		assert.is_number(id);
		local results = {};
		local socket = require "socket";
		local deadline = socket.gettime() + 10;
		while #results == 0 and socket.gettime() < deadline do
			socket.select({ { getfd = function () return native.media.wakeup_fd(); end } }, nil, 0.2);
			results = native.media.take_results();
		end
		assert.same({ { id = id; value = "hello" } }, results);
		assert.same({}, native.media.take_results());
	end);
end);

describe("prosody_native_jobs", function ()
	it("is one instance per process", function ()
		assert.equal(jobs, fakes.load_lib("prosody_native_jobs", fakes.new_module("other", "example.org")));
	end);

	it("watches the wake-up descriptor with server.watchfd", function ()
		settle(jobs.track(owner, native.media.test_job("echo", "x")));
		assert.same({ native.media.wakeup_fd() }, fakes.watched_fds());
	end);

	it("resolves a job's promise with its result table", function ()
		local outcome, value = settle(jobs.track(owner, native.media.test_job("echo", "hi")));
		assert.equal("resolved", outcome);
		assert.same({ value = "hi" }, value);
	end);

	it("rejects with the error code of a failed job", function ()
		assert.same({ "rejected", "bad-request" }, { settle(jobs.track(owner, native.media.test_job("error"))) });
	end);

	it("turns a panic on a worker thread into internal-error, and the pool lives on", function ()
		assert.same({ "rejected", "internal-error" }, { settle(jobs.track(owner, native.media.test_job("panic"))) });
		assert.same({ "resolved", { value = "after" } }, { settle(jobs.track(owner, native.media.test_job("echo", "after"))) });
	end);

	it("settles a job that finished before its promise's executor ran", function ()
		-- Prosody runs promise executors on the next tick; the wake-up can come first.
		local outcome;
		jobs.track(owner, native.media.test_job("echo", "early")):next(function (r) outcome = r.value; end);
		local socket = require "socket";
		local deadline = socket.gettime() + 10;
		while not fakes.pump_fds(0.2) do
			assert(socket.gettime() < deadline, "the job did not finish");
		end
		assert.is_nil(outcome);
		fakes.run_ticks();
		assert.equal("early", outcome);
		assert.equal(0, jobs.pending_count());
	end);

	it("passes a submit error straight through as a rejection", function ()
		local outcome, code = settle(jobs.track(owner, native.media.probe_url("gopher://example.com/", {})));
		assert.same({ "rejected", "bad-request" }, { outcome, code });
	end);

	it("settles many jobs in one wake-up, each by its own id", function ()
		local values = {};
		for i = 1, 20 do
			jobs.track(owner, native.media.test_job("echo", tostring(i))):next(function (r) values[i] = r.value; end);
		end
		fakes.pump_until(function () return jobs.pending_count() == 0; end);
		for i = 1, 20 do
			assert.equal(tostring(i), values[i]);
		end
	end);

	it("keeps running other callbacks when one raises", function ()
		local ran = false;
		jobs.track(owner, native.media.test_job("echo", "a")):next(function () error("callback bug"); end);
		jobs.track(owner, native.media.test_job("echo", "b")):next(function () ran = true; end);
		fakes.pump_until(function () return ran; end);
		assert.is_true(ran);
	end);

	it("cancels a module's jobs with 'cancelled' when it unloads, and only that module's", function ()
		local leaving = fakes.new_module("leaving", "muc.example.org");
		local staying = fakes.new_module("staying", "muc.example.org");
		local running_before = native.media.running();
		local slow = jobs.track(leaving, native.media.test_job("sleep", 3600));
		local other = jobs.track(staying, native.media.test_job("sleep", 0.05));
		assert.equal(running_before + 2, native.media.running());
		local outcome, reason;
		slow:next(nil, function (e) outcome, reason = "rejected", e; end);
		leaving:unload();
		fakes.run_ticks();
		assert.same({ "rejected", "cancelled" }, { outcome, reason });
		assert.equal(0, jobs.pending_count(leaving));
		assert.same({ "resolved", {} }, { settle(other) });
		assert.equal(running_before, native.media.running(), "the cancelled job no longer runs");
	end);
end);

describe("media.cancel", function ()
	it("reports whether the job was still running", function ()
		local id = native.media.test_job("sleep", 3600);
		assert.is_true(native.media.cancel(id));
		assert.is_false(native.media.cancel(id));
		assert.is_false(native.media.cancel(123456789));
	end);

	it("raises on a wrong argument type", function ()
		assert.has_error(function () native.media.cancel("x"); end);
	end);
end);

describe("media.probe_url", function ()
	local bad = {
		{ "a non-http URL", "file:///etc/passwd", {}, "Only http and https" };
		{ "a URL with credentials", "http://user:pw@example.com/", {}, "credentials" };
		{ "an unknown limit", "http://example.com/", { colour = "red" }, "unknown field 'colour'" };
		{ "a negative limit", "http://example.com/", { max_bytes = -1 }, "non-negative integer" };
		{ "a zero timeout", "http://example.com/", { timeout = 0 }, "timeout" };
		{ "too many components", "http://example.com/", { components_x = 10 }, "" };
		{ "more than 3 redirects", "http://example.com/", { max_redirects = 4 }, "max_redirects" };
		{ "a malformed network", "http://example.com/", { allowed_networks = { "10.0.0.0/8", "ten" } }, "'ten'" };
	};
	for _, case in ipairs(bad) do
		it("refuses " .. case[1] .. " before starting a job", function ()
			local running = native.media.running();
			local id, code, text = native.media.probe_url(case[2], case[3]);
			assert.is_nil(id);
			assert.equal("bad-request", code);
			assert.matches(case[4], text, 1, true);
			assert.equal(running, native.media.running());
		end);
	end

	it("raises on a wrong argument type", function ()
		assert.has_error(function () native.media.probe_url(nil, {}); end);
		assert.has_error(function () native.media.probe_url("http://example.com/", "limits"); end);
	end);

	it("reports a blocked address as the job's error", function ()
		local outcome, code = settle(jobs.track(owner, native.media.probe_url("http://169.254.169.254/latest/meta-data/", {})));
		assert.same({ "rejected", "blocked" }, { outcome, code });
	end);
end);

describe("media.lookup", function ()
	it("answers nil for a URL that was never probed", function ()
		assert.is_nil(native.media.lookup("http://example.com/never.png", {}));
	end);

	it("answers nil, code, text for malformed limits", function ()
		local meta, code = native.media.lookup("http://example.com/", { max_pixels = "many" });
		assert.is_nil(meta);
		assert.equal("bad-request", code);
	end);
end);

describe("media.check_networks and media.check_limits", function ()
	it("returns the networks in canonical form", function ()
		assert.same({ "127.0.0.1/32", "10.0.0.0/8", "fd00::/8" }, native.media.check_networks({ "127.0.0.1", "10.1.2.3/8", "fd12::/8" }));
		assert.same({}, native.media.check_networks({}));
	end);

	it("names the first bad network", function ()
		local nets, code, text = native.media.check_networks({ "10.0.0.0/8", "10.0.0.0/33" });
		assert.is_nil(nets);
		assert.equal("bad-request", code);
		assert.equal("Prefix length /33 is longer than 32 bits", text);
	end);

	it("accepts the module's limits and refuses nonsense", function ()
		assert.is_true(native.media.check_limits({ max_bytes = 1024; timeout = 2.5; cache_ttl = 0; allowed_networks = {} }));
		assert.is_nil(native.media.check_limits({ connect_timeout = -1 }));
	end);
end);
