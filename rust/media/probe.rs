//! Media probing: bytes in memory to (MIME type, width, height, BlurHash), decoding only under explicit
//! limits.
//!
//! - [`sniff`] recognises the format by its magic bytes, never by a file name or a `Content-Type`.
//! - Dimensions always come from the header, never from a decode, so they are known even for images
//!   whose pixels are refused.
//! - Pixels are decoded only for JPEG, PNG, GIF and WebP, only when the header's width x height is within
//!   [`ProbeLimits::max_pixels`], and never into a full-size bitmap when it can be helped: JPEG is read
//!   at 1/8 scale from its DC coefficients ([`crate::media::jpeg`]), PNG and GIF are streamed row by row into a
//!   [`Shrinker`]; only WebP (whose decoder has no row API) needs a whole frame, refused beyond
//!   [`ProbeLimits::max_alloc`].
//! - A recognised image whose pixels cannot be decoded safely (too many pixels, truncated, malformed,
//!   an unsupported variant) gives its MIME type and header dimensions with `blurhash: None`; only bytes
//!   in no recognised format are an error ([`Error::UnsupportedFormat`]).
//!
//! Orientation: for JPEG the EXIF orientation is applied to both the dimensions and the BlurHash, so
//! they describe the picture as viewers (browsers, chat clients) display it. Other formats' EXIF is not
//! read. Transparent pixels are composited over white.

use crate::error::Error;
use crate::media::blurhash::{self, Layout, Shrinker, Working};
use crate::media::jpeg;
use std::io::Cursor;

/// The limits a probe runs under, passed in by the caller on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeLimits {
    /// Largest width x height (from the header) whose pixels are decoded; larger images get no
    /// BlurHash. Decoding time is linear in this.
    pub max_pixels: u64,
    /// Largest buffer, in bytes, a decoder may allocate (a WebP frame, PNG row buffers, GIF tables).
    pub max_alloc: u64,
    /// BlurHash components across (1..=9).
    pub components_x: u32,
    /// BlurHash components down (1..=9).
    pub components_y: u32,
}

impl Default for ProbeLimits {
    /// 50 megapixels, 64 MiB of decoder buffers, 4x3 components.
    fn default() -> Self {
        ProbeLimits {
            max_pixels: 50_000_000,
            max_alloc: 64 << 20,
            components_x: 4,
            components_y: 3,
        }
    }
}

impl ProbeLimits {
    /// Checks the component counts (1..=9 each).
    pub fn validate(&self) -> Result<(), Error> {
        blurhash::check_components(self.components_x, self.components_y)
    }

    fn allows(&self, width: u32, height: u32) -> bool {
        width > 0 && height > 0 && width as u64 * height as u64 <= self.max_pixels
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

/// MIME type of `bytes` from its magic bytes, or `None` for an unrecognised format.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| bytes.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"\xFF\xD8\xFF") {
        return Some("image/jpeg");
    }
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Some("image/gif");
    }
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return Some("image/webp");
    }
    if at(0, b"RIFF") && at(8, b"WAVE") {
        return Some("audio/wav");
    }
    if at(0, b"BM") && bytes.len() >= 26 && at(6, b"\0\0\0\0") {
        return Some("image/bmp");
    }
    if at(0, b"II*\0") || at(0, b"MM\0*") {
        return Some("image/tiff");
    }
    if at(0, b"\0\0\x01\0") && bytes.get(4..6).is_some_and(|n| n != b"\0\0") {
        return Some("image/vnd.microsoft.icon");
    }
    if at(0, b"\xFF\x0A") || at(0, b"\0\0\0\x0CJXL \r\n\x87\n") {
        return Some("image/jxl");
    }
    if at(0, b"qoif") {
        return Some("image/qoi");
    }
    if at(4, b"ftyp") {
        let brands = bytes.get(8..bytes.len().min(64)).unwrap_or_default();
        let has = |brand: &[u8]| brands.chunks(4).any(|b| b == brand);
        return Some(if has(b"avif") || has(b"avis") {
            "image/avif"
        } else if has(b"heic") || has(b"heix") || has(b"heim") || has(b"heis") || has(b"mif1") {
            "image/heic"
        } else if at(8, b"qt  ") {
            "video/quicktime"
        } else if at(8, b"M4A ") {
            "audio/mp4"
        } else if at(8, b"3gp") {
            "video/3gpp"
        } else {
            "video/mp4"
        });
    }
    if at(0, b"\x1A\x45\xDF\xA3") {
        let head = bytes.get(..bytes.len().min(64)).unwrap_or_default();
        let webm = head.windows(4).any(|w| w == b"webm");
        return Some(if webm { "video/webm" } else { "video/x-matroska" });
    }
    if at(0, b"OggS") {
        return Some("audio/ogg");
    }
    if at(0, b"fLaC") {
        return Some("audio/flac");
    }
    if at(0, b"ID3") || (bytes.len() >= 2 && at(0, b"\xFF") && bytes.get(1).is_some_and(|b| b & 0xE6 == 0xE2))
    {
        return Some("audio/mpeg");
    }
    if at(0, b"%PDF-") {
        return Some("application/pdf");
    }
    if is_svg(bytes) {
        return Some("image/svg+xml");
    }
    None
}

