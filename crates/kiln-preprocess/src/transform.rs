//! Resize, crop, scale and normalise, reproducing torchvision's eval transforms on PIL images.

use image::RgbImage;

use crate::spec::{
    ChannelOrder, Interpolation, Layout, Pipeline, PixelScale, Resize, TrainingSpec,
};
use crate::tensor_resize::{self, TensorMode};

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
    // Without antialias (which PIL does not have) this is torchvision's tensor path; PIL's
    // NEAREST picks the pixel under each output centre, PyTorch's nearest-exact.
    let mode = match interp {
        Interpolation::Nearest => TensorMode::NearestExact,
        other => tensor_mode(other, Pipeline::TorchvisionTensor),
    };
    resize_tensor_u8(
        img,
        w,
        h,
        mode,
        antialias || interp == Interpolation::Lanczos,
    )
}

/// The interpolate mode a tensor pipeline uses for `interp`: torchvision's NEAREST is
/// PyTorch's `nearest`; transformers maps PIL's NEAREST to `nearest-exact`.
pub fn tensor_mode(interp: Interpolation, pipeline: Pipeline) -> TensorMode {
    match interp {
        Interpolation::Nearest if pipeline == Pipeline::TransformersTorchvision => {
            TensorMode::NearestExact
        }
        Interpolation::Nearest => TensorMode::Nearest,
        Interpolation::Bilinear => TensorMode::Bilinear,
        Interpolation::Bicubic => TensorMode::Bicubic,
        Interpolation::Lanczos => TensorMode::Lanczos,
    }
}

fn resize_tensor_u8(img: &RgbImage, w: u32, h: u32, mode: TensorMode, antialias: bool) -> RgbImage {
    let out = tensor_resize::resize_u8(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        3,
        w as usize,
        h as usize,
        mode,
        antialias,
    );
    RgbImage::from_raw(w, h, out).expect("buffer matches dimensions")
}

/// Resizes as the spec's pipeline does: PIL's resampler, or PyTorch's interpolate on the uint8
/// tensor (transformers' torchvision backend always antialiases).
pub fn resize_for(img: &RgbImage, w: u32, h: u32, r: &Resize, pipeline: Pipeline) -> RgbImage {
    if !pipeline.resizes_tensors() {
        return resize_rgb(img, w, h, r.interpolation, r.antialias);
    }
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    let antialias = r.antialias || pipeline == Pipeline::TransformersTorchvision;
    resize_tensor_u8(img, w, h, tensor_mode(r.interpolation, pipeline), antialias)
}

/// Applies the spec's resize step.
pub fn apply_resize(img: &RgbImage, resize: &Resize) -> RgbImage {
    let (w, h) = resized_size(img.width(), img.height(), resize);
    resize_rgb(img, w, h, resize.interpolation, resize.antialias)
}

/// Applies the spec's resize step, through the spec's pipeline.
fn apply_resize_spec(img: &RgbImage, spec: &TrainingSpec) -> RgbImage {
    match &spec.resize {
        Some(r) => {
            let (w, h) = resized_size(img.width(), img.height(), r);
            resize_for(img, w, h, r, spec.pipeline)
        }
        None => img.clone(),
    }
}

