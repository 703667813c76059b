//! Media probing, streamed: bytes in, as they arrive, to (MIME type, width, height, BlurHash), decoding
//! only under explicit limits and in memory that does not grow with the file.
//!
//! A [`StreamProbe`] takes the body of a download chunk by chunk ([`StreamProbe::feed`]) and says after each
//! chunk what it needs next ([`Need`]): more bytes, memory from the caller's decode budget, or nothing, when
//! its answer is complete and the download can stop. [`StreamProbe::finish`] gives the answer.
//!
//! - The format is recognised by its magic bytes ([`sniff()`]), never by a file name or a `Content-Type`:
//!   JPEG, PNG, GIF and WebP from their first 12 bytes, others from the first [`sniff::SNIFF_BYTES`].
//! - Dimensions come from the header as soon as it has arrived, never from a decode, so they are known
//!   even for images whose pixels are refused or never arrive.
//! - Pixels are decoded for JPEG, PNG, GIF and WebP, only when the header's width x height is within
//!   [`ProbeLimits::max_pixels`], into the small working image of a [`blurhash::Shrinker`] as the bytes come
//!   in, one file per format: [`jpeg`] reads a 1/8-scale image from the DC coefficients and is done after a
//!   progressive JPEG's first scan; [`png`] inflates and unfilters row by row; [`gif`] decodes the first
//!   frame's rows. None of these holds more than a few hundred kilobytes, whatever the image's size. Only
//!   [`webp`], whose decoder has no row API, keeps the file and a whole frame: it asks for that memory
//!   first ([`Need::Memory`]), and is refused beyond [`ProbeLimits::max_webp_pixels`].
//! - Other image formats give their dimensions from the first [`header::HEADER_BYTES`] ([`header`],
//!   [`isobmff`]); anything else just its type.
//! - A recognised image whose pixels cannot be decoded safely (too many pixels, truncated, malformed, an
//!   unsupported variant) gives its MIME type and header dimensions with `blurhash: None`; only bytes in no
//!   recognised format are an error ([`Error::UnsupportedFormat`]).
//! - However the bytes are split into chunks, the answer is the same: every decoder keeps back what it cannot
//!   use yet rather than guessing (fuzzed by `fuzz/fuzz_targets/probe_chunks.rs`).
//!
//! Orientation: for JPEG the EXIF orientation is applied to both the dimensions and the BlurHash, so they
//! describe the picture as viewers (browsers, chat clients) display it. Other formats' EXIF is not read.
//! Transparent pixels are composited over white.

pub mod blurhash;
pub mod gif;
pub mod header;
pub mod isobmff;
pub mod jpeg;
pub mod png;
pub mod sniff;
pub mod webp;

use crate::error::Error;
pub use sniff::sniff;

/// Longest row, in bytes, the row decoders keep (a PNG row as stored, or expanded to 4 bytes a pixel; a GIF
/// row of RGBA): images with longer rows (more than 24,576 pixels across, fewer for 16-bit PNGs) get their
/// dimensions and no BlurHash. It bounds their memory.
pub const MAX_ROW_BYTES: usize = 96 << 10;

/// Decode memory a JPEG, PNG or GIF probe asks for: the most any of them holds (rows, tables, the
/// shrinker), whatever the image's size.
pub const STREAM_DECODE_BYTES: u64 = 1 << 20;

/// Largest piece of input handed to a format decoder at once: a decoder that keeps unused bytes back copies
/// at most this much.
const PIECE_BYTES: usize = 64 << 10;

/// The limits a probe runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeLimits {
    /// Largest width x height (from the header) whose pixels are decoded; larger images get no
    /// BlurHash. Decoding time is linear in this.
    pub max_pixels: u64,
    /// Largest WebP (width x height) whose pixels are decoded: its decoder holds a whole frame.
    pub max_webp_pixels: u64,
    /// Most decode memory, in bytes, one probe may ask for ([`Need::Memory`]): a WebP needing more gets
    /// no BlurHash.
    pub max_decode_memory: u64,
    /// BlurHash components across (1..=9).
    pub components_x: u32,
    /// BlurHash components down (1..=9).
    pub components_y: u32,
}

impl Default for ProbeLimits {
    /// 50 megapixels, WebP 4 megapixels, 64 MiB of decode memory, 4x3 components.
    fn default() -> Self {
        ProbeLimits {
            max_pixels: 50_000_000,
            max_webp_pixels: 4_000_000,
            max_decode_memory: 64 << 20,
            components_x: 4,
            components_y: 3,
        }
    }
}

impl ProbeLimits {
    /// Checks the component counts (1..=9 each) and that there is memory to decode in.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_decode_memory < STREAM_DECODE_BYTES {
            return Err(Error::bad_request(format!(
                "max_decode_memory must be at least {STREAM_DECODE_BYTES} bytes"
            )));
        }
        blurhash::check_components(self.components_x, self.components_y)
    }
}

/// What a probe found out about some media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// MIME type from the magic bytes, such as `image/jpeg`.
    pub mime: String,
    /// Width in pixels as displayed, when the header gives it.
    pub width: Option<u32>,
    /// Height in pixels as displayed, when the header gives it.
    pub height: Option<u32>,
    /// BlurHash with the requested components, when the pixels could be decoded within the limits.
    pub blurhash: Option<String>,
}

