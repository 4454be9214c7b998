//! Resize, crop, scale and normalise, reproducing torchvision's eval transforms on PIL images.

use fast_image_resize as fr;
use image::RgbImage;

use crate::spec::{ChannelOrder, Interpolation, Layout, Resize, TrainingSpec};

/// A preprocessed image: `data` in the spec's layout without the batch dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensor {
    /// Values, contiguous.
    pub data: Vec<f32>,
    /// `[3, h, w]` for NCHW specs, `[h, w, 3]` for NHWC.
    pub shape: [usize; 3],
}

/// The size `Resize` produces for an image of `w`×`h`, as `(w, h)`.
///
/// For a shorter-side resize this is torchvision's rule: the short side becomes `s`, the long side
/// `int(s * long / short)`, truncated in double precision exactly as Python computes it.
pub fn resized_size(w: u32, h: u32, resize: &Resize) -> (u32, u32) {
    if let Some(s) = resize.shorter_side {
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let new_long = (s as f64 * long as f64 / short as f64) as u32;
        if w <= h {
            (s, new_long.max(1))
        } else {
            (new_long.max(1), s)
        }
    } else if let Some([rh, rw]) = resize.size {
        (rw, rh)
    } else {
        (w, h)
    }
}

/// Refuses an image whose resize would be larger than `max_pixels`: a 1×10000 strip resized to a
/// shorter side of 256 would need a 256×2,560,000 intermediate image. The decoder's pixel limit
/// cannot see this; it depends on the spec.
pub fn check_resize_fits(
    w: u32,
    h: u32,
    spec: &TrainingSpec,
    max_pixels: u64,
    source: &str,
) -> Result<(), crate::InputError> {
    if let Some(r) = &spec.resize {
        let (rw, rh) = resized_size(w, h, r);
        if rw as u64 * rh as u64 > max_pixels {
            return Err(crate::InputError::Unsupported {
                path: source.to_string(),
                reason: format!(
                    "a {w}x{h} image would be resized to {rw}x{rh} for this model, over the limit of {max_pixels} pixels (extreme aspect ratio)"
                ),
            });
        }
    }
    Ok(())
}

/// Resizes to `(w, h)` with the given filter, the way PIL does.
///
/// With `antialias` (the PIL path: torchvision's transforms on PIL images, where PIL always
/// antialiases) this is [`crate::pil::resample`] or, for nearest, [`crate::pil::nearest`]:
/// bit-exact ports of Pillow 13's `Image.resize`. Without it (torchvision's tensor path with
/// `antialias=False`) the filter keeps its fixed support.
pub fn resize_rgb(
    img: &RgbImage,
    w: u32,
    h: u32,
    interp: Interpolation,
    antialias: bool,
) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    if antialias {
        return match interp {
            Interpolation::Nearest => crate::pil::nearest(img, w, h),
            Interpolation::Bilinear => {
                crate::pil::resample(img, w, h, crate::pil::Filter::Bilinear)
            }
            Interpolation::Bicubic => crate::pil::resample(img, w, h, crate::pil::Filter::Bicubic),
            Interpolation::Lanczos => crate::pil::resample(img, w, h, crate::pil::Filter::Lanczos),
        };
    }
    let src =
        fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
            .expect("buffer matches dimensions");
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    let alg = match interp {
        Interpolation::Nearest => fr::ResizeAlg::Nearest,
        Interpolation::Bilinear => fr::ResizeAlg::Interpolation(fr::FilterType::Bilinear),
        Interpolation::Bicubic => fr::ResizeAlg::Interpolation(fr::FilterType::CatmullRom),
        Interpolation::Lanczos => fr::ResizeAlg::Interpolation(fr::FilterType::Lanczos3),
    };
    fr::Resizer::new()
        .resize(&src, &mut dst, &fr::ResizeOptions::new().resize_alg(alg))
        .expect("same pixel type, non-empty sizes");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("buffer matches dimensions")
}

/// Applies the spec's resize step.
pub fn apply_resize(img: &RgbImage, resize: &Resize) -> RgbImage {
    let (w, h) = resized_size(img.width(), img.height(), resize);
    resize_rgb(img, w, h, resize.interpolation, resize.antialias)
}

