-- mod_muc_media_metadata: adds size, type, dimensions and a BlurHash to media shared in MUC rooms.
--
-- For every <x xmlns='jabber:x:oob'><url/></x> of a groupchat message, the native library fetches the URL on a
-- worker thread (only http/https, never to internal networks, with size and time limits) and probes the bytes
-- under decoding limits. The message is held until every probe has finished or the timeout has passed, then
-- broadcast with a <metadata/> element inside each <x/> and, by default, an XEP-0447 <file-sharing/> with XEP-0446
-- file metadata and an XEP-0264 BlurHash thumbnail, which clients parse today. Results are cached per URL.

local compat = module:require("prosody_native_compat");
compat.check_host(module, "muc");
local native = module:require("prosody_native");
local jobs = module:require("prosody_native_jobs");
local async = compat.require("util.async");
local st = compat.require("util.stanza");

-- Options (README), read at load and again on config-reloaded. The ones the native library uses become one
-- prober handle, which holds them parsed: a probe passes nothing but its URL.
local hold_timeout, max_urls, add_file_sharing;
local prober, prober_settings;

module:depends("muc");

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
		allowed_networks = networks;
	};
	local new_prober, err, text = native.media.prober(settings);
	if not new_prober then
		return nil, ("muc_media_metadata limits: %s (%s)"):format(text, err);
	end
	hold_timeout = compat.get_option_number(module, "muc_media_metadata_timeout", 5, 0.1, 60);
	max_urls = compat.get_option_integer(module, "muc_media_metadata_max_urls", 8, 1, 64);
	add_file_sharing = module:get_option_boolean("muc_media_metadata_file_sharing", true);
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

-- Counters for mod_http_openmetrics (and any other statistics provider).
local count_done = module:measure("probes_done", "rate");
local count_failed = module:measure("probes_failed", "rate");
local count_timed_out = module:measure("probes_timed_out", "rate");
local count_blocked = module:measure("probes_blocked", "rate");
local count_cache_hits = module:measure("cache_hits", "rate");

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
	local described = add_file_sharing and described_urls(stanza);
	for _, probe in ipairs(probes) do
		local meta = probe.meta;
		if meta then
			probe.oob:add_direct_child(metadata_element(meta));
			if described and not described[probe.url] then
				stanza:add_direct_child(file_sharing_element(probe.url, meta));
				described[probe.url] = true; -- one per URL, however often the message repeats it
			end
		end
	end
end

-- Counts a probe's outcome once, whichever comes first: its result, or the message leaving without it.
local function count_outcome(probe, outcome)
	if probe.counted then return; end
	probe.counted = true;
	if outcome == "done" then
		count_done();
	elseif outcome == "blocked" then
		count_blocked();
	elseif outcome == "timeout" or outcome == "held-too-long" then
		count_timed_out();
	elseif outcome ~= "cancelled" then
		count_failed();
	end
end

-- Starts the probes of `probes` that the cache cannot answer, and calls `on_settled()` once all of them have
-- finished or `hold_timeout` has passed, whichever is first. Returns false, and never calls `on_settled`, when
-- nothing needs waiting for.
local function start_probes(probes, on_settled)
	local remaining, timer = 0, nil;
	local function settle()
		if timer then
			timer:stop();
			timer = nil;
		end
		for _, probe in ipairs(probes) do
			if not probe.counted then
				module:log("debug", "Metadata for %s not ready within %gs, delivering without it", probe.url, hold_timeout);
				count_outcome(probe, "held-too-long");
			end
		end
		on_settled();
	end
	for _, probe in ipairs(probes) do
		local cached = prober:lookup(probe.url);
		if cached then
			probe.meta = cached;
			count_cache_hits();
			count_outcome(probe, "done");
		else
			remaining = remaining + 1;
			jobs.watch(module, function (ok, result)
				if ok then
					probe.meta = result;
					if result.cached then count_cache_hits(); end
					count_outcome(probe, "done");
				else
					module:log("debug", "No metadata for %s: %s", probe.url, result);
					count_outcome(probe, result);
				end
				remaining = remaining - 1;
				if remaining == 0 and timer then -- no timer yet: still starting, or already delivered
					settle();
				end
			end, prober:probe(probe.url));
		end
	end
	if remaining == 0 then return false; end
	timer = module:add_timer(hold_timeout, function ()
		timer = nil; -- it has fired: nothing to stop
		settle();
	end);
	return true;
end

-- Removes what only this module may add, so that a client cannot pass off its own values as the server's.
local function strip_spoofed(stanza)
	stanza:remove_children("metadata", xmlns_metadata);
	for oob in stanza:childtags("x", xmlns_oob) do
		oob:remove_children("metadata", xmlns_metadata);
	end
end

local function collect_probes(stanza)
	local probes = {};
	for oob in stanza:childtags("x", xmlns_oob) do
		local url = oob:get_child_text("url");
		url = url and url:match("^%s*(.-)%s*$");
		-- Only http(s): an aesgcm:// link (OMEMO) or anything else is not ours to fetch, and no failure either.
		if url and url:lower():match("^https?://") and #probes < max_urls then
			table.insert(probes, { oob = oob; url = url });
		end
	end
	return probes;
end

-- Runs after every other handler of the message (they may still refuse it, and then nothing is fetched).
module:hook("muc-occupant-groupchat", function (event)
	local stanza = event.stanza;
	if not stanza:get_child("x", xmlns_oob) then
		if stanza:get_child("metadata", xmlns_metadata) then
			strip_spoofed(stanza);
		end
		return;
	end
	strip_spoofed(stanza);
	local probes = collect_probes(stanza);
	if async.ready() then
		-- c2s and s2s stanzas are handled in an async runner: waiting here holds this message (and the
		-- sender's next ones, keeping their order) while the loop serves everyone else.
		local wait, done = async.waiter();
		if start_probes(probes, done) then
			wait();
		end
		add_metadata(stanza, probes);
		return;
	end
	-- Not in a runner (a component connection, a module sending): hold the message ourselves and finish what
	-- core's handle_groupchat_to_room would have done once this event returned.
	local room, occupant = event.room, event.occupant;
	local held = start_probes(probes, function ()
		add_metadata(stanza, probes);
		local from = stanza.attr.from;
		stanza.attr.from = occupant and occupant.nick or room.jid;
		room:broadcast_message(stanza);
		stanza.attr.from = from;
	end);
	if not held then
		add_metadata(stanza, probes);
		return;
	end
	return true;
end, -100);