/// What a [`StreamProbe`] needs after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// More of the body.
    Bytes,
    /// This many bytes of decode memory before it goes on: answer with [`StreamProbe::grant`] before the
    /// next chunk (feeding it without an answer means no).
    Memory(u64),
    /// Nothing: the answer is complete, whatever follows. Stop downloading.
    Nothing,
}

pub(crate) fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn le16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn le24(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 3)?;
    Some(b[0] as u32 | (b[1] as u32) << 8 | (b[2] as u32) << 16)
}

pub(crate) fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn nonzero(dims: (u32, u32)) -> Option<(u32, u32)> {
    (dims.0 > 0 && dims.1 > 0).then_some(dims)
}

/// The decoder of the format being probed.
enum Format {
    /// Still collecting the first bytes to recognise the format.
    Sniffing,
    /// JPEG, PNG or GIF, waiting for its decode memory before its decoder starts.
    Waiting(&'static str),
    Jpeg(Box<jpeg::JpegStream>),
    Png(Box<png::PngStream>),
    Gif(Box<gif::GifStream>),
    Webp(Box<webp::WebpStream>),
    /// A format read for its dimensions only.
    Header(header::HeaderStream),
    /// A recognised format with nothing more to read.
    Plain,
    /// Not a format this prober knows.
    Unknown,
}

/// Probes media as its bytes arrive: see the [module documentation](self).
pub struct StreamProbe {
    limits: ProbeLimits,
    /// The first bytes: all of them until the format's decoder starts, then the first [`DIMS_BYTES`].
    head: Vec<u8>,
    /// What arrived after `head` while waiting for decode memory.
    held: Vec<u8>,
    mime: Option<&'static str>,
    format: Format,
    /// The decoder waits for an answer to [`Need::Memory`].
    asking: bool,
}

/// Bytes of the start kept for the dimensions of PNG, GIF and WebP headers.
const DIMS_BYTES: usize = 30;

impl StreamProbe {
    /// A probe under `limits`; [`Error::BadRequest`] for component counts outside 1..=9.
    pub fn new(limits: ProbeLimits) -> Result<StreamProbe, Error> {
        limits.validate()?;
        Ok(StreamProbe {
            limits,
            head: Vec::new(),
            held: Vec::new(),
            mime: None,
            format: Format::Sniffing,
            asking: false,
        })
    }

    /// The MIME type, once known from the first bytes.
    pub fn mime(&self) -> Option<&'static str> {
        self.mime
    }

    /// Takes the next chunk of the body, and says what the probe needs next.
    pub fn feed(&mut self, mut data: &[u8]) -> Need {
        if self.asking {
            self.grant(false);
        }
        while matches!(self.format, Format::Sniffing) && !data.is_empty() {
            // JPEG, PNG, GIF and WebP are known from 12 bytes; anything else waits for SNIFF_BYTES.
            let want = if self.head.len() < 12 {
                12 - self.head.len()
            } else {
                sniff::SNIFF_BYTES - self.head.len()
            };
            let (first, rest) = data.split_at(want.min(data.len()));
            self.head.extend_from_slice(first);
            data = rest;
            if let Some(mime) = sniff::decodable(&self.head) {
                self.recognised(Some(mime));
            } else if self.head.len() >= sniff::SNIFF_BYTES {
                self.recognised(sniff(&self.head));
            }
        }
        match self.format {
            Format::Sniffing => {}
            Format::Waiting(_) => self.held.extend_from_slice(data),
            _ => {
                for piece in data.chunks(PIECE_BYTES) {
                    self.feed_format(piece);
                }
            }
        }
        if let Format::Webp(w) = &self.format {
            // A WebP asks once its header is in, and keeps what arrives until the answer.
            self.asking = w.memory_needed().is_some();
        }
        self.need()
    }

    /// Answers [`Need::Memory`]: `true` when the memory was granted (for as long as the probe lives).
    /// Without it a JPEG gives its dimensions only, and PNG, GIF and WebP their header's.
    pub fn grant(&mut self, granted: bool) {
        self.asking = false;
        match self.format {
            Format::Webp(ref mut w) => w.grant(granted),
            Format::Waiting(mime) => {
                let l = &self.limits;
                self.format = match (mime, granted) {
                    ("image/jpeg", true) => Format::Jpeg(Box::new(jpeg::JpegStream::new(l.max_pixels))),
                    // No pixels, but the dimensions, which a JPEG may give after many segments.
                    ("image/jpeg", false) => Format::Jpeg(Box::new(jpeg::JpegStream::new(0))),
                    ("image/png", true) => Format::Png(Box::new(png::PngStream::new(l.max_pixels))),
                    ("image/gif", true) => Format::Gif(Box::new(gif::GifStream::new(l.max_pixels))),
                    _ => Format::Plain,
                };
                let (head, held) = (std::mem::take(&mut self.head), std::mem::take(&mut self.held));
                self.feed_format(&head);
                self.head = head;
                self.head.truncate(DIMS_BYTES);
                for piece in held.chunks(PIECE_BYTES) {
                    self.feed_format(piece);
                }
            }
            _ => {}
        }
    }

    /// Whether the answer is complete.
    pub fn is_done(&self) -> bool {
        self.need() == Need::Nothing
    }

