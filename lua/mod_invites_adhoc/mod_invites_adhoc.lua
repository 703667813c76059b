-- mod_invites_adhoc: XEP-0401 (v0.6) invitations from any XMPP client, through ad-hoc commands (XEP-0050).
--
-- Replaces Prosody's module of the same name: installed in plugin_paths, this file is found first. Invitations are
-- made and kept by core mod_invites; this module adds what core's commands lack: a form for account invites
-- (username to reserve, roster subscription, validity, note), a quota of open invitations, commands to list and
-- revoke your invitations, and enforcement at registration (a reserved name is kept, a token registers once).
-- Every submitted value is checked by the native library before anything is created.

local compat = module:require("prosody_native_compat");
compat.check_host(module, "local");
local native = module:require("prosody_native");
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

-- Whether users who are not admins may invite people to register here (contact invites with ibr=y).
local allow_user_invites = module:get_option_boolean("allow_user_invites", false);
-- Whether users who are not admins may create contact invites at all.
local allow_contact_invites = module:get_option_boolean("allow_contact_invites", true);
-- COMPAT 0.12: roles that override allow_user_invites; 13 uses the ":invite-users" permission instead.
local allow_user_invite_roles = module:get_option_set("allow_user_invites_by_roles", {});
local deny_user_invite_roles = module:get_option_set("deny_user_invites_by_roles", {});
local max_open_invites = compat.get_option_integer(module, "invites_adhoc_max_open_per_user", 10, 0, 10000);
local max_validity = compat.get_option_period(module, "invites_adhoc_max_validity", 30 * 86400, 3600, 365 * 86400);
local max_note_length = compat.get_option_integer(module, "invites_adhoc_max_note_length", 200, 1, 1000);

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

-- Shortest validity a user may ask for, and how long a password reset invite lasts (as in core).
local min_validity = 60;
local reset_validity = 86400;

local invite_errors = errors.init(module.name, xmlns_commands, {
	["remote-user"] = { "auth", "forbidden", "Only users of this server can create or manage its invitations" };
	["bad-form"] = { "modify", "bad-request", "The form is incomplete or malformed", "bad-payload" };
	["username-taken"] = { "cancel", "conflict", "That username is already registered" };
	["username-reserved"] = { "cancel", "conflict", "That username is reserved by another invitation" };
	["quota-exceeded"] = { "wait", "resource-constraint", "You have as many open invitations as allowed" };
	["no-such-account"] = { "cancel", "item-not-found", "There is no such account on this server" };
	["no-such-invite"] = { "cancel", "item-not-found", "You have no open invitation with that token" };
	["internal-error"] = { "wait", "internal-server-error", "Could not store the invitation" };
	-- registration with an invitation
	["wrong-username"] = { "modify", "not-acceptable", "This invitation is for another username" };
	["invite-closed"] = { "auth", "forbidden", "The invitation has been revoked, has expired or was already used" };
});

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

-- Who created which invitation (user -> { [token] = record }): core keeps no creator for contact and reset invites
-- and cannot list invitations by creator.
local created_store = module:open_store("invites_adhoc");
-- mod_invites keeps each contact invite under its inviter's name in its own "invite_token" store (the same in 0.12
-- and 13) and has no call to check or delete one, so revoking and checking reach into it here.
local contact_tokens = module:open_store("invite_token", "map");

-- Admins always may invite new users: granted to prosody:admin itself, so that withholding it from prosody:registered
-- on 13 (remove_permissions), which admins inherit from, does not take it from them.
compat.default_permission(module, "prosody:admin", ":invite-users");
if allow_user_invites then
	compat.default_permission(module, "prosody:registered", ":invite-users");
end
compat.default_permission(module, "prosody:admin", ":unlimited-invites");

-- XEP-0401: without in-band registration for invitees (mod_invites_register), a URI must not offer it.
local function is_invite_registration_on()
	return modulemanager.is_loaded(module.host, "invites_register");
end

-- Whether the actor's contact invites also let the invitee register here (ibr=y).
local function may_invite_new_users(actor)
	local roles = compat.legacy_roles(module, actor);
	if roles then -- COMPAT 0.12: admins always, then the role lists, then allow_user_invites
		if roles["prosody:admin"] then return true; end
		for role in allow_user_invite_roles do
			if roles[role] then return true; end
		end
		for role in deny_user_invite_roles do
			if roles[role] then return false; end
		end
	end
	return compat.may(module, ":invite-users", actor);
end

-- Whether an invitation is still usable: unexpired, and still in mod_invites' store (using and revoking remove it).
local function is_open(username, token, record, now)
	if record.expires <= now then
		return false;
	end
	if record.allow_registration and not invites.get_account_invite_info(token) then
		return false;
	end
	if record.type == "contact" and not contact_tokens:get(username, token) then
		return false;
	end
	return true;
