//! Validation of what users and other modules hand us before anything is stored: hat URIs, JIDs,
//! nicknames, display titles and hues.
//!
//! Every check works on raw bytes, because a Lua string can hold anything, and returns
//! [`Error::BadRequest`] with a message that says what to fix.

use crate::error::Error;

/// Longest hat URI we store, in bytes. Hat URIs end up in every presence of the wearer.
pub const MAX_URI_BYTES: usize = 1024;

/// Longest part of a JID in bytes (RFC 7622, section 3).
pub const MAX_JID_PART_BYTES: usize = 1023;

/// A JID split into its parts. Parts are checked for shape, not stringprep'd: Prosody's `jid.prep` does that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jid<'a> {
    /// Local part, before `@`.
    pub node: Option<&'a str>,
    /// Domain part.
    pub host: &'a str,
    /// Resource part, after the first `/`.
    pub resource: Option<&'a str>,
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, Error> {
    std::str::from_utf8(bytes).map_err(|_| Error::bad_request(format!("{what} is not valid UTF-8")))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_reserved(b: u8) -> bool {
    matches!(
        b,
        b':' | b'/'
            | b'?'
            | b'#'
            | b'['
            | b']'
            | b'@'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
    )
}

/// Checks that `bytes` is a URI with a scheme
/// (RFC 3986 `URI = scheme ":" hier-part [ "?" query ] [ "#" fragment ]`), as hat ids must be. Only
/// RFC 3986 characters and well-formed percent-escapes are allowed, so no spaces, controls or raw non-ASCII.
pub fn uri(bytes: &[u8]) -> Result<&str, Error> {
    if bytes.is_empty() {
        return Err(Error::bad_request("URI is empty"));
    }
    if bytes.len() > MAX_URI_BYTES {
        return Err(Error::bad_request(format!(
            "URI is longer than {MAX_URI_BYTES} bytes"
        )));
    }
    let colon = bytes
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| Error::bad_request("URI has no scheme (expected e.g. urn:uuid:… or https://…)"))?;
    let (scheme, rest) = bytes.split_at(colon);
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(Error::bad_request("URI scheme is malformed"));
    }
    let rest = &rest[1..];
    if rest.is_empty() {
        return Err(Error::bad_request("URI has nothing after its scheme"));
    }
    let mut i = 0;
    while let Some(&b) = rest.get(i) {
        if b == b'%' {
            let escaped = rest
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !escaped {
                return Err(Error::bad_request("URI has a malformed percent-escape"));
            }
            i += 3;
        } else if is_unreserved(b) || is_reserved(b) {
            i += 1;
        } else {
            return Err(Error::bad_request(format!(
                "URI contains a character that must be percent-encoded (byte 0x{b:02x})"
            )));
        }
    }
    if rest.iter().filter(|&&b| b == b'#').count() > 1 {
        return Err(Error::bad_request("URI has more than one '#'"));
    }
    utf8(bytes, "URI")
}

/// Checks a human-readable label (hat title, reason, note): valid UTF-8, at most `max_chars` characters,
/// no control characters, not blank.
pub fn text<'a>(bytes: &'a [u8], max_chars: usize, what: &str) -> Result<&'a str, Error> {
    let s = utf8(bytes, what)?;
    if s.trim().is_empty() {
        return Err(Error::bad_request(format!("{what} is empty")));
    }
    if s.chars().count() > max_chars {
        return Err(Error::bad_request(format!(
            "{what} is longer than {max_chars} characters"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::bad_request(format!("{what} contains control characters")));
    }
    Ok(s)
}

/// Checks a MUC nickname: like [`text`], and no leading or trailing whitespace (clients cannot address it).
pub fn nickname(bytes: &[u8], max_chars: usize) -> Result<&str, Error> {
    let s = text(bytes, max_chars, "Nickname")?;
    if s.trim() != s {
        return Err(Error::bad_request("Nickname starts or ends with whitespace"));
    }
    Ok(s)
}

fn jid_part<'a>(part: &'a str, what: &str) -> Result<&'a str, Error> {
    if part.is_empty() {
        return Err(Error::bad_request(format!("JID {what} is empty")));
    }
    if part.len() > MAX_JID_PART_BYTES {
        return Err(Error::bad_request(format!(
            "JID {what} is longer than {MAX_JID_PART_BYTES} bytes"
        )));
    }
    if part.chars().any(|c| c.is_control()) {
        return Err(Error::bad_request(format!(
            "JID {what} contains control characters"
        )));
    }
    Ok(part)
}