    /// Ends the body: what the probe found. [`Error::UnsupportedFormat`] when the bytes are in no
    /// recognised format.
    pub fn finish(mut self) -> Result<MediaInfo, Error> {
        if matches!(self.format, Format::Sniffing) {
            self.recognised(sniff(&self.head));
        }
        if self.asking {
            self.grant(false);
        }
        let mime = self
            .mime
            .ok_or_else(|| Error::UnsupportedFormat("not a recognised media format".into()))?;
        let dims = self.dims();
        let working = match &mut self.format {
            Format::Jpeg(j) => {
                let orientation = j.header().map_or(1, |h| h.orientation);
                j.finish().ok().map(|w| w.oriented(orientation))
            }
            Format::Png(p) => p.finish().ok(),
            Format::Gif(g) => g.finish().ok(),
            Format::Webp(w) => w.finish().ok(),
            _ => None,
        };
        let blurhash =
            working.and_then(|w| w.encode(self.limits.components_x, self.limits.components_y).ok());
        Ok(MediaInfo {
            mime: mime.to_string(),
            width: dims.map(|d| d.0),
            height: dims.map(|d| d.1),
            blurhash,
        })
    }

    /// Width and height as displayed, once the header has arrived.
    pub fn dims(&self) -> Option<(u32, u32)> {
        match (&self.format, self.mime) {
            (Format::Jpeg(j), _) => {
                let h = j.header()?;
                let stored = nonzero((h.width, h.height))?;
                Some(if h.orientation >= 5 {
                    (stored.1, stored.0)
                } else {
                    stored
                })
            }
            (Format::Header(h), _) => h.dims(),
            (_, Some("image/png")) => png::dims(&self.head),
            (_, Some("image/gif")) => gif::dims(&self.head),
            (_, Some("image/webp")) => webp::dims(&self.head),
            _ => None,
        }
    }

    /// The format is known (or known to be none): starts its decoder, or asks for its memory first.
    fn recognised(&mut self, mime: Option<&'static str>) {
        self.mime = mime;
        let l = &self.limits;
        self.format = match mime {
            None => Format::Unknown,
            Some(m @ ("image/jpeg" | "image/png" | "image/gif")) => {
                self.asking = true;
                Format::Waiting(m)
            }
            Some("image/webp") => Format::Webp(Box::new(webp::WebpStream::new(
                l.max_pixels.min(l.max_webp_pixels),
                l.max_decode_memory,
            ))),
            Some(other) => match header::dims_reader(other) {
                Some(read) => Format::Header(header::HeaderStream::new(read)),
                None => Format::Plain,
            },
        };
        if !matches!(self.format, Format::Waiting(_)) {
            let head = std::mem::take(&mut self.head);
            self.feed_format(&head);
            self.head = head;
            self.head.truncate(DIMS_BYTES);
        }
    }

