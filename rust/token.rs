//! Scoped, expiring API tokens signed by a keyring, checks of operator secrets, and constant-time comparison
//! of shared secrets.
//!
//! A token carries its claims and the id of the key that signed it:
//!
//! ```text
//! key_id      := base64url(HMAC-SHA256(secret, "prosody-native http_muc_kick key id v2")[0..6])
//! signing_key := HMAC-SHA256(secret, "prosody-native http_muc_kick token signing key v2" || 0x00 || host)
//! token       := "v2." key_id "." base64url(claims JSON) "." base64url(HMAC-SHA256(signing_key, "v2." key_id "." base64url(claims)))
//! ```
//!
//! The label in each derivation separates this use of a secret from any other (a secret reused elsewhere gives
//! other keys), and the host binds a token to one MUC component. The key id lets a server hold several
//! secrets at once: the first of its [`Keyring`] signs, the others only verify, each until a time the operator
//! sets, so that a secret can be rolled over without breaking every integration at once.
//!
//! The claims say what the token may act on (the whole service or a list of rooms), when it was issued and
//! when it expires, and carry a random nonce (the token's id: it names the token in logs and in the deny
//! list) and an optional label. Revocation by nonce is the caller's business; this module keeps no state
//! beyond the keys a [`Keyring`] was made with.
//!
//! Parsing is strict: one version, four parts, unpadded canonical base64url, a bounded size. The signature is
//! checked in constant time before the claims are parsed, and then the claims must be exactly the known
//! object (no unknown or repeated fields) with values a genuine minter produces: a nonce of 8 to 64 bytes, at
//! least one room and only rooms of the host, a lifetime of at most [`MAX_TTL_SECONDS`], an issue time not in
//! the future.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::Error;
use crate::validate;

type HmacSha256 = Hmac<Sha256>;

/// The version prefix of the token format this module writes and reads.
pub const VERSION: &str = "v2";

/// The prefix of prosody-native 0.1.0's tokens, which are refused with a message that says so.
const LEGACY_VERSION: &str = "v1";

/// Longest token accepted or produced, in bytes. Tokens travel in an HTTP header.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Most rooms one token may name; a token for more rooms should be a service-wide token.
pub const MAX_ROOMS: usize = 64;

/// Longest lifetime of a token, in seconds (366 days): every token expires, so a leaked one stops working
/// even if nobody revokes it or rotates the secret.
pub const MAX_TTL_SECONDS: i64 = 366 * 24 * 60 * 60;

/// How far in the future a token's issue time may lie, in seconds, for clocks that differ slightly.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// Fewest and most random bytes in a nonce.
pub const NONCE_BYTES: std::ops::RangeInclusive<usize> = 8..=64;

/// Longest token label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// Fewest characters in a secret (token secret or static header).
pub const MIN_SECRET_CHARS: usize = 32;

/// Lowest score of [`secret_strength`] a secret must reach.
pub const MIN_SECRET_STRENGTH: f64 = 64.0;

/// Most secrets in one keyring: the signing one and the previous ones still accepted.
pub const MAX_KEYS: usize = 8;

/// Random bytes in a key id (8 base64url characters).
const KEY_ID_BYTES: usize = 6;

/// Length of an HMAC-SHA256 tag in bytes.
const TAG_BYTES: usize = 32;

/// Domain-separation label of the signing key derivation.
const SIGNING_KEY_LABEL: &[u8] = b"prosody-native http_muc_kick token signing key v2";

/// Domain-separation label of the key id derivation.
const KEY_ID_LABEL: &[u8] = b"prosody-native http_muc_kick key id v2";

/// Key of the HMAC that [`secrets_equal`] runs both inputs through. It need not be secret: hashing only
/// makes both sides the same length, so comparing them takes the same time whatever their lengths.
const COMPARE_KEY: &[u8] = b"prosody-native secret comparison";

/// Secrets printed in documentation, this project's and the original module's: anyone can read them, so
/// they are refused even though they look random. The README's examples are tested against this list.
const PUBLIC_SECRETS: &[&str] = &[
    // prosody-native 0.1.0's README: a token secret and a static header.
    "hJ0w3bqKpB0yBw0m3e0nq4mJ8XfWkE4oVqf7s9RZQ2c1",
    "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
    // This version's README.
    "CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME",
    "Bearer CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME",
];

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
    /// The MUC host the token was minted for (the signing key binds it too).
    pub host: String,
    /// What the token may act on.
    pub scope: Scope,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, in seconds since the Unix epoch: the token is refused from this second on.
    pub exp: i64,
    /// Random, base64url: the token's id, in logs and in the deny list.
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

fn host_domain(host: &str) -> Result<&str, Error> {
    validate::jid(host.as_bytes())
        .ok()
        .filter(|j| j.node.is_none() && j.resource.is_none())
        .map(|j| j.host)
        .ok_or_else(|| Error::bad_request("Token host must be a domain (the MUC host)"))
}

