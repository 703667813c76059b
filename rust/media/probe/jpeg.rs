//! JPEG, streamed: the header's dimensions as soon as the frame header arrives, and a 1/8-scale image
//! (one pixel per 8x8 block) from the DC coefficients alone, which is all a BlurHash needs, decoded as the
//! entropy-coded data arrives.
//!
//! The DC coefficient of a block is eight times the mean of its 64 samples, so the DC coefficients are an
//! exact box-filtered 1/8-scale image, with no inverse DCT. Only what that image needs is read:
//! - sequential (baseline and extended Huffman) scans: every block's DC is Huffman-decoded and its AC
//!   symbols are skipped (their lengths are read from the lookup table, their values never built);
//! - progressive scans: only the first DC scan of each component is decoded (successive approximation
//!   `Al > 0` is undone by shifting; the refinement bits are below what a BlurHash can show), and the
//!   decoder is done as soon as every component has its DC, normally after the first scan, a few percent of
//!   the file: the caller stops downloading there. AC scans are skipped unparsed.
//!
//! [`JpegStream`] takes the bytes in chunks of any size. It keeps only what it cannot use yet: a marker
//! segment it needs whole (at most 64 KiB: tables, frame and scan headers, EXIF), or the last
//! [`SCAN_MARGIN`] bytes of entropy-coded data (an MCU is never decoded unless the bytes it could need have
//! arrived, or the marker that ends the scan has, so a chunk boundary never changes a result). Segments it does not need are skipped as they
//! arrive. Samples go straight into a [`Shrinker`], one plane per component, so memory is a few hundred
//! kilobytes whatever the image size. Chroma is upsampled at block level (a chroma block counts for every
//! luma block it covers) and colour conversion (YCbCr, RGB, grey, Adobe CMYK/YCCK) is done on the averaged
//! working image. Restart intervals (DRI/RSTn), 4:4:4, 4:2:2, 4:2:0 and any integer sampling ratios are
//! handled. Arithmetic coding, lossless, hierarchical and 12-bit JPEGs give dimensions but no pixels.
//!
//! Truncated or corrupt entropy data is an error (no BlurHash), never a panic: the bit reader pads with
//! zeros past the data and the decoder reports any block that used padding.

use crate::error::Error;
use crate::media::probe::blurhash::{Shrinker, Working};

/// What the markers before the first scan say about a JPEG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Width in pixels as stored (before EXIF orientation).
    pub width: u32,
    /// Height in pixels as stored; 0 when it is only given later by a DNL marker.
    pub height: u32,
    /// Number of colour components (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK).
    pub components: u8,
    /// Sample precision in bits (8 for nearly every JPEG).
    pub precision: u8,
    /// The SOFn marker's `n`: 0/1 sequential, 2 progressive, 3 lossless, 5..=7 hierarchical, 9.. arithmetic.
    pub process: u8,
    /// EXIF orientation (1..=8), 1 when absent or when the EXIF segment follows the frame header.
    pub orientation: u8,
}

impl Header {
    /// Whether [`JpegStream`] can decode this process: 8-bit Huffman sequential or progressive.
    pub fn is_decodable(&self) -> bool {
        self.precision == 8 && matches!(self.process, 0..=2) && self.width > 0 && self.height > 0
    }
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;
const DHT: u8 = 0xC4;
const DRI: u8 = 0xDD;
const APP1: u8 = 0xE1;
const APP14: u8 = 0xEE;

/// Entropy-coded bytes that must have arrived before an MCU is decoded (unless the data has ended): more
/// than the most one MCU can take (10 blocks of at most 64 codes of 16 + 11 bits, every byte stuffed, is
/// under 4.4 KiB) plus the bit reader's look-ahead.
pub const SCAN_MARGIN: usize = 8 << 10;

fn corrupt(what: &str) -> Error {
    Error::bad_request(format!("corrupt JPEG: {what}"))
}

/// Big-endian u16 at `at`, if present.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Offset of the next marker (other than RSTn and stuffed zeros) at or after `pos`: the end of an
/// entropy-coded segment.
fn next_marker(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let rel = bytes.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        let at = pos + rel;
        match bytes.get(at + 1) {
            Some(0x00) | Some(0xD0..=0xD7) => pos = at + 2,
            Some(0xFF) => pos = at + 1,
            Some(_) => return Some(at),
            None => return None,
        }
    }
}

/// Orientation tag (0x0112) of an EXIF APP1 payload, if present and valid.
fn exif_orientation(payload: &[u8]) -> Option<u8> {
    let tiff = payload.strip_prefix(b"Exif\0\0")?;
    let le = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = [*tiff.get(at)?, *tiff.get(at + 1)?];
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = [
            *tiff.get(at)?,
            *tiff.get(at + 1)?,
            *tiff.get(at + 2)?,
            *tiff.get(at + 3)?,
        ];
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    for i in 0..count.min(512) {
        let entry = ifd.checked_add(2 + i * 12)?;
        if u16_at(entry)? == 0x0112 {
            let value = u16_at(entry + 8)?;
            return (1..=8).contains(&value).then_some(value as u8);
        }
    }
    None
}

/// One component of the frame header.
#[derive(Debug, Clone, Copy)]
struct Component {
    id: u8,
    h: u32,
    v: u32,
    tq: usize,
}

/// The frame header (SOFn).
#[derive(Debug, Clone)]
struct Frame {
    precision: u8,
    width: u32,
    height: u32,
    components: Vec<Component>,
}

impl Frame {
    fn parse(p: &[u8]) -> Result<Frame, Error> {
        let precision = *p.first().ok_or_else(|| corrupt("short frame header"))?;
        let height = be16(p, 1).ok_or_else(|| corrupt("short frame header"))? as u32;
        let width = be16(p, 3).ok_or_else(|| corrupt("short frame header"))? as u32;
        let n = *p.get(5).ok_or_else(|| corrupt("short frame header"))? as usize;
        if n == 0 || n > 4 {
            return Err(corrupt("component count"));
        }
        let mut components = Vec::with_capacity(n);
        for i in 0..n {
            let c = p
                .get(6 + i * 3..9 + i * 3)
                .ok_or_else(|| corrupt("short frame header"))?;
            let (h, v) = ((c[1] >> 4) as u32, (c[1] & 15) as u32);
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                return Err(corrupt("sampling factors"));
            }
            components.push(Component {
                id: c[0],
                h,
                v,
                tq: c[2] as usize,
            });
        }
        Ok(Frame {
            precision,
            width,
            height,
            components,
        })
    }
}

/// Bits of code looked up at once; longer codes take the slow path.
const LOOKUP_BITS: u32 = 9;

/// A Huffman table definition as a DHT segment gives it: code counts per length and the symbols.
#[derive(Clone)]
struct HuffSpec {
    counts: [u8; 16],
    values: Vec<u8>,
}

/// A Huffman table: a direct lookup for codes up to [`LOOKUP_BITS`] long, canonical-code limits for the
/// rest.
#[derive(Clone)]
struct Huffman {
    /// Indexed by the next `LOOKUP_BITS` bits: `len << 8 | symbol`, or 0 for a longer code.
    lookup: Box<[u16; 1 << LOOKUP_BITS]>,
    /// For skipping AC coefficients ([`Huffman::with_skip_table`]), indexed by the next [`SKIP_BITS`]
    /// bits, or 0 when the first code is longer than that. For one or two whole symbols (code and
    /// magnitude bits) that start there: their bits (`& 31`) and how far they advance the coefficient
    /// index (`>> 5 & 255`: run + 1 each, 16 for ZRL, 128 for end of block); then the same for the
    /// first symbol alone (`>> 13 & 31`, `>> 18`), to undo the second when the first filled the block.
    skip: Option<Box<[u32; 1 << SKIP_BITS]>>,
    /// For each length 1..=16: largest code of that length + 1 (0 when none), and the offset in `values`.
    max_code: [u32; 17],
    val_offset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8], values: &[u8]) -> Result<Huffman, Error> {
        let mut lookup = Box::new([0u16; 1 << LOOKUP_BITS]);
        let mut max_code = [0u32; 17];
        let mut val_offset = [0i32; 17];
        let mut code = 0u32;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let count = *counts
                .get(len as usize - 1)
                .ok_or_else(|| corrupt("Huffman counts"))? as u32;
            val_offset[len as usize] = k as i32 - code as i32;
            for _ in 0..count {
                if code >= 1 << len {
                    return Err(corrupt("Huffman code overflow"));
                }
                let symbol = *values.get(k).ok_or_else(|| corrupt("Huffman values"))?;
                if len <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len;
                    let first = (code << shift) as usize;
                    let entry = (len as u16) << 8 | symbol as u16;
                    for slot in lookup.iter_mut().skip(first).take(1 << shift) {
                        *slot = entry;
                    }
                }
                code += 1;
                k += 1;
            }
            max_code[len as usize] = code;
            code <<= 1;
        }
        Ok(Huffman {
            lookup,
            skip: None,
            max_code,
            val_offset,
            values: values.to_vec(),
        })
    }
}