/// An `<svg` root element near the start, after an optional BOM, XML declaration, comments or doctype.
fn is_svg(bytes: &[u8]) -> bool {
    let head = bytes.get(..bytes.len().min(1024)).unwrap_or_default();
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let trimmed = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .and_then(|i| text.get(i..));
    match trimmed {
        Some(t) if t.starts_with(b"<svg") => true,
        Some(t) if t.starts_with(b"<?xml") || t.starts_with(b"<!--") || t.starts_with(b"<!DOCTYPE") => {
            t.windows(4).any(|w| w == b"<svg")
        }
        _ => false,
    }
}

/// Probes `bytes`: MIME type, header dimensions and, for JPEG, PNG, GIF and WebP within `limits`, a
/// BlurHash. Errors: [`Error::BadRequest`] for component counts outside 1..=9,
/// [`Error::UnsupportedFormat`] when the bytes are in no recognised format.
pub fn probe(bytes: &[u8], limits: &ProbeLimits) -> Result<MediaInfo, Error> {
    limits.validate()?;
    let mime =
        sniff(bytes).ok_or_else(|| Error::UnsupportedFormat("not a recognised media format".into()))?;
    let (dims, working) = match mime {
        "image/jpeg" => probe_jpeg(bytes, limits),
        "image/png" => {
            let dims = png_dims(bytes);
            (
                dims,
                dims.and_then(|(w, h)| limits.allows(w, h).then(|| decode_png(bytes, limits).ok())?),
            )
        }
        "image/gif" => {
            let dims = gif_dims(bytes);
            (
                dims,
                dims.and_then(|(w, h)| limits.allows(w, h).then(|| decode_gif(bytes, limits).ok())?),
            )
        }
        "image/webp" => {
            let dims = webp_dims(bytes);
            (
                dims,
                dims.and_then(|(w, h)| limits.allows(w, h).then(|| decode_webp(bytes, limits).ok())?),
            )
        }
        "image/bmp" => (bmp_dims(bytes), None),
        "image/tiff" => (tiff_dims(bytes), None),
        "image/vnd.microsoft.icon" => (ico_dims(bytes), None),
        "image/jxl" => (jxl_dims(bytes), None),
        "image/qoi" => (qoi_dims(bytes), None),
        "image/avif" | "image/heic" => (isobmff_image_dims(bytes), None),
        _ => (None, None),
    };
    let blurhash = working.and_then(|w| w.encode(limits.components_x, limits.components_y).ok());
    Ok(MediaInfo {
        mime: mime.to_string(),
        width: dims.map(|d| d.0),
        height: dims.map(|d| d.1),
        blurhash,
    })
}

/// Header dimensions as displayed, and the working image (oriented) when it could be decoded.
fn probe_jpeg(bytes: &[u8], limits: &ProbeLimits) -> (Option<(u32, u32)>, Option<Working>) {
    let Ok(header) = jpeg::read_header(bytes) else {
        return (None, None);
    };
    let transposed = header.orientation >= 5;
    let dims = (header.width > 0 && header.height > 0).then_some(if transposed {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    });
    if !header.is_decodable() || !limits.allows(header.width, header.height) {
        return (dims, None);
    }
    let working = jpeg::decode_dc(bytes, limits.max_pixels)
        .ok()
        .map(|w| w.oriented(header.orientation));
    (dims, working)
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le24(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 3)?;
    Some(b[0] as u32 | (b[1] as u32) << 8 | (b[2] as u32) << 16)
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn nonzero(dims: (u32, u32)) -> Option<(u32, u32)> {
    (dims.0 > 0 && dims.1 > 0).then_some(dims)
}

/// PNG: IHDR must be the first chunk.
fn png_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let (w, h) = (be32(bytes, 16)?, be32(bytes, 20)?);
    // The format caps both at 2^31 - 1.
    nonzero((w, h)).filter(|&(w, h)| w <= i32::MAX as u32 && h <= i32::MAX as u32)
}