    /// Hands bytes to the format's decoder, keeping the first [`DIMS_BYTES`] for header dimensions.
    fn feed_format(&mut self, data: &[u8]) {
        if self.head.len() < DIMS_BYTES {
            let n = (DIMS_BYTES - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
        }
        match &mut self.format {
            Format::Jpeg(j) => j.feed(data),
            Format::Png(p) => p.feed(data),
            Format::Gif(g) => g.feed(data),
            Format::Webp(w) => w.feed(data),
            Format::Header(h) => h.feed(data),
            _ => {}
        }
    }

    /// What the probe needs next (as the last [`StreamProbe::feed`] said, after any [`StreamProbe::grant`]).
    pub fn need(&self) -> Need {
        if self.asking {
            match &self.format {
                Format::Waiting(_) => return Need::Memory(STREAM_DECODE_BYTES),
                Format::Webp(w) => {
                    if let Some(bytes) = w.memory_needed() {
                        return Need::Memory(bytes);
                    }
                }
                _ => {}
            }
        }
        let done = match &self.format {
            Format::Sniffing | Format::Waiting(_) => false,
            Format::Jpeg(j) => j.is_done(),
            Format::Png(p) => p.is_done(),
            Format::Gif(g) => g.is_done(),
            Format::Webp(w) => w.is_done(),
            Format::Header(h) => h.is_done(),
            Format::Plain | Format::Unknown => true,
        };
        if done {
            Need::Nothing
        } else {
            Need::Bytes
        }
    }
}

/// Probes `bytes` held whole in memory (decode memory granted up to [`ProbeLimits::max_decode_memory`]):
/// the answer a [`StreamProbe`] gives for the same bytes in any chunks. Errors: [`Error::BadRequest`] for
/// component counts outside 1..=9, [`Error::UnsupportedFormat`] when the bytes are in no recognised format.
pub fn probe(bytes: &[u8], limits: &ProbeLimits) -> Result<MediaInfo, Error> {
    let mut stream = StreamProbe::new(limits.clone())?;
    // In pieces, as a download arrives: a decoder waiting for its memory keeps what it is fed meanwhile.
    for piece in bytes.chunks(PIECE_BYTES) {
        let mut need = stream.feed(piece);
        while let Need::Memory(bytes) = need {
            stream.grant(bytes <= limits.max_decode_memory);
            need = stream.need();
        }
        if need == Need::Nothing {
            break;
        }
    }
    stream.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn data(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn limits() -> ProbeLimits {
        ProbeLimits::default()
    }

    /// `tests/data/probe_golden.txt`: `file mime width height blurhash-or-dash`.
    fn golden() -> Vec<(String, MediaInfo)> {
        let path = format!("{}/tests/data/probe_golden.txt", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let opt = |s: &str| (s != "-").then(|| s.to_string());
                let info = MediaInfo {
                    mime: f[1].to_string(),
                    width: opt(f[2]).map(|v| v.parse().unwrap()),
                    height: opt(f[3]).map(|v| v.parse().unwrap()),
                    blurhash: opt(f[4]),
                };
                (f[0].to_string(), info)
            })
            .collect()
    }

    #[test]
    fn golden_files_probe_as_recorded() {
        let cases = golden();
        assert!(cases.len() >= 10);
        for (file, expected) in cases {
            assert_eq!(expected, probe(&data(&file), &limits()).unwrap(), "{file}");
        }
    }

    /// Decodes a BlurHash's DC (average colour).
    fn dc_of(hash: &str) -> [u32; 3] {
        let chars = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
        let v = hash.as_bytes()[2..6].iter().fold(0u32, |acc, &c| {
            acc * 83 + chars.iter().position(|&x| x == c).unwrap() as u32
        });
        [v >> 16, (v >> 8) & 255, v & 255]
    }

    #[test]
    fn every_format_gives_the_same_picture() {
        // The same photo as JPEG, PNG (plain, interlaced), GIF and WebP (lossy, lossless): the average
        // colours agree closely.
        let reference = dc_of(&probe(&data("photo.png"), &limits()).unwrap().blurhash.unwrap());
        for name in [
            "photo_420.jpg",
            "photo_interlaced.png",
            "photo.gif",
            "photo_lossy.webp",
            "photo_lossless.webp",
        ] {
            let info = probe(&data(name), &limits()).unwrap();
            assert_eq!((Some(76), Some(52)), (info.width, info.height), "{name}");
            let dc = dc_of(
                info.blurhash
                    .as_deref()
                    .unwrap_or_else(|| panic!("{name}: no blurhash")),
            );
            for c in 0..3 {
                assert!(
                    dc[c].abs_diff(reference[c]) <= 6,
                    "{name}: {dc:?} vs {reference:?}"
                );
            }
        }
    }

    #[test]
    fn interlaced_png_matches_plain_png_exactly() {
        let plain = probe(&data("photo.png"), &limits()).unwrap();
        let interlaced = probe(&data("photo_interlaced.png"), &limits()).unwrap();
        assert_eq!(plain, interlaced);
    }

    #[test]
    fn exif_orientation_swaps_dimensions_and_rotates_the_blurhash() {
        let upright = probe(&data("photo_420.jpg"), &limits()).unwrap();
        let rotated = probe(&data("photo_exif6.jpg"), &limits()).unwrap();
        assert_eq!((Some(52), Some(76)), (rotated.width, rotated.height));
        assert_ne!(upright.blurhash, rotated.blurhash);
    }

    #[test]
    fn components_are_configurable_and_validated() {
        let mut l = limits();
        l.components_x = 9;
        l.components_y = 9;
        let hash = probe(&data("photo.png"), &l).unwrap().blurhash.unwrap();
        assert_eq!(6 + 2 * 80, hash.len());
        l.components_x = 10;
        assert_eq!("bad-request", probe(&data("photo.png"), &l).unwrap_err().code());
        l.components_x = 0;
        assert_eq!("bad-request", probe(&data("photo.png"), &l).unwrap_err().code());
    }

    #[test]
    fn too_many_pixels_gives_dimensions_without_blurhash() {
        let mut l = limits();
        l.max_pixels = 76 * 52 - 1;
        for name in [
            "photo_420.jpg",
            "photo_progressive.jpg",
            "photo.png",
            "photo.gif",
            "photo_lossy.webp",
        ] {
            let info = probe(&data(name), &l).unwrap();
            assert_eq!(
                (Some(76), Some(52), None),
                (info.width, info.height, info.blurhash),
                "{name}"
            );
        }
    }

    #[test]
    fn webp_beyond_its_pixel_limit_gives_no_blurhash() {
        let mut l = limits();
        l.max_webp_pixels = 76 * 52 - 1;
        let info = probe(&data("photo_lossy.webp"), &l).unwrap();
        assert_eq!((Some(76), None), (info.width, info.blurhash));
    }

    #[test]
    fn a_webp_asks_for_its_memory_and_without_it_gets_no_blurhash() {
        let bytes = data("photo_lossless.webp");
        let mut stream = StreamProbe::new(limits()).unwrap();
        let need = stream.feed(&bytes);
        assert_eq!(
            Need::Memory(webp::estimate(&bytes, bytes.len() as u64).unwrap()),
            need
        );
        stream.grant(false);
        assert_eq!(Need::Nothing, stream.need());
        let info = stream.finish().unwrap();
        assert_eq!(
            (Some(76), Some(52), None),
            (info.width, info.height, info.blurhash)
        );
        // Feeding on without an answer is a refusal too.
        let mut stream = StreamProbe::new(limits()).unwrap();
        let (start, rest) = bytes.split_at(100);
        assert!(matches!(stream.feed(start), Need::Memory(_)));
        assert_eq!(Need::Nothing, stream.feed(rest));
        assert_eq!(None, stream.finish().unwrap().blurhash);
    }

    #[test]
    fn jpeg_png_and_gif_ask_for_a_fixed_amount_of_memory() {
        for name in ["photo_420.jpg", "photo.png", "photo.gif"] {
            let bytes = data(name);
            let mut stream = StreamProbe::new(limits()).unwrap();
            assert_eq!(
                Need::Memory(STREAM_DECODE_BYTES),
                stream.feed(&bytes[..20]),
                "{name}"
            );
            stream.grant(false);
            assert_eq!(Need::Nothing, stream.feed(&bytes[20..]), "{name}");
            let info = stream.finish().unwrap();
            assert_eq!(
                (Some(76), Some(52), None),
                (info.width, info.height, info.blurhash),
                "{name}"
            );
        }
    }

    #[test]
    fn truncated_images_give_no_blurhash() {
        for name in [
            "photo_420.jpg",
            "photo_progressive.jpg",
            "photo.png",
            "photo.gif",
            "photo_lossy.webp",
        ] {
            let bytes = data(name);
            // A progressive JPEG cut after its DC scan still has all a BlurHash needs (see
            // jpeg::tests::progressive_decoding_stops_after_the_dc_scan): cut it inside that scan.
            let cut = match bytes.windows(2).position(|w| w == [0xFF, 0xDA]) {
                Some(sos) if name.contains("progressive") => sos + 30,
                _ => bytes.len() * 2 / 3,
            };
            let info = probe(&bytes[..cut], &limits()).unwrap();
            assert_eq!(None, info.blurhash, "{name}");
            assert_eq!(Some(76), info.width, "{name}");
            for len in (0..bytes.len()).step_by(61) {
                let _ = probe(&bytes[..len], &limits());
            }
        }
    }

    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        // bomb.png: a valid 100000x100000 single-colour PNG of a few KiB; bomb.gif: 65535x65535.
        for (name, side) in [("bomb.png", 100_000), ("bomb.gif", 65_535)] {
            let bytes = data(name);
            assert!(bytes.len() < 64 << 10);
            let info = probe(&bytes, &limits()).unwrap();
            assert_eq!(
                (Some(side), Some(side), None),
                (info.width, info.height, info.blurhash),
                "{name}"
            );
        }
        // Within max_pixels but with rows too long to keep: still no allocation beyond the bound.
        let mut l = limits();
        l.max_pixels = u64::MAX;
        let info = probe(&data("bomb.png"), &l).unwrap();
        assert_eq!(None, info.blurhash);
    }

