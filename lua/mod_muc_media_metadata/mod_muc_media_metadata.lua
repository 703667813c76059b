-- mod_muc_media_metadata: adds size, type, dimensions and a BlurHash to media shared in MUC rooms.
--
-- For every <x xmlns='jabber:x:oob'><url/></x> of a groupchat message, the native library fetches the URL on a
-- worker thread (only http/https, never to internal networks, with size and time limits) and probes the bytes
-- under decoding limits. The message is held until every probe has finished or the timeout has passed, then
-- broadcast with a <metadata/> element inside each <x/> and, by default, an XEP-0447 <file-sharing/> with XEP-0446
-- file metadata and an XEP-0264 BlurHash thumbnail, which clients parse today. Results are cached per URL.
--
-- Holding never waits inside the sender's stream: the message is taken out of the flow and broadcast later, as core
-- would have, after checking again that its sender may still speak. The sender's later stanzas to that room wait
-- in their line behind it, so the room sees them in order; nobody else waits.

local compat = module:require("prosody_native_compat");
compat.check_host(module, "muc");
local native = module:require("prosody_native");
local jobs = module:require("prosody_native_jobs");
local st = compat.require("util.stanza");
local jid = compat.require("util.jid");
local time = compat.require("util.time");

-- Options (README), read at load and again on config-reloaded. The ones the native library uses become one
-- prober handle, which holds them parsed: a probe passes its URL, sender, room and the time left in its hold.
local hold_timeout, max_urls, add_file_sharing, max_waiting;
local prober, prober_settings;

local mod_muc = module:depends("muc");

local xmlns_oob = "jabber:x:oob";
local xmlns_metadata = "xmpp:prosody.im/protocol/media-metadata#0";
local xmlns_sfs = "urn:xmpp:sfs:0";
local xmlns_file_metadata = "urn:xmpp:file:metadata:0";
local xmlns_thumbs = "urn:xmpp:thumbs:1";
local xmlns_url_data = "http://jabber.org/protocol/url-data";

-- Reads the options and makes the prober they describe. Returns nil, text for a bad option, and then changes
-- nothing: a reload with a mistake keeps the settings in use.
local function read_options()
	local allowed_networks = module:get_option_array("muc_media_metadata_allowed_networks", {});
	local networks, networks_err, networks_text = native.media.check_networks(allowed_networks);
	if not networks then
		return nil, ("muc_media_metadata_allowed_networks: %s (%s)"):format(networks_text, networks_err);
	end
	local settings = {
		max_bytes = compat.get_option_integer(module, "muc_media_metadata_max_bytes", 32 * 1024 * 1024, 1024, 1024 * 1024 * 1024);
		max_pixels = compat.get_option_integer(module, "muc_media_metadata_max_pixels", 50 * 1000 * 1000, 1, 1000 * 1000 * 1000);
		max_webp_pixels = compat.get_option_integer(module, "muc_media_metadata_max_webp_pixels", 4 * 1000 * 1000, 1,
			1000 * 1000 * 1000);
		max_decode_memory = compat.get_option_integer(module, "muc_media_metadata_max_decode_memory", 64 * 1024 * 1024,
			1024 * 1024, 4 * 1024 * 1024 * 1024);
		components_x = compat.get_option_integer(module, "muc_media_metadata_blurhash_x", 4, 1, 9);
		components_y = compat.get_option_integer(module, "muc_media_metadata_blurhash_y", 3, 1, 9);
		connect_timeout = compat.get_option_number(module, "muc_media_metadata_connect_timeout", 3, 0.1, 60);
		timeout = compat.get_option_number(module, "muc_media_metadata_fetch_timeout", 10, 0.1, 300);
		cache_size = compat.get_option_integer(module, "muc_media_metadata_cache_size", 256, 0, 100000);
		cache_ttl = compat.get_option_integer(module, "muc_media_metadata_cache_ttl", 3600, 0, 7 * 86400);
		failure_ttl = compat.get_option_number(module, "muc_media_metadata_failure_ttl", 30, 0, 3600);
		max_downloads = compat.get_option_integer(module, "muc_media_metadata_max_downloads", 16, 1, 1024);
		max_queued = compat.get_option_integer(module, "muc_media_metadata_max_queued", 128, 0, 100000);
		max_per_sender = compat.get_option_integer(module, "muc_media_metadata_max_per_sender", 4, 1, 1024);
		max_per_room = compat.get_option_integer(module, "muc_media_metadata_max_per_room", 8, 1, 10000);
		allowed_networks = networks;
		allowed_targets = module:get_option_array("muc_media_metadata_allowed_targets", {});
		nat64_prefixes = module:get_option_array("muc_media_metadata_nat64_prefixes", { "64:ff9b::/96" });
		only_hosts = module:get_option_array("muc_media_metadata_only_hosts", {});
	};
	local new_prober, err, text = native.media.prober(settings);
	if not new_prober then
		-- Errors about one of the lists of hosts name the option in front ("only_hosts: ...").
		local option, rest = tostring(text):match("^([%w_]+): (.*)$");
		if option == "allowed_targets" or option == "nat64_prefixes" or option == "only_hosts" then
			return nil, ("muc_media_metadata_%s: %s (%s)"):format(option, rest, err);
		end
		return nil, ("muc_media_metadata limits: %s (%s)"):format(text, err);
	end
	hold_timeout = compat.get_option_number(module, "muc_media_metadata_timeout", 5, 0.1, 60);
	max_urls = compat.get_option_integer(module, "muc_media_metadata_max_urls", 8, 1, 64);
	add_file_sharing = module:get_option_boolean("muc_media_metadata_file_sharing", true);
	-- After a reload, lines already longer go out with the next stanza that joins them.
	max_waiting = compat.get_option_integer(module, "muc_media_metadata_max_waiting", 256, 1, 10000);
	prober = new_prober;
	return settings;
