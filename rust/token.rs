//! Scoped, expiring, stateless API tokens, and constant-time comparison of shared secrets.
//!
//! Tokens follow the stateless scheme of mod_http_oauth2's dynamic client registration:
//!
//! ```text
//! per_host_key := HMAC-SHA256(secret, host)
//! token        := "v1." base64url(claims JSON) "." base64url(HMAC-SHA256(per_host_key, "v1." base64url(claims)))
//! ```
//!
//! The claims say what the token may act on (the whole service or a list of rooms), when it was issued and
//! when it expires, and carry a random nonce (so two tokens with the same scope differ, and an audit log can
//! name a token without logging it) and an optional label. Everything needed to verify a token is in the
//! token and the secret, so there is no database; rotating the secret revokes every token at once, and a
//! token minted for one host never verifies on another.
//!
//! Parsing is strict: one version, unpadded canonical base64url, a bounded size, a JSON object with exactly
//! the known fields. The signature is checked in constant time before the claims are parsed. The secret is
//! passed in on every call; this module keeps no state.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::Error;
use crate::validate;

type HmacSha256 = Hmac<Sha256>;

/// The version prefix of the token format this module writes and reads.
pub const VERSION: &str = "v1";

/// Longest token accepted or produced, in bytes. Tokens travel in an HTTP header.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Most rooms one token may name; a token for more rooms should be a service-wide token.
pub const MAX_ROOMS: usize = 64;

/// Longest lifetime of a token, in seconds (366 days): every token expires, so a leaked one stops working
/// even if nobody rotates the secret.
pub const MAX_TTL_SECONDS: i64 = 366 * 24 * 60 * 60;

/// Fewest and most random bytes in a nonce.
pub const NONCE_BYTES: std::ops::RangeInclusive<usize> = 8..=64;

/// Longest token label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// Length of an HMAC-SHA256 tag in bytes.
const TAG_BYTES: usize = 32;

/// Key of the HMAC that [`secrets_equal`] runs both inputs through. It need not be secret: hashing only
/// makes both sides the same length, so comparing them takes the same time whatever their lengths.
const COMPARE_KEY: &[u8] = b"prosody-native secret comparison";

/// What a token may act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every room of the host the token was minted for.
    Service,
    /// Only these rooms: bare JIDs (`room@host`) as Prosody prepped them when the token was minted.
    Rooms(Vec<String>),
}

/// The signed content of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The MUC host the token was minted for (the per-host key binds it too).
    pub host: String,
    /// What the token may act on.
    pub scope: Scope,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, in seconds since the Unix epoch: the token is refused from this second on.
    pub exp: i64,
    /// Random, base64url: tells tokens apart and names them in logs.
    pub nonce: String,
    /// Optional name the operator gave the token ("ci-bot"), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// What the operator asks for when minting a token; [`Claims::new`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The MUC host.
    pub host: &'a str,
    /// Rooms the token may act on, or `None` for the whole service.
    pub rooms: Option<Vec<String>>,
    /// Current time, seconds since the Unix epoch.
    pub now: i64,
    /// Lifetime in seconds, 1 to [`MAX_TTL_SECONDS`].
    pub ttl: i64,
    /// Random bytes from a CSPRNG, [`NONCE_BYTES`] of them.
    pub nonce: &'a [u8],
    /// Optional label.
    pub label: Option<&'a [u8]>,
}

impl Claims {
    /// Builds claims from a mint request, checking every part: the host, each room (a bare JID on that
    /// host, no duplicates, at most [`MAX_ROOMS`]), the lifetime, the nonce size and the label.
    pub fn new(request: &Request<'_>) -> Result<Claims, Error> {
        let host = validate::jid(request.host.as_bytes())
            .ok()
            .filter(|j| j.node.is_none() && j.resource.is_none())
            .ok_or_else(|| Error::bad_request("Token host must be a domain (the MUC host)"))?
            .host;
        let scope = match &request.rooms {
            None => Scope::Service,
            Some(rooms) => Scope::Rooms(check_rooms(host, rooms)?),
        };
        if !(1..=MAX_TTL_SECONDS).contains(&request.ttl) {
            return Err(Error::bad_request(format!(
                "Token lifetime must be between 1 and {MAX_TTL_SECONDS} seconds"
            )));
        }
        if !NONCE_BYTES.contains(&request.nonce.len()) {
            return Err(Error::bad_request(format!(
                "Token nonce must be {} to {} random bytes",
                NONCE_BYTES.start(),
                NONCE_BYTES.end()
            )));
        }
        let label = match request.label {
            Some(label) => Some(validate::text(label, MAX_LABEL_CHARS, "Token label")?.to_owned()),
            None => None,
        };
        let exp = request
            .now
            .checked_add(request.ttl)
            .ok_or_else(|| Error::bad_request("Token expiry is out of range"))?;
        Ok(Claims {
            host: host.to_owned(),
            scope,
            iat: request.now,
            exp,
            nonce: URL_SAFE_NO_PAD.encode(request.nonce),
            label,
        })
    }

