-- Bench-only: measures how late Prosody's event loop runs a timer that asks to run every millisecond. The
-- lateness of a tick is how long the loop was busy elsewhere (a stall); the benchmark reads the longest one while
-- mod_muc_media_metadata probes images. Load it on the MUC component, next to that module. Never load this in
-- production.
--
-- Each tick is filed under what the loop did since the previous one, so that a stall can be told apart from
-- the handling of the message itself:
--   "arrival"   a groupchat message reached the room (parsing, every handler, the probes being started);
--   "delivery"  a message was broadcast to the occupants (adding the metadata, serialising for each occupant);
--   "message"   both, as for a message that is not held;
--   "between"   after an arrival, before its delivery: the loop only waited, and took the probes' results;
--   "outside"   before the first arrival or after a delivery (answering the benchmark's own HTTP requests).
--
-- GET /bench_loop_stall/start  starts (or restarts) measuring
-- GET /bench_loop_stall/stop   stops and answers {"ticks": n, "max_ms": x, "p99_ms": y, "median_ms": z,
--                              "phases": {"between": {same fields}, ...}, "longest": {"cpu_ms": c, "heap_kib": h}}
--                              (phases without ticks are left out; p99 and median within 0.05 ms, from a
--                              histogram, the max exact). "longest" says what the process did during
--                              the longest stall: the CPU time it used (all its threads) and how the Lua heap
--                              changed (a drop of hundreds of KiB is a garbage collection).

local compat = module:require("prosody_native_compat");
local json = compat.require("util.json");
local server = compat.require("net.server");
local time = compat.require("util.time");

local interval = 0.001;

-- Lateness is counted in a fixed histogram per phase, allocated before measuring starts, so that a run of any
-- length writes no new table: a tick that grew one would itself bring on Prosody's garbage collector (doubling a
-- list of 1024 numbers allocates 32 KiB at once, and Prosody's default settings answer that with a whole
-- collection cycle). Buckets of 0.05 ms up to 50 ms, the last one for anything longer; the longest lateness of
-- each phase is kept exactly.
local bucket_ms = 0.05;
local buckets = 1000;
local phase_names = { "arrival", "delivery", "message", "between", "outside" };
local histogram, longest_in = {}, {}; -- by phase: counts per bucket (1..buckets+1), and the longest lateness (s)
for _, name in ipairs(phase_names) do
	local counts = {};
	for i = 1, buckets + 1 do counts[i] = 0; end
	histogram[name], longest_in[name] = counts, 0.0;
end
-- The longest stall of the run: the process's CPU time (os.clock, all threads) and the Lua heap's change (KiB)
-- since the tick before it.
local longest, longest_cpu, longest_heap = 0.0, 0.0, 0.0;
local last_cpu, last_heap = 0.0, 0.0;

local generation = 0; -- a tick of an earlier run finds it changed and stops
local arrived, delivered = false, false; -- since the previous tick
local waiting = false; -- a message has arrived and is not delivered yet

local function phase()
	if arrived and delivered then return "message"; end
	if arrived then return "arrival"; end
	if delivered then return "delivery"; end
	return waiting and "between" or "outside";
end

module:hook("muc-occupant-groupchat", function () arrived = true; end, 1000);
module:hook("muc-broadcast-message", function () delivered = true; end, 1000);

-- Ticks are plain net.server tasks that add themselves again: a repeating module timer would allocate a little
-- on every tick.
local function start()
	generation = generation + 1;
	local this_run = generation;
	for _, name in ipairs(phase_names) do
		local counts = histogram[name];
		for i = 1, buckets + 1 do counts[i] = 0; end
		longest_in[name] = 0.0;
	end
	longest, longest_cpu, longest_heap = 0.0, 0.0, 0.0;
	arrived, delivered, waiting = false, false, false;
	local expected_at = time.monotonic() + interval;
	last_cpu, last_heap = os.clock(), collectgarbage("count");
	local function tick()
		if generation ~= this_run then return; end
		local now = time.monotonic();
		local cpu, heap = os.clock(), collectgarbage("count");
		local late = math.max(0, now - expected_at);
		local name = phase();
		local counts = histogram[name];
		local bucket = math.min(buckets + 1, math.floor(late * 1000 / bucket_ms) + 1);
		counts[bucket] = counts[bucket] + 1;
		if late > longest_in[name] then longest_in[name] = late; end
		if late > longest then
			longest, longest_cpu, longest_heap = late, cpu - last_cpu, heap - last_heap;
		end
		last_cpu, last_heap = cpu, heap;
		if arrived or delivered then
			waiting = arrived and not delivered;
		end
		arrived, delivered = false, false;
		expected_at = now + interval;
		server.add_task(interval, tick);
	end
	server.add_task(interval, tick);
end

-- {ticks, max_ms, p99_ms, median_ms} of the histograms of `names` (quantiles at their bucket's upper edge, within
-- 0.05 ms; max exact); nil without ticks.
local function summary(names)
	local n, max = 0, 0.0;
	for _, name in ipairs(names) do
		for i = 1, buckets + 1 do n = n + histogram[name][i]; end
		max = math.max(max, longest_in[name]);
	end
	if n == 0 then return nil; end
	local function at(q)
		local rank, seen = math.max(1, math.ceil(q * n)), 0;
		for i = 1, buckets + 1 do
			for _, name in ipairs(names) do seen = seen + histogram[name][i]; end
			if seen >= rank then return math.min(i * bucket_ms, max * 1000); end
		end
		return max * 1000;
	end
	return { ticks = n; max_ms = max * 1000; p99_ms = at(0.99); median_ms = at(0.5) };
end

local function stop()
	generation = generation + 1;
	local result = summary(phase_names) or { ticks = 0; max_ms = 0; p99_ms = 0; median_ms = 0 };
	result.phases = {};
	for _, name in ipairs(phase_names) do
		result.phases[name] = summary({ name });
	end
	if result.ticks > 0 then
		result.longest = { cpu_ms = longest_cpu * 1000; heap_kib = longest_heap };
	end
	return result;
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
