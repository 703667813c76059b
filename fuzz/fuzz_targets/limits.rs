//! The probe limits a fuzz input's selector byte picks, shared by the probe targets: bit 0 small pixel and
//! memory limits (else 4 MP, which keeps each run short: a 36 MP seed would take a second, and both still
//! decode), the other bits the BlurHash components.

use prosody_native::media::probe::ProbeLimits;

pub fn from_selector(selector: u8) -> ProbeLimits {
    let mut limits = ProbeLimits {
        max_pixels: 1 << 22,
        ..ProbeLimits::default()
    };
    if selector & 1 == 1 {
        limits.max_pixels = 1 << 16;
        limits.max_decode_memory = 1 << 20;
    }
    limits.components_x = 1 + (selector >> 1) as u32 % 9;
    limits.components_y = 1 + (selector >> 5) as u32 % 9;
    limits
}
