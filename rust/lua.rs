//! The Lua 5.4 face of the library (feature `lua54`): the only module that imports mlua.
//!
//! Each function converts its arguments, calls the core under [`guard`] and maps the result: success is a
//! value (or `true`), failure is `nil, code, text`. Wrong argument types raise a Lua error, as in Prosody's C
//! libraries. The export table groups functions by concern: `validate`, and `version`.

use mlua::prelude::*;

use crate::error::{guard, Error};
use crate::validate;

/// Longest hat title accepted by `validate.hat` when the caller passes no limit.
const DEFAULT_MAX_TITLE_CHARS: usize = 128;

/// Turns a core result into Lua's `value` or `nil, code, text`.
fn to_lua<T: IntoLuaMulti>(lua: &Lua, result: Result<T, Error>) -> LuaResult<LuaMultiValue> {
    match result {
        Ok(value) => value.into_lua_multi(lua),
        Err(e) => (LuaNil, e.code(), e.to_string()).into_lua_multi(lua),
    }
}

/// Lua: `validate.uri(s)` -> s, or nil, "bad-request", text.
fn validate_uri(lua: &Lua, s: LuaString) -> LuaResult<LuaMultiValue> {
    let result = guard(|| validate::uri(&s.as_bytes()).map(str::to_owned));
    to_lua(lua, result)
}

/// Lua: `validate.text(s, max_chars[, what])` -> s, or nil, "bad-request", text.
fn validate_text(
    lua: &Lua,
    (s, max_chars, what): (LuaString, usize, Option<String>),
) -> LuaResult<LuaMultiValue> {
    let what = what.unwrap_or_else(|| "Text".to_string());
    let result = guard(|| validate::text(&s.as_bytes(), max_chars, &what).map(str::to_owned));
    to_lua(lua, result)
}

/// Lua: `validate.nickname(s, max_chars)` -> s, or nil, "bad-request", text.
fn validate_nickname(lua: &Lua, (s, max_chars): (LuaString, usize)) -> LuaResult<LuaMultiValue> {
    let result = guard(|| validate::nickname(&s.as_bytes(), max_chars).map(str::to_owned));
    to_lua(lua, result)
}

/// Lua: `validate.jid(s)` -> { node = ?, host = ..., resource = ? }, or nil, "bad-request", text.
fn validate_jid(lua: &Lua, s: LuaString) -> LuaResult<LuaMultiValue> {
    let bytes = s.as_bytes();
    match guard(|| {
        validate::jid(&bytes).map(|j| {
            (
                j.node.map(str::to_owned),
                j.host.to_owned(),
                j.resource.map(str::to_owned),
            )
        })
    }) {
        Ok((node, host, resource)) => {
            let parts = lua.create_table()?;
            parts.set("node", node)?;
            parts.set("host", host)?;
            parts.set("resource", resource)?;
            parts.into_lua_multi(lua)
        }
        Err(e) => to_lua::<()>(lua, Err(e)),
    }
}

/// Lua: `validate.hue(s_or_number)` -> number, or nil, "bad-request", text.
fn validate_hue(lua: &Lua, value: LuaValue) -> LuaResult<LuaMultiValue> {
    let result = match value {
        LuaValue::Integer(n) => guard(|| validate::check_hue(n as f64)),
        LuaValue::Number(n) => guard(|| validate::check_hue(n)),
        LuaValue::String(s) => guard(|| validate::hue(&s.as_bytes())),
        other => {
            return Err(LuaError::runtime(format!(
                "hue: number or string expected, got {}",
                other.type_name()
            )))
        }
    };
    to_lua(lua, result)
}

/// Converts a Lua attachment table into fields for [`validate::attachment`].
fn attachment_fields(
    table: &LuaTable,
) -> LuaResult<Vec<(Result<String, &'static str>, validate::FieldValue)>> {
    use validate::FieldValue;
    let mut fields = Vec::new();
    for pair in table.pairs::<LuaValue, LuaValue>() {
        let (key, value) = pair?;
        let key = match key {
            LuaValue::String(k) => Ok(k.to_string_lossy()),
            other => Err(other.type_name()),
        };
        let value = match value {
            LuaValue::Boolean(b) => FieldValue::Bool(b),
            LuaValue::String(s) => FieldValue::Text(s.as_bytes().to_vec()),
            LuaValue::Integer(n) => FieldValue::Number(n as f64),
            LuaValue::Number(n) => FieldValue::Number(n),
            other => FieldValue::Other(other.type_name()),
        };
        fields.push((key, value));
    }
    Ok(fields)
}