end

-- The settings as one line, to tell whether a reload changed them.
local function describe_settings(settings)
	local keys = {};
	for key in pairs(settings) do table.insert(keys, key); end
	table.sort(keys);
	local parts = {};
	for _, key in ipairs(keys) do
		local value = settings[key];
		table.insert(parts, ("%s=%s"):format(key, type(value) == "table" and table.concat(value, ",") or tostring(value)));
	end
	return table.concat(parts, " ");
end

do
	local settings, err = read_options();
	if not settings then
		error(err, 0);
	end
	prober_settings = describe_settings(settings);
end

module:hook_global("config-reloaded", function ()
	local settings, err = read_options();
	if not settings then
		module:log("error", "Keeping the previous settings: %s", err);
		return;
	end
	local described = describe_settings(settings);
	if described ~= prober_settings then
		prober_settings = described;
		compat.audit(module, "media-settings-changed", { settings = described });
	end
end);

-- The calls into the prober.
local function cached(url)
	return prober:lookup(url);
end

-- A probe for `sender` (bare JID) in `room` (JID) that must be answered within `deadline` seconds (what is left
-- of the hold): nil, code, text when admission sheds it.
local function start_probe(url, sender, room, deadline)
	return prober:probe(url, sender, room, deadline);
end

-- Metrics for mod_http_openmetrics (and any other statistics provider). The queue, in-flight and byte numbers are
-- the native library's, for the whole process.
local probe_queue = module:metric("gauge", "probe_queue", "", "Probes waiting for a download slot", {}):with_labels();
local probes_in_flight = module:metric("gauge", "probes_in_flight", "", "Downloads running", {}):with_labels();
local probes_shed = module:metric("counter", "probes_shed", "",
	"Probes refused at admission or dropped for want of a download slot, by reason (queue-full, sender-busy, room-busy, too-late)",
	{ "reason" });
