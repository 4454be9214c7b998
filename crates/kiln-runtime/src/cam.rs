//! Class activation maps (Zhou et al., 2016): where in the photo the network found a class.
//!
//! Every network kiln runs ends in global average pooling and one linear layer, so for class `c`
//! the logit is `mean over (x, y) of M_c(x, y) + b_c` with `M_c(x, y) = Σ_k w_ck · A_k(x, y)`,
//! `A_k` the last convolutional feature maps after their activation and `w` the classifier's
//! weights. `M_c` is exact (no gradients, no approximation) and comes from the same forward pass
//! that classifies. Grad-CAM reduces to it, up to scale, on these architectures.
//!
//! The map is given at three resolutions: raw (the feature maps', e.g. 7×7 for a 224 crop), on
//! the crop the network saw, and on the photo as decoded, with the centre crop and the resize
//! undone so that the heat sits on the pixels it came from. Both upsamplings are bilinear with
//! PyTorch's `align_corners=False` convention (`F.interpolate(mode="bilinear")`), and both sample
//! the raw map directly (the photo's map is not a resampling of the crop's).

use std::path::Path;

use candle_core::{DType, Device};
use image::RgbImage;
use kiln_preprocess::transform::{center_crop_origin, resized_size};
use kiln_preprocess::{decode_file, TrainingSpec};

use crate::classifier::{softmax, ClassScore, Classifier, Prediction};
use crate::RuntimeError;

/// Which classes to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassSelect {
    /// The `n` most probable (at least one).
    Top(usize),
    /// These class indices, in this order.
    Classes(Vec<usize>),
}

impl Default for ClassSelect {
    fn default() -> Self {
        ClassSelect::Top(1)
    }
}

/// A map of `h × w` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// `h · w` values, row after row.
    pub data: Vec<f32>,
}

impl Map {
    /// The value at row `y`, column `x`.
    pub fn at(&self, y: usize, x: usize) -> f32 {
        self.data[y * self.w + x]
    }

    /// Smallest and largest finite value (`(0, 0)` when there is none).
    pub fn range(&self) -> (f32, f32) {
        let mut it = self.data.iter().copied().filter(|v| v.is_finite());
        let Some(first) = it.next() else {
            return (0.0, 0.0);
        };
        it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)))
    }

    /// Row and column of the largest finite value (the first one on ties).
    pub fn argmax(&self) -> (usize, usize) {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (i, &v) in self.data.iter().enumerate() {
            if v.is_finite() && v > best.1 {
                best = (i, v);
            }
        }
        (best.0 / self.w.max(1), best.0 % self.w.max(1))
    }
}

/// The class activation map of one class for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Cam {
    /// The class, with its probability in this image.
    pub class: ClassScore,
    /// The class's rank in this image's prediction (1: the most probable).
    pub rank: usize,
    /// The class's logit.
    pub logit: f32,
    /// The class's classifier bias: `mean(raw) + bias = logit`.
    pub bias: f32,
    /// `M_c` at the feature maps' resolution.
    pub raw: Map,
    /// `M_c` upsampled to the crop the network saw (`spec.input_size`).
    pub crop: Map,
    /// `M_c` on the photo as decoded (after EXIF orientation): the resize and centre crop
    /// undone. Pixels the crop cut off were never seen by the network and are NaN.
    pub photo: Map,
}

/// An image's prediction and the maps asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The prediction, as `classify` gives it (no TTA).
    pub prediction: Prediction,
    /// One map per class asked for.
    pub cams: Vec<Cam>,
}

/// Where the crop the network saw lies in the photo: the spec's resize and centre crop for one
/// photo size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropGeometry {
    /// The photo's width and height.
    pub photo: (u32, u32),
    /// The resized image's width and height.
    pub resized: (u32, u32),
    /// The crop's top-left corner in the resized image (negative where it is padded).
    pub origin: (i64, i64),
    /// The crop's height and width.
    pub crop: (u32, u32),
}

impl CropGeometry {
    /// The geometry `spec` gives a `w × h` photo (as [`kiln_preprocess::transform::geometry`]
    /// computes it).
    pub fn of(spec: &TrainingSpec, w: u32, h: u32) -> Self {
        let resized = match &spec.resize {
            Some(r) => resized_size(w, h, r),
            None => (w, h),
        };
        let [ch, cw] = spec.center_crop.unwrap_or(spec.input_size);
        let (top, left) = center_crop_origin((resized.1, resized.0), (ch, cw));
        Self {
            photo: (w, h),
            resized,
            origin: (top, left),
            crop: (ch, cw),
        }
    }

    /// The photo's rectangle that the crop covers, clipped to the photo: `(x0, y0, x1, y1)` in
    /// photo pixels, half-open.
    pub fn photo_rect(&self) -> (f64, f64, f64, f64) {
        let sx = self.photo.0 as f64 / self.resized.0 as f64;
        let sy = self.photo.1 as f64 / self.resized.1 as f64;
        let (top, left) = (self.origin.0 as f64, self.origin.1 as f64);
        let x0 = (left * sx).max(0.0);
        let y0 = (top * sy).max(0.0);
        let x1 = ((left + self.crop.1 as f64) * sx).min(self.photo.0 as f64);
        let y1 = ((top + self.crop.0 as f64) * sy).min(self.photo.1 as f64);
        (x0, y0, x1, y1)
    }
}