/// Lua: `validate.hat(uri, attachment[, max_title_chars])` -> uri, clean attachment table, or nil,
/// "bad-request", text. `attachment` may be nil (meaning `{}`); unknown fields and wrong types are refused.
fn validate_hat(
    lua: &Lua,
    (uri, attachment, max_title_chars): (LuaString, Option<LuaTable>, Option<usize>),
) -> LuaResult<LuaMultiValue> {
    let uri = match guard(|| validate::uri(&uri.as_bytes()).map(str::to_owned)) {
        Ok(uri) => uri,
        Err(e) => return to_lua::<()>(lua, Err(Error::bad_request(format!("Hat id must be a URI: {e}")))),
    };
    let max_title_chars = max_title_chars.unwrap_or(DEFAULT_MAX_TITLE_CHARS);
    let fields = match attachment {
        Some(table) => attachment_fields(&table)?,
        None => Vec::new(),
    };
    let attachment = match guard(|| validate::attachment(fields, max_title_chars)) {
        Ok(a) => a,
        Err(e) => return to_lua::<()>(lua, Err(e)),
    };
    let clean = lua.create_table()?;
    clean.set("active", attachment.active)?;
    clean.set("required", attachment.required)?;
    clean.set("title", attachment.title)?;
    clean.set("hue", attachment.hue)?;
    clean.set(
        "assigned_by",
        attachment.assigned_by.map(validate::Assigner::as_str),
    )?;
    (uri, clean).into_lua_multi(lua)
}

fn validate_api(lua: &Lua) -> LuaResult<LuaTable> {
    let api = lua.create_table()?;
    api.set("uri", lua.create_function(validate_uri)?)?;
    api.set("text", lua.create_function(validate_text)?)?;
    api.set("nickname", lua.create_function(validate_nickname)?)?;
    api.set("jid", lua.create_function(validate_jid)?)?;
    api.set("hue", lua.create_function(validate_hue)?)?;
    api.set("hat", lua.create_function(validate_hat)?)?;
    Ok(api)
}

// --- invite ---

/// Lua: `invite.validity(s, min_seconds, max_seconds)` -> seconds, or nil, "bad-request", text. Reads "3600",
/// "36 hours", "1w 2d" or "P7D".
fn invite_validity(lua: &Lua, (s, min_secs, max_secs): (LuaString, u64, u64)) -> LuaResult<LuaMultiValue> {
    let result = guard(|| crate::invite::validity(&s.as_bytes(), min_secs, max_secs));
    to_lua(lua, result)
}

/// Lua: `invite.describe_period(seconds)` -> "1 week", "36 hours", ... for messages and form labels.
fn invite_describe_period(lua: &Lua, seconds: u64) -> LuaResult<LuaMultiValue> {
    to_lua(lua, guard(|| Ok(crate::invite::describe_period(seconds))))
}

/// Lua: `invite.username(s)` -> s, or nil, "bad-request", text. Shape only; the caller nodepreps.
fn invite_username(lua: &Lua, s: LuaString) -> LuaResult<LuaMultiValue> {
    let result = guard(|| crate::invite::username(&s.as_bytes()).map(str::to_owned));
    to_lua(lua, result)
}

/// Lua: `invite.note(s, max_chars)` -> trimmed s, or nil, "bad-request", text.
fn invite_note(lua: &Lua, (s, max_chars): (LuaString, usize)) -> LuaResult<LuaMultiValue> {
    let result = guard(|| crate::invite::note(&s.as_bytes(), max_chars).map(str::to_owned));
    to_lua(lua, result)
}

/// Lua: `invite.token(s)` -> s, or nil, "bad-request", text.
fn invite_token(lua: &Lua, s: LuaString) -> LuaResult<LuaMultiValue> {
    let result = guard(|| crate::invite::token(&s.as_bytes()).map(str::to_owned));
    to_lua(lua, result)
}

/// Lua: `invite.quota(open_count, limit)` -> how many remain after this one, or nil, "quota-exceeded", text.
fn invite_quota(lua: &Lua, (open, limit): (u64, u64)) -> LuaResult<LuaMultiValue> {
    to_lua(lua, guard(|| crate::invite::quota(open, limit)))
}

/// Lua: `invite.account_quota(used, pending, limit, period_seconds)` -> how many new accounts remain after this
/// invitation, or nil, "quota-exceeded", text (period 0: for ever).
fn invite_account_quota(
    lua: &Lua,
    (used, pending, limit, period): (u64, u64, u64, u64),
) -> LuaResult<LuaMultiValue> {
    to_lua(
        lua,
        guard(|| crate::invite::account_quota(used, pending, limit, period)),
    )
}