local fetched = module:metric("counter", "fetched", "bytes", "Body bytes downloaded by probes", {}):with_labels();
local probe_duration = module:metric("histogram", "probe_duration", "seconds",
	"Time from a probe's start to its outcome (done, cached, failed, blocked, timeout, too-late, shed, cut-short, cancelled)",
	{ "outcome" }, { buckets = { 0.001; 0.01; 0.05; 0.1; 0.25; 0.5; 1; 2.5; 5; 10; 30 } });

local fetched_seen = 0;
local function update_gauges()
	if not prober then return; end
	local stats = prober:stats();
	probe_queue:set(stats.queued);
	probes_in_flight:set(stats.in_flight);
	if stats.fetched_bytes > fetched_seen then
		fetched:add(stats.fetched_bytes - fetched_seen);
	end
	fetched_seen = stats.fetched_bytes;
end
module:hook_global("stats-update", update_gauges);

local held_now = module:metric("gauge", "held_messages", "", "Groupchat messages taken out of the flow, not yet delivered",
	{}):with_labels();
local waiting_now = module:metric("gauge", "waiting_stanzas", "",
	"Other stanzas waiting behind their sender's held message (presence, private messages, subject changes)", {}):with_labels();
local hold_time = module:metric("histogram", "hold", "seconds", "Time from a held message's arrival to its delivery", {},
	{ buckets = { 0.01; 0.05; 0.1; 0.25; 0.5; 1; 2.5; 5; 10; 30; 60 } }):with_labels();
local holds_cut = module:metric("counter", "holds_cut_short", "",
	"Holds ended before every probe finished, by reason (timeout, line-full, shutdown, unload)", { "reason" });
local bounced = module:metric("counter", "bounced_messages", "",
	"Held messages refused at delivery because the sender may no longer speak, by error condition", { "condition" });

-- Percent-encodes what may not stand unescaped in the data part of a data: URI (BlurHash uses # % ? [ ] ^ { | }).
local function uri_escape(s)
	return (s:gsub("[^%w%-%._~!%$&'%(%)%*%+,;=:@]", function (c)
		return ("%%%02X"):format(c:byte());
	end));
end

local function metadata_element(meta)
	local metadata = st.stanza("metadata", { xmlns = xmlns_metadata });
	if meta.bytes then
		metadata:text_tag("bytes", ("%d"):format(meta.bytes));
	end
	metadata:text_tag("type", meta.type);
	if meta.width and meta.height then
		metadata:text_tag("width", ("%d"):format(meta.width));
		metadata:text_tag("height", ("%d"):format(meta.height));
	end
	if meta.blurhash then
		metadata:text_tag("blurhash", meta.blurhash);
	end
	return metadata;
end

local function file_sharing_element(url, meta)
	local is_image = meta.width and meta.height;
	local file_sharing = st.stanza("file-sharing", { xmlns = xmlns_sfs; disposition = is_image and "inline" or nil });
	file_sharing:tag("file", { xmlns = xmlns_file_metadata });
	file_sharing:text_tag("media-type", meta.type);
	if meta.bytes then
		file_sharing:text_tag("size", ("%d"):format(meta.bytes));
	end
	if is_image then
		file_sharing:text_tag("width", ("%d"):format(meta.width));
		file_sharing:text_tag("height", ("%d"):format(meta.height));
	end
	if is_image and meta.blurhash then
		file_sharing:tag("thumbnail", {
			xmlns = xmlns_thumbs;
			["media-type"] = "image/blurhash";
			uri = "data:image/blurhash," .. uri_escape(meta.blurhash);
			width = ("%d"):format(meta.width);
			height = ("%d"):format(meta.height);
		}):up();
	end
	file_sharing:up();
	file_sharing:tag("sources"):tag("url-data", { xmlns = xmlns_url_data; target = url }):up():up();
	return file_sharing;
end

-- The URLs that the sender already described with an XEP-0447 <file-sharing/>: theirs stays, we add none.
local function described_urls(stanza)
	local urls = {};
	for file_sharing in stanza:childtags("file-sharing", xmlns_sfs) do
		local sources = file_sharing:get_child("sources");
		if sources then
			for url_data in sources:childtags("url-data", xmlns_url_data) do
				if url_data.attr.target then
					urls[url_data.attr.target] = true;
				end
			end
		end
	end
	return urls;
end

local function add_metadata(stanza, probes)
	local described; -- looked for once there is something to add: a shed flood's messages have nothing
	for _, probe in ipairs(probes) do
		local meta = probe.meta;
		if meta then
			if described == nil then
				described = add_file_sharing and described_urls(stanza);
			end
			probe.oob:add_direct_child(metadata_element(meta));
			if described and not described[probe.url] then
				stanza:add_direct_child(file_sharing_element(probe.url, meta));
				described[probe.url] = true; -- one per URL, however often the message repeats it
			end
		end
	end
end

local no_probes = {}; -- shared, never changed: a message without probes allocates none
local shed_codes = { ["queue-full"] = true; ["sender-busy"] = true; ["room-busy"] = true; ["too-late"] = true };
local plain_outcomes = { blocked = true; timeout = true; cancelled = true };

-- Counts a probe's outcome once, whichever comes first: its result (true for metadata, "cached" for a cached
-- result, else the error code), or the message leaving without it ("held-too-long").
local function count_outcome(probe, outcome)
	if probe.counted then return; end
	probe.counted = true;
	local label;
	if outcome == true then
		label = "done";
	elseif outcome == "cached" or outcome == "too-late" or plain_outcomes[outcome] then
		label = outcome;
	elseif shed_codes[outcome] then
		label = "shed";
	elseif outcome == "held-too-long" then
		label = "cut-short";
	else
		label = "failed";
	end
	if shed_codes[outcome] then
		probes_shed:with_labels(outcome):add(1);
	end
	probe_duration:with_labels(label):sample(time.monotonic() - (probe.started or time.monotonic()));
