-- Stand-ins for the parts of Prosody that the job helper and mod_muc_media_metadata touch, for busted specs:
-- a net.server whose watchfd is served by `pump`, a module object that records hooks, options, timers,
-- counters and items, and loaders that run our Lua files in that module's environment. Prosody's own pure-Lua
-- utilities (util.async, util.stanza, util.events) are used as they are, from the system's 0.12.

package.path = "/usr/lib/prosody/?.lua;" .. package.path;
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath;

local socket = require "socket";
local events = require "util.events";
local jid = require "util.jid";

local fakes = {};

local watched = {};
package.loaded["net.server"] = {
	watchfd = function (fd, onreadable)
		local watch = { fd = fd; onreadable = onreadable };
		function watch.close() end
		table.insert(watched, watch);
		return watch;
	end;
};

fakes.prosody = { hosts = {}; events = events.new() };

--- The descriptors watched so far (fd numbers).
function fakes.watched_fds()
	local fds = {};
	for _, watch in ipairs(watched) do
		table.insert(fds, watch.fd);
	end
	return fds;
end

--- Waits up to `timeout` seconds for a watched descriptor to become readable and runs its callback, as the
-- server loop would. Returns whether one did.
function fakes.pump(timeout)
	local sockets = {};
	for _, watch in ipairs(watched) do
		table.insert(sockets, { watch = watch; getfd = function () return watch.fd; end; dirty = function () return false; end });
	end
	if #sockets == 0 then return false; end
	local readable = socket.select(sockets, nil, timeout);
	for _, s in ipairs(readable) do
		s.watch.onreadable(s.watch);
	end
	return #readable > 0;
end

--- Pumps until `done()` is true; fails after `timeout` seconds (default 10) instead of hanging.
function fakes.pump_until(done, timeout)
	local deadline = socket.gettime() + (timeout or 10);
	while not done() do
		assert(socket.gettime() < deadline, "timed out waiting for native jobs");
		fakes.pump(0.2);
	end
end

local function host_events(host)
	if host == "*" then return fakes.prosody.events; end
	fakes.prosody.hosts[host] = fakes.prosody.hosts[host] or { events = events.new() };
	return fakes.prosody.hosts[host].events;
end

--- As core's stanza router: fires <name>/full, /bare or /host on the host the stanza is addressed to.
function fakes.prosody.core_post_stanza(origin, stanza)
	local node, host, resource = jid.split(stanza.attr.to);
	local to_type = resource and "/full" or node and "/bare" or "/host";
	return host_events(host).fire_event(stanza.name .. to_type, { origin = origin; stanza = stanza });
end

--- A module object named `name` on `host` with config `options` (kept as `m.options`: change it, then fire
-- `m.hooks["config-reloaded"].handler()`, to reload).
function fakes.new_module(name, host, options)
	options = options or {};
	local m = { name = name; host = host; hooks = {}; items = {}; timers = {}; counters = {}; metrics = {}; logs = {};
		dependencies = {}; options = options };
	function m.get_option_number(_, key, default) local v = options[key]; if v == nil then return default; end return tonumber(v); end
	function m.get_option_boolean(_, key, default) local v = options[key]; if v == nil then return default; end return v; end
	function m.get_option_array(_, key, default) return options[key] or default; end
	function m:log(level, fmt, ...)
		local args = table.pack(...);
		for i = 1, args.n do args[i] = tostring(args[i]); end
		table.insert(self.logs, { level = level; text = fmt:gsub("%%[dg]", "%%s"):format(table.unpack(args, 1, args.n)) });
	end
	function m:hook(event, handler, priority) self.hooks[event] = { handler = handler; priority = priority or 0 }; end
	function m:hook_global(event, handler, priority) self:hook(event, handler, priority); end
	function m:fire_event(event, data) return host_events(self.host).fire_event(event, data); end
	function m:measure(counter)
		self.counters[counter] = 0;
		return function () self.counters[counter] = self.counters[counter] + 1; end;
	end
	function m:add_timer(delay, callback)
		local timer = { delay = delay; callback = callback };
		function timer.stop(t) t.stopped = true; end
		table.insert(self.timers, timer);
		return timer;
	end
	-- m.metrics[name][label values joined by ","] is the metric: `value` (counters, gauges) and `samples` (histograms).
	function m:metric(kind, metric_name, unit, description, label_keys)
		assert(kind and unit and description and label_keys, "module:metric needs type, name, unit, description, labels");
		local family = {};
		self.metrics[metric_name] = family;
		return {
			with_labels = function (_, ...)
				local key = table.concat({ ... }, ",");
				family[key] = family[key] or {
					value = 0; samples = {};
					add = function (metric, n) metric.value = metric.value + n; end;
					set = function (metric, v) metric.value = v; end;
					sample = function (metric, v) table.insert(metric.samples, v); end;
				};
				return family[key];
			end;
		};
	end
	function m:depends(dependency) return self.dependencies[dependency]; end -- set m.dependencies.x before loading
	function m.get_host_type() return "component"; end
	function m.get_option_string(_, key, default)
		if key == "component_module" then return "muc"; end
		local v = options[key]; if v == nil then return default; end return v;
	end
	local shared = {};
	function m.shared(_, key) shared[key] = shared[key] or {}; return shared[key]; end
	function m:add_item(key, value)
		table.insert(self.items, { key = key; value = value });
	end
	function m:require(lib)
		return fakes.load_lib(lib, self);
	end
	--- Fires the events Prosody fires when it unloads a module: the removal of each of its items.
	function m:unload()
		for _, item in ipairs(self.items) do
			host_events(self.host).fire_event("item-removed/" .. item.key, { source = self; item = item.value });
		end
		self.items = {};
	end
	host_events(host);
	return m;
end

local function environment(m)
	return setmetatable({ module = m; prosody = fakes.prosody }, { __index = _G });
end

--- Runs lua/<lib>.lib.lua in the environment of module `m`, as module:require does.
function fakes.load_lib(lib, m)
	return assert(loadfile("lua/" .. lib .. ".lib.lua", "t", environment(m)))();
end

--- Loads lua/mod_<name>/mod_<name>.lua into module `m`; returns the module's environment.
function fakes.load_module(m)
	local env = environment(m);
	assert(loadfile(("lua/mod_%s/mod_%s.lua"):format(m.name, m.name), "t", env))();
	return env;
end

return fakes;