fn invite_api(lua: &Lua) -> LuaResult<LuaTable> {
    let api = lua.create_table()?;
    api.set("validity", lua.create_function(invite_validity)?)?;
    api.set("describe_period", lua.create_function(invite_describe_period)?)?;
    api.set("username", lua.create_function(invite_username)?)?;
    api.set("note", lua.create_function(invite_note)?)?;
    api.set("token", lua.create_function(invite_token)?)?;
    api.set("quota", lua.create_function(invite_quota)?)?;
    api.set("account_quota", lua.create_function(invite_account_quota)?)?;
    Ok(api)
}

// --- token ---

/// Claims as a flat Lua table, plus the room list: `{ host, scope = "service" | "rooms", rooms = { ... } | nil,
/// issued_at, expires_at, nonce, label = ?, key_id }`.
fn claims_to_table(lua: &Lua, claims: &crate::token::Claims, key_id: &str) -> LuaResult<LuaTable> {
    let table = lua.create_table()?;
    table.set("host", claims.host.as_str())?;
    match &claims.scope {
        crate::token::Scope::Service => table.set("scope", "service")?,
        crate::token::Scope::Rooms(rooms) => {
            table.set("scope", "rooms")?;
            table.set(
                "rooms",
                lua.create_sequence_from(rooms.iter().map(String::as_str))?,
            )?;
        }
    }
    table.set("issued_at", claims.iat)?;
    table.set("expires_at", claims.exp)?;
    table.set("nonce", claims.nonce.as_str())?;
    table.set("label", claims.label.as_deref())?;
    table.set("key_id", key_id)?;
    Ok(table)
}

/// The keys of one MUC host, made once from the configured secrets (at load and on `config-reloaded`).
struct Keyring(crate::token::Keyring);

impl LuaUserData for Keyring {
    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        // `keyring:mint(rooms, now, ttl, nonce[, label])` -> token, claims, or nil, code, text. `rooms` is a list
        // of prepped bare room JIDs, or nil for a service-wide token; `nonce` is random bytes.
        methods.add_method(
            "mint",
            |lua,
             this,
             (rooms, now, ttl, nonce, label): (
                Option<Vec<String>>,
                i64,
                i64,
                LuaString,
                Option<LuaString>,
            )| {
                let nonce = nonce.as_bytes();
                let label = label.as_ref().map(|l| l.as_bytes());
                let result = guard(|| {
                    let request = crate::token::Request {
                        host: this.0.host(),
                        rooms,
                        now,
                        ttl,
                        nonce: &nonce,
                        label: label.as_deref(),
                    };
                    let claims = crate::token::Claims::new(&request)?;
                    this.0.mint(&claims).map(|token| (token, claims))
                });
                match result {
                    Ok((token, claims)) => {
                        (token, claims_to_table(lua, &claims, this.0.signing_key_id())?).into_lua_multi(lua)
                    }
                    Err(e) => to_lua::<()>(lua, Err(e)),
                }
            },
        );
        // `keyring:verify(token, now[, first, after])` -> claims, or nil, code, text with code "token-malformed",
        // "token-invalid" (forged, unknown or retired key, other host) or "token-expired". Scope and revocation are
        // the caller's. With `first` and `after` (Lua string positions: the token's first byte, the one after its
        // last), the token is read in place inside a longer string, the Authorization header, which spares Lua a
        // copy per request; bounds outside the string verify nothing.
        methods.add_method(
            "verify",
            |lua, this, (token, now, first, after): (LuaString, i64, Option<usize>, Option<usize>)| {
                let bytes = token.as_bytes();
                let token = match (first, after) {
                    (None, None) => Some(&bytes[..]),
                    (Some(first), Some(after)) if first >= 1 && first <= after => {
                        bytes.get(first - 1..after - 1)
                    }
                    _ => None,
                };
                let Some(token) = token else {
                    return Err(LuaError::runtime("verify: token bounds outside the string"));
                };
                match guard(|| this.0.verify(token, now)) {
                    Ok(v) => claims_to_table(lua, &v.claims, &v.key_id)?.into_lua_multi(lua),
                    Err(e) => to_lua::<()>(lua, Err(e)),
                }
            },
        );
        // `keyring:key_ids()` -> { { id = ..., accept_until = ? }, ... }, the signing key first.
        methods.add_method("key_ids", |lua, this, ()| {
            let list = lua.create_table()?;
            for (id, accept_until) in this.0.key_ids() {
                let key = lua.create_table()?;
                key.set("id", id)?;
                key.set("accept_until", accept_until)?;
                list.push(key)?;
            }
            Ok(list)
        });
    }
}

