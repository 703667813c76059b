-- prosody-native: finds and loads the native library once per process.
--
-- Modules load this with `module:require("prosody_native")`. The native library is a Lua C module built
-- by Cargo (`prosody_native.so`); it is installed next to this file by `make install`, or into the
-- rocks tree's lib/lua/5.4 by `prosodyctl install`, which Prosody does not add to package.cpath.
-- The loaded library is kept in package.loaded, so every module shares one copy and one job queue.

-- The release: Cargo.toml's version, which `make lint` (scripts/version.sh) checks this line against.
local expected_version = "0.2.0";
local library_name = "prosody_native";

-- One clear error when this helper and the library come from different releases: the library's functions would not
-- be the ones the modules call.
local function check_version(native, path)
	if native.version ~= expected_version then
		error(("prosody-native: native library %s is version %s but these modules need %s; reinstall both together "
			.. "('make install', or 'prosodyctl install' of the module)")
			:format(path, tostring(native.version), expected_version), 0);
	end
	return native;
end

-- Says which release a module runs on, once per module: a debug line, and the module's status, which `module:info`
-- in Prosody's shell shows (0.12 and 13). The media module requires this helper twice (itself and through the jobs
-- helper), hence the check of the status it already has.
local function announce(native)
	if type(module) ~= "table" or not (module.set_status and module.get_status) then return native; end
	local status = "prosody-native " .. native.version;
	if select(2, module:get_status()) ~= status then
		module:log("debug", "%s", status);
		module:set_status("info", status);
	end
	return native;
end

local loaded = package.loaded[library_name];
if loaded then
	-- A library stays loaded until Prosody exits: a module reloaded after an upgrade finds the old one here.
	if loaded.version ~= expected_version then
		error(("prosody-native: this Prosody process still runs native library %s, loaded before the upgrade to %s; "
			.. "restart Prosody to finish the upgrade (a module reload cannot replace a loaded native library)")
			:format(tostring(loaded.version), expected_version), 0);
	end
	return announce(loaded);
end

-- The directory this file was loaded from (Prosody passes "@path" as the chunk name).
local here = debug.getinfo(1, "S").source:match("^@(.*)[/\\][^/\\]*$") or ".";

local candidates = {
	here .. "/" .. library_name .. ".so";
	-- rocks tree: <tree>/share/lua/5.4/this_file -> <tree>/lib/lua/5.4/prosody_native.so
	here .. "/../../../lib/lua/5.4/" .. library_name .. ".so";
};
local from_cpath = package.searchpath(library_name, package.cpath);
if from_cpath then table.insert(candidates, from_cpath); end

local open, open_path, tried = nil, nil, {};
for _, path in ipairs(candidates) do
	local f = io.open(path, "rb");
	if f then
		f:close();
		local loader, err = package.loadlib(path, "luaopen_" .. library_name);
		if not loader then
			error(("prosody-native: cannot load %s (%s); rebuild it with 'make' and reinstall"):format(path, err), 0);
		end
		open, open_path = loader, path;
		break;
	end
	table.insert(tried, path);
end
if not open then
	error(("prosody-native: native library %s.so not found (looked in %s); install it with 'make install', "
		.. "or 'prosodyctl install' of the module"):format(library_name, table.concat(tried, ", ")), 0);
end

local native = check_version(open(), open_path);

package.loaded[library_name] = native;
return announce(native);
