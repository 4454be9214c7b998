//! Reading and validating input images.
//!
//! Every failure is an [`InputError`] that names the source and the reason, so a caller can
//! report it per file and carry on with the rest of a batch.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;

use crate::InputError;

/// PIL's `Image.MAX_IMAGE_PIXELS`: above this, a header is treated as a decompression bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Limits and choices applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Smallest accepted width and height, in pixels.
    pub min_side: u32,
    /// Largest accepted width × height, checked from the header before any pixel is decoded.
    pub max_pixels: u64,
    /// Rotate/flip by the EXIF orientation tag, so the network sees the photo upright.
    pub apply_exif_orientation: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            min_side: 1,
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_exif_orientation: true,
        }
    }
}

/// A decoded, validated image in 8-bit RGB, with facts about the original.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Pixels, upright, 8-bit RGB.
    pub rgb: RgbImage,
    /// The container format, when decoded from bytes.
    pub format: Option<ImageFormat>,
    /// The colour type of the file before conversion (e.g. `L8`, `Rgba16`).
    pub original_color: image::ColorType,
    /// Whether an EXIF orientation other than "upright" was applied.
    pub reoriented: bool,
}

/// Reads and decodes an image file.
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<Decoded, InputError> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => InputError::NotFound {
            path: source.clone(),
        },
        std::io::ErrorKind::IsADirectory => InputError::Unreadable {
            path: source.clone(),
            reason: "is a directory".into(),
        },
        _ => InputError::Unreadable {
            path: source.clone(),
            reason: e.to_string(),
        },
    })?;
    decode_bytes(&bytes, &source, opts)
}

/// Decodes an encoded image held in memory. `source` names it in errors.
pub fn decode_bytes(
    bytes: &[u8],
    source: &str,
    opts: &DecodeOptions,
) -> Result<Decoded, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty {
            path: source.into(),
        });
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .expect("reading from memory cannot fail")
    };
    let format = reader().format().ok_or_else(|| InputError::NotAnImage {
        path: source.into(),
    })?;
    if format == ImageFormat::Jpeg {
        return crate::jpeg::decode_input(bytes, source, opts);
    }

    // The header alone gives the size: refuse bombs before the decoder allocates anything.
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| map_image_error(e, source, format))?;
    let pixels = w as u64 * h as u64;
    if pixels > opts.max_pixels {
        return Err(InputError::TooLarge {
            path: source.into(),
            width: w,
            height: h,
            max_pixels: opts.max_pixels,
        });
    }
    if w < opts.min_side || h < opts.min_side {
        return Err(InputError::TooSmall {
            path: source.into(),
            width: w,
            height: h,
            min_side: opts.min_side,
        });
    }

    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        // The decoder would fill the missing rows with grey and report success; PIL refuses
        // truncated files by default, and so do we.
        return Err(InputError::Corrupt {
            path: source.into(),
            reason: "truncated JPEG data (no end-of-image marker after the last scan)".into(),
        });
    }

    let mut r = reader();
    let mut limits = image::Limits::default();
    // Room for the largest accepted image at 16 bits per channel with alpha, and no more.
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(8).max(64 << 20));
    r.limits(limits);
    let mut decoder = r
        .into_decoder()
        .map_err(|e| map_image_error(e, source, format))?;
    let orientation = if opts.apply_exif_orientation {
        decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms)
    } else {
        image::metadata::Orientation::NoTransforms
    };
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, source, format))?;
    let original_color = img.color();
    let reoriented = orientation != image::metadata::Orientation::NoTransforms;
    img.apply_orientation(orientation);
    Ok(Decoded {
        rgb: to_rgb8(img),
        format: Some(format),
        original_color,
        reoriented,
    })
}