/// GIF: the logical screen size.
fn gif_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    nonzero((le16(bytes, 6)? as u32, le16(bytes, 8)? as u32))
}

/// WebP: the canvas size of VP8X, or the frame header of a simple lossy (VP8) or lossless (VP8L) file.
fn webp_dims(bytes: &[u8]) -> Option<(u32, u32)> {
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

/// BMP: BITMAPINFOHEADER (or later) width and height; a negative height means top-down rows.
fn bmp_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let header_size = le32(bytes, 14)?;
    if header_size == 12 {
        return nonzero((le16(bytes, 18)? as u32, le16(bytes, 20)? as u32));
    }
    let w = le32(bytes, 18)? as i32;
    let h = le32(bytes, 22)? as i32;
    nonzero((w.checked_abs()? as u32, h.checked_abs()? as u32))
}

/// TIFF: ImageWidth (256) and ImageLength (257) of the first IFD.
fn tiff_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let le = bytes.get(0..2)? == b"II";
    let u16_at = |at: usize| -> Option<u32> {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        } as u32)
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    let (mut w, mut h) = (None, None);
    for i in 0..count.min(1024) {
        let entry = ifd.checked_add(2 + i * 12)?;
        let (tag, kind) = (u16_at(entry)?, u16_at(entry + 2)?);
        let value = match kind {
            3 => u16_at(entry + 8)?,
            4 => u32_at(entry + 8)?,
            _ => continue,
        };
        match tag {
            256 => w = Some(value),
            257 => h = Some(value),
            _ => {}
        }
    }
    nonzero((w?, h?))
}

/// ICO: the largest entry of the directory (a width or height byte of 0 means 256).
fn ico_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let count = le16(bytes, 4)? as usize;
    (0..count.min(256))
        .map_while(|i| {
            let e = bytes.get(6 + i * 16..8 + i * 16)?;
            let side = |b: u8| if b == 0 { 256 } else { b as u32 };
            Some((side(e[0]), side(e[1])))
        })
        .max_by_key(|&(w, h)| w * h)
}

/// QOI: big-endian width and height after the magic.
fn qoi_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    nonzero((be32(bytes, 4)?, be32(bytes, 8)?))
}

/// LSB-first bit reader for the JPEG XL size header.
struct LsbBits<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl LsbBits<'_> {
    fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..n {
            let byte = *self.bytes.get(self.bit / 8)?;
            v |= (((byte >> (self.bit % 8)) & 1) as u32) << i;
            self.bit += 1;
        }
        Some(v)
    }

    /// JPEG XL's `U32(1 + u(9), 1 + u(13), 1 + u(18), 1 + u(30))` size encoding.
    fn size(&mut self) -> Option<u32> {
        let bits = [9, 13, 18, 30][self.read(2)? as usize];
        Some(self.read(bits)? + 1)
    }
}

/// JPEG XL: the SizeHeader after the codestream signature (bare, or in the first `jxlc`/`jxlp` box).
fn jxl_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let codestream = if bytes.starts_with(b"\xFF\x0A") {
        bytes.get(2..)?
    } else {
        let mut pos = 0usize;
        loop {
            let size = be32(bytes, pos)? as usize;
            let kind = bytes.get(pos + 4..pos + 8)?;
            let body = pos + 8;
            if kind == b"jxlc" {
                break bytes.get(body + 2..)?;
            }
            if kind == b"jxlp" {
                break bytes.get(body + 6..)?;
            }
            if size < 8 {
                return None;
            }
            pos = pos.checked_add(size)?;
        }
    };
    let mut r = LsbBits {
        bytes: codestream,
        bit: 0,
    };
    let small = r.read(1)? == 1;
    let height = if small { (r.read(5)? + 1) * 8 } else { r.size()? };
    let ratio = r.read(3)?;
    let width = match ratio {
        0 if small => (r.read(5)? + 1) * 8,
        0 => r.size()?,
        _ => {
            let (num, den) = [(1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1)][ratio as usize - 1];
            (height as u64 * num / den) as u32
        }
    };
    nonzero((width, height))
}