impl Huffman {
    /// The code at the start of every [`SKIP_BITS`]-bit pattern, as `len << 8 | symbol` (0 when that code
    /// is longer): each code of up to [`SKIP_BITS`] bits fills the range of patterns it begins.
    fn prefix_table(&self) -> Box<[u16; 1 << SKIP_BITS]> {
        let mut table = Box::new([0u16; 1 << SKIP_BITS]);
        for len in 1..=SKIP_BITS {
            // Canonical codes: those of length `len` run from twice the previous length's end.
            let first_code = self.max_code[len as usize - 1] << 1;
            for code in first_code..self.max_code[len as usize] {
                let index = self.val_offset[len as usize] + code as i32;
                let Some(&symbol) = usize::try_from(index).ok().and_then(|i| self.values.get(i)) else {
                    continue;
                };
                let shift = SKIP_BITS - len;
                let first = (code << shift) as usize;
                if let Some(range) = table.get_mut(first..first + (1 << shift)) {
                    range.fill((len as u16) << 8 | symbol as u16);
                }
            }
        }
        table
    }

    /// Adds the two-symbol skip table (used by sequential scans, built only for tables they use). Two
    /// lookups in [`Huffman::prefix_table`] per entry: building it costs a few microseconds, which a small
    /// image would otherwise feel.
    fn with_skip_table(mut self) -> Huffman {
        let prefix = self.prefix_table();
        let mask = (1usize << SKIP_BITS) - 1;
        let mut skip = Box::new([0u32; 1 << SKIP_BITS]);
        for (pattern, (slot, &first)) in skip.iter_mut().zip(prefix.iter()).enumerate() {
            let (len, symbol) = ((first >> 8) as u32, first as u8);
            let (total1, step1) = (len + (symbol & 15) as u32, AC_ADVANCE[symbol as usize] as u32);
            // A second whole symbol in the remaining bits, unless the first ended the block; chosen
            // without branches, which this loop would mispredict on every other entry.
            let second = prefix[(pattern << total1.min(SKIP_BITS)) & mask];
            let total2 = total1 + (second >> 8) as u32 + (second & 15) as u32;
            let pair = step1 < 128 && total1 < SKIP_BITS && second != 0 && total2 <= SKIP_BITS;
            let (total, step) = if pair {
                (total2, step1 + AC_ADVANCE[(second & 0xFF) as usize] as u32)
            } else {
                (total1, step1)
            };
            *slot = if first == 0 {
                0
            } else {
                total | step << 5 | total1 << 13 | step1 << 18
            };
        }
        self.skip = Some(skip);
        self
    }
}

/// How far an AC symbol moves the coefficient index: run + 1, 16 for ZRL (0xF0), 128 for end of block
/// (any other zero-size symbol ends the block too).
const AC_ADVANCE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut symbol = 0;
    while symbol < 256 {
        table[symbol] = match (symbol & 15, symbol >> 4) {
            (0, 15) => 16,
            (0, _) => 128,
            (_, run) => run as u8 + 1,
        };
        symbol += 1;
    }
    table
};

/// Bits looked up at once when skipping AC coefficients (a 4096-entry table per AC table).
const SKIP_BITS: u32 = 12;

/// The bit reader's state between two chunks of input.
#[derive(Debug, Clone, Copy, Default)]
struct BitState {
    buf: u64,
    count: u32,
    padded: u32,
    at_marker: bool,
}

/// Reads entropy-coded bits MSB first, undoing 0xFF00 stuffing, and stops at a marker; past the data it
/// supplies zeros and counts them so the decoder can tell truncation. `pos` never points inside a stuffed
/// pair or past a marker, so the next marker is always at or after it.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    count: u32,
    /// Zero bits supplied past the end of the data or a marker (the last `padded` bits of `buf`).
    padded: u32,
    at_marker: bool,
}

impl<'a> Bits<'a> {
    /// A reader of `data` from `pos` in `state`.
    fn resume(data: &'a [u8], pos: usize, state: BitState) -> Bits<'a> {
        Bits {
            data,
            pos,
            buf: state.buf,
            count: state.count,
            padded: state.padded,
            at_marker: state.at_marker,
        }
    }

    fn state(&self) -> BitState {
        BitState {
            buf: self.buf,
            count: self.count,
            padded: self.padded,
            at_marker: self.at_marker,
        }
    }

    /// Fills the buffer to at least 56 bits.
    #[inline(always)]
    fn refill(&mut self) {
        // Fast path: as many whole bytes as fit, from eight with no 0xFF among them.
        if self.count <= 32 && !self.at_marker {
            if let Some(eight) = self.data.get(self.pos..self.pos + 8) {
                let word = u64::from_be_bytes(eight.try_into().unwrap_or([0xFF; 8]));
                if !has_ff(word) {
                    let k = (63 - self.count) / 8; // 3..=7 bytes
                    self.buf |= (word >> (64 - 8 * k)) << (64 - self.count - 8 * k);
                    self.count += 8 * k;
                    self.pos += k as usize;
                    return;
                }
            }
        }
        self.refill_bytewise();
    }

    /// Tops `buf`, this reader's `count` bits held in locals by a hot loop, up to at least 56 bits without
    /// a branch on how many it holds: the next eight bytes are OR-ed in below the buffered bits and only
    /// the whole bytes among them are counted, so the bits below `count` are always the data's next bits,
    /// which a later refill ORs in again at the same place. A 0xFF among those bytes (stuffing or a
    /// marker) or the end of the data takes the byte-wise refill, when fewer than 32 bits are left.
    #[inline(always)]
    fn top_up(&mut self, buf: &mut u64, count: &mut u32) {
        if !self.at_marker {
            if let Some(eight) = self.data.get(self.pos..self.pos + 8) {
                let word = u64::from_be_bytes(eight.try_into().unwrap_or([0xFF; 8]));
                if !has_ff(word) {
                    // `count` is at most 63 (no refill fills all 64 bits).
                    *buf |= word >> *count;
                    self.pos += ((63 - *count) >> 3) as usize;
                    *count |= 56;
                    return;
                }
            }
        }
        if *count < 32 {
            (self.buf, self.count) = (*buf, *count);
            self.refill_bytewise();
            (*buf, *count) = (self.buf, self.count);
        }
    }

    /// [`Bits::refill`] byte by byte, through stuffed bytes and up to a marker or the end of the data.
    /// Leaves at most 63 bits, as [`Bits::top_up`] needs.
    #[inline(never)]
    fn refill_bytewise(&mut self) {
        while self.count < 56 {
            let mut byte = 0u8;
            if self.at_marker {
                self.padded += 8;
            } else {
                match self.data.get(self.pos) {
                    Some(0xFF) => match self.data.get(self.pos + 1) {
                        Some(0x00) => {
                            byte = 0xFF;
                            self.pos += 2;
                        }
                        _ => {
                            self.at_marker = true;
                            self.padded += 8;
                        }
                    },
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                    None => {
                        self.at_marker = true;
                        self.padded += 8;
                    }
                }
            }
            self.buf |= (byte as u64) << (56 - self.count);
            self.count += 8;
        }
    }

    /// True when a bit past the real data has been consumed.
    #[inline]
    fn overrun(&self) -> bool {
        self.padded > self.count
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }

    /// Decodes one Huffman symbol; the caller has made sure at least 32 bits are buffered.
    #[inline]
    fn symbol(&mut self, table: &Huffman) -> Result<u8, Error> {
        let entry = table.lookup[(self.buf >> (64 - LOOKUP_BITS)) as usize];
        if entry != 0 {
            self.consume((entry >> 8) as u32);
            return Ok(entry as u8);
        }
        for len in LOOKUP_BITS + 1..=16 {
            let code = (self.buf >> (64 - len)) as u32;
            if code < table.max_code[len as usize] {
                let index = table.val_offset[len as usize] + code as i32;
                let symbol = *table
                    .values
                    .get(index as usize)
                    .ok_or_else(|| corrupt("Huffman code"))?;
                self.consume(len);
                return Ok(symbol);
            }
        }
        Err(corrupt("bad Huffman code"))
    }

    /// Moves to the byte after the restart marker that must follow the current interval. `Ok(false)`
    /// when the data seen so far ends before any marker (`more` coming: wait for it).
    fn restart(&mut self, more: bool) -> Result<bool, Error> {
        if self.overrun() {
            return Err(corrupt("truncated before a restart marker"));
        }
        // Everything up to the marker has been read into the buffer; find the marker itself.
        let Some(at) = next_marker_or_rst(self.data, self.pos) else {
            return if more {
                Ok(false)
            } else {
                Err(corrupt("missing restart marker"))
            };
        };
        match self.data.get(at + 1) {
            Some(0xD0..=0xD7) => {
                *self = Bits::resume(self.data, at + 2, BitState::default());
                Ok(true)
            }
            _ => Err(corrupt("missing restart marker")),
        }
    }
}

/// True when any byte of `word` is 0xFF.
#[inline]
fn has_ff(word: u64) -> bool {
    let inv = !word;
    inv.wrapping_sub(0x0101_0101_0101_0101) & !inv & 0x8080_8080_8080_8080 != 0
}

/// Offset of the next marker, RSTn included, at or after `pos`.
fn next_marker_or_rst(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let rel = bytes.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        let at = pos + rel;
        match bytes.get(at + 1)? {
            0x00 => pos = at + 2,
            0xFF => pos = at + 1,
            _ => return Some(at),
        }
    }
}