/// Splits and checks a JID (`node@host/resource`) for shape: parts non-empty and bounded, no characters the
/// node and host may never hold. Stringprep is left to Prosody's `jid.prep`.
pub fn jid(bytes: &[u8]) -> Result<Jid<'_>, Error> {
    let s = utf8(bytes, "JID")?;
    let (bare, resource) = match s.split_once('/') {
        Some((bare, resource)) => (bare, Some(jid_part(resource, "resource")?)),
        None => (s, None),
    };
    let (node, host) = match bare.split_once('@') {
        Some((node, host)) => (Some(jid_part(node, "local part")?), host),
        None => (None, bare),
    };
    let host = jid_part(host, "domain")?;
    if let Some(node) = node {
        if let Some(c) = node
            .chars()
            .find(|c| "\"&'/:<>@".contains(*c) || c.is_whitespace())
        {
            return Err(Error::bad_request(format!(
                "JID local part may not contain {c:?}"
            )));
        }
    }
    if let Some(c) = host
        .chars()
        .find(|c| c.is_whitespace() || "@/\\\"&'<>".contains(*c))
    {
        return Err(Error::bad_request(format!("JID domain may not contain {c:?}")));
    }
    if host.starts_with('.') || host.ends_with("..") || host.contains("..") {
        return Err(Error::bad_request("JID domain has an empty label"));
    }
    Ok(Jid { node, host, resource })
}

/// Parses a hue in degrees (XEP-0317): a finite number with `0 <= hue < 360`.
pub fn hue(bytes: &[u8]) -> Result<f64, Error> {
    let s = utf8(bytes, "Hue")?.trim();
    let value: f64 = s
        .parse()
        .map_err(|_| Error::bad_request("Hue must be a number of degrees, 0 to 360"))?;
    check_hue(value)
}

/// Checks a numeric hue, as [`hue`] does for text.
pub fn check_hue(value: f64) -> Result<f64, Error> {
    if value.is_finite() && (0.0..360.0).contains(&value) {
        Ok(value)
    } else {
        Err(Error::bad_request("Hue must be at least 0 and less than 360"))
    }
}

/// A value from a hat attachment, as the caller's language typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A boolean.
    Bool(bool),
    /// A string, as raw bytes.
    Text(Vec<u8>),
    /// A number.
    Number(f64),
    /// Anything else, named by its type ("table", "function", ...).
    Other(&'static str),
}

impl FieldValue {
    fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "boolean",
            FieldValue::Text(_) => "string",
            FieldValue::Number(_) => "number",
            FieldValue::Other(name) => name,
        }
    }
}

/// Who assigned a hat, which decides who may change it: hats the service or another module assigned are
/// protected from the room's owners and admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigner {
    /// A room owner or admin, through the room's XEP-0317 commands.
    Room,
    /// A service admin, through any command.
    Service,
    /// Another Prosody module, through mod_muc_hats_api.
    Api,
}

impl Assigner {
    /// The name stored with the hat and shown to Lua.
    pub fn as_str(self) -> &'static str {
        match self {
            Assigner::Room => "room",
            Assigner::Service => "service",
            Assigner::Api => "api",
        }
    }

    /// Reads a stored or submitted name.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        match bytes {
            b"room" => Ok(Assigner::Room),
            b"service" => Ok(Assigner::Service),
            b"api" => Ok(Assigner::Api),
            _ => Err(Error::bad_request(
                "Attachment field 'assigned_by' must be \"room\", \"service\" or \"api\"",
            )),
        }
    }
}

/// A checked hat attachment (mod_muc_hats_api's data model): every field optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attachment {
    /// The wearer currently displays the hat.
    pub active: Option<bool>,
    /// The wearer may not remove the hat.
    pub required: Option<bool>,
    /// Display title.
    pub title: Option<String>,
    /// Colour hint in degrees.
    pub hue: Option<f64>,
    /// Who assigned the hat.
    pub assigned_by: Option<Assigner>,
}

