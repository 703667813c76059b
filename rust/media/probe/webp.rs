//! WebP: the dimensions from the first 30 bytes, then the whole file kept and decoded by `image-webp` once
//! it has arrived, since that decoder has no row API: it holds a whole frame.
//!
//! That makes WebP the one format whose memory grows with the image. Before keeping anything beyond its
//! header, the decoder asks for [`WebpStream::memory_needed`] bytes (the file, the frame and the decoder's
//! scratch buffers, measured by kind of file: see [`estimate`]); the caller grants them from the decode
//! budget that all probes share, or refuses, and then there is no BlurHash. WebPs of more than the WebP
//! pixel limit are not decoded at all.

use super::blurhash::{Layout, Shrinker, Working};
use super::{le16, le24, le32};
use crate::error::Error;
use std::io::Cursor;

/// Bytes kept before the decoder knows the image's size (the header is in the first 30).
const HEADER_BYTES: usize = 64;

fn corrupt(what: &str) -> Error {
    Error::bad_request(format!("corrupt WebP: {what}"))
}

/// The canvas size of VP8X, or the frame header of a simple lossy (VP8) or lossless (VP8L) file.
pub fn dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let nonzero = |(w, h): (u32, u32)| (w > 0 && h > 0).then_some((w, h));
    match bytes.get(12..16)? {
        b"VP8X" => nonzero((le24(bytes, 24)? + 1, le24(bytes, 27)? + 1)),
        b"VP8 " => {
            if bytes.get(23..26)? != b"\x9d\x01\x2a" {
                return None;
            }
            nonzero((
                (le16(bytes, 26)? & 0x3FFF) as u32,
                (le16(bytes, 28)? & 0x3FFF) as u32,
            ))
        }
        b"VP8L" => {
            if *bytes.get(20)? != 0x2F {
                return None;
            }
            let bits = le32(bytes, 21)?;
            Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        _ => None,
    }
}

/// Bytes a pixel `image-webp` 0.2 allocates at its peak, by kind of file, measured with a counting allocator
/// (the `media` bench's heap peak, and `rust/tests/memory.rs`) on 1.5 to 6 MP files, with 3 to 15 % to
/// spare: a simple lossy file 4.7 (its YUV frame and the RGB output); a simple lossless one 7.8 (an RGBA
/// frame, then the RGB output); a VP8X file with an alpha channel 10.5 (the frame, the decoded alpha and the
/// RGBA output); an animation up to 14.3 (the canvas, a frame and its scratch, and a copy of its frame data).
const PER_PIXEL_LOSSY: u64 = 5;
const PER_PIXEL_LOSSLESS: u64 = 9;
const PER_PIXEL_ALPHA: u64 = 12;
const PER_PIXEL_ANIMATED: u64 = 16;

/// The decoder's tables, the shrinker and allocator slack.
const FIXED_BYTES: u64 = 512 << 10;

/// The most memory decoding a WebP of `file_bytes` bytes whose first 30 bytes are `head` takes, or `None`
/// before the header has arrived: the file itself (twice for an animation, whose frame data is copied),
/// and per pixel what its kind needs (`PER_PIXEL_LOSSY` and the others, below).
pub fn estimate(head: &[u8], file_bytes: u64) -> Option<u64> {
    let (width, height) = dims(head)?;
    let pixels = width as u64 * height as u64;
    let (per_pixel, copies) = match head.get(12..16)? {
        b"VP8 " => (PER_PIXEL_LOSSY, 1),
        b"VP8L" => (PER_PIXEL_LOSSLESS, 1),
        _ => {
            // VP8X: its flags say whether it is animated or has alpha; its image may be lossless either way.
            let flags = *head.get(20)?;
            if flags & 0x02 != 0 {
                (PER_PIXEL_ANIMATED, 2)
            } else if flags & 0x10 != 0 {
                (PER_PIXEL_ALPHA, 1)
            } else {
                (PER_PIXEL_LOSSLESS, 1)
            }
        }
    };
    Some(copies * file_bytes + pixels * per_pixel + FIXED_BYTES)
}

/// A WebP kept as it arrives and decoded once complete.
pub struct WebpStream {
    max_pixels: u64,
    max_memory: u64,
    data: Vec<u8>,
    /// Bytes of the whole file, from the RIFF header.
    file_bytes: Option<u64>,
    /// `None` until the caller answers [`WebpStream::memory_needed`].
    granted: Option<bool>,
    outcome: Option<Result<Working, Error>>,
}

impl WebpStream {
    /// A decoder for WebPs of at most `max_pixels` pixels that may take at most `max_memory` bytes.
    pub fn new(max_pixels: u64, max_memory: u64) -> WebpStream {
        WebpStream {
            max_pixels,
            max_memory,
            data: Vec::new(),
            file_bytes: None,
            granted: None,
            outcome: None,
        }
    }

