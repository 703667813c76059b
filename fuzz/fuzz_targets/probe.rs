//! Fuzz target: `probe::probe` on arbitrary bytes never panics, and what it returns is consistent.
//! The first byte picks the limits (small pixel and memory limits, or 4 MP and the default memory), the
//! rest is the input; the corpus is seeded from tests/data by scripts/fuzz.sh.

#![no_main]

mod limits;

use libfuzzer_sys::fuzz_target;
use prosody_native::media::probe::{probe, sniff};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let limits = limits::from_selector(selector);
    match probe(bytes, &limits) {
        Ok(info) => {
            assert_eq!(sniff(bytes), Some(info.mime.as_str()));
            if let Some(hash) = info.blurhash {
                let expected = 4 + 2 * (limits.components_x * limits.components_y) as usize;
                assert_eq!(expected, hash.len());
            }
        }
        Err(e) => assert!(matches!(e.code(), "unsupported-format"), "{e}"),
    }
});
