//! PNG, streamed: the dimensions from IHDR (the first chunk, in the first 33 bytes), then every row
//! inflated, unfiltered and added to the working image as the IDAT data arrives.
//!
//! Memory is the inflate window and a work area (`OUT_BYTES` together), two rows (the row being
//! unfiltered and the one above it, at most [`MAX_ROW_BYTES`] each), a row of expanded pixels when the
//! format needs one, and the [`Shrinker`]: a few hundred kilobytes at most, whatever the image's height.
//! Images whose rows are longer get their dimensions and no BlurHash.
//!
//! Pixels are read as Prosody's clients see them: palettes and bit depths below 8 expanded, 16-bit samples
//! reduced to their high byte, `tRNS` turned into alpha, and Adam7 interlacing undone (each pass's pixels
//! go to where they belong). Chunk CRCs and the zlib checksum are not checked: a damaged file gives a
//! picture or none, never a panic. Ancillary chunks are skipped as they arrive.

use super::blurhash::{Layout, Shrinker, Working};
use super::{be32, MAX_ROW_BYTES};
use crate::error::Error;

/// The inflate look-back window the zlib format allows, which must stay in the output buffer.
const LOOKBACK: usize = 32 << 10;

/// The inflate output buffer: the look-back window and as much again to inflate into.
const OUT_BYTES: usize = 2 * LOOKBACK;

/// Adam7 passes: first column, first row, column step, row step.
const PASSES: [(u32, u32, u32, u32); 7] = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
];

fn corrupt(what: &str) -> Error {
    Error::bad_request(format!("corrupt PNG: {what}"))
}

/// Width and height of a PNG from its first 24 bytes: IHDR must be the first chunk.
pub fn dims(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let (w, h) = (be32(bytes, 16)?, be32(bytes, 20)?);
    // The format caps both at 2^31 - 1.
    (w > 0 && h > 0 && w <= i32::MAX as u32 && h <= i32::MAX as u32).then_some((w, h))
}

/// The image header.
#[derive(Debug, Clone, Copy)]
struct Ihdr {
    width: u32,
    height: u32,
    depth: u8,
    colour: u8,
    interlaced: bool,
}

impl Ihdr {
    fn parse(p: &[u8]) -> Result<Ihdr, Error> {
        let (Some(width), Some(height), Some(&[depth, colour, compression, filter, interlace])) =
            (be32(p, 0), be32(p, 4), p.get(8..13))
        else {
            return Err(corrupt("short IHDR"));
        };
        let valid_depth = match colour {
            0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
            3 => matches!(depth, 1 | 2 | 4 | 8),
            2 | 4 | 6 => matches!(depth, 8 | 16),
            _ => false,
        };
        if !valid_depth || compression != 0 || filter != 0 || interlace > 1 {
            return Err(Error::UnsupportedFormat(format!(
                "PNG colour type {colour}, depth {depth}, methods {compression}/{filter}/{interlace}"
            )));
        }
        Ok(Ihdr {
            width,
            height,
            depth,
            colour,
            interlaced: interlace == 1,
        })
    }

    /// Samples per pixel.
    fn samples(&self) -> u32 {
        match self.colour {
            2 => 3,
            4 => 2,
            6 => 4,
            _ => 1,
        }
    }

    /// Bytes of a filtered row of `width` pixels, without its filter byte.
    fn row_bytes(&self, width: u32) -> u64 {
        (width as u64 * self.samples() as u64 * self.depth as u64).div_ceil(8)
    }

    /// Bytes per complete pixel, at least 1: how far back the filters look.
    fn filter_step(&self) -> usize {
        ((self.samples() * self.depth as u32) as usize).div_ceil(8).max(1)
    }
}

/// Where the chunk parser is.
enum ChunkState {
    /// In the 8-byte signature.
    Signature,
    /// Reading a chunk's length and type (collected in `head`).
    Header,
    /// In a chunk's data: its type and the bytes to go.
    Data([u8; 4], u32),
    /// In a chunk's CRC: bytes to go.
    Crc(u32),
}

