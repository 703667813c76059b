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
fn validate_text(lua: &Lua, (s, max_chars, what): (LuaString, usize, Option<String>)) -> LuaResult<LuaMultiValue> {
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
    match guard(|| validate::jid(&bytes).map(|j| (j.node.map(str::to_owned), j.host.to_owned(), j.resource.map(str::to_owned)))) {
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
        other => return Err(LuaError::runtime(format!("hue: number or string expected, got {}", other.type_name()))),
    };
    to_lua(lua, result)
}

/// A hat attachment as plain Rust data, checked field by field.
struct Attachment {
    active: Option<bool>,
    required: Option<bool>,
    title: Option<String>,
    hue: Option<f64>,
}

fn read_attachment(table: &LuaTable, max_title_chars: usize) -> LuaResult<Result<Attachment, Error>> {
    let mut attachment = Attachment { active: None, required: None, title: None, hue: None };
    for pair in table.pairs::<LuaValue, LuaValue>() {
        let (key, value) = pair?;
        let key = match key {
            LuaValue::String(k) => k.to_string_lossy(),
            other => return Ok(Err(Error::bad_request(format!("Attachment has a {} key", other.type_name())))),
        };
        let checked = match (key.as_str(), value) {
            ("active", LuaValue::Boolean(b)) => Ok(attachment.active = Some(b)),
            ("required", LuaValue::Boolean(b)) => Ok(attachment.required = Some(b)),
            ("title", LuaValue::String(s)) => validate::text(&s.as_bytes(), max_title_chars, "Hat title")
                .map(|t| attachment.title = Some(t.to_owned())),
            ("hue", LuaValue::Integer(n)) => validate::check_hue(n as f64).map(|h| attachment.hue = Some(h)),
            ("hue", LuaValue::Number(n)) => validate::check_hue(n).map(|h| attachment.hue = Some(h)),
            ("active" | "required", v) => Err(Error::bad_request(format!("Attachment field '{key}' must be a boolean, not {}", v.type_name()))),
            ("title", v) => Err(Error::bad_request(format!("Attachment field 'title' must be a string, not {}", v.type_name()))),
            ("hue", v) => Err(Error::bad_request(format!("Attachment field 'hue' must be a number, not {}", v.type_name()))),
            (other, _) => Err(Error::bad_request(format!("Attachment has an unknown field '{other}'"))),
        };
        if let Err(e) = checked {
            return Ok(Err(e));
        }
    }
    Ok(Ok(attachment))
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
    let attachment = match attachment {
        Some(table) => match read_attachment(&table, max_title_chars)? {
            Ok(a) => a,
            Err(e) => return to_lua::<()>(lua, Err(e)),
        },
        None => Attachment { active: None, required: None, title: None, hue: None },
    };
    let clean = lua.create_table()?;
    clean.set("active", attachment.active)?;
    clean.set("required", attachment.required)?;
    clean.set("title", attachment.title)?;
    clean.set("hue", attachment.hue)?;
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

fn invite_api(lua: &Lua) -> LuaResult<LuaTable> {
    let api = lua.create_table()?;
    api.set("validity", lua.create_function(invite_validity)?)?;
    api.set("describe_period", lua.create_function(invite_describe_period)?)?;
    api.set("username", lua.create_function(invite_username)?)?;
    api.set("note", lua.create_function(invite_note)?)?;
    api.set("token", lua.create_function(invite_token)?)?;
    api.set("quota", lua.create_function(invite_quota)?)?;
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
    exports.set("test_panic", lua.create_function(test_panic)?)?;
    Ok(exports)
}
