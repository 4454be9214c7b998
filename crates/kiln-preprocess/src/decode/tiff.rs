//! TIFFs whose samples are stored plane by plane (`PlanarConfiguration = 2`), assembled here
//! chunk by chunk.
//!
//! `tiff` 0.11.3's `Decoder::read_image` panics on tiled planar files
//! (`assertion failed: buf.len() >= layout.row_stride * (data_dims.1 as usize - 1) +
//! data_row_bytes`, decoder/image.rs:919): for planar data it sizes the output for the first
//! plane only (its own docs list this under "Bugs" of `image_buffer_layout`) and then copies
//! tiles of the later planes past its end. Reading each chunk alone with `read_chunk`, which
//! allocates per chunk, avoids that path.

use image::{DynamicImage, ImageBuffer};
use std::io::Cursor;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

/// The size of a planar TIFF (first image), from the `tiff` crate's header reading.
pub(crate) fn planar_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if !is_planar(bytes) {
        return None;
    }
    Decoder::new(Cursor::new(bytes)).ok()?.dimensions().ok()
}

/// Whether the file is a planar TIFF (first image), read by [`decode_planar`].
pub(crate) fn is_planar(bytes: &[u8]) -> bool {
    Decoder::new(Cursor::new(bytes)).ok().and_then(|mut d| {
        d.find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
            .ok()
            .flatten()
    }) == Some(2)
}

/// A planar 8- or 16-bit grey/RGB(A) TIFF, with its alpha un-premultiplied as PIL's `RGBa`
/// unpackers do when `ExtraSamples` says the alpha is associated.
pub(crate) fn decode_planar(bytes: &[u8], max_alloc: u64) -> Result<DynamicImage, String> {
    let e = |e: tiff::TiffError| e.to_string();
    let mut limits = Limits::default();
    limits.decoding_buffer_size = usize::try_from(max_alloc).unwrap_or(usize::MAX);
    let mut d = Decoder::new(Cursor::new(bytes))
        .map_err(e)?
        .with_limits(limits);
    let (w, h) = d.dimensions().map_err(e)?;
    let spp = d
        .find_tag_unsigned::<u32>(Tag::SamplesPerPixel)
        .map_err(e)?
        .unwrap_or(1) as usize;
    if !matches!(spp, 1..=4) {
        return Err(format!(
            "planar TIFF with {spp} samples per pixel is not supported"
        ));
    }
    let associated = associated_alpha(bytes);
    // Grey + an extra sample is PIL's mode `L`: only the first plane is read (libtiff does not
    // decode the other, which may even be damaged).
    let spp = if spp == 2 { 1 } else { spp };
    let (cw, ch) = d.chunk_dimensions();
    let across = w.div_ceil(cw) as usize;
    let down = h.div_ceil(ch) as usize;
    let per_plane = across * down;
    let (w_, h_) = (w as usize, h as usize);
    let mut planes8: Vec<u8> = vec![];
    let mut planes16: Vec<u16> = vec![];
    for i in 0..per_plane * spp {
        let (plane, t) = (i / per_plane, i % per_plane);
        let (x0, y0) = ((t % across) * cw as usize, (t / across) * ch as usize);
        let (dw, dh) = d.chunk_data_dimensions(i as u32);
        let (dw, dh) = (dw as usize, dh as usize);
        let chunk = d.read_chunk(i as u32).map_err(e)?;
        let mut put = |get: &dyn Fn(usize) -> u16, sixteen: bool| {
            if sixteen && planes16.is_empty() {
                planes16 = vec![0; w_ * h_ * spp];
            } else if !sixteen && planes8.is_empty() {
                planes8 = vec![0; w_ * h_ * spp];
            }
            for y in 0..dh.min(h_.saturating_sub(y0)) {
                for x in 0..dw.min(w_.saturating_sub(x0)) {
                    let o = ((y0 + y) * w_ + x0 + x) * spp + plane;
                    let v = get(y * dw + x);
                    if sixteen {
                        planes16[o] = v;
                    } else {
                        planes8[o] = v as u8;
                    }
                }
            }
        };
        match &chunk {
            DecodingResult::U8(v) => put(&|k| v.get(k).copied().unwrap_or(0) as u16, false),
            DecodingResult::U16(v) => put(&|k| v.get(k).copied().unwrap_or(0), true),
            // Signed 8-bit samples: PIL reads their bytes as unsigned `L` (as for chunky ones).
            DecodingResult::I8(v) => put(&|k| v.get(k).copied().unwrap_or(0) as u8 as u16, false),
            _ => {
                return Err(
                    "planar TIFF with samples other than 8 or 16 bits is not supported".into(),
                )
            }
        }
    }
    let img = if !planes16.is_empty() {
        // PIL keeps the high byte of 16-bit colour samples (its `;16` unpackers).
        let mut hi: Vec<u8> = planes16.iter().map(|v| (v >> 8) as u8).collect();
        if spp == 4 && associated {
            unpremultiply(&mut hi);
        }
        planes8 = hi;
        planes8
    } else {
        if spp == 4 && associated {
            unpremultiply(&mut planes8);
        }
        planes8
    };
    let bad = || "planar TIFF: sample buffer does not match the image size".to_string();
    Ok(match spp {
        1 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, img).ok_or_else(bad)?),
        3 => DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, img).ok_or_else(bad)?),
        _ => DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, img).ok_or_else(bad)?),
    })
}

/// Whether the first image's first extra sample is associated (premultiplied) alpha, which PIL
/// reads with its `RGBa` unpackers.
pub(crate) fn associated_alpha(bytes: &[u8]) -> bool {
    Decoder::new(Cursor::new(bytes))
        .ok()
        .and_then(|mut d| {
            d.find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
                .ok()
                .flatten()
        })
        .is_some_and(|v| v.first() == Some(&1))
}

/// PIL's `unpackRGBa` on 8-bit RGBA: colour 0 where alpha is 0, else `min(c * 255 / a, 255)`
/// with integer (truncating) division; 16-bit data is first cut to its high bytes.
pub(crate) fn unpremultiply(rgba: &mut [u8]) {
    for p in rgba.chunks_exact_mut(4) {
        let a = p[3] as u32;
        for c in &mut p[..3] {
            *c = match a {
                0 => 0,
                255 => *c,
                _ => (*c as u32 * 255 / a).min(255) as u8,
            };
        }
    }
}