/// Whether a JPEG stream has an end-of-image marker (FF D9) after its last start-of-scan (FF DA).
/// Entropy-coded data escapes FF as FF 00, so these byte pairs only occur as markers; an
/// embedded EXIF thumbnail comes before the main image's scans and does not count.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Converts any colour type to 8-bit RGB the way PIL's `convert("RGB")` does: grey is
/// replicated, palette is expanded, and alpha is dropped (not composited), because that is what
/// the torchvision training pipelines this runtime reproduces did to their data.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // Spelled out so that alpha is discarded whatever `image` does with it in conversions.
        DynamicImage::ImageRgba8(rgba) => {
            let (w, h) = rgba.dimensions();
            let raw = rgba
                .into_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect();
            RgbImage::from_raw(w, h, raw).expect("sized")
        }
        DynamicImage::ImageLumaA8(la) => {
            let (w, h) = la.dimensions();
            let raw = la
                .into_raw()
                .chunks_exact(2)
                .flat_map(|p| [p[0]; 3])
                .collect();
            RgbImage::from_raw(w, h, raw).expect("sized")
        }
        other if other.color().has_alpha() => {
            let rgba16 = other.to_rgba16();
            let (w, h) = rgba16.dimensions();
            let to8 = |v: u16| ((v as u32 * 255 + 32767) / 65535) as u8;
            let raw = rgba16
                .into_raw()
                .chunks_exact(4)
                .flat_map(|p| [to8(p[0]), to8(p[1]), to8(p[2])])
                .collect();
            RgbImage::from_raw(w, h, raw).expect("sized")
        }
        other => other.to_rgb8(),
    }
}

fn map_image_error(e: image::ImageError, source: &str, format: ImageFormat) -> InputError {
    use image::ImageError as E;
    let path = source.to_string();
    match e {
        E::Unsupported(u) => InputError::Unsupported {
            path,
            reason: format!("{format:?}: {u}"),
        },
        E::Limits(l) => InputError::Corrupt {
            path,
            reason: format!("exceeds decoding limits: {l}"),
        },
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => InputError::Corrupt {
            path,
            reason: format!("truncated {format:?} data"),
        },
        other => InputError::Corrupt {
            path,
            reason: format!("{format:?}: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn refuses_bad_bytes_with_reasons() {
        let o = DecodeOptions::default();
        assert!(matches!(
            decode_bytes(b"", "a", &o),
            Err(InputError::Empty { .. })
        ));
        assert!(matches!(
            decode_bytes(b"hello, this is text", "t.jpg", &o),
            Err(InputError::NotAnImage { .. })
        ));
        let png = png_bytes(&DynamicImage::new_rgb8(40, 30));
        let cut = &png[..png.len() / 2];
        let e = decode_bytes(cut, "cut.png", &o).unwrap_err();
        assert!(matches!(e, InputError::Corrupt { .. }), "{e}");
        assert!(e.to_string().starts_with("cut.png"), "{e}");
    }

    #[test]
    fn size_limits_checked_from_header() {
        let png = png_bytes(&DynamicImage::new_rgb8(40, 30));
        let small = DecodeOptions {
            min_side: 32,
            ..Default::default()
        };
        assert!(matches!(
            decode_bytes(&png, "s", &small),
            Err(InputError::TooSmall {
                width: 40,
                height: 30,
                ..
            })
        ));
        let tiny_max = DecodeOptions {
            max_pixels: 1000,
            ..Default::default()
        };
        assert!(matches!(
            decode_bytes(&png, "s", &tiny_max),
            Err(InputError::TooLarge { .. })
        ));
    }

    #[test]
    fn converts_colour_types_to_rgb() {
        let o = DecodeOptions::default();
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(4, 4, image::Luma([77])));
        let d = decode_bytes(&png_bytes(&gray), "g", &o).unwrap();
        assert_eq!(d.rgb.get_pixel(1, 1).0, [77, 77, 77]);
        assert_eq!(d.original_color, image::ColorType::L8);

        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            4,
            4,
            image::Rgba([10, 20, 30, 0]),
        ));
        let d = decode_bytes(&png_bytes(&rgba), "a", &o).unwrap();
        assert_eq!(
            d.rgb.get_pixel(0, 0).0,
            [10, 20, 30],
            "alpha is dropped like PIL"
        );

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            4,
            4,
            image::Rgb([65535u16, 0, 32896]),
        ));
        let d = decode_bytes(&png_bytes(&deep), "d", &o).unwrap();
        assert_eq!(d.rgb.get_pixel(2, 2).0, [255, 0, 128]);
    }
}
