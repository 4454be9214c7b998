//! The activation applied in a kernel's output pass.

/// Activation fused after a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }

    /// The activation as a clamp `x.max(lo).min(hi)`, for branch-free inner loops.
    #[inline(always)]
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
        }
    }

    /// Applies the activation in place.
    pub fn apply_slice(self, xs: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Relu6 => xs.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        }
    }
}