impl Claims {
    /// Builds claims from a mint request, checking every part: the host, each room (a bare JID on that
    /// host, named once, at most [`MAX_ROOMS`]), the lifetime, the nonce size and the label.
    pub fn new(request: &Request<'_>) -> Result<Claims, Error> {
        let host = host_domain(request.host)?;
        let scope = match &request.rooms {
            None => Scope::Service,
            Some(rooms) => {
                let mut unique: Vec<String> = Vec::with_capacity(rooms.len());
                for room in rooms {
                    if !unique.contains(room) {
                        unique.push(room.clone());
                    }
                }
                Scope::Rooms(unique)
            }
        };
        if !(1..=MAX_TTL_SECONDS).contains(&request.ttl) {
            return Err(Error::bad_request(format!(
                "Token lifetime must be between 1 and {MAX_TTL_SECONDS} seconds"
            )));
        }
        let exp = request
            .now
            .checked_add(request.ttl)
            .ok_or_else(|| Error::bad_request("Token expiry is out of range"))?;
        let label = match request.label {
            Some(label) => Some(validate::text(label, MAX_LABEL_CHARS, "Token label")?.to_owned()),
            None => None,
        };
        let claims = Claims {
            host: host.to_owned(),
            scope,
            iat: request.now,
            exp,
            nonce: URL_SAFE_NO_PAD.encode(request.nonce),
            label,
        };
        claims.check().map_err(|e| Error::bad_request(e.to_string()))?;
        Ok(claims)
    }

    /// Whether the token may act on `room` (a prepped bare JID).
    pub fn allows(&self, room: &str) -> bool {
        match &self.scope {
            Scope::Service => true,
            Scope::Rooms(rooms) => rooms.iter().any(|r| r == room),
        }
    }

    /// Checks what a genuine minter guarantees, whatever the signature says: a nonce of [`NONCE_BYTES`],
    /// rooms that are bare JIDs of the host (at least one, each once), a bounded label, and a lifetime of 1
    /// to [`MAX_TTL_SECONDS`]. Errors are [`Error::TokenMalformed`].
    fn check(&self) -> Result<(), Error> {
        check_nonce(&self.nonce)?;
        if let Scope::Rooms(rooms) = &self.scope {
            check_rooms(&self.host, rooms)?;
        }
        if let Some(label) = &self.label {
            validate::text(label.as_bytes(), MAX_LABEL_CHARS, "Token label")
                .map_err(|e| malformed(e.to_string()))?;
        }
        match self.exp.checked_sub(self.iat) {
            Some(ttl) if (1..=MAX_TTL_SECONDS).contains(&ttl) => Ok(()),
            _ => Err(malformed(format!(
                "Token lifetime must be between 1 and {MAX_TTL_SECONDS} seconds"
            ))),
        }
    }
}

/// A token's id: canonical base64url of [`NONCE_BYTES`] random bytes.
pub fn check_nonce(nonce: &str) -> Result<(), Error> {
    match URL_SAFE_NO_PAD.decode(nonce) {
        Ok(bytes) if NONCE_BYTES.contains(&bytes.len()) => Ok(()),
        _ => Err(malformed(format!(
            "Token id must be {} to {} random bytes in base64url",
            NONCE_BYTES.start(),
            NONCE_BYTES.end()
        ))),
    }
}

fn check_rooms(host: &str, rooms: &[String]) -> Result<(), Error> {
    if rooms.is_empty() {
        return Err(malformed("A room-scoped token needs at least one room"));
    }
    if rooms.len() > MAX_ROOMS {
        return Err(malformed(format!(
            "A token may name at most {MAX_ROOMS} rooms; mint a service-wide token instead"
        )));
    }
    for (i, room) in rooms.iter().enumerate() {
        let jid = validate::jid(room.as_bytes())
            .map_err(|e| malformed(format!("Room '{room}' is not a valid JID: {e}")))?;
        if jid.node.is_none() || jid.resource.is_some() {
            return Err(malformed(format!(
                "Room '{room}' must be a bare room JID (room@{host})"
            )));
        }
        if jid.host != host {
            return Err(malformed(format!("Room '{room}' is not on {host}")));
        }
        if rooms[..i].contains(room) {
            return Err(malformed(format!("Room '{room}' is named twice")));
        }
    }
    Ok(())
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// The key that signs a host's tokens: HMAC-SHA256(secret, label || 0x00 || host).
pub fn signing_key(secret: &[u8], host: &str) -> [u8; TAG_BYTES] {
    hmac_sha256(secret, &[SIGNING_KEY_LABEL, b"\0", host.as_bytes()])
}

/// The public id of a secret: base64url of the first 6 bytes of HMAC-SHA256(secret, label). It names the
/// key in tokens and logs without revealing anything useful about the secret.
pub fn key_id(secret: &[u8]) -> String {
    let tag = hmac_sha256(secret, &[KEY_ID_LABEL]);
    URL_SAFE_NO_PAD.encode(&tag[..KEY_ID_BYTES])
}

/// A score for how hard a secret is to guess: the Shannon entropy of its bytes (bits per byte) times the
/// number of distinct 3-byte sequences in it. Random secrets score about their length times 4 to 6; repeated
/// words and patterns ("CHANGE-ME-CHANGE-ME-...") score low because they have few distinct sequences. It is
/// a screen for mistakes, not a proof of strength.
pub fn secret_strength(secret: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for &b in secret {
        counts[usize::from(b)] += 1;
    }
    let len = secret.len() as f64;
    let bits_per_byte: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / len;
            -p * p.log2()
        })
        .sum();
    let mut trigrams: Vec<&[u8]> = secret.windows(3).collect();
    trigrams.sort_unstable();
    trigrams.dedup();
    bits_per_byte * trigrams.len() as f64
}