    #[test]
    fn a_gif_frame_larger_than_its_screen_is_limited_too() {
        // 16x16 screen, one 65535x65535 frame (its LZW data cut short).
        let mut gif = b"GIF89a\x10\0\x10\0\x80\0\0\0\0\0\xff\xff\xff".to_vec();
        gif.extend_from_slice(b"\x2c\0\0\0\0\xff\xff\xff\xff\0\x02\x02\x4c\x01\0\x3b");
        let info = probe(&gif, &limits()).unwrap();
        assert_eq!(
            (Some(16), Some(16), None),
            (info.width, info.height, info.blurhash)
        );
        for max_pixels in [1000, limits().max_pixels] {
            let mut decoder = gif::GifStream::new(max_pixels);
            decoder.feed(&gif);
            assert!(matches!(decoder.finish(), Err(Error::TooLarge(_))));
        }
    }

    #[test]
    fn hostile_headers() {
        // A PNG header claiming 100000x100000 with nothing after it.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let mut l = limits();
        l.max_pixels = u64::MAX;
        let info = probe(&png, &l).unwrap();
        assert_eq!((Some(100_000), None), (info.width, info.blurhash));
        // Zero dimensions.
        let mut zero = png.clone();
        zero[16..20].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!((None, None), {
            let i = probe(&zero, &l).unwrap();
            (i.width, i.blurhash)
        });
        // A GIF with a 0x0 screen, a WebP with only its RIFF header, garbage after JPEG magic.
        for bytes in [
            &b"GIF89a\0\0\0\0\0\0\0"[..],
            b"RIFF\0\0\0\0WEBPVP8 ",
            b"\xFF\xD8\xFF\xE0garbage",
        ] {
            let info = probe(bytes, &l).unwrap();
            assert_eq!((None, None, None), (info.width, info.height, info.blurhash));
        }
    }

    #[test]
    fn unrecognised_bytes_are_unsupported() {
        for bytes in [
            &b""[..],
            b"hello world",
            b"\x89PNX\r\n\x1a\n",
            b"GIF90a",
            &[0u8; 64],
        ] {
            assert_eq!("unsupported-format", probe(bytes, &limits()).unwrap_err().code());
        }
    }

    #[test]
    fn sniffs_other_formats_and_their_header_dimensions() {
        let mut bmp = b"BM\0\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0".to_vec();
        bmp.extend_from_slice(&640i32.to_le_bytes());
        bmp.extend_from_slice(&(-480i32).to_le_bytes());
        let tiff =
            b"II*\0\x08\0\0\0\x02\0\x00\x01\x03\0\x01\0\0\0\x20\0\0\0\x01\x01\x04\0\x01\0\0\0\x10\0\0\0";
        let ico = b"\0\0\x01\0\x02\0\x10\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let qoi = b"qoif\0\0\x01\0\0\0\0\x80\x03\0";
        let jxl = [0xFF, 0x0A, 0b0000_0111, 0b0000_0000, 0, 0];
        type Case<'a> = (&'a [u8], &'a str, Option<(u32, u32)>);
        let cases: Vec<Case> = vec![
            (&bmp, "image/bmp", Some((640, 480))),
            (tiff, "image/tiff", Some((32, 16))),
            (ico, "image/vnd.microsoft.icon", Some((256, 256))),
            (qoi, "image/qoi", Some((256, 128))),
            (&jxl, "image/jxl", Some((8, 32))),
            (
                b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
                "image/svg+xml",
                None,
            ),
            (b"\0\0\0\x18ftypmp42\0\0\0\0isommp42", "video/mp4", None),
            (b"\0\0\0\x18ftypavif\0\0\0\0avifmif1", "image/avif", None),
            (b"\x1A\x45\xDF\xA3\x9f\x42\x82\x84webm", "video/webm", None),
            (b"OggS\0\x02", "audio/ogg", None),
            (b"%PDF-1.7", "application/pdf", None),
        ];
        for (bytes, mime, dims) in cases {
            let info = probe(bytes, &limits()).unwrap();
            assert_eq!(mime, info.mime);
            assert_eq!(dims, info.width.zip(info.height), "{mime}");
            assert_eq!(None, info.blurhash);
        }
    }

