-- Bench-only: measures how late Prosody's event loop runs a timer that asks to run every millisecond. The
-- lateness of a tick is how long the loop was busy elsewhere (a stall); the benchmark reads the longest one while
-- mod_muc_media_metadata probes images. Never load this in production.
--
-- GET /bench_loop_stall/start  starts (or restarts) measuring
-- GET /bench_loop_stall/stop   stops and answers {"ticks": n, "max_ms": x, "p99_ms": y, "median_ms": z}

local compat = module:require("prosody_native_compat");
local json = compat.require("util.json");
local time = compat.require("util.time");

local interval = 0.001;

local running = false;
local generation = 0;
local expected_at;
local lateness = {};

local function tick()
	if not running then return; end
	local now = time.monotonic();
	table.insert(lateness, math.max(0, now - expected_at));
	expected_at = now + interval;
	return interval;
end

local function start()
	running = false; -- a timer of an earlier run stops at its next tick
	generation = generation + 1;
	local this_run = generation;
	lateness = {};
	running = true;
	expected_at = time.monotonic() + interval;
	module:add_timer(interval, function ()
		if generation ~= this_run then return; end
		return tick();
	end);
end

local function stop()
	running = false;
	generation = generation + 1;
	table.sort(lateness);
	local n = #lateness;
	local function at(q) return n > 0 and lateness[math.max(1, math.ceil(q * n))] * 1000 or 0; end
	return { ticks = n; max_ms = at(1); p99_ms = at(0.99); median_ms = at(0.5) };
end

module:depends("http");
module:provides("http", {
	route = {
		["GET /start"] = function (event)
			start();
			event.response.headers.content_type = "application/json";
			return json.encode({ started = true });
		end;
		["GET /stop"] = function (event)
			event.response.headers.content_type = "application/json";
			return json.encode(stop());
		end;
	};
});
