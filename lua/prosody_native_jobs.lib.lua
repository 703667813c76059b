-- prosody-native: waits for the native library's worker threads, once per process.
--
-- Load with `local jobs = module:require("prosody_native_jobs")`. The first module to load it creates the one
-- shared instance (kept in package.loaded, like the native library itself); every later load returns it.
--
-- A native submit function (such as a media prober's `:probe(url)`) starts a job on a worker thread and returns its
-- id at once. `jobs.watch(module, callback, id)` asks for `callback` to run when that job is done. Worker
-- threads never touch Lua: a finished job goes into the library's completion queue and makes its wake-up
-- descriptor readable. This helper watches that descriptor with `server.watchfd`; on the main thread it takes
-- the finished jobs and calls each one's callback, found by job id. Nothing polls.
--
-- The callback gets `true, result` (the job's result table) or `false, code` (its error code: "blocked",
-- "timeout", ...). When a module unloads (or reloads), its jobs are cancelled in the library and their callbacks
-- get `false, "cancelled"`. Callbacks rather than promises: a module waiting for 20 probes makes no 20
-- promises, whose executors Prosody would run on a later tick of its loop.

local library_name = "prosody_native_jobs";

local shared = package.loaded[library_name];
if shared then return shared; end

-- `module` is whichever module loaded this first; it is used here only, never kept.
local native = module:require("prosody_native");
local compat = module:require("prosody_native_compat");
local server = compat.require("net.server");
local logger = compat.require("util.logger");

local log = logger.init("prosody_native_jobs");

-- Key of the module item that marks a module as having jobs; its removal at unload cancels them.
local owner_item = "prosody-native-jobs";

local jobs = {};

-- job id -> { owner = module, callback = function }, from jobs.watch until the job is done or cancelled.
local pending = {};
local watcher; -- the server.watchfd handle, created with the first job
local watched_events = setmetatable({}, { __mode = "k" }); -- events objects our unload handler is on
local tracked_owners = setmetatable({}, { __mode = "k" }); -- modules that have had jobs

local function finish(id, job, is_success, value)
	local ok, err = pcall(job.callback, is_success, value);
	if not ok then
		log("error", "Callback for native job %d of mod_%s failed: %s", id, job.owner.name, err);
	end
end

-- Runs on the main thread when the wake-up descriptor is readable: takes every finished job (which also
-- drains the descriptor) and calls its callback. Jobs nobody waits for any more are dropped.
local function on_readable()
	local ok, done = pcall(native.media.take_results);
	if not ok then
		log("error", "Could not take native job results: %s", done);
		return;
	end
	log("debug", "Took %d finished native jobs", #done);
	for _, result in ipairs(done) do
		local id = result.id;
		local job = pending[id];
		if job then
			pending[id] = nil;
			result.id = nil;
			if result.error then
				job.owner:log("debug", "Native job %d failed: %s (%s)", id, result.error, result.text);
				finish(id, job, false, result.error);
			else
				finish(id, job, true, result);
			end
		end
	end
end

local function ensure_watcher()
	if watcher then return true; end
	local fd, code, text = native.media.wakeup_fd();
	if not fd then
		log("error", "No wake-up descriptor for native jobs: %s", text);
		return nil, code;
	end
	watcher = server.watchfd(fd, on_readable);
	if not watcher then
		log("error", "Could not watch the native jobs' wake-up descriptor %d", fd);
		return nil, "internal-error";
	end
	log("debug", "Watching descriptor %d for finished native jobs", fd);
	return true;
end

--- Cancels job `id`, which its owner no longer waits for: the library aborts it and its callback never runs.
-- Returns whether it was still pending.
function jobs.cancel(id)
	if not pending[id] then return false; end
	pending[id] = nil;
	native.media.cancel(id);
	return true;
end

--- Cancels every job of `owner` (a module): the library aborts them, their callbacks get `false, "cancelled"`.
-- Returns how many there were.
function jobs.cancel_all(owner)
	local cancelled = {};
	for id, job in pairs(pending) do
		if job.owner == owner then
			cancelled[id] = job;
		end
	end
	local n = 0;
	for id, job in pairs(cancelled) do
		pending[id] = nil;
		native.media.cancel(id);
		finish(id, job, false, "cancelled");
		n = n + 1;
	end
	return n;
end

-- Module items are removed on unload and on reload (which unloads the old instance); the removal event goes
-- to the host's events, where our handler outlives the module's own hooks.
local function on_owner_removed(event)
	local n = jobs.cancel_all(event.source);
	if n > 0 then
		log("debug", "Cancelled %d native jobs of unloaded mod_%s", n, event.source.name);
	end
end

local function watch_owner(owner)
	if tracked_owners[owner] then return; end
	local host = prosody.hosts[owner.host];
	local events = owner.host == "*" and prosody.events or (host and host.events);
	if events and not watched_events[events] then
		events.add_handler("item-removed/" .. owner_item, on_owner_removed);
		watched_events[events] = true;
	end
	owner:add_item(owner_item, owner.name);
	tracked_owners[owner] = true;
end

--- Calls `callback(true, result)` or `callback(false, code)` once, on the main thread, when job `id` of `owner`
-- (a module) is done; `callback(false, "cancelled")` if `owner` unloads first. Takes the results of a native
-- submit function as they are, so `jobs.watch(module, callback, prober:probe(url))` works:
-- when `id` is nil, `code` is the error, and the callback runs at once, before jobs.watch returns.
function jobs.watch(owner, callback, id, code, text)
	if not id then
		owner:log("debug", "Native job not started: %s (%s)", code, text);
		callback(false, code or "internal-error");
		return;
	end
	local ok, err = ensure_watcher();
	if not ok then
		native.media.cancel(id);
		callback(false, err);
		return;
	end
	watch_owner(owner);
	pending[id] = { owner = owner; callback = callback };
end

--- Number of jobs whose callback has not run yet, of `owner` or of everyone.
function jobs.pending_count(owner)
	local n = 0;
	for _, job in pairs(pending) do
		if owner == nil or job.owner == owner then
			n = n + 1;
		end
	end
	return n;
end

package.loaded[library_name] = jobs;
return jobs;
