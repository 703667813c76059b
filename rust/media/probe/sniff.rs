//! Recognising a format by its magic bytes, never by a file name or a `Content-Type`.

/// Bytes [`sniff`] looks at, at most: an SVG root element may follow an XML declaration, comments or a
/// doctype within the first kilobyte.
pub const SNIFF_BYTES: usize = 1024;

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

/// The four formats whose pixels are decoded, known from their first 12 bytes (and from fewer bytes
/// nothing can be said): the prober starts decoding these at once instead of waiting for [`SNIFF_BYTES`].
pub fn decodable(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 12 {
        return None;
    }
    sniff(bytes).filter(|mime| matches!(*mime, "image/jpeg" | "image/png" | "image/gif" | "image/webp"))
}