/// PyTorch's bilinear source coordinate (`align_corners=False`): output position `pos` (a pixel
/// centre, in output pixels) of an axis scaled from `inp` to `out` samples input `i0`, `i1` with
/// weight `1 - l`, `l`.
fn source(pos: f64, inp: usize, out: f64) -> (usize, usize, f32) {
    let s = (pos * inp as f64 / out - 0.5).max(0.0);
    let i0 = (s.floor() as usize).min(inp - 1);
    let i1 = if i0 + 1 < inp { i0 + 1 } else { i0 };
    (i0, i1, (s - i0 as f64) as f32)
}

/// Samples `raw` bilinearly at a crop position `(cy, cx)` (continuous crop pixels, pixel `j`'s
/// centre at `j + 0.5`) of a `crop_h × crop_w` crop.
fn sample(raw: &Map, cy: f64, cx: f64, crop_h: f64, crop_w: f64) -> f32 {
    let (y0, y1, ly) = source(cy, raw.h, crop_h);
    let (x0, x1, lx) = source(cx, raw.w, crop_w);
    let top = raw.at(y0, x0) * (1.0 - lx) + raw.at(y0, x1) * lx;
    let bottom = raw.at(y1, x0) * (1.0 - lx) + raw.at(y1, x1) * lx;
    top * (1.0 - ly) + bottom * ly
}

/// `raw` upsampled to `h × w`, as `F.interpolate(raw, (h, w), mode="bilinear",
/// align_corners=False)`.
pub fn upsample(raw: &Map, h: usize, w: usize) -> Map {
    let mut data = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            data.push(sample(
                raw,
                y as f64 + 0.5,
                x as f64 + 0.5,
                h as f64,
                w as f64,
            ));
        }
    }
    Map { h, w, data }
}

/// `raw` (covering the crop of `geom`) on the photo: each photo pixel's centre is taken through
/// the resize (PIL and torchvision map output centre `j + 0.5` to input `(j + 0.5) · in / out`)
/// and the crop offset into crop coordinates, and the raw map sampled there. Pixels outside the
/// crop are NaN.
pub fn on_photo(raw: &Map, geom: &CropGeometry) -> Map {
    let (pw, ph) = (geom.photo.0 as usize, geom.photo.1 as usize);
    let (ch, cw) = (geom.crop.0 as f64, geom.crop.1 as f64);
    let kx = geom.resized.0 as f64 / pw as f64;
    let ky = geom.resized.1 as f64 / ph as f64;
    let (top, left) = (geom.origin.0 as f64, geom.origin.1 as f64);
    let mut data = Vec::with_capacity(pw * ph);
    for v in 0..ph {
        let cy = (v as f64 + 0.5) * ky - top;
        for u in 0..pw {
            let cx = (u as f64 + 0.5) * kx - left;
            data.push(if cy >= 0.0 && cy < ch && cx >= 0.0 && cx < cw {
                sample(raw, cy, cx, ch, cw)
            } else {
                f32::NAN
            });
        }
    }
    Map { h: ph, w: pw, data }
}

/// `M_c = Σ_k w_k · A_k` for one image's maps `[c, h, w]` (flattened) and one class's weights.
/// Accumulated in f64: the sum runs over up to 2048 channels.
pub fn class_map(maps: &[f32], channels: usize, h: usize, w: usize, weights: &[f32]) -> Map {
    let hw = h * w;
    let mut acc = vec![0f64; hw];
    for (k, &wk) in weights.iter().enumerate().take(channels) {
        let plane = &maps[k * hw..(k + 1) * hw];
        for (a, &v) in acc.iter_mut().zip(plane) {
            *a += wk as f64 * v as f64;
        }
    }
    Map {
        h,
        w,
        data: acc.into_iter().map(|v| v as f32).collect(),
    }
}

