//! Reading and validating input images.
//!
//! Every failure is an [`InputError`] that names the source and the reason, so a caller can
//! report it per file and carry on with the rest of a batch.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::Path;

mod bmp;
mod ccitt;
pub(crate) mod exif;
mod gif;
mod png;
mod tiff;
mod tiff_raw;

use crate::InputError;

/// PIL's `Image.MAX_IMAGE_PIXELS`: above this, a header is treated as a decompression bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Limits and choices applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Smallest accepted width and height, in pixels. `0` asks a `Classifier` to derive it from
    /// its spec ([`min_side_for_input`]); decoding on its own then accepts any size.
    pub min_side: u32,
    /// Largest accepted width × height, checked from the header before any pixel is decoded.
    pub max_pixels: u64,
    /// Rotate/flip by the EXIF orientation tag, so the network sees the photo upright.
    pub apply_exif_orientation: bool,
}

/// The default minimum side for a network whose input is `input_size` (`[h, w]`): an eighth of
/// its smaller side (28 px for 224×224 inputs, 4 px for 32×32), at least 1. An image under it
/// would be upsampled more than 8× — a tracking pixel or an icon, not a photo to trust a class
/// for.
pub fn min_side_for_input(input_size: [u32; 2]) -> u32 {
    (input_size[0].min(input_size[1]) / 8).max(1)
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
///
/// Third-party decoders run under [`std::panic::catch_unwind`]: a decoder that panics on a
/// malformed file costs that file an [`InputError::Corrupt`], never the process (the release
/// profile unwinds; it must not be built with `panic = "abort"`).
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
    guarded(source, || decode_unguarded(bytes, source, opts))
}

/// Runs `f`, turning a panic inside it into `source`'s [`InputError::Corrupt`].
fn guarded(
    source: &str,
    f: impl FnOnce() -> Result<Decoded, InputError>,
) -> Result<Decoded, InputError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(InputError::Corrupt {
                path: source.into(),
                reason: format!("the decoder failed on this file (internal panic: {msg})"),
            })
        }
    }
}

/// The format from the file's signature. BigTIFF (`II+\0` / `MM\0+`) is TIFF to the `tiff`
/// crate, but the `image` crate's signature table does not list it.
fn guess_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"II\x2B\0") || bytes.starts_with(b"MM\0\x2B") {
        return Some(ImageFormat::Tiff);
    }
    image::guess_format(bytes).ok()
}