    /// Whether the token may act on `room` (a prepped bare JID).
    pub fn allows(&self, room: &str) -> bool {
        match &self.scope {
            Scope::Service => true,
            Scope::Rooms(rooms) => rooms.iter().any(|r| r == room),
        }
    }
}

fn check_rooms(host: &str, rooms: &[String]) -> Result<Vec<String>, Error> {
    if rooms.is_empty() {
        return Err(Error::bad_request("A room-scoped token needs at least one room"));
    }
    if rooms.len() > MAX_ROOMS {
        return Err(Error::bad_request(format!(
            "A token may name at most {MAX_ROOMS} rooms; mint a service-wide token instead"
        )));
    }
    let mut checked: Vec<String> = Vec::with_capacity(rooms.len());
    for room in rooms {
        let jid = validate::jid(room.as_bytes())
            .map_err(|e| Error::bad_request(format!("Room '{room}' is not a valid JID: {e}")))?;
        if jid.node.is_none() || jid.resource.is_some() {
            return Err(Error::bad_request(format!(
                "Room '{room}' must be a bare room JID (room@{host})"
            )));
        }
        if jid.host != host {
            return Err(Error::bad_request(format!("Room '{room}' is not on {host}")));
        }
        if !checked.contains(room) {
            checked.push(room.clone());
        }
    }
    Ok(checked)
}

/// The key that signs a host's tokens: HMAC-SHA256(secret, host).
pub fn per_host_key(secret: &[u8], host: &str) -> [u8; TAG_BYTES] {
    hmac_sha256(secret, &[host.as_bytes()])
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn signer(secret: &[u8], host: &str) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(&per_host_key(secret, host)).unwrap_or_else(|_| unreachable!())
}

fn check_secret(secret: &[u8]) -> Result<(), Error> {
    if secret.is_empty() {
        return Err(Error::bad_request("Token secret is empty"));
    }
    Ok(())
}

/// Signs `claims` with the per-host key of `claims.host`: `v1.<claims>.<signature>`.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, Error> {
    check_secret(secret)?;
    let json =
        serde_json::to_vec(claims).map_err(|e| Error::Internal(format!("Cannot encode claims: {e}")))?;
    let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(json));
    let mut mac = signer(secret, &claims.host);
    mac.update(signed.as_bytes());
    let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::TooLarge(format!(
            "Token would be longer than {MAX_TOKEN_BYTES} bytes; name fewer rooms"
        )));
    }
    Ok(token)
}

fn malformed(text: impl Into<String>) -> Error {
    Error::TokenMalformed(text.into())
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, Error> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("Token {what} is not unpadded base64url")))
}