end

-- The user's open invitations ({ token, record }, oldest first) and all their records; forgets closed ones.
local function open_invites(username)
	local records, err = created_store:get(username);
	if err then
		module:log("error", "Cannot read the invitations of %s: %s", username, err);
		return nil;
	end
	records = records or {};
	local now, open, closed = os.time(), {}, false;
	for token, record in pairs(records) do
		if is_open(username, token, record, now) then
			table.insert(open, { token = token; record = record });
		else
			records[token], closed = nil, true;
		end
	end
	if closed then
		created_store:set(username, next(records) and records or nil);
	end
	table.sort(open, function (a, b)
		if a.record.created ~= b.record.created then return a.record.created < b.record.created; end
		return (a.record.serial or 0) < (b.record.serial or 0);
	end);
	return open, records;
end

-- Closes an invitation in mod_invites' store, so that its token no longer works.
local function close_invite(username, token, record)
	if record.allow_registration then
		local ok, err = invites.delete_account_invite(token);
		if not ok then return nil, err; end
	end
	if record.type == "contact" then
		local ok, err = contact_tokens:set(username, token, nil);
		if not ok then return nil, err; end
	end
	return true;
end

-- Records who created an invitation; an invitation that cannot be recorded is closed again at once.
local function remember(username, invite, record)
	record.created, record.expires = invite.created_at, invite.expires;
	record.uri, record.landing_page = invite.uri, invite.landing_page;
	local records, err = created_store:get(username);
	local ok;
	if not err then
		records = records or {};
		-- Creation order within one second (created_at has whole seconds)
		local serial = 0;
		for _, other in pairs(records) do
			serial = math.max(serial, other.serial or 0);
		end
		record.serial = serial + 1;
		records[invite.token] = record;
		ok, err = created_store:set(username, records);
	end
	if not ok then
		module:log("error", "Cannot record an invitation of %s, closing it: %s", username, err);
		close_invite(username, invite.token, record);
		return nil, fail("internal-error");
	end
	return true;
end