/// Lua: `token.keyring(host, { { secret = s, accept_until = ? }, ... })` -> keyring, or nil, "bad-request", text.
/// The first secret signs; each is checked with `check_secret` (the message names it by position only).
fn token_keyring(lua: &Lua, (host, keys): (String, LuaTable)) -> LuaResult<LuaMultiValue> {
    let mut secrets: Vec<(LuaString, Option<i64>)> = Vec::new();
    for key in keys.sequence_values::<LuaTable>() {
        let key = key?;
        secrets.push((key.get("secret")?, key.get("accept_until")?));
    }
    let bytes: Vec<_> = secrets.iter().map(|(s, until)| (s.as_bytes(), *until)).collect();
    let result = guard(|| {
        let specs: Vec<crate::token::KeySpec> = bytes
            .iter()
            .map(|(secret, accept_until)| crate::token::KeySpec {
                secret,
                accept_until: *accept_until,
            })
            .collect();
        crate::token::Keyring::new(&host, &specs)
    });
    match result {
        Ok(keyring) => Keyring(keyring).into_lua_multi(lua),
        Err(e) => to_lua::<()>(lua, Err(e)),
    }
}

/// Lua: `token.check_secret(secret, what)` -> true, or nil, "bad-request", text naming `what` (never the secret).
fn token_check_secret(lua: &Lua, (secret, what): (LuaString, String)) -> LuaResult<LuaMultiValue> {
    let secret = secret.as_bytes();
    to_lua(
        lua,
        guard(|| crate::token::check_secret(&secret, &what).map(|()| true)),
    )
}

/// Lua: `token.check_id(s)` -> true, or nil, "bad-request", text: whether `s` can be a token id (nonce).
fn token_check_id(lua: &Lua, id: String) -> LuaResult<LuaMultiValue> {
    let result = guard(|| crate::token::check_nonce(&id).map(|()| true))
        .map_err(|e| Error::bad_request(e.to_string()));
    to_lua(lua, result)
}

/// Lua: `token.parse_utc_time("2025-07-01" | "2025-07-01T12:00:00Z")` -> seconds since the epoch, or nil,
/// "bad-request", text.
fn token_parse_utc_time(lua: &Lua, text: String) -> LuaResult<LuaMultiValue> {
    to_lua(lua, guard(|| crate::token::parse_utc_time(&text)))
}

/// Lua: `token.secrets_equal(expected, given)` -> boolean, in constant time that leaks no length.
fn token_secrets_equal(_: &Lua, (expected, given): (LuaString, LuaString)) -> LuaResult<bool> {
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    Ok(guard(|| Ok(crate::token::secrets_equal(&expected, &given))).unwrap_or(false))
}

fn token_api(lua: &Lua) -> LuaResult<LuaTable> {
    let api = lua.create_table()?;
    api.set("keyring", lua.create_function(token_keyring)?)?;
    api.set("check_secret", lua.create_function(token_check_secret)?)?;
    api.set("check_id", lua.create_function(token_check_id)?)?;
    api.set("parse_utc_time", lua.create_function(token_parse_utc_time)?)?;
    api.set("secrets_equal", lua.create_function(token_secrets_equal)?)?;
    api.set("max_ttl", crate::token::MAX_TTL_SECONDS)?;
    api.set("max_rooms", crate::token::MAX_ROOMS)?;
    Ok(api)
}

// --- kick ---

/// Lua: `kick.parse(body, max_body_bytes, max_reason_chars)` -> muc, kind, target, reason (nil when absent), where
/// kind is "nickname", "occupant-id" or "jid" and target its value; or nil, code, text with code "too-large" or
/// "bad-request". Plain values rather than a table: the request path allocates nothing it does not keep.
fn kick_parse(
    lua: &Lua,
    (body, max_body_bytes, max_reason_chars): (LuaString, usize, usize),
) -> LuaResult<LuaMultiValue> {
    use crate::kick::Target;
    let limits = crate::kick::Limits {
        max_body_bytes,
        max_reason_chars,
    };
    let body = body.as_bytes();
    match guard(|| crate::kick::parse(&body, &limits)) {
        Ok(request) => {
            let (kind, target) = match request.target {
                Target::Nickname(nickname) => ("nickname", nickname),
                Target::OccupantId(id) => ("occupant-id", id),
                Target::Jid(jid) => ("jid", jid),
            };
            (request.muc, kind, target, request.reason).into_lua_multi(lua)
        }
        Err(e) => to_lua::<()>(lua, Err(e)),
    }
}

