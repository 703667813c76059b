-- mod_muc_media_metadata loaded into a fake module: the hooks, what it adds to a message, holding and delivering
-- (order, timeouts, moderation, shutdown), spoofing, metrics, and configuration checks. A local HTTP server
-- (tests/media_server.py) serves the media.
local fakes = require "media_fakes";
local native = require "prosody_native";
local st = require "util.stanza";

local jobs = fakes.load_lib("prosody_native_jobs", fakes.new_module("media_spec", "conference.example.org"));

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

local room_jid = "room@conference.example.org";

-- A mod_muc stand-in: get_room_from_jid answers from `rooms`, as after a room was destroyed (or recreated).
local mod_muc = { rooms = {} };
function mod_muc.get_room_from_jid(jid) return mod_muc.rooms[jid]; end

local function load(extra)
	local opts = {};
	for k, v in pairs(options) do opts[k] = v; end
	for k, v in pairs(extra or {}) do opts[k] = v; end
	local m = fakes.new_module("muc_media_metadata", "conference.example.org", opts);
	m.dependencies.muc = mod_muc;
	fakes.load_module(m);
	return m, opts;
end

local function message(from, ...)
	local msg = st.message({ from = from; to = room_jid; type = "groupchat"; id = "m1" }):text_tag("body", "look");
	for _, url in ipairs({ ... }) do
		msg:tag("x", { xmlns = xmlns_oob }):text_tag("url", url):up();
	end
	return msg;
end

-- A MUC room stand-in with occupants by real JID; it records what is broadcast, with the sender as the room sees it.
local function room()
	local r = { jid = room_jid; broadcasts = {}; occupants = {} };
	function r:broadcast_message(stanza) table.insert(self.broadcasts, st.clone(stanza)); end
	function r:get_occupant_by_real_jid(real_jid) return self.occupants[real_jid]; end
	function r:join(real_jid, nick) self.occupants[real_jid] = { nick = room_jid .. "/" .. nick; role = "participant" }; end
	r:join("alice@example.org/phone", "Alice");
	r:join("bob@example.org/laptop", "Bob");
	return r;
end

-- A session stand-in that records what is sent to it.
local function session()
	local s = { sent = {} };
	function s.send(stanza) table.insert(s.sent, stanza); end
	return s;
end

-- Fires the muc-occupant-groupchat hook as core does; returns what it returned.
local function groupchat(m, r, stanza, origin)
	return m.hooks["muc-occupant-groupchat"].handler({ room = r; stanza = stanza; origin = origin or session();
		occupant = r:get_occupant_by_real_jid(stanza.attr.from) });
end