-- Admins (anyone with ":unlimited-invites") have no quota; everyone else at most max_open_invites open ones.
local function check_quota(actor, username)
	if compat.may(module, ":unlimited-invites", actor) then
		return true;
	end
	local open = open_invites(username);
	if not open then return nil, fail("internal-error"); end
	local remaining, code, text = native.invite.quota(#open, max_open_invites);
	if not remaining then return nil, native_fail(code, text); end
	return true;
end

-- The token of an open account invitation that reserves `username`, made by us or any other way (prosodyctl).
local function reserving_token(username)
	for token, invite in invites.pending_account_invites() do
		if invite.type == "register" and jid.node(invite.jid) == username then
			return token;
		end
	end
	return nil;
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

local function invite_result(invite)
	-- Not result_forms[invite.landing_page ~= nil]: Lua 5.4.4 miscompiles a comparison used as an index (nil).
	local layout = result_form_without_page;
	if invite.landing_page then
		layout = result_form;
	end
	return {
		status = "completed";
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

-- Runs a command that takes one form: shows it, then hands the parsed fields to `submit(fields, data)`.
-- `initial(data)` may supply values for the form (or a finished reply instead).
local function form_command(layout, submit, initial)
	return function (_, data, state)
		if data.action == "cancel" or (data.form and data.form.attr.type == "cancel") then
			return { status = "canceled" };
		end
		if not local_actor(data) then
			return error_result(fail("remote-user"));
		end
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
			return { status = "executing"; actions = { "complete"; default = "complete" }; form = { layout = layout; values = values } },
				"executing";
		end
		local fields, form_errors = layout:data(data.form);
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

-- Contact invite (XEP-0401 "User Invitation"): made at once, no form, as the XEP asks.
local function contact_command(_, data)
	local actor, username = local_actor(data);
	if not actor then return error_result(fail("remote-user")); end
	local ok, quota_err = check_quota(actor, username);
	if not ok then return error_result(quota_err); end
	local allow_registration = is_invite_registration_on() and may_invite_new_users(actor);
	local invite, err = invites.create_contact(username, allow_registration, { source = data.from });
	if not invite then
		module:log("error", "Cannot create a contact invite for %s: %s", actor, err);
		return error_result(fail("internal-error"));
	end
	local remembered, remember_err = remember(username, invite, { type = "contact"; allow_registration = allow_registration });
	if not remembered then return error_result(remember_err); end
	module:log("info", "%s created a contact invite%s", actor, allow_registration and " with registration" or "");
	return invite_result(invite);
end

local account_form = dataforms.new({
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

-- Checks the account form's values; returns { username, roster_subscription, ttl, note } or nil, error.
local function read_account_fields(fields)
	local options = { roster_subscription = fields["roster-subscription"] == true };
	if not is_blank(fields.username) then
		local shaped, code, text = native.invite.username(fields.username);
		if not shaped then return nil, native_fail(code, text); end
		local username = nodeprep(shaped);
		if not username then
			return nil, fail("bad-form", ("The username '%s' is not allowed on this server"):format(shaped));
		end
		if usermanager.user_exists(username, module.host) then
			return nil, fail("username-taken", ("The username '%s' is already registered"):format(username));
		end
		if reserving_token(username) then
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

-- Account invite (XEP-0401 "Account Creation"), admins only.
local function create_account_invite(fields, data)
	local actor, username = local_actor(data);
	local options, err = read_account_fields(fields);
	if not options then return error_result(err); end
	local ok, quota_err = check_quota(actor, username);
	if not ok then return error_result(quota_err); end
	local invite, create_err = invites.create_account(options.username, {
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
	module:log("info", "%s created an account invite%s", actor, options.username and (" for " .. options.username) or "");
	return invite_result(invite);
end

local reset_form = dataforms.new({
	title = "Generate Password Reset Invite";
	{ name = "accountjid"; type = "jid-single"; required = true;
		label = "The XMPP ID for the account to generate a password reset invite for" };
});

-- Password reset invite, admins only (as in Prosody 13, on 0.12 too).
local function create_reset_invite(fields, data)
	local actor, username = local_actor(data);
	local target, host = jid.split(fields.accountjid);
	if host ~= module.host or not target or not usermanager.user_exists(target, module.host) then
		return error_result(fail("no-such-account", ("%s is not an account on %s"):format(fields.accountjid, module.host)));
	end
	local ok, quota_err = check_quota(actor, username);
	if not ok then return error_result(quota_err); end
	local invite, err = invites.create_account_reset(target, reset_validity);
	if not invite then
		module:log("error", "Cannot create a password reset invite for %s: %s", actor, err);
		return error_result(fail("internal-error"));
	end
	local remembered, remember_err = remember(username, invite, { type = "password-reset"; allow_registration = true; username = target });
	if not remembered then return error_result(remember_err); end
	module:log("info", "%s created a password reset invite for %s", actor, target);
	return invite_result(invite);
end

-- The kind of an invitation, in the words of Prosody 13's invites_page_supports.
local function invite_kind(record)
	if record.type == "contact" then
		return record.allow_registration and "account-and-contact" or "contact";
	end
	return record.type;
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

local list_columns = {
	{ var = "token"; label = "Token" };
	{ var = "kind"; label = "Kind" };
	{ var = "username"; label = "Username" };
	{ var = "expire"; label = "Valid until" };
	{ var = "note"; label = "Note" };
	{ var = "uri"; label = "Invite URI" };
};

-- A multi-item result form (XEP-0004 <reported/> and <item/>), which util.dataforms does not build.
local function list_form(open)
	local form = st.stanza("x", { xmlns = xmlns_data; type = "result" })
		:text_tag("title", "Your open invitations")
		:tag("reported");
	for _, column in ipairs(list_columns) do
		form:tag("field", { var = column.var; label = column.label; type = "text-single" }):up();
	end
	form:up();
	for _, entry in ipairs(open) do
		local record = entry.record;
		local values = {
			token = entry.token; kind = invite_kind(record); username = record.username;
			expire = datetime.datetime(record.expires); note = record.note; uri = record.uri;
		};
		form:tag("item");
		for _, column in ipairs(list_columns) do
			form:tag("field", { var = column.var }):text_tag("value", values[column.var] or ""):up();
		end
		form:up();
	end
	return form;
end

local function list_command(_, data)
	local actor, username = local_actor(data);
	if not actor then return error_result(fail("remote-user")); end
	local open = open_invites(username);
	if not open then return error_result(fail("internal-error")); end
	return {
		status = "completed";
		info = #open == 0 and "You have no open invitations" or nil;
		other = list_form(open);
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
	if not open then return nil, error_result(fail("internal-error")); end
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
	local open, records = open_invites(username);
	if not open then return error_result(fail("internal-error")); end
	local record = records[token];
	if not record then return error_result(fail("no-such-invite")); end
	local ok, err = close_invite(username, token, record);
	if ok then
		records[token] = nil;
		ok, err = created_store:set(username, next(records) and records or nil);
	end
	if not ok then
		module:log("error", "Cannot revoke an invitation of %s: %s", actor, err);
		return error_result(fail("internal-error", "Could not revoke the invitation"));
	end
	module:log("info", "%s revoked a %s invite", actor, invite_kind(record));
	return { status = "completed"; info = "The invitation has been revoked" };
end

-- Users may see and run the contact, list and revoke commands unless allow_contact_invites is off; the others are
-- for admins (on 13: whoever holds the adhoc:<node> permission, granted to prosody:admin).
local user_permission = allow_contact_invites and "local_user" or "admin";
module:provides("adhoc", new_adhoc("Create new contact invite", node_contact, contact_command, user_permission));
module:provides("adhoc", new_adhoc("Create new account invite", node_account,
	form_command(account_form, create_account_invite), "admin"));
module:provides("adhoc", new_adhoc("Create password reset invite", node_reset,
	form_command(reset_form, create_reset_invite), "admin"));
module:provides("adhoc", new_adhoc("List my invites", node_list, list_command, user_permission));
module:provides("adhoc", new_adhoc("Revoke an invite", node_revoke, form_command(revoke_form, revoke_invite, revoke_choices),
	user_permission));

local our_nodes = {
	[node_contact] = true; [node_account] = true; [node_reset] = true; [node_list] = true; [node_revoke] = true;
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

local function refuse(event, err)
	event.allowed = false;
	event.error = err;
	event.reason = err.text;
end

-- Registration: an invitation must still be open when the account is created (one token, one account, even after
-- a preauth in the same session), a reserved username is only for its invitation, and an invitation for a username
-- (including a password reset) registers only that one.
module:hook("user-registering", function (event)
	local username = event.username;
	local invite = event.validated_invite or (event.session and event.session.validated_invite);
	if invite then
		local info = invites.get_account_invite_info(invite.token);
		if not info then
			refuse(event, fail("invite-closed"));
			return;
		end
		local reserved = info.type == "register" and jid.node(info.jid);
		if reserved and reserved ~= username then
			refuse(event, fail("wrong-username", ("This invitation is for the username '%s'"):format(reserved)));
			return;
		end
	end
	local token = reserving_token(username);
	if token and not (invite and invite.token == token) then
		refuse(event, fail("username-reserved", ("The username '%s' is reserved for an invitation"):format(username)));
	end
end, 10);

-- Makes two local users mutual contacts, as if each had approved the other's request, and tells the inviter's
-- clients (XEP-0401: the inviter learns of the new account through a roster push).
local function make_contacts(inviter, invitee)
	local host = module.host;
	for _, pair in ipairs({ { inviter, invitee }, { invitee, inviter } }) do
		local user, contact = pair[1], pair[2];
		local user_jid, contact_jid = user .. "@" .. host, contact .. "@" .. host;
		rostermanager.set_contact_pending_out(user, host, contact_jid);
		rostermanager.set_contact_pending_in(contact, host, user_jid);
		rostermanager.subscribed(contact, host, user_jid);
		rostermanager.process_inbound_subscription_approval(user, host, contact_jid);
	end
	rostermanager.roster_push(inviter, host, invitee .. "@" .. host);
end

-- An account invite with roster-subscription makes the new account and its inviter contacts.
module:hook("user-registered", function (event)
	local invite = event.validated_invite or (event.session and event.session.validated_invite);
	local extra = invite and invite.additional_data;
	if not (extra and extra.roster_subscription and extra.source) then
		return;
	end
	local inviter, host = jid.split(extra.source);
	if host ~= module.host or not inviter or not usermanager.user_exists(inviter, host) then
		return;
	end
	module:log("debug", "Making %s and %s contacts, as the invitation asked", inviter, event.username);
	make_contacts(inviter, event.username);
end);

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
		local expires = contact_tokens:get(username, token);
		if not expires or expires < os.time() then
			return; -- an ordinary subscription request
		end
		local contact = jid.bare(stanza.attr.from);
		if not (rostermanager.set_contact_pending_in(username, host, contact, stanza)
			and rostermanager.subscribed(username, host, contact)) then
			return;
		end
		contact_tokens:set(username, token, nil);
		rostermanager.roster_push(username, host, contact);
		module:log("debug", "Approved the subscription of %s to %s with a contact invite", contact, username);
		if not rostermanager.is_user_subscribed(username, host, contact)
			and not rostermanager.is_contact_pending_out(username, host, contact)
			and rostermanager.set_contact_pending_out(username, host, contact) then
			rostermanager.roster_push(username, host, contact);
			module:send(st.presence({ type = "subscribe"; from = username .. "@" .. host; to = contact }));
		end
	end, 2);
end

module:log("debug", "prosody-native mod_invites_adhoc serving XEP-0401 commands (quota %d, longest validity %s)",
	max_open_invites, native.invite.describe_period(max_validity));
