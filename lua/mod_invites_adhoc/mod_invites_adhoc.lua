-- mod_invites_adhoc: XEP-0401 (v0.6) invitations from any XMPP client, through ad-hoc commands (XEP-0050).
--
-- Replaces Prosody's module of the same name: installed in plugin_paths, this file is found first. Invitations are
-- made and kept by core mod_invites; this module adds what core's commands lack: a form for account invites
-- (username to reserve, roster subscription, validity, note), quotas of open invitations and of accounts created,
-- commands to list and revoke invitations (every user's, for admins, with who invited whom), and enforcement at
-- registration (a reserved name is kept, a token registers one account, even when two connections race).
-- Every submitted value is checked by the native library before anything is created.

local compat = module:require("prosody_native_compat");
compat.check_host(module, "local");
local native = module:require("prosody_native");
local async = compat.require("util.async");
local dataforms = compat.require("util.dataforms");
local datetime = compat.require("util.datetime");
local encodings = compat.require("util.encodings");
local errors = compat.require("util.error");
local jid = compat.require("util.jid");
local st = compat.require("util.stanza");
local modulemanager = compat.require("core.modulemanager");
local rostermanager = compat.require("core.rostermanager");
local usermanager = compat.require("core.usermanager");

local nodeprep = encodings.stringprep.nodeprep;

-- Options: read at load and again on config-reloaded (prosodyctl reload), so that a reload applies them.
local allow_user_invites, allow_contact_invites, allow_user_invite_roles, deny_user_invite_roles;
local max_open_invites, max_accounts, accounts_period, max_validity, max_note_length, prune_interval, prune_batch_size;

local function read_options()
	-- Whether users who are not admins may invite people to register here (contact invites with ibr=y).
	allow_user_invites = module:get_option_boolean("allow_user_invites", false);
	-- Whether users who are not admins may create contact invites at all.
	allow_contact_invites = module:get_option_boolean("allow_contact_invites", true);
	-- COMPAT 0.12: roles that override allow_user_invites; 13 uses the ":invite-users" permission instead.
	allow_user_invite_roles = module:get_option_set("allow_user_invites_by_roles", {});
	deny_user_invite_roles = module:get_option_set("deny_user_invites_by_roles", {});
	max_open_invites = compat.get_option_integer(module, "invites_adhoc_max_open_per_user", 10, 0, 10000);
	-- Accounts a user's invitations may create, in each accounts_period (0: in the user's whole lifetime).
	max_accounts = compat.get_option_integer(module, "invites_adhoc_max_accounts_per_user", 10, 0, 1000000);
	accounts_period = compat.get_option_period(module, "invites_adhoc_accounts_period", 0, 0, 10 * 365 * 86400);
	max_validity = compat.get_option_period(module, "invites_adhoc_max_validity", 30 * 86400, 3600, 365 * 86400);
	max_note_length = compat.get_option_integer(module, "invites_adhoc_max_note_length", 200, 1, 1000);
	prune_interval = compat.get_option_period(module, "invites_adhoc_prune_interval", 86400, 60, 7 * 86400);
	-- Steps of a pruning pass (a token, a user's tokens, a creator's records) between two turns of the event loop.
	prune_batch_size = compat.get_option_integer(module, "invites_adhoc_prune_batch_size", 100, 1, 10000);
end
read_options();

module:depends("adhoc");
local new_adhoc = module:require("adhoc").new;
local invites = module:depends("invites");

local xmlns_commands = "http://jabber.org/protocol/commands";
local xmlns_data = "jabber:x:data";
local xmlns_invitation = "urn:xmpp:invite#invitation";
local xmlns_pars = "urn:xmpp:pars:0";

local node_contact = "urn:xmpp:invite#invite";
local node_account = "urn:xmpp:invite#create-account";
local node_reset = "xmpp:prosody.im/mod_invites_adhoc#password-reset";
local node_list = "urn:prosody-native:invites#list";
local node_revoke = "urn:prosody-native:invites#revoke";
local node_list_all = "urn:prosody-native:invites#list-all";
local node_manage = "urn:prosody-native:invites#manage";

-- Shortest validity a user may ask for, and how long a password reset invite lasts (as in core).
local min_validity = 60;
local reset_validity = 86400;
-- Longest chain of inviters the manage command walks up (a loop in damaged data must not hang it).
local max_chain_length = 64;

local invite_errors = errors.init(module.name, xmlns_commands, {
	["remote-user"] = { "auth", "forbidden", "Only users of this server can create or manage its invitations" };
	["bad-form"] = { "modify", "bad-request", "The form is incomplete or malformed", "bad-payload" };
	["username-taken"] = { "cancel", "conflict", "That username is already registered" };
	["username-reserved"] = { "cancel", "conflict", "That username is reserved by another invitation" };
	["quota-exceeded"] = { "wait", "resource-constraint", "You have as many invitations as allowed" };
	["no-such-account"] = { "cancel", "item-not-found", "There is no such account on this server" };
	["no-such-invite"] = { "cancel", "item-not-found", "You have no open invitation with that token" };
	["outranked"] = { "auth", "forbidden", "That account's role outranks yours" };
	["internal-error"] = { "wait", "internal-server-error", "Could not store the invitation" };
	-- registration with an invitation
	["wrong-username"] = { "modify", "not-acceptable", "This invitation is for another username" };
	["invite-closed"] = { "auth", "forbidden", "The invitation has been revoked, has expired or was already used" };
	["invite-busy"] = { "auth", "forbidden", "The invitation is being used to register on another connection" };
	["inviter-quota"] = { "wait", "resource-constraint", "Whoever invited you cannot invite more new accounts for now" };
});

-- Counters for mod_http_openmetrics; kinds are those of the list command (contact, account-and-contact, account,
-- password-reset).
local created_metric = module:metric("counter", "created", "", "Invitations created, by kind", { "kind" });
local redeemed_metric = module:metric("counter", "redeemed", "",
	"Invitations used: an account registered, a password reset or a subscription pre-approved, by kind", { "kind" });
local revoked_metric = module:metric("counter", "revoked", "",
	"Invitations revoked by their creator or an admin, or replaced by a newer password reset, by kind", { "kind" });

-- Who created which invitation (creator -> token -> record): core keeps no creator for contact and reset invites
-- and cannot list invitations by creator. A map store, so that one invitation is written without the others; the
-- keyval view of the same store reads a creator's whole list.
local created_store = module:open_store("invites_adhoc", "map");
local created_lists = module:open_store("invites_adhoc");
-- mod_invites' own store (the same in 0.12 and 13): account invites under no user (token -> invite), contact invites
-- under their inviter (token -> expiry). Core has no call to check without deleting, list or prune, so this module
-- reads it directly.
local token_store = module:open_store("invite_token", "map");
local token_lists = module:open_store("invite_token");
-- Who invited whom: the accounts each user's invitations created (inviter -> invitee -> { at, kind }), which the
-- account quota counts, and for each account made with an invitation the inviter (invitee -> { by, at, kind }).
local invitees_store = module:open_store("invites_adhoc_invitees", "map");
local invitee_lists = module:open_store("invites_adhoc_invitees");
local invited_by_store = module:open_store("invites_adhoc_invited_by");

-- Admins always may invite new users and have no quotas. On 13, a role that says nothing about ":invite-users"
-- follows allow_user_invites (see may_invite_new_users), so add_permissions and remove_permissions override it.
compat.default_permission(module, "prosody:admin", ":invite-users");
compat.default_permission(module, "prosody:admin", ":unlimited-invites");

-- An error from the registry, with a text that says what to fix.
local function fail(code, text)
	local err = invite_errors.new(code);
	if text then
		err.text = text;
	end
	return err;
end