fn kick_api(lua: &Lua) -> LuaResult<LuaTable> {
    let api = lua.create_table()?;
    api.set("parse", lua.create_function(kick_parse)?)?;
    Ok(api)
}

// --- media ---

/// Reads the options table of `media.prober`: every field optional (defaults as in
/// [`crate::media::MediaLimits::default`]), unknown fields and wrong types refused as `bad-request`. A new
/// option is one more arm here and a field of the limits.
fn read_media_limits(table: Option<LuaTable>) -> LuaResult<Result<crate::media::MediaLimits, Error>> {
    use std::time::Duration;
    let mut limits = crate::media::MediaLimits::default();
    let Some(table) = table else {
        return Ok(Ok(limits));
    };
    fn count(key: &str, value: &LuaValue) -> Result<u64, Error> {
        match value {
            LuaValue::Integer(n) if *n >= 0 => Ok(*n as u64),
            LuaValue::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 9.0e15 => Ok(*n as u64),
            LuaValue::Integer(n) => Err(Error::bad_request(format!(
                "Limit '{key}' must be a non-negative integer, not {n}"
            ))),
            LuaValue::Number(n) => Err(Error::bad_request(format!(
                "Limit '{key}' must be a non-negative integer, not {n}"
            ))),
            other => Err(Error::bad_request(format!(
                "Limit '{key}' must be a non-negative integer, not {}",
                other.type_name()
            ))),
        }
    }
    fn seconds(key: &str, value: &LuaValue) -> Result<Duration, Error> {
        let secs = match value {
            LuaValue::Integer(n) => *n as f64,
            LuaValue::Number(n) => *n,
            other => {
                return Err(Error::bad_request(format!(
                    "Limit '{key}' must be a number of seconds, not {}",
                    other.type_name()
                )))
            }
        };
        Duration::try_from_secs_f64(secs)
            .map_err(|_| Error::bad_request(format!("Limit '{key}' is not a duration")))
    }
    let small = |key: &str, v: &LuaValue| {
        count(key, v).and_then(|n| {
            u32::try_from(n).map_err(|_| Error::bad_request(format!("Limit '{key}' is too large")))
        })
    };
    let mut networks = Vec::new();
    let mut targets = Vec::new();
    let mut nat64 = None;
    let mut only_hosts = Vec::new();
    for pair in table.pairs::<LuaValue, LuaValue>() {
        let (key, value) = pair?;
        let key = match key {
            LuaValue::String(k) => k.to_string_lossy(),
            other => {
                return Ok(Err(Error::bad_request(format!(
                    "Limits have a {} key",
                    other.type_name()
                ))))
            }
        };
        let checked = match key.as_str() {
            "max_bytes" => count(&key, &value).map(|n| limits.fetch.max_bytes = n),
            "max_pixels" => count(&key, &value).map(|n| limits.probe.max_pixels = n),
            "max_webp_pixels" => count(&key, &value).map(|n| limits.probe.max_webp_pixels = n),
            "max_decode_memory" => count(&key, &value).map(|n| limits.probe.max_decode_memory = n),
            "components_x" => small(&key, &value).map(|n| limits.probe.components_x = n),
            "components_y" => small(&key, &value).map(|n| limits.probe.components_y = n),
            "max_redirects" => small(&key, &value).map(|n| limits.fetch.max_redirects = n),
            "connect_timeout" => seconds(&key, &value).map(|d| limits.fetch.connect_timeout = d),
            "timeout" => seconds(&key, &value).map(|d| limits.fetch.timeout = d),
            "cache_ttl" => seconds(&key, &value).map(|d| limits.cache_ttl = d),
            "failure_ttl" => seconds(&key, &value).map(|d| limits.failure_ttl = d),
            "max_downloads" => small(&key, &value).map(|n| limits.max_downloads = n as usize),
            "max_queued" => small(&key, &value).map(|n| limits.max_queued = n as usize),
            "max_per_sender" => small(&key, &value).map(|n| limits.max_per_sender = n as usize),
            "max_per_room" => small(&key, &value).map(|n| limits.max_per_room = n as usize),
            "cache_size" => {
                count(&key, &value).map(|n| limits.cache_size = usize::try_from(n).unwrap_or(usize::MAX))
            }
            "allowed_networks" => read_networks(&value)?.map(|policy| networks = policy.allowed().to_vec()),
            "allowed_targets" => read_strings(&key, &value)?.map(|list| targets = list),
            "nat64_prefixes" => read_strings(&key, &value)?.map(|list| nat64 = Some(list)),
            "only_hosts" => read_strings(&key, &value)?.map(|list| only_hosts = list),
            other => Err(Error::bad_request(format!(
                "Limits have an unknown field '{other}'"
            ))),
        };
        if let Err(e) = checked {
            return Ok(Err(e));
        }
    }
    let nat64 = nat64.unwrap_or_else(|| vec![crate::media::netguard::WELL_KNOWN_NAT64.to_string()]);
    let policy = crate::media::netguard::Policy::new(networks)
        .with_targets(&targets)
        .map_err(|e| prefixed("allowed_targets", e))
        .and_then(|p| p.with_nat64(&nat64).map_err(|e| prefixed("nat64_prefixes", e)))
        .and_then(|p| {
            p.with_only_hosts(&only_hosts)
                .map_err(|e| prefixed("only_hosts", e))
        });
    match policy {
        Ok(policy) => limits.policy = policy,
        Err(e) => return Ok(Err(e)),
    }
    Ok(limits.validate().map(|()| limits))
}