/// The top-left corner of the centre crop as the spec's pipeline places it: torchvision
/// rounds `(size − crop) / 2` half to even; transformers' PIL backend floors it (`//`), its
/// torchvision backend truncates it (`int(...)`), padding first when the crop is larger.
pub fn center_crop_origin_for(
    size: (u32, u32),
    crop: (u32, u32),
    pipeline: Pipeline,
) -> (i64, i64) {
    let d = |s: u32, c: u32| s as i64 - c as i64;
    match pipeline {
        Pipeline::TransformersPil => (
            d(size.0, crop.0).div_euclid(2),
            d(size.1, crop.1).div_euclid(2),
        ),
        Pipeline::TransformersTorchvision => (d(size.0, crop.0) / 2, d(size.1, crop.1) / 2),
        _ => center_crop_origin(size, crop),
    }
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
///
/// For the `torchvision-tensor-float` pipeline this is the uint8 approximation of a float
/// path; [`preprocess`] and [`tta_views`] keep that pipeline in float.
pub fn geometry(img: &RgbImage, spec: &TrainingSpec) -> RgbImage {
    let resized = apply_resize_spec(img, spec);
    spec_crop(&resized, spec)
}

fn spec_crop(resized: &RgbImage, spec: &TrainingSpec) -> RgbImage {
    let [ch, cw] = spec.center_crop.unwrap_or(spec.input_size);
    let (top, left) =
        center_crop_origin_for((resized.height(), resized.width()), (ch, cw), spec.pipeline);
    crop(resized, top, left, ch, cw)
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
    // transformers' torchvision backend folds the rescale into mean and std (float32) and
    // normalises the 0..255 values: (x − 255·mean) / (255·std).
    let fused =
        spec.pipeline == Pipeline::TransformersTorchvision && spec.scale == PixelScale::Unit;
    for (c, &src_c) in order.iter().enumerate() {
        let (mean, std) = if fused {
            (spec.mean[c] * 255.0, spec.std[c] * 255.0)
        } else {
            (spec.mean[c], spec.std[c])
        };
        for i in 0..w * h {
            let x = raw[i * 3 + src_c];
            let v = if fused {
                (x as f32 - mean) / std
            } else {
                (spec.scale.apply(x) - mean) / std
            };
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
    if spec.pipeline == Pipeline::TorchvisionTensorFloat {
        let p = FloatPlanes::resized(img, spec);
        let [ch, cw] = spec.center_crop.unwrap_or(spec.input_size);
        let (top, left) = center_crop_origin((p.h as u32, p.w as u32), (ch, cw));
        return p.view(top, left, ch, cw, false, spec);
    }
    to_tensor(&geometry(img, spec), spec)
}

/// An RGB image as float32 planes `x / 255`, for the `torchvision-tensor-float` pipeline.
struct FloatPlanes {
    data: Vec<f32>,
    h: usize,
    w: usize,
}

impl FloatPlanes {
    fn resized(img: &RgbImage, spec: &TrainingSpec) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let raw = img.as_raw();
        let mut data = vec![0f32; 3 * w * h];
        for c in 0..3 {
            for i in 0..w * h {
                data[c * w * h + i] = raw[i * 3 + c] as f32 / 255.0;
            }
        }
        let Some(r) = &spec.resize else {
            return Self { data, h, w };
        };
        let (ow, oh) = resized_size(img.width(), img.height(), r);
        let (ow, oh) = (ow as usize, oh as usize);
        let mode = tensor_mode(r.interpolation, spec.pipeline);
        let data = tensor_resize::resize_f32(&data, 3, h, w, oh, ow, mode, r.antialias);
        Self { data, h: oh, w: ow }
    }

    /// Crop (zero outside), optional mirror, normalise, order and lay out.
    fn view(
        &self,
        top: i64,
        left: i64,
        ch: u32,
        cw: u32,
        flip: bool,
        spec: &TrainingSpec,
    ) -> ImageTensor {
        let (ch, cw) = (ch as usize, cw as usize);
        let order: [usize; 3] = match spec.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let mut data = vec![0f32; 3 * ch * cw];
        for (c, &src_c) in order.iter().enumerate() {
            let plane = &self.data[src_c * self.h * self.w..(src_c + 1) * self.h * self.w];
            for y in 0..ch {
                for x in 0..cw {
                    let sx = if flip { cw - 1 - x } else { x };
                    let (yy, xx) = (y as i64 + top, sx as i64 + left);
                    let v =
                        if yy >= 0 && xx >= 0 && (yy as usize) < self.h && (xx as usize) < self.w {
                            plane[yy as usize * self.w + xx as usize]
                        } else {
                            0.0
                        };
                    let v = (v - spec.mean[c]) / spec.std[c];
                    match spec.layout {
                        Layout::Nchw => data[c * ch * cw + y * cw + x] = v,
                        Layout::Nhwc => data[(y * cw + x) * 3 + c] = v,
                    }
                }
            }
        }
        let shape = match spec.layout {
            Layout::Nchw => [3, ch, cw],
            Layout::Nhwc => [ch, cw, 3],
        };
        ImageTensor { data, shape }
    }
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
    if spec.pipeline == Pipeline::TorchvisionTensorFloat {
        return tta_views_float(img, spec, tta);
    }
    let [ch, cw] = spec.center_crop.unwrap_or(spec.input_size);
    let resized = || apply_resize_spec(img, spec);
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
                spec_crop(&r, spec),
            ];
            if tta == Tta::TenCrop {
                let flipped: Vec<_> = v.iter().map(flip).collect();
                v.extend(flipped);
            }
            v
        }
        Tta::MultiScale => multi_scale_specs(spec).map(|s| geometry(img, &s)).collect(),
    };
    geoms.iter().map(|g| to_tensor(g, spec)).collect()
}

/// The multi-scale views' specs: the resize at ×0.875, ×1 and ×1.25 (rounded, at least 1).
fn multi_scale_specs(spec: &TrainingSpec) -> impl Iterator<Item = TrainingSpec> + '_ {
    [0.875, 1.0, 1.25].into_iter().map(move |k: f64| {
        let mut s = spec.clone();
        if let Some(r) = s.resize.as_mut() {
            let scale = |v: u32| ((v as f64 * k).round() as u32).max(1);
            r.shorter_side = r.shorter_side.map(scale);
            r.size = r.size.map(|[a, b]| [scale(a), scale(b)]);
        }
        s
    })
}

/// [`tta_views`] for the `torchvision-tensor-float` pipeline: the same views, cut from the
/// float resize.
fn tta_views_float(img: &RgbImage, spec: &TrainingSpec, tta: Tta) -> Vec<ImageTensor> {
    let [ch, cw] = spec.center_crop.unwrap_or(spec.input_size);
    let centre = |p: &FloatPlanes, flip: bool| {
        let (top, left) = center_crop_origin((p.h as u32, p.w as u32), (ch, cw));
        p.view(top, left, ch, cw, flip, spec)
    };
    match tta {
        Tta::None => vec![preprocess(img, spec)],
        Tta::Flip => {
            let p = FloatPlanes::resized(img, spec);
            vec![centre(&p, false), centre(&p, true)]
        }
        Tta::FiveCrop | Tta::TenCrop => {
            let p = FloatPlanes::resized(img, spec);
            let (bottom, right) = (p.h as i64 - ch as i64, p.w as i64 - cw as i64);
            let corners = [(0, 0), (0, right), (bottom, 0), (bottom, right)];
            let flips: &[bool] = if tta == Tta::TenCrop {
                &[false, true]
            } else {
                &[false]
            };
            let mut v = vec![];
            for &flip in flips {
                v.extend(
                    corners
                        .iter()
                        .map(|&(t, l)| p.view(t, l, ch, cw, flip, spec)),
                );
                v.push(centre(&p, flip));
            }
            v
        }
        Tta::MultiScale => multi_scale_specs(spec)
            .map(|s| preprocess(img, &s))
            .collect(),
    }
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
