//! Form values of invitations (XEP-0401, mod_invites_adhoc): validity periods, reserved usernames, notes,
//! tokens, and the per-user quotas of open invitations and of accounts created with them.
//!
//! Everything here is pure: the Lua module reads the data form, passes each value and the configured limits
//! in, and gets back a clean value or [`Error::BadRequest`] / [`Error::QuotaExceeded`] with a message that
//! tells the person filling in the form what to change. Values arrive as raw bytes because a Lua string can
//! hold anything.

use crate::error::Error;

/// Longest local part of a JID in bytes (RFC 7622, section 3.3).
pub const MAX_USERNAME_BYTES: usize = 1023;

/// Longest invite token accepted; Prosody's tokens (`util.id.medium`) are 16 characters.
pub const MAX_TOKEN_BYTES: usize = 64;

/// Longest validity period text we parse, in bytes; anything longer is not something a person typed.
const MAX_PERIOD_BYTES: usize = 64;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, Error> {
    std::str::from_utf8(bytes).map_err(|_| Error::bad_request(format!("{what} is not valid UTF-8")))
}

/// Seconds per unit of a human period ("2 days", "90 min", "1w"). A bare "m" is refused: Prosody reads it as
/// months in some places and minutes in others.
fn unit_seconds(unit: &str) -> Result<u64, Error> {
    match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => Ok(1),
        "min" | "mins" | "minute" | "minutes" => Ok(MINUTE),
        "h" | "hr" | "hrs" | "hour" | "hours" => Ok(HOUR),
        "d" | "day" | "days" => Ok(DAY),
        "w" | "wk" | "wks" | "week" | "weeks" => Ok(WEEK),
        "m" => Err(Error::bad_request(
            "Validity period unit 'm' is ambiguous: write 'min' or 'days'",
        )),
        "mo" | "mon" | "month" | "months" | "y" | "year" | "years" => Err(Error::bad_request(
            "Months and years vary in length: give the validity period in days or weeks",
        )),
        other => Err(Error::bad_request(format!(
            "Validity period unit '{other}' is not understood (use seconds, min, hours, days or weeks)"
        ))),
    }
}

fn add_part(total: u64, amount: u64, per_unit: u64) -> Result<u64, Error> {
    amount
        .checked_mul(per_unit)
        .and_then(|secs| total.checked_add(secs))
        .ok_or_else(|| Error::bad_request("Validity period is too long"))
}

/// Parses "3600", "90 min", "36h", "2 days", "1 week 3 days" or "1d, 12h": numbers each followed by an
/// optional unit (seconds when absent).
fn parse_human(s: &str) -> Result<u64, Error> {
    let mut total = 0u64;
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return Ok(total);
        }
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(Error::bad_request(format!(
                "Validity period '{s}' is not understood: write e.g. '1 hour', '7 days' or '2 weeks'"
            )));
        }
        let (number, after) = rest.split_at(digits);
        let amount: u64 = number
            .parse()
            .map_err(|_| Error::bad_request("Validity period is too long"))?;
        let after = after.trim_start();
        let unit_len = after.find(|c: char| !c.is_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        total = add_part(total, amount, unit_seconds(unit)?)?;
        rest = after;
    }
}

/// Parses an ISO 8601 duration as xs:duration writes it: "P7D", "P2W", "PT1H30M", "P1DT12H". Years and
/// months are refused because their length varies.
fn parse_iso8601(s: &str) -> Result<u64, Error> {
    let not_understood = || {
        Error::bad_request(format!(
            "Validity period '{s}' is not an ISO 8601 duration like P7D or PT12H"
        ))
    };
    let body = s.get(1..).ok_or_else(not_understood)?;
    let mut total = 0u64;
    let mut in_time = false;
    let mut number_start: Option<usize> = None;
    let mut parts = 0;
    for (i, c) in body.char_indices() {
        if c.is_ascii_digit() {
            number_start.get_or_insert(i);
            continue;
        }
        let c = c.to_ascii_uppercase();
        if c == 'T' {
            if in_time || number_start.is_some() {
                return Err(not_understood());
            }
            in_time = true;
            continue;
        }
        let start = number_start.take().ok_or_else(not_understood)?;
        let amount: u64 = body
            .get(start..i)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::bad_request("Validity period is too long"))?;
        let per_unit = match (in_time, c) {
            (false, 'W') => WEEK,
            (false, 'D') => DAY,
            (true, 'H') => HOUR,
            (true, 'M') => MINUTE,
            (true, 'S') => 1,
            (false, 'Y' | 'M') => {
                return Err(Error::bad_request(
                    "Months and years vary in length: give the validity period in days or weeks",
                ))
            }
            _ => return Err(not_understood()),
        };
        total = add_part(total, amount, per_unit)?;
        parts += 1;
    }
    if number_start.is_some() || parts == 0 {
        return Err(not_understood());
    }
    Ok(total)
}