end

-- Removes what only this module may add, so that a client cannot pass off its own values as the server's.
-- Walks the children without iterators and removes only where there is something to remove: every message with
-- OOB passes here, floods too, and what this allocates costs Prosody's collector later.
local function strip_spoofed(stanza)
	if stanza:get_child("metadata", xmlns_metadata) then
		stanza:remove_children("metadata", xmlns_metadata);
	end
	for _, tag in ipairs(stanza.tags) do
		if tag.name == "x" and tag.attr.xmlns == xmlns_oob and tag:get_child("metadata", xmlns_metadata) then
			tag:remove_children("metadata", xmlns_metadata);
		end
	end
end

-- The http(s) URL of an OOB element, trimmed, or nil: an aesgcm:// link (OMEMO) or anything else is not ours to
-- fetch, and no failure either. A URL that needs no trimming is the stanza's own string, not a copy.
local function http_url(oob)
	local url_tag = oob:get_child("url");
	if not url_tag then return nil; end
	local url = url_tag[1];
	if #url_tag ~= 1 or type(url) ~= "string" then
		url = url_tag:get_text();
		if not url then return nil; end
	end
	if url:find("^%s") or url:find("%s$") then
		url = url:match("^%s*(.-)%s*$");
	end
	if url:find("^[Hh][Tt][Tt][Pp][Ss]?://") then
		return url;
	end
end

-- The probes of a message: { oob = <x/>, url = ... } for each of its first max_urls http(s) URLs. When admission
-- would shed them anyway (`busy`, the sender's or the room's code from prober:busy), only URLs with a cached
-- result become probes (with their `meta`), and the others are only counted: returns the probes and how many
-- were shed. A flood over its limits thus costs no table, closure or native job per URL.
local function collect_probes(stanza, busy)
	local probes, n, shed = no_probes, 0, 0;
	for _, oob in ipairs(stanza.tags) do
		if n >= max_urls then break; end
		local url = oob.name == "x" and oob.attr.xmlns == xmlns_oob and http_url(oob);
		if url then
			n = n + 1;
			local meta = busy and cached(url);
			if busy and not meta then
				shed = shed + 1;
			else
				if probes == no_probes then probes = {}; end
				table.insert(probes, { oob = oob; url = url; meta = meta });
			end
		end
	end
	return probes, shed;