/// Verifies `token` for `host` at time `now` and returns its claims.
///
/// Errors: [`Error::TokenMalformed`] for anything that is not a v1 token (size, shape, version, encoding,
/// claims that are not the expected JSON object), [`Error::TokenInvalid`] for a signature that does not
/// match (forged, or the secret was rotated) or a token of another host, [`Error::TokenExpired`] once
/// `now` reaches its expiry. The signature is compared in constant time and checked before the claims are
/// parsed. Whether the claims' scope covers a room is [`Claims::allows`], a separate question.
pub fn verify(secret: &[u8], host: &str, token: &[u8], now: i64) -> Result<Claims, Error> {
    check_secret(secret)?;
    if token.is_empty() {
        return Err(malformed("Token is empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed(format!("Token is longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let token = std::str::from_utf8(token).map_err(|_| malformed("Token is not ASCII"))?;
    let mut parts = token.split('.');
    let (Some(version), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("Token must have three dot-separated parts"));
    };
    if version != VERSION {
        return Err(malformed(format!(
            "Unsupported token version (this server reads {VERSION} tokens)"
        )));
    }
    let claims_json = decode_part(payload, "claims")?;
    let tag = decode_part(signature, "signature")?;
    if tag.len() != TAG_BYTES {
        return Err(malformed("Token signature has the wrong length"));
    }
    let mut mac = signer(secret, host);
    mac.update(version.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac.verify_slice(&tag)
        .map_err(|_| Error::TokenInvalid("Token signature does not match".into()))?;

    let value: serde_json::Value =
        serde_json::from_slice(&claims_json).map_err(|_| malformed("Token claims are not JSON"))?;
    if !value.is_object() {
        return Err(malformed("Token claims are not a JSON object"));
    }
    let claims: Claims =
        serde_json::from_value(value).map_err(|e| malformed(format!("Token claims are malformed: {e}")))?;
    if claims.host != host {
        return Err(Error::TokenInvalid("Token was issued for another host".into()));
    }
    if now >= claims.exp {
        return Err(Error::TokenExpired("Token has expired".into()));
    }
    Ok(claims)
}

/// Whether two secrets (say, an expected and a received `Authorization` header) are equal, in time that
/// depends on neither their content nor how long a common prefix they share, and that leaks nothing about
/// the expected length: both are hashed to fixed-size HMAC tags, which are compared in constant time.
pub fn secrets_equal(expected: &[u8], given: &[u8]) -> bool {
    let expected_tag = hmac_sha256(COMPARE_KEY, &[expected]);
    let mut mac = <HmacSha256 as Mac>::new_from_slice(COMPARE_KEY).unwrap_or_else(|_| unreachable!());
    mac.update(given);
    mac.verify_slice(&expected_tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"correct horse battery staple, but longer";
    const HOST: &str = "muc.example.org";
    const NOW: i64 = 1_700_000_000;

    fn request(rooms: Option<Vec<&str>>) -> Request<'static> {
        Request {
            host: HOST,
            rooms: rooms.map(|r| r.into_iter().map(str::to_owned).collect()),
            now: NOW,
            ttl: 3600,
            nonce: b"0123456789abcdef",
            label: Some(b"ci-bot"),
        }
    }

    fn token_for(rooms: Option<Vec<&str>>) -> String {
        mint(SECRET, &Claims::new(&request(rooms)).unwrap()).unwrap()
    }

    /// Re-signs arbitrary claims bytes as a genuine v1 token, to test what happens after the signature check.
    fn sign_raw(claims_json: &[u8]) -> String {
        let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(claims_json));
        let tag = hmac_sha256(&per_host_key(SECRET, HOST), &[signed.as_bytes()]);
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    #[test]
    fn per_host_key_is_hmac_of_the_host() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = per_host_key(b"Jefe", "what do ya want for nothing?");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            hex
        );
        assert_ne!(
            per_host_key(SECRET, "a.example"),
            per_host_key(SECRET, "b.example")
        );
    }

    #[test]
    fn minted_token_has_the_v1_shape_and_round_trips() {
        let token = token_for(Some(vec!["lobby@muc.example.org"]));
        assert!(token.starts_with("v1."));
        assert_eq!(3, token.split('.').count());
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        let claims = verify(SECRET, HOST, token.as_bytes(), NOW).unwrap();
        assert_eq!(Scope::Rooms(vec!["lobby@muc.example.org".into()]), claims.scope);
        assert_eq!(NOW + 3600, claims.exp);
        assert_eq!(NOW, claims.iat);
        assert_eq!("MDEyMzQ1Njc4OWFiY2RlZg", claims.nonce);
        assert_eq!(Some("ci-bot".to_string()), claims.label);
    }

    #[test]
    fn minting_is_deterministic_for_the_same_inputs() {
        assert_eq!(token_for(None), token_for(None));
    }

    #[test]
    fn scope_decides_which_rooms_are_allowed() {
        let rooms = verify(
            SECRET,
            HOST,
            token_for(Some(vec!["a@muc.example.org"])).as_bytes(),
            NOW,
        )
        .unwrap();
        assert!(rooms.allows("a@muc.example.org"));
        assert!(!rooms.allows("b@muc.example.org"));
        let service = verify(SECRET, HOST, token_for(None).as_bytes(), NOW).unwrap();
        assert_eq!(Scope::Service, service.scope);
        assert!(service.allows("anything@muc.example.org"));
    }

    #[test]
    fn expires_at_exp_and_not_before() {
        let token = token_for(None);
        assert!(verify(SECRET, HOST, token.as_bytes(), NOW + 3599).is_ok());
        assert_eq!(
            "token-expired",
            verify(SECRET, HOST, token.as_bytes(), NOW + 3600)
                .unwrap_err()
                .code()
        );
    }

    #[test]
    fn rotated_secret_or_other_host_invalidates() {
        let token = token_for(None);
        let e = verify(b"another secret entirely", HOST, token.as_bytes(), NOW).unwrap_err();
        assert_eq!("token-invalid", e.code());
        let e = verify(SECRET, "other.example.org", token.as_bytes(), NOW).unwrap_err();
        assert_eq!("token-invalid", e.code());
    }

    #[test]
    fn tampered_claims_or_signature_are_invalid() {
        let token = token_for(Some(vec!["a@muc.example.org"]));
        let (signed, tag) = token.rsplit_once('.').unwrap();
        // Swap the claims for a service-wide scope but keep the old signature.
        let forged_claims = Claims {
            scope: Scope::Service,
            ..verify(SECRET, HOST, token.as_bytes(), NOW).unwrap()
        };
        let forged = format!(
            "v1.{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap())
        );
        assert_eq!(
            "token-invalid",
            verify(SECRET, HOST, forged.as_bytes(), NOW).unwrap_err().code()
        );
        // Flip one signature character (keeping it canonical base64url).
        let mut bad_tag = tag.to_string().into_bytes();
        bad_tag[0] = if bad_tag[0] == b'A' { b'B' } else { b'A' };
        let forged = format!("{signed}.{}", String::from_utf8(bad_tag).unwrap());
        assert_eq!(
            "token-invalid",
            verify(SECRET, HOST, forged.as_bytes(), NOW).unwrap_err().code()
        );
    }

    #[test]
    fn malformed_tokens_are_rejected_with_token_malformed() {
        let good = token_for(None);
        let (_, rest) = good.split_once('.').unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("v1.abc".into(), "three dot-separated parts"),
            (format!("{good}.extra"), "three dot-separated parts"),
            (format!("v2.{rest}"), "version"),
            (format!("V1.{rest}"), "version"),
            (good.replacen("v1.", "v1.=", 1), "base64url"),
            (format!("{good}="), "base64url"),
            (good.replacen("v1.", "v1.+/", 1), "base64url"),
            (
                format!("v1.{}.AAAA", rest.split('.').next().unwrap()),
                "wrong length",
            ),
            ("x".repeat(MAX_TOKEN_BYTES + 1), "longer than"),
        ];
        for (token, why) in cases {
            let e = verify(SECRET, HOST, token.as_bytes(), NOW).unwrap_err();
            assert_eq!("token-malformed", e.code(), "{token}");
            assert!(e.to_string().contains(why), "{token}: {e}");
        }
        let e = verify(SECRET, HOST, b"v1.\xff\xfe.abc", NOW).unwrap_err();
        assert_eq!("token-malformed", e.code());
    }

    #[test]
    fn non_canonical_base64_is_rejected() {
        // A 32-byte tag is 43 base64 characters: 258 bits, so the last character has 2 unused low bits,
        // which a canonical encoding leaves at zero. Setting one keeps the decoded bytes but must be refused.
        let token = sign_raw(b"{}");
        let (head, tag) = token.rsplit_once('.').unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.find(tag.chars().last().unwrap()).unwrap();
        assert_eq!(0, index & 3);
        let altered = alphabet.chars().nth(index | 1).unwrap();
        let token = format!("{head}.{}{altered}", &tag[..tag.len() - 1]);
        let e = verify(SECRET, HOST, token.as_bytes(), NOW).unwrap_err();
        assert_eq!("token-malformed", e.code());
    }

    #[test]
    fn genuinely_signed_but_wrong_claims_are_malformed() {
        for claims in [
            &b"not json"[..],
            b"[1,2,3]",
            b"\"service\"",
            b"{}",
            br#"{"host":"muc.example.org","scope":"service","iat":1,"exp":9999999999,"nonce":"x","admin":true}"#,
            br#"{"host":"muc.example.org","scope":"everything","iat":1,"exp":9999999999,"nonce":"x"}"#,
            br#"{"host":"muc.example.org","scope":"service","iat":1,"exp":"never","nonce":"x"}"#,
        ] {
            let e = verify(SECRET, HOST, sign_raw(claims).as_bytes(), NOW).unwrap_err();
            assert_eq!("token-malformed", e.code(), "{}", String::from_utf8_lossy(claims));
        }
        let e = verify(SECRET, HOST, sign_raw(b"[]").as_bytes(), NOW).unwrap_err();
        assert_eq!("Token claims are not a JSON object", e.to_string());
    }

    #[test]
    fn mint_requests_are_checked() {
        let cases: Vec<(Request<'static>, &str)> = vec![
            (
                Request {
                    host: "user@muc.example.org",
                    ..request(None)
                },
                "must be a domain",
            ),
            (request(Some(vec![])), "at least one room"),
            (request(Some(vec!["lobby"])), "bare room JID"),
            (request(Some(vec!["lobby@muc.example.org/nick"])), "bare room JID"),
            (
                request(Some(vec!["lobby@elsewhere.example"])),
                "is not on muc.example.org",
            ),
            (request(Some(vec!["lo by@muc.example.org"])), "not a valid JID"),
            (
                Request {
                    ttl: 0,
                    ..request(None)
                },
                "lifetime",
            ),
            (
                Request {
                    ttl: MAX_TTL_SECONDS + 1,
                    ..request(None)
                },
                "lifetime",
            ),
            (
                Request {
                    nonce: b"short",
                    ..request(None)
                },
                "nonce",
            ),
            (
                Request {
                    label: Some(b"line\nbreak"),
                    ..request(None)
                },
                "control characters",
            ),
            (
                Request {
                    now: i64::MAX,
                    ..request(None)
                },
                "out of range",
            ),
        ];
        for (req, why) in cases {
            let e = Claims::new(&req).unwrap_err();
            assert_eq!("bad-request", e.code());
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        let many: Vec<String> = (0..=MAX_ROOMS).map(|i| format!("r{i}@muc.example.org")).collect();
        let e = Claims::new(&Request {
            rooms: Some(many),
            ..request(None)
        })
        .unwrap_err();
        assert!(e.to_string().contains("at most"));
    }

    #[test]
    fn duplicate_rooms_are_named_once() {
        let claims = Claims::new(&request(Some(vec!["a@muc.example.org", "a@muc.example.org"]))).unwrap();
        assert_eq!(Scope::Rooms(vec!["a@muc.example.org".into()]), claims.scope);
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let claims = Claims::new(&request(None)).unwrap();
        assert_eq!("bad-request", mint(b"", &claims).unwrap_err().code());
        assert_eq!(
            "bad-request",
            verify(b"", HOST, b"v1.a.b", NOW).unwrap_err().code()
        );
    }

    #[test]
    fn secrets_compare_by_content_only() {
        assert!(secrets_equal(b"Basic dXNlcjpwYXNz", b"Basic dXNlcjpwYXNz"));
        assert!(!secrets_equal(b"Basic dXNlcjpwYXNz", b"Basic dXNlcjpwYXNy"));
        assert!(!secrets_equal(b"Basic dXNlcjpwYXNz", b"Basic"));
        assert!(!secrets_equal(b"Basic dXNlcjpwYXNz", b""));
        assert!(secrets_equal(b"", b""));
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_arbitrary_input(token in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = verify(SECRET, HOST, &token, NOW);
        }

        #[test]
        fn verify_never_accepts_a_mutated_token(index in 0usize..200, byte in any::<u8>()) {
            let token = token_for(Some(vec!["a@muc.example.org"]));
            let mut bytes = token.clone().into_bytes();
            let i = index % bytes.len();
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            prop_assert!(verify(SECRET, HOST, &bytes, NOW).is_err());
        }

        #[test]
        fn secrets_equal_matches_byte_equality(a in proptest::collection::vec(any::<u8>(), 0..64),
                                               b in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(a == b, secrets_equal(&a, &b));
        }
    }
}