/// The top-left corner of torchvision's centre crop of `crop` out of `size` (both `(h, w)`).
/// torchvision rounds `(size - crop) / 2` with Python's `round`, which rounds halves to even.
/// Along an axis where the crop is larger than the image, torchvision first pads with
/// `(crop - size) // 2` zeros before (the odd one goes after), so the offset is that, negated.
pub fn center_crop_origin(size: (u32, u32), crop: (u32, u32)) -> (i64, i64) {
    let off = |s: u32, c: u32| {
        if c > s {
            -(((c - s) / 2) as i64)
        } else {
            ((s as f64 - c as f64) / 2.0).round_ties_even() as i64
        }
    };
    (off(size.0, crop.0), off(size.1, crop.1))
}

/// Crops `[h, w]` at `(top, left)`; pixels outside the image are zero, as torchvision pads them.
pub fn crop(img: &RgbImage, top: i64, left: i64, h: u32, w: u32) -> RgbImage {
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    if top >= 0 && left >= 0 && top + h as i64 <= ih && left + w as i64 <= iw {
        return image::imageops::crop_imm(img, left as u32, top as u32, w, h).to_image();
    }
    let mut out = RgbImage::new(w, h);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let (sy, sx) = (y + top, x + left);
            if sy >= 0 && sy < ih && sx >= 0 && sx < iw {
                out.put_pixel(x as u32, y as u32, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// torchvision's `CenterCrop((h, w))`.
pub fn center_crop(img: &RgbImage, h: u32, w: u32) -> RgbImage {
    let (top, left) = center_crop_origin((img.height(), img.width()), (h, w));
    crop(img, top, left, h, w)
}

/// Resize and crop as the spec says, giving an image of exactly `spec.input_size`.
pub fn geometry(img: &RgbImage, spec: &TrainingSpec) -> RgbImage {
    let resized = match &spec.resize {
        Some(r) => apply_resize(img, r),
        None => img.clone(),
    };
    let [ch, cw] = spec.center_crop.unwrap_or(spec.input_size);
    center_crop(&resized, ch, cw)
}

/// Scale, normalise, order channels and lay out an image that already has the input size.
///
/// The arithmetic is torchvision's, in f32: `(x / 255 - mean) / std`.
pub fn to_tensor(img: &RgbImage, spec: &TrainingSpec) -> ImageTensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let order: [usize; 3] = match spec.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let mut data = vec![0f32; 3 * w * h];
    let raw = img.as_raw();
    for (c, &src_c) in order.iter().enumerate() {
        let (mean, std) = (spec.mean[c], spec.std[c]);
        for i in 0..w * h {
            let v = (spec.scale.apply(raw[i * 3 + src_c]) - mean) / std;
            match spec.layout {
                Layout::Nchw => data[c * w * h + i] = v,
                Layout::Nhwc => data[i * 3 + c] = v,
            }
        }
    }
    let shape = match spec.layout {
        Layout::Nchw => [3, h, w],
        Layout::Nhwc => [h, w, 3],
    };
    ImageTensor { data, shape }
}

/// The whole eval transform: resize, centre crop, scale, normalise, channel order, layout.
pub fn preprocess(img: &RgbImage, spec: &TrainingSpec) -> ImageTensor {
    to_tensor(&geometry(img, spec), spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Preset;

    #[test]
    fn torchvision_resize_rule() {
        let r = Preset::TorchvisionImagenet.spec("m", 10).resize.unwrap();
        assert_eq!(resized_size(500, 375, &r), (341, 256));
        assert_eq!(resized_size(375, 500, &r), (256, 341));
        assert_eq!(resized_size(100, 100, &r), (256, 256));
        // 256 * 333 / 199 = 428.38 -> 428
        assert_eq!(resized_size(333, 199, &r), (428, 256));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // (257 - 224) / 2 = 16.5 -> 16; (259 - 224) / 2 = 17.5 -> 18
        assert_eq!(center_crop_origin((257, 259), (224, 224)), (16, 18));
        // Smaller than the crop: negative offset, padded with zeros.
        assert_eq!(center_crop_origin((200, 224), (224, 224)), (-12, 0));
        // Padding puts the odd zero row after the image (torchvision's `(c - s) // 2` before).
        assert_eq!(center_crop_origin((221, 97), (300, 300)), (-39, -101));
        let img = RgbImage::from_pixel(10, 10, image::Rgb([9, 9, 9]));
        let c = center_crop(&img, 12, 10);
        assert_eq!(c.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(0, 1).0, [9, 9, 9]);
    }

    #[test]
    fn normalises_in_spec_order_and_layout() {
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 51]));
        let mut spec = Preset::KerasCaffe.spec("m", 10);
        let t = to_tensor(&img, &spec);
        assert_eq!(t.shape, [3, 2, 2]);
        // BGR: channel 0 is blue (51) minus the blue mean.
        assert!((t.data[0] - (51.0 - 103.939)).abs() < 1e-4);
        assert!((t.data[8] - (255.0 - 123.68)).abs() < 1e-4);
        spec.layout = Layout::Nhwc;
        let t = to_tensor(&img, &spec);
        assert_eq!(t.shape, [2, 2, 3]);
        assert!((t.data[2] - (255.0 - 123.68)).abs() < 1e-4);
    }
}

