-- Test-only: starts the native library's worker threads while modules load, that is before Prosody daemonizes
-- (forks) on server-started, so that the integration suite can prove the library rebuilds its pool in the forked
-- process instead of handing jobs to threads that did not survive the fork. Never install this in production.

local native = module:require("prosody_native");

local id, code, text = native.media.test_job("echo", "before the fork");
if not id then
	error(("could not start a native job: %s (%s)"):format(text, code));
end
module:log("info", "Started the native worker threads before the fork (job %d)", id);