/// `e` with the name of the option it is about in front.
fn prefixed(option: &str, e: Error) -> Error {
    match e {
        Error::BadRequest(text) => Error::bad_request(format!("{option}: {text}")),
        other => other,
    }
}

/// A list of strings (a Lua sequence), or a bad-request naming `key`.
fn read_strings(key: &str, value: &LuaValue) -> LuaResult<Result<Vec<String>, Error>> {
    let LuaValue::Table(list) = value else {
        return Ok(Err(Error::bad_request(format!(
            "{key} must be a list of strings, not {}",
            value.type_name()
        ))));
    };
    let mut out = Vec::new();
    for entry in list.clone().sequence_values::<LuaValue>() {
        match entry? {
            LuaValue::String(s) => out.push(s.to_string_lossy()),
            other => {
                return Ok(Err(Error::bad_request(format!(
                    "{key} has a {} entry",
                    other.type_name()
                ))))
            }
        }
    }
    Ok(Ok(out))
}

/// A list of CIDR strings as an address policy.
fn read_networks(value: &LuaValue) -> LuaResult<Result<crate::media::netguard::Policy, Error>> {
    let LuaValue::Table(list) = value else {
        return Ok(Err(Error::bad_request(
            "allowed_networks must be a list of strings like \"10.0.0.0/8\"",
        )));
    };
    let mut networks = Vec::new();
    for entry in list.clone().sequence_values::<LuaValue>() {
        match entry? {
            LuaValue::String(s) => networks.push(s.to_string_lossy()),
            other => {
                return Ok(Err(Error::bad_request(format!(
                    "allowed_networks has a {} entry",
                    other.type_name()
                ))))
            }
        }
    }
    Ok(crate::media::netguard::Policy::parse(&networks))
}

/// Job result fields as a flat Lua table.
fn fields_to_table(lua: &Lua, fields: &crate::jobs::Fields) -> LuaResult<LuaTable> {
    use crate::jobs::Field;
    let table = lua.create_table()?;
    for (key, value) in fields {
        match value {
            Field::Str(s) => table.set(*key, s.as_str())?,
            Field::Int(n) => table.set(*key, *n)?,
            Field::Bool(b) => table.set(*key, *b)?,
        }
    }
    Ok(table)
}

/// Lua: `media.wakeup_fd()` -> descriptor number to pass to `server.watchfd`, or nil, code, text. It becomes
/// readable when a job has finished; `media.take_results()` drains it.
fn media_wakeup_fd(lua: &Lua, _: ()) -> LuaResult<LuaMultiValue> {
    to_lua(lua, guard(crate::jobs::wakeup_fd))
}

/// A configured prober, as Lua holds it (`media.prober(options)`).
struct LuaProber(crate::media::Prober);