/// Parses a validity period as a person types it into a form: a number of seconds, a human period
/// ("36 hours", "2 weeks", "1d 12h") or an ISO 8601 duration ("P7D", "PT12H"). Returns seconds.
pub fn parse_period(bytes: &[u8]) -> Result<u64, Error> {
    let s = utf8(bytes, "Validity period")?.trim();
    if s.is_empty() {
        return Err(Error::bad_request("Validity period is empty"));
    }
    if s.len() > MAX_PERIOD_BYTES {
        return Err(Error::bad_request(format!(
            "Validity period is longer than {MAX_PERIOD_BYTES} characters"
        )));
    }
    if s.starts_with(['P', 'p']) {
        parse_iso8601(s)
    } else {
        parse_human(s)
    }
}

/// Writes a period for people: "1 week", "36 hours", "90 seconds", always in the largest whole unit.
pub fn describe_period(seconds: u64) -> String {
    let (amount, unit) = [(WEEK, "week"), (DAY, "day"), (HOUR, "hour"), (MINUTE, "minute")]
        .iter()
        .find(|(size, _)| seconds != 0 && seconds % size == 0)
        .map(|&(size, unit)| (seconds / size, unit))
        .unwrap_or((seconds, "second"));
    format!("{amount} {unit}{}", if amount == 1 { "" } else { "s" })
}

/// Parses a validity period ([`parse_period`]) and checks it lies within `min_secs..=max_secs`.
pub fn validity(bytes: &[u8], min_secs: u64, max_secs: u64) -> Result<u64, Error> {
    let seconds = parse_period(bytes)?;
    if seconds < min_secs {
        return Err(Error::bad_request(format!(
            "Validity period must be at least {}",
            describe_period(min_secs)
        )));
    }
    if seconds > max_secs {
        return Err(Error::bad_request(format!(
            "Validity period must be at most {}",
            describe_period(max_secs)
        )));
    }
    Ok(seconds)
}

/// Checks the shape of a username to reserve: the local part of a JID (RFC 7622, section 3.3), so non-empty,
/// at most 1023 bytes, no whitespace, controls or `"&'/:<>@`. Case folding and normalisation are left to
/// Prosody's `nodeprep`.
pub fn username(bytes: &[u8]) -> Result<&str, Error> {
    let s = utf8(bytes, "Username")?;
    if s.is_empty() {
        return Err(Error::bad_request("Username is empty"));
    }
    if s.len() > MAX_USERNAME_BYTES {
        return Err(Error::bad_request(format!(
            "Username is longer than {MAX_USERNAME_BYTES} bytes"
        )));
    }
    if s.contains('@') {
        return Err(Error::bad_request(
            "Username may not contain '@': give only the part before the @",
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"&'/:<>".contains(*c))
    {
        return Err(Error::bad_request(format!("Username may not contain {c:?}")));
    }
    Ok(s)
}

/// Checks a note the creator attaches to an invitation (shown when listing): valid UTF-8, no control
/// characters (so one line), at most `max_chars` characters. Surrounding whitespace is trimmed away.
pub fn note(bytes: &[u8], max_chars: usize) -> Result<&str, Error> {
    let s = utf8(bytes, "Note")?.trim();
    if s.is_empty() {
        return Err(Error::bad_request("Note is empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "Note must be a single line without control characters",
        ));
    }
    if s.chars().count() > max_chars {
        return Err(Error::bad_request(format!(
            "Note is longer than {max_chars} characters"
        )));
    }
    Ok(s)
}

/// Checks the shape of an invite token a user hands back (to revoke it): 1 to 64 characters of the URL-safe
/// alphabet Prosody's `util.id` uses. Anything else cannot be a token this server issued.
pub fn token(bytes: &[u8]) -> Result<&str, Error> {
    if bytes.is_empty() {
        return Err(Error::bad_request("Invite token is empty"));
    }
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(Error::bad_request(format!(
            "Invite token is longer than {MAX_TOKEN_BYTES} characters"
        )));
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::bad_request("Not an invite token of this server"));
    }
    utf8(bytes, "Invite token")
}