/// Checks the fields of a hat attachment: known names only, each of its type, the title bounded to
/// `max_title_chars` and the hue in range. A key that is not a string comes as `Err(type name)`.
pub fn attachment<I>(fields: I, max_title_chars: usize) -> Result<Attachment, Error>
where
    I: IntoIterator<Item = (Result<String, &'static str>, FieldValue)>,
{
    let mut checked = Attachment::default();
    for (key, value) in fields {
        let key = key.map_err(|kind| Error::bad_request(format!("Attachment has a {kind} key")))?;
        let wrong_type = |wanted: &str| {
            Error::bad_request(format!(
                "Attachment field '{key}' must be a {wanted}, not {}",
                value.type_name()
            ))
        };
        match (key.as_str(), &value) {
            ("active", FieldValue::Bool(b)) => checked.active = Some(*b),
            ("required", FieldValue::Bool(b)) => checked.required = Some(*b),
            ("title", FieldValue::Text(t)) => {
                checked.title = Some(text(t, max_title_chars, "Hat title")?.to_owned())
            }
            ("hue", FieldValue::Number(n)) => checked.hue = Some(check_hue(*n)?),
            ("assigned_by", FieldValue::Text(t)) => checked.assigned_by = Some(Assigner::parse(t)?),
            ("active" | "required", _) => return Err(wrong_type("boolean")),
            ("title" | "assigned_by", _) => return Err(wrong_type("string")),
            ("hue", _) => return Err(wrong_type("number")),
            (other, _) => {
                return Err(Error::bad_request(format!(
                    "Attachment has an unknown field '{other}'"
                )))
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_absolute_uris() {
        for ok in [
            "urn:uuid:164c41a2-7461-4cff-bdae-3f93078a6607",
            "http://example.com/hats/foo",
            "https://example.com/hats?x=1#teacher",
            "xmpp:room@conference.example.com?join",
            "tag:example.com,2026:hats/%C3%A9",
        ] {
            assert_eq!(Ok(ok), uri(ok.as_bytes()), "{ok}");
        }
    }

    #[test]
    fn rejects_malformed_uris() {
        for bad in [
            "",
            "teacher",
            "/relative/path",
            "1http://x",
            ":nothing",
            "http:",
            "http://a b",
            "http://x/%zz",
            "http://x/%4",
            "urn:a\nb",
            "http://x/é",
            "a:b#c#d",
            "ht_tp://x",
        ] {
            assert_eq!("bad-request", uri(bad.as_bytes()).unwrap_err().code(), "{bad:?}");
        }
        let long = format!("urn:x:{}", "a".repeat(MAX_URI_BYTES));
        assert!(uri(long.as_bytes()).is_err());
        assert!(uri(b"urn:\xff").is_err());
    }

    #[test]
    fn checks_titles() {
        assert_eq!(Ok("Teacher ✓"), text("Teacher ✓".as_bytes(), 10, "Title"));
        assert!(text(b"", 10, "Title").is_err());
        assert!(text(b"   ", 10, "Title").is_err());
        assert!(text(b"a\x07b", 10, "Title").is_err());
        assert!(text(b"\xc3", 10, "Title").is_err());
        assert!(text("ééééé".as_bytes(), 4, "Title").is_err());
        assert_eq!(Ok("ééééé"), text("ééééé".as_bytes(), 5, "Title"));
    }

    #[test]
    fn splits_jids() {
        assert_eq!(
            Ok(Jid {
                node: Some("user"),
                host: "example.com",
                resource: Some("res/with/slash")
            }),
            jid(b"user@example.com/res/with/slash")
        );
        assert_eq!(
            Ok(Jid {
                node: None,
                host: "example.com",
                resource: None
            }),
            jid(b"example.com")
        );
        assert_eq!(
            Ok(Jid {
                node: Some("room"),
                host: "conf.example",
                resource: Some("a@b")
            }),
            jid(b"room@conf.example/a@b")
        );
    }

    #[test]
    fn rejects_malformed_jids() {
        for bad in [
            "",
            "@example.com",
            "user@",
            "user@example.com/",
            "us er@example.com",
            "a\"b@example.com",
            "user@exa mple.com",
            "user@.example.com",
            "user@a..b",
            "user@a\u{7}b",
        ] {
            assert_eq!("bad-request", jid(bad.as_bytes()).unwrap_err().code(), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(1024));
        assert!(jid(long.as_bytes()).is_err());
    }

    #[test]
    fn checks_nicknames() {
        assert_eq!(Ok("Bob"), nickname(b"Bob", 64));
        assert!(nickname(b" Bob", 64).is_err());
        assert!(nickname(b"", 64).is_err());
    }

    #[test]
    fn checks_attachment_fields() {
        let field = |k: &str, v| (Ok(k.to_string()), v);
        let ok = attachment(
            [
                field("active", FieldValue::Bool(true)),
                field("title", FieldValue::Text(b"Teacher".to_vec())),
                field("hue", FieldValue::Number(200.0)),
                field("assigned_by", FieldValue::Text(b"service".to_vec())),
            ],
            10,
        );
        assert_eq!(
            Ok(Attachment {
                active: Some(true),
                required: None,
                title: Some("Teacher".into()),
                hue: Some(200.0),
                assigned_by: Some(Assigner::Service),
            }),
            ok
        );
        assert_eq!(Ok(Attachment::default()), attachment([], 10));
        for (fields, message) in [
            (
                vec![field("active", FieldValue::Text(b"yes".to_vec()))],
                "'active' must be a boolean, not string",
            ),
            (
                vec![field("title", FieldValue::Number(1.0))],
                "'title' must be a string, not number",
            ),
            (
                vec![field("title", FieldValue::Text(b"much too long".to_vec()))],
                "longer than 10",
            ),
            (vec![field("hue", FieldValue::Number(360.0))], "Hue"),
            (
                vec![field("colour", FieldValue::Bool(true))],
                "unknown field 'colour'",
            ),
            (vec![(Err("number"), FieldValue::Bool(true))], "a number key"),
            (vec![field("required", FieldValue::Other("table"))], "not table"),
            (
                vec![field("assigned_by", FieldValue::Text(b"owner".to_vec()))],
                "must be \"room\", \"service\" or \"api\"",
            ),
            (
                vec![field("assigned_by", FieldValue::Bool(true))],
                "'assigned_by' must be a string",
            ),
        ] {
            let e = attachment(fields, 10).unwrap_err();
            assert!(e.to_string().contains(message), "{e} / {message}");
        }
    }

    #[test]
    fn assigners_round_trip() {
        for assigner in [Assigner::Room, Assigner::Service, Assigner::Api] {
            assert_eq!(Ok(assigner), Assigner::parse(assigner.as_str().as_bytes()));
        }
        assert!(Assigner::parse(b"Room").is_err());
        assert!(Assigner::parse(b"").is_err());
    }

    #[test]
    fn parses_hues() {
        assert_eq!(Ok(0.0), hue(b"0"));
        assert_eq!(Ok(359.5), hue(b" 359.5 "));
        for bad in ["360", "-1", "nan", "inf", "red", ""] {
            assert!(hue(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn validators_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = uri(&bytes);
            let _ = jid(&bytes);
            let _ = text(&bytes, 20, "Title");
            let _ = hue(&bytes);
        }

        #[test]
        fn accepted_uris_hold_only_uri_characters(s in "[a-z][a-z0-9+.-]{0,8}:[ -~]{1,40}") {
            if let Ok(u) = uri(s.as_bytes()) {
                prop_assert!(u.bytes().all(|b| is_unreserved(b) || is_reserved(b) || b == b'%'));
            }
        }

        #[test]
        fn accepted_jids_round_trip(node in "[a-z0-9]{1,10}", host in "[a-z]{1,10}\\.[a-z]{2,4}", res in "[ -~]{1,10}") {
            let s = format!("{node}@{host}/{res}");
            let j = jid(s.as_bytes()).unwrap();
            prop_assert_eq!(Some(node.as_str()), j.node);
            prop_assert_eq!(host.as_str(), j.host);
            prop_assert_eq!(Some(res.as_str()), j.resource);
        }
    }
}