/// Extends a `size`-bit magnitude to a signed DC difference (JPEG's EXTEND): below half its range it is
/// negative, `value - (2^size - 1)`. Without a branch, since that sign is a coin toss per block which a
/// branch would mispredict half the time.
#[inline]
fn extend(value: u32, size: u32) -> i32 {
    let value = value as i32;
    // -1 when negative, else 0; for size 0 (value 0) the threshold is 0, so 0.
    let negative = (value - ((1 << size) >> 1)) >> 31;
    value + (negative & (1 - (1 << size)))
}

/// Tables and settings from the marker segments, kept across scans.
#[derive(Default)]
struct Tables {
    qdc: [u32; 4],
    /// Huffman table definitions as read (DC, AC), built into tables only by the scans that use them.
    dc: [Option<HuffSpec>; 4],
    ac: [Option<HuffSpec>; 4],
    restart_interval: u32,
    adobe_transform: Option<u8>,
}

/// The image being decoded, from the frame header on.
struct Decoder {
    frame: Frame,
    hmax: u32,
    vmax: u32,
    progressive: bool,
    /// Components whose DC has been fully decoded.
    done: Vec<bool>,
    /// Per component: sample value per unit of DC prediction (quantiser and successive approximation).
    scale: [f32; 4],
    shrinker: Shrinker,
}

/// How one component of a scan is laid out: blocks per MCU (`mh` x `mv`), the component's block grid
/// (`bw` x `bh`), the 1/8-scale cells each block covers (`rx` x `ry`) and its DC quantiser.
#[derive(Clone, Copy)]
struct ScanPlan {
    index: usize,
    mh: u32,
    mv: u32,
    bw: u32,
    bh: u32,
    rx: u32,
    ry: u32,
}

/// A scan being decoded: its tables and layout, and where it has got to.
struct Scan {
    /// (DC table, AC table with its skip table) per scan component.
    tables: Vec<(Huffman, Option<Huffman>)>,
    plan: Vec<ScanPlan>,
    /// One MCU row of DC predictions per component and block row (`segments`, starts in `row_buf`), and each
    /// block of an MCU as (component, segment start + column in the MCU, blocks per MCU across).
    segments: Vec<usize>,
    blocks: Vec<(usize, usize, usize)>,
    row_buf: Vec<i32>,
    preds: [i32; 4],
    mcus_x: u32,
    /// The next MCU.
    mx: u32,
    my: u32,
    restart_interval: u32,
    /// MCUs left in the current restart interval.
    mcus_left: u32,
    /// MCUs left in the scan.
    remaining: u64,
    /// The interval has ended: a restart marker comes next.
    restart_pending: bool,
    bits: BitState,
    /// Bytes after where decoding stopped last that are known to hold no marker: not searched again.
    searched: usize,
}

/// Where the stream is.
enum Phase {
    /// Before the SOI marker.
    Start,
    /// At a marker (or fill bytes before one).
    Markers,
    /// Inside a segment nobody needs: this many bytes to go.
    Skip(usize),
    /// In the entropy-coded data of a scan that is decoded.
    Scan(Box<Scan>),
    /// In the entropy-coded data of a scan that is not needed (or just finished), up to the next marker.
    SkipScan,
    /// Finished: `outcome` says how.
    Done,
}

/// A JPEG decoded as its bytes arrive: [`JpegStream::feed`] them in chunks of any size, then
/// [`JpegStream::finish`] at the end of the data. The header is known once the frame header has arrived,
/// and the decoder is done ([`JpegStream::is_done`]) as soon as it has every component's DC (or knows it
/// will get no pixels): whatever follows need not be fetched.
pub struct JpegStream {
    max_pixels: u64,
    /// Input kept for later: an incomplete segment, or the end of the entropy-coded data seen so far.
    pending: Vec<u8>,
    phase: Phase,
    orientation: u8,
    header: Option<Header>,
    tables: Tables,
    decoder: Option<Decoder>,
    /// Set when done: the working image (in stored orientation), or why there is none.
    outcome: Option<Result<Working, Error>>,
}

impl JpegStream {
    /// A decoder that gives pixels only for images of at most `max_pixels` pixels (checked on the frame
    /// header, before any entropy-coded data is read).
    pub fn new(max_pixels: u64) -> JpegStream {
        JpegStream {
            max_pixels,
            pending: Vec::new(),
            phase: Phase::Start,
            orientation: 1,
            header: None,
            tables: Tables::default(),
            decoder: None,
            outcome: None,
        }
    }

    /// The header, once the frame header has arrived.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Whether the decoder needs no more bytes: it has every component's DC, or it knows it will get no
    /// pixels (malformed data, an undecodable process, too many pixels).
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// Takes the next bytes of the file.
    pub fn feed(&mut self, data: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        if self.pending.is_empty() {
            let used = self.run(data, false);
            if self.outcome.is_none() {
                self.pending
                    .extend_from_slice(data.get(used..).unwrap_or_default());
            }
        } else {
            let mut input = std::mem::take(&mut self.pending);
            input.extend_from_slice(data);
            let used = self.run(&input, false);
            input.drain(..used.min(input.len()));
            self.pending = input;
        }
        if self.outcome.is_some() {
            self.pending = Vec::new();
        }
    }

    /// Ends the data: decodes what was kept back, and returns the working image (in stored orientation),
    /// or why there is none.
    pub fn finish(&mut self) -> Result<Working, Error> {
        if self.outcome.is_none() {
            let input = std::mem::take(&mut self.pending);
            self.run(&input, true);
        }
        self.outcome
            .take()
            .unwrap_or_else(|| Err(corrupt("the data ends early")))
    }

    fn fail(&mut self, e: Error) {
        self.phase = Phase::Done;
        self.outcome = Some(Err(e));
    }

    /// Processes `input` as far as it can; returns how many bytes it used. `end`: nothing follows.
    fn run(&mut self, input: &[u8], end: bool) -> usize {
        match self.step(input, end) {
            Ok(used) => used,
            Err(e) => {
                self.fail(e);
                input.len()
            }
        }
    }

