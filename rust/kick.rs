//! The JSON body of an HTTP kick request (mod_http_muc_kick): `{"muc", "reason"?}` and one of `"nickname"`,
//! `"occupant_id"` (XEP-0421) or `"jid"` (the occupant's real bare JID).
//!
//! The body is parsed with serde_json and checked field by field, so that every refusal says exactly what
//! is wrong ("'muc' must be a string, not a number"). Unknown fields are refused, to catch typos such as
//! `"nick"`, and so is a field given twice (JSON parsers disagree on which copy wins). A nickname is taken
//! exactly as sent, spaces included: Prosody accepts `" Spammer "` as a nickname, so it must be kickable. JIDs
//! are checked for shape only; Lua preps them with Prosody's `jid.prep` and looks the room up. Nothing here
//! can panic on input, however hostile.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::Error;
use crate::validate;

/// Longest nickname, in characters: a nickname is the resource part of an occupant JID.
pub const MAX_NICKNAME_CHARS: usize = 1023;

/// Longest occupant id, in characters (Prosody's are 44: base64 of an HMAC-SHA256).
pub const MAX_OCCUPANT_ID_CHARS: usize = 128;

/// The fields a kick request may have.
const FIELDS: [&str; 5] = ["muc", "nickname", "occupant_id", "jid", "reason"];

/// Limits passed in by the caller from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest reason accepted, in characters.
    pub max_reason_chars: usize,
}

/// Who is to be kicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The occupant with this nickname, exactly as given.
    Nickname(String),
    /// The occupant(s) with this XEP-0421 occupant id.
    OccupantId(String),
    /// The occupant(s) whose real bare JID is this (shape-checked, not stringprepped).
    Jid(String),
}

/// A checked kick request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KickRequest {
    /// Bare JID of the room (`room@host`), shape-checked but not stringprepped.
    pub muc: String,
    /// Who to kick.
    pub target: Target,
    /// Reason shown to the kicked user; `None` when absent, `null` or blank.
    pub reason: Option<String>,
}

/// A JSON string as read: borrowed from the body unless it has escapes. A request is read on Prosody's
/// event loop, so reading it allocates as little as it can.
struct JsonStr<'de>(Cow<'de, str>);

struct JsonStrVisitor;

