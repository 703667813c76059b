-- mod_muc_media_metadata loaded into a fake module: the hook, what it adds to a message, holding and timeouts,
-- spoofing, counters, and configuration checks. A local HTTP server (tests/media_server.py) serves the media.
local fakes = require "media_fakes";
local st = require "util.stanza";
local async = require "util.async";
local socket = require "socket";

local xmlns_oob = "jabber:x:oob";
local xmlns_metadata = "xmpp:prosody.im/protocol/media-metadata#0";
local xmlns_sfs = "urn:xmpp:sfs:0";

-- tests/media_server.py on 127.0.0.1, and a second one on 127.0.0.2 that must never be contacted.
local function start_server(host)
	local pipe = assert(io.popen("exec python3 tests/media_server.py " .. host, "r"));
	local pid, port = pipe:read("n", "n");
	assert(pid and port, "media server did not start");
	return { pid = pid; port = port; pipe = pipe; url = function (path) return ("http://%s:%d%s"):format(host, port, path); end };
end

local server, blocked_server;
setup(function ()
	server = start_server("127.0.0.1");
	blocked_server = start_server("127.0.0.2");
end);
teardown(function ()
	for _, s in ipairs({ server, blocked_server }) do
		os.execute("kill " .. s.pid);
		s.pipe:close();
	end
end);

local options = {
	muc_media_metadata_allowed_networks = { "127.0.0.1/32" };
	muc_media_metadata_timeout = 5;
	muc_media_metadata_max_bytes = 1024 * 1024;
};

local function load(extra)
	local opts = {};
	for k, v in pairs(options) do opts[k] = v; end
	for k, v in pairs(extra or {}) do opts[k] = v; end
	local m = fakes.new_module("muc_media_metadata", "conference.example.org", opts);
	fakes.load_module(m);
	return m;
end

local function message(...)
	local msg = st.message({ from = "alice@example.org/phone"; to = "room@conference.example.org"; type = "groupchat"; id = "m1" })
		:text_tag("body", "look");
	for _, url in ipairs({ ... }) do
		msg:tag("x", { xmlns = xmlns_oob }):text_tag("url", url):up();
	end
	return msg;
end

-- A MUC room stand-in that records what core (or the module) broadcasts.
local function room()
	local r = { jid = "room@conference.example.org"; broadcasts = {} };
	function r:broadcast_message(stanza) table.insert(self.broadcasts, st.clone(stanza)); end
	return r;
end

