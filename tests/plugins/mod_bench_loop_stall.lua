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
--                              (phases without ticks are left out). "longest" says what the process did during
--                              the longest stall: the CPU time it used (all its threads) and how the Lua heap
--                              changed (a drop of hundreds of KiB is a garbage collection).

local compat = module:require("prosody_native_compat");
local json = compat.require("util.json");
local server = compat.require("net.server");
local time = compat.require("util.time");

local interval = 0.001;

-- Everything a tick writes is allocated before measuring starts: a tick that grew a table would itself bring on
-- Prosody's garbage collector (doubling a list of 1024 numbers allocates 32 KiB at once, and Prosody's default
-- settings answer that with a whole collection cycle). A run longer than max_ticks grows the list after all.
local max_ticks = 4096;
-- Per tick: its lateness in seconds, its phase, the process's CPU time (os.clock) and the Lua heap in KiB when it
-- ran (index 0: when measuring started).
local lateness, phase_at, cpu_at, heap_at = {}, {}, {}, {};
for i = 0, max_ticks do
	lateness[i], phase_at[i], cpu_at[i], heap_at[i] = 0, "outside", 0.0, 0.0;
end
local ticks = 0;

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
	ticks = 0;
	arrived, delivered, waiting = false, false, false;
	local expected_at = time.monotonic() + interval;
	cpu_at[0], heap_at[0] = os.clock(), collectgarbage("count");
	local function tick()
		if generation ~= this_run then return; end
		local now = time.monotonic();
		ticks = ticks + 1;
		lateness[ticks] = math.max(0, now - expected_at);
		cpu_at[ticks], heap_at[ticks] = os.clock(), collectgarbage("count");
		phase_at[ticks] = phase();
		if arrived or delivered then
			waiting = arrived and not delivered;
		end
		arrived, delivered = false, false;
		expected_at = now + interval;
		server.add_task(interval, tick);
	end
	server.add_task(interval, tick);
end

local function summary(list)
	table.sort(list);
	local n = #list;
	local function at(q) return n > 0 and list[math.max(1, math.ceil(q * n))] * 1000 or 0; end
	return { ticks = n; max_ms = at(1); p99_ms = at(0.99); median_ms = at(0.5) };
end

local function stop()
	generation = generation + 1;
	local all, by_phase = {}, {};
	for i = 1, ticks do
		local name = phase_at[i];
		local list = by_phase[name];
		if not list then
			list = {};
			by_phase[name] = list;
		end
		list[#list + 1] = lateness[i];
		all[i] = lateness[i];
	end
	local phases = {};
	for name, list in pairs(by_phase) do
		phases[name] = summary(list);
	end
	local longest = 1;
	for i = 2, ticks do
		if lateness[i] > lateness[longest] then longest = i; end
	end
	local result = summary(all);
	result.phases = phases;
	if ticks > 0 then
		result.longest = { cpu_ms = (cpu_at[longest] - cpu_at[longest - 1]) * 1000;
			heap_kib = heap_at[longest] - heap_at[longest - 1] };
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