fn decode_unguarded(
    bytes: &[u8],
    source: &str,
    opts: &DecodeOptions,
) -> Result<Decoded, InputError> {
    let format = guess_format(bytes).ok_or_else(|| InputError::NotAnImage {
        path: source.into(),
    })?;
    // kiln's own decoder, equal to PIL's libjpeg-turbo (see `crate::jpeg`); it checks the header
    // limits and the end-of-image marker itself.
    if format == ImageFormat::Jpeg {
        return crate::jpeg::decode_input(bytes, source, opts);
    }
    let reader = || ImageReader::with_format(Cursor::new(bytes), format);
    let corrupt = |reason: String| InputError::Corrupt {
        path: source.into(),
        reason,
    };
    if format == ImageFormat::Bmp {
        // kiln's own reader, following PIL's `BmpImagePlugin` (see `bmp`).
        let bmp_err = |e: bmp::BmpError| match e {
            bmp::BmpError::Unsupported(reason) => InputError::Unsupported {
                path: source.into(),
                reason,
            },
            bmp::BmpError::Corrupt(reason) => corrupt(reason),
        };
        let header = bmp::parse(bytes).map_err(bmp_err)?;
        check_header_size(header.width, header.height, opts, source)?;
        let rgb = bmp::decode(bytes, &header).map_err(bmp_err)?;
        return Ok(Decoded {
            rgb,
            format: Some(format),
            original_color: image::ColorType::Rgb8,
            reoriented: false,
        });
    }
    if format == ImageFormat::Tiff {
        // Layouts the `tiff` crate refuses and PIL reads (palette, 2/4-bit, signed, 12-bit,
        // float grey), read as PIL reads them (see `tiff_raw`).
        if let Some(r) = tiff_raw::decode(bytes, |w, h| check_header_size(w, h, opts, source)) {
            let (rgb, orientation) = r.map_err(|e| match e {
                tiff_raw::RawError::Input(e) => e,
                tiff_raw::RawError::Corrupt(reason) => corrupt(reason),
                tiff_raw::RawError::Unsupported(reason) => InputError::Unsupported {
                    path: source.into(),
                    reason,
                },
            })?;
            let orientation = if opts.apply_exif_orientation {
                exif::to_orientation(orientation)
            } else {
                image::metadata::Orientation::NoTransforms
            };
            let mut img = DynamicImage::ImageRgb8(rgb);
            img.apply_orientation(orientation);
            return Ok(Decoded {
                rgb: img.into_rgb8(),
                format: Some(format),
                original_color: image::ColorType::Rgb8,
                reoriented: orientation != image::metadata::Orientation::NoTransforms,
            });
        }
    }
    if format == ImageFormat::Png {
        png::check_ihdr(bytes).map_err(|r| InputError::Unsupported {
            path: source.into(),
            reason: r,
        })?;
    }

    // The header alone gives the size: refuse bombs before the decoder allocates anything.
    // (Planar TIFFs from the `tiff` crate's own header reading: `image` refuses some layouts,
    // grey + extra sample, that `tiff::decode_planar` reads.)
    let planar_dims = (format == ImageFormat::Tiff)
        .then(|| tiff::planar_dimensions(bytes))
        .flatten();
    let (w, h) = match planar_dims {
        Some(d) => d,
        None => reader()
            .into_dimensions()
            .map_err(|e| map_image_error(e, source, format))?,
    };
    check_header_size(w, h, opts, source)?;
    // Room for the largest accepted image at 16 bits per channel with alpha, and no more.
    let max_alloc = opts.max_pixels.saturating_mul(8).max(64 << 20);

    let (rgb, original_color, orientation) = match format {
        ImageFormat::Png => {
            let prepared = png::prepare(bytes).map_err(&corrupt)?;
            let p = png::decode(&prepared, max_alloc).map_err(&corrupt)?;
            (p.rgb, p.color, exif::to_orientation(p.orientation))
        }
        ImageFormat::Gif => {
            let g = gif::decode(bytes, max_alloc).map_err(|e| corrupt(format!("GIF: {e}")))?;
            (
                g.rgb,
                image::ColorType::Rgb8,
                exif::to_orientation(g.orientation),
            )
        }
        ImageFormat::Tiff if tiff::is_planar(bytes) => {
            let img =
                tiff::decode_planar(bytes, max_alloc).map_err(|r| corrupt(format!("TIFF: {r}")))?;
            let color = img.color();
            let orientation = reader()
                .into_decoder()
                .ok()
                .and_then(|mut d| d.orientation().ok())
                .unwrap_or(image::metadata::Orientation::NoTransforms);
            (to_rgb8(img), color, orientation)
        }
        _ => {
            let mut r = reader();
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(max_alloc);
            r.limits(limits);
            let mut decoder = r
                .into_decoder()
                .map_err(|e| map_image_error(e, source, format))?;
            let orientation = if format == ImageFormat::WebP {
                // image 0.25's WebP decoder does not accept the `Exif\0\0` prefix that WebP
                // writers keep in the EXIF chunk; PIL strips it.
                let exif = decoder
                    .exif_metadata()
                    .map_err(|e| map_image_error(e, source, format))?;
                exif::to_orientation(exif.as_deref().and_then(exif::orientation_from_exif))
            } else {
                decoder
                    .orientation()
                    .unwrap_or(image::metadata::Orientation::NoTransforms)
            };
            let img = DynamicImage::from_decoder(decoder)
                .map_err(|e| map_image_error(e, source, format))?;
            let color = img.color();
            let rgb = if format == ImageFormat::Tiff
                && color.has_alpha()
                && color.channel_count() == 4
                && tiff::associated_alpha(bytes)
            {
                // Premultiplied alpha: PIL divides it out before `convert("RGB")` drops it.
                let mut rgba = match img {
                    DynamicImage::ImageRgba16(i) => {
                        i.into_raw().iter().map(|v| (v >> 8) as u8).collect()
                    }
                    other => other.into_rgba8().into_raw(),
                };
                tiff::unpremultiply(&mut rgba);
                to_rgb8(DynamicImage::ImageRgba8(
                    image::RgbaImage::from_raw(w, h, rgba).expect("sized"),
                ))
            } else {
                to_rgb8(img)
            };
            (rgb, color, orientation)
        }
    };
    let orientation = if opts.apply_exif_orientation {
        orientation
    } else {
        image::metadata::Orientation::NoTransforms
    };
    let reoriented = orientation != image::metadata::Orientation::NoTransforms;
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(Decoded {
        rgb: img.into_rgb8(),
        format: Some(format),
        original_color,
        reoriented,
    })
}