    #[test]
    fn avif_dimensions_come_from_ispe() {
        let info = probe(&data("tiny.avif"), &limits()).unwrap();
        assert_eq!(
            ("image/avif", Some(24), Some(16)),
            (info.mime.as_str(), info.width, info.height)
        );
    }

    /// Every fixture, probed whole: the answer every split must give.
    fn fixtures() -> Vec<(String, Vec<u8>)> {
        let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                let name = p.file_name().and_then(|e| e.to_str()).unwrap_or("");
                // The large WebPs of the memory test decode slowly unoptimised, and split like the small ones.
                matches!(ext, "jpg" | "png" | "gif" | "webp" | "avif") && !name.starts_with("mem_")
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    }

    /// Probes `bytes` fed in the given pieces, granting memory as [`probe`] does.
    fn probe_in_pieces(bytes: &[u8], cuts: &[usize], limits: &ProbeLimits) -> Result<MediaInfo, Error> {
        let mut stream = StreamProbe::new(limits.clone())?;
        let mut at = 0;
        for &cut in cuts.iter().chain([&bytes.len()]) {
            let cut = cut.clamp(at, bytes.len());
            let mut need = stream.feed(&bytes[at..cut]);
            while let Need::Memory(n) = need {
                stream.grant(n <= limits.max_decode_memory);
                need = stream.need();
            }
            at = cut;
        }
        stream.finish()
    }

    #[test]
    fn every_split_gives_the_answer_of_the_whole() {
        // Images of up to 1 MP decoded (bomb_small.png gives its dimensions only): this test decodes
        // each fixture hundreds of times.
        let limits = ProbeLimits {
            max_pixels: 1 << 20,
            ..limits()
        };
        for (name, bytes) in fixtures() {
            let whole = probe(&bytes, &limits);
            for size in [1, 7, 64, 1000, 4096] {
                let cuts: Vec<usize> = (size..bytes.len()).step_by(size).collect();
                assert_eq!(
                    whole,
                    probe_in_pieces(&bytes, &cuts, &limits),
                    "{name} in pieces of {size}"
                );
            }
            // Single cuts at some 40 places (each is a whole decode; a few fixtures take 0.1 s unoptimised).
            for cut in (0..bytes.len()).step_by((bytes.len() / 40).max(7)) {
                assert_eq!(
                    whole,
                    probe_in_pieces(&bytes, &[cut], &limits),
                    "{name} cut at {cut}"
                );
            }
        }
    }

    /// The first byte count after which the probe needs nothing more, fed one byte at a time.
    fn bytes_needed(bytes: &[u8]) -> Option<usize> {
        let mut stream = StreamProbe::new(limits()).unwrap();
        for (i, b) in bytes.iter().enumerate() {
            let mut need = stream.feed(std::slice::from_ref(b));
            while let Need::Memory(_) = need {
                stream.grant(true);
                need = stream.need();
            }
            if need == Need::Nothing {
                return Some(i + 1);
            }
        }
        None
    }

    /// The progressive fixture with `kib` KiB of comment segments after its DC scan, where a large photo
    /// has its AC scans; and where the DC scan ends.
    pub(crate) fn padded_progressive(kib: usize) -> (Vec<u8>, usize) {
        let bytes = data("photo_progressive.jpg");
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let second = jpeg_next_marker(&bytes, sos + 14);
        let mut padded = bytes[..second].to_vec();
        for _ in 0..kib {
            padded.extend_from_slice(&[0xFF, 0xFE, 0x04, 0x02]);
            padded.extend_from_slice(&[b'x'; 1024]);
        }
        padded.extend_from_slice(&bytes[second..]);
        (padded, second)
    }

    #[test]
    fn a_progressive_jpeg_is_done_once_its_dc_scan_has_arrived() {
        let bytes = data("photo_progressive.jpg");
        let (padded, second) = padded_progressive(100);
        let needed = bytes_needed(&padded).expect("done before the end");
        assert_eq!(
            second + 2,
            needed,
            "done as soon as the marker after the DC scan is in"
        );
        assert_eq!(probe(&bytes, &limits()), probe(&padded, &limits()));
        assert!(probe(&padded, &limits()).unwrap().blurhash.is_some());
    }

