//! BlurHash: checks the buffer size against the dimensions, downsizes to a small working image, then
//! encodes the standard BlurHash string (<https://blurha.sh>, the algorithm of Wolt's reference encoder).
//!
//! Decoders never hold a full bitmap for BlurHash's sake. They feed rows or samples into a [`Shrinker`],
//! an area-averaging (box filter) accumulator whose memory is a few kilobytes whatever the source size:
//! every source pixel is added to the bin of the working image that covers it, so rows may arrive in any
//! order (interlaced PNG and GIF, one JPEG component after another). The working image is at most
//! [`WORKING_SIZE`] pixels on its long side, which is far more than a 9x9-component BlurHash can tell
//! apart, and small enough that the encoder's cosine sums cost microseconds.
//!
//! Averaging is done on the gamma-encoded (sRGB) values, as every thumbnailer does (and as a JPEG's DC
//! coefficients already are); the encoder then converts the working pixels to linear light with the
//! reference encoder's formula (tabulated: exact on whole values, interpolated between), so for an image no
//! larger than the working size the result is bit-identical to the reference. Transparent pixels are
//! composited over white, the usual chat background.

use crate::error::Error;
use std::f32::consts::PI;
use std::sync::OnceLock;

/// Long side, in pixels, of the working image that BlurHash components are computed from.
pub const WORKING_SIZE: u32 = 64;

/// Background that transparent pixels are composited over (white), per channel.
const BACKGROUND: u64 = 255;

/// The base83 alphabet of BlurHash.
const BASE83: &[u8; 83] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

/// Pixel layout of 8-bit interleaved rows fed to [`Shrinker::add_row`] or [`encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One grey byte per pixel.
    Gray,
    /// Grey and alpha bytes.
    GrayAlpha,
    /// Red, green and blue bytes.
    Rgb,
    /// Red, green, blue and alpha bytes.
    Rgba,
}

impl Layout {
    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            Layout::Gray => 1,
            Layout::GrayAlpha => 2,
            Layout::Rgb => 3,
            Layout::Rgba => 4,
        }
    }
}

