//! Fuzz target: `probe::probe` on arbitrary bytes never panics, and what it returns is consistent.
//! The first byte picks the limits (small pixel and memory limits, or 4 MP and the default memory), the
//! rest is the input; the corpus is seeded from tests/data by scripts/fuzz.sh.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prosody_native::media::probe::{probe, sniff, ProbeLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    // Small pixel limits keep each run short (a 36 MP seed would take a second); both still decode.
    let mut limits = ProbeLimits::default();
    limits.max_pixels = 1 << 22;
    if selector & 1 == 1 {
        limits.max_pixels = 1 << 16;
        limits.max_decode_memory = 1 << 20;
    }
    limits.components_x = 1 + (selector >> 1) as u32 % 9;
    limits.components_y = 1 + (selector >> 5) as u32 % 9;
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