/// Refuses, from the header's size alone and before any pixel memory is allocated, an image
/// over `max_pixels` (decompression bomb) or under `min_side`.
pub(crate) fn check_header_size(
    w: u32,
    h: u32,
    opts: &DecodeOptions,
    source: &str,
) -> Result<(), InputError> {
    if w as u64 * h as u64 > opts.max_pixels {
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
    Ok(())
}

/// Converts any colour type to 8-bit RGB the way PIL's `convert("RGB")` does: grey is
/// replicated, palette is expanded, and alpha is dropped (not composited), because that is what
/// the torchvision training pipelines this runtime reproduces did to their data.
///
/// 16-bit data follows PIL's modes: 16-bit grey is PIL's `I;16`, which `convert("RGB")` *clips*
/// at 255 (Convert.c `I16_RGB`); 16-bit colour and grey+alpha are read by PIL's `;16` unpackers
/// into 8-bit modes keeping the high byte. Neither is a rounding rescale.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from = |raw: Vec<u8>| RgbImage::from_raw(w, h, raw).expect("sized");
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // Spelled out so that alpha is discarded whatever `image` does with it in conversions.
        DynamicImage::ImageRgba8(rgba) => from(
            rgba.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        DynamicImage::ImageLumaA8(la) => from(
            la.into_raw()
                .chunks_exact(2)
                .flat_map(|p| [p[0]; 3])
                .collect(),
        ),
        DynamicImage::ImageLuma16(l) => from(
            l.into_raw()
                .into_iter()
                .flat_map(|v| [v.min(255) as u8; 3])
                .collect(),
        ),
        DynamicImage::ImageLumaA16(la) => from(
            la.into_raw()
                .chunks_exact(2)
                .flat_map(|p| [(p[0] >> 8) as u8; 3])
                .collect(),
        ),
        DynamicImage::ImageRgb16(rgb) => {
            from(rgb.into_raw().into_iter().map(|v| (v >> 8) as u8).collect())
        }
        DynamicImage::ImageRgba16(rgba) => from(
            rgba.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
        ),
        other if other.color().has_alpha() => {
            let rgba = other.to_rgba8();
            from(
                rgba.into_raw()
                    .chunks_exact(4)
                    .flat_map(|p| [p[0], p[1], p[2]])
                    .collect(),
            )
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
    fn a_decoder_panic_is_that_files_error() {
        let e = guarded("x.tif", || panic!("assertion failed: inside a decoder")).unwrap_err();
        assert!(matches!(e, InputError::Corrupt { .. }), "{e}");
        let s = e.to_string();
        assert!(
            s.starts_with("x.tif") && s.contains("assertion failed"),
            "{s}"
        );
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
        // PIL's RGB;16B unpacker keeps the high byte: 32896 = 0x8080 -> 0x80.
        assert_eq!(d.rgb.get_pixel(2, 2).0, [255, 0, 128]);
        let deep = DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(3, 1, |x, _| {
            image::Luma([[200u16, 255, 256][x as usize]])
        }));
        let d = decode_bytes(&png_bytes(&deep), "d", &o).unwrap();
        assert_eq!(
            d.rgb.as_raw(),
            &[200, 200, 200, 255, 255, 255, 255, 255, 255],
            "PIL's I;16 -> RGB clips at 255"
        );
    }
}