impl<'de> Visitor<'de> for JsonStrVisitor {
    type Value = JsonStr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<JsonStr<'de>, E> {
        Ok(JsonStr(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<JsonStr<'de>, E> {
        Ok(JsonStr(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<JsonStr<'de>, E> {
        Ok(JsonStr(Cow::Owned(s)))
    }
}

impl<'de> Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(JsonStrVisitor)
    }
}

/// A field's value: a string, null, or the kind of JSON value it was instead (for the error message).
enum Field<'de> {
    Str(Cow<'de, str>),
    Null,
    Other(&'static str),
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Field<'de>, E> {
        Ok(Field::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Field<'de>, E> {
        Ok(Field::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Field<'de>, E> {
        Ok(Field::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Field<'de>, E> {
        Ok(Field::Other("a number"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an object"))
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// A body as read by [`BodyVisitor`]: an object's fields in order, with the first repeated name, or the
/// kind of JSON value the body was instead.
enum Body<'de> {
    Object {
        fields: Vec<(Cow<'de, str>, Field<'de>)>,
        repeated: Option<Cow<'de, str>>,
    },
    Other(&'static str),
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
        let mut fields: Vec<(Cow<'de, str>, Field<'de>)> = Vec::with_capacity(FIELDS.len());
        let mut repeated = None;
        while let Some(JsonStr(key)) = map.next_key::<JsonStr>()? {
            if fields.iter().any(|(k, _)| *k == key) {
                repeated.get_or_insert(key);
                map.next_value::<IgnoredAny>()?;
            } else {
                let value = map.next_value::<Field>()?;
                fields.push((key, value));
            }
        }
        Ok(Body::Object { fields, repeated })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Body::Other("an array"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Body<'de>, E> {
        Ok(Body::Other("a string"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body<'de>, E> {
        Ok(Body::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body<'de>, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body<'de>, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body<'de>, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_unit<E>(self) -> Result<Body<'de>, E> {
        Ok(Body::Other("null"))
    }
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Body<'de>, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

fn string_field<'a>(fields: &'a [(Cow<str>, Field)], name: &str) -> Result<Option<&'a str>, Error> {
    match fields.iter().find(|(k, _)| k == name).map(|(_, v)| v) {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s)),
        Some(Field::Other(kind)) => Err(Error::bad_request(format!(
            "'{name}' must be a string, not {kind}"
        ))),
    }
}

fn check_room(muc: &str) -> Result<String, Error> {
    let jid = validate::jid(muc.as_bytes())
        .map_err(|e| Error::bad_request(format!("'muc' is not a valid room JID: {e}")))?;
    if jid.node.is_none() {
        return Err(Error::bad_request(
            "'muc' must be a room JID (room@host), not a bare domain",
        ));
    }
    if jid.resource.is_some() {
        return Err(Error::bad_request(
            "'muc' must be a bare room JID, without '/nickname'",
        ));
    }
    Ok(muc.to_owned())
}

/// A nickname exactly as sent: not empty, bounded, no control characters. Leading, trailing and only spaces
/// are kept, since Prosody lets occupants join with them.
fn check_nickname(nickname: &str) -> Result<String, Error> {
    if nickname.is_empty() {
        return Err(Error::bad_request("'nickname' is empty"));
    }
    if nickname.chars().count() > MAX_NICKNAME_CHARS {
        return Err(Error::bad_request(format!(
            "'nickname' is longer than {MAX_NICKNAME_CHARS} characters"
        )));
    }
    if nickname.chars().any(char::is_control) {
        return Err(Error::bad_request("'nickname' contains control characters"));
    }
    Ok(nickname.to_owned())
}

fn check_occupant_id(id: &str) -> Result<String, Error> {
    if id.is_empty() {
        return Err(Error::bad_request("'occupant_id' is empty"));
    }
    if id.len() > MAX_OCCUPANT_ID_CHARS || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::bad_request(format!(
            "'occupant_id' must be at most {MAX_OCCUPANT_ID_CHARS} printable ASCII characters without spaces"
        )));
    }
    Ok(id.to_owned())
}

fn check_real_jid(text: &str) -> Result<String, Error> {
    let jid = validate::jid(text.as_bytes())
        .map_err(|e| Error::bad_request(format!("'jid' is not a valid JID: {e}")))?;
    if jid.node.is_none() || jid.resource.is_some() {
        return Err(Error::bad_request(
            "'jid' must be the occupant's bare JID (user@host), without a resource",
        ));
    }
    Ok(text.to_owned())
}

/// Parses and checks a kick request body.
///
/// Errors: [`Error::TooLarge`] for a body over `limits.max_body_bytes`; [`Error::BadRequest`] for a body
/// that is empty, not JSON or not a JSON object, has unknown or repeated fields, misses `muc` or names no
/// occupant or more than one way, has a field of the wrong type, a malformed nickname, occupant id, JID or
/// room JID, or a reason that is too long or has control characters.
pub fn parse(body: &[u8], limits: &Limits) -> Result<KickRequest, Error> {
    if body.len() > limits.max_body_bytes {
        return Err(Error::TooLarge(format!(
            "Body is larger than {} bytes",
            limits.max_body_bytes
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request(
            "Body is empty; expected a JSON object with 'muc' and 'nickname'",
        ));
    }
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("Body is not valid JSON: {e}")))?;
    let fields = match body {
        Body::Other(kind) => {
            return Err(Error::bad_request(format!(
                "Body must be a JSON object, not {kind}"
            )))
        }
        Body::Object {
            repeated: Some(name), ..
        } => {
            return Err(Error::bad_request(format!(
                "Field '{}' appears more than once",
                name.escape_debug()
            )))
        }
        Body::Object { fields, .. } => fields,
    };
    if let Some((unknown, _)) = fields.iter().find(|(k, _)| !FIELDS.contains(&k.as_ref())) {
        return Err(Error::bad_request(format!(
            "Unknown field '{}'; expected 'muc', one of 'nickname', 'occupant_id' or 'jid', and optionally 'reason'",
            unknown.escape_debug()
        )));
    }
    let muc = string_field(&fields, "muc")?;
    let nickname = string_field(&fields, "nickname")?;
    let occupant_id = string_field(&fields, "occupant_id")?;
    let real_jid = string_field(&fields, "jid")?;
    let reason = string_field(&fields, "reason")?;
    let targets = [nickname, occupant_id, real_jid].iter().flatten().count();
    let Some(muc) = muc else {
        return Err(Error::bad_request(if targets == 0 {
            "Missing 'muc' and 'nickname'"
        } else {
            "Missing 'muc'"
        }));
    };
    let target = match (nickname, occupant_id, real_jid) {
        (Some(nickname), None, None) => Target::Nickname(check_nickname(nickname)?),
        (None, Some(id), None) => Target::OccupantId(check_occupant_id(id)?),
        (None, None, Some(real_jid)) => Target::Jid(check_real_jid(real_jid)?),
        (None, None, None) => {
            return Err(Error::bad_request(
                "Missing 'nickname' (or 'occupant_id', or 'jid'): who is to be kicked?",
            ))
        }
        _ => {
            return Err(Error::bad_request(
                "Name the occupant one way only: 'nickname', 'occupant_id' or 'jid'",
            ))
        }
    };
    let muc = check_room(muc)?;
    let reason = match reason {
        Some(r) if !r.trim().is_empty() => {
            Some(validate::text(r.as_bytes(), limits.max_reason_chars, "Reason")?)
        }
        _ => None,
    };
    Ok(KickRequest {
        muc,
        target,
        reason: reason.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_body_bytes: 4096,
        max_reason_chars: 200,
    };

    fn parse_str(body: &str) -> Result<KickRequest, Error> {
        parse(body.as_bytes(), &LIMITS)
    }

    #[test]
    fn parses_a_full_request() {
        let request = parse_str(r#"{"nickname":"Bob","muc":"snuggery@chat.example.org","reason":"Spam"}"#);
        assert_eq!(
            Ok(KickRequest {
                muc: "snuggery@chat.example.org".into(),
                target: Target::Nickname("Bob".into()),
                reason: Some("Spam".into())
            }),
            request
        );
    }

    #[test]
    fn the_occupant_can_be_named_by_occupant_id_or_real_jid() {
        let by_id = parse_str(r#"{"occupant_id":"dGhpcyBpcyBhbiBpZA+/=","muc":"r@c.example"}"#).unwrap();
        assert_eq!(Target::OccupantId("dGhpcyBpcyBhbiBpZA+/=".into()), by_id.target);
        let by_jid = parse_str(r#"{"jid":"bob@example.org","muc":"r@c.example"}"#).unwrap();
        assert_eq!(Target::Jid("bob@example.org".into()), by_jid.target);
    }

    #[test]
    fn nicknames_keep_their_spaces() {
        for nickname in [" Spammer ", "Spammer ", " ", "Bob  Smith"] {
            let body = serde_json::json!({ "nickname": nickname, "muc": "r@c.example" }).to_string();
            assert_eq!(
                Target::Nickname(nickname.into()),
                parse_str(&body).unwrap().target
            );
        }
    }

    #[test]
    fn escaped_names_and_values_read_as_their_text() {
        let request =
            parse_str(r#"{"nickn\u0061me":"B\u00f6b \"B\"","muc":"r\u0040c.example","reason":"a\/b"}"#)
                .unwrap();
        assert_eq!(Target::Nickname("B\u{f6}b \"B\"".into()), request.target);
        assert_eq!("r@c.example", request.muc);
        assert_eq!(Some("a/b".into()), request.reason);
    }

    #[test]
    fn reason_is_optional_and_null_or_blank_means_none() {
        for body in [
            r#"{"nickname":"Bob","muc":"r@chat.example.org"}"#,
            r#"{"nickname":"Bob","muc":"r@chat.example.org","reason":null}"#,
            r#"{"nickname":"Bob","muc":"r@chat.example.org","reason":"  "}"#,
        ] {
            assert_eq!(None, parse_str(body).unwrap().reason, "{body}");
        }
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases = [
            ("", "Body is empty"),
            ("  \n", "Body is empty"),
            ("{nickname: 'Bob'}", "Body is not valid JSON"),
            (
                r#"{"nickname":"Bob","muc":"r@chat.example.org""#,
                "Body is not valid JSON",
            ),
            (r#"{"nickname":"Bob"} {}"#, "Body is not valid JSON"),
            ("[1,2]", "Body must be a JSON object, not an array"),
            ("\"Bob\"", "Body must be a JSON object, not a string"),
            ("null", "Body must be a JSON object, not null"),
            ("42", "Body must be a JSON object, not a number"),
            ("{}", "Missing 'muc' and 'nickname'"),
            (r#"{"muc":"r@chat.example.org"}"#, "Missing 'nickname'"),
            (r#"{"nickname":"Bob"}"#, "Missing 'muc'"),
            (
                r#"{"nickname":null,"muc":"r@chat.example.org"}"#,
                "Missing 'nickname'",
            ),
            (
                r#"{"nickname":42,"muc":"r@chat.example.org"}"#,
                "'nickname' must be a string, not a number",
            ),
            (
                r#"{"nickname":"Bob","muc":["r@chat.example.org"]}"#,
                "'muc' must be a string, not an array",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@c.example","reason":true}"#,
                "'reason' must be a string, not a boolean",
            ),
            (
                r#"{"nickname":{"first":["B","o","b"]},"muc":"r@c.example"}"#,
                "'nickname' must be a string, not an object",
            ),
            (
                r#"{"extra":{"deep":[[1],{"a":null}]},"nickname":"Bob","muc":"r@c.example"}"#,
                "Unknown field 'extra'",
            ),
            (
                r#"{"nick":"Bob","muc":"r@chat.example.org"}"#,
                "Unknown field 'nick'",
            ),
            (
                r#"{"nickname":"","muc":"r@chat.example.org"}"#,
                "'nickname' is empty",
            ),
            (
                r#"{"nickname":"B\u0000b","muc":"r@chat.example.org"}"#,
                "control characters",
            ),
            (
                r#"{"nickname":"Bob","jid":"bob@example.org","muc":"r@c.example"}"#,
                "one way only",
            ),
            (
                r#"{"occupant_id":"","muc":"r@c.example"}"#,
                "'occupant_id' is empty",
            ),
            (r#"{"occupant_id":"a b","muc":"r@c.example"}"#, "printable ASCII"),
            (
                r#"{"jid":"example.org","muc":"r@c.example"}"#,
                "bare JID (user@host)",
            ),
            (
                r#"{"jid":"bob@example.org/phone","muc":"r@c.example"}"#,
                "without a resource",
            ),
            (
                r#"{"jid":"b ob@example.org","muc":"r@c.example"}"#,
                "'jid' is not a valid JID",
            ),
            (
                r#"{"nickname":"Bob","muc":"chat.example.org"}"#,
                "not a bare domain",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@chat.example.org/Bob"}"#,
                "without '/nickname'",
            ),
            (
                r#"{"nickname":"Bob","muc":"@chat.example.org"}"#,
                "not a valid room JID",
            ),
            (r#"{"nickname":"Bob","muc":"r@"}"#, "not a valid room JID"),
            (
                r#"{"nickname":"Bob","muc":"a b@chat.example.org"}"#,
                "not a valid room JID",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@chat..example.org"}"#,
                "not a valid room JID",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@c.example","reason":"a\nb"}"#,
                "Reason contains control characters",
            ),
        ];
        for (body, why) in cases {
            let e = parse_str(body).unwrap_err();
            assert_eq!("bad-request", e.code(), "{body}");
            assert!(e.to_string().contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn a_repeated_field_is_refused_whichever_copy_would_win() {
        for body in [
            r#"{"nickname":"Alice","muc":"r@c.example","nickname":"Bob"}"#,
            r#"{"nickname":"Bob","muc":"r@c.example","muc":"other@c.example"}"#,
            r#"{"nickname":"Bob","muc":"r@c.example","reason":"a","reason":"b"}"#,
            r#"{"nickname":"Bob","muc":"r@c.example","nickn\u0061me":"Eve"}"#,
        ] {
            let e = parse_str(body).unwrap_err();
            assert_eq!("bad-request", e.code(), "{body}");
            assert!(e.to_string().contains("appears more than once"), "{body}: {e}");
        }
    }

    #[test]
    fn limits_come_from_the_caller() {
        let long_reason = format!(
            r#"{{"nickname":"Bob","muc":"r@c.example","reason":"{}"}}"#,
            "x".repeat(201)
        );
        assert_eq!(
            "Reason is longer than 200 characters",
            parse_str(&long_reason).unwrap_err().to_string()
        );
        let big = format!(
            r#"{{"nickname":"Bob","muc":"r@c.example","reason":"{}"}}"#,
            "x".repeat(5000)
        );
        let e = parse_str(&big).unwrap_err();
        assert_eq!("too-large", e.code());
        assert_eq!("Body is larger than 4096 bytes", e.to_string());
    }

    #[test]
    fn invalid_utf8_is_not_json() {
        let e = parse(b"{\"nickname\":\"\xff\",\"muc\":\"r@c.example\"}", &LIMITS).unwrap_err();
        assert_eq!("bad-request", e.code());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!(
            r#"{{"nickname":"Bob","muc":"r@c.example","reason":{}1{}}}"#,
            "[".repeat(2000),
            "]".repeat(2000)
        );
        let limits = Limits {
            max_body_bytes: 1 << 20,
            ..LIMITS
        };
        assert_eq!("bad-request", parse(deep.as_bytes(), &limits).unwrap_err().code());
        let deep_array = format!("{}1{}", "[".repeat(2000), "]".repeat(2000));
        assert_eq!(
            "bad-request",
            parse(deep_array.as_bytes(), &limits).unwrap_err().code()
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body, &LIMITS);
        }

        #[test]
        fn never_panics_on_arbitrary_room_strings(muc in ".{0,80}", nickname in ".{0,40}") {
            let body = serde_json::json!({ "nickname": nickname, "muc": muc }).to_string();
            if let Ok(request) = parse(body.as_bytes(), &LIMITS) {
                prop_assert!(request.muc.contains('@'));
                prop_assert_eq!(Target::Nickname(nickname), request.target);
            }
        }
    }
}