    fn step(&mut self, input: &[u8], end: bool) -> Result<usize, Error> {
        let mut pos = 0usize;
        let need_more = |what: &str| -> Result<(), Error> {
            if end {
                Err(corrupt(what))
            } else {
                Ok(())
            }
        };
        loop {
            match &mut self.phase {
                Phase::Done => return Ok(input.len()),
                Phase::Start => {
                    match input.get(pos..pos + 2) {
                        Some([0xFF, SOI]) => {}
                        Some(_) => return Err(Error::UnsupportedFormat("not a JPEG".into())),
                        None if end => return Err(Error::UnsupportedFormat("not a JPEG".into())),
                        None => return Ok(pos),
                    }
                    pos += 2;
                    self.phase = Phase::Markers;
                }
                Phase::Skip(left) => {
                    let n = (*left).min(input.len() - pos);
                    pos += n;
                    *left -= n;
                    if *left > 0 {
                        need_more("truncated segment")?;
                        return Ok(pos);
                    }
                    self.phase = Phase::Markers;
                }
                Phase::SkipScan => match next_marker(input, pos) {
                    Some(at) => {
                        pos = at;
                        self.phase = Phase::Markers;
                    }
                    None => {
                        need_more("truncated after a scan")?;
                        // Keep a last 0xFF: it may start the marker.
                        return Ok(if input.last() == Some(&0xFF) {
                            input.len() - 1
                        } else {
                            input.len()
                        });
                    }
                },
                Phase::Scan(scan) => {
                    let decoder = self
                        .decoder
                        .as_mut()
                        .ok_or_else(|| Error::Internal("scan without a decoder".into()))?;
                    match scan.decode(decoder, input, pos, end)? {
                        (at, false) => return Ok(at),
                        (at, true) => {
                            pos = at;
                            if decoder.done.iter().all(|&d| d) {
                                let decoder = self
                                    .decoder
                                    .take()
                                    .ok_or_else(|| Error::Internal("decoder vanished".into()))?;
                                let working = decoder.finish(self.tables.adobe_transform);
                                self.phase = Phase::Done;
                                self.outcome = Some(working);
                                return Ok(input.len());
                            }
                            self.phase = Phase::SkipScan;
                        }
                    }
                }
                Phase::Markers => {
                    // Markers may be preceded by any number of 0xFF fill bytes.
                    while input.get(pos) == Some(&0xFF) && input.get(pos + 1) == Some(&0xFF) {
                        pos += 1;
                    }
                    let Some(&[first, marker]) = input.get(pos..pos + 2) else {
                        need_more("truncated marker")?;
                        return Ok(pos);
                    };
                    if first != 0xFF {
                        return Err(corrupt("expected a marker"));
                    }
                    if matches!(marker, SOI | EOI | 0xD0..=0xD7 | 0x01) {
                        pos += 2;
                        if marker == EOI {
                            return Err(corrupt(if self.header.is_some() {
                                "image ends before every component is decoded"
                            } else {
                                "no frame header before the end of the image"
                            }));
                        }
                        continue;
                    }
                    let Some(len) = be16(input, pos + 2) else {
                        need_more("truncated segment length")?;
                        return Ok(pos);
                    };
                    let len = len as usize;
                    if len < 2 {
                        return Err(corrupt("segment length below 2"));
                    }
                    if !self.wants(marker) {
                        pos += 4;
                        self.phase = Phase::Skip(len - 2);
                        continue;
                    }
                    let Some(payload) = input.get(pos + 4..pos + 2 + len) else {
                        need_more("truncated segment")?;
                        return Ok(pos);
                    };
                    pos += 2 + len;
                    self.segment(marker, payload)?;
                }
            }
        }
    }

    /// Whether the payload of a `marker` segment is needed (whole) rather than skipped.
    fn wants(&self, marker: u8) -> bool {
        match marker {
            // EXIF orientation only counts before the frame header.
            APP1 => self.header.is_none(),
            APP14 | DQT | DHT | DRI | SOS => true,
            0xC0..=0xCF => !matches!(marker, 0xC8 | 0xCC),
            _ => false,
        }
    }

    /// Handles a whole marker segment.
    fn segment(&mut self, marker: u8, payload: &[u8]) -> Result<(), Error> {
        let tables = &mut self.tables;
        match marker {
            APP1 => self.orientation = exif_orientation(payload).unwrap_or(self.orientation),
            APP14 if payload.starts_with(b"Adobe") => tables.adobe_transform = payload.get(11).copied(),
            APP14 => {}
            DQT => {
                let mut p = payload;
                while let Some(&pq_tq) = p.first() {
                    let (sixteen, tq) = (pq_tq >> 4 != 0, (pq_tq & 15) as usize);
                    let size = if sixteen { 128 } else { 64 };
                    let table = p.get(1..1 + size).ok_or_else(|| corrupt("short DQT"))?;
                    let dc = if sixteen {
                        u16::from_be_bytes([table[0], table[1]])
                    } else {
                        table[0] as u16
                    };
                    *tables.qdc.get_mut(tq).ok_or_else(|| corrupt("DQT table index"))? = dc as u32;
                    p = &p[1 + size..];
                }
            }
            DHT => {
                let mut p = payload;
                while let Some(&tc_th) = p.first() {
                    let counts = p.get(1..17).ok_or_else(|| corrupt("short DHT"))?;
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    let values = p.get(17..17 + n).ok_or_else(|| corrupt("short DHT"))?;
                    let mut table = HuffSpec {
                        counts: [0; 16],
                        values: values.to_vec(),
                    };
                    table.counts.copy_from_slice(counts);
                    let (class, th) = (tc_th >> 4, (tc_th & 15) as usize);
                    if th > 3 || class > 1 {
                        return Err(corrupt("DHT table index"));
                    }
                    let slot = if class == 0 {
                        &mut tables.dc[th]
                    } else {
                        &mut tables.ac[th]
                    };
                    *slot = Some(table);
                    p = &p[17 + n..];
                }
            }
            DRI => tables.restart_interval = be16(payload, 0).ok_or_else(|| corrupt("short DRI"))? as u32,
            SOS => {
                let decoder = self
                    .decoder
                    .as_mut()
                    .ok_or_else(|| corrupt("scan before frame header"))?;
                self.phase = match Scan::start(decoder, &self.tables, payload)? {
                    Some(scan) => Phase::Scan(Box::new(scan)),
                    None => Phase::SkipScan,
                };
            }
            _ => self.frame_header(marker, payload)?,
        }
        Ok(())
    }

    /// Handles a frame header (SOFn): the dimensions, then a decoder when this JPEG can be decoded.
    fn frame_header(&mut self, marker: u8, payload: &[u8]) -> Result<(), Error> {
        if self.header.is_some() {
            return Err(corrupt("second frame header"));
        }
        let frame = Frame::parse(payload)?;
        self.header = Some(Header {
            width: frame.width,
            height: frame.height,
            components: frame.components.len() as u8,
            precision: frame.precision,
            process: marker - 0xC0,
            orientation: self.orientation,
        });
        if !matches!(marker, 0xC0..=0xC2) {
            return Err(Error::UnsupportedFormat(
                "lossless, hierarchical or arithmetic JPEG".into(),
            ));
        }
        if frame.precision != 8 {
            return Err(Error::UnsupportedFormat(format!("{}-bit JPEG", frame.precision)));
        }
        if frame.width == 0 || frame.height == 0 {
            return Err(corrupt("zero dimension"));
        }
        if frame.width as u64 * frame.height as u64 > self.max_pixels {
            return Err(Error::TooLarge(format!(
                "{}x{} JPEG has more than {} pixels",
                frame.width, frame.height, self.max_pixels
            )));
        }
        let hmax = frame.components.iter().map(|c| c.h).max().unwrap_or(1);
        let vmax = frame.components.iter().map(|c| c.v).max().unwrap_or(1);
        if frame
            .components
            .iter()
            .any(|c| hmax % c.h != 0 || vmax % c.v != 0)
        {
            return Err(Error::UnsupportedFormat(
                "non-integer JPEG sampling ratios".into(),
            ));
        }
        let shrinker = Shrinker::for_blocks(frame.width, frame.height, 8, frame.components.len())?;
        self.decoder = Some(Decoder {
            done: vec![false; frame.components.len()],
            scale: [1.0; 4],
            frame,
            hmax,
            vmax,
            progressive: marker == 0xC2,
            shrinker,
        });
        Ok(())
    }
}

impl Decoder {
    /// Block-grid size of component `c`: its sample size rounded up to whole blocks.
    fn blocks_of(&self, c: &Component) -> (u32, u32) {
        let w = (self.frame.width * c.h).div_ceil(self.hmax);
        let h = (self.frame.height * c.v).div_ceil(self.vmax);
        (w.div_ceil(8), h.div_ceil(8))
    }