impl LuaUserData for LuaProber {
    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        // `prober:probe(url, sender, room, deadline_seconds)` -> job id, or nil, code, text: "bad-request" for a
        // malformed URL, "sender-busy", "room-busy", "queue-full" when admission sheds it, "too-late" for a
        // deadline already past. The job's result arrives through `media.take_results()`: `{ id, bytes = ?,
        // type, width = ?, height = ?, blurhash = ?, cached }` or `{ id, error = code, text }` with code
        // "blocked", "fetch-failed", "timeout", "too-late". `sender` and `room` may be nil (not counted),
        // `deadline_seconds` nil (the fetch time limit).
        methods.add_method(
            "probe",
            |lua,
             this,
             (url, sender, room, deadline): (
                LuaString,
                Option<LuaString>,
                Option<LuaString>,
                Option<f64>,
            )| {
                let url = url.to_string_lossy();
                let sender = sender.map(|s| s.to_string_lossy()).unwrap_or_default();
                let room = room.map(|s| s.to_string_lossy()).unwrap_or_default();
                let deadline = match deadline {
                    None => None,
                    Some(d) if d.is_nan() => {
                        return to_lua::<()>(lua, Err(Error::bad_request("deadline is not a number")))
                    }
                    Some(d) => Some(
                        std::time::Duration::try_from_secs_f64(d.clamp(0.0, 86400.0)).unwrap_or_default(),
                    ),
                };
                to_lua(lua, guard(|| this.0.probe(&url, &sender, &room, deadline)))
            },
        );
        // `prober:busy(sender, room)` -> "sender-busy" or "room-busy" when a probe for them would be shed at
        // admission now, else nil: a message over its sender's or room's limit is shed without a call per URL.
        methods.add_method("busy", |lua, this, (sender, room): (LuaString, LuaString)| {
            let (sender, room) = (sender.to_str()?, room.to_str()?);
            match guard(|| Ok(this.0.busy(&sender, &room))) {
                Ok(Some(code)) => lua.create_string(code)?.into_lua_multi(lua),
                Ok(None) => LuaNil.into_lua_multi(lua),
                Err(e) => to_lua::<()>(lua, Err(e)),
            }
        });
        // `prober:stats()` -> { queued = n, in_flight = n, fetched_bytes = n }, for the whole process.
        methods.add_method("stats", |lua, _, ()| {
            let stats = guard(|| Ok(crate::media::stats())).unwrap_or_default();
            let t = lua.create_table()?;
            t.set("queued", stats.queued)?;
            t.set("in_flight", stats.in_flight)?;
            t.set("fetched_bytes", stats.fetched_bytes)?;
            Ok(t)
        });
        // `prober:lookup(url)` -> the fresh cached result table (as a job result, `cached = true`), or nil.
        methods.add_method("lookup", |lua, this, url: LuaString| {
            let url = url.to_string_lossy();
            match guard(|| Ok(this.0.lookup(&url))) {
                Ok(Some(meta)) => fields_to_table(lua, &meta.to_fields(true))?.into_lua_multi(lua),
                Ok(None) => LuaNil.into_lua_multi(lua),
                Err(e) => to_lua::<()>(lua, Err(e)),
            }
        });
    }
}

/// Lua: `media.prober(options)` -> a prober handle with `:probe(url)` and `:lookup(url)`, or nil,
/// "bad-request", text for malformed options. The options are read and checked here, once; make a new
/// prober when they change. Fields: `max_bytes`, `max_pixels`, `max_webp_pixels`, `max_decode_memory`,
/// `components_x`, `components_y`, `max_redirects`, `connect_timeout`, `timeout`, `cache_size`, `cache_ttl`,
/// `failure_ttl`, `max_downloads`, `max_queued`, `max_per_sender`, `max_per_room`, `allowed_networks`,
/// `allowed_targets` ("host:port" or URL prefixes), `nat64_prefixes` (IPv6 networks; default `{"64:ff9b::/96"}`)
/// and `only_hosts` (host names; empty for any).
fn media_prober(lua: &Lua, options: Option<LuaTable>) -> LuaResult<LuaMultiValue> {
    let limits = match read_media_limits(options)? {
        Ok(limits) => limits,
        Err(e) => return to_lua::<()>(lua, Err(e)),
    };
    match guard(|| crate::media::Prober::new(limits)) {
        Ok(prober) => LuaProber(prober).into_lua_multi(lua),
        Err(e) => to_lua::<()>(lua, Err(e)),
    }
}

/// Lua: `media.take_results()` -> list of finished jobs, oldest first: `{ id = n, <fields> }` on success,
/// `{ id = n, error = code, text = text }` on failure. Drains the wake-up descriptor.
fn media_take_results(lua: &Lua, _: ()) -> LuaResult<LuaTable> {
    let list = lua.create_table()?;
    let done = guard(|| Ok(crate::jobs::take_results())).unwrap_or_default();
    for (i, completion) in done.into_iter().enumerate() {
        let entry = match &completion.result {
            Ok(fields) => fields_to_table(lua, fields)?,
            Err(e) => {
                let t = lua.create_table()?;
                t.set("error", e.code())?;
                t.set("text", e.to_string())?;
                t
            }
        };
        entry.set("id", completion.id)?;
        let _ = guard(|| {
            crate::media::settle(completion.id);
            Ok(())
        });
        list.set(i + 1, entry)?;
    }
    Ok(list)
}

/// Lua: `media.cancel(id)` -> whether the job was still running (its result will never arrive).
fn media_cancel(_: &Lua, id: u64) -> LuaResult<bool> {
    Ok(guard(|| {
        let running = crate::jobs::cancel(id);
        crate::media::settle(id);
        Ok(running)
    })
    .unwrap_or(false))
}