end

-- Counts `n` probes shed at admission with `code`, as count_outcome would one by one.
local function count_shed(code, n)
	if n == 0 then return; end
	probes_shed:with_labels(code):add(n);
	local durations = probe_duration:with_labels("shed");
	for _ = 1, n do
		durations:sample(0);
	end
end

-- Lines. A message that waits for its metadata is taken out of the flow (its muc-occupant-groupchat handler
-- returns true) and delivered later by `deliver`, as core's handle_groupchat_to_room would have delivered it.
-- Meanwhile the sender's later stanzas to that room wait behind it, in one line per sender (real JID) and room:
-- lines[sender][room_jid] = { sender = ...; room_jid = ...; entry, entry, ... }, oldest first. An entry is either
-- - a groupchat message that core has accepted (`stanza`, `room`, `origin`, `probes`), `ready` once its probes
--   are done or its hold has ended, or
-- - a stanza core has not seen yet (`stanza`, `origin`): presence, a private message, a subject change; it is
--   handed back to core's routing when its turn comes, as if it had just arrived.
-- The front of a non-empty line is always a message that is not ready. Each hold starts when its message arrives
-- and ends after hold_timeout at most, so nothing waits in a line longer than hold_timeout.
local lines = {};
local passing; -- the stanza being handed back to core from a line, which the gate lets through
local is_stopping = false; -- shutdown or unload: nothing is held any more

local function new_line(sender, room_jid)
	local by_room = lines[sender];
	if not by_room then
		by_room = {};
		lines[sender] = by_room;
	end
	local line = { sender = sender; room_jid = room_jid };
	by_room[room_jid] = line;
	return line;
end

local function forget_line(line)
	local by_room = lines[line.sender];
	if by_room and by_room[line.room_jid] == line then
		by_room[line.room_jid] = nil;
		if next(by_room) == nil then
			lines[line.sender] = nil;
		end
	end
end

-- The error core would answer a groupchat message from the sender of `stanza` to `room` with now; or nil, the
-- sender's occupant and the room when they may still speak. Mirrors mod_muc's routing to a destroyed room and
-- muc.lib's role check (both the same in 0.12 and 13). Kicked and banned senders are no occupants any more; a
-- devoiced one is a visitor.
local function refusal(room, stanza)
	if room.destroying then
		local current = mod_muc.get_room_from_jid(room.jid); -- its tombstone, a new room of that name, or none
		if not current then
			return st.error_reply(stanza, "cancel", "item-not-found", nil, module.host);
		elseif current._data.destroyed then
			local reply = st.error_reply(stanza, "cancel", "gone", current._data.reason, module.host);
			if current._data.newjid then
				reply:get_child("error"):child_with_name("gone"):text("xmpp:" .. current._data.newjid .. "?join");
			end
			return reply;
		end
		room = current;
	end
	local occupant = room:get_occupant_by_real_jid(stanza.attr.from);
	local role = occupant and occupant.role or "none";
	if role == "none" then
		return st.error_reply(stanza, "cancel", "not-acceptable", "You are not currently connected to this chat");
	elseif role == "visitor" then
		return st.error_reply(stanza, "auth", "forbidden", "You do not currently have permission to speak in this chat");
	end
	return nil, occupant, room;
end

-- Does once what core's handle_groupchat_to_room does after muc-occupant-groupchat: broadcast from the sender's
-- nick, through muc-broadcast-message (history, MAM archive and stanza-id). A sender who may no longer speak gets
-- the error core would give, and the room never sees the message.
local function deliver(entry)
	local stanza = entry.stanza;
	local error_reply, occupant, room = refusal(entry.room, stanza);
	if error_reply then
		local _, condition = error_reply:get_error();
		module:log("debug", "Held message %s of %s to %s not delivered: %s", stanza.attr.id, stanza.attr.from,
			entry.room.jid, condition);
		bounced:with_labels(condition):add(1);
		entry.origin.send(error_reply);
		return;
	end
	add_metadata(stanza, entry.probes);
	local from = stanza.attr.from;
	stanza.attr.from = occupant.nick;
	room:broadcast_message(stanza);
	stanza.attr.from = from;