    /// The working image: averaged planes converted to RGB.
    fn finish(self, adobe_transform: Option<u8>) -> Result<Working, Error> {
        let (w, h) = self.shrinker.dims();
        let mut means = self
            .shrinker
            .means()
            .ok_or_else(|| corrupt("image data missing"))?;
        let n = self.frame.components.len();
        for px in means.chunks_exact_mut(n) {
            for (v, scale) in px.iter_mut().zip(self.scale) {
                *v = *v * scale + 128.0;
            }
        }
        let ids: Vec<u8> = self.frame.components.iter().map(|c| c.id).collect();
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for px in means.chunks_exact(n) {
            let out = match (n, adobe_transform) {
                (1, _) => [px[0]; 3],
                (3, Some(0)) => [px[0], px[1], px[2]],
                (3, None) if ids == b"RGB" => [px[0], px[1], px[2]],
                (3, _) => ycc_to_rgb(px[0], px[1], px[2]),
                (4, Some(2)) => {
                    let [r, g, b] = ycc_to_rgb(px[0], px[1], px[2]);
                    let k = px[3] / 255.0;
                    [(255.0 - r) * k, (255.0 - g) * k, (255.0 - b) * k]
                }
                (4, _) => {
                    // Adobe CMYK is stored inverted.
                    let k = px[3] / 255.0;
                    [px[0] * k, px[1] * k, px[2] * k]
                }
                _ => return Err(corrupt("component count")),
            };
            rgb.extend(out.iter().map(|v| v.clamp(0.0, 255.0)));
        }
        Ok(self.shrinker.working_with(rgb))
    }
}

impl Scan {
    /// Prepares the scan of an SOS header, or `None` for a scan that adds nothing the DC image needs
    /// (progressive AC and refinement scans, components already decoded).
    fn start(decoder: &mut Decoder, tables: &Tables, sos: &[u8]) -> Result<Option<Scan>, Error> {
        let ns = *sos.first().ok_or_else(|| corrupt("short scan header"))? as usize;
        if ns == 0 || ns > 4 {
            return Err(corrupt("scan component count"));
        }
        // (component index, DC table, AC table) per scan component.
        let mut comps = Vec::with_capacity(ns);
        for i in 0..ns {
            let s = sos
                .get(1 + i * 2..3 + i * 2)
                .ok_or_else(|| corrupt("short scan header"))?;
            let index = decoder
                .frame
                .components
                .iter()
                .position(|c| c.id == s[0])
                .ok_or_else(|| corrupt("scan names an unknown component"))?;
            comps.push((index, (s[1] >> 4) as usize & 3, (s[1] & 15) as usize & 3));
        }
        let tail = sos
            .get(1 + ns * 2..4 + ns * 2)
            .ok_or_else(|| corrupt("short scan header"))?;
        let (ss, ah, al) = (tail[0], tail[2] >> 4, (tail[2] & 15) as u32);
        if decoder.progressive && (ss != 0 || ah != 0) {
            // AC scans and DC refinement: nothing a 1/8-scale image needs.
            return Ok(None);
        }
        if comps.iter().all(|c| decoder.done.get(c.0) == Some(&true)) {
            return Ok(None);
        }
        let skip_ac = !decoder.progressive;
        let undefined = || corrupt("scan uses an undefined Huffman table");
        let mut huffman = Vec::with_capacity(ns);
        // Each AC table once per scan (both chroma components share one): a copy is cheaper than a build.
        let mut built: [Option<Huffman>; 4] = Default::default();
        for &(_, dc, ac) in &comps {
            let dc = tables.dc[dc].as_ref().ok_or_else(undefined)?;
            let ac = match (skip_ac, tables.ac[ac].as_ref(), built.get_mut(ac)) {
                (false, _, _) => None,
                (true, Some(_), Some(Some(table))) => Some(table.clone()),
                (true, Some(spec), Some(slot)) => {
                    let table = Huffman::new(&spec.counts, &spec.values)?.with_skip_table();
                    *slot = Some(table.clone());
                    Some(table)
                }
                (true, _, _) => return Err(undefined()),
            };
            huffman.push((Huffman::new(&dc.counts, &dc.values)?, ac));
        }

        // MCU geometry: interleaved scans cover the padded MCU grid, single-component scans the
        // component's own blocks.
        let (mcus_x, mcus_y) = if ns == 1 {
            decoder.blocks_of(&decoder.frame.components[comps[0].0])
        } else {
            (
                decoder.frame.width.div_ceil(8 * decoder.hmax),
                decoder.frame.height.div_ceil(8 * decoder.vmax),
            )
        };
        let plan: Vec<ScanPlan> = comps
            .iter()
            .map(|&(index, _, _)| {
                let c = &decoder.frame.components[index];
                let (bw, bh) = decoder.blocks_of(c);
                let (mh, mv) = if ns == 1 { (1, 1) } else { (c.h, c.v) };
                ScanPlan {
                    index,
                    mh,
                    mv,
                    bw,
                    bh,
                    rx: decoder.hmax / c.h,
                    ry: decoder.vmax / c.v,
                }
            })
            .collect();
        let mut segments = Vec::new();
        let mut blocks = Vec::new();
        let mut len = 0usize;
        for (k, p) in plan.iter().enumerate() {
            for _ in 0..p.mv {
                segments.push(len);
                for h in 0..p.mh as usize {
                    blocks.push((k, len + h, p.mh as usize));
                }
                len += mcus_x as usize * p.mh as usize;
            }
        }
        let shift = if decoder.progressive { al.min(15) } else { 0 };
        for p in &plan {
            // Mean sample of a block: DC * q / 8, level-shifted by 128 (in `finish`).
            let q = decoder.frame.components[p.index].tq;
            if let Some(scale) = decoder.scale.get_mut(p.index) {
                *scale = tables.qdc[q] as f32 * (1u32 << shift) as f32 / 8.0;
            }
        }
        Ok(Some(Scan {
            tables: huffman,
            plan,
            segments,
            blocks,
            row_buf: vec![0; len],
            preds: [0; 4],
            mcus_x,
            mx: 0,
            my: 0,
            restart_interval: tables.restart_interval,
            mcus_left: tables.restart_interval,
            remaining: mcus_x as u64 * mcus_y as u64,
            restart_pending: false,
            bits: BitState::default(),
            searched: 0,
        }))
    }

    /// Decodes MCUs of `input` from `pos` while the bytes they could need have arrived (all of them when
    /// `end`), feeding each finished MCU row to the decoder's shrinker. Returns where it stopped and
    /// whether the scan is complete.
    fn decode(
        &mut self,
        decoder: &mut Decoder,
        input: &[u8],
        pos: usize,
        end: bool,
    ) -> Result<(usize, bool), Error> {
        #[cfg(target_arch = "x86_64")]
        if use_bmi2() {
            // SAFETY: the CPU has BMI2 (checked at run time just above).
            return unsafe { self.decode_bmi2(decoder, input, pos, end) };
        }
        self.decode_mcus(decoder, input, pos, end)
    }

    /// [`Scan::decode_mcus`] compiled for BMI2: its variable shifts (`shlx`, `shrx`) leave the flags
    /// alone, which shortens the bit buffer's dependency chain by about a fifth on a large baseline
    /// JPEG. The shipped library targets generic x86-64, so this copy is chosen at run time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "bmi2")]
    fn decode_bmi2(
        &mut self,
        decoder: &mut Decoder,
        input: &[u8],
        pos: usize,
        end: bool,
    ) -> Result<(usize, bool), Error> {
        self.decode_mcus(decoder, input, pos, end)
    }

    /// The MCU loop behind [`Scan::decode`], inlined into each compiled variant.
    #[inline(always)]
    fn decode_mcus(
        &mut self,
        decoder: &mut Decoder,
        input: &[u8],
        pos: usize,
        end: bool,
    ) -> Result<(usize, bool), Error> {
        let mut bits = Bits::resume(input, pos, self.bits);
        // Once a marker is in sight, every byte the scan can use has arrived.
        let mut marker_ahead = end;
        let searched_to = pos + self.searched;
        while self.remaining > 0 {
            if self.restart_pending {
                if !bits.restart(!end)? {
                    self.bits = bits.state();
                    return Ok((bits.pos, false));
                }
                self.preds = [0; 4];
                self.mcus_left = self.restart_interval;
                self.restart_pending = false;
            }
            if !marker_ahead && input.len() - bits.pos.min(input.len()) < SCAN_MARGIN {
                marker_ahead = next_marker(input, bits.pos.max(searched_to)).is_some();
                if !marker_ahead {
                    // All but a last 0xFF (which may start a marker) need not be searched again.
                    self.searched = input.len().saturating_sub(bits.pos + 1);
                    self.bits = bits.state();
                    return Ok((bits.pos, false));
                }
            }
            let mx = self.mx as usize;
            for &(k, start, mh) in &self.blocks {
                let (Some((dc_table, ac_table)), Some(pred)) = (self.tables.get(k), self.preds.get_mut(k))
                else {
                    return Err(Error::Internal("scan component".into()));
                };
                *pred = pred.wrapping_add(dc_diff(&mut bits, dc_table)?);
                if let Some(ac_table) = ac_table {
                    if let Some(skip) = ac_table.skip.as_deref() {
                        skip_ac_symbols(&mut bits, ac_table, skip)?;
                    }
                }
                if let Some(slot) = self.row_buf.get_mut(start + mx * mh) {
                    *slot = *pred;
                }
            }
            self.remaining -= 1;
            if self.restart_interval > 0 && self.remaining > 0 {
                self.mcus_left -= 1;
                if self.mcus_left == 0 {
                    self.restart_pending = true;
                }
            }
            self.mx += 1;
            if self.mx == self.mcus_x {
                if bits.overrun() {
                    return Err(corrupt("truncated entropy data"));
                }
                self.flush_row(decoder)?;
                self.mx = 0;
                self.my += 1;
            }
        }
        for p in &self.plan {
            if let Some(d) = decoder.done.get_mut(p.index) {
                *d = true;
            }
        }
        self.bits = bits.state();
        Ok((bits.pos, true))
    }

