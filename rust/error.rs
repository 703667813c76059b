//! The one error type of the crate: `Display` for people, [`Error::code`] for machines.

use std::fmt;

/// Everything that can go wrong in the library. Each variant carries a message for people; the variant
/// itself selects the stable machine-readable code that Lua code switches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The caller's input is malformed (`bad-request`).
    BadRequest(String),
    /// The input is larger than the limit the caller passed in (`too-large`).
    TooLarge(String),
    /// A bug: a panic caught at the seam, or an impossible state (`internal-error`).
    Internal(String),
    /// The bytes are in no format this library recognises (`unsupported-format`).
    UnsupportedFormat(String),
    /// Not a token this library could have issued: wrong shape, version, encoding or size (`token-malformed`).
    TokenMalformed(String),
    /// A well-formed token whose signature or host does not match: forged, or signed with a rotated secret
    /// (`token-invalid`).
    TokenInvalid(String),
    /// A genuine token past its expiry time (`token-expired`).
    TokenExpired(String),
    /// The user already holds as many open invitations as the caller's limit allows (`quota-exceeded`).
    QuotaExceeded(String),
    /// A fetch was refused because the URL, a redirect or a resolved address points to a blocked network
    /// (`blocked`).
    Blocked(String),
    /// A fetch failed: connection refused, HTTP error status, too many redirects, bad response (`fetch-failed`).
    FetchFailed(String),
    /// A fetch took longer than the caller's connect or total time limit (`timeout`).
    Timeout(String),
    /// Work refused at admission because a limit is reached; the code names the limit (`queue-full`,
    /// `sender-busy`, `room-busy`).
    Shed(&'static str, String),
    /// Work that could not start before its deadline (`too-late`).
    TooLate(String),
}

impl Error {
    /// Stable kebab-case code for programs (`"bad-request"`, `"too-large"`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad-request",
            Error::TooLarge(_) => "too-large",
            Error::Internal(_) => "internal-error",
            Error::UnsupportedFormat(_) => "unsupported-format",
            Error::TokenMalformed(_) => "token-malformed",
            Error::TokenInvalid(_) => "token-invalid",
            Error::TokenExpired(_) => "token-expired",
            Error::QuotaExceeded(_) => "quota-exceeded",
            Error::Blocked(_) => "blocked",
            Error::FetchFailed(_) => "fetch-failed",
            Error::Timeout(_) => "timeout",
            Error::Shed(code, _) => code,
            Error::TooLate(_) => "too-late",
        }
    }

    /// Shorthand for a [`Error::BadRequest`] with the given message.
    pub fn bad_request(text: impl Into<String>) -> Self {
        Error::BadRequest(text.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRequest(text)
            | Error::TooLarge(text)
            | Error::Internal(text)
            | Error::UnsupportedFormat(text)
            | Error::TokenMalformed(text)
            | Error::TokenInvalid(text)
            | Error::TokenExpired(text)
            | Error::QuotaExceeded(text)
            | Error::Blocked(text)
            | Error::FetchFailed(text)
            | Error::Timeout(text)
            | Error::Shed(_, text)
            | Error::TooLate(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for Error {}

/// Runs `f`, turning a panic into [`Error::Internal`] so that it can never unwind across the Lua seam or
/// kill a worker thread.
pub fn guard<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::Internal(format!("internal error: {what}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_kebab_case() {
        assert_eq!("bad-request", Error::bad_request("x").code());
        assert_eq!("too-large", Error::TooLarge("x".into()).code());
        assert_eq!("internal-error", Error::Internal("x".into()).code());
        assert_eq!("unsupported-format", Error::UnsupportedFormat("x".into()).code());
        assert_eq!("token-malformed", Error::TokenMalformed("x".into()).code());
        assert_eq!("token-invalid", Error::TokenInvalid("x".into()).code());
        assert_eq!("token-expired", Error::TokenExpired("x".into()).code());
        assert_eq!("quota-exceeded", Error::QuotaExceeded("x".into()).code());
    }

    #[test]
    fn guard_turns_a_panic_into_internal_error() {
        let result: Result<(), Error> = guard(|| panic!("boom"));
        assert_eq!(Err(Error::Internal("internal error: boom".into())), result);
    }

    #[test]
    fn guard_passes_results_through() {
        assert_eq!(Ok(3), guard(|| Ok(3)));
        assert_eq!(
            Err(Error::bad_request("no")),
            guard::<()>(|| Err(Error::bad_request("no")))
        );
    }
}
