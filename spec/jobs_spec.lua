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
		jobs.watch(owner, function (ok, code) got = { ok, code }; end, native.media.prober({}):probe("gopher://example.com/"));
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

describe("media.prober", function ()
	local bad_options = {
		{ "an unknown option", { colour = "red" }, "unknown field 'colour'" };
		{ "a negative limit", { max_bytes = -1 }, "non-negative integer" };
		{ "a fractional limit", { max_pixels = 1.5 }, "non-negative integer" };
		{ "a zero timeout", { timeout = 0 }, "timeout" };
		{ "too many components", { components_x = 10 }, "1..=9" };
		{ "more than 3 redirects", { max_redirects = 4 }, "max_redirects" };
		{ "a decode budget under 1 MiB", { max_decode_memory = 1000 }, "max_decode_memory" };
		{ "a malformed network", { allowed_networks = { "10.0.0.0/8", "ten" } }, "'ten'" };
		{ "networks that are not a list", { allowed_networks = "10.0.0.0/8" }, "allowed_networks" };
		{ "a target without a port", { allowed_targets = { "upload.example.org" } }, "allowed_targets: 'upload.example.org'" };
		{ "a target with a bad port", { allowed_targets = { "upload.example.org:99999" } }, "'upload.example.org:99999'" };
		{ "a target URL with credentials", { allowed_targets = { "https://u:p@example.org:5281/" } }, "credentials" };
		{ "targets that are not a list", { allowed_targets = "example.org:5281" }, "allowed_targets must be a list" };
		{ "an IPv4 NAT64 prefix", { nat64_prefixes = { "10.0.0.0/8" } }, "nat64_prefixes: '10.0.0.0/8' is not a NAT64" };
		{ "a NAT64 prefix of a bad length", { nat64_prefixes = { "2001:db8:64::/80" } }, "'2001:db8:64::/80'" };
		{ "a NAT64 prefix list entry that is no string", { nat64_prefixes = { 64 } }, "nat64_prefixes has a integer entry" };
		{ "a malformed only-host", { only_hosts = { "upload.example.org/files" } }, "only_hosts: 'upload.example.org/files'" };
	};
	for _, case in ipairs(bad_options) do
		it("refuses " .. case[1], function ()
			local prober, code, text = native.media.prober(case[2]);
			assert.is_nil(prober);
			assert.equal("bad-request", code);
			assert.matches(case[3], text, 1, true);
		end);
	end

	it("makes a handle from options, or from none", function ()
		assert.equal("userdata", type(native.media.prober({ max_bytes = 1024; timeout = 2.5; cache_ttl = 0; allowed_networks = {} })));
		assert.equal("userdata", type(native.media.prober()));
	end);

	it("takes targets, NAT64 prefixes and only-hosts", function ()
		assert.equal("userdata", type(native.media.prober({
			allowed_targets = { "upload.example.org:5281"; "[2001:db8::1]:8443"; "https://files.example.org:8443/share/" };
			nat64_prefixes = { "64:ff9b::/96"; "2001:db8:64::/96"; "2001:db8:ff::/64" };
			only_hosts = { "Upload.Example.org"; "127.0.0.1" };
		})));
	end);

	it("raises on a wrong argument type", function ()
		assert.has_error(function () native.media.prober("limits"); end);
		local prober = native.media.prober({});
		assert.has_error(function () prober:probe(nil); end);
		assert.has_error(function () prober:lookup({}); end);
		assert.has_error(function () native.media.prober({}).probe(nil, "http://example.com/"); end);
	end);
end);

describe("prober:probe", function ()
	local prober = native.media.prober({});
	local bad = {
		{ "a non-http URL", "file:///etc/passwd", "Only http and https" };
		{ "a URL with credentials", "http://user:pw@example.com/", "credentials" };
		{ "something that is no URL", "not a url", "Not a URL" };
	};
	for _, case in ipairs(bad) do
		it("refuses " .. case[1] .. " before starting a job", function ()
			local running = native.media.running();
			local id, code, text = prober:probe(case[2]);
			assert.is_nil(id);
			assert.equal("bad-request", code);
			assert.matches(case[3], text, 1, true);
			assert.equal(running, native.media.running());
		end);
	end

	it("reports a blocked address as the job's error", function ()
		assert.same({ false, "blocked" }, { outcome_of(prober:probe("http://169.254.169.254/latest/meta-data/")) });
	end);
end);

describe("prober:lookup", function ()
	it("answers nil for a URL that was never probed", function ()
		assert.is_nil(native.media.prober({}):lookup("http://example.com/never.png"));
	end);
end);

describe("media.check_networks", function ()
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
end);