    /// Offset of the first marker (not a stuffed byte or RSTn) at or after `pos`.
    fn jpeg_next_marker(bytes: &[u8], pos: usize) -> usize {
        (pos..bytes.len() - 1)
            .find(|&i| bytes[i] == 0xFF && !matches!(bytes[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF))
            .unwrap()
    }

    #[test]
    fn header_dimensions_are_known_from_the_first_bytes() {
        // GIF's are in its first 10 bytes, but the format is only told from 12.
        for (name, known_after) in [("photo.png", 24), ("photo.gif", 12), ("photo_lossy.webp", 30)] {
            let bytes = data(name);
            let mut stream = StreamProbe::new(limits()).unwrap();
            stream.feed(&bytes[..known_after - 1]);
            assert_eq!(None, stream.dims(), "{name}");
            stream.feed(&bytes[known_after - 1..known_after]);
            assert_eq!(Some((76, 52)), stream.dims(), "{name}");
        }
        // A JPEG's come with its frame header, after its tables.
        let bytes = data("photo_420.jpg");
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let end = sof + 2 + u16::from_be_bytes([bytes[sof + 2], bytes[sof + 3]]) as usize;
        let mut stream = StreamProbe::new(limits()).unwrap();
        assert!(matches!(stream.feed(&bytes[..end - 1]), Need::Memory(_)));
        stream.grant(true);
        assert_eq!(None, stream.dims());
        stream.feed(&bytes[end - 1..end]);
        assert_eq!(Some((76, 52)), stream.dims());
    }

    #[test]
    fn other_formats_are_done_once_their_type_or_header_is_known() {
        let mut mp4 = b"\0\0\0\x18ftypmp42\0\0\0\0isommp42".to_vec();
        mp4.resize(5000, 0);
        assert_eq!(Some(sniff::SNIFF_BYTES), bytes_needed(&mp4));
        let mut qoi = b"qoif\0\0\x01\0\0\0\0\x80\x03\0".to_vec();
        qoi.resize(5000, 7);
        assert_eq!(Some(sniff::SNIFF_BYTES), bytes_needed(&qoi));
        // A PNG, by contrast, needs all its image data (not the end of the zlib stream, nor IEND).
        let png = data("photo.png");
        let needed = bytes_needed(&png).unwrap();
        assert!(
            (png.len() - 32..png.len() - 16).contains(&needed),
            "{needed} of {}",
            png.len()
        );
    }

    /// A pseudo-random image in any PNG colour type and depth, with a tRNS chunk when asked.
    fn encode_png(width: u32, height: u32, colour: u8, depth: u8, interlaced: bool, trns: bool) -> Vec<u8> {
        let color = match colour {
            0 => ::png::ColorType::Grayscale,
            2 => ::png::ColorType::Rgb,
            3 => ::png::ColorType::Indexed,
            4 => ::png::ColorType::GrayscaleAlpha,
            _ => ::png::ColorType::Rgba,
        };
        let bit_depth = match depth {
            1 => ::png::BitDepth::One,
            2 => ::png::BitDepth::Two,
            4 => ::png::BitDepth::Four,
            8 => ::png::BitDepth::Eight,
            _ => ::png::BitDepth::Sixteen,
        };
        let samples = match colour {
            2 => 3,
            4 => 2,
            6 => 4,
            _ => 1,
        };
        let row = (width as usize * samples * depth as usize).div_ceil(8);
        let mut seed = 0x2545_F491_u32.wrapping_mul(colour as u32 * 31 + depth as u32);
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        // Smooth gradients with a little noise, so that the filters have something to do.
        let mut pixels = Vec::with_capacity(row * height as usize);
        for y in 0..height as usize {
            for x in 0..row {
                pixels.push(((x * 5 + y * 3) as u32 + (next() & 15)) as u8);
            }
        }
        let mut out = Vec::new();
        let mut encoder = ::png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(bit_depth);
        if colour == 3 {
            let entries = (1usize << depth).min(200);
            let palette: Vec<u8> = (0..entries * 3).map(|i| (i * 37 % 256) as u8).collect();
            encoder.set_palette(palette);
            if trns {
                encoder.set_trns(vec![0u8, 128, 255, 7]);
            }
        } else if trns && colour == 0 {
            encoder.set_trns(vec![0, pixels[0] >> (8 - depth.min(8))]);
        } else if trns && colour == 2 {
            encoder.set_trns(vec![0, pixels[0], 0, pixels[1], 0, pixels[2]]);
        }
        if interlaced {
            encoder.set_compression(::png::Compression::Fast);
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&pixels).unwrap();
        writer.finish().unwrap();
        if interlaced {
            // The encoder does not interlace; re-encode through the reference decoder is not possible, so
            // flip the IHDR flag and write Adam7 passes ourselves.
            return interlace(&out, width, height, row, samples * depth as usize, &pixels);
        }
        out
    }

    /// Rewrites a non-interlaced PNG (whose raw rows are `pixels`) as an Adam7-interlaced one.
    fn interlace(png: &[u8], width: u32, height: u32, row: usize, bits: usize, pixels: &[u8]) -> Vec<u8> {
        let get = |x: usize, y: usize| -> u128 {
            // The `bits`-bit pixel at (x, y) as a big-endian number.
            let mut v = 0u128;
            for b in x * bits..(x + 1) * bits {
                let byte = pixels[y * row + b / 8];
                v = v << 1 | ((byte >> (7 - b % 8)) & 1) as u128;
            }
            v
        };
        let mut raw = Vec::new();
        for &(x0, y0, dx, dy) in png::PASSES_FOR_TESTS.iter() {
            let (pw, ph) = png::pass_size_for_tests(width, height, x0, y0, dx, dy);
            if pw == 0 || ph == 0 {
                continue;
            }
            for py in 0..ph as usize {
                raw.push(0u8); // filter: none
                let mut acc = 0u128;
                let mut n = 0;
                let mut line = Vec::new();
                for px in 0..pw as usize {
                    let v = get(x0 as usize + px * dx as usize, y0 as usize + py * dy as usize);
                    acc = acc << bits | v;
                    n += bits;
                    while n >= 8 {
                        line.push((acc >> (n - 8)) as u8);
                        n -= 8;
                    }
                }
                if n > 0 {
                    line.push((acc << (8 - n)) as u8);
                }
                raw.extend_from_slice(&line);
            }
        }
        // Keep every chunk but IDAT; write one IDAT of the interlaced data, and set the interlace flag.
        let mut out = png[..8].to_vec();
        let mut pos = 8;
        while pos + 8 <= png.len() {
            let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
            let kind = &png[pos + 4..pos + 8];
            let mut body = png[pos + 8..pos + 8 + len].to_vec();
            if kind == b"IHDR" {
                body[12] = 1;
            }
            if kind == b"IDAT" {
                if out.windows(4).any(|w| w == b"IDAT") {
                    pos += 12 + len;
                    continue;
                }
                body = fdeflate::compress_to_vec(&raw);
            }
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(&body);
            out.extend_from_slice(&[0; 4]); // CRCs are not checked
            pos += 12 + len;
        }
        out
    }

    /// What the `png` crate (the reference decoder) makes of a PNG: its rows, expanded and stripped to 8
    /// bits, through the same shrinker.
    fn reference_blurhash(bytes: &[u8]) -> String {
        let mut decoder = ::png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(::png::Transformations::EXPAND | ::png::Transformations::STRIP_16);
        decoder.ignore_checksums(true);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        let layout = match frame.color_type {
            ::png::ColorType::Grayscale => blurhash::Layout::Gray,
            ::png::ColorType::GrayscaleAlpha => blurhash::Layout::GrayAlpha,
            ::png::ColorType::Rgb => blurhash::Layout::Rgb,
            _ => blurhash::Layout::Rgba,
        };
        blurhash::encode(
            &buf[..frame.buffer_size()],
            frame.width,
            frame.height,
            layout,
            4,
            3,
        )
        .unwrap()
    }

    #[test]
    fn png_matches_the_reference_decoder_in_every_colour_type_and_depth() {
        let combos = [
            (0, 1),
            (0, 2),
            (0, 4),
            (0, 8),
            (0, 16),
            (2, 8),
            (2, 16),
            (3, 1),
            (3, 2),
            (3, 4),
            (3, 8),
            (4, 8),
            (4, 16),
            (6, 8),
            (6, 16),
        ];
        for (colour, depth) in combos {
            for trns in [false, true] {
                for interlaced in [false, true] {
                    let bytes = encode_png(37, 23, colour, depth, interlaced, trns);
                    let what = format!("colour {colour} depth {depth} tRNS {trns} interlaced {interlaced}");
                    let info = probe(&bytes, &limits()).unwrap();
                    assert_eq!((Some(37), Some(23)), (info.width, info.height), "{what}");
                    assert_eq!(Some(reference_blurhash(&bytes)), info.blurhash, "{what}");
                }
            }
        }
    }

    #[test]
    fn png_rows_wider_than_the_bound_give_dimensions_only() {
        let wide = encode_png(MAX_ROW_BYTES as u32 / 4 + 1, 2, 6, 8, false, false);
        let info = probe(&wide, &limits()).unwrap();
        assert_eq!(
            (Some(MAX_ROW_BYTES as u32 / 4 + 1), None),
            (info.width, info.blurhash)
        );
        let fits = encode_png(MAX_ROW_BYTES as u32 / 4, 2, 6, 8, false, false);
        assert!(probe(&fits, &limits()).unwrap().blurhash.is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = probe(&bytes, &limits());
        }

        #[test]
        fn arbitrary_bytes_after_magic_never_panic(magic in 0usize..8,
                                                   tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            let prefixes: [&[u8]; 8] = [b"\xFF\xD8\xFF", b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", b"GIF89a",
                b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8L", b"II*\0", b"\0\0\0\x18ftypavif", b"\xFF\x0A"];
            let mut bytes = prefixes[magic].to_vec();
            bytes.extend_from_slice(&tail);
            let _ = probe(&bytes, &limits());
        }

        #[test]
        fn random_splits_give_the_answer_of_the_whole(file in 0usize..8,
                                                      cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
            let names = ["photo.png", "photo_interlaced.png", "photo.gif", "photo_lossy.webp",
                         "photo_progressive_scans.jpg", "photo_restart.jpg", "photo_cmyk.jpg", "photo_exif6.jpg"];
            let bytes = data(names[file]);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort();
            prop_assert_eq!(probe(&bytes, &limits()), probe_in_pieces(&bytes, &cuts, &limits()));
        }

        #[test]
        fn mutated_real_files_never_panic(file in 0usize..6, at in any::<usize>(), value in any::<u8>(),
                                          cut in any::<usize>()) {
            let names = ["photo.png", "photo_interlaced.png", "photo.gif", "photo_lossy.webp",
                         "photo_lossless.webp", "photo_progressive.jpg"];
            let mut bytes = data(names[file]);
            let i = at % bytes.len();
            bytes[i] = value;
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = probe(&bytes, &limits());
        }
    }
}