/// AVIF/HEIC: the largest `ispe` (image spatial extents) property in `meta/iprp/ipco`; the primary
/// image of a grid is the largest.
fn isobmff_image_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    /// Children of a box body: (type, body).
    fn boxes(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut pos = 0usize;
        std::iter::from_fn(move || {
            let size = be32(data, pos)? as usize;
            let kind = data.get(pos + 4..pos + 8)?;
            let (body_start, end) = match size {
                0 => (pos + 8, data.len()),
                1 => {
                    let large = u64::from_be_bytes(data.get(pos + 8..pos + 16)?.try_into().ok()?);
                    (pos + 16, pos.checked_add(usize::try_from(large).ok()?)?)
                }
                s if s >= 8 => (pos + 8, pos.checked_add(s)?),
                _ => return None,
            };
            let body = data.get(body_start..end.min(data.len()))?;
            pos = end;
            Some((kind, body))
        })
    }
    fn find<'a>(data: &'a [u8], kind: &[u8]) -> Option<&'a [u8]> {
        boxes(data).find(|(k, _)| *k == kind).map(|(_, b)| b)
    }
    let meta = find(bytes, b"meta")?;
    let iprp = find(meta.get(4..)?, b"iprp")?; // meta is a full box: skip version and flags
    let ipco = find(iprp, b"ipco")?;
    boxes(ipco)
        .filter(|(k, _)| *k == b"ispe")
        .filter_map(|(_, b)| nonzero((be32(b, 4)?, be32(b, 8)?)))
        .max_by_key(|&(w, h)| w as u64 * h as u64)
}

fn decode_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("{what}: {e}"))
}

/// Streams a PNG's rows into a shrinker: memory is the decoder's row buffers and inflate window.
fn decode_png(bytes: &[u8], limits: &ProbeLimits) -> Result<Working, Error> {
    let max_alloc = usize::try_from(limits.max_alloc).unwrap_or(usize::MAX);
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: max_alloc });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let mut reader = decoder.read_info().map_err(|e| decode_error("PNG", e))?;
    let (width, height, interlaced) = {
        let info = reader.info();
        (info.width, info.height, info.interlaced)
    };
    if !limits.allows(width, height) {
        return Err(Error::TooLarge("PNG has too many pixels".into()));
    }
    let layout = match reader.output_color_type() {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => Layout::Gray,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => Layout::GrayAlpha,
        (png::ColorType::Rgb, png::BitDepth::Eight) => Layout::Rgb,
        (png::ColorType::Rgba, png::BitDepth::Eight) => Layout::Rgba,
        other => return Err(Error::bad_request(format!("PNG output {other:?}"))),
    };
    let mut shrinker = Shrinker::new(width, height, 3)?;
    if interlaced {
        // Adam7: rows arrive pass by pass; each pass is a sub-grid (x0, y0, dx, dy).
        const PASSES: [(u32, u32, u32, u32); 7] = [
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ];
        for (x0, y0, dx, dy) in PASSES {
            if x0 >= width || y0 >= height {
                continue;
            }
            let samples = (width - x0).div_ceil(dx) as usize;
            for y in (y0..height).step_by(dy as usize) {
                let row = reader.next_row().map_err(|e| decode_error("PNG", e))?;
                let data = row.ok_or_else(|| Error::bad_request("PNG ends early"))?.data();
                if data.len() != samples * layout.channels() {
                    return Err(Error::bad_request("PNG row of unexpected length"));
                }
                shrinker.add_strided_row(y, x0, dx, data, layout);
            }
        }
    } else {
        for y in 0..height {
            let row = reader.next_row().map_err(|e| decode_error("PNG", e))?;
            let data = row.ok_or_else(|| Error::bad_request("PNG ends early"))?.data();
            shrinker.add_row(y, data, layout);
        }
    }
    shrinker
        .into_working()
        .ok_or_else(|| Error::bad_request("PNG rows missing"))
}