-- The native library answers nil, code, text; a full quota is its own error, anything else a bad form value.
local function native_fail(code, text)
	return fail(code == "quota-exceeded" and "quota-exceeded" or "bad-form", text);
end

local function audit(action, fields)
	compat.audit(module, action, fields);
end

-- XEP-0401: without in-band registration for invitees (mod_invites_register), a URI must not offer it.
local function is_invite_registration_on()
	return modulemanager.is_loaded(module.host, "invites_register");
end

local function user_jid(username)
	return username .. "@" .. module.host;
end

-- Whether the actor of a command (its ad-hoc data: the session decides on 13) may let their contact invites
-- register new accounts here (ibr=y).
local function may_invite_new_users(data)
	local roles = compat.legacy_roles(module, jid.bare(data.from));
	if roles then -- COMPAT 0.12: admins always, then the role lists, then allow_user_invites
		if roles["prosody:admin"] then return true; end
		for role in allow_user_invite_roles do
			if roles[role] then return true; end
		end
		for role in deny_user_invite_roles do
			if roles[role] then return false; end
		end
		return allow_user_invites;
	end
	local permitted = compat.may(module, ":invite-users", data);
	if permitted == nil then
		return allow_user_invites;
	end
	return permitted;
end

local function is_unlimited(actor)
	return compat.may(module, ":unlimited-invites", actor) == true;
end

-- The kind of an invitation we recorded, in the words of Prosody 13's invites_page_supports.
local function invite_kind(record)
	if record.type == "contact" then
		return record.allow_registration and "account-and-contact" or "contact";
	end
	return record.type;
end

-- The kind of an invitation as mod_invites keeps it (a stored account invite, or a validated one at registration).
local function core_kind(invite)
	if invite.type == "roster" then
		return "account-and-contact";
	elseif invite.additional_data and invite.additional_data.allow_reset then
		return "password-reset";
	end
	return "account";
end

-- Whether using an invitation of this kind makes a new account (what the account quota counts).
local function creates_account(kind)
	return kind == "account" or kind == "account-and-contact";
end

-- The local user whose invitation this is: the inviter of a contact invite, or who ran our account invite command;
-- nil for invitations an admin made with prosodyctl or the shell.
local function inviter_of(invite)
	if invite.type == "roster" then
		return invite.inviter or jid.node(invite.jid);
	end
	local node, host = jid.split(invite.additional_data and invite.additional_data.source);
	if host == module.host then
		return node;
	end
	return nil;
end

-- The local account an account invitation depends on: its inviter, or the account a password reset link is for.
-- Once that account is deleted, the invitation must register nothing (a reset link would register the name anew).
local function account_of(invite)
	return inviter_of(invite) or (invite.additional_data and invite.additional_data.allow_reset) or nil;
end

-- Open account invitations (token -> invite) in mod_invites' store, whoever made them; nil, err when unreadable.
local function open_account_invites(now)
	local all, err = token_lists:get(nil);
	if err then return nil, err; end
	local open = {};
	for token, invite in pairs(all or {}) do
		if type(invite) == "table" and (tonumber(invite.expires) or 0) > now then
			open[token] = invite;
		end
	end
	return open;
end

-- Tokens of the open account invitations that reserve `username` (for its registration or its password reset).
local function reserving_tokens(username, open)
	local tokens = {};
	for token, invite in pairs(open) do
		if invite.type == "register" and jid.node(invite.jid) == username then
			tokens[token] = true;
		end
	end
	return tokens;
end

-- Whether an invitation we recorded is still usable: unexpired, and still in mod_invites' store (using and revoking
-- remove it). A storage error is not an answer: nil, err, so that nothing is forgotten because of it.
local function is_open(username, token, record, now)
	if (tonumber(record.expires) or 0) <= now then
		return false;
	end
	if record.allow_registration then
		local invite, err = token_store:get(nil, token);
		if err then return nil, err; end
		if not invite then return false; end
	end
	if record.type == "contact" then
		local expires, err = token_store:get(username, token);
		if err then return nil, err; end
		if not expires then return false; end
	end
	return true;
end

-- The user's open invitations ({ token, record }, oldest first) and all their records, forgetting closed ones;
-- nil, err when a store cannot be read.
local function open_invites(username)
	local records, err = created_lists:get(username);
	if err then return nil, err; end
	records = records or {};
	local now, open = os.time(), {};
	for token, record in pairs(records) do
		local is, check_err = is_open(username, token, record, now);
		if check_err then return nil, check_err; end
		if is then
			table.insert(open, { token = token; record = record });
		else
			local ok, set_err = created_store:set(username, token, nil);
			if not ok then
				module:log("warn", "Cannot forget a closed invitation of %s: %s", username, set_err);
			end
		end
	end
	table.sort(open, function (a, b)
		if a.record.created ~= b.record.created then return a.record.created < b.record.created; end
		return (a.record.serial or 0) < (b.record.serial or 0);
	end);
	return open, records;
end

-- Every invitation mod_invites makes is counted; those of our commands are audited by the command, which knows its
-- actor, and the others (prosodyctl shell, other modules) here. `own_creation` is consumed by the event, which
-- mod_invites fires before any storage call could let another creation in.
local own_creation = false;

local function create(create_invite, ...)
	own_creation = true;
	local invite, err = create_invite(...);
	own_creation = false;
	return invite, err;
end

module:hook("invite-created", function (invite)
	local ours = own_creation;
	own_creation = false;
	local kind;
	if invite.type == "roster" then
		kind = invite.allow_registration and "account-and-contact" or "contact";
	else
		kind = core_kind(invite);
	end
	created_metric:with_labels(kind):add(1);
	if not ours then
		audit("invite-created", { kind = kind; account = invite.type == "register" and jid.node(invite.jid) or nil;
			via = "mod_invites" });
	end
end);

-- Closes an invitation in mod_invites' store, so that its token no longer works.
local function close_invite(username, token, record)
	if record.allow_registration then
		local ok, err = token_store:set(nil, token, nil);
		if not ok then return nil, err; end
	end
	if record.type == "contact" then
		local ok, err = token_store:set(username, token, nil);
		if not ok then return nil, err; end
	end
	return true;
end