impl Classifier {
    /// The class index named by `s`: a number below the class count, or a label (exact, else
    /// case-insensitive if that is unambiguous).
    pub fn class_index(&self, s: &str) -> Result<usize, RuntimeError> {
        let labels = self.labels();
        let s = s.trim();
        if let Ok(i) = s.parse::<usize>() {
            if i < labels.len() {
                return Ok(i);
            }
            return Err(RuntimeError::UnknownClass(format!(
                "class index {i} is out of range: the model has {} classes (0..={})",
                labels.len(),
                labels.len().saturating_sub(1)
            )));
        }
        if let Some(i) = labels.iter().position(|l| l == s) {
            return Ok(i);
        }
        let folded: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i].eq_ignore_ascii_case(s))
            .collect();
        match folded.as_slice() {
            [i] => Ok(*i),
            [] => {
                let lower = s.to_lowercase();
                let near: Vec<String> = labels
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.to_lowercase().contains(&lower))
                    .take(5)
                    .map(|(i, l)| format!("{i} `{l}`"))
                    .collect();
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!("; labels containing it: {}", near.join(", "))
                };
                Err(RuntimeError::UnknownClass(format!(
                    "no class is labelled `{s}`{hint}"
                )))
            }
            many => Err(RuntimeError::UnknownClass(format!(
                "`{s}` matches {} labels when case is ignored ({}); give the index",
                many.len(),
                many.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Classifies a decoded image and computes the class activation maps of the classes
    /// `select` names, from one forward pass (see the [module docs](crate::cam)). The
    /// prediction keeps `top_k` classes; no TTA.
    pub fn explain_image(
        &self,
        img: &RgbImage,
        select: &ClassSelect,
        top_k: usize,
    ) -> Result<Explanation, RuntimeError> {
        self.check_size(img, "image")?;
        let classes = self.labels().len();
        if let ClassSelect::Classes(c) = select {
            if let Some(&bad) = c.iter().find(|&&i| i >= classes) {
                return Err(RuntimeError::UnknownClass(format!(
                    "class index {bad} is out of range: the model has {classes} classes"
                )));
            }
        }
        let x = self.input_tensor(&[self.preprocess(img)])?;
        let features = self.model().forward_features_batch(&x)?;
        let logits = features
            .logits
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?
            .remove(0);
        let probs = softmax(&logits);
        let wanted = match select {
            ClassSelect::Top(n) => (*n).max(1),
            ClassSelect::Classes(_) => 0,
        };
        let prediction = self.decode_probs(probs.clone(), top_k.max(wanted), None);
        let chosen: Vec<usize> = match select {
            ClassSelect::Top(_) => prediction
                .top
                .iter()
                .take(wanted)
                .map(|c| c.index)
                .collect(),
            ClassSelect::Classes(c) => c.clone(),
        };
        let maps = features
            .maps
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let (_, channels, fh, fw) = maps.dims4()?;
        let maps = maps.flatten_all()?.to_vec1::<f32>()?;
        let Some(linear) = self.model().classifier() else {
            return Err(kiln_models::ModelError::NoLinearHead {
                arch: self.spec().architecture.clone(),
            }
            .into());
        };
        let weight = linear.weight()?;
        let bias = linear
            .bias()
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        let (w, h) = img.dimensions();
        let geom = CropGeometry::of(self.spec(), w, h);
        let [ih, iw] = self.spec().input_size;
        let mut cams = Vec::with_capacity(chosen.len());
        for c in chosen {
            let wc = weight
                .get(c)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?;
            let raw = class_map(&maps, channels, fh, fw, &wc);
            cams.push(Cam {
                class: ClassScore {
                    index: c,
                    label: self.labels()[c].clone(),
                    prob: probs[c],
                },
                // Ties count as the lower index first, as in `decode_probs`.
                rank: 1 + probs
                    .iter()
                    .enumerate()
                    .filter(|&(i, &p)| p > probs[c] || (p == probs[c] && i < c))
                    .count(),
                logit: logits[c],
                bias: bias[c],
                crop: upsample(&raw, ih as usize, iw as usize),
                photo: on_photo(&raw, &geom),
                raw,
            });
        }
        Ok(Explanation { prediction, cams })
    }

    /// [`Classifier::explain_image`] for a file: decoded and validated as `classify` does.
    pub fn explain_path(
        &self,
        path: &Path,
        select: &ClassSelect,
        top_k: usize,
    ) -> Result<(Explanation, RgbImage), RuntimeError> {
        let d = decode_file(path, self.decode_options())?;
        self.check_size(&d.rgb, &path.display().to_string())?;
        Ok((self.explain_image(&d.rgb, select, top_k)?, d.rgb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Map {
        Map {
            h,
            w,
            data: (0..h * w)
                .map(|i| ((i * 7919) % 23) as f32 - 11.0)
                .collect(),
        }
    }

    /// A photo that needs no resize: its map, inside the crop, is the crop's map exactly, and
    /// NaN outside.
    #[test]
    fn photo_map_without_resize_is_the_crop_map() {
        let raw = ramp(7, 7);
        let geom = CropGeometry {
            photo: (256, 260),
            resized: (256, 260),
            origin: (18, 16),
            crop: (224, 224),
        };
        let crop = upsample(&raw, 224, 224);
        let photo = on_photo(&raw, &geom);
        for v in 0..260 {
            for u in 0..256 {
                let inside = (18..18 + 224).contains(&v) && (16..16 + 224).contains(&u);
                let p = photo.at(v, u);
                if inside {
                    assert_eq!(p, crop.at(v - 18, u - 16), "({v}, {u})");
                } else {
                    assert!(p.is_nan(), "({v}, {u}) outside the crop: {p}");
                }
            }
        }
        assert_eq!(geom.photo_rect(), (16.0, 18.0, 240.0, 242.0));
    }

    #[test]
    fn argmax_and_range_skip_nan() {
        let m = Map {
            h: 2,
            w: 2,
            data: vec![f32::NAN, 1.0, 3.0, -2.0],
        };
        assert_eq!(m.argmax(), (1, 0));
        assert_eq!(m.range(), (-2.0, 3.0));
    }
}