/// Streams the first frame of a GIF row by row over its logical screen (outside the frame and in
/// transparent pixels: white).
fn decode_gif(bytes: &[u8], limits: &ProbeLimits) -> Result<Working, Error> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    options.set_memory_limit(match std::num::NonZeroU64::new(limits.max_alloc) {
        Some(n) => gif::MemoryLimit::Bytes(n),
        None => return Err(Error::TooLarge("no memory allowed for decoding".into())),
    });
    let mut decoder = options
        .read_info(Cursor::new(bytes))
        .map_err(|e| decode_error("GIF", e))?;
    let (sw, sh) = (decoder.width() as u32, decoder.height() as u32);
    if !limits.allows(sw, sh) {
        return Err(Error::TooLarge("GIF has too many pixels".into()));
    }
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder.next_frame_info().map_err(|e| decode_error("GIF", e))?;
    let frame = frame.ok_or_else(|| Error::bad_request("GIF has no frame"))?;
    let (left, top, fw, fh) = (
        frame.left as u32,
        frame.top as u32,
        frame.width as u32,
        frame.height as u32,
    );
    // The frame may be larger than the screen; its pixels are decoded all the same, so it is limited too.
    if !limits.allows(fw.max(1), fh.max(1)) {
        return Err(Error::TooLarge("GIF frame has too many pixels".into()));
    }
    let (interlaced, transparent) = (frame.interlaced, frame.transparent);
    let palette = frame
        .palette
        .clone()
        .or(global)
        .ok_or_else(|| Error::bad_request("GIF has no palette"))?;

    let mut shrinker = Shrinker::new(sw, sh, 3)?;
    let mut rgba = vec![0u8; sw as usize * 4]; // transparent row
    let mut covered = vec![false; sh as usize];
    let mut line = vec![0u8; fw as usize];
    let order = gif_row_order(fh, interlaced);
    for fy in order {
        if fw > 0
            && !decoder
                .fill_buffer(&mut line)
                .map_err(|e| decode_error("GIF", e))?
        {
            return Err(Error::bad_request("GIF frame ends early"));
        }
        let y = top + fy;
        if y >= sh {
            continue;
        }
        rgba.fill(0);
        for (i, &index) in line.iter().enumerate() {
            let x = left as usize + i;
            let (Some(px), Some(colour)) = (
                rgba.get_mut(x * 4..x * 4 + 4),
                palette.get(index as usize * 3..index as usize * 3 + 3),
            ) else {
                continue;
            };
            if transparent != Some(index) {
                px[..3].copy_from_slice(colour);
                px[3] = 255;
            }
        }
        shrinker.add_row(y, &rgba, Layout::Rgba);
        if let Some(c) = covered.get_mut(y as usize) {
            *c = true;
        }
    }
    rgba.fill(0);
    for (y, _) in covered.iter().enumerate().filter(|(_, &c)| !c) {
        shrinker.add_row(y as u32, &rgba, Layout::Rgba);
    }
    shrinker
        .into_working()
        .ok_or_else(|| Error::bad_request("GIF rows missing"))
}

/// Frame rows in the order a GIF stores them (four passes when interlaced).
fn gif_row_order(height: u32, interlaced: bool) -> Box<dyn Iterator<Item = u32>> {
    if !interlaced {
        return Box::new(0..height);
    }
    Box::new(
        (0..height)
            .step_by(8)
            .chain((4..height).step_by(8))
            .chain((2..height).step_by(4))
            .chain((1..height).step_by(2)),
    )
}

/// Decodes a WebP's (first) frame into one buffer, refused beyond `max_alloc`, then shrinks it.
fn decode_webp(bytes: &[u8], limits: &ProbeLimits) -> Result<Working, Error> {
    let mut decoder =
        image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(|e| decode_error("WebP", e))?;
    let (width, height) = decoder.dimensions();
    if !limits.allows(width, height) {
        return Err(Error::TooLarge("WebP has too many pixels".into()));
    }
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| Error::TooLarge("WebP too large".into()))?;
    if size as u64 > limits.max_alloc {
        return Err(Error::TooLarge("WebP frame exceeds the memory limit".into()));
    }
    decoder.set_memory_limit(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    let layout = if decoder.has_alpha() {
        Layout::Rgba
    } else {
        Layout::Rgb
    };
    let mut buf = vec![0u8; size];
    decoder
        .read_image(&mut buf)
        .map_err(|e| decode_error("WebP", e))?;
    let mut shrinker = Shrinker::new(width, height, 3)?;
    let row_len = width as usize * layout.channels();
    for (y, row) in buf.chunks_exact(row_len).enumerate() {
        shrinker.add_row(y as u32, row, layout);
    }
    shrinker
        .into_working()
        .ok_or_else(|| Error::bad_request("WebP rows missing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(name: &str) -> Vec<u8> {
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
    fn webp_beyond_the_memory_limit_gives_no_blurhash() {
        let mut l = limits();
        l.max_alloc = 76 * 52 * 3 - 1;
        let info = probe(&data("photo_lossy.webp"), &l).unwrap();
        assert_eq!((Some(76), None), (info.width, info.blurhash));
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
        // Within max_pixels but over max_alloc for row buffers: still no allocation beyond the limit.
        let mut l = limits();
        l.max_pixels = u64::MAX;
        l.max_alloc = 1 << 20;
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
        let mut small = limits();
        small.max_pixels = 1000;
        assert!(matches!(decode_gif(&gif, &small), Err(Error::TooLarge(_))));
        assert!(matches!(decode_gif(&gif, &limits()), Err(Error::TooLarge(_))));
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