    /// Adds the finished MCU row `my` of predictions to the shrinker.
    fn flush_row(&self, decoder: &mut Decoder) -> Result<(), Error> {
        let mut segment = self.segments.iter();
        for p in &self.plan {
            for v in 0..p.mv {
                let start = *segment.next().ok_or_else(|| Error::Internal("segment".into()))?;
                let by = self.my * p.mv + v;
                if by >= p.bh {
                    continue;
                }
                // Raw predictions: the scaling to sample values is affine, so it is applied to the
                // means (`finish`).
                let preds = self.row_buf.get(start..start + p.bw as usize).unwrap_or_default();
                for dy in 0..p.ry {
                    decoder
                        .shrinker
                        .add_sample_row(p.index, by * p.ry + dy, preds, p.rx);
                }
            }
        }
        Ok(())
    }
}

/// Whether [`Scan::decode`] takes the BMI2 copy of the MCU loop: when the CPU has it, unless a test
/// forces the generic one to compare the two.
#[cfg(target_arch = "x86_64")]
fn use_bmi2() -> bool {
    #[cfg(test)]
    if tests::GENERIC_ONLY.with(|g| g.get()) {
        return false;
    }
    std::arch::is_x86_feature_detected!("bmi2")
}

/// JFIF YCbCr to RGB.
fn ycc_to_rgb(y: f32, cb: f32, cr: f32) -> [f32; 3] {
    let (cb, cr) = (cb - 128.0, cr - 128.0);
    [
        y + 1.402 * cr,
        y - 0.344_136 * cb - 0.714_136 * cr,
        y + 1.772 * cb,
    ]
}

/// Decodes one block's DC difference: the Huffman code and its magnitude bits, consumed together.
#[inline(always)]
fn dc_diff(bits: &mut Bits, table: &Huffman) -> Result<i32, Error> {
    if bits.count < 32 {
        bits.refill();
    }
    let entry = table.lookup[(bits.buf >> (64 - LOOKUP_BITS)) as usize];
    let (len, size) = if entry != 0 {
        ((entry >> 8) as u32, (entry & 0xFF) as u32)
    } else {
        (0, bits.symbol(table)? as u32)
    };
    if size > 15 {
        return Err(corrupt("DC magnitude"));
    }
    // At least 32 - 16 bits remain after a slow-path code; code + magnitude fit the buffer.
    let value = if size == 0 {
        0
    } else {
        ((bits.buf << len) >> (64 - size)) as u32
    };
    bits.consume(len + size);
    Ok(extend(value, size))
}

/// Skips the AC coefficients of one block of a sequential scan: reads each symbol and steps over its
/// magnitude bits without building the value (one skip-table lookup per one or two symbols whose codes
/// fit [`SKIP_BITS`]). The bit buffer is kept in locals so it stays in registers.
#[inline(always)]
fn skip_ac_symbols(bits: &mut Bits, table: &Huffman, skip: &[u32; 1 << SKIP_BITS]) -> Result<(), Error> {
    let mut k = 1u32;
    let (mut buf, mut count) = (bits.buf, bits.count);
    // The state before the last table step, to undo half of it (below).
    let (mut prev_buf, mut prev_count, mut prev_k, mut last) = (buf, count, k, 0u32);
    while k < 64 {
        // Every step or two, rather than when fewer than 32 bits are left: that test goes either way at
        // random, and its mispredictions cost a large baseline JPEG about 8 % of its time. A top-up that
        // filled the buffer (56 bits or more) leaves room for two table steps: half the top-ups, another
        // 14 % (both measured on the 12 MP bench photo).
        bits.top_up(&mut buf, &mut count);
        let mut steps = if count >= 2 * 27 { 2 } else { 1 };
        loop {
            let entry = skip[(buf >> (64 - SKIP_BITS)) as usize];
            if entry != 0 {
                // Codes and magnitude bits together: at most 12 + 15 bits.
                (prev_buf, prev_count, prev_k, last) = (buf, count, k, entry);
                let n = entry & 31;
                buf <<= n;
                count -= n;
                k += (entry >> 5) & 255;
            } else {
                // A code longer than the table's bits (rare): up to 16 + 15 bits, after which the bits
                // left may not cover a second step.
                steps = 1;
                (bits.buf, bits.count) = (buf, count);
                if bits.count < 32 {
                    bits.refill();
                }
                let symbol = bits.symbol(table)?;
                let (run, size) = ((symbol >> 4) as u32, (symbol & 15) as u32);
                bits.consume(size);
                (buf, count) = (bits.buf, bits.count);
                last = 0;
                k += match (size, run) {
                    (0, 15) => 16,
                    (0, _) => 128,
                    _ => run + 1,
                };
            }
            steps -= 1;
            if steps == 0 || k >= 64 {
                break;
            }
        }
    }
    // A full block has no end-of-block symbol: if the first symbol of the last pair filled it, the
    // second belongs to the next block. Undo it. Chosen without a branch: whether the last step was such a
    // pair varies from block to block, and a branch here was mispredicted about every other block.
    let total1 = (last >> 13) & 31;
    let undo = (last != 0) & (prev_k + (last >> 18) >= 64) & (last & 31 != total1);
    // When the last step was no table step (`last` 0), total1 is 0; else it was taken from prev_count.
    (bits.buf, bits.count) = if undo {
        (prev_buf << total1, prev_count - total1)
    } else {
        (buf, count)
    };
    Ok(())
}

/// Decodes the DC image of a whole JPEG in memory (in stored orientation), refusing images of more than
/// `max_pixels` pixels before reading any entropy-coded data.
pub fn decode_dc(bytes: &[u8], max_pixels: u64) -> Result<Working, Error> {
    let mut stream = JpegStream::new(max_pixels);
    stream.feed(bytes);
    stream.finish()
}