/// Checks a secret an operator configured (`what` names it in the message, which never quotes it): at least
/// [`MIN_SECRET_CHARS`] characters, not an example from documentation, and not obviously predictable.
pub fn check_secret(secret: &[u8], what: &str) -> Result<(), Error> {
    const HOW: &str = "generate one with: openssl rand -base64 33";
    let chars = std::str::from_utf8(secret).map_or(secret.len(), |s| s.chars().count());
    if chars < MIN_SECRET_CHARS {
        return Err(Error::bad_request(format!(
            "{what} must be at least {MIN_SECRET_CHARS} characters long; {HOW}"
        )));
    }
    if PUBLIC_SECRETS.iter().any(|p| p.as_bytes() == secret) {
        return Err(Error::bad_request(format!(
            "{what} is an example from the documentation, which anyone can read; {HOW}"
        )));
    }
    if secret_strength(secret) < MIN_SECRET_STRENGTH {
        return Err(Error::bad_request(format!(
            "{what} is too predictable (it repeats a pattern or a few characters); {HOW}"
        )));
    }
    Ok(())
}

/// A secret for a [`Keyring`], and until when tokens it signed are accepted (`None`: no end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec<'a> {
    /// The secret, as the operator configured it.
    pub secret: &'a [u8],
    /// Seconds since the Unix epoch from which tokens signed with this secret are refused.
    pub accept_until: Option<i64>,
}

struct Key {
    id: String,
    mac: HmacSha256,
    accept_until: Option<i64>,
}

/// The keys of one host, derived once from the operator's secrets: the first signs new tokens, every one
/// verifies tokens that name its id, a previous one only until its `accept_until`.
pub struct Keyring {
    host: String,
    keys: Vec<Key>,
}

/// A verified token: its claims and the id of the key that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The token's claims.
    pub claims: Claims,
    /// Id of the key that signed it.
    pub key_id: String,
}

impl Keyring {
    /// Derives the keys of `host` from `specs`, the signing secret first. Every secret must pass
    /// [`check_secret`]; the signing secret has no end date; no secret may appear twice; at most
    /// [`MAX_KEYS`]. Errors are [`Error::BadRequest`] naming the secret by position, never by value.
    pub fn new(host: &str, specs: &[KeySpec<'_>]) -> Result<Keyring, Error> {
        let host = host_domain(host)?;
        let Some(first) = specs.first() else {
            return Err(Error::bad_request("A keyring needs at least one secret"));
        };
        if specs.len() > MAX_KEYS {
            return Err(Error::bad_request(format!(
                "At most {MAX_KEYS} token secrets can be configured at once"
            )));
        }
        if first.accept_until.is_some() {
            return Err(Error::bad_request(
                "The signing token secret cannot have an end date",
            ));
        }
        let mut keys: Vec<Key> = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let what = if i == 0 {
                "The token secret".to_owned()
            } else {
                format!("Previous token secret #{i}")
            };
            check_secret(spec.secret, &what)?;
            let id = key_id(spec.secret);
            if keys.iter().any(|k| k.id == id) {
                return Err(Error::bad_request(format!(
                    "{what} is the same as another configured token secret"
                )));
            }
            keys.push(Key {
                id,
                mac: keyed(&signing_key(spec.secret, host)),
                accept_until: spec.accept_until,
            });
        }
        Ok(Keyring {
            host: host.to_owned(),
            keys,
        })
    }

    /// The host whose tokens this keyring signs and verifies.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Id of the signing key.
    pub fn signing_key_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    /// Every key as (id, accept_until), the signing key first.
    pub fn key_ids(&self) -> Vec<(String, Option<i64>)> {
        self.keys.iter().map(|k| (k.id.clone(), k.accept_until)).collect()
    }