/// Test-time augmentation: which views of an image are classified and averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tta {
    /// The spec's single centre view.
    #[default]
    None,
    /// The centre view and its mirror image.
    Flip,
    /// Four corner crops and the centre crop of the resized image (torchvision `FiveCrop`).
    FiveCrop,
    /// The five crops and their mirror images (torchvision `TenCrop`).
    TenCrop,
    /// The centre view with the spec's resize at three scales: ×0.875 (the crop itself for
    /// the ImageNet recipe), ×1, ×1.25.
    MultiScale,
}

impl Tta {
    /// Parses `none`, `flip`, `five-crop`, `ten-crop`, `multi-scale`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Tta::None,
            "flip" => Tta::Flip,
            "five-crop" => Tta::FiveCrop,
            "ten-crop" => Tta::TenCrop,
            "multi-scale" => Tta::MultiScale,
            _ => return None,
        })
    }

    /// Number of views per image.
    pub fn views(self) -> usize {
        match self {
            Tta::None => 1,
            Tta::Flip => 2,
            Tta::FiveCrop => 5,
            Tta::TenCrop => 10,
            Tta::MultiScale => 3,
        }
    }
}

/// The views of `img` that `tta` asks for, each preprocessed as the spec says.
pub fn tta_views(img: &RgbImage, spec: &TrainingSpec, tta: Tta) -> Vec<ImageTensor> {
    let [ch, cw] = spec.center_crop.unwrap_or(spec.input_size);
    let resized = || match &spec.resize {
        Some(r) => apply_resize(img, r),
        None => img.clone(),
    };
    let flip = image::imageops::flip_horizontal;
    let geoms: Vec<RgbImage> = match tta {
        Tta::None => vec![geometry(img, spec)],
        Tta::Flip => {
            let g = geometry(img, spec);
            let f = flip(&g);
            vec![g, f]
        }
        Tta::FiveCrop | Tta::TenCrop => {
            let r = resized();
            let (h, w) = (r.height() as i64, r.width() as i64);
            let (bottom, right) = (h - ch as i64, w - cw as i64);
            let mut v = vec![
                crop(&r, 0, 0, ch, cw),
                crop(&r, 0, right, ch, cw),
                crop(&r, bottom, 0, ch, cw),
                crop(&r, bottom, right, ch, cw),
                center_crop(&r, ch, cw),
            ];
            if tta == Tta::TenCrop {
                let flipped: Vec<_> = v.iter().map(flip).collect();
                v.extend(flipped);
            }
            v
        }
        Tta::MultiScale => [0.875, 1.0, 1.25]
            .iter()
            .map(|&k| {
                let mut s = spec.clone();
                if let Some(r) = s.resize.as_mut() {
                    let scale = |v: u32| ((v as f64 * k).round() as u32).max(1);
                    r.shorter_side = r.shorter_side.map(scale);
                    r.size = r.size.map(|[a, b]| [scale(a), scale(b)]);
                }
                geometry(img, &s)
            })
            .collect(),
    };
    geoms.iter().map(|g| to_tensor(g, spec)).collect()
}

#[cfg(test)]
mod tta_tests {
    use super::*;
    use crate::spec::Preset;

    #[test]
    fn views_have_input_size_and_flip_mirrors() {
        let mut img = RgbImage::new(300, 260);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 255 / 299) as u8, 0, 0]);
        }
        let spec = Preset::TorchvisionImagenet.spec("m", 10);
        for t in [
            Tta::None,
            Tta::Flip,
            Tta::FiveCrop,
            Tta::TenCrop,
            Tta::MultiScale,
        ] {
            let v = tta_views(&img, &spec, t);
            assert_eq!(v.len(), t.views());
            assert!(v.iter().all(|x| x.shape == [3, 224, 224]));
        }
        let v = tta_views(&img, &spec, Tta::Flip);
        // Red increases left to right; mirrored, it decreases.
        assert!(v[0].data[0] < v[0].data[223]);
        assert!(v[1].data[0] > v[1].data[223]);
        assert_eq!(v[0].data[0], v[1].data[223]);
        assert_eq!(Tta::parse("ten-crop"), Some(Tta::TenCrop));
    }
}