end

-- Sends out the front of `line` for as long as it is ready, in order.
local function release(line)
	while line[1] and line[1].ready do
		local entry = table.remove(line, 1);
		local ok, err;
		if entry.room then
			held_now:add(-1);
			hold_time:sample(time.monotonic() - entry.since);
			ok, err = pcall(deliver, entry);
		else
			waiting_now:add(-1);
			local outer = passing;
			passing = entry.stanza;
			ok, err = pcall(prosody.core_post_stanza, entry.origin, entry.stanza);
			passing = outer;
		end
		if not ok then
			module:log("error", "Could not deliver a stanza of %s to %s after holding it: %s", line.sender, line.room_jid, err);
		end
	end
	if not line[1] then
		forget_line(line);
	end
end

-- Ends the hold of a message, before its probes are done when `reason` says why (timeout, line-full, shutdown,
-- unload): those probes are cancelled and count as timed out, and the message goes without their metadata.
local function end_hold(entry, reason)
	entry.ready = true;
	if entry.timer then
		entry.timer:stop();
		entry.timer = nil;
	end
	if not reason then return; end
	holds_cut:with_labels(reason):add(1);
	for _, probe in ipairs(entry.probes) do
		if not probe.counted then
			module:log("debug", "Metadata for %s not ready (%s), delivering without it", probe.url, reason);
			-- A probe whose download never got a slot within the hold was dropped as too late, whichever of its
			-- own deadline and this timer came first.
			local is_late = reason == "timeout" and probe.job and native.media.is_queued(probe.job);
			count_outcome(probe, is_late and "too-late" or "held-too-long");
		end
		if probe.job then
			jobs.cancel(probe.job);
			probe.job = nil;
		end
	end
end

-- Ends every hold in `line` at once and sends it all out.
local function cut_short(line, reason)
	for _, entry in ipairs(line) do
		if not entry.ready then
			end_hold(entry, reason);
		end
	end
	release(line);
end

-- Answers the probes of `entry` from the cache and starts the others, for `sender` (bare JID). Returns whether any
-- is running; then the entry's hold ends when the last one finishes, or after hold_timeout. Once admission sheds
-- one for its sender or room, the rest would be shed too (nothing frees a place before this returns): they are
-- counted without asking.
local function start_probes(entry, sender)
	local remaining, started = 0, false;
	local busy;
	local now = time.monotonic();
	for _, probe in ipairs(entry.probes) do
		probe.started = now;
		local meta = probe.meta or cached(probe.url);
		if meta then
			probe.meta = meta;
			count_outcome(probe, "cached");
		elseif busy then
			count_outcome(probe, busy);
		else
			local id, code, text = start_probe(probe.url, sender, entry.room.jid, hold_timeout);
			if not id then
				module:log("debug", "No metadata for %s: %s (%s)", probe.url, code, text);
				count_outcome(probe, code or "internal-error");
				if code == "sender-busy" or code == "room-busy" then
					busy = code;
				end
			else
				started = true;
				remaining = remaining + 1;
				probe.job = id;
				jobs.watch(module, function (ok, result)
					probe.job = nil;
					update_gauges();
					if ok then
						probe.meta = result;
						count_outcome(probe, result.cached and "cached" or true);
					else
						module:log("debug", "No metadata for %s: %s", probe.url, result);
						count_outcome(probe, result);
					end
					remaining = remaining - 1;
					if remaining == 0 and entry.timer then -- no timer yet: still starting
						end_hold(entry);
						release(entry.line);
					end
				end, id);
			end
		end
	end
	if started then
		update_gauges();
	end
	if remaining == 0 then return false; end
	entry.timer = module:add_timer(hold_timeout, function ()
		entry.timer = nil; -- it has fired: nothing to stop
		end_hold(entry, "timeout");
		release(entry.line);
	end);
	return true;
