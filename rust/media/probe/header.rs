//! Formats read for their dimensions only (BMP, TIFF, ICO, QOI, JPEG XL, and AVIF/HEIC through
//! [`super::isobmff`]): their first bytes are kept, up to [`HEADER_BYTES`], until the dimensions can be
//! read from them.

use super::{be32, le16, le32, nonzero};

/// Most bytes kept while looking for the dimensions; a header that ends later gives none.
pub const HEADER_BYTES: usize = 64 << 10;

/// Reads a format's dimensions from the start of a file, or `None` while they are not there (yet).
pub type DimsFn = fn(&[u8]) -> Option<(u32, u32)>;

/// The dimensions reader of `mime`, for the formats read for their header only.
pub fn dims_reader(mime: &str) -> Option<DimsFn> {
    Some(match mime {
        "image/bmp" => bmp_dims,
        "image/tiff" => tiff_dims,
        "image/vnd.microsoft.icon" => ico_dims,
        "image/jxl" => jxl_dims,
        "image/qoi" => qoi_dims,
        "image/avif" | "image/heic" => super::isobmff::image_dims,
        _ => return None,
    })
}

/// Keeps the first bytes of a file until `read` finds its dimensions in them or [`HEADER_BYTES`] have
/// arrived.
pub struct HeaderStream {
    read: DimsFn,
    head: Vec<u8>,
    dims: Option<(u32, u32)>,
    done: bool,
}

impl HeaderStream {
    /// A reader of a file whose dimensions `read` finds.
    pub fn new(read: DimsFn) -> HeaderStream {
        HeaderStream {
            read,
            head: Vec::new(),
            dims: None,
            done: false,
        }
    }

    /// Takes the next bytes of the file.
    pub fn feed(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        let room = HEADER_BYTES - self.head.len();
        self.head
            .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
        self.dims = (self.read)(&self.head);
        if self.dims.is_some() || self.head.len() >= HEADER_BYTES {
            self.done = true;
            self.head = Vec::new();
        }
    }

    /// Whether more bytes can tell nothing more.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The dimensions, once found.
    pub fn dims(&self) -> Option<(u32, u32)> {
        self.dims
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

/// ICO: the largest entry of the directory (a width or height byte of 0 means 256), once the directory
/// (of at most 256 entries) has arrived whole.
fn ico_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let count = (le16(bytes, 4)? as usize).min(256);
    let directory = bytes.get(6..6 + count * 16)?;
    let side = |b: u8| if b == 0 { 256 } else { b as u32 };
    directory
        .chunks_exact(16)
        .map(|e| (side(e[0]), side(e[1])))
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