/// A PNG decoded as its bytes arrive.
pub struct PngStream {
    max_pixels: u64,
    state: ChunkState,
    /// Bytes of the current chunk header, or of a small chunk kept whole (IHDR, PLTE, tRNS).
    head: Vec<u8>,
    ihdr: Option<Ihdr>,
    /// RGBA of each palette index (opaque black beyond the palette).
    palette: Option<Box<[[u8; 4]; 256]>>,
    palette_entries: usize,
    trns: Vec<u8>,
    rows: Option<Box<Rows>>,
    /// Set when done: the working image, or why there is none.
    outcome: Option<Result<Working, Error>>,
}

impl PngStream {
    /// A decoder that gives pixels only for images of at most `max_pixels` pixels.
    pub fn new(max_pixels: u64) -> PngStream {
        PngStream {
            max_pixels,
            state: ChunkState::Signature,
            head: Vec::new(),
            ihdr: None,
            palette: None,
            palette_entries: 0,
            trns: Vec::new(),
            rows: None,
            outcome: None,
        }
    }

    /// Whether more bytes can add nothing.
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// Takes the next bytes of the file.
    pub fn feed(&mut self, data: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        if let Err(e) = self.run(data) {
            self.fail(e);
        }
    }

    /// Ends the data: the working image, or why there is none.
    pub fn finish(&mut self) -> Result<Working, Error> {
        if self.outcome.is_none() {
            // The zlib stream may end without its checksum, or the last chunk be cut short: what counts is
            // whether every row arrived.
            self.end_of_image_data();
        }
        self.outcome
            .take()
            .unwrap_or_else(|| Err(corrupt("the data ends early")))
    }

    fn fail(&mut self, e: Error) {
        self.outcome = Some(Err(e));
        self.rows = None;
        self.head = Vec::new();
    }