/// Checks that a user with `open` invitations still pending may create one more under `limit`. Returns how
/// many remain open to them after this one.
pub fn quota(open: u64, limit: u64) -> Result<u64, Error> {
    if open >= limit {
        return Err(Error::QuotaExceeded(format!(
            "You already have {open} open invitation{} (the limit is {limit}): revoke one or wait until one is used \
             or expires",
            if open == 1 { "" } else { "s" }
        )));
    }
    Ok(limit - open - 1)
}

/// Checks that a user may hand out one more invitation that can create an account: `used` accounts were
/// created with their invitations in the quota period (`period_secs`, 0 for ever) and `pending` open
/// invitations of theirs could still create one; together they stay under `limit`, as ejabberd's
/// `max_invites` counts. Returns how many remain after this one.
pub fn account_quota(used: u64, pending: u64, limit: u64, period_secs: u64) -> Result<u64, Error> {
    let counted = used.saturating_add(pending);
    if counted >= limit {
        let period = if period_secs == 0 {
            "in all".to_string()
        } else {
            format!("every {}", describe_period(period_secs))
        };
        return Err(Error::QuotaExceeded(format!(
            "You may invite {limit} new account{} {period}: {used} registered with your invitations, and {pending} of \
             your open invitations could still register one",
            if limit == 1 { "" } else { "s" }
        )));
    }
    Ok(limit - counted - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_human_periods() {
        for (text, seconds) in [
            ("3600", 3600),
            ("90 min", 5400),
            ("36h", 36 * HOUR),
            ("1 hour", HOUR),
            ("2 Days", 2 * DAY),
            ("1 week 3 days", 10 * DAY),
            ("1d, 12h", 36 * HOUR),
            ("  7d  ", WEEK),
            ("30 seconds", 30),
        ] {
            assert_eq!(Ok(seconds), parse_period(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn parses_iso8601_durations() {
        for (text, seconds) in [
            ("P7D", WEEK),
            ("P2W", 2 * WEEK),
            ("PT1H30M", 90 * MINUTE),
            ("P1DT12H", 36 * HOUR),
            ("pt45s", 45),
        ] {
            assert_eq!(Ok(seconds), parse_period(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_periods() {
        for (text, expected) in [
            ("", "empty"),
            ("soon", "not understood"),
            ("5 m", "ambiguous"),
            ("2 months", "vary in length"),
            ("P1M", "vary in length"),
            ("P1Y", "vary in length"),
            ("P", "ISO 8601"),
            ("PT", "ISO 8601"),
            ("P1H", "ISO 8601"),
            ("P5", "ISO 8601"),
            ("PT1HT", "ISO 8601"),
            ("3 fortnights", "'fortnights' is not understood"),
            ("-5 days", "not understood"),
            ("1.5 days", "not understood"),
            ("99999999999999999999999 s", "too long"),
            ("18446744073709551615 weeks", "too long"),
            ("P99999999999999999999W", "too long"),
        ] {
            let err = parse_period(text.as_bytes()).unwrap_err();
            assert_eq!("bad-request", err.code(), "{text}");
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
        assert!(parse_period(b"\xff days").is_err());
        assert!(parse_period("1 ".repeat(40).as_bytes())
            .unwrap_err()
            .to_string()
            .contains("longer than"));
    }

    #[test]
    fn bounds_validity() {
        assert_eq!(Ok(DAY), validity(b"1 day", MINUTE, WEEK));
        assert_eq!(Ok(WEEK), validity(b"P1W", MINUTE, WEEK));
        assert_eq!(
            Err(Error::bad_request("Validity period must be at most 1 week")),
            validity(b"8 days", MINUTE, WEEK)
        );
        assert_eq!(
            Err(Error::bad_request("Validity period must be at least 1 minute")),
            validity(b"30", MINUTE, WEEK)
        );
    }

    #[test]
    fn describes_periods() {
        assert_eq!("1 week", describe_period(WEEK));
        assert_eq!("30 days", describe_period(30 * DAY));
        assert_eq!("36 hours", describe_period(36 * HOUR));
        assert_eq!("90 seconds", describe_period(90));
        assert_eq!("0 seconds", describe_period(0));
    }

    #[test]
    fn checks_usernames() {
        assert_eq!(Ok("juliet"), username(b"juliet"));
        assert_eq!(Ok("Jüliet.C-2"), username("Jüliet.C-2".as_bytes()));
        for (bad, expected) in [
            ("", "empty"),
            ("juliet@example.com", "before the @"),
            ("ju liet", "' '"),
            ("a/b", "'/'"),
            ("a:b", "':'"),
            ("a<b", "'<'"),
            ("a\u{7}b", "'\\u{7}'"),
        ] {
            let err = username(bad.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(expected), "{bad:?}: {err}");
        }
        assert!(username(b"\xc3").is_err());
        assert!(username("a".repeat(1024).as_bytes()).is_err());
        assert!(username("a".repeat(1023).as_bytes()).is_ok());
    }

    #[test]
    fn checks_notes() {
        assert_eq!(Ok("For Juliet ✓"), note("  For Juliet ✓ ".as_bytes(), 20));
        assert_eq!(Err(Error::bad_request("Note is empty")), note(b"   ", 20));
        assert!(note(b"two\nlines", 20)
            .unwrap_err()
            .to_string()
            .contains("single line"));
        assert_eq!(
            Err(Error::bad_request("Note is longer than 3 characters")),
            note("éééé".as_bytes(), 3)
        );
        assert_eq!(Ok("ééé"), note("ééé".as_bytes(), 3));
        assert!(note(b"\xff", 20).is_err());
    }

    #[test]
    fn checks_tokens() {
        assert_eq!(Ok("aB3-_x"), token(b"aB3-_x"));
        assert!(token(b"").is_err());
        assert!(token(b"abc def").is_err());
        assert!(token(b"abc/../x").is_err());
        assert!(token("a".repeat(65).as_bytes()).is_err());
    }

    #[test]
    fn enforces_quota() {
        assert_eq!(Ok(2), quota(0, 3));
        assert_eq!(Ok(0), quota(2, 3));
        let err = quota(3, 3).unwrap_err();
        assert_eq!("quota-exceeded", err.code());
        assert!(
            err.to_string().contains("3 open invitations (the limit is 3)"),
            "{err}"
        );
        assert_eq!("quota-exceeded", quota(1, 0).unwrap_err().code());
        assert!(quota(1, 1)
            .unwrap_err()
            .to_string()
            .contains("1 open invitation "));
    }

    #[test]
    fn enforces_account_quota() {
        assert_eq!(Ok(2), account_quota(0, 0, 3, 0));
        assert_eq!(Ok(0), account_quota(1, 1, 3, 0));
        let err = account_quota(2, 1, 3, 0).unwrap_err();
        assert_eq!("quota-exceeded", err.code());
        assert_eq!(
            "You may invite 3 new accounts in all: 2 registered with your invitations, and 1 of your open \
             invitations could still register one",
            err.to_string()
        );
        assert!(account_quota(1, 0, 1, 30 * DAY)
            .unwrap_err()
            .to_string()
            .starts_with("You may invite 1 new account every 30 days:"));
        assert_eq!("quota-exceeded", account_quota(0, 0, 0, 0).unwrap_err().code());
        assert!(account_quota(u64::MAX, u64::MAX, u64::MAX, 0).is_err());
    }

    proptest! {
        #[test]
        fn parse_period_never_panics(s in "\\PC{0,80}") {
            let _ = parse_period(s.as_bytes());
        }

        #[test]
        fn parse_period_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_period(&bytes);
        }

        #[test]
        fn human_periods_round_trip(weeks in 0u64..100, days in 0u64..7, hours in 0u64..24, minutes in 0u64..60) {
            let text = format!("{weeks}w {days}d {hours}h {minutes}min");
            let expected = weeks * WEEK + days * DAY + hours * HOUR + minutes * MINUTE;
            prop_assert_eq!(Ok(expected), parse_period(text.as_bytes()));
            let iso = format!("P{weeks}W{days}DT{hours}H{minutes}M");
            prop_assert_eq!(Ok(expected), parse_period(iso.as_bytes()));
        }

        #[test]
        fn accepted_usernames_hold_no_forbidden_characters(s in "\\PC{0,40}") {
            if let Ok(name) = username(s.as_bytes()) {
                prop_assert!(!name.is_empty());
                prop_assert!(!name.chars().any(|c| c.is_whitespace() || "\"&'/:<>@".contains(c)));
            }
        }
    }
}