-- Fires the hook for a message from Alice and waits until the room has broadcast it; returns what was broadcast.
local function posted(m, ...)
	local r = room();
	assert.is_true(groupchat(m, r, message("alice@example.org/phone", ...)), "held: core must not broadcast it");
	fakes.pump_until(function () return #r.broadcasts == 1; end);
	return r.broadcasts[1];
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

local function bodies(stanzas)
	local texts = {};
	for _, stanza in ipairs(stanzas) do table.insert(texts, stanza:get_child_text("body")); end
	return texts;
end

local function metric(m, name, labels)
	local family = m.metrics[name];
	return family and family[labels or ""] or { value = 0; samples = {} };
end

-- How many probes ended with `outcome` (a label of the probe_duration histogram).
local function outcomes(m, outcome)
	return #metric(m, "probe_duration", outcome).samples;
end

describe("mod_muc_media_metadata", function ()
	local alice, bob = "alice@example.org/phone", "bob@example.org/laptop";

	it("hooks groupchat messages after every other handler, and stanzas to rooms before anything else", function ()
		local m = load();
		assert.equal(-100, m.hooks["muc-occupant-groupchat"].priority);
		for _, event in ipairs({ "message/bare", "message/full", "presence/bare", "presence/full" }) do
			assert.equal(1000, m.hooks[event].priority, event);
		end
		assert.is_nil(m.hooks["iq/full"], "IQs never wait");
	end);

	it("passes a message without OOB untouched and without holding it", function ()
		local m = load();
		local r, stanza = room(), message(alice);
		local before = tostring(stanza);
		assert.is_nil(groupchat(m, r, stanza), "core broadcasts it");
		assert.equal(before, tostring(stanza));
		assert.same({}, m.timers);
	end);

	it("holds a message until the probe finishes, then broadcasts it from the sender's nick with metadata", function ()
		local m = load();
		local r = room();
		local stanza = message(alice, server.url("/photo.png"));
		assert.is_true(groupchat(m, r, stanza), "taken out of the flow");
		assert.equal(1, metric(m, "held_messages").value);
		fakes.pump_until(function () return #r.broadcasts == 1; end);
		local sent = r.broadcasts[1];
		assert.equal(room_jid .. "/Alice", sent.attr.from);
		assert.equal(alice, stanza.attr.from, "the sender's address is restored");
		local fields = metadata_of(sent:get_child("x", xmlns_oob));
		assert.same({ "bytes", "type", "width", "height", "blurhash" }, { fields[1][1], fields[2][1], fields[3][1], fields[4][1], fields[5][1] });
		assert.same({ "type", "image/png" }, fields[2]);
		assert.same({ { "width", "76" }, { "height", "52" } }, { fields[3], fields[4] });
		assert.matches("^[%w#$%%*+,%-.:;=?@%[%]^_{|}~]+$", fields[5][2]);
		assert.equal(4 + 2 * 4 * 3, #fields[5][2], "4x3 components by default");
		assert.is_true(m.timers[1].stopped, "the hold timer is stopped once all probes are done");
		assert.equal(1, outcomes(m, "done"));
		assert.equal(0, metric(m, "held_messages").value);
		assert.equal(1, #metric(m, "hold").samples);
	end);

	it("adds an XEP-0447 file-sharing element with XEP-0446 metadata and a BlurHash thumbnail", function ()
		local m = load();
		local url = server.url("/photo.jpg");
		local sent = posted(m, url);
		local sfs = assert(sent:get_child("file-sharing", xmlns_sfs));
		assert.equal("inline", sfs.attr.disposition);
		local file = assert(sfs:get_child("file", "urn:xmpp:file:metadata:0"));
		assert.equal("image/jpeg", file:get_child_text("media-type"));
		assert.equal("76", file:get_child_text("width"));
		assert.equal("52", file:get_child_text("height"));
		assert.matches("^%d+$", file:get_child_text("size"));
		local thumbnail = assert(file:get_child("thumbnail", "urn:xmpp:thumbs:1"));
		assert.equal("image/blurhash", thumbnail.attr["media-type"]);
		local blurhash = sent:get_child("x", xmlns_oob):get_child("metadata", xmlns_metadata):get_child_text("blurhash");
		local decoded = thumbnail.attr.uri:match("^data:image/blurhash,(.*)$"):gsub("%%(%x%x)", function (h) return string.char(tonumber(h, 16)); end);
		assert.equal(blurhash, decoded);
		assert.is_nil(thumbnail.attr.uri:find("#", 1, true), "no raw '#' in the URI");
		assert.equal(url, sfs:get_child("sources"):get_child("url-data", "http://jabber.org/protocol/url-data").attr.target);
	end);

	it("keeps a file-sharing element the sender made for the URL and adds none", function ()
		local m = load();
		local r = room();
		local url = server.url("/photo.png?own-sfs");
		local stanza = message(alice, url);
		stanza:tag("file-sharing", { xmlns = xmlns_sfs }):tag("file", { xmlns = "urn:xmpp:file:metadata:0" })
			:text_tag("name", "cat.png"):up()
			:tag("sources"):tag("url-data", { xmlns = "http://jabber.org/protocol/url-data"; target = url }):up():up():up();
		groupchat(m, r, stanza);
		fakes.pump_until(function () return #r.broadcasts == 1; end);
		local all = {};
		for sfs in r.broadcasts[1]:childtags("file-sharing", xmlns_sfs) do table.insert(all, sfs); end
		assert.equal(1, #all);
		assert.equal("cat.png", all[1]:get_child("file", "urn:xmpp:file:metadata:0"):get_child_text("name"));
		assert.is_table(metadata_of(r.broadcasts[1]:get_child("x", xmlns_oob)), "the seed's metadata is still added");
	end);

	it("adds one file-sharing element per URL, however often the message repeats it", function ()
		local m = load();
		local png, gif = server.url("/photo.png?repeated"), server.url("/photo.gif?repeated");
		local sent = posted(m, png, gif, png);
		local targets = {};
		for sfs in sent:childtags("file-sharing", xmlns_sfs) do
			table.insert(targets, sfs:get_child("sources"):get_child("url-data", "http://jabber.org/protocol/url-data").attr.target);
		end
		assert.same({ png, gif }, targets);
		for oob in sent:childtags("x", xmlns_oob) do
			assert.is_table(metadata_of(oob), "every OOB element still gets the seed's metadata");
		end
	end);

	it("can leave the XEP-0447 element out", function ()
		local m = load({ muc_media_metadata_file_sharing = false });
		local sent = posted(m, server.url("/photo.gif"));
		assert.is_nil(sent:get_child("file-sharing", xmlns_sfs));
		assert.is_table(metadata_of(sent:get_child("x", xmlns_oob)));
	end);

	it("gives each OOB element its own metadata", function ()
		local m = load();
		local sent = posted(m, server.url("/photo.webp"), server.url("/notes.txt"));
		local types = {};
		for oob in sent:childtags("x", xmlns_oob) do
			table.insert(types, oob:get_child("metadata", xmlns_metadata):get_child_text("type"));
		end
		assert.same({ "image/webp", "text/plain" }, types);
	end);

	it("removes metadata the sender put in, even when no probe succeeds", function ()
		local m = load();
		local r = room();
		local stanza = message(alice, server.url("/missing.png"));
		stanza:get_child("x", xmlns_oob):tag("metadata", { xmlns = xmlns_metadata }):text_tag("bytes", "1"):up();
		stanza:tag("metadata", { xmlns = xmlns_metadata }):up();
		groupchat(m, r, stanza);
		fakes.pump_until(function () return #r.broadcasts == 1; end);
		assert.is_nil(r.broadcasts[1]:get_child("x", xmlns_oob):get_child("metadata", xmlns_metadata));
		assert.is_nil(r.broadcasts[1]:get_child("metadata", xmlns_metadata));
		assert.equal(1, outcomes(m, "failed"));
	end);

	it("removes spoofed metadata from a message without OOB", function ()
		local m = load();
		local stanza = message(alice):tag("metadata", { xmlns = xmlns_metadata }):text_tag("bytes", "1"):up();
		assert.is_nil(groupchat(m, room(), stanza));
		assert.is_nil(stanza:get_child("metadata", xmlns_metadata));
	end);

	it("never contacts a blocked address and counts it", function ()
		local m = load();
		local sent = posted(m, blocked_server.url("/photo.png"));
		assert.is_nil(metadata_of(sent:get_child("x", xmlns_oob)));
		assert.equal(1, outcomes(m, "blocked"));
	end);

	it("answers a reposted link from the cache without holding the message", function ()
		local m = load();
		local url = server.url("/photo.png?repost");
		posted(m, url);
		local stanza = message(alice, url);
		assert.is_nil(groupchat(m, room(), stanza), "core broadcasts it at once");
		assert.is_table(metadata_of(stanza:get_child("x", xmlns_oob)));
		assert.equal(1, outcomes(m, "cached"));
	end);

	it("delivers at the timeout without the metadata of a stalled probe, and cancels that probe", function ()
		local m = load();
		local r = room();
		local running = native.media.running();
		groupchat(m, r, message(alice, server.url("/stall.png"), server.url("/notes.txt?stall-test")));
		-- Let the quick probe finish; the stalled one cannot.
		fakes.pump_until(function () return outcomes(m, "done") == 1; end);
		assert.same({}, r.broadcasts, "still held");
		assert.equal(5, m.timers[1].delay);
		m.timers[1].callback(); -- the hold timeout passes
		assert.equal(1, #r.broadcasts);
		local oobs = {};
		for oob in r.broadcasts[1]:childtags("x", xmlns_oob) do table.insert(oobs, oob); end
		assert.is_nil(metadata_of(oobs[1]));
		assert.is_table(metadata_of(oobs[2]));
		assert.equal(1, outcomes(m, "cut-short"));
		assert.equal(1, metric(m, "holds_cut_short", "timeout").value);
		assert.equal(running, native.media.running(), "the stalled download was cancelled");
		assert.equal(0, jobs.pending_count(m));
	end);

	it("sheds a probe over the sender's limit, still delivers the message, and frees the count when the hold ends", function ()
		local m = load({ muc_media_metadata_max_per_sender = 1 });
		local r = room();
		assert.is_true(groupchat(m, r, message(alice, server.url("/stall.png?shed-1"), server.url("/stall.png?shed-2"))));
		assert.equal(1, metric(m, "probes_shed", "sender-busy").value);
		assert.equal(1, outcomes(m, "shed"));
		assert.same({}, r.broadcasts, "still held for the probe that runs");
		m.timers[1].callback(); -- the hold ends: its probe is cancelled, and Alice's count with it
		assert.equal(1, #r.broadcasts);
		local sent = posted(m, server.url("/photo.png?after-shed"));
		assert.is_table(metadata_of(sent:get_child("x", xmlns_oob)));
		assert.equal(1, metric(m, "probes_shed", "sender-busy").value, "nothing more shed");
	end);

	it("sheds every URL of a message from a sender already at their limit at once, answering cached ones", function ()
		local m = load({ muc_media_metadata_max_per_sender = 1 });
		local cached_url = server.url("/photo.png?busy-cached");
		posted(m, cached_url);
		local r = room();
		local stats_prober = assert(native.media.prober({}));
		local function stats() return stats_prober:stats(); end
		local idle = stats();
		assert.is_true(groupchat(m, r, message(alice, server.url("/stall.png?busy-1"))));
		local running = native.media.running();
		local timers = #m.timers;
		local stanza = message(alice, server.url("/stall.png?busy-2"), cached_url, server.url("/stall.png?busy-3"),
			"aesgcm://example.org/secret");
		local other = room();
		other.jid = "other@conference.example.org";
		stanza.attr.to = other.jid;
		assert.is_nil(groupchat(m, other, stanza), "another room, nothing to wait for: core broadcasts it now");
		assert.equal(timers, #m.timers, "nothing held");
		assert.equal(running, native.media.running(), "no job started");
		assert.equal(2, metric(m, "probes_shed", "sender-busy").value);
		assert.equal(2, outcomes(m, "shed"));
		assert.equal(1, outcomes(m, "cached"));
		local oobs = {};
		for oob in stanza:childtags("x", xmlns_oob) do table.insert(oobs, oob); end
		assert.is_nil(metadata_of(oobs[1]));
		assert.is_table(metadata_of(oobs[2]));
		assert.is_nil(metadata_of(oobs[3]));
		assert.is_table(stanza:get_child("file-sharing", xmlns_sfs));
		m.timers[#m.timers].callback(); -- the first message's hold ends: its probe is cancelled
		assert.equal(1, #r.broadcasts);
		fakes.pump_until(function ()
			local now = stats();
			return now.queued == idle.queued and now.in_flight == idle.in_flight;
		end);
	end);

	it("shares one download between probes of one URL, and aborts it when every probe is cancelled", function ()
		local m = load();
		local r = room();
		local url = server.url("/stall.png?single-flight");
		local prober = assert(native.media.prober({ allowed_networks = { "127.0.0.0/8" } }));
		local before = prober:stats();
		groupchat(m, r, message(alice, url));
		groupchat(m, r, message(bob, url .. "#fragment"));
		fakes.pump_until(function () return prober:stats().in_flight == before.in_flight + 1; end);
		assert.equal(before.queued, prober:stats().queued);
		assert.equal(2, #m.timers, "two messages held");
		m.timers[1].callback();
		m.timers[2].callback();
		assert.equal(2, #r.broadcasts);
		fakes.pump_until(function () return prober:stats().in_flight == before.in_flight; end);
		assert.equal(2, outcomes(m, "cut-short"));
	end);

	it("gives each probe at most the hold's time", function ()
		local m = load();
		local prober = assert(native.media.prober({ allowed_networks = { "127.0.0.0/8" }; timeout = 60 }));
		local results = {};
		jobs.watch(m, function (ok, code) results[1] = { ok, code }; end,
			prober:probe(server.url("/stall.png?deadline"), "carol@example.org", "room@conference.example.org", 2));
		-- With the fetch limit (60 s) this would outlast pump_until's 10 s; the stalled body ends at the deadline
		-- with what arrived (the PNG header), not cached. The 2 s leave a busy machine time to send that header
		-- (0.2 s timed out under load).
		fakes.pump_until(function () return results[1] ~= nil; end);
		assert.is_true(results[1][1]);
		assert.is_false(results[1][2].cached);
		local id, code = prober:probe(server.url("/photo.png"), "carol@example.org", "r", 0);
		assert.same({ nil, "too-late" }, { id, code });
	end);

	it("keeps a sender's later messages behind their held one, and nobody else's", function ()
		local m = load();
		local r = room();
		local slow, plain = message(alice, server.url("/photo.png?order")), message(alice);
		plain.tags[1][1] = "after";
		assert.is_true(groupchat(m, r, slow));
		assert.is_true(groupchat(m, r, plain), "waits behind the held one");
		assert.is_nil(groupchat(m, r, message(bob)), "Bob does not wait");
		assert.same({}, r.broadcasts);
		fakes.pump_until(function () return #r.broadcasts == 2; end);
		assert.same({ "look", "after" }, bodies(r.broadcasts));
		assert.is_table(metadata_of(r.broadcasts[1]:get_child("x", xmlns_oob)));
	end);

	it("hands a sender's presence and private messages back to core after their held message", function ()
		local m = load();
		local r = room();
		local handled = {};
		local host_events = fakes.prosody.hosts["conference.example.org"].events;
		local function record(event) table.insert(handled, { #r.broadcasts; event.stanza.name }); return true; end
		host_events.add_handler("presence/full", record);
		host_events.add_handler("message/full", record);
		groupchat(m, r, message(alice, server.url("/photo.png?presence")));
		local gate = m.hooks["presence/full"].handler;
		local leave = { origin = session(); stanza = st.presence({ from = alice; to = room_jid .. "/Alice"; type = "unavailable" }) };
		local pm = { origin = session(); stanza = st.message({ from = alice; to = room_jid .. "/Bob"; type = "chat" }) };
		assert.is_true(gate(leave), "waits in the line");
		leave.stanza.attr.to = nil; -- as mod_presence does with the one presence it sends to every room
		assert.is_true(m.hooks["message/full"].handler(pm), "waits in the line");
		assert.is_nil(gate({ origin = session(); stanza = st.presence({ from = bob; to = room_jid .. "/Bob" }) }), "Bob's passes");
		assert.is_nil(m.hooks["presence/full"].handler({ stanza = st.presence({ from = alice; to = "other@conference.example.org/A" }) }),
			"another room is another line");
		assert.equal(2, metric(m, "waiting_stanzas").value);
		fakes.pump_until(function () return #handled == 2; end);
		assert.same({ { 1; "presence" }, { 1; "message" } }, handled, "in order, after the broadcast");
		assert.equal(0, metric(m, "waiting_stanzas").value);
		host_events.remove_handler("presence/full", record);
		host_events.remove_handler("message/full", record);
	end);

	it("lets a groupchat message pass the gate to core's checks, but not a subject change", function ()
		local m = load();
		groupchat(m, room(), message(alice, server.url("/stall.png?gate")));
		local gate = m.hooks["message/bare"].handler;
		assert.is_nil(gate({ origin = session(); stanza = message(alice) }));
		local subject = st.message({ from = alice; to = room_jid; type = "groupchat" }):text_tag("subject", "new");
		assert.is_true(gate({ origin = session(); stanza = subject }));
		m:unload();
	end);

	it("holds a waiting subject change with a body again when core hands it back, keeping its place", function ()
		local m = load();
		local r = room();
		-- What mod_muc does with a message/bare the gate hands back: muc-occupant-groupchat, then the broadcast.
		local host_events = fakes.prosody.hosts["conference.example.org"].events;
		local function muc(event)
			if not groupchat(m, r, event.stanza, event.origin) then r:broadcast_message(event.stanza); end
			return true;
		end
		host_events.add_handler("message/bare", muc);
		local first, last = message(alice, server.url("/photo.png?first")), message(alice);
		local second = message(alice, server.url("/photo.gif?second")):text_tag("subject", "with a body: a message");
		second.tags[1][1], last.tags[1][1] = "second", "last";
		groupchat(m, r, first);
		assert.is_true(m.hooks["message/bare"].handler({ origin = session(); stanza = second }), "waits for its turn");
		assert.is_true(groupchat(m, r, last));
		fakes.pump_until(function () return #r.broadcasts == 3; end);
		host_events.remove_handler("message/bare", muc);
		assert.same({ "look", "second", "last" }, bodies(r.broadcasts));
		assert.is_table(metadata_of(r.broadcasts[2]:get_child("x", xmlns_oob)), "held for its own metadata");
	end);

	local refusals = {
		{ "kicked", function (r) r.occupants[alice] = nil; end, "cancel", "not-acceptable" };
		{ "devoiced", function (r) r.occupants[alice].role = "visitor"; end, "auth", "forbidden" };
		{ "in a destroyed room", function (r) r.destroying = true; r.occupants = {}; end, "cancel", "item-not-found" };
		{ "in a room destroyed with a tombstone", function (r)
			r.destroying = true;
			mod_muc.rooms[room_jid] = { _data = { destroyed = true; reason = "closed"; newjid = "new@conference.example.org" } };
		end, "cancel", "gone" };
	};
	for _, case in ipairs(refusals) do
		it("bounces a held message whose sender was " .. case[1] .. " with core's error, and never broadcasts it", function ()
			local m = load();
			local r, origin = room(), session();
			local stanza = message(alice, server.url("/photo.png?" .. case[4]));
			groupchat(m, r, stanza, origin);
			case[2](r);
			fakes.pump_until(function () return #origin.sent == 1; end);
			mod_muc.rooms = {};
			assert.same({}, r.broadcasts);
			local reply = origin.sent[1];
			assert.same({ "error", alice, room_jid, "m1" }, { reply.attr.type, reply.attr.to, reply.attr.from, reply.attr.id });
			local error_type, condition = reply:get_error();
			assert.same({ case[3], case[4] }, { error_type, condition });
			assert.equal(1, metric(m, "bounced_messages", case[4]).value);
		end);
	end

	it("names the new room in the error of a tombstone", function ()
		local m = load();
		local r, origin = room(), session();
		groupchat(m, r, message(alice, server.url("/photo.png?tombstone")), origin);
		r.destroying = true;
		mod_muc.rooms[room_jid] = { _data = { destroyed = true; reason = "moved"; newjid = "new@conference.example.org" } };
		fakes.pump_until(function () return #origin.sent == 1; end);
		mod_muc.rooms = {};
		local _, _, text = origin.sent[1]:get_error();
		assert.equal("moved", text);
		assert.equal("xmpp:new@conference.example.org?join", origin.sent[1]:get_child("error"):get_child_text("gone",
			"urn:ietf:params:xml:ns:xmpp-stanzas"));
	end);

	it("ends every hold of a line that grows past its limit", function ()
		local m = load({ muc_media_metadata_max_waiting = 2 });
		local r = room();
		groupchat(m, r, message(alice, server.url("/stall.png?full-1")));
		groupchat(m, r, message(alice, server.url("/stall.png?full-2")));
		assert.same({}, r.broadcasts);
		assert.is_true(groupchat(m, r, message(alice)), "the third is delivered by the module");
		assert.equal(3, #r.broadcasts, "all at once, in order");
		assert.equal(2, metric(m, "holds_cut_short", "line-full").value);
		assert.equal(0, jobs.pending_count(m));
	end);

	it("reads the line limit again when the configuration is reloaded", function ()
		local m, opts = load();
		local r = room();
		groupchat(m, r, message(alice, server.url("/stall.png?reload-1")));
		opts.muc_media_metadata_max_waiting = 1;
		m.hooks["config-reloaded"].handler({});
		assert.is_true(groupchat(m, r, message(alice)));
		assert.equal(2, #r.broadcasts, "the second stanza went past the new limit");
	end);

	for _, case in ipairs({ { "at shutdown", function (m) m.hooks["server-stopping"].handler({}); end, "shutdown" };
		{ "when unloaded", function (m) m.unload(); end, "unload" } }) do
		it("delivers every held message at once " .. case[1] .. ", then holds nothing", function ()
			local m = load();
			local r = room();
			groupchat(m, r, message(alice, server.url("/stall.png?stop-" .. case[3])));
			groupchat(m, r, message(alice));
			case[2](m);
			assert.equal(2, #r.broadcasts);
			assert.is_nil(metadata_of(r.broadcasts[1]:get_child("x", xmlns_oob)));
			assert.equal(1, metric(m, "holds_cut_short", case[3]).value);
			assert.equal(0, jobs.pending_count(m));
			assert.is_nil(groupchat(m, r, message(alice, server.url("/stall.png?after-" .. case[3]))), "no more holds");
		end);
	end

	it("ignores URLs it does not fetch, such as aesgcm:", function ()
		local m = load();
		local stanza = message(alice, "aesgcm://example.org/file.png#key");
		assert.is_nil(groupchat(m, room(), stanza));
		assert.is_nil(metadata_of(stanza:get_child("x", xmlns_oob)));
		assert.equal(0, outcomes(m, "failed"));
	end);

	-- Posts a message with `url`; returns the broadcast's first OOB metadata fields.
	local function probe_one(m, url)
		return metadata_of(posted(m, url):get_child("x", xmlns_oob));
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
		m.hooks["config-reloaded"].handler();
		local after = probe_one(m, server.url("/photo.png?reload-2"));
		assert.equal(4 + 2 * 2 * 3, #after[5][2], "the new prober's components");
		assert.equal(7, m.timers[#m.timers].delay, "the new hold timeout");
		local audits = audit_lines(m);
		assert.equal(1, #audits);
		assert.matches("^AUDIT media%-settings%-changed settings=\".*components_x=2 ", audits[1]);
		m.hooks["config-reloaded"].handler();
		assert.equal(1, #audit_lines(m), "an unchanged reload changes nothing");
	end);

	it("keeps its settings when a reload brings a bad option", function ()
		local m = load();
		m.options.muc_media_metadata_allowed_networks = { "10.0.0.0/33" };
		m.options.muc_media_metadata_blurhash_x = 2;
		m.hooks["config-reloaded"].handler();
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

	it("refuses to load with a malformed allowed target, NAT64 prefix or only-host", function ()
		assert.has_error(function () load({ muc_media_metadata_allowed_targets = { "upload.example.org" } }); end,
			"muc_media_metadata_allowed_targets: 'upload.example.org' is not a target like \"host:5281\" or "
			.. "\"https://host:5281/files/\" (no port) (bad-request)");
		assert.has_error(function () load({ muc_media_metadata_nat64_prefixes = { "10.0.0.0/8" } }); end,
			"muc_media_metadata_nat64_prefixes: '10.0.0.0/8' is not a NAT64 prefix: an IPv6 network of length 32, 40, 48, "
			.. "56, 64 or 96 (like 64:ff9b::/96) (bad-request)");
		assert.has_error(function () load({ muc_media_metadata_only_hosts = { "a b" } }); end,
			"muc_media_metadata_only_hosts: 'a b' is not a host name (bad-request)");
	end);

	it("refuses to load with a malformed allowed network", function ()
		assert.has_error(function () load({ muc_media_metadata_allowed_networks = { "10.0.0.0/33" } }); end,
			"muc_media_metadata_allowed_networks: Prefix length /33 is longer than 32 bits (bad-request)");
	end);
end);