    fn run(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() && self.outcome.is_none() {
            match self.state {
                ChunkState::Signature => {
                    let n = (8 - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.head.len() == 8 {
                        if self.head != b"\x89PNG\r\n\x1a\n" {
                            return Err(Error::UnsupportedFormat("not a PNG".into()));
                        }
                        self.head.clear();
                        self.state = ChunkState::Header;
                    }
                }
                ChunkState::Header => {
                    let n = (8 - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.head.len() == 8 {
                        let len = be32(&self.head, 0).ok_or_else(|| corrupt("chunk header"))?;
                        let mut kind = [0u8; 4];
                        kind.copy_from_slice(&self.head[4..8]);
                        self.head.clear();
                        self.chunk_start(kind, len)?;
                    }
                }
                ChunkState::Data(kind, left) => {
                    let n = (left as usize).min(data.len());
                    let (part, rest) = data.split_at(n);
                    data = rest;
                    let left = left - n as u32;
                    self.state = ChunkState::Data(kind, left);
                    self.chunk_data(&kind, part)?;
                    if left == 0 && self.outcome.is_none() {
                        self.chunk_end(&kind)?;
                        self.state = ChunkState::Crc(4);
                    }
                }
                ChunkState::Crc(left) => {
                    let n = (left as usize).min(data.len());
                    data = &data[n..];
                    self.state = match left - n as u32 {
                        0 => ChunkState::Header,
                        left => ChunkState::Crc(left),
                    };
                }
            }
        }
        Ok(())
    }

    fn chunk_start(&mut self, kind: [u8; 4], len: u32) -> Result<(), Error> {
        if len > i32::MAX as u32 {
            return Err(corrupt("chunk length"));
        }
        let first = self.ihdr.is_none();
        match &kind {
            b"IHDR" if first => {}
            _ if first => return Err(corrupt("IHDR is not the first chunk")),
            b"IHDR" => return Err(corrupt("second IHDR")),
            b"PLTE" | b"tRNS" if self.rows.is_some() => return Err(corrupt("palette after the image data")),
            b"IDAT" if self.rows.is_none() => self.rows = Some(Box::new(self.start_rows()?)),
            b"IDAT" => {}
            b"IEND" => return Err(corrupt("image data missing")),
            // Chunks after the image data end it (fdAT of an animation, or IEND).
            _ if self.rows.is_some() => {
                self.end_of_image_data();
                return Ok(());
            }
            _ => {}
        }
        if matches!(&kind, b"IHDR" | b"PLTE" | b"tRNS") && len > 1024 {
            return Err(corrupt("oversized header chunk"));
        }
        self.state = ChunkState::Data(kind, len);
        if len == 0 {
            self.chunk_end(&kind)?;
            self.state = ChunkState::Crc(4);
        }
        Ok(())
    }

    fn chunk_data(&mut self, kind: &[u8; 4], part: &[u8]) -> Result<(), Error> {
        match kind {
            b"IHDR" | b"PLTE" | b"tRNS" => self.head.extend_from_slice(part),
            b"IDAT" => {
                let rows = self
                    .rows
                    .as_mut()
                    .ok_or_else(|| Error::Internal("IDAT without rows".into()))?;
                if rows.inflate(part)? {
                    self.end_of_image_data();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn chunk_end(&mut self, kind: &[u8; 4]) -> Result<(), Error> {
        let payload = std::mem::take(&mut self.head);
        match kind {
            b"IHDR" => {
                let ihdr = Ihdr::parse(&payload)?;
                if ihdr.width == 0 || ihdr.height == 0 {
                    return Err(corrupt("zero dimension"));
                }
                if ihdr.width as u64 * ihdr.height as u64 > self.max_pixels {
                    return Err(Error::TooLarge("PNG has too many pixels".into()));
                }
                // Rows are kept whole, and expanded to 4 bytes a pixel at most.
                if ihdr.row_bytes(ihdr.width) > MAX_ROW_BYTES as u64
                    || ihdr.width as u64 * 4 > MAX_ROW_BYTES as u64
                {
                    return Err(Error::TooLarge("PNG rows are too long".into()));
                }
                self.ihdr = Some(ihdr);
            }
            b"PLTE" => {
                let mut palette = Box::new([[0, 0, 0, 255]; 256]);
                for (entry, rgb) in palette.iter_mut().zip(payload.chunks_exact(3)) {
                    entry[..3].copy_from_slice(rgb);
                }
                self.palette = Some(palette);
                self.palette_entries = payload.len() / 3;
            }
            b"tRNS" => self.trns = payload,
            _ => {}
        }
        Ok(())
    }

    fn start_rows(&mut self) -> Result<Rows, Error> {
        let ihdr = self.ihdr.ok_or_else(|| corrupt("image data before IHDR"))?;
        let mut palette = match (ihdr.colour, self.palette.take()) {
            (3, None) => return Err(corrupt("palette missing")),
            (3, Some(p)) => Some(p),
            _ => None,
        };
        let trns = std::mem::take(&mut self.trns);
        if let Some(palette) = palette.as_mut() {
            // A tRNS longer than the palette is ignored whole, as libpng and the png crate do.
            if trns.len() <= self.palette_entries {
                for (entry, &alpha) in palette.iter_mut().zip(&trns) {
                    entry[3] = alpha;
                }
            }
        }
        let key = match (ihdr.colour, trns.len()) {
            (0, 2) => Some(trns),
            (2, 6) => Some(trns),
            _ => None,
        };
        Rows::new(ihdr, palette, key)
    }

    /// The image data has ended (another chunk follows, the zlib stream is complete, or the file ends):
    /// done, with a picture if every row arrived.
    fn end_of_image_data(&mut self) {
        let outcome = match self.rows.take() {
            Some(rows) => rows.into_working(),
            None => Err(corrupt("no image data")),
        };
        self.outcome = Some(outcome);
        self.head = Vec::new();
    }
}

/// The image data being inflated, unfiltered and shrunk.
struct Rows {
    ihdr: Ihdr,
    inflater: fdeflate::Decompressor,
    /// Inflated bytes: the look-back window, then new output.
    out: Vec<u8>,
    filled: usize,
    /// The row being assembled (filter byte first) and the unfiltered row above it.
    cur: Vec<u8>,
    prev: Vec<u8>,
    /// Bytes of `cur` assembled so far.
    have: usize,
    /// Pixels of the current row in 8-bit `layout`, for formats that need converting.
    expanded: Vec<u8>,
    layout: Layout,
    palette: Option<Box<[[u8; 4]; 256]>>,
    /// The tRNS colour key of a grey or RGB image, as stored (16 bits a sample).
    key: Option<Vec<u8>>,
    /// Current pass (0 when not interlaced), its row width and its next row.
    pass: usize,
    pass_width: u32,
    y: u32,
    /// Inflated bytes still needed for the rows.
    needed: u64,
    shrinker: Shrinker,
}

impl Rows {
    fn new(ihdr: Ihdr, palette: Option<Box<[[u8; 4]; 256]>>, key: Option<Vec<u8>>) -> Result<Rows, Error> {
        let layout = match (ihdr.colour, &key, &palette) {
            (3, _, Some(p)) if p.iter().any(|e| e[3] != 255) => Layout::Rgba,
            (3, _, _) => Layout::Rgb,
            (0, None, _) => Layout::Gray,
            (0, Some(_), _) | (4, _, _) => Layout::GrayAlpha,
            (2, None, _) => Layout::Rgb,
            _ => Layout::Rgba,
        };
        let passes: Vec<(u32, u32)> = if ihdr.interlaced {
            PASSES
                .iter()
                .map(|&(x0, y0, dx, dy)| pass_size(ihdr.width, ihdr.height, x0, y0, dx, dy))
                .collect()
        } else {
            vec![(ihdr.width, ihdr.height)]
        };
        let needed = passes
            .iter()
            .filter(|(w, h)| *w > 0 && *h > 0)
            .map(|&(w, h)| (ihdr.row_bytes(w) + 1) * h as u64)
            .sum();
        let row = ihdr.row_bytes(ihdr.width) as usize + 1;
        let direct = ihdr.depth == 8 && key.is_none() && ihdr.colour != 3;
        let mut inflater = fdeflate::Decompressor::new();
        inflater.ignore_adler32();
        let mut rows = Rows {
            ihdr,
            inflater,
            out: vec![0; OUT_BYTES],
            filled: 0,
            cur: vec![0; row],
            prev: vec![0; row],
            have: 0,
            expanded: if direct {
                Vec::new()
            } else {
                vec![0; ihdr.width as usize * layout.channels()]
            },
            layout,
            palette,
            key,
            pass: 0,
            pass_width: 0,
            y: 0,
            needed,
            shrinker: Shrinker::new(ihdr.width, ihdr.height, 3)?,
        };
        rows.start_pass(0);
        Ok(rows)
    }

    /// Moves to pass `pass` (or past the last), skipping empty passes.
    fn start_pass(&mut self, mut pass: usize) {
        let ihdr = self.ihdr;
        loop {
            let (w, h) = if !ihdr.interlaced {
                if pass > 0 {
                    (0, 0)
                } else {
                    (ihdr.width, ihdr.height)
                }
            } else if let Some(&(x0, y0, dx, dy)) = PASSES.get(pass) {
                pass_size(ihdr.width, ihdr.height, x0, y0, dx, dy)
            } else {
                (0, 0)
            };
            let last = if ihdr.interlaced { PASSES.len() } else { 1 };
            if (w > 0 && h > 0) || pass >= last {
                self.pass = pass;
                self.pass_width = w;
                self.y = 0;
                self.prev.fill(0);
                return;
            }
            pass += 1;
        }
    }

    /// Inflates `data` (IDAT bytes) and handles the rows it completes. Returns whether the image data is
    /// over: every row in, and the zlib stream finished or unable to go on without writing past them.
    fn inflate(&mut self, mut data: &[u8]) -> Result<bool, Error> {
        loop {
            if self.filled == self.out.len() {
                // Keep the look-back window, make room after it.
                self.out.copy_within(self.filled - LOOKBACK..self.filled, 0);
                self.filled = LOOKBACK;
            }
            // Never inflate past the rows: whatever follows them (an error, trailing data) then has the
            // same effect however the bytes were split into chunks.
            let room = (self.out.len() - self.filled).min(usize::try_from(self.needed).unwrap_or(usize::MAX));
            let (used, made) = self
                .inflater
                .read(data, &mut self.out[..self.filled + room], self.filled, false)
                .map_err(|e| corrupt(&format!("{e:?}")))?;
            let start = self.filled;
            self.filled += made;
            self.needed -= made as u64;
            data = &data[used..];
            self.take_rows(start)?;
            if self.inflater.is_done() || (self.needed == 0 && used == 0) {
                return Ok(self.needed == 0 || self.inflater.is_done());
            }
            if used == 0 && made == 0 {
                return Ok(false);
            }
        }
    }

    /// Copies the inflated bytes from `from` into rows, and handles each completed row.
    fn take_rows(&mut self, mut from: usize) -> Result<(), Error> {
        while from < self.filled && self.pass_width > 0 {
            let row = self.ihdr.row_bytes(self.pass_width) as usize + 1;
            let n = (row - self.have).min(self.filled - from);
            self.cur[self.have..self.have + n].copy_from_slice(&self.out[from..from + n]);
            self.have += n;
            from += n;
            if self.have == row {
                self.have = 0;
                self.row_done(row)?;
            }
        }
        Ok(())
    }

    /// Unfilters the assembled row and adds it to the working image.
    fn row_done(&mut self, len: usize) -> Result<(), Error> {
        let step = self.ihdr.filter_step();
        let (filter, cur) = self.cur[..len]
            .split_first_mut()
            .ok_or_else(|| corrupt("empty row"))?;
        unfilter(*filter, step, &self.prev[1..len], cur)?;
        let (y, x0, dx) = if self.ihdr.interlaced {
            let (x0, y0, dx, dy) = PASSES[self.pass];
            (y0 + self.y * dy, x0, dx)
        } else {
            (self.y, 0, 1)
        };
        let pixels = self.pass_width as usize;
        let row: &[u8] = if self.expanded.is_empty() {
            cur
        } else {
            let out = &mut self.expanded[..pixels * self.layout.channels()];
            expand(
                &self.ihdr,
                self.palette.as_deref(),
                self.key.as_deref(),
                cur,
                out,
                self.layout,
            );
            out
        };
        if self.ihdr.interlaced {
            self.shrinker.add_strided_row(y, x0, dx, row, self.layout);
        } else {
            self.shrinker.add_row(y, row, self.layout);
        }
        std::mem::swap(&mut self.cur, &mut self.prev);
        self.y += 1;
        let height = if self.ihdr.interlaced {
            let (x0, y0, dx, dy) = PASSES[self.pass];
            pass_size(self.ihdr.width, self.ihdr.height, x0, y0, dx, dy).1
        } else {
            self.ihdr.height
        };
        if self.y == height {
            self.start_pass(self.pass + 1);
        }
        Ok(())
    }

    fn into_working(self) -> Result<Working, Error> {
        if self.needed > 0 {
            return Err(corrupt("image data ends early"));
        }
        self.shrinker
            .into_working()
            .ok_or_else(|| corrupt("rows missing"))
    }
}

/// Width and height of an Adam7 pass.
fn pass_size(width: u32, height: u32, x0: u32, y0: u32, dx: u32, dy: u32) -> (u32, u32) {
    let side = |len: u32, first: u32, step: u32| {
        if len > first {
            (len - first).div_ceil(step)
        } else {
            0
        }
    };
    (side(width, x0, dx), side(height, y0, dy))
}

/// Undoes a row's filter in place, given the unfiltered row above (`prev`, zeros for the first) and the
/// bytes per pixel (`step`).
fn unfilter(filter: u8, step: usize, prev: &[u8], cur: &mut [u8]) -> Result<(), Error> {
    match filter {
        0 => {}
        1 => {
            for i in step..cur.len() {
                cur[i] = cur[i].wrapping_add(cur[i - step]);
            }
        }
        2 => {
            for (c, &p) in cur.iter_mut().zip(prev) {
                *c = c.wrapping_add(p);
            }
        }
        3 => {
            for i in 0..cur.len() {
                let left = if i >= step { cur[i - step] } else { 0 };
                cur[i] = cur[i].wrapping_add(((left as u16 + prev[i] as u16) / 2) as u8);
            }
        }
        4 => match step {
            3 => paeth::<3>(prev, cur),
            4 => paeth::<4>(prev, cur),
            6 => paeth::<6>(prev, cur),
            8 => paeth::<8>(prev, cur),
            2 => paeth::<2>(prev, cur),
            _ => paeth::<1>(prev, cur),
        },
        _ => return Err(corrupt("unknown row filter")),
    }
    Ok(())
}

/// The Paeth filter for `N` bytes per pixel, a pixel at a time. The left and upper-left neighbours are kept
/// as `i16`, and the predictor is stb_image's branch-free formulation (equivalent to the specification's):
/// the loop-carried dependency is short, which makes this the fastest scalar form.
#[inline(always)]
fn paeth<const N: usize>(prev: &[u8], cur: &mut [u8]) {
    let mut a = [0i16; N]; // left
    let mut c = [0i16; N]; // up-left
    for (px, up) in cur.chunks_exact_mut(N).zip(prev.chunks_exact(N)) {
        for k in 0..N {
            let b = up[k] as i16;
            let value = px[k].wrapping_add(predict(a[k], b, c[k]));
            px[k] = value;
            a[k] = value as i16;
            c[k] = b;
        }
    }
}

/// The Paeth predictor of left `a`, up `b` and up-left `c`.
#[inline(always)]
fn predict(a: i16, b: i16, c: i16) -> u8 {
    let threshold = c * 3 - (a + b);
    let (lo, hi) = (a.min(b), a.max(b));
    let t0 = if hi <= threshold { lo } else { c };
    let t1 = if threshold <= lo { hi } else { t0 };
    t1 as u8
}

/// Converts one unfiltered row to 8-bit pixels in `layout`: palettes looked up, low bit depths scaled,
/// 16-bit samples reduced to their high byte, a tRNS colour key turned into alpha.
fn expand(
    ihdr: &Ihdr,
    palette: Option<&[[u8; 4]; 256]>,
    key: Option<&[u8]>,
    row: &[u8],
    out: &mut [u8],
    layout: Layout,
) {
    let depth = ihdr.depth as usize;
    let samples = ihdr.samples() as usize;
    let channels = layout.channels();
    // The sample at index `i` of the row, at its own depth (8 or 16 bits: as stored).
    let sample = |i: usize| -> u16 {
        match depth {
            16 => u16::from_be_bytes([row[2 * i], row[2 * i + 1]]),
            8 => row[i] as u16,
            d => {
                let bit = i * d;
                ((row[bit / 8] >> (8 - d - bit % 8)) & ((1u8 << d) - 1)) as u16
            }
        }
    };
    let to_8bit = |v: u16| -> u8 {
        match depth {
            16 => (v >> 8) as u8,
            8 => v as u8,
            d => (v * (255 / ((1u16 << d) - 1))) as u8,
        }
    };
    let key_sample = |k: usize| -> Option<u16> {
        let k = key?.get(2 * k..2 * k + 2)?;
        Some(u16::from_be_bytes([k[0], k[1]]))
    };
    for (x, px) in out.chunks_exact_mut(channels).enumerate() {
        if let Some(palette) = palette {
            let entry = palette[sample(x) as usize & 255];
            px.copy_from_slice(&entry[..channels]);
            continue;
        }
        let mut transparent = key.is_some();
        for (s, out) in px.iter_mut().take(samples).enumerate() {
            let v = sample(x * samples + s);
            *out = to_8bit(v);
            transparent &= key_sample(s) == Some(v);
        }
        if channels > samples {
            px[samples] = if transparent { 0 } else { 255 };
        }
    }
}

#[cfg(test)]
pub(super) const PASSES_FOR_TESTS: [(u32, u32, u32, u32); 7] = PASSES;

#[cfg(test)]
pub(super) fn pass_size_for_tests(width: u32, height: u32, x0: u32, y0: u32, dx: u32, dy: u32) -> (u32, u32) {
    pass_size(width, height, x0, y0, dx, dy)
}