/// A small image of sRGB values (0.0..=255.0, three per pixel, row-major) that BlurHash is computed
/// from: the output of a [`Shrinker`], or any small image.
///
/// Each working column and row remembers where its centre lies in the source image, so the BlurHash
/// cosines are evaluated where the reference encoder would evaluate them on the full-size image (it samples
/// source pixel `x` at `x / width`). For an image used as is, the positions are `0, 1, 2, ...` and the
/// result is bit-identical to the reference encoder's.
#[derive(Debug, Clone, PartialEq)]
pub struct Working {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` sRGB values.
    pub rgb: Vec<f32>,
    /// For each column, its centre in source pixels (the mean of the source columns it covers).
    pub columns: Vec<f32>,
    /// For each row, its centre in source pixels.
    pub rows: Vec<f32>,
    /// Width of the source image in pixels.
    pub source_width: u32,
    /// Height of the source image in pixels.
    pub source_height: u32,
}

impl Working {
    /// A working image that is its own source (positions `0, 1, 2, ...`).
    pub fn new(width: u32, height: u32, rgb: Vec<f32>) -> Working {
        Working {
            width,
            height,
            rgb,
            columns: (0..width).map(|x| x as f32).collect(),
            rows: (0..height).map(|y| y as f32).collect(),
            source_width: width,
            source_height: height,
        }
    }

    /// Applies an EXIF orientation (1..=8; anything else is left alone) so that the BlurHash matches the
    /// image as viewers display it.
    pub fn oriented(self, orientation: u8) -> Working {
        if !(2..=8).contains(&orientation) {
            return self;
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let transposed = orientation >= 5;
        let (out_w, out_h) = if transposed { (h, w) } else { (w, h) };
        let mut rgb = vec![0.0; self.rgb.len()];
        for oy in 0..out_h {
            for ox in 0..out_w {
                // Position in the stored image of the displayed pixel (ox, oy).
                let (sx, sy) = match orientation {
                    2 => (w - 1 - ox, oy),
                    3 => (w - 1 - ox, h - 1 - oy),
                    4 => (ox, h - 1 - oy),
                    5 => (oy, ox),
                    6 => (oy, h - 1 - ox),
                    7 => (w - 1 - oy, h - 1 - ox),
                    _ => (w - 1 - oy, ox),
                };
                let (src, dst) = ((sy * w + sx) * 3, (oy * out_w + ox) * 3);
                if let (Some(from), Some(to)) = (self.rgb.get(src..src + 3), rgb.get_mut(dst..dst + 3)) {
                    to.copy_from_slice(from);
                }
            }
        }
        // Displayed columns come from stored columns (or rows, when transposed), possibly reversed.
        let flip = |positions: &[f32], span: u32, reversed: bool| -> Vec<f32> {
            if reversed {
                positions.iter().rev().map(|p| (span as f32 - 1.0) - p).collect()
            } else {
                positions.to_vec()
            }
        };
        let (columns, rows, source_width, source_height) = match orientation {
            2 => (
                flip(&self.columns, self.source_width, true),
                self.rows,
                self.source_width,
                self.source_height,
            ),
            3 => (
                flip(&self.columns, self.source_width, true),
                flip(&self.rows, self.source_height, true),
                self.source_width,
                self.source_height,
            ),
            4 => (
                self.columns,
                flip(&self.rows, self.source_height, true),
                self.source_width,
                self.source_height,
            ),
            5 => (self.rows, self.columns, self.source_height, self.source_width),
            6 => (
                flip(&self.rows, self.source_height, true),
                self.columns,
                self.source_height,
                self.source_width,
            ),
            7 => (
                flip(&self.rows, self.source_height, true),
                flip(&self.columns, self.source_width, true),
                self.source_height,
                self.source_width,
            ),
            _ => (
                self.rows,
                flip(&self.columns, self.source_width, true),
                self.source_height,
                self.source_width,
            ),
        };
        Working {
            width: out_w as u32,
            height: out_h as u32,
            rgb,
            columns,
            rows,
            source_width,
            source_height,
        }
    }

    /// Encodes the BlurHash of this image with `cx` x `cy` components (each 1..=9).
    pub fn encode(&self, cx: u32, cy: u32) -> Result<String, Error> {
        check_components(cx, cy)?;
        let (w, h) = (self.width as usize, self.height as usize);
        let pixels = w.checked_mul(h).and_then(|n| n.checked_mul(3));
        if w == 0
            || h == 0
            || pixels != Some(self.rgb.len())
            || self.columns.len() != w
            || self.rows.len() != h
        {
            return Err(Error::bad_request("pixel buffer does not match its dimensions"));
        }
        if self.source_width == 0 || self.source_height == 0 {
            return Err(Error::bad_request("zero source dimension"));
        }
        encode_linear(self, cx, cy)
    }
}

/// Size of the working image for a `width` x `height` source: the source itself when it fits in
/// [`WORKING_SIZE`], otherwise scaled down (aspect kept, at least one pixel on each side).
pub fn working_size(width: u32, height: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= WORKING_SIZE {
        return (width.max(1), height.max(1));
    }
    let scale = |side: u32| (((side as u64 * WORKING_SIZE as u64) + long as u64 / 2) / long as u64).max(1);
    (scale(width) as u32, scale(height) as u32)
}

/// Area-averaging accumulator from a source of any size to a working image of at most [`WORKING_SIZE`]
/// pixels on its long side. It holds one sum and one weight per plane and working pixel, so its memory
/// does not depend on the source size. Planes are whatever the caller feeds (R, G, B for rows; Y, Cb, Cr
/// or C, M, Y, K for a JPEG), averaged independently.
#[derive(Debug, Clone)]
pub struct Shrinker {
    src_w: u32,
    src_h: u32,
    /// Source pixels per sample along each axis (8 for a JPEG's blocks, else 1), and the true size in
    /// pixels, for the working pixels' positions.
    unit: u32,
    true_w: u32,
    true_h: u32,
    dst_w: u32,
    dst_h: u32,
    planes: usize,
    /// First source column of each working column, plus `src_w` at the end.
    col_start: Vec<u32>,
    sums: Vec<i64>,
    weights: Vec<u64>,
    /// Working column and row of each source column and row, for [`Shrinker::add_sample`] callers that
    /// asked for them ([`Shrinker::for_samples`]); empty otherwise.
    col_bin: Vec<u16>,
    row_bin: Vec<u16>,
}

impl Shrinker {
    /// An accumulator for a `width` x `height` source with `planes` (1..=4) planes.
    pub fn new(width: u32, height: u32, planes: usize) -> Result<Shrinker, Error> {
        if width == 0 || height == 0 {
            return Err(Error::bad_request("image has a zero dimension"));
        }
        if !(1..=4).contains(&planes) {
            return Err(Error::Internal(format!("{planes} planes")));
        }
        let (dst_w, dst_h) = working_size(width, height);
        let col_start = (0..=dst_w)
            .map(|j| div_ceil(j as u64 * width as u64, dst_w as u64) as u32)
            .collect();
        let bins = dst_w as usize * dst_h as usize * planes;
        Ok(Shrinker {
            src_w: width,
            src_h: height,
            unit: 1,
            true_w: width,
            true_h: height,
            dst_w,
            dst_h,
            planes,
            col_start,
            sums: vec![0; bins],
            weights: vec![0; bins],
            col_bin: Vec::new(),
            row_bin: Vec::new(),
        })
    }

    /// An accumulator fed one sample per `block` x `block` pixels of a `width` x `height` image (a JPEG's
    /// DC coefficients: `block` 8), with lookup tables that make [`Shrinker::add_sample`] division-free.
    /// The tables cost two bytes per sample column and row (at most 8192 each for a JPEG).
    pub fn for_blocks(width: u32, height: u32, block: u32, planes: usize) -> Result<Shrinker, Error> {
        if block == 0 {
            return Err(Error::Internal("zero block size".into()));
        }
        let mut s = Shrinker::new(width.div_ceil(block), height.div_ceil(block), planes)?;
        (s.unit, s.true_w, s.true_h) = (block, width, height);
        if s.src_w <= 1 << 16 && s.src_h <= 1 << 16 {
            s.col_bin = (0..s.src_w).map(|x| s.bin_x(x) as u16).collect();
            s.row_bin = (0..s.src_h).map(|y| s.bin_y(y) as u16).collect();
        }
        Ok(s)
    }

    /// Working column of source column `x`.
    #[inline]
    fn bin_x(&self, x: u32) -> usize {
        (x as u64 * self.dst_w as u64 / self.src_w as u64) as usize
    }

    /// Working row of source row `y`.
    #[inline]
    fn bin_y(&self, y: u32) -> usize {
        (y as u64 * self.dst_h as u64 / self.src_h as u64) as usize
    }

    /// Adds one sample `value` (a pixel-scale value, normally 0..=255) of `plane` at source pixel
    /// (`x`, `y`). Samples outside the source or planes out of range are ignored.
    #[inline]
    pub fn add_sample(&mut self, plane: usize, x: u32, y: u32, value: i32) {
        if x >= self.src_w || y >= self.src_h || plane >= self.planes {
            return;
        }
        let (bx, by) = match (self.col_bin.get(x as usize), self.row_bin.get(y as usize)) {
            (Some(&bx), Some(&by)) => (bx as usize, by as usize),
            _ => (self.bin_x(x), self.bin_y(y)),
        };
        let bin = (by * self.dst_w as usize + bx) * self.planes + plane;
        if let (Some(sum), Some(weight)) = (self.sums.get_mut(bin), self.weights.get_mut(bin)) {
            *sum += value as i64;
            *weight += 1;
        }
    }

    /// Adds a row of samples of `plane` at source row `y`: sample `i` covers source columns
    /// `i * rx .. (i + 1) * rx` (a subsampled JPEG component, upsampled by repetition). Columns past the
    /// source, rows past it and planes out of range are ignored.
    pub fn add_sample_row(&mut self, plane: usize, y: u32, values: &[i32], rx: u32) {
        if y >= self.src_h || plane >= self.planes || rx == 0 {
            return;
        }
        let by = self
            .row_bin
            .get(y as usize)
            .map_or_else(|| self.bin_y(y), |&b| b as usize);
        let covered = (values.len() as u64 * rx as u64).min(self.src_w as u64) as u32;
        let (rx, planes) = (rx as u64, self.planes);
        for j in 0..self.dst_w as usize {
            let (Some(&x0), Some(&x1)) = (self.col_start.get(j), self.col_start.get(j + 1)) else {
                return;
            };
            let (x0, x1) = (x0 as u64, x1.min(covered) as u64);
            if x0 >= x1 {
                return;
            }
            // Samples x0 / rx ..= (x1 - 1) / rx, each weighted by the columns of [x0, x1) it covers.
            let (first, last) = ((x0 / rx) as usize, ((x1 - 1) / rx) as usize);
            let Some(run) = values.get(first..=last) else {
                return;
            };
            let mut sum: i64 = if rx == 1 {
                run.iter().map(|&v| v as i64).sum()
            } else {
                run.iter().map(|&v| v as i64 * rx as i64).sum()
            };
            if rx > 1 {
                // Trim the parts of the first and last samples outside [x0, x1).
                sum -= run
                    .first()
                    .map_or(0, |&v| v as i64 * (x0 - first as u64 * rx) as i64);
                sum -= run
                    .last()
                    .map_or(0, |&v| v as i64 * ((last as u64 + 1) * rx - x1) as i64);
            }
            let bin = (by * self.dst_w as usize + j) * planes + plane;
            if let (Some(s), Some(w)) = (self.sums.get_mut(bin), self.weights.get_mut(bin)) {
                *s += sum;
                *w += x1 - x0;
            }
        }
    }

    /// Adds source row `y` of 8-bit pixels in `layout` (grey is spread over the first three planes;
    /// alpha is composited over white). The shrinker must have been made with 3 planes; a row of the
    /// wrong length or an out-of-range `y` is ignored.
    pub fn add_row(&mut self, y: u32, row: &[u8], layout: Layout) {
        let ch = layout.channels();
        if self.planes != 3 || y >= self.src_h || row.len() != self.src_w as usize * ch {
            return;
        }
        let base = self.bin_y(y) * self.dst_w as usize * 3;
        for j in 0..self.dst_w as usize {
            let (Some(&x0), Some(&x1)) = (self.col_start.get(j), self.col_start.get(j + 1)) else {
                return;
            };
            let Some(px) = row.get(x0 as usize * ch..x1 as usize * ch) else {
                return;
            };
            let (sum, weight) = sum_pixels(px, layout);
            let bin = base + j * 3;
            if let (Some(s), Some(w)) = (
                self.sums.get_mut(bin..bin + 3),
                self.weights.get_mut(bin..bin + 3),
            ) {
                for c in 0..3 {
                    s[c] += sum[c] as i64;
                    w[c] += weight;
                }
            }
        }
    }

    /// Adds the pixels of one interlaced row: `row` holds pixels at source columns `x0`, `x0 + dx`, ...
    /// of row `y` (Adam7 passes). Same rules as [`Shrinker::add_row`].
    pub fn add_strided_row(&mut self, y: u32, x0: u32, dx: u32, row: &[u8], layout: Layout) {
        let ch = layout.channels();
        if self.planes != 3 || y >= self.src_h || dx == 0 {
            return;
        }
        let base = self.bin_y(y) * self.dst_w as usize;
        for (i, px) in row.chunks_exact(ch).enumerate() {
            let x = x0 as u64 + i as u64 * dx as u64;
            if x >= self.src_w as u64 {
                return;
            }
            let (sum, weight) = sum_pixels(px, layout);
            let bin = (base + self.bin_x(x as u32)) * 3;
            if let (Some(s), Some(w)) = (
                self.sums.get_mut(bin..bin + 3),
                self.weights.get_mut(bin..bin + 3),
            ) {
                for c in 0..3 {
                    s[c] += sum[c] as i64;
                    w[c] += weight;
                }
            }
        }
    }

    /// Working-image width and height.
    pub fn dims(&self) -> (u32, u32) {
        (self.dst_w, self.dst_h)
    }

    /// Mean of each plane in each working pixel (`dst_w * dst_h * planes` values, row-major, planes
    /// interleaved), or `None` when some working pixel received no sample of some plane (the caller fed
    /// too little: a truncated image).
    pub fn means(&self) -> Option<Vec<f32>> {
        self.sums
            .iter()
            .zip(&self.weights)
            .map(|(&sum, &weight)| (weight > 0).then(|| (sum as f64 / weight as f64) as f32))
            .collect()
    }

    /// The working image, for a shrinker fed RGB rows (3 planes).
    pub fn into_working(self) -> Option<Working> {
        if self.planes != 3 {
            return None;
        }
        let rgb = self.means()?;
        Some(self.working_with(rgb))
    }

    /// A working image of this shrinker's size and positions with the given pixels (after the caller's
    /// colour conversion of [`Shrinker::means`]).
    pub fn working_with(&self, rgb: Vec<f32>) -> Working {
        // Centre of working cell j along an axis: the mean of the source pixels its samples cover.
        let centres = |src: u32, dst: u32, true_len: u32| -> Vec<f32> {
            (0..dst as u64)
                .map(|j| {
                    let first = div_ceil(j * src as u64, dst as u64) * self.unit as u64;
                    let end =
                        (div_ceil((j + 1) * src as u64, dst as u64) * self.unit as u64).min(true_len as u64);
                    (first + end.max(first + 1) - 1) as f32 / 2.0
                })
                .collect()
        };
        Working {
            width: self.dst_w,
            height: self.dst_h,
            rgb,
            columns: centres(self.src_w, self.dst_w, self.true_w),
            rows: centres(self.src_h, self.dst_h, self.true_h),
            source_width: self.true_w,
            source_height: self.true_h,
        }
    }
}

/// Sum of each of R, G, B over `px` (whole pixels in `layout`) and the weight of that sum: pixels count
/// 1 each, or 255 each when alpha is composited (then the sums are scaled by 255 too).
#[inline]
fn sum_pixels(px: &[u8], layout: Layout) -> ([u64; 3], u64) {
    let n = (px.len() / layout.channels()) as u64;
    match layout {
        Layout::Gray => {
            let s = px.iter().map(|&v| v as u64).sum();
            ([s; 3], n)
        }
        Layout::Rgb => {
            let (mut r, mut g, mut b) = (0u32, 0u32, 0u32);
            let mut s = [0u64; 3];
            // u32 partial sums (at most 2^24 / 255 pixels per chunk) vectorise well.
            for chunk in px.chunks(3 * 4096) {
                for p in chunk.chunks_exact(3) {
                    r += p[0] as u32;
                    g += p[1] as u32;
                    b += p[2] as u32;
                }
                s[0] += r as u64;
                s[1] += g as u64;
                s[2] += b as u64;
                (r, g, b) = (0, 0, 0);
            }
            (s, n)
        }
        Layout::GrayAlpha => {
            let mut s = 0u64;
            for p in px.chunks_exact(2) {
                let a = p[1] as u64;
                s += p[0] as u64 * a + BACKGROUND * (255 - a);
            }
            ([s; 3], n * 255)
        }
        Layout::Rgba => {
            let mut s = [0u64; 3];
            for p in px.chunks_exact(4) {
                let a = p[3] as u64;
                let bg = BACKGROUND * (255 - a);
                s[0] += p[0] as u64 * a + bg;
                s[1] += p[1] as u64 * a + bg;
                s[2] += p[2] as u64 * a + bg;
            }
            (s, n * 255)
        }
    }
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

/// BlurHash of a `width` x `height` image of 8-bit pixels in `layout` (row-major, no padding), with
/// `cx` x `cy` components (each 1..=9). Images larger than [`WORKING_SIZE`] are area-averaged down first.
pub fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    layout: Layout,
    cx: u32,
    cy: u32,
) -> Result<String, Error> {
    check_components(cx, cy)?;
    let expected = (width as u64)
        .checked_mul(height as u64)
        .and_then(|n| n.checked_mul(layout.channels() as u64))
        .ok_or_else(|| Error::bad_request("image dimensions overflow"))?;
    if expected != pixels.len() as u64 {
        return Err(Error::bad_request(format!(
            "pixel buffer has {} bytes, {width}x{height} needs {expected}",
            pixels.len()
        )));
    }
    let mut shrinker = Shrinker::new(width, height, 3)?;
    let row_len = width as usize * layout.channels();
    for (y, row) in pixels.chunks_exact(row_len).enumerate() {
        shrinker.add_row(y as u32, row, layout);
    }
    let working = shrinker
        .into_working()
        .ok_or_else(|| Error::Internal("empty working image".into()))?;
    working.encode(cx, cy)
}

/// Checks that the component counts are in BlurHash's range, 1..=9.
pub fn check_components(cx: u32, cy: u32) -> Result<(), Error> {
    if (1..=9).contains(&cx) && (1..=9).contains(&cy) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "BlurHash components must be 1..=9, not {cx}x{cy}"
        )))
    }
}

/// Steps per unit of [`srgb_to_linear_table`]: its grid holds every whole value, so 8-bit pixels (an image
/// no larger than the working size) get exactly the formula's result, as in the reference encoder.
const LINEAR_STEPS: f32 = 16.0;

/// Points of [`srgb_to_linear_table`]: every 1/[`LINEAR_STEPS`] of 0..=255, and one step beyond for
/// interpolating at 255.
const LINEAR_POINTS: usize = 255 * LINEAR_STEPS as usize + 2;

/// [`srgb_to_linear`] on a grid, interpolated between its points. Working pixels are means, so they fall
/// between whole values; there the result is within a few f32 roundings of the formula's (3.6e-7 at most
/// over 20,000 random working images, which got the same hash but one), and it saves a `powf` per value,
/// which was most of the encoder's time: 70 to 42 us for a 64x43 working image.
fn srgb_to_linear_table() -> &'static [f32; LINEAR_POINTS] {
    static TABLE: OnceLock<Box<[f32; LINEAR_POINTS]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Box::new([0.0; LINEAR_POINTS]);
        for (i, point) in table.iter_mut().enumerate() {
            *point = srgb_to_linear(i as f32 / LINEAR_STEPS);
        }
        table
    })
}

/// [`srgb_to_linear`] through the table, for working pixels (0..=255: means of bytes, or clamped by the
/// JPEG's colour conversion).
fn srgb_to_linear_interpolated(table: &[f32; LINEAR_POINTS], value: f32) -> f32 {
    let x = value.clamp(0.0, 255.0) * LINEAR_STEPS; // exact: a power of two
    let i = (x as usize).min(LINEAR_POINTS - 2);
    let (a, b) = (table[i], table[i + 1]);
    a + (b - a) * (x - i as f32)
}

/// sRGB (0..=255 scale) to linear light, the reference encoder's formula.
fn srgb_to_linear(value: f32) -> f32 {
    let v = value / 255.0;
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

/// Linear light to an sRGB byte, the reference encoders' formula (C, TypeScript, Swift, Kotlin): half up,
/// `trunc(x + 0.5)`. (The `blurhash` crate rounds `x + 0.5` once more, so its DC can be one higher.)
fn linear_to_srgb(value: f32) -> u32 {
    let v = value.clamp(0.0, 1.0);
    if v <= 0.003_130_8 {
        (v * 12.92 * 255.0 + 0.5) as u32
    } else {
        ((1.055 * v.powf(1.0 / 2.4) - 0.055) * 255.0 + 0.5) as u32
    }
    .min(255)
}

fn sign_pow(value: f32, exp: f32) -> f32 {
    value.abs().powf(exp).copysign(value)
}

fn push_base83(value: u32, length: u32, out: &mut String) {
    for i in 1..=length {
        let digit = (value / 83u32.pow(length - i)) % 83;
        out.push(BASE83[digit as usize] as char);
    }
}

/// BlurHash of a checked working image. The sums run in the same order and precision as the reference
/// encoder's, with the cosines tabulated once per component.
fn encode_linear(image: &Working, cx: u32, cy: u32) -> Result<String, Error> {
    let w = image.width as usize;
    let table = srgb_to_linear_table();
    let linear: Vec<f32> = image
        .rgb
        .iter()
        .map(|&v| srgb_to_linear_interpolated(table, v))
        .collect();
    let mut factors: Vec<[f32; 3]> = Vec::with_capacity((cx * cy) as usize);
    let mut cos_x = vec![0.0f32; w];
    let mut cos_y = vec![0.0f32; image.height as usize];
    for j in 0..cy {
        let step_y = PI * j as f32 / image.source_height as f32;
        for (c, &y) in cos_y.iter_mut().zip(&image.rows) {
            *c = (step_y * y).cos();
        }
        for i in 0..cx {
            let step_x = PI * i as f32 / image.source_width as f32;
            for (c, &x) in cos_x.iter_mut().zip(&image.columns) {
                *c = (step_x * x).cos();
            }
            let (mut r, mut g, mut b) = (0.0f32, 0.0f32, 0.0f32);
            for (row, &cy_val) in linear.chunks_exact(w * 3).zip(&cos_y) {
                for (p, &cx_val) in row.chunks_exact(3).zip(&cos_x) {
                    let basis = cx_val * cy_val;
                    r += basis * p[0];
                    g += basis * p[1];
                    b += basis * p[2];
                }
            }
            let normalisation = if i == 0 && j == 0 { 1.0 } else { 2.0 };
            let scale = normalisation / (image.width * image.height) as f32;
            factors.push([r * scale, g * scale, b * scale]);
        }
    }

    let mut hash = String::with_capacity(4 + 2 * factors.len());
    push_base83((cx - 1) + (cy - 1) * 9, 1, &mut hash);
    let (dc, ac) = factors
        .split_first()
        .ok_or_else(|| Error::Internal("no factors".into()))?;
    let maximum = if ac.is_empty() {
        push_base83(0, 1, &mut hash);
        1.0
    } else {
        let actual = ac.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        let quantised = (actual * 166.0 - 0.5).floor().clamp(0.0, 82.0) as u32;
        push_base83(quantised, 1, &mut hash);
        (quantised + 1) as f32 / 166.0
    };
    push_base83(
        (linear_to_srgb(dc[0]) << 16) + (linear_to_srgb(dc[1]) << 8) + linear_to_srgb(dc[2]),
        4,
        &mut hash,
    );
    for factor in ac {
        let quant = |v: f32| ((sign_pow(v / maximum, 0.5) * 9.0 + 9.5).floor().clamp(0.0, 18.0)) as u32;
        push_base83(
            quant(factor[0]) * 19 * 19 + quant(factor[1]) * 19 + quant(factor[2]),
            2,
            &mut hash,
        );
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes a binary PPM (P6, maxval 255) test fixture.
    fn read_ppm(name: &str) -> (u32, u32, Vec<u8>) {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).to_string();
        let fields: Vec<&str> = text.split_ascii_whitespace().take(4).collect();
        assert_eq!("P6", fields[0]);
        let (w, h): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        let pixels = bytes[bytes.len() - (w * h * 3) as usize..].to_vec();
        (w, h, pixels)
    }

    /// Golden values: `tests/data/blurhash_golden.txt` lines `file cx cy hash`, made by blurhash-python
    /// (the C reference encoder) on the same pixels.
    fn golden() -> Vec<(String, u32, u32, String)> {
        let path = format!("{}/tests/data/blurhash_golden.txt", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn matches_the_reference_encoder_on_golden_images() {
        let cases = golden();
        assert!(cases.len() >= 4);
        for (file, cx, cy, expected) in cases {
            let (w, h, pixels) = read_ppm(&file);
            assert!(
                w <= WORKING_SIZE && h <= WORKING_SIZE,
                "golden images are not downsized"
            );
            assert_eq!(
                expected,
                encode(&pixels, w, h, Layout::Rgb, cx, cy).unwrap(),
                "{file} {cx}x{cy}"
            );
        }
    }

    #[test]
    fn matches_the_blurhash_crate_on_the_same_pixels_up_to_its_dc_rounding() {
        for (file, cx, cy, _) in golden() {
            let (w, h, pixels) = read_ppm(&file);
            let rgba: Vec<u8> = pixels
                .chunks_exact(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect();
            let theirs = blurhash_crate::encode(cx, cy, w, h, &rgba).unwrap();
            let ours = encode(&pixels, w, h, Layout::Rgb, cx, cy).unwrap();
            // Size flag, maximum and every AC component agree exactly.
            assert_eq!(theirs[..2], ours[..2], "{file} {cx}x{cy}");
            assert_eq!(theirs[6..], ours[6..], "{file} {cx}x{cy}");
            // The crate's DC channels are ours or one higher.
            let decode = |s: &str| {
                s.bytes().fold(0u32, |v, c| {
                    v * 83 + BASE83.iter().position(|&x| x == c).unwrap() as u32
                })
            };
            let (t, o) = (decode(&theirs[2..6]), decode(&ours[2..6]));
            for shift in [16, 8, 0] {
                let d = ((t >> shift) & 255) as i32 - ((o >> shift) & 255) as i32;
                assert!((0..=1).contains(&d), "{file} {cx}x{cy}: {theirs} vs {ours}");
            }
        }
    }

    #[test]
    fn linearising_through_the_table_is_exact_on_whole_values_and_close_between() {
        let table = srgb_to_linear_table();
        for v in 0..=255u8 {
            assert_eq!(
                srgb_to_linear_interpolated(table, v as f32),
                srgb_to_linear(v as f32),
                "{v}"
            );
        }
        for i in 0..=255_000u32 {
            let v = i as f32 / 1000.0;
            let (fast, exact) = (srgb_to_linear_interpolated(table, v), srgb_to_linear(v));
            assert!((fast - exact).abs() <= 4e-7, "{v}: {fast} against {exact}");
        }
    }

    #[test]
    fn known_hash_of_a_flat_colour() {
        // One component: size flag 0, maximum 0, DC of pure red.
        let red = [255u8, 0, 0].repeat(4);
        assert_eq!("00TI:j", encode(&red, 2, 2, Layout::Rgb, 1, 1).unwrap());
    }

    #[test]
    fn rejects_bad_components_and_sizes() {
        let px = [0u8; 12];
        assert_eq!(
            "bad-request",
            encode(&px, 2, 2, Layout::Rgb, 0, 3).unwrap_err().code()
        );
        assert_eq!(
            "bad-request",
            encode(&px, 2, 2, Layout::Rgb, 4, 10).unwrap_err().code()
        );
        assert_eq!(
            "bad-request",
            encode(&px, 3, 2, Layout::Rgb, 4, 3).unwrap_err().code()
        );
        assert_eq!(
            "bad-request",
            encode(&px, 0, 2, Layout::Rgb, 4, 3).unwrap_err().code()
        );
        assert_eq!(
            "bad-request",
            encode(&px, u32::MAX, u32::MAX, Layout::Rgba, 4, 3)
                .unwrap_err()
                .code()
        );
    }

    #[test]
    fn working_size_keeps_the_aspect_and_caps_the_long_side() {
        assert_eq!((64, 36), working_size(5640, 3172));
        assert_eq!((48, 64), working_size(3000, 4000));
        assert_eq!((64, 1), working_size(100_000, 1));
        assert_eq!((10, 7), working_size(10, 7));
    }

    #[test]
    fn shrinking_averages_areas() {
        // 128x2 image: left half black, right half white -> 64x1 working image, exact halves.
        let mut px = vec![0u8; 128 * 2 * 3];
        for y in 0..2 {
            for x in 64..128 {
                let i = (y * 128 + x) * 3;
                px[i..i + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let mut s = Shrinker::new(128, 2, 3).unwrap();
        for (y, row) in px.chunks_exact(128 * 3).enumerate() {
            s.add_row(y as u32, row, Layout::Rgb);
        }
        let w = s.into_working().unwrap();
        assert_eq!((64, 1), (w.width, w.height));
        assert_eq!(0.0, w.rgb[0]);
        assert_eq!(255.0, w.rgb[63 * 3]);
    }

    #[test]
    fn alpha_is_composited_over_white() {
        let px = [0u8, 0, 0, 0, 0, 0, 0, 255];
        let mut s = Shrinker::new(2, 1, 3).unwrap();
        s.add_row(0, &px, Layout::Rgba);
        assert_eq!(
            vec![255.0, 255.0, 255.0, 0.0, 0.0, 0.0],
            s.into_working().unwrap().rgb
        );
    }

    #[test]
    fn interlaced_rows_land_where_plain_rows_do() {
        let row: Vec<u8> = (0..200u32 * 3).map(|v| (v * 7 % 256) as u8).collect();
        let mut plain = Shrinker::new(200, 1, 3).unwrap();
        plain.add_row(0, &row, Layout::Rgb);
        let mut strided = Shrinker::new(200, 1, 3).unwrap();
        let even: Vec<u8> = row.chunks_exact(6).flat_map(|p| p[..3].to_vec()).collect();
        let odd: Vec<u8> = row.chunks_exact(6).flat_map(|p| p[3..].to_vec()).collect();
        strided.add_strided_row(0, 0, 2, &even, Layout::Rgb);
        strided.add_strided_row(0, 1, 2, &odd, Layout::Rgb);
        assert_eq!(plain.means(), strided.means());
    }

    #[test]
    fn sample_rows_match_single_samples() {
        let values: Vec<i32> = (0..77).map(|v| v * 37 % 255).collect();
        for (width, rx) in [(300u32, 4u32), (150, 2), (77, 1), (230, 3), (1000, 1)] {
            let mut rows = Shrinker::for_blocks(width * 8, 16, 8, 2).unwrap();
            let mut samples = Shrinker::for_blocks(width * 8, 16, 8, 2).unwrap();
            rows.add_sample_row(1, 1, &values, rx);
            for x in 0..width {
                if let Some(&v) = values.get((x / rx) as usize) {
                    samples.add_sample(1, x, 1, v);
                }
            }
            assert_eq!(samples.sums, rows.sums, "{width} {rx}");
            assert_eq!(samples.weights, rows.weights, "{width} {rx}");
        }
    }

    #[test]
    fn missing_rows_give_no_working_image() {
        let mut s = Shrinker::new(4, 4, 3).unwrap();
        s.add_row(0, &[0; 12], Layout::Rgb);
        assert!(s.into_working().is_none());
    }

    #[test]
    fn orientation_rotates_the_working_image() {
        // 2x1: red, blue. Orientation 6 (rotate 90 clockwise to display) -> 1x2: red on top.
        let w = Working::new(2, 1, vec![255.0, 0.0, 0.0, 0.0, 0.0, 255.0]);
        let r = w.clone().oriented(6);
        assert_eq!((1, 2), (r.width, r.height));
        assert_eq!(vec![255.0, 0.0, 0.0, 0.0, 0.0, 255.0], r.rgb);
        let r = w.clone().oriented(8);
        assert_eq!(vec![0.0, 0.0, 255.0, 255.0, 0.0, 0.0], r.rgb);
        assert_eq!(w.clone(), w.clone().oriented(1));
        assert_eq!(vec![0.0, 0.0, 255.0, 255.0, 0.0, 0.0], w.clone().oriented(2).rgb);
        // Positions follow the pixels: the displayed first column of a mirrored image is the last stored.
        let mut wide = Working::new(3, 1, vec![0.0; 9]);
        wide.columns = vec![1.0, 4.0, 7.0];
        wide.source_width = 9;
        assert_eq!(vec![1.0, 4.0, 7.0], wide.clone().oriented(2).columns);
        assert_eq!((vec![0.0], vec![1.0, 4.0, 7.0], 1, 9), {
            let t = wide.oriented(6);
            (t.columns, t.rows, t.source_width, t.source_height)
        });
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_pixels(w in 0u32..80, h in 0u32..80, cx in 0u32..11, cy in 0u32..11,
                                            bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = encode(&bytes, w, h, Layout::Rgba, cx, cy);
            let _ = encode(&bytes, w, h, Layout::Gray, cx, cy);
        }
    }
}
