//! GIF, streamed: the logical screen's size from the first 10 bytes, then the first frame's rows, LZW-decoded
//! by the `gif` crate's push decoder as the bytes arrive, added to the working image over the screen
//! (outside the frame and in transparent pixels: white, once composited).
//!
//! Memory is one frame row of palette indices, one screen row of RGBA (both at most [`MAX_ROW_BYTES`]), a
//! flag per screen row, the LZW tables and the [`Shrinker`]. Later frames of an animation are never read:
//! the decoder is done after the first.

use super::blurhash::{Layout, Shrinker, Working};
use super::{le16, MAX_ROW_BYTES};
use crate::error::Error;
use gif::streaming_decoder::{Decoded, FrameDataType, OutputBuffer, StreamingDecoder};

fn corrupt(what: &str) -> Error {
    Error::bad_request(format!("corrupt GIF: {what}"))
}

/// The logical screen's width and height, from the first 10 bytes.
pub fn dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let dims = (le16(bytes, 6)? as u32, le16(bytes, 8)? as u32);
    (dims.0 > 0 && dims.1 > 0).then_some(dims)
}

/// The first frame being decoded.
struct Frame {
    left: u32,
    top: u32,
    transparent: Option<u8>,
    palette: Vec<u8>,
    /// Frame rows in the order the file stores them; `next` indexes it.
    order: Vec<u32>,
    next: usize,
    /// The row of indices being decoded, and how much of it has arrived.
    line: Vec<u8>,
    filled: usize,
    /// The screen row the frame row becomes.
    rgba: Vec<u8>,
    covered: Vec<bool>,
}

/// A GIF decoded as its bytes arrive.
pub struct GifStream {
    max_pixels: u64,
    decoder: StreamingDecoder,
    global: Option<Vec<u8>>,
    screen: Option<(u32, u32)>,
    frame: Option<Box<Frame>>,
    shrinker: Option<Shrinker>,
    outcome: Option<Result<Working, Error>>,
}