-- Fires the hook the way core does for a c2s stanza: inside an async runner. Returns a status table whose
-- `returned` is set (to the handler's return value, boxed) once the handler has finished.
local function fire_in_runner(m, event)
	local status = {};
	local runner = async.runner(function ()
		status.returned = { m.hooks["muc-occupant-groupchat"].handler(event) };
	end);
	runner:run(true);
	return status;
end

local function metadata_of(oob)
	local metadata = oob:get_child("metadata", xmlns_metadata);
	if not metadata then return nil; end
	local fields = {};
	for child in metadata:childtags() do
		table.insert(fields, { child.name, child:get_text() });
	end
	return fields;
end

describe("mod_muc_media_metadata", function ()
	it("hooks groupchat messages after every other handler", function ()
		local m = load();
		assert.is_function(m.hooks["muc-occupant-groupchat"].handler);
		assert.equal(-100, m.hooks["muc-occupant-groupchat"].priority);
	end);

	it("passes a message without OOB untouched and without waiting", function ()
		local m = load();
		local stanza = message();
		local before = tostring(stanza);
		local status = fire_in_runner(m, { room = room(); stanza = stanza; occupant = { nick = "room@conference.example.org/Alice" } });
		assert.same({}, status.returned);
		assert.equal(before, tostring(stanza));
		assert.same({}, m.timers);
	end);

	it("holds the message until the probe finishes, then adds metadata in the seed's order", function ()
		local m = load();
		local stanza = message(server.url("/photo.png"));
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		assert.is_nil(status.returned, "the handler is waiting");
		fakes.pump_until(function () return status.returned ~= nil; end);
		local oob = stanza:get_child("x", xmlns_oob);
		local fields = metadata_of(oob);
		assert.same({ "bytes", "type", "width", "height", "blurhash" }, { fields[1][1], fields[2][1], fields[3][1], fields[4][1], fields[5][1] });
		assert.same({ "type", "image/png" }, fields[2]);
		assert.same({ { "width", "76" }, { "height", "52" } }, { fields[3], fields[4] });
		assert.matches("^[%w#$%%*+,%-.:;=?@%[%]^_{|}~]+$", fields[5][2]);
		assert.equal(4 + 2 * 4 * 3, #fields[5][2], "4x3 components by default");
		assert.is_true(m.timers[1].stopped, "the hold timer is stopped once all probes are done");
		assert.equal(1, m.counters.probes_done);
	end);

	it("adds an XEP-0447 file-sharing element with XEP-0446 metadata and a BlurHash thumbnail", function ()
		local m = load();
		local url = server.url("/photo.jpg");
		local stanza = message(url);
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		local sfs = assert(stanza:get_child("file-sharing", xmlns_sfs));
		assert.equal("inline", sfs.attr.disposition);
		local file = assert(sfs:get_child("file", "urn:xmpp:file:metadata:0"));
		assert.equal("image/jpeg", file:get_child_text("media-type"));
		assert.equal("76", file:get_child_text("width"));
		assert.equal("52", file:get_child_text("height"));
		assert.matches("^%d+$", file:get_child_text("size"));
		local thumbnail = assert(file:get_child("thumbnail", "urn:xmpp:thumbs:1"));
		assert.equal("image/blurhash", thumbnail.attr["media-type"]);
		local blurhash = stanza:get_child("x", xmlns_oob):get_child("metadata", xmlns_metadata):get_child_text("blurhash");
		local decoded = thumbnail.attr.uri:match("^data:image/blurhash,(.*)$"):gsub("%%(%x%x)", function (h) return string.char(tonumber(h, 16)); end);
		assert.equal(blurhash, decoded);
		assert.is_nil(thumbnail.attr.uri:find("#", 1, true), "no raw '#' in the URI");
		assert.equal(url, sfs:get_child("sources"):get_child("url-data", "http://jabber.org/protocol/url-data").attr.target);
	end);

	it("keeps a file-sharing element the sender made for the URL and adds none", function ()
		local m = load();
		local url = server.url("/photo.png?own-sfs");
		local stanza = message(url);
		stanza:tag("file-sharing", { xmlns = xmlns_sfs }):tag("file", { xmlns = "urn:xmpp:file:metadata:0" })
			:text_tag("name", "cat.png"):up()
			:tag("sources"):tag("url-data", { xmlns = "http://jabber.org/protocol/url-data"; target = url }):up():up():up();
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		local all = {};
		for sfs in stanza:childtags("file-sharing", xmlns_sfs) do table.insert(all, sfs); end
		assert.equal(1, #all);
		assert.equal("cat.png", all[1]:get_child("file", "urn:xmpp:file:metadata:0"):get_child_text("name"));
		assert.is_table(metadata_of(stanza:get_child("x", xmlns_oob)), "the seed's metadata is still added");
	end);

	it("adds one file-sharing element per URL, however often the message repeats it", function ()
		local m = load();
		local png, gif = server.url("/photo.png?repeated"), server.url("/photo.gif?repeated");
		local stanza = message(png, gif, png);
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		local targets = {};
		for sfs in stanza:childtags("file-sharing", xmlns_sfs) do
			table.insert(targets, sfs:get_child("sources"):get_child("url-data", "http://jabber.org/protocol/url-data").attr.target);
		end
		assert.same({ png, gif }, targets);
		for oob in stanza:childtags("x", xmlns_oob) do
			assert.is_table(metadata_of(oob), "every OOB element still gets the seed's metadata");
		end
	end);

	it("can leave the XEP-0447 element out", function ()
		local m = load({ muc_media_metadata_file_sharing = false });
		local stanza = message(server.url("/photo.gif"));
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		assert.is_nil(stanza:get_child("file-sharing", xmlns_sfs));
		assert.is_table(metadata_of(stanza:get_child("x", xmlns_oob)));
	end);

	it("gives each OOB element its own metadata", function ()
		local m = load();
		local stanza = message(server.url("/photo.webp"), server.url("/notes.txt"));
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		local types = {};
		for oob in stanza:childtags("x", xmlns_oob) do
			table.insert(types, oob:get_child("metadata", xmlns_metadata):get_child_text("type"));
		end
		assert.same({ "image/webp", "text/plain" }, types);
	end);

	it("removes metadata the sender put in, even when no probe succeeds", function ()
		local m = load();
		local stanza = message(server.url("/missing.png"));
		stanza:get_child("x", xmlns_oob):tag("metadata", { xmlns = xmlns_metadata }):text_tag("bytes", "1"):up();
		stanza:tag("metadata", { xmlns = xmlns_metadata }):up();
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		assert.is_nil(stanza:get_child("x", xmlns_oob):get_child("metadata", xmlns_metadata));
		assert.is_nil(stanza:get_child("metadata", xmlns_metadata));
		assert.equal(1, m.counters.probes_failed);
	end);

	it("never contacts a blocked address and counts it", function ()
		local m = load();
		local stanza = message(blocked_server.url("/photo.png"));
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		assert.is_nil(metadata_of(stanza:get_child("x", xmlns_oob)));
		assert.equal(1, m.counters.probes_blocked);
	end);

	it("answers a reposted link from the cache without holding the message", function ()
		local m = load();
		local url = server.url("/photo.png?repost");
		local first = fire_in_runner(m, { room = room(); stanza = message(url) });
		fakes.pump_until(function () return first.returned ~= nil; end);
		local stanza = message(url);
		local second = fire_in_runner(m, { room = room(); stanza = stanza });
		assert.same({}, second.returned, "finished at once");
		assert.is_table(metadata_of(stanza:get_child("x", xmlns_oob)));
		assert.equal(1, m.counters.cache_hits);
	end);

	it("delivers at the timeout without the metadata of a stalled probe", function ()
		local m = load();
		local stanza = message(server.url("/stall.png"), server.url("/notes.txt?stall-test"));
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		-- Let the quick probe finish; the stalled one cannot.
		local deadline = socket.gettime() + 10;
		while m.counters.probes_done < 1 and socket.gettime() < deadline do fakes.pump(0.2); end
		assert.is_nil(status.returned, "still held");
		assert.equal(5, m.timers[1].delay);
		m.timers[1].callback(); -- the hold timeout passes
		assert.same({}, status.returned);
		local oobs = {};
		for oob in stanza:childtags("x", xmlns_oob) do table.insert(oobs, oob); end
		assert.is_nil(metadata_of(oobs[1]));
		assert.is_table(metadata_of(oobs[2]));
		assert.equal(1, m.counters.probes_timed_out);
	end);

	it("holds and broadcasts the message itself outside an async runner", function ()
		local m = load();
		local r = room();
		local stanza = message(server.url("/photo.png?no-runner"));
		local event = { room = r; stanza = stanza; occupant = { nick = "room@conference.example.org/Alice" } };
		local returned = m.hooks["muc-occupant-groupchat"].handler(event);
		assert.is_true(returned, "core must not broadcast it");
		fakes.pump_until(function () return #r.broadcasts == 1; end);
		local sent = r.broadcasts[1];
		assert.equal("room@conference.example.org/Alice", sent.attr.from);
		assert.is_table(metadata_of(sent:get_child("x", xmlns_oob)));
		assert.equal("alice@example.org/phone", stanza.attr.from, "the sender's address is restored");
	end);

	it("ignores URLs it does not fetch, such as aesgcm:", function ()
		local m = load();
		local stanza = message("aesgcm://example.org/file.png#key");
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		assert.same({}, status.returned);
		assert.is_nil(metadata_of(stanza:get_child("x", xmlns_oob)));
		assert.equal(0, m.counters.probes_failed);
	end);

	-- Probes `url` in a message fired in a runner; returns the message's first OOB metadata fields.
	local function probe_one(m, url)
		local stanza = message(url);
		local status = fire_in_runner(m, { room = room(); stanza = stanza });
		fakes.pump_until(function () return status.returned ~= nil; end);
		return metadata_of(stanza:get_child("x", xmlns_oob));
	end

	local function audit_lines(m)
		local lines = {};
		for _, entry in ipairs(m.logs) do
			if entry.text:match("^AUDIT ") then table.insert(lines, entry.text); end
		end
		return lines;
	end

	it("re-reads its options on config-reloaded, with one audit line when they changed", function ()
		local m = load();
		local before = probe_one(m, server.url("/photo.png?reload-1"));
		assert.equal(4 + 2 * 4 * 3, #before[5][2]);
		m.options.muc_media_metadata_blurhash_x = 2;
		m.options.muc_media_metadata_timeout = 7;
		m.global_hooks["config-reloaded"].handler();
		local after = probe_one(m, server.url("/photo.png?reload-2"));
		assert.equal(4 + 2 * 2 * 3, #after[5][2], "the new prober's components");
		assert.equal(7, m.timers[#m.timers].delay, "the new hold timeout");
		local audits = audit_lines(m);
		assert.equal(1, #audits);
		assert.matches("^AUDIT media%-settings%-changed settings=\".*components_x=2 ", audits[1]);
		m.global_hooks["config-reloaded"].handler();
		assert.equal(1, #audit_lines(m), "an unchanged reload changes nothing");
	end);

	it("keeps its settings when a reload brings a bad option", function ()
		local m = load();
		m.options.muc_media_metadata_allowed_networks = { "10.0.0.0/33" };
		m.options.muc_media_metadata_blurhash_x = 2;
		m.global_hooks["config-reloaded"].handler();
		local errors = {};
		for _, entry in ipairs(m.logs) do
			if entry.level == "error" then table.insert(errors, entry.text); end
		end
		assert.same({ "Keeping the previous settings: muc_media_metadata_allowed_networks: Prefix length /33 is longer "
			.. "than 32 bits (bad-request)" }, errors);
		local fields = probe_one(m, server.url("/photo.png?bad-reload"));
		assert.equal(4 + 2 * 4 * 3, #fields[5][2], "the old prober, which may still reach 127.0.0.1");
		assert.same({}, audit_lines(m));
	end);

	it("refuses to load with a malformed allowed network", function ()
		assert.has_error(function () load({ muc_media_metadata_allowed_networks = { "10.0.0.0/33" } }); end,
			"muc_media_metadata_allowed_networks: Prefix length /33 is longer than 32 bits (bad-request)");
	end);
end);