end

-- Runs after every other handler of the message (they may still refuse it, and then nothing is fetched).
module:hook("muc-occupant-groupchat", function (event)
	local stanza, room = event.stanza, event.room;
	local has_oob = stanza:get_child("x", xmlns_oob);
	if has_oob or stanza:get_child("metadata", xmlns_metadata) then
		strip_spoofed(stanza);
	end
	local by_room = lines[stanza.attr.from];
	local line = by_room and by_room[room.jid];
	if not (has_oob or line) then return; end
	local probes, sender = no_probes, nil;
	if has_oob and not is_stopping then
		-- A sender or room at its limit: the message's URLs are shed here, all at once.
		sender = jid.bare(stanza.attr.from);
		local busy = prober:busy(sender, room.jid);
		local shed;
		probes, shed = collect_probes(stanza, busy);
		count_shed(busy, shed);
	end
	local is_next = passing == stanza; -- handed back to core from the front of its line
	if probes == no_probes and (is_next or not line) then
		return; -- nothing to add or to wait for (a shed flood's messages): core broadcasts it now
	end
	local entry = { room = room; origin = event.origin; stanza = stanza; since = time.monotonic(); probes = probes };
	local is_waiting = start_probes(entry, sender);
	if not is_waiting and (is_next or not line) then
		add_metadata(stanza, entry.probes);
		return; -- nothing to wait for: core broadcasts it now
	end
	-- Held: this message (or, with nothing to wait for, the message before it). Core must not broadcast it.
	entry.ready = not is_waiting;
	line = line or new_line(stanza.attr.from, room.jid);
	entry.line = line;
	table.insert(line, is_next and 1 or #line + 1, entry);
	held_now:add(1);
	if #line > max_waiting then
		cut_short(line, "line-full");
	end
	return true;
end, -100);

-- A sender's stanzas to a room where their line is not empty join the line, except groupchat messages: core checks
-- those at once and they join it in the hook above. A subject change does join here, since core applies it before
-- that hook. IQs pass: they are requests and answers (a client's self-ping must not wait), not broadcasts.
local function gate(name, event)
	local stanza = event.stanza;
	if stanza == passing then return; end
	local by_room = lines[stanza.attr.from];
	if not by_room then return; end -- this sender waits for nothing: the common case, decided without allocating
	local line = by_room[jid.bare(stanza.attr.to)];
	if not line then return; end
	if name == "message/bare" and stanza.attr.type == "groupchat" and not stanza:get_child("subject") then return; end
	-- A copy: whoever routed it may reuse the object once handlers return (mod_presence sends one unavailable
	-- presence to every room a leaving client is in, changing its `to` each time).
	table.insert(line, { stanza = st.clone(stanza); origin = event.origin; ready = true });
	waiting_now:add(1);
	if #line > max_waiting then
		cut_short(line, "line-full");
	end
	return true;
end

for _, name in ipairs({ "message/bare"; "message/full"; "presence/bare"; "presence/full" }) do
	module:hook(name, function (event) return gate(name, event); end, 1000);
end

-- Nothing is dropped: at shutdown and unload (a reload too), every held message goes out at once with what
-- metadata is ready, followed by what waited behind it.
local function release_all(reason)
	is_stopping = true;
	local all = {};
	for _, by_room in pairs(lines) do
		for _, line in pairs(by_room) do
			table.insert(all, line);
		end
	end
	for _, line in ipairs(all) do
		cut_short(line, reason);
	end
end

-- Before mod_c2s (-100) and mod_s2s (-200) close the sessions that would receive it, and mod_muc (-300) saves rooms.
module:hook_global("server-stopping", function ()
	release_all("shutdown");
end);

function module.unload()
	release_all("unload");
end