impl GifStream {
    /// A decoder that gives pixels only for images (screen and first frame) of at most `max_pixels` pixels.
    pub fn new(max_pixels: u64) -> GifStream {
        GifStream {
            max_pixels,
            decoder: StreamingDecoder::new(),
            global: None,
            screen: None,
            frame: None,
            shrinker: None,
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
        self.outcome
            .take()
            .unwrap_or_else(|| Err(corrupt("the data ends early")))
    }

    fn fail(&mut self, e: Error) {
        self.outcome = Some(Err(e));
        self.frame = None;
        self.shrinker = None;
    }

    fn allows(&self, width: u32, height: u32) -> bool {
        width as u64 * height as u64 <= self.max_pixels
    }

    fn run(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() && self.outcome.is_none() {
            // Decoded indices go straight into the rest of the current row (never an empty slice: the
            // decoder would drop data it cannot write).
            let (used, event) = match self.frame.as_deref_mut() {
                Some(frame) if frame.filled < frame.line.len() => {
                    let mut out = OutputBuffer::Slice(&mut frame.line[frame.filled..]);
                    self.decoder.update(data, &mut out)
                }
                _ => self.decoder.update(data, &mut OutputBuffer::None),
            }
            .map_err(|e| corrupt(&e.to_string()))?;
            data = &data[used..];
            if used == 0 && matches!(event, Decoded::Nothing) {
                return Err(corrupt("the decoder is stuck"));
            }
            match event {
                Decoded::GlobalPalette(palette) => self.global = Some(palette.into_vec()),
                Decoded::HeaderEnd => self.header_end()?,
                Decoded::FrameMetadata(FrameDataType::Pixels) => self.frame_start()?,
                Decoded::BytesDecoded(n) => self.decoded(n.get())?,
                Decoded::DataEnd => return Err(corrupt("the first frame ends early")),
                Decoded::BlockStart(gif::streaming_decoder::Block::Trailer) => {
                    return Err(corrupt("no frame"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn header_end(&mut self) -> Result<(), Error> {
        let (width, height) = (self.decoder.width() as u32, self.decoder.height() as u32);
        if width == 0 || height == 0 {
            return Err(corrupt("zero dimension"));
        }
        if !self.allows(width, height) {
            return Err(Error::TooLarge("GIF has too many pixels".into()));
        }
        if width as u64 * 4 > MAX_ROW_BYTES as u64 {
            return Err(Error::TooLarge("GIF rows are too long".into()));
        }
        self.screen = Some((width, height));
        Ok(())
    }

    fn frame_start(&mut self) -> Result<(), Error> {
        let (sw, sh) = self.screen.ok_or_else(|| corrupt("frame before the screen"))?;
        let info = self.decoder.current_frame();
        let (left, top, fw, fh) = (
            info.left as u32,
            info.top as u32,
            info.width as u32,
            info.height as u32,
        );
        // The frame may be larger than the screen; its pixels are decoded all the same, so it is limited too.
        if !self.allows(fw.max(1), fh.max(1)) {
            return Err(Error::TooLarge("GIF frame has too many pixels".into()));
        }
        if fw as usize > MAX_ROW_BYTES {
            return Err(Error::TooLarge("GIF frame rows are too long".into()));
        }
        let palette = info
            .palette
            .clone()
            .or_else(|| self.global.clone())
            .ok_or_else(|| corrupt("no palette"))?;
        let interlaced = info.interlaced;
        let order: Vec<u32> = if interlaced {
            (0..fh)
                .step_by(8)
                .chain((4..fh).step_by(8))
                .chain((2..fh).step_by(4))
                .chain((1..fh).step_by(2))
                .collect()
        } else {
            (0..fh).collect()
        };
        let frame = Frame {
            left,
            top,
            transparent: info.transparent,
            palette,
            order,
            next: 0,
            line: vec![0; fw as usize],
            filled: 0,
            rgba: vec![0; sw as usize * 4],
            covered: vec![false; sh as usize],
        };
        self.shrinker = Some(Shrinker::new(sw, sh, 3)?);
        self.frame = Some(Box::new(frame));
        if fw == 0 || fh == 0 {
            self.complete()?;
        }
        Ok(())
    }

    /// `n` more indices of the current row have arrived.
    fn decoded(&mut self, n: usize) -> Result<(), Error> {
        let (Some(frame), Some(shrinker)) = (self.frame.as_deref_mut(), self.shrinker.as_mut()) else {
            return Err(corrupt("pixels outside a frame"));
        };
        frame.filled += n;
        if frame.filled < frame.line.len() {
            return Ok(());
        }
        let Some(&fy) = frame.order.get(frame.next) else {
            return Err(corrupt("too many rows"));
        };
        frame.next += 1;
        frame.filled = 0;
        let y = frame.top + fy;
        if let Some(covered) = frame.covered.get_mut(y as usize) {
            *covered = true;
            frame.rgba.fill(0);
            for (i, &index) in frame.line.iter().enumerate() {
                let x = frame.left as usize + i;
                let (Some(px), Some(colour)) = (
                    frame.rgba.get_mut(x * 4..x * 4 + 4),
                    frame.palette.get(index as usize * 3..index as usize * 3 + 3),
                ) else {
                    continue;
                };
                if frame.transparent != Some(index) {
                    px[..3].copy_from_slice(colour);
                    px[3] = 255;
                }
            }
            shrinker.add_row(y, &frame.rgba, Layout::Rgba);
        }
        if frame.next == frame.order.len() {
            self.complete()?;
        }
        Ok(())
    }

    /// The first frame is complete: screen rows it did not cover are transparent.
    fn complete(&mut self) -> Result<(), Error> {
        let (Some(mut frame), Some(mut shrinker)) = (self.frame.take(), self.shrinker.take()) else {
            return Err(Error::Internal("no frame to complete".into()));
        };
        frame.rgba.fill(0);
        for (y, _) in frame.covered.iter().enumerate().filter(|(_, &c)| !c) {
            shrinker.add_row(y as u32, &frame.rgba, Layout::Rgba);
        }
        self.outcome = Some(shrinker.into_working().ok_or_else(|| corrupt("rows missing")));
        Ok(())
    }
}
