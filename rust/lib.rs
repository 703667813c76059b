//! # prosody-native
//!
//! The native half of the prosody-native Prosody modules. Thin Lua modules (in `lua/`) own everything that
//! touches Prosody: hooks, stanzas, options, permissions, storage and logging. This crate owns pure
//! computation and slow I/O, and nothing else.
//!
//! ## Boundary rules
//! - Only plain data crosses into Rust: byte strings, numbers, booleans, flat tables and opaque handles. Rust
//!   never sees a stanza or Prosody's `module` object, and keeps no global configuration: what Lua reads from
//!   its options becomes a handle it owns (such as [`media::Prober`]), made at load and again on reload.
//! - Errors cross as `nil, code, text` like Prosody's C libraries: `code` is a stable kebab-case string
//!   ([`error::Error::code`]), `text` is for people. A Rust panic is caught at the seam and becomes
//!   `nil, "internal-error"`; it never unwinds into Lua.
//! - Slow work runs on worker threads that never touch Lua; results come back through a wake-up descriptor.
//!
//! ## Where to start reading
//! - [`error`]: the one error type and its codes.
//! - [`validate`]: URIs, JIDs, nicknames, titles, hues and hat attachments, checked before anything is stored
//!   (mod_muc_hats_api, mod_muc_hats_adhoc).
//! - [`token`] and [`kick`]: scoped API tokens signed by a keyring of the operator's secrets (key ids, so that a
//!   secret can be rolled over), checks of those secrets, constant-time comparison, and the JSON body of an HTTP
//!   kick (mod_http_muc_kick).
//! - [`invite`]: form values of invitations and the per-user quota (mod_invites_adhoc).
//! - Media (mod_muc_media_metadata), the folder [`media`]: its `mod.rs` holds the [`media::Prober`] handle
//!   and ties one URL's job together: [`media::cache`] first, then a safe fetch ([`media::fetch`], with
//!   [`media::netguard`] deciding which addresses may be contacted) whose body goes, as it arrives, into the
//!   streaming prober [`media::probe`]: one decoder per format (`jpeg` reads the DC coefficients, `png` and
//!   `gif` rows, `webp` a whole frame under a memory budget, `header` and `isobmff` only dimensions), each
//!   feeding a small working image that `blurhash` encodes. The download stops as soon as the answer is
//!   complete, and memory does not grow with the file. [`jobs`] runs such work on worker threads and wakes
//!   Prosody's loop through a descriptor.
//! - `lua` (feature `lua54`): the only module that imports mlua; each function converts, calls the core and
//!   maps the result.
//!
//! Without the `lua54` feature the crate is plain Rust, which is how `cargo test` and the benchmarks use it.

pub mod error;
pub mod invite;
pub mod jobs;
pub mod kick;
pub mod media;
pub mod token;
pub mod validate;

#[cfg(feature = "lua54")]
mod lua;

/// Version of the library; the Lua side refuses to run against a library whose version differs from its own.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