    /// Signs `claims` with the signing key: `v2.<key id>.<claims>.<signature>`. The claims must be for this
    /// keyring's host.
    pub fn mint(&self, claims: &Claims) -> Result<String, Error> {
        let key = self
            .keys
            .first()
            .ok_or_else(|| Error::Internal("empty keyring".into()))?;
        if claims.host != self.host {
            return Err(Error::bad_request(format!(
                "These keys sign tokens for {}, not {}",
                self.host, claims.host
            )));
        }
        let json =
            serde_json::to_vec(claims).map_err(|e| Error::Internal(format!("Cannot encode claims: {e}")))?;
        let signed = format!("{VERSION}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(json));
        let mut mac = key.mac.clone();
        mac.update(signed.as_bytes());
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::TooLarge(format!(
                "Token would be longer than {MAX_TOKEN_BYTES} bytes; name fewer rooms"
            )));
        }
        Ok(token)
    }

    /// Verifies `token` at time `now` and returns its claims and key id.
    ///
    /// Errors: [`Error::TokenMalformed`] for anything no genuine minter of this version produces (size,
    /// shape, version, encoding, claims that are not exactly the expected object with sane values, an issue
    /// time in the future); [`Error::TokenInvalid`] for a key id this keyring does not hold, a signature that
    /// does not match (forged, another host, or a rotated secret), or a previous key past its end date;
    /// [`Error::TokenExpired`] once `now` reaches the expiry. The signature is compared in constant time and
    /// checked before the claims are parsed. Whether the scope covers a room is [`Claims::allows`], and
    /// whether the token id was revoked is the caller's question.
    pub fn verify(&self, token: &[u8], now: i64) -> Result<Verified, Error> {
        if token.is_empty() {
            return Err(malformed("Token is empty"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed(format!("Token is longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let token = std::str::from_utf8(token).map_err(|_| malformed("Token is not ASCII"))?;
        let mut parts = token.split('.');
        let version = parts.next().unwrap_or_default();
        if version == LEGACY_VERSION {
            return Err(malformed(
                "Token is of the older v1 format (prosody-native 0.1.0), which is no longer accepted; mint a new one",
            ));
        }
        if version != VERSION {
            return Err(malformed(format!(
                "Unsupported token version (this server reads {VERSION} tokens)"
            )));
        }
        let (Some(key_id), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("Token must have four dot-separated parts"));
        };
        let claims_json = decode_part(payload, "claims")?;
        let tag = decode_part(signature, "signature")?;
        if tag.len() != TAG_BYTES {
            return Err(malformed("Token signature has the wrong length"));
        }
        // The text a forger gets, so kept under Lua's 40-byte limit for interned strings: a flood of refusals then
        // hands Lua the same string each time instead of a new one (bench_kick.py).
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| Error::TokenInvalid("Token was signed with an unknown key".into()))?;
        let mut mac = key.mac.clone();
        mac.update(VERSION.as_bytes());
        mac.update(b".");
        mac.update(key_id.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| Error::TokenInvalid("Token signature does not match".into()))?;
        if key.accept_until.is_some_and(|until| now >= until) {
            return Err(Error::TokenInvalid(
                "Token was signed with a key this server no longer accepts; mint a new one".into(),
            ));
        }

        // serde's derived struct parser refuses unknown and repeated fields, so nothing is silently dropped.
        let claims: Claims = serde_json::from_slice(&claims_json)
            .map_err(|e| malformed(format!("Token claims are malformed: {e}")))?;
        if claims.host != self.host {
            return Err(Error::TokenInvalid("Token was issued for another host".into()));
        }
        claims.check()?;
        if claims.iat > now.saturating_add(MAX_CLOCK_SKEW_SECONDS) {
            return Err(malformed("Token was issued in the future"));
        }
        if now >= claims.exp {
            return Err(Error::TokenExpired("Token has expired".into()));
        }
        Ok(Verified {
            claims,
            key_id: key.id.clone(),
        })
    }
}

fn malformed(text: impl Into<String>) -> Error {
    Error::TokenMalformed(text.into())
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, Error> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("Token {what} is not unpadded base64url")))
}

