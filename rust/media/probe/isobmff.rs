//! AVIF and HEIC (ISO base media files): dimensions from the `ispe` properties of the `meta` box.

use super::{be32, nonzero};

/// AVIF/HEIC: the largest `ispe` (image spatial extents) property in `meta/iprp/ipco`; the primary
/// image of a grid is the largest.
///
/// Only whole boxes are read, so that the answer never depends on how much of the file has arrived. A box
/// of size 0 runs to the end of its parent; at the top level, where that is the end of a file still
/// arriving, it ends the search.
pub fn image_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    /// Children of a box body (of the file itself when `top`): (type, body).
    fn boxes(data: &[u8], top: bool) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut pos = 0usize;
        std::iter::from_fn(move || {
            let size = be32(data, pos)? as usize;
            let kind = data.get(pos + 4..pos + 8)?;
            let (body_start, end) = match size {
                0 if top => return None,
                0 => (pos + 8, data.len()),
                1 => {
                    let large = u64::from_be_bytes(data.get(pos + 8..pos + 16)?.try_into().ok()?);
                    (pos + 16, pos.checked_add(usize::try_from(large).ok()?)?)
                }
                s if s >= 8 => (pos + 8, pos.checked_add(s)?),
                _ => return None,
            };
            let body = data.get(body_start..end)?;
            pos = end;
            Some((kind, body))
        })
    }
    fn find<'a>(data: &'a [u8], kind: &[u8], top: bool) -> Option<&'a [u8]> {
        boxes(data, top).find(|(k, _)| *k == kind).map(|(_, b)| b)
    }
    let meta = find(bytes, b"meta", true)?;
    let iprp = find(meta.get(4..)?, b"iprp", false)?; // meta is a full box: skip version and flags
    let ipco = find(iprp, b"ipco", false)?;
    boxes(ipco, false)
        .filter(|(k, _)| *k == b"ispe")
        .filter_map(|(_, b)| nonzero((be32(b, 4)?, be32(b, 8)?)))
        .max_by_key(|&(w, h)| w as u64 * h as u64)
}