/// Lua: `media.is_queued(id)` -> whether probe job `id` still waits for a download slot (its download has not
/// started): a probe cancelled then, because its hold ended, could not start in time (`too-late`).
fn media_is_queued(_: &Lua, id: u64) -> LuaResult<bool> {
    Ok(guard(|| Ok(crate::media::is_queued(id))).unwrap_or(false))
}

/// Lua: `media.running()` -> number of jobs submitted and not yet finished or cancelled.
fn media_running(_: &Lua, _: ()) -> LuaResult<usize> {
    Ok(guard(|| Ok(crate::jobs::running())).unwrap_or(0))
}

/// Lua: `media.check_networks(list)` -> the list in canonical form ("10.0.0.0/8"), or nil, "bad-request",
/// text naming the first bad entry. For checking `muc_media_metadata_allowed_networks` at load time.
fn media_check_networks(lua: &Lua, list: LuaValue) -> LuaResult<LuaMultiValue> {
    match read_networks(&list)? {
        Ok(policy) => {
            let out = lua.create_table()?;
            for (i, net) in policy.allowed().iter().enumerate() {
                out.set(i + 1, net.to_string())?;
            }
            out.into_lua_multi(lua)
        }
        Err(e) => to_lua::<()>(lua, Err(e)),
    }
}

/// Lua: `media.test_job(kind[, value])` -> job id of a job for the seam spec: "echo" finishes with
/// `{ value = value }`, "error" with `bad-request`, "panic" panics (arriving as `internal-error`) and "sleep"
/// finishes after `value` seconds.
fn media_test_job(lua: &Lua, (kind, value): (String, Option<LuaValue>)) -> LuaResult<LuaMultiValue> {
    use crate::jobs::Field;
    let text = match &value {
        Some(LuaValue::String(s)) => s.to_string_lossy(),
        _ => String::new(),
    };
    let secs = match &value {
        Some(LuaValue::Integer(n)) => *n as f64,
        Some(LuaValue::Number(n)) => *n,
        _ => 0.0,
    };
    let result = guard(|| match kind.as_str() {
        "echo" => crate::jobs::submit(async move { Ok(vec![("value", Field::Str(text))]) }),
        "error" => {
            crate::jobs::submit(async { Err(Error::bad_request("deliberate error for the seam test")) })
        }
        "panic" => crate::jobs::submit(async { panic!("deliberate panic in a worker") }),
        "sleep" => {
            let d = std::time::Duration::try_from_secs_f64(secs)
                .map_err(|_| Error::bad_request("bad duration"))?;
            crate::jobs::submit(async move {
                tokio::time::sleep(d).await;
                Ok(Vec::new())
            })
        }
        other => Err(Error::bad_request(format!("unknown test job '{other}'"))),
    });
    to_lua(lua, result)
}

fn media_api(lua: &Lua) -> LuaResult<LuaTable> {
    let api = lua.create_table()?;
    api.set("wakeup_fd", lua.create_function(media_wakeup_fd)?)?;
    api.set("prober", lua.create_function(media_prober)?)?;
    api.set("take_results", lua.create_function(media_take_results)?)?;
    api.set("cancel", lua.create_function(media_cancel)?)?;
    api.set("running", lua.create_function(media_running)?)?;
    api.set("is_queued", lua.create_function(media_is_queued)?)?;
    api.set("check_networks", lua.create_function(media_check_networks)?)?;
    api.set("test_job", lua.create_function(media_test_job)?)?;
    Ok(api)
}
/// Lua: `test_panic()` raises a Rust panic inside the guard; the seam must answer `nil, "internal-error"`.
/// Exists so the busted spec can prove that a panic never reaches Lua.
fn test_panic(lua: &Lua, _: ()) -> LuaResult<LuaMultiValue> {
    to_lua::<bool>(lua, guard(|| panic!("deliberate panic for the seam test")))
}

/// Entry point Lua's `package.loadlib` calls: builds the export table.
#[mlua::lua_module]
fn prosody_native(lua: &Lua) -> LuaResult<LuaTable> {
    let exports = lua.create_table()?;
    exports.set("version", crate::VERSION)?;
    exports.set("validate", validate_api(lua)?)?;
    exports.set("invite", invite_api(lua)?)?;
    exports.set("token", token_api(lua)?)?;
    exports.set("kick", kick_api(lua)?)?;
    exports.set("media", media_api(lua)?)?;
    exports.set("test_panic", lua.create_function(test_panic)?)?;
    Ok(exports)
}