/// Reads the markers of a whole JPEG in memory up to the frame header: dimensions, process and EXIF
/// orientation.
pub fn read_header(bytes: &[u8]) -> Result<Header, Error> {
    let mut stream = JpegStream::new(0); // no pixels: done at the frame header
    stream.feed(bytes);
    let outcome = stream.finish();
    match stream.header {
        Some(header) => Ok(header),
        None => Err(outcome.err().unwrap_or_else(|| corrupt("no frame header"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

    thread_local! {
        /// Makes [`use_bmi2`] pick the generic MCU loop on this thread.
        pub(super) static GENERIC_ONLY: Cell<bool> = const { Cell::new(false) };
    }

    /// The DC image (or error) of `bytes` fed in `chunk`-byte pieces, through the generic MCU loop or
    /// the one the CPU gets.
    fn decode_with(bytes: &[u8], chunk: usize, generic: bool) -> Result<(u32, u32, Vec<u32>), String> {
        GENERIC_ONLY.with(|g| g.set(generic));
        let mut stream = JpegStream::new(1 << 28);
        for piece in bytes.chunks(chunk.max(1)) {
            stream.feed(piece);
        }
        let out = stream.finish();
        GENERIC_ONLY.with(|g| g.set(false));
        out.map(|w| (w.width, w.height, w.rgb.iter().map(|v| v.to_bits()).collect()))
            .map_err(|e| e.to_string())
    }

    /// A baseline JPEG of noisy gradients (many AC coefficients, long codes), with restart markers
    /// every `restart` MCUs when not 0.
    fn generated(
        width: u16,
        height: u16,
        quality: u8,
        sampling: jpeg_encoder::SamplingFactor,
        restart: u16,
    ) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(width) << 16 ^ u64::from(quality);
        let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height as i32 {
            for x in 0..width as i32 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state & 127) as i32 - 64;
                for base in [x * 3 + y, (x ^ y) & 255, (x / 5 + y / 3) % 200] {
                    rgb.push((base + noise).clamp(0, 255) as u8);
                }
            }
        }
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
        encoder.set_sampling_factor(sampling);
        if restart > 0 {
            encoder.set_restart_interval(restart);
        }
        encoder
            .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
            .expect("encode");
        out
    }

    /// The skip table as it was first built, one slow canonical decode per symbol and pattern: the
    /// reference for [`Huffman::with_skip_table`].
    fn reference_skip_table(h: &Huffman) -> Vec<u32> {
        let decode = |bits: u32, avail: u32| -> Option<(u32, u8)> {
            (1..=avail.min(16)).find_map(|len| {
                let code = bits >> (32 - len);
                (code < h.max_code[len as usize])
                    .then(|| {
                        h.values
                            .get((h.val_offset[len as usize] + code as i32) as usize)
                            .map(|&v| (len, v))
                    })
                    .flatten()
            })
        };
        let advance = |symbol: u8| match (symbol & 15, symbol >> 4) {
            (0, 15) => 16,
            (0, _) => 128,
            (_, run) => run as u32 + 1,
        };
        (0..1u32 << SKIP_BITS)
            .map(|pattern| {
                let bits = pattern << (32 - SKIP_BITS);
                let Some((len, symbol)) = decode(bits, SKIP_BITS) else {
                    return 0;
                };
                let (total1, step1) = (len + (symbol & 15) as u32, advance(symbol));
                let (mut total, mut step) = (total1, step1);
                if step < 128 && total < SKIP_BITS {
                    if let Some((len2, symbol2)) = decode(bits << total, SKIP_BITS - total) {
                        if total + len2 + (symbol2 & 15) as u32 <= SKIP_BITS {
                            total += len2 + (symbol2 & 15) as u32;
                            step += advance(symbol2);
                        }
                    }
                }
                total | step << 5 | total1 << 13 | step1 << 18
            })
            .collect()
    }

    /// A Huffman table with code counts per length from `wanted` (cut to what fits the code space) and
    /// that many distinct symbols, shuffled by `seed`.
    fn random_table(wanted: &[u8], seed: u64) -> Huffman {
        let (mut counts, mut free) = ([0u8; 16], 1u32);
        for (len, &want) in wanted.iter().enumerate() {
            free *= 2;
            let count = (want as u32)
                .min(free.saturating_sub(1))
                .min(256 - counts.iter().map(|&c| c as u32).sum::<u32>());
            counts[len] = count as u8;
            free -= count;
        }
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut values: Vec<u8> = (0..=255u8).collect();
        let mut state = seed | 1;
        for i in (1..values.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.swap(i, (state % (i as u64 + 1)) as usize);
        }
        values.truncate(total);
        Huffman::new(&counts, &values).unwrap()
    }

    /// How far an AC symbol moves the coefficient index, as the decoders count it.
    fn advance(symbol: u8) -> u32 {
        AC_ADVANCE[symbol as usize] as u32
    }

    proptest! {
        #[test]
        fn skip_table_matches_a_slow_decode(wanted in proptest::collection::vec(0u8..40, 16), seed in any::<u64>()) {
            let h = random_table(&wanted, seed).with_skip_table();
            let skip = h.skip.as_deref().unwrap();
            prop_assert_eq!(&skip[..], &reference_skip_table(&h)[..]);
        }
    }

    proptest! {
        // A long code with many magnitude bits right before a second step is rare: enough cases to meet it.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The skipping loop (table steps two at a time, a top-up per one or two steps, the undo at a full
        /// block) ends every block at the same bit as decoding one symbol at a time, for random tables and
        /// blocks of random symbols and magnitude bits, through byte stuffing.
        #[test]
        fn skipping_blocks_matches_a_symbol_by_symbol_decode(
            wanted in proptest::collection::vec(0u8..40, 16),
            seed in any::<u64>(),
            picks in proptest::collection::vec((any::<u16>(), any::<u16>()), 1..600),
        ) {
            let h = random_table(&wanted, seed).with_skip_table();
            prop_assume!(!h.values.is_empty());
            // Each symbol's canonical code, then the blocks: symbols until the index reaches 64.
            let mut codes = std::collections::HashMap::new();
            for len in 1..=16u32 {
                for code in h.max_code[len as usize - 1] << 1..h.max_code[len as usize] {
                    codes.insert(h.values[(h.val_offset[len as usize] + code as i32) as usize], (code, len));
                }
            }
            let (mut bits, mut blocks, mut k) = (Vec::new(), 0, 1u32);
            let mut push = |value: u32, len: u32| (0..len).rev().for_each(|i| bits.push(value >> i & 1 == 1));
            for &(pick, magnitude) in &picks {
                let symbol = h.values[pick as usize % h.values.len()];
                let (code, len) = codes[&symbol];
                push(code, len);
                push(magnitude as u32, (symbol & 15) as u32);
                k += advance(symbol);
                if k >= 64 {
                    (blocks, k) = (blocks + 1, 1);
                }
            }
            prop_assume!(blocks > 0);
            bits.extend(std::iter::repeat_n(true, 64)); // what follows the last block
            let mut data = Vec::new();
            for byte in bits.chunks(8) {
                let byte = byte.iter().fold(0u8, |b, &bit| b << 1 | bit as u8) << (8 - byte.len());
                data.push(byte);
                if byte == 0xFF {
                    data.push(0);
                }
            }
            // Bits consumed so far: data bytes loaded (a stuffed pair is one) less those still buffered.
            let consumed = |r: &Bits| 8 * data[..r.pos].iter().enumerate()
                .filter(|&(i, &b)| !(b == 0 && i > 0 && data[i - 1] == 0xFF)).count() as i64 - r.count as i64;
            let mut slow = Bits::resume(&data, 0, BitState::default());
            let mut fast = Bits::resume(&data, 0, BitState::default());
            for block in 0..blocks {
                let mut k = 1;
                while k < 64 {
                    if slow.count < 32 {
                        slow.refill();
                    }
                    let symbol = slow.symbol(&h).unwrap();
                    slow.consume((symbol & 15) as u32);
                    k += advance(symbol);
                }
                if fast.count < 32 {
                    fast.refill();
                }
                skip_ac_symbols(&mut fast, &h, h.skip.as_deref().unwrap()).unwrap();
                prop_assert_eq!(consumed(&fast), consumed(&slow), "block {}", block);
            }
        }
    }

    #[test]
    fn bmi2_and_generic_loops_agree() {
        use jpeg_encoder::SamplingFactor as S;
        let mut files: Vec<Vec<u8>> = [
            "photo_420.jpg",
            "photo_422.jpg",
            "photo_444.jpg",
            "photo_cmyk.jpg",
            "photo_exif6.jpg",
            "photo_gray.jpg",
            "photo_optimized.jpg",
        ]
        .iter()
        .map(|name| data(name))
        .collect();
        for (w, h, q, s, r) in [
            (333, 251, 100, S::F_2_2, 0),
            (512, 384, 95, S::F_1_1, 7),
            (97, 613, 60, S::F_2_1, 1),
            (640, 480, 30, S::F_2_2, 0),
        ] {
            files.push(generated(w, h, q, s, r));
        }
        for (i, bytes) in files.iter().enumerate() {
            let whole = decode_with(bytes, bytes.len(), true);
            assert!(whole.is_ok(), "file {i}: {whole:?}");
            for chunk in [bytes.len(), 4096, 1000, 61] {
                assert_eq!(
                    decode_with(bytes, chunk, false),
                    whole,
                    "file {i}, chunks of {chunk}"
                );
                assert_eq!(
                    decode_with(bytes, chunk, true),
                    whole,
                    "file {i}, generic, chunks of {chunk}"
                );
            }
            // Truncated and damaged copies: the same image or the same error either way.
            for cut in [bytes.len() / 2, bytes.len() - 3] {
                let part = &bytes[..cut];
                assert_eq!(
                    decode_with(part, 777, false),
                    decode_with(part, 777, true),
                    "file {i} cut at {cut}"
                );
            }
            let mut damaged = bytes.clone();
            for at in (bytes.len() / 3..bytes.len() - 2).step_by(997) {
                damaged[at] ^= 0x5A;
            }
            assert_eq!(
                decode_with(&damaged, 500, false),
                decode_with(&damaged, 500, true),
                "file {i} damaged"
            );
        }
    }

    fn data(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Mean absolute difference between two working images of the same size, in sRGB units, after
    /// pooling 2x2 cells (16x16 pixels: the chroma resolution of a 4:2:0 DC image).
    fn mean_diff(a: &Working, b: &Working) -> f32 {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let pool = |img: &Working| -> Vec<f32> {
            let (w, h) = (img.width as usize, img.height as usize);
            let mut out = vec![0.0; w.div_ceil(2) * h.div_ceil(2) * 3];
            let mut n = vec![0.0; out.len()];
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let o = ((y / 2) * w.div_ceil(2) + x / 2) * 3 + c;
                        out[o] += img.rgb[(y * w + x) * 3 + c];
                        n[o] += 1.0;
                    }
                }
            }
            out.iter().zip(&n).map(|(s, n)| s / n).collect()
        };
        let (pa, pb) = (pool(a), pool(b));
        pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f32>() / pa.len() as f32
    }

    /// Reference: the 8x8 block means of the photo the fixtures were made from (before compression),
    /// which is what a DC-only decode should reproduce.
    fn reference() -> Working {
        let bytes = data("photo_blocks.ppm");
        let text = String::from_utf8_lossy(&bytes[..16]).to_string();
        let f: Vec<u32> = text
            .split_ascii_whitespace()
            .skip(1)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        let px = &bytes[bytes.len() - (f[0] * f[1] * 3) as usize..];
        Working::new(f[0], f[1], px.iter().map(|&v| v as f32).collect())
    }

    #[test]
    fn reads_header_dimensions_and_orientation() {
        let h = read_header(&data("photo_420.jpg")).unwrap();
        assert_eq!(
            (76, 52, 3, 8, 0, 1),
            (
                h.width,
                h.height,
                h.components,
                h.precision,
                h.process,
                h.orientation
            )
        );
        let h = read_header(&data("photo_progressive.jpg")).unwrap();
        assert_eq!((2, 1), (h.process, h.orientation));
        let h = read_header(&data("photo_exif6.jpg")).unwrap();
        assert_eq!(6, h.orientation);
    }

    #[test]
    fn dc_image_matches_a_full_decode() {
        // Every sampling and coding variant against Pillow's full decode of the same file.
        let expected = reference();
        for name in [
            "photo_420.jpg",
            "photo_422.jpg",
            "photo_444.jpg",
            "photo_progressive.jpg",
            "photo_progressive_444.jpg",
            "photo_progressive_scans.jpg",
            "photo_restart.jpg",
            "photo_optimized.jpg",
            "photo_q100.jpg",
            "photo_exif6.jpg",
        ] {
            let got = decode_dc(&data(name), 1 << 30).unwrap_or_else(|e| panic!("{name}: {e}"));
            let diff = mean_diff(&expected, &got);
            assert!(diff < 3.0, "{name}: mean difference {diff}");
        }
    }

    #[test]
    fn grey_and_cmyk_decode() {
        let grey = decode_dc(&data("photo_gray.jpg"), 1 << 30).unwrap();
        assert!(grey.rgb.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let expected = reference();
        let cmyk = decode_dc(&data("photo_cmyk.jpg"), 1 << 30).unwrap();
        let diff = mean_diff(&expected, &cmyk);
        assert!(diff < 8.0, "CMYK mean difference {diff}");
    }

    #[test]
    fn refuses_too_many_pixels_before_decoding() {
        let e = decode_dc(&data("photo_420.jpg"), 76 * 52 - 1).unwrap_err();
        assert_eq!("too-large", e.code());
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let bytes = data("photo_420.jpg");
        for len in [0, 1, 2, 3, 20, 200, bytes.len() / 2, bytes.len() - 40] {
            assert!(decode_dc(&bytes[..len], 1 << 30).is_err(), "length {len}");
        }
        let bytes = data("photo_progressive.jpg");
        for len in (0..bytes.len()).step_by(97) {
            let _ = decode_dc(&bytes[..len], 1 << 30);
        }
    }

    #[test]
    fn progressive_decoding_stops_after_the_dc_scan() {
        // Cutting the file after the first scan's data still gives the image.
        let bytes = data("photo_progressive.jpg");
        let sos = bytes.windows(2).position(|w| w == [0xFF, SOS]).unwrap();
        let second = next_marker(&bytes, sos + 2 + 12).unwrap();
        let full = decode_dc(&bytes, 1 << 30).unwrap();
        let mut cut = bytes[..second].to_vec();
        cut.extend_from_slice(&[0xFF, 0xDA]); // the cut never gets this far
        assert_eq!(full, decode_dc(&cut, 1 << 30).unwrap());
    }

    #[test]
    fn arithmetic_and_12_bit_give_header_but_no_pixels() {
        // A minimal SOF9 (arithmetic) frame header.
        let mut sof9 = vec![0xFF, 0xD8, 0xFF, 0xC9, 0, 11, 8, 0, 16, 0, 32, 1, 1, 0x11, 0];
        sof9.extend_from_slice(&[0xFF, 0xD9]);
        let h = read_header(&sof9).unwrap();
        assert_eq!((32, 16, 9), (h.width, h.height, h.process));
        assert!(!h.is_decodable());
        assert_eq!(
            "unsupported-format",
            decode_dc(&sof9, 1 << 30).unwrap_err().code()
        );
        let arith = data("photo_arith.jpg");
        let h = read_header(&arith).unwrap();
        assert_eq!((76, 52, 9), (h.width, h.height, h.process));
        assert_eq!(
            "unsupported-format",
            decode_dc(&arith, 1 << 30).unwrap_err().code()
        );
    }

    #[test]
    fn extend_matches_the_standard_definition() {
        for size in 0..=15u32 {
            for value in 0..1u32 << size {
                let wanted = if size > 0 && value < 1 << (size - 1) {
                    value as i32 - (1 << size) + 1
                } else {
                    value as i32
                };
                assert_eq!(extend(value, size), wanted, "value {value}, size {size}");
            }
        }
    }

    #[test]
    fn hostile_headers() {
        // Zero height, huge sizes, bad sampling, garbage after SOI.
        for frame in [
            vec![8, 0, 0, 0, 16, 1, 1, 0x11, 0],
            vec![8, 0xFF, 0xFF, 0xFF, 0xFF, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1],
            vec![8, 0, 16, 0, 16, 1, 1, 0x55, 0],
            vec![8, 0, 16, 0, 16, 5, 1, 0x11, 0],
            vec![8, 0, 16, 0, 16, 2, 1, 0x32, 0, 2, 0x21, 0],
        ] {
            let mut b = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, frame.len() as u8 + 2];
            b.extend_from_slice(&frame);
            b.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0, 1, 2, 3]);
            assert!(decode_dc(&b, 1 << 24).is_err());
        }
        assert!(read_header(b"\xFF\xD8garbage").is_err());
        assert!(read_header(b"\xFF\xD8\xFF\xE1\x00\x01").is_err());
    }

    #[test]
    fn exif_orientation_parsing_is_bounded() {
        assert_eq!(None, exif_orientation(b"Exif\0\0MM\0\x2a\xff\xff\xff\xff"));
        assert_eq!(None, exif_orientation(b"Exif\0\0II\x2a\0\x08\0\0\0\xff\xff"));
        let mut le = b"Exif\0\0II\x2a\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x03\0\0\0".to_vec();
        assert_eq!(Some(3), exif_orientation(&le));
        le[24] = 9;
        assert_eq!(None, exif_orientation(&le));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut b = vec![0xFF, 0xD8];
            b.extend_from_slice(&tail);
            let _ = read_header(&b);
            let _ = decode_dc(&b, 1 << 20);
        }

        #[test]
        fn mutated_real_files_never_panic(at in 0usize..2000, value in any::<u8>(), cut in 0usize..4000) {
            for name in ["photo_420.jpg", "photo_progressive.jpg", "photo_restart.jpg"] {
                let mut b = data(name);
                let i = at % b.len();
                b[i] = value;
                b.truncate(cut.max(2).min(b.len()));
                let _ = decode_dc(&b, 1 << 24);
            }
        }
    }
}
