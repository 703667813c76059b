//! Fuzz target: the streaming prober gives the same answer however the bytes are split into chunks.
//!
//! Input: a selector byte (limits and BlurHash components, as in the `probe` target), a count `n` of cuts
//! (at most 16), `n` little-endian u16 cut offsets, then the file. The file is probed whole with `probe`,
//! then fed to a `StreamProbe` in the pieces the cuts make (memory granted as `probe` grants it); both
//! answers must be equal. The corpus is seeded from tests/data by scripts/fuzz.sh, with no cuts.

#![no_main]

mod limits;

use libfuzzer_sys::fuzz_target;
use prosody_native::media::probe::{probe, Need, StreamProbe};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((&count, rest)) = rest.split_first() else {
        return;
    };
    let count = (count as usize).min(16);
    let Some((cuts, bytes)) = rest.split_at_checked(count * 2) else {
        return;
    };
    let limits = limits::from_selector(selector);
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (bytes.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = probe(bytes, &limits);
    let mut stream = StreamProbe::new(limits.clone()).expect("valid limits");
    let mut at = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        let mut need = stream.feed(&bytes[at..cut]);
        while let Need::Memory(n) = need {
            stream.grant(n <= limits.max_decode_memory);
            need = stream.need();
        }
        at = cut;
    }
    assert_eq!(whole, stream.finish());
});