    /// Whether more bytes can add nothing.
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// The memory the decoder asks for before it keeps the file, once the header has arrived and while the
    /// caller has not answered ([`WebpStream::grant`]).
    pub fn memory_needed(&self) -> Option<u64> {
        if self.granted.is_some() || self.outcome.is_some() {
            return None;
        }
        estimate(&self.data, self.file_bytes?)
    }

    /// The caller's answer to [`WebpStream::memory_needed`]: without the memory, no BlurHash.
    pub fn grant(&mut self, granted: bool) {
        if self.granted.is_none() && self.outcome.is_none() {
            self.granted = Some(granted);
            if !granted {
                self.fail(Error::TooLarge("no decode memory for this WebP".into()));
            } else {
                self.check_complete();
            }
        }
    }

    /// Takes the next bytes of the file.
    pub fn feed(&mut self, data: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        if self.granted.is_none() {
            let room = HEADER_BYTES.saturating_sub(self.data.len());
            let (head, rest) = data.split_at(room.min(data.len()));
            self.data.extend_from_slice(head);
            if let Err(e) = self.read_header() {
                self.fail(e);
                return;
            }
            if self.granted.is_none() {
                // Until the answer, what arrives is kept (at most the chunk that brought the header).
                self.data.extend_from_slice(rest);
                return;
            }
            self.feed(rest);
            return;
        }
        let want = self
            .file_bytes
            .unwrap_or(0)
            .saturating_sub(self.data.len() as u64);
        let take = (want.min(data.len() as u64)) as usize;
        self.data.extend_from_slice(&data[..take]);
        self.check_complete();
    }

    /// Ends the data: the working image, or why there is none.
    pub fn finish(&mut self) -> Result<Working, Error> {
        if self.outcome.is_none() {
            if self.granted == Some(true) {
                self.decode();
            } else {
                self.fail(corrupt("the data ends early"));
            }
        }
        self.outcome
            .take()
            .unwrap_or_else(|| Err(corrupt("the data ends early")))
    }

    fn fail(&mut self, e: Error) {
        self.outcome = Some(Err(e));
        self.data = Vec::new();
    }

    /// Once the header is in: the file size, and a refusal of what cannot be decoded whatever memory there is.
    fn read_header(&mut self) -> Result<(), Error> {
        if self.file_bytes.is_none() {
            if let Some(size) = le32(&self.data, 4) {
                self.file_bytes = Some(size as u64 + 8);
            }
        }
        let (Some((w, h)), Some(needed)) = (dims(&self.data), self.memory_needed_for_header()) else {
            if self.data.len() >= HEADER_BYTES {
                return Err(corrupt("no frame header"));
            }
            return Ok(());
        };
        if w as u64 * h as u64 > self.max_pixels {
            return Err(Error::TooLarge("WebP has too many pixels".into()));
        }
        if needed > self.max_memory {
            return Err(Error::TooLarge(
                "WebP needs more memory than decoding may take".into(),
            ));
        }
        Ok(())
    }

    fn memory_needed_for_header(&self) -> Option<u64> {
        estimate(&self.data, self.file_bytes?)
    }

    fn check_complete(&mut self) {
        if self.granted == Some(true) && Some(self.data.len() as u64) >= self.file_bytes {
            self.data
                .truncate(usize::try_from(self.file_bytes.unwrap_or(0)).unwrap_or(usize::MAX));
            self.decode();
        }
    }

    fn decode(&mut self) {
        let data = std::mem::take(&mut self.data);
        let granted = self.memory_needed_for_header().unwrap_or(0);
        self.outcome = Some(decode(&data, self.max_pixels, granted));
    }
}

/// Decodes a whole WebP's (first) frame into one buffer, then shrinks it, within the `granted` memory.
fn decode(bytes: &[u8], max_pixels: u64, granted: u64) -> Result<Working, Error> {
    let decode_error = |e: image_webp::DecodingError| corrupt(&e.to_string());
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 || width as u64 * height as u64 > max_pixels {
        return Err(Error::TooLarge("WebP has too many pixels".into()));
    }
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| Error::TooLarge("WebP too large".into()))?;
    // The grant was made from the header's size, which the decoder must agree with.
    if Some((width, height)) != dims(bytes) {
        return Err(corrupt("the frame's size differs from the header's"));
    }
    decoder.set_memory_limit(usize::try_from(granted).unwrap_or(usize::MAX));
    let layout = if decoder.has_alpha() {
        Layout::Rgba
    } else {
        Layout::Rgb
    };
    let mut buf = vec![0u8; size];
    decoder.read_image(&mut buf).map_err(decode_error)?;
    let mut shrinker = Shrinker::new(width, height, 3)?;
    let row_len = width as usize * layout.channels();
    for (y, row) in buf.chunks_exact(row_len).enumerate() {
        shrinker.add_row(y as u32, row, layout);
    }
    shrinker.into_working().ok_or_else(|| corrupt("rows missing"))
}
