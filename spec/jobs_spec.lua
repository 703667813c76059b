-- The job seam: native worker jobs, the wake-up descriptor, and the once-per-process Lua helper that calls each
-- job's callback by job id (lua/prosody_native_jobs.lib.lua).
local fakes = require "media_fakes";
local native = require "prosody_native";

local owner = fakes.new_module("jobs_test", "muc.example.org");
local jobs = fakes.load_lib("prosody_native_jobs", owner);

-- Watches the job that a submit function's results `...` name, and pumps the fake server loop until its callback
-- has run; returns what the callback got: true, result or false, code.
local function outcome_of(...)
	local done, ok, value = false, nil, nil;
	jobs.watch(owner, function (o, v) done, ok, value = true, o, v; end, ...);
	fakes.pump_until(function () return done; end);
	return ok, value;
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
		outcome_of(native.media.test_job("echo", "x"));
		assert.same({ native.media.wakeup_fd() }, fakes.watched_fds());
	end);

	it("calls back with true and the job's result table", function ()
		assert.same({ true, { value = "hi" } }, { outcome_of(native.media.test_job("echo", "hi")) });
	end);

	it("calls back with false and the error code of a failed job", function ()
		assert.same({ false, "bad-request" }, { outcome_of(native.media.test_job("error")) });
	end);

	it("turns a panic on a worker thread into internal-error, and the pool lives on", function ()
		assert.same({ false, "internal-error" }, { outcome_of(native.media.test_job("panic")) });
		assert.same({ true, { value = "after" } }, { outcome_of(native.media.test_job("echo", "after")) });
	end);

	it("calls back at once, before returning, with a submit error", function ()
		local got;
		jobs.watch(owner, function (ok, code) got = { ok, code }; end, native.media.probe_url("gopher://example.com/", {}));
		assert.same({ false, "bad-request" }, got);
		assert.equal(0, jobs.pending_count());
	end);

	it("calls back for many jobs of one wake-up, each by its own id, once", function ()
		local values, calls = {}, 0;
		for i = 1, 20 do
			jobs.watch(owner, function (_, r) values[i] = r.value; calls = calls + 1; end, native.media.test_job("echo", tostring(i)));
		end
		fakes.pump_until(function () return jobs.pending_count() == 0; end);
		for i = 1, 20 do
			assert.equal(tostring(i), values[i]);
		end
		assert.equal(20, calls);
	end);

	it("keeps running other callbacks when one raises", function ()
		local ran = false;
		jobs.watch(owner, function () error("callback bug"); end, native.media.test_job("echo", "a"));
		jobs.watch(owner, function () ran = true; end, native.media.test_job("echo", "b"));
		fakes.pump_until(function () return ran; end);
		assert.is_true(ran);
	end);

	it("cancels one job its owner no longer waits for: it stops, and its callback never runs", function ()
		local running_before = native.media.running();
		local called = false;
		local id = native.media.test_job("sleep", 3600);
		jobs.watch(owner, function () called = true; end, id);
		local pending_before = jobs.pending_count(owner);
		assert.is_true(jobs.cancel(id));
		assert.is_false(jobs.cancel(id), "nothing left to cancel");
		assert.equal(pending_before - 1, jobs.pending_count(owner));
		assert.equal(running_before, native.media.running(), "the library no longer runs it");
		assert.is_false(called);
	end);

	it("cancels a module's jobs with 'cancelled' when it unloads, and only that module's", function ()
		local leaving = fakes.new_module("leaving", "muc.example.org");
		local staying = fakes.new_module("staying", "muc.example.org");
		local running_before = native.media.running();
		local slow, other;
		jobs.watch(leaving, function (ok, v) slow = { ok, v }; end, native.media.test_job("sleep", 3600));
		jobs.watch(staying, function (ok, v) other = { ok, v }; end, native.media.test_job("sleep", 0.05));
		assert.equal(running_before + 2, native.media.running());
		leaving:unload();
		assert.same({ false, "cancelled" }, slow);
		assert.equal(0, jobs.pending_count(leaving));
		fakes.pump_until(function () return other ~= nil; end);
		assert.same({ true, {} }, other);
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
		assert.same({ false, "blocked" }, { outcome_of(native.media.probe_url("http://169.254.169.254/latest/meta-data/", {})) });
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