/// Reads a UTC time an operator writes in a configuration file, `2025-07-01` (midnight UTC, the start of
/// that day) or `2025-07-01T12:30:00Z`, into seconds since the Unix epoch.
pub fn parse_utc_time(text: &str) -> Result<i64, Error> {
    let bad = || {
        Error::bad_request(format!(
            "Cannot read the time {text:?}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)"
        ))
    };
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let number = |s: &str, digits: usize| -> Result<i64, Error> {
        if s.len() == digits && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let fields: Vec<&str> = date.split('-').collect();
    let [y, m, d] = fields.as_slice() else {
        return Err(bad());
    };
    let (year, month, day) = (number(y, 4)?, number(m, 2)?, number(d, 2)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days_in_month).contains(&day) {
        return Err(bad());
    }
    let seconds = match time {
        None => 0,
        Some(time) => {
            let fields: Vec<&str> = time.split(':').collect();
            let [h, min, s] = fields.as_slice() else {
                return Err(bad());
            };
            let (h, min, s) = (number(h, 2)?, number(min, 2)?, number(s, 2)?);
            if h > 23 || min > 59 || s > 59 {
                return Err(bad());
            }
            h * 3600 + min * 60 + s
        }
    };
    Ok(days_from_civil(year, month, day) * 86_400 + seconds)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Whether two secrets (say, an expected and a received `Authorization` header) are equal, in time that
/// depends on neither their content nor how long a common prefix they share, and that leaks nothing about
/// the expected length: both are hashed to fixed-size HMAC tags, which are compared in constant time.
pub fn secrets_equal(expected: &[u8], given: &[u8]) -> bool {
    let expected_tag = hmac_sha256(COMPARE_KEY, &[expected]);
    let mut mac = keyed(COMPARE_KEY);
    mac.update(given);
    mac.verify_slice(&expected_tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"correct horse battery staple, but longer";
    const OLD_SECRET: &[u8] = b"Tr0ub4dor&3, an older secret of 40 chars";
    const HOST: &str = "muc.example.org";
    const NOW: i64 = 1_700_000_000;

    fn keyring() -> Keyring {
        Keyring::new(
            HOST,
            &[KeySpec {
                secret: SECRET,
                accept_until: None,
            }],
        )
        .unwrap()
    }

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
        keyring().mint(&Claims::new(&request(rooms)).unwrap()).unwrap()
    }

    fn verify(token: &[u8], now: i64) -> Result<Verified, Error> {
        keyring().verify(token, now)
    }

    /// Signs arbitrary claims bytes as a genuine v2 token, to test what happens after the signature check.
    fn sign_raw(claims_json: &[u8]) -> String {
        let signed = format!("v2.{}.{}", key_id(SECRET), URL_SAFE_NO_PAD.encode(claims_json));
        let tag = hmac_sha256(&signing_key(SECRET, HOST), &[signed.as_bytes()]);
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn derivations_follow_the_documented_formulas() {
        // The same HMACs computed by hand: label, NUL, host for the signing key; label alone for the key id.
        let mut message = SIGNING_KEY_LABEL.to_vec();
        message.push(0);
        message.extend_from_slice(HOST.as_bytes());
        assert_eq!(
            hex(&hmac_sha256(SECRET, &[&message])),
            hex(&signing_key(SECRET, HOST))
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&hmac_sha256(SECRET, &[KEY_ID_LABEL])[..6]),
            key_id(SECRET)
        );
        assert_eq!(8, key_id(SECRET).len());
        // RFC 4231 test case 2 pins the HMAC itself: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            hex(&hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"]))
        );
    }

    #[test]
    fn the_label_separates_this_key_from_a_plain_hmac_of_the_host() {
        // 0.1.0 signed with HMAC(secret, host); a secret reused for that (or anything else) gives another key.
        assert_ne!(hmac_sha256(SECRET, &[HOST.as_bytes()]), signing_key(SECRET, HOST));
        assert_ne!(signing_key(SECRET, "a.example"), signing_key(SECRET, "b.example"));
    }

    #[test]
    fn minted_token_has_the_v2_shape_and_round_trips() {
        let token = token_for(Some(vec!["lobby@muc.example.org"]));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(4, parts.len());
        assert_eq!("v2", parts[0]);
        assert_eq!(key_id(SECRET), parts[1]);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        let verified = verify(token.as_bytes(), NOW).unwrap();
        assert_eq!(key_id(SECRET), verified.key_id);
        let claims = verified.claims;
        assert_eq!(Scope::Rooms(vec!["lobby@muc.example.org".into()]), claims.scope);
        assert_eq!((NOW, NOW + 3600), (claims.iat, claims.exp));
        assert_eq!("MDEyMzQ1Njc4OWFiY2RlZg", claims.nonce);
        assert_eq!(Some("ci-bot".to_string()), claims.label);
    }

    #[test]
    fn scope_decides_which_rooms_are_allowed() {
        let rooms = verify(token_for(Some(vec!["a@muc.example.org"])).as_bytes(), NOW)
            .unwrap()
            .claims;
        assert!(rooms.allows("a@muc.example.org"));
        assert!(!rooms.allows("b@muc.example.org"));
        let service = verify(token_for(None).as_bytes(), NOW).unwrap().claims;
        assert_eq!(Scope::Service, service.scope);
        assert!(service.allows("anything@muc.example.org"));
    }

    #[test]
    fn expires_at_exp_and_not_before() {
        let token = token_for(None);
        assert!(verify(token.as_bytes(), NOW + 3599).is_ok());
        assert_eq!(
            "token-expired",
            verify(token.as_bytes(), NOW + 3600).unwrap_err().code()
        );
    }

    #[test]
    fn rotated_secret_or_other_host_invalidates() {
        let token = token_for(None);
        let other_secret = Keyring::new(
            HOST,
            &[KeySpec {
                secret: OLD_SECRET,
                accept_until: None,
            }],
        )
        .unwrap();
        let e = other_secret.verify(token.as_bytes(), NOW).unwrap_err();
        assert_eq!("token-invalid", e.code());
        assert!(e.to_string().contains("unknown key"), "{e}");
        let other_host = Keyring::new(
            "other.example.org",
            &[KeySpec {
                secret: SECRET,
                accept_until: None,
            }],
        )
        .unwrap();
        let e = other_host.verify(token.as_bytes(), NOW).unwrap_err();
        assert_eq!("token-invalid", e.code());
        assert_eq!("Token signature does not match", e.to_string());
    }

    #[test]
    fn a_previous_secret_verifies_until_its_end_date_and_never_signs() {
        let old = Keyring::new(
            HOST,
            &[KeySpec {
                secret: OLD_SECRET,
                accept_until: None,
            }],
        )
        .unwrap();
        let old_token = old.mint(&Claims::new(&request(None)).unwrap()).unwrap();
        let rolled = Keyring::new(
            HOST,
            &[
                KeySpec {
                    secret: SECRET,
                    accept_until: None,
                },
                KeySpec {
                    secret: OLD_SECRET,
                    accept_until: Some(NOW + 60),
                },
            ],
        )
        .unwrap();
        let verified = rolled.verify(old_token.as_bytes(), NOW + 59).unwrap();
        assert_eq!(key_id(OLD_SECRET), verified.key_id);
        let e = rolled.verify(old_token.as_bytes(), NOW + 60).unwrap_err();
        assert_eq!("token-invalid", e.code());
        assert!(e.to_string().contains("no longer accepts"), "{e}");
        let new_token = rolled.mint(&Claims::new(&request(None)).unwrap()).unwrap();
        assert_eq!(
            key_id(SECRET),
            rolled.verify(new_token.as_bytes(), NOW).unwrap().key_id
        );
        assert_eq!(
            vec![(key_id(SECRET), None), (key_id(OLD_SECRET), Some(NOW + 60))],
            rolled.key_ids()
        );
    }

    #[test]
    fn keyrings_refuse_bad_secrets_without_quoting_them() {
        let weak = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let cases: Vec<(Vec<KeySpec>, &str)> = vec![
            (vec![], "at least one secret"),
            (
                vec![KeySpec {
                    secret: b"short",
                    accept_until: None,
                }],
                "The token secret must be at least 32",
            ),
            (
                vec![
                    KeySpec {
                        secret: SECRET,
                        accept_until: None,
                    },
                    KeySpec {
                        secret: weak,
                        accept_until: Some(1),
                    },
                ],
                "Previous token secret #1 is too predictable",
            ),
            (
                vec![KeySpec {
                    secret: SECRET,
                    accept_until: Some(NOW),
                }],
                "cannot have an end date",
            ),
            (
                vec![
                    KeySpec {
                        secret: SECRET,
                        accept_until: None,
                    },
                    KeySpec {
                        secret: SECRET,
                        accept_until: Some(1),
                    },
                ],
                "same as another",
            ),
            (
                vec![
                    KeySpec {
                        secret: SECRET,
                        accept_until: None
                    };
                    MAX_KEYS + 1
                ],
                "At most",
            ),
        ];
        for (specs, why) in cases {
            let e = Keyring::new(HOST, &specs).err().unwrap();
            assert_eq!("bad-request", e.code());
            assert!(e.to_string().contains(why), "{why}: {e}");
            assert!(
                !e.to_string().contains("aaaa") && !e.to_string().contains("horse"),
                "{e}"
            );
        }
        let e = Keyring::new(
            "user@muc.example.org",
            &[KeySpec {
                secret: SECRET,
                accept_until: None,
            }],
        )
        .err();
        assert!(e.unwrap().to_string().contains("must be a domain"));
    }

    #[test]
    fn secret_checks_refuse_short_public_and_patterned_secrets() {
        for (secret, why) in [
            (&b"0123456789abcdefghijklmnopqrstu"[..], "at least 32 characters"),
            (
                b"hJ0w3bqKpB0yBw0m3e0nq4mJ8XfWkE4oVqf7s9RZQ2c1",
                "example from the documentation",
            ),
            (
                b"CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME",
                "example from the documentation",
            ),
            (
                b"CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME",
                "too predictable",
            ),
            (b"passwordpasswordpasswordpassword", "too predictable"),
            (b"                                        ", "too predictable"),
        ] {
            let e = check_secret(secret, "The secret").unwrap_err();
            assert!(
                e.to_string().contains(why),
                "{}: {e}",
                String::from_utf8_lossy(secret)
            );
        }
        // What the README tells operators to run, and a 32-character hex secret (128 random bits).
        assert!(check_secret(b"q2F0c8rVb1yL6mP+Hn3WxZkT9s4eJdGaUo5iRB7vNQ8M", "s").is_ok());
        assert!(check_secret(b"9f86d081884c7d659a2feaa0c55ad015", "s").is_ok());
        assert!(check_secret(b"Bearer c4Rb0n-3xampl3_but_n0t_publ1c_abcdEFGH", "s").is_ok());
    }

    #[test]
    fn tampered_claims_or_signature_are_invalid() {
        let token = token_for(Some(vec!["a@muc.example.org"]));
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let forged_claims = Claims {
            scope: Scope::Service,
            ..verify(token.as_bytes(), NOW).unwrap().claims
        };
        let forged = format!(
            "v2.{}.{}.{tag}",
            key_id(SECRET),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap())
        );
        assert_eq!(
            "token-invalid",
            verify(forged.as_bytes(), NOW).unwrap_err().code()
        );
        let mut bad_tag = tag.to_string().into_bytes();
        bad_tag[0] = if bad_tag[0] == b'A' { b'B' } else { b'A' };
        let forged = format!("{signed}.{}", String::from_utf8(bad_tag).unwrap());
        assert_eq!(
            "token-invalid",
            verify(forged.as_bytes(), NOW).unwrap_err().code()
        );
        // Another key id in front of a genuine signature.
        let (_, rest) = token.split_at(3 + 8);
        let forged = format!("v2.AAAAAAAA{rest}");
        assert_eq!(
            "token-invalid",
            verify(forged.as_bytes(), NOW).unwrap_err().code()
        );
    }

    #[test]
    fn malformed_tokens_are_rejected_with_token_malformed() {
        let good = token_for(None);
        let (_, rest) = good.split_once('.').unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("v2.abc".into(), "four dot-separated parts"),
            (format!("{good}.extra"), "four dot-separated parts"),
            (format!("v3.{rest}"), "version"),
            (format!("V2.{rest}"), "version"),
            (format!("v1.{rest}"), "v1 format (prosody-native 0.1.0)"),
            ("v1.eyJob3N0IjoiIn0.AAAA".into(), "v1 format"),
            (
                good.replacen(
                    &format!("{}.", key_id(SECRET)),
                    &format!("{}.=", key_id(SECRET)),
                    1,
                ),
                "base64url",
            ),
            (format!("{good}="), "base64url"),
            (
                format!("{}.AAAA", good.rsplit_once('.').unwrap().0),
                "wrong length",
            ),
            ("x".repeat(MAX_TOKEN_BYTES + 1), "longer than"),
        ];
        for (token, why) in cases {
            let e = verify(token.as_bytes(), NOW).unwrap_err();
            assert_eq!("token-malformed", e.code(), "{token}");
            assert!(e.to_string().contains(why), "{token}: {e}");
        }
        assert_eq!(
            "token-malformed",
            verify(b"v2.\xff\xfe.abc.d", NOW).unwrap_err().code()
        );
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
        assert_eq!(
            "token-malformed",
            verify(token.as_bytes(), NOW).unwrap_err().code()
        );
    }

    /// Claims a genuine v2 minter never writes, each signed with the real key: all must be refused.
    #[test]
    fn genuinely_signed_but_lax_claims_are_malformed() {
        let n = "MDEyMzQ1Njc4OWFiY2RlZg";
        let iat = NOW;
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "malformed"),
            ("[1,2,3]".into(), "malformed"),
            ("{}".into(), "malformed"),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":{},"nonce":"{n}","admin":true}}"#,
                    iat + 60
                ),
                "unknown field",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"everything","iat":{iat},"exp":{},"nonce":"{n}"}}"#,
                    iat + 60
                ),
                "malformed",
            ),
            (
                format!(r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":"never","nonce":"{n}"}}"#),
                "malformed",
            ),
            // Defects of 0.1.0's verifier: an expiry near i64::MAX, an issue time years ahead, an empty
            // nonce, an empty room list, repeated fields.
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":{},"nonce":"{n}"}}"#,
                    i64::MAX - 1
                ),
                "lifetime",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","iat":{},"exp":{},"nonce":"{n}"}}"#,
                    iat + 315_360_000,
                    iat + 315_360_060
                ),
                "in the future",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":{},"nonce":""}}"#,
                    iat + 60
                ),
                "Token id",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":{},"nonce":"AAAA"}}"#,
                    iat + 60
                ),
                "Token id",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":{{"rooms":[]}},"iat":{iat},"exp":{},"nonce":"{n}"}}"#,
                    iat + 60
                ),
                "at least one room",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":{{"rooms":["a@muc.example.org","a@muc.example.org"]}},"iat":{iat},"exp":{},"nonce":"{n}"}}"#,
                    iat + 60
                ),
                "named twice",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":{{"rooms":["a@elsewhere.example"]}},"iat":{iat},"exp":{},"nonce":"{n}"}}"#,
                    iat + 60
                ),
                "is not on",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":{},"nonce":"{n}","exp":{}}}"#,
                    iat + 60,
                    i64::MAX
                ),
                "duplicate field",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","scope":{{"rooms":["a@muc.example.org"]}},"iat":{iat},"exp":{},"nonce":"{n}"}}"#,
                    iat + 60
                ),
                "duplicate field",
            ),
            (
                format!(r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":{iat},"nonce":"{n}"}}"#),
                "lifetime",
            ),
            (
                format!(
                    r#"{{"host":"{HOST}","scope":"service","iat":{iat},"exp":{},"nonce":"{n}","label":""}}"#,
                    iat + 60
                ),
                "Token label is empty",
            ),
        ];
        for (claims, why) in cases {
            let e = verify(sign_raw(claims.as_bytes()).as_bytes(), NOW).unwrap_err();
            assert_eq!("token-malformed", e.code(), "{claims}: {e}");
            assert!(e.to_string().contains(why), "{claims}: {e}");
        }
        // A clock a little behind the minter's is fine.
        let ok = format!(
            r#"{{"host":"{HOST}","scope":"service","iat":{},"exp":{},"nonce":"{n}"}}"#,
            NOW + 60,
            NOW + 120
        );
        assert!(verify(sign_raw(ok.as_bytes()).as_bytes(), NOW).is_ok());
        let other_host = format!(
            r#"{{"host":"x.example","scope":"service","iat":{iat},"exp":{},"nonce":"{n}"}}"#,
            iat + 60
        );
        assert_eq!(
            "token-invalid",
            verify(sign_raw(other_host.as_bytes()).as_bytes(), NOW)
                .unwrap_err()
                .code()
        );
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
                "Token id",
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
    fn minting_names_each_room_once_and_only_for_its_host() {
        let claims = Claims::new(&request(Some(vec!["a@muc.example.org", "a@muc.example.org"]))).unwrap();
        assert_eq!(Scope::Rooms(vec!["a@muc.example.org".into()]), claims.scope);
        let other = Claims::new(&Request {
            host: "other.example.org",
            ..request(None)
        })
        .unwrap();
        assert_eq!("bad-request", keyring().mint(&other).unwrap_err().code());
    }

    #[test]
    fn utc_times_are_read_strictly() {
        assert_eq!(Ok(0), parse_utc_time("1970-01-01"));
        assert_eq!(Ok(1_751_328_000), parse_utc_time("2025-07-01"));
        assert_eq!(Ok(1_751_373_045), parse_utc_time("2025-07-01T12:30:45Z"));
        assert_eq!(Ok(951_782_400), parse_utc_time("2000-02-29"));
        for bad in [
            "",
            "2025-7-01",
            "2025-07-01 12:00:00",
            "2025-07-01T12:00:00",
            "2025-02-29",
            "1900-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-04-31",
            "2025-07-01T24:00:00Z",
            "+025-07-01",
            "2025-07-01Z",
        ] {
            assert_eq!("bad-request", parse_utc_time(bad).unwrap_err().code(), "{bad}");
        }
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
            let _ = verify(&token, NOW);
        }

        #[test]
        fn verify_never_accepts_a_mutated_token(index in 0usize..200, byte in any::<u8>()) {
            let token = token_for(Some(vec!["a@muc.example.org"]));
            let mut bytes = token.clone().into_bytes();
            let i = index % bytes.len();
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            prop_assert!(verify(&bytes, NOW).is_err());
        }

        #[test]
        fn random_base64_secrets_pass_the_strength_check(bytes in proptest::collection::vec(any::<u8>(), 33)) {
            let secret = base64::engine::general_purpose::STANDARD.encode(&bytes);
            prop_assert!(check_secret(secret.as_bytes(), "s").is_ok(), "{}", secret);
        }

        #[test]
        fn random_hex_secrets_pass_the_strength_check(bytes in proptest::collection::vec(any::<u8>(), 16)) {
            prop_assert!(check_secret(hex(&bytes).as_bytes(), "s").is_ok(), "{}", hex(&bytes));
        }

        #[test]
        fn secrets_equal_matches_byte_equality(a in proptest::collection::vec(any::<u8>(), 0..64),
                                               b in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(a == b, secrets_equal(&a, &b));
        }
    }
}
