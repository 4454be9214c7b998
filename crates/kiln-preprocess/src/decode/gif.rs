//! GIF read as PIL's `GifImagePlugin` reads it: the first frame only, then `convert("RGB")`.
//!
//! PIL loads frame 0 as palette indices on a canvas of the logical screen size. Outside the
//! frame's rectangle the canvas holds the frame's transparent index when it has one, else 0;
//! inside, every index is written as decoded, the transparent one included (transparency is
//! only metadata for mode `P`, and `convert("RGB")` ignores it). The palette is the frame's
//! local table, else the global one; without either the indices are grey levels (mode `L`).
//! Entries past the end of a short palette are black. XMP's `tiff:Orientation` is honoured, as
//! `Image.getexif` falls back to it.

use image::RgbImage;
use std::io::Cursor;

use super::exif::orientation_from_xmp;

pub(crate) struct Gif {
    pub rgb: RgbImage,
    pub orientation: Option<u16>,
}

pub(crate) fn decode(bytes: &[u8], max_alloc: u64) -> Result<Gif, String> {
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    opts.set_memory_limit(gif::MemoryLimit::Bytes(
        std::num::NonZeroU64::new(max_alloc.max(1)).expect("non-zero"),
    ));
    opts.check_frame_consistency(false);
    // A GIF with neither a global nor a local colour table is grey indices to PIL (mode `L`);
    // the `gif` crate refuses it, so give it a global grey ramp, which `needed` then drops.
    let patched;
    let bytes = if bytes.len() > 13 && bytes[10] & 0x80 == 0 && !has_local_table(bytes) {
        let mut b = bytes[..13].to_vec();
        b[10] |= 0x87;
        b.extend((0..=255u8).flat_map(|v| [v; 3]));
        b.extend_from_slice(&bytes[13..]);
        patched = b;
        &patched[..]
    } else {
        bytes
    };
    let mut dec = opts
        .read_info(Cursor::new(bytes))
        .map_err(|e| e.to_string())?;
    let (sw, sh) = (dec.width() as usize, dec.height() as usize);
    let global = dec.global_palette().map(needed);
    let frame = dec
        .read_next_frame()
        .map_err(|e| e.to_string())?
        .ok_or("image not found in GIF (no frame)")?;
    let fill = frame.transparent.unwrap_or(0);
    let mut idx = vec![fill; sw * sh];
    let (fl, ft, fw, fh) = (
        frame.left as usize,
        frame.top as usize,
        frame.width as usize,
        frame.height as usize,
    );
    for y in 0..fh {
        if ft + y >= sh {
            break;
        }
        for x in 0..fw.min(sw.saturating_sub(fl)) {
            idx[(ft + y) * sw + fl + x] = frame.buffer[y * fw + x];
        }
    }
    // A local table that is only the identity grey ramp makes the frame `L`, not the global
    // palette's `P` (PIL's `_is_palette_needed`).
    let palette = match &frame.palette {
        Some(local) => needed(local),
        None => global.flatten(),
    };
    let orientation = dec.xmp_metadata().and_then(orientation_from_xmp);
    let mut raw = Vec::with_capacity(sw * sh * 3);
    for &i in &idx {
        match &palette {
            Some(p) => {
                let o = i as usize * 3;
                raw.extend_from_slice(p.get(o..o + 3).unwrap_or(&[0, 0, 0]));
            }
            None => raw.extend_from_slice(&[i; 3]),
        }
    }
    let rgb = RgbImage::from_raw(sw as u32, sh as u32, raw).expect("sized");
    Ok(Gif { rgb, orientation })
}

/// PIL keeps a palette only when it is not the grey ramp `i → (i, i, i)`.
fn needed(p: &[u8]) -> Option<Vec<u8>> {
    let ramp = p
        .chunks(3)
        .enumerate()
        .all(|(i, c)| c.iter().all(|&v| v as usize == i));
    (!ramp).then(|| p.to_vec())
}

/// Whether the first image descriptor (after any extension blocks) has a local colour table.
fn has_local_table(b: &[u8]) -> bool {
    let mut i = 13;
    while i < b.len() {
        match b[i] {
            0x2C => return b.get(i + 9).is_some_and(|f| f & 0x80 != 0),
            0x21 => {
                // Extension: label, then sub-blocks until a zero length.
                i += 2;
                while let Some(&n) = b.get(i) {
                    i += 1 + n as usize;
                    if n == 0 {
                        break;
                    }
                }
            }
            _ => return false,
        }
    }
    false
}