-- Closes an open invitation and forgets our record of it; logs its audit line and counts it. `entry` is { creator,
-- token, record, owner }: `creator` the user who made it (nil: the server, for invitations nobody recorded here) and
-- `owner` the user whose contact it makes, when that is not the creator. `actor` is nil when nobody asked (a deleted
-- account's invitations).
local function revoke(actor, entry, reason)
	local creator, token, record = entry.creator, entry.token, entry.record;
	local ok, err = close_invite(entry.owner or creator, token, record);
	if ok and creator then
		ok, err = created_store:set(creator, token, nil);
	end
	if not ok then
		module:log("error", "Cannot revoke an invitation of %s: %s", creator or module.host, err);
		return nil, fail("internal-error", "Could not revoke the invitation");
	end
	local kind = invite_kind(record);
	revoked_metric:with_labels(kind):add(1);
	audit("invite-revoked", { actor = actor; creator = creator and user_jid(creator) or module.host; kind = kind;
		account = record.username; reason = reason });
	return true;
end

-- Creation order within one second (created_at has whole seconds).
local last_serial = 0;

-- Records who created an invitation; an invitation that cannot be recorded is closed again at once.
local function remember(username, invite, record)
	last_serial = last_serial + 1;
	record.created, record.expires, record.serial = invite.created_at, invite.expires, last_serial;
	record.uri, record.landing_page = invite.uri, invite.landing_page;
	local ok, err = created_store:set(username, invite.token, record);
	if not ok then
		module:log("error", "Cannot record an invitation of %s, closing it: %s", username, err);
		close_invite(username, invite.token, record);
		return nil, fail("internal-error");
	end
	return true;
end

-- How many accounts `username`'s invitations created in the quota period; nil, err when unreadable.
local function accounts_created(username, now)
	local invitees, err = invitee_lists:get(username);
	if err then return nil, err; end
	local since = accounts_period > 0 and now - accounts_period or nil;
	local count = 0;
	for _, entry in pairs(invitees or {}) do
		if not since or (tonumber(entry.at) or 0) > since then
			count = count + 1;
		end
	end
	return count;
end

-- Checks the quota of open invitations; returns the user's open invitations, or nil, error.
local function check_open_quota(data, username)
	local open, err = open_invites(username);
	if not open then
		module:log("error", "Cannot read the invitations of %s: %s", username, err);
		return nil, fail("internal-error", "Could not read your invitations");
	end
	if is_unlimited(data) then
		return open;
	end
	local remaining, code, text = native.invite.quota(#open, max_open_invites);
	if not remaining then return nil, native_fail(code, text); end
	return open;
end

-- Whether one more invitation that can create an account stays within the account quota, counting the accounts
-- already created and the user's open invitations that could still create one (as ejabberd's max_invites does).
-- Returns true, or false and why, or nil and an internal error.
local function within_account_quota(data, username, open)
	if is_unlimited(data) then
		return true;
	end
	local used, err = accounts_created(username, os.time());
	if not used then
		module:log("error", "Cannot read whom %s invited: %s", username, err);
		return nil, fail("internal-error", "Could not read your invitations");
	end
	local pending = 0;
	for _, entry in ipairs(open) do
		if creates_account(invite_kind(entry.record)) then
			pending = pending + 1;
		end
	end
	local remaining, _, text = native.invite.account_quota(used, pending, max_accounts, accounts_period);
	if not remaining then
		return false, text;
	end
	return true;
end

-- Who invited `username`, then who invited them, and so on ({ username, by, at, kind } each): the chain up to an
-- account that was made without an invitation of a user. nil, err when unreadable.
local function chain_of(username)
	local chain, seen = {}, {};
	local current = username;
	while current and not seen[current] and #chain < max_chain_length do
		seen[current] = true;
		local entry, err = invited_by_store:get(current);
		if err then return nil, err; end
		if not entry then break; end
		table.insert(chain, { username = current; by = entry.by; at = entry.at; kind = entry.kind });
		current = entry.by;
	end
	return chain;
end

-- The accounts `username`'s invitations created ({ username, at, kind, is_current }, oldest first); nil, err when
-- unreadable. An account is current while its own record names this inviter: one that was deleted has none (or, when
-- its name was registered again, one of the newer account), and the ledger keeps it under "name@date" once the same
-- inviter brings a newer account of that name.
local function invitees_of(username)
	local invitees, err = invitee_lists:get(username);
	if err then return nil, err; end
	local list = {};
	for key, entry in pairs(invitees or {}) do
		local invitee, former = key:match("^([^@]*)(@?)");
		local at = tonumber(entry.at) or 0;
		local is_current = false;
		if former == "" then
			local own, own_err = invited_by_store:get(invitee);
			if own_err then return nil, own_err; end
			is_current = own ~= nil and own.by == username and tonumber(own.at) == at;
		end
		table.insert(list, { username = invitee; at = at; kind = entry.kind; is_current = is_current });
	end
	table.sort(list, function (a, b)
		if a.at ~= b.at then return a.at < b.at; end
		if a.username ~= b.username then return a.username < b.username; end
		return b.is_current and not a.is_current; -- a deleted account before the newer one of its name (same second)
	end);
	return list;
end

-- Records who invited a new account (the chain admins see, and the inviter's account quota). An entry the
-- inviter's ledger has under that name is of a deleted account, and still counts: it moves to "name@date".
local function record_invitee(username, inviter, kind, now)
	local ok, err = invited_by_store:set(username, { by = inviter; at = now; kind = kind });
	if ok and inviter then
		local former;
		former, err = invitees_store:get(inviter, username);
		ok = not err;
		if ok and former then
			ok, err = invitees_store:set(inviter, ("%s@%d"):format(username, tonumber(former.at) or 0), former);
		end
		if ok then
			ok, err = invitees_store:set(inviter, username, { at = now; kind = kind });
		end
	end
	if not ok then
		module:log("error", "Cannot record that %s invited %s: %s", inviter or "the server", username, err);
	end
end

-- Tokens being redeemed right now: token -> the session (or, for web registration, the event) that presented it.
-- Claimed before any storage call of the registration, so that two connections holding one token cannot both pass
-- while storage answers asynchronously. Weak values: a claim ends with its holder. `spent` marks a token that
-- created an account, until pruning finds it gone from storage.
local claims = setmetatable({}, { __mode = "v" });
local spent = {};

local function claim(token, holder)
	local current = claims[token];
	if current == spent then
		return nil, "invite-closed";
	elseif current and current ~= holder and not current.destroyed then
		return nil, "invite-busy";
	end
	claims[token] = holder;
	return true;
end

local function release(token, holder)
	if claims[token] == holder then
		claims[token] = nil;
	end
end

local function result_layout(with_landing_page)
	local layout = {
		title = "Your invite has been created";
		{ name = "FORM_TYPE"; type = "hidden"; value = xmlns_invitation };
		{ name = "uri"; type = "text-single"; label = "Invite URI"; desc = "This link can be opened with some XMPP clients" };
	};
	if with_landing_page then
		table.insert(layout, { name = "landing-url"; type = "text-single"; label = "Invite web page"; desc = "Share this link" });
	end
	table.insert(layout, { name = "expire"; type = "text-single"; label = "Invite valid until" });
	return dataforms.new(layout);
end

-- XEP-0401: the result carries uri, landing-url (when the server has a landing page) and expire.
local result_form = result_layout(true);
local result_form_without_page = result_layout(false);

local function invite_result(invite, note)
	-- Not result_forms[invite.landing_page ~= nil]: Lua 5.4.4 miscompiles a comparison used as an index (nil).
	local layout = result_form_without_page;
	if invite.landing_page then
		layout = result_form;
	end
	return {
		status = "completed";
		info = note;
		result = {
			layout = layout;
			values = { uri = invite.uri; ["landing-url"] = invite.landing_page; expire = datetime.datetime(invite.expires) };
		};
	};
end

local function error_result(err)
	return { status = "error"; error = err };
end

-- The actor of a command and their username here; the guard below has already turned users of other hosts away.
local function local_actor(data)
	local username, host = jid.split(data.from);
	if host ~= module.host or not username then
		return nil;
	end
	return jid.bare(data.from), username;
end

local function is_cancel(data)
	return data.action == "cancel" or (data.form and data.form.attr.type == "cancel");
end

-- Runs a command that takes one form: shows it, then hands the parsed fields to `submit(fields, data)`.
-- `layout` is a form or a function that returns one (for forms built from options); `initial(data)` may supply
-- values for the form (or a finished reply instead).
local function form_command(layout, submit, initial)
	return function (_, data, state)
		if is_cancel(data) then
			return { status = "canceled" };
		end
		if not local_actor(data) then
			return error_result(fail("remote-user"));
		end
		local form = type(layout) == "function" and layout() or layout;
		if not data.form then
			if state then
				return error_result(fail("bad-form", "Submit the form to complete the command"));
			end
			local values;
			if initial then
				local reply;
				values, reply = initial(data);
				if reply then return reply; end
			end
			return { status = "executing"; actions = { "complete"; default = "complete" }; form = { layout = form; values = values } },
				"executing";
		end
		local fields, form_errors = form:data(data.form);
		if form_errors then
			local field, why = next(form_errors);
			return error_result(fail("bad-form", ("%s: %s"):format(field, why)));
		end
		return submit(fields, data);
	end;
end

local function is_blank(s)
	return s == nil or not s:find("%S");
end

-- Contact invite (XEP-0401 "User Invitation"): made at once, no form, as the XEP asks. With ibr=y when the actor
-- may invite new users and the account quota allows one more; otherwise without, and a note says why.
local function contact_command(_, data)
	if is_cancel(data) then
		return { status = "canceled" };
	end
	local actor, username = local_actor(data);
	if not actor then return error_result(fail("remote-user")); end
	local open, quota_err = check_open_quota(data, username);
	if not open then return error_result(quota_err); end
	local allow_registration, note = is_invite_registration_on() and may_invite_new_users(data), nil;
	if allow_registration then
		local within, why = within_account_quota(data, username, open);
		if within == nil then return error_result(why); end
		if not within then
			allow_registration, note = false, ("This invitation does not let the invitee register here. %s"):format(why);
		end
	end
	local invite, err = create(invites.create_contact, username, allow_registration, { source = data.from });
	if not invite then
		module:log("error", "Cannot create a contact invite for %s: %s", actor, err);
		return error_result(fail("internal-error"));
	end
	local record = { type = "contact"; allow_registration = allow_registration };
	local remembered, remember_err = remember(username, invite, record);
	if not remembered then return error_result(remember_err); end
	local kind = invite_kind(record);
	audit("invite-created", { actor = actor; kind = kind });
	return invite_result(invite, note);
end

-- The account invite form names the longest validity, an option: built again when the options change.
local account_form, account_form_validity;
local function account_invite_form()
	if account_form_validity ~= max_validity then
		account_form_validity = max_validity;
		account_form = dataforms.new({
			title = "Create new account invite";
			instructions = "Everything is optional: without a username, the invitee chooses one.";
			{ name = "username"; type = "text-single"; label = "Username";
				desc = "Reserve this username: the invitation registers only this account" };
			{ name = "roster-subscription"; type = "boolean"; label = "Roster subscription";
				desc = "Add the new account to your contacts, and you to theirs" };
			{ name = "validity"; type = "text-single"; label = "Valid for";
				desc = ("For example 1 hour, 7 days or 2 weeks, at most %s; empty for the server's default")
					:format(native.invite.describe_period(max_validity)) };
			{ name = "note"; type = "text-single"; label = "Note"; desc = "A reminder for you, shown when you list your invitations" };
		});
	end
	return account_form;
end

-- Checks the account form's values; returns { username, roster_subscription, ttl, note } or nil, error.
local function read_account_fields(fields)
	local options = { roster_subscription = fields["roster-subscription"] == true };
	if not is_blank(fields.username) then
		local shaped, code, text = native.invite.username(fields.username);
		if not shaped then return nil, native_fail(code, text); end
		-- Strict, as registration is (mod_register_ibr): a name it would refuse must never be reserved.
		local username = nodeprep(shaped, true);
		if not username then
			return nil, fail("bad-form", ("The username '%s' is not allowed on this server"):format(shaped));
		end
		if usermanager.user_exists(username, module.host) then
			return nil, fail("username-taken", ("The username '%s' is already registered"):format(username));
		end
		local open, err = open_account_invites(os.time());
		if not open then
			module:log("error", "Cannot read the open account invitations: %s", err);
			return nil, fail("internal-error");
		end
		if next(reserving_tokens(username, open)) then
			return nil, fail("username-reserved", ("The username '%s' is reserved by another invitation"):format(username));
		end
		options.username = username;
	end
	if not is_blank(fields.validity) then
		local seconds, code, text = native.invite.validity(fields.validity, min_validity, max_validity);
		if not seconds then return nil, native_fail(code, text); end
		options.ttl = seconds;
	end
	if not is_blank(fields.note) then
		local note, code, text = native.invite.note(fields.note, max_note_length);
		if not note then return nil, native_fail(code, text); end
		options.note = note;
	end
	return options;
end

-- Account invite (XEP-0401 "Account Creation"), admins only by default.
local function create_account_invite(fields, data)
	local actor, username = local_actor(data);
	local options, err = read_account_fields(fields);
	if not options then return error_result(err); end
	local open, quota_err = check_open_quota(data, username);
	if not open then return error_result(quota_err); end
	local within, why = within_account_quota(data, username, open);
	if within == nil then return error_result(why); end
	if not within then return error_result(fail("quota-exceeded", why)); end
	local invite, create_err = create(invites.create_account, options.username, {
		source = data.from;
		note = options.note;
		roster_subscription = options.roster_subscription or nil;
	}, options.ttl);
	if not invite then
		module:log("error", "Cannot create an account invite for %s: %s", actor, create_err);
		return error_result(fail("internal-error"));
	end
	local remembered, remember_err = remember(username, invite, {
		type = "account"; allow_registration = true; username = options.username; note = options.note;
	});
	if not remembered then return error_result(remember_err); end
	audit("invite-created", { actor = actor; kind = "account"; account = options.username });
	return invite_result(invite);
end

local reset_form = dataforms.new({
	title = "Generate Password Reset Invite";
	{ name = "accountjid"; type = "jid-single"; required = true;
		label = "The XMPP ID for the account to generate a password reset invite for" };
});

-- Closes the open password reset invitations of `target` (whoever made them): a new one replaces them, so that one
-- link is open per account. Returns how many were closed, or nil, err.
local function close_older_resets(target)
	local open, err = open_account_invites(os.time());
	if not open then return nil, err; end
	local closed = 0;
	for token, invite in pairs(open) do
		if core_kind(invite) == "password-reset" and invite.additional_data.allow_reset == target then
			local ok, set_err = token_store:set(nil, token, nil);
			if not ok then return nil, set_err; end
			closed = closed + 1;
			revoked_metric:with_labels("password-reset"):add(1);
		end
	end
	return closed;
end

-- Password reset invite, admins only by default (as in Prosody 13, on 0.12 too). On 13 whoever holds the command
-- (add_permissions) may not reset an account whose role outranks theirs.
local function create_reset_invite(fields, data)
	local actor, username = local_actor(data);
	local target, host = jid.split(fields.accountjid);
	if host ~= module.host or not target or not usermanager.user_exists(target, module.host) then
		return error_result(fail("no-such-account", ("%s is not an account on %s"):format(fields.accountjid, module.host)));
	end
	local outranked, target_role, actor_role = compat.outranks(module, target, data);
	if outranked then
		audit("invite-refused", { actor = actor; kind = "password-reset"; account = target; reason = "outranked";
			role = target_role; actor_role = actor_role });
		return error_result(fail("outranked",
			("The role of %s (%s) outranks yours (%s)"):format(user_jid(target), target_role, actor_role)));
	end
	local open, quota_err = check_open_quota(data, username);
	if not open then return error_result(quota_err); end
	local replaced, close_err = close_older_resets(target);
	if not replaced then
		module:log("error", "Cannot close the older password reset invitations of %s: %s", target, close_err);
		return error_result(fail("internal-error"));
	end
	local invite, err = create(invites.create_account_reset, target, reset_validity);
	if not invite then
		module:log("error", "Cannot create a password reset invite for %s: %s", actor, err);
		return error_result(fail("internal-error"));
	end
	local remembered, remember_err = remember(username, invite, { type = "password-reset"; allow_registration = true; username = target });
	if not remembered then return error_result(remember_err); end
	audit("invite-created", { actor = actor; kind = "password-reset"; account = target; replaced = replaced > 0 and replaced or nil });
	return invite_result(invite);
end

local function describe(record)
	local text = invite_kind(record);
	if record.username then
		text = ("%s for '%s'"):format(text, record.username);
	end
	text = ("%s, valid until %s"):format(text, datetime.datetime(record.expires));
	if record.note then
		text = ("%s: %s"):format(text, record.note);
	end
	return text;
end

-- A multi-item result form (XEP-0004 <reported/> and <item/>), which util.dataforms does not build.
local function table_form(title, columns, rows)
	local form = st.stanza("x", { xmlns = xmlns_data; type = "result" })
		:text_tag("title", title)
		:tag("reported");
	for _, column in ipairs(columns) do
		form:tag("field", { var = column.var; label = column.label; type = "text-single" }):up();
	end
	form:up();
	for _, row in ipairs(rows) do
		form:tag("item");
		for _, column in ipairs(columns) do
			form:tag("field", { var = column.var }):text_tag("value", row[column.var] or ""):up();
		end
		form:up();
	end
	return form;
end

local list_columns = {
	{ var = "token"; label = "Token" };
	{ var = "kind"; label = "Kind" };
	{ var = "username"; label = "Username" };
	{ var = "expire"; label = "Valid until" };
	{ var = "note"; label = "Note" };
	{ var = "uri"; label = "Invite URI" };
};

local function list_row(token, record)
	return {
		token = token; kind = invite_kind(record); username = record.username;
		expire = datetime.datetime(record.expires); note = record.note; uri = record.uri;
	};
end

local function list_command(_, data)
	local actor, username = local_actor(data);
	if not actor then return error_result(fail("remote-user")); end
	local open, err = open_invites(username);
	if not open then
		module:log("error", "Cannot read the invitations of %s: %s", username, err);
		return error_result(fail("internal-error", "Could not read your invitations"));
	end
	local rows = {};
	for _, entry in ipairs(open) do
		table.insert(rows, list_row(entry.token, entry.record));
	end
	return {
		status = "completed";
		info = #open == 0 and "You have no open invitations" or nil;
		other = table_form("Your open invitations", list_columns, rows);
	};
end

local revoke_form = dataforms.new({
	title = "Revoke an invitation";
	instructions = "The invitation's link stops working at once.";
	{ name = "token"; type = "list-single"; required = true; label = "Invitation" };
});

local function revoke_choices(data)
	local _, username = local_actor(data);
	local open = open_invites(username);
	if not open then return nil, error_result(fail("internal-error", "Could not read your invitations")); end
	if #open == 0 then
		return nil, { status = "completed"; info = "You have no open invitations to revoke" };
	end
	local choices = {};
	for _, entry in ipairs(open) do
		table.insert(choices, { label = describe(entry.record); value = entry.token });
	end
	return { token = choices };
end

local function revoke_invite(fields, data)
	local actor, username = local_actor(data);
	local token, code, text = native.invite.token(fields.token);
	if not token then return error_result(native_fail(code, text)); end
	local open, err = open_invites(username);
	if not open then
		module:log("error", "Cannot read the invitations of %s: %s", username, err);
		return error_result(fail("internal-error", "Could not read your invitations"));
	end
	for _, entry in ipairs(open) do
		if entry.token == token then
			local ok, revoke_err = revoke(actor, { creator = username; token = token; record = entry.record }, "revoked");
			if not ok then return error_result(revoke_err); end
			return { status = "completed"; info = "The invitation has been revoked" };
		end
	end
	return error_result(fail("no-such-invite"));
end

-- An open account invitation in mod_invites' store as an entry of the server ({ token, record, owner }), for
-- invitations nobody recorded here (made with prosodyctl, the shell or another module).
local function account_entry(token, invite)
	local kind = core_kind(invite);
	local contact = kind == "account-and-contact";
	return { token = token; owner = contact and jid.node(invite.jid) or nil; record = {
		type = contact and "contact" or kind; allow_registration = true; username = not contact and jid.node(invite.jid) or nil;
		created = tonumber(invite.created_at) or 0; expires = tonumber(invite.expires) or 0; uri = invite.uri;
	} };
end

-- Open account invitations nobody recorded here (not in `recorded`), as entries of the server; and all open account
-- invitations (token -> invite). nil, err when unreadable.
local function unrecorded_account_invites(recorded, now)
	local open, err = open_account_invites(now);
	if not open then return nil, err; end
	local list = {};
	for token, invite in pairs(open) do
		if not recorded[token] then
			table.insert(list, account_entry(token, invite));
		end
	end
	return list, open;
end

-- Open contact-only invitations of `username` nobody recorded here, as entries of the server. Core keeps only their
-- expiry (token -> expires), so the URI is rebuilt as mod_invites builds it; those with an account part are in
-- `account` (the open account invitations) and listed with them. nil, err when unreadable.
local function unrecorded_contact_invites(username, recorded, account, now)
	local tokens, err = token_lists:get(username);
	if err then return nil, err; end
	local list = {};
	for token, expires in pairs(tokens or {}) do
		expires = tonumber(expires) or 0;
		if not recorded[token] and not account[token] and expires > now then
			table.insert(list, { token = token; owner = username; record = {
				type = "contact"; allow_registration = false; created = 0; expires = expires;
				uri = ("xmpp:%s?roster;preauth=%s"):format(user_jid(username), token);
			} });
		end
	end
	return list;
end

-- Users of a store (keyval view), as a list (the admin commands sort them); nil, err when it cannot be listed.
local function store_users(store)
	local users = {};
	local ok, err = pcall(function ()
		for user in store:users() do
			if user ~= "" then table.insert(users, user); end -- "": SQL's name for "no user"
		end
	end);
	if not ok then return nil, err; end
	return users;
end

-- Every open invitation on this host: { creator (nil: the server), token, record, owner }, the users' by creator,
-- oldest first, then the server's (made with prosodyctl, the shell or another module), soonest to expire first.
local function all_open_invites()
	local creators, iterate_err = store_users(created_lists);
	if not creators then return nil, iterate_err; end
	table.sort(creators);
	local all, recorded = {}, {};
	for _, creator in ipairs(creators) do
		local open, records = open_invites(creator);
		if not open then return nil, records; end
		for token in pairs(records) do
			recorded[token] = true;
		end
		for _, entry in ipairs(open) do
			table.insert(all, { creator = creator; token = entry.token; record = entry.record });
		end
	end
	local now = os.time();
	local others, account = unrecorded_account_invites(recorded, now);
	if not others then return nil, account; end
	local owners, owners_err = store_users(token_lists);
	if not owners then return nil, owners_err; end
	for _, owner in ipairs(owners) do
		local contacts, err = unrecorded_contact_invites(owner, recorded, account, now);
		if not contacts then return nil, err; end
		table.move(contacts, 1, #contacts, #others + 1, others);
	end
	table.sort(others, function (a, b)
		if a.record.expires ~= b.record.expires then return a.record.expires < b.record.expires; end
		return a.token < b.token;
	end);
	table.move(others, 1, #others, #all + 1, all);
	return all;
end

local list_all_columns = { { var = "creator"; label = "Created by" }, table.unpack(list_columns) };

-- Every user's open invitations, for admins.
local function list_all_command(_, data)
	if not local_actor(data) then return error_result(fail("remote-user")); end
	local all, err = all_open_invites();
	if not all then
		module:log("error", "Cannot read the invitations of this host: %s", err);
		return error_result(fail("internal-error", "Could not read the invitations"));
	end
	local rows = {};
	for _, entry in ipairs(all) do
		local row = list_row(entry.token, entry.record);
		row.creator = entry.creator and user_jid(entry.creator) or module.host;
		table.insert(rows, row);
	end
	return {
		status = "completed";
		info = #all == 0 and "There are no open invitations" or nil;
		other = table_form("Open invitations", list_all_columns, rows);
	};
end

local manage_account_form = dataforms.new({
	title = "Manage a user's invitations";
	instructions = ("Whose invitations and invitees to show: a user of %s, or %s itself for the invitations made "
		.. "with prosodyctl or the shell."):format(module.host, module.host);
	{ name = "account"; type = "jid-single"; required = true; label = "Account" };
});

-- The second stage of the manage command: who invited the account, whom its invitations brought, and its open
-- invitations to revoke. `open` is what the form offers, and all that the last stage accepts.
local function manage_details_form(account, chain, invitees, used, open)
	local layout = {
		title = ("Invitations of %s"):format(account and user_jid(account) or module.host);
	};
	if account then
		local links = { user_jid(account) };
		for _, link in ipairs(chain) do
			table.insert(links, link.by and user_jid(link.by) or ("an invitation of " .. module.host));
		end
		local first = chain[1];
		table.insert(layout, { name = "invited-by"; type = "fixed"; label = "Invited by"; value = first
			and ("%s (%s, %s)"):format(links[2], first.kind or "invitation", datetime.datetime(first.at or 0))
			or "Nobody: this account was not made with an invitation" });
		table.insert(layout, { name = "chain"; type = "fixed"; label = "Chain of inviters"; value = table.concat(links, " < ") });
		local names = {};
		for _, invitee in ipairs(invitees) do
			local name = user_jid(invitee.username);
			if not (invitee.is_current and usermanager.user_exists(invitee.username, module.host)) then
				name = name .. " (deleted)";
			end
			table.insert(names, name);
		end
		table.insert(layout, { name = "invitees"; type = "text-multi"; label = "Accounts made with their invitations";
			value = table.concat(names, "\n") });
		local period = accounts_period > 0 and ("in the last " .. native.invite.describe_period(accounts_period)) or "in all";
		table.insert(layout, { name = "accounts"; type = "fixed"; label = "Account quota";
			value = ("%d of %d %s"):format(used, max_accounts, period) });
	end
	local choices = {};
	for _, entry in ipairs(open) do
		table.insert(choices, { label = describe(entry.record); value = entry.token });
	end
	table.insert(layout, { name = "revoke"; type = "list-multi"; label = "Revoke these invitations"; options = choices });
	return dataforms.new(layout);
end

-- Reads what the manage command shows about `account` (nil: the server's own invitations); nil, err when unreadable.
local function manage_details(account)
	if not account then -- the server's invitations are those no user recorded
		local all, err = all_open_invites();
		if not all then return nil, err; end
		local open = {};
		for _, entry in ipairs(all) do
			if not entry.creator then table.insert(open, entry); end
		end
		return { open = open; chain = {}; invitees = {}; used = 0 };
	end
	local open, err = open_invites(account);
	if not open then return nil, err; end
	local chain, chain_err = chain_of(account);
	if not chain then return nil, chain_err; end
	local invitees, invitees_err = invitees_of(account);
	if not invitees then return nil, invitees_err; end
	local used, used_err = accounts_created(account, os.time());
	if not used then return nil, used_err; end
	return { open = open; chain = chain; invitees = invitees; used = used };
end

-- The manage command's first form, again (after prev, or a bad account).
local function manage_ask_account(actor, account_jid)
	return { status = "executing"; actions = { "next"; default = "next" };
		form = { layout = manage_account_form; values = { account = account_jid } } }, { node = node_manage; actor = actor };
end

-- Stage 2: the account's details; the state keeps the account and the invitations offered.
local function manage_show_account(actor, account_jid)
	local node, host = jid.split(account_jid);
	if host ~= module.host then
		return error_result(fail("no-such-account", ("%s is not an account on %s"):format(account_jid, module.host)));
	end
	local details, err = manage_details(node);
	if not details then
		module:log("error", "Cannot read the invitations of %s: %s", account_jid, err);
		return error_result(fail("internal-error", "Could not read the invitations"));
	end
	if node and not usermanager.user_exists(node, host) and #details.open == 0 and #details.chain == 0
		and #details.invitees == 0 then
		return error_result(fail("no-such-account", ("%s is not an account on %s"):format(account_jid, module.host)));
	end
	local offered = {};
	for _, entry in ipairs(details.open) do
		offered[entry.token] = entry;
	end
	local form = manage_details_form(node, details.chain, details.invitees, details.used, details.open);
	return { status = "executing"; actions = { "prev", "complete"; default = "complete" }; form = form },
		{ node = node_manage; actor = actor; account = node; account_jid = account_jid; offered = offered; form = form };
end

-- Stage 3: revokes the chosen invitations.
local function manage_revoke(actor, state, fields)
	local count = 0;
	for _, token in ipairs(fields.revoke or {}) do
		local entry = state.offered[token];
		if not entry then
			return error_result(fail("no-such-invite", "That invitation was not offered for revocation"));
		end
		local ok, err = revoke(actor, { creator = state.account or entry.creator; token = token; record = entry.record;
			owner = entry.owner }, "revoked-by-admin");
		if not ok then return error_result(err); end
		count = count + 1;
	end
	local text = count == 0 and "Nothing was revoked"
		or ("Revoked %d invitation%s of %s"):format(count, count == 1 and "" or "s", state.account_jid);
	return { status = "completed"; info = text };
end

-- Admins: a multi-stage command. Stage 1 asks for an account; stage 2 shows who invited it, whom its invitations
-- brought, its account quota and its open invitations to revoke (prev goes back); completing revokes the chosen ones.
local function manage_command(_, data, state)
	if is_cancel(data) then
		return { status = "canceled" };
	end
	local actor = local_actor(data);
	if not actor then return error_result(fail("remote-user")); end
	if state and (state.node ~= node_manage or state.actor ~= actor) then
		return error_result(fail("bad-form", "This command session belongs to another command"));
	end
	if not state then
		return manage_ask_account(actor);
	end
	if data.action == "prev" then
		return manage_ask_account(actor, state.account_jid);
	end
	if not data.form then
		return error_result(fail("bad-form", "Submit the form to go on"));
	end
	if not state.form then
		local fields, form_errors = manage_account_form:data(data.form);
		if form_errors then
			local field, why = next(form_errors);
			return error_result(fail("bad-form", ("%s: %s"):format(field, why)));
		end
		return manage_show_account(actor, fields.account);
	end
	local fields, form_errors = state.form:data(data.form);
	if form_errors and form_errors.revoke then
		return error_result(fail("bad-form", ("revoke: %s"):format(form_errors.revoke)));
	end
	return manage_revoke(actor, state, fields);
end

-- Users may see and run the contact, list and revoke commands unless allow_contact_invites is off; the others are
-- for admins (on 13: whoever holds the adhoc:<node> permission, granted to prosody:admin).
local user_commands = {
	new_adhoc("Create new contact invite", node_contact, contact_command, "local_user");
	new_adhoc("List my invites", node_list, list_command, "local_user");
	new_adhoc("Revoke an invite", node_revoke, form_command(revoke_form, revoke_invite, revoke_choices), "local_user");
};
-- Turned into admin commands when allow_contact_invites is off: mod_adhoc reads each command's permission when it
-- runs and lists them, so this applies at once, also after a config reload. On 13 admin commands are "check"ed
-- against adhoc:<node>, declared here for those too.
local admin_permission = module.may and "check" or "admin";
for _, command in ipairs(user_commands) do
	compat.default_permission(module, "prosody:admin", "adhoc:" .. command.node);
	module:provides("adhoc", command);
end
local function apply_user_permission()
	for _, command in ipairs(user_commands) do
		command.permission = allow_contact_invites and "local_user" or admin_permission;
	end
end
apply_user_permission();

module:provides("adhoc", new_adhoc("Create new account invite", node_account, form_command(account_invite_form, create_account_invite),
	"admin"));
module:provides("adhoc", new_adhoc("Create password reset invite", node_reset, form_command(reset_form, create_reset_invite),
	"admin"));
module:provides("adhoc", new_adhoc("List all invites", node_list_all, list_all_command, "admin"));
module:provides("adhoc", new_adhoc("Manage a user's invites", node_manage, manage_command, "admin"));

module:hook_global("config-reloaded", function ()
	read_options();
	apply_user_permission();
	module:log("debug", "Options re-read (quota %d open, %d accounts)", max_open_invites, max_accounts);
end);

local our_nodes = {
	[node_contact] = true; [node_account] = true; [node_reset] = true; [node_list] = true; [node_revoke] = true;
	[node_list_all] = true; [node_manage] = true;
};

-- Invitations belong to a user of this host. mod_adhoc's answer to others is a bare "no permission", and on 0.12
-- a global admin from another host passes its admin check; say plainly why instead, before it runs.
module:hook("iq-set/host/" .. xmlns_commands .. ":command", function (event)
	local stanza = event.stanza;
	if not our_nodes[stanza.tags[1].attr.node] or jid.host(stanza.attr.from) == module.host then
		return;
	end
	local text = ("Only users of %s can create or manage its invitations"):format(module.host);
	event.origin.send(st.error_reply(stanza, fail("remote-user", text)));
	return true;
end, 501);

-- Refusals at registration that tell of a stolen, replayed or shared token are audited.
local audited_refusals = { ["invite-closed"] = true; ["invite-busy"] = true; ["wrong-username"] = true;
	["username-reserved"] = true };

local function refuse(event, code, text)
	local err = fail(code, text);
	event.allowed = false;
	event.error = err;
	event.reason = err.text;
	if audited_refusals[code] then
		audit("registration-refused", { account = event.username; reason = code; ip = event.ip });
	end
end

-- Checks a registration against the invitations in storage (the token is claimed already); nil, code[, text] to
-- refuse it.
local function check_registration(username, invite, now)
	local open, err = open_account_invites(now);
	if not open then
		module:log("error", "Cannot read the open account invitations: %s", err);
		return nil, "internal-error", "Could not check the invitation, try again later";
	end
	local token = invite and invite.token;
	if invite then
		local info = open[token];
		if not info then
			return nil, "invite-closed";
		end
		local reserved = info.type == "register" and jid.node(info.jid);
		if reserved and reserved ~= username then
			return nil, "wrong-username", ("This invitation is for the username '%s'"):format(reserved);
		end
		-- Closed when its account was deleted; one deleted where this module did not see it is found here first.
		local account = account_of(info);
		if account and not usermanager.user_exists(account, module.host) then
			return nil, "invite-closed";
		end
		local inviter = inviter_of(info);
		if inviter and creates_account(core_kind(info)) and not is_unlimited(user_jid(inviter)) then
			local count, count_err = accounts_created(inviter, now);
			if not count then
				module:log("error", "Cannot read whom %s invited: %s", inviter, count_err);
				return nil, "internal-error", "Could not check the invitation, try again later";
			end
			if count >= max_accounts then
				return nil, "inviter-quota";
			end
		end
	end
	-- Any of the invitations reserving the name may register it (two reset links for one account both work).
	local reserving = reserving_tokens(username, open);
	if next(reserving) and not (token and reserving[token]) then
		return nil, "username-reserved", ("The username '%s' is reserved for an invitation"):format(username);
	end
	return true;
end

-- Registration: the invitation must still be open when the account is created (one token, one account, even after
-- a preauth in the same session and with two connections racing), a reserved username is only for its
-- invitations, an invitation for a username (including a password reset) registers only that one, and the
-- inviter's account quota must allow one more.
module:hook("user-registering", function (event)
	local invite = event.validated_invite or (event.session and event.session.validated_invite);
	local token = invite and not invite.reusable and invite.token;
	local holder = event.session or event;
	if token then
		-- No storage call before the claim: with asynchronous storage, another registration could run meanwhile.
		local claimed, why = claim(token, holder);
		if not claimed then
			refuse(event, why);
			return;
		end
	end
	local ok, code, text = check_registration(event.username, invite, os.time());
	if not ok then
		if token then release(token, holder); end
		refuse(event, code, text);
	end
end, 10);

-- Makes two local users mutual contacts, as if each had approved the other's request, and tells the inviter's
-- clients (XEP-0401: the inviter learns of the new account through a roster push).
local function make_contacts(inviter, invitee)
	local host = module.host;
	for _, pair in ipairs({ { inviter, invitee }, { invitee, inviter } }) do
		local user, contact = pair[1], pair[2];
		local user_bare, contact_bare = user_jid(user), user_jid(contact);
		rostermanager.set_contact_pending_out(user, host, contact_bare);
		rostermanager.set_contact_pending_in(contact, host, user_bare);
		rostermanager.subscribed(contact, host, user_bare);
		rostermanager.process_inbound_subscription_approval(user, host, contact_bare);
	end
	rostermanager.roster_push(inviter, host, user_jid(invitee));
end

local function redeemed(invite, kind, fields)
	if not invite.reusable then
		claims[invite.token] = spent;
	end
	redeemed_metric:with_labels(kind):add(1);
	fields.kind = kind;
	audit("invite-redeemed", fields);
end

-- An account made with an invitation: recorded in its inviter's ledger (chain and quota), and with an account
-- invite that asked for it, made a contact of its inviter.
module:hook("user-registered", function (event)
	local invite = event.validated_invite or (event.session and event.session.validated_invite);
	if not invite then
		return;
	end
	local username, kind, inviter = event.username, core_kind(invite), inviter_of(invite);
	record_invitee(username, inviter, kind, os.time());
	redeemed(invite, kind, { account = username; inviter = inviter and user_jid(inviter) });
	local extra = invite.additional_data;
	if inviter and kind == "account" and extra and extra.roster_subscription and usermanager.user_exists(inviter, module.host) then
		module:log("debug", "Making %s and %s contacts, as the invitation asked", inviter, username);
		make_contacts(inviter, username);
	end
end);

module:hook("user-password-reset", function (event)
	local invite = event.validated_invite or (event.session and event.session.validated_invite);
	if invite then
		redeemed(invite, "password-reset", { account = event.username });
	end
end);

-- The open invitations tied to `username`: those they made, those that would make someone their contact (made with
-- the shell too), and the password reset links for their account, as entries for revoke(); nil, err when unreadable.
local function invites_tied_to(username, now)
	local open, records = open_invites(username);
	if not open then return nil, records; end
	local entries = {};
	for _, entry in ipairs(open) do
		table.insert(entries, { creator = username; token = entry.token; record = entry.record });
	end
	local others, account = unrecorded_account_invites(records, now);
	if not others then return nil, account; end
	for _, entry in ipairs(others) do
		local invite = account[entry.token];
		if account_of(invite) == username then
			entry.creator = inviter_of(invite);
			table.insert(entries, entry);
		end
	end
	local contacts, err = unrecorded_contact_invites(username, records, account, now);
	if not contacts then return nil, err; end
	table.move(contacts, 1, #contacts, #entries + 1, entries);
	return entries;
end

-- A deleted account's invitations are closed (an invitation must not outlive its inviter, nor a reset link its
-- account), and its own place in the chain goes, so that an account registered later under the name starts with
-- none. Its inviter's ledger keeps it: a deleted account still counts against the account quota (see the README).
-- Core purges the account's stores after this event.
module:hook_global("user-deleted", function (event)
	if event.host ~= module.host then
		return;
	end
	local username = event.username;
	local entries, err = invites_tied_to(username, os.time());
	if not entries then
		module:log("error", "Cannot read the invitations of the deleted account %s: %s", username, err);
	end
	for _, entry in ipairs(entries or {}) do
		revoke(nil, entry, "account-deleted");
	end
	local ok, set_err = invited_by_store:set(username, nil);
	if not ok then
		module:log("error", "Cannot forget who invited the deleted account %s: %s", username, set_err);
	end
end);

-- A contact invite used for a pre-approved subscription (XEP-0379): seen here before mod_invites_register (or, on
-- 0.12, the hook below) uses it, and counted once it is gone from storage after them (mod_presence runs at 0).
module:hook("presence/bare", function (event)
	local stanza = event.stanza;
	local preauth = stanza.attr.type == "subscribe" and stanza:get_child("preauth", xmlns_pars);
	local token = preauth and preauth.attr.token;
	local username, host = jid.split(stanza.attr.to);
	if not token or host ~= module.host or not username then
		return;
	end
	local expires = token_store:get(username, token);
	if expires and expires > os.time() then
		event.invites_adhoc_contact = { username = username; token = token;
			kind = token_store:get(nil, token) and "account-and-contact" or "contact" };
	end
end, 3);

module:hook("presence/bare", function (event)
	local pending = event.invites_adhoc_contact;
	if not pending then
		return;
	end
	local expires, err = token_store:get(pending.username, pending.token);
	if expires == nil and not err then
		redeemed_metric:with_labels(pending.kind):add(1);
		audit("invite-redeemed", { kind = pending.kind; contact = jid.bare(event.stanza.attr.from);
			inviter = user_jid(pending.username) });
	end
end, 0.5);

-- COMPAT 0.12: pre-approve subscription requests that carry a contact-only invite. 0.12's mod_invites_register cannot:
-- its invites.get() raises on such a token. Runs just before it, does what 13's does, and takes the token out of
-- the stanza so that the failing hook never sees it. Tokens with an account record are left to core, which copes.
if compat.invites_get_fails_on_contact_tokens then
	module:hook("presence/bare", function (event)
		local stanza = event.stanza;
		local preauth = stanza.attr.type == "subscribe" and stanza:get_child("preauth", xmlns_pars);
		local token = preauth and preauth.attr.token;
		if not token or not is_invite_registration_on() then
			return;
		end
		local username, host = jid.split(stanza.attr.to);
		if host ~= module.host or not username or invites.get_account_invite_info(token) then
			return;
		end
		stanza:remove_children("preauth", xmlns_pars);
		local expires = token_store:get(username, token);
		if not expires or expires < os.time() then
			return; -- an ordinary subscription request
		end
		local contact = jid.bare(stanza.attr.from);
		if not (rostermanager.set_contact_pending_in(username, host, contact, stanza)
			and rostermanager.subscribed(username, host, contact)) then
			return;
		end
		token_store:set(username, token, nil);
		rostermanager.roster_push(username, host, contact);
		module:log("debug", "Approved the subscription of %s to %s with a contact invite", contact, username);
		if not rostermanager.is_user_subscribed(username, host, contact)
			and not rostermanager.is_contact_pending_out(username, host, contact)
			and rostermanager.set_contact_pending_out(username, host, contact) then
			rostermanager.roster_push(username, host, contact);
			module:send(st.presence({ type = "subscribe"; from = user_jid(username); to = contact }));
		end
	end, 2);
end

-- Calls visit(user) for each user of a store (keyval view), one name at a time, so that a pass can pause between
-- users; stops at the first error of visit or of the listing (nil, err). Deleting the entry of a name already
-- handed out is safe: the internal store lists a folder (readdir), and the SQL store lists a result read at once.
local function each_user(store, visit)
	local ok, iterate, state, user = pcall(store.users, store);
	if not ok then return nil, iterate; end
	while true do
		ok, user = pcall(iterate, state, user);
		if not ok then return nil, user; end
		if user == nil then return true; end
		if user ~= "" then -- "": SQL's name for "no user"
			local visited, err = visit(user);
			if not visited then return nil, err; end
		end
	end
end

-- Deletes what can never be used again: expired tokens in mod_invites' store (core never does), our records of
-- invitations that were used, revoked or expired, and the marks of used tokens; and closes the open account
-- invitations of accounts deleted while this module did not see it (0.12's prosodyctl deluser runs in a process of
-- its own). Calls pace() after each step (a token, a user's tokens, a creator's records). Returns the counts, or
-- nil, err.
local function prune(pace)
	local now, tokens, records = os.time(), 0, 0;
	local account_tokens, err = token_lists:get(nil);
	if err then return nil, err; end
	account_tokens = account_tokens or {};
	for token, holder in pairs(claims) do
		if holder == spent and not account_tokens[token] then
			claims[token] = nil;
		end
	end
	for token, invite in pairs(account_tokens) do
		if type(invite) ~= "table" or (tonumber(invite.expires) or 0) <= now then
			local ok, set_err = token_store:set(nil, token, nil);
			if not ok then return nil, set_err; end
			tokens = tokens + 1;
		else
			local account = account_of(invite);
			if account and not usermanager.user_exists(account, module.host) then
				local entry = account_entry(token, invite);
				entry.creator = inviter_of(invite);
				local ok, revoke_err = revoke(nil, entry, "account-deleted");
				if not ok then return nil, revoke_err.text; end
			end
		end
		pace();
	end
	local ok, walk_err = each_user(token_lists, function (inviter)
		local contact_tokens, get_err = token_lists:get(inviter);
		if get_err then return nil, get_err; end
		for token, expires in pairs(contact_tokens or {}) do
			if (tonumber(expires) or 0) <= now then
				local set_ok, set_err = token_store:set(inviter, token, nil);
				if not set_ok then return nil, set_err; end
				tokens = tokens + 1;
			end
		end
		pace();
		return true;
	end);
	if not ok then return nil, walk_err; end
	ok, walk_err = each_user(created_lists, function (creator)
		local open, all = open_invites(creator);
		if not open then return nil, all; end
		for _ in pairs(all) do
			records = records + 1;
		end
		records = records - #open;
		pace();
		return true;
	end);
	if not ok then return nil, walk_err; end
	return tokens, records;
end

-- A pass runs in an async runner (so that storage and authentication backends that wait work), prune_batch_size
-- steps at a time. After each batch, and before it reports, it waits for a module timer of 0 s, which gives the event
-- loop back. That timer dies with the module: a pass that the module's unloading or reloading interrupts finishes at
-- most the batch it is in, and never reports or schedules another (the new instance starts its own at load). The next
-- pass starts prune_interval after one ends, so two never overlap.
local start_pruning;
local pruner = async.runner(function ()
	local function next_turn()
		local wait, done = async.waiter();
		module:add_timer(0, done);
		wait();
	end
	local steps, in_batch = 0, 0;
	local tokens, records = prune(function ()
		steps, in_batch = steps + 1, in_batch + 1;
		if in_batch >= prune_batch_size then
			in_batch = 0;
			next_turn();
		end
	end);
	next_turn();
	if not tokens then
		module:log("warn", "Cannot prune expired invitations, will try again: %s", records);
	elseif tokens + records > 0 then
		audit("invites-pruned", { tokens = tokens; records = records });
	end
	module:log("debug", "Pruning pass done: %d steps, in batches of up to %d", steps, prune_batch_size);
	module:add_timer(prune_interval, start_pruning);
end, {
	error = function (_, err)
		module:log("error", "Pruning pass failed, will try again: %s", err);
		module:add_timer(prune_interval, start_pruning);
	end;
});

function start_pruning()
	pruner:run(true);
end

-- On every start (the first tick of the loop) and then every prune_interval, which a reload may change.
module:add_timer(0, start_pruning);

module:log("debug", "prosody-native mod_invites_adhoc serving XEP-0401 commands (quota %d open, %d accounts, longest validity %s)",
	max_open_invites, max_accounts, native.invite.describe_period(max_validity));
