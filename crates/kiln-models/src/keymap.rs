//! What a hub key map is: a rename of another library's tensor names to torchvision's, declared
//! by the family whose checkpoints it reads ([`crate::Family::key_maps`]); and the small
//! string helpers the families' maps share. No architecture is named here.

pub use kiln_preprocess::hubspec::KeyConvention;

/// One library's tensor names for one family, mapped to kiln's (torchvision's).
pub struct KeyMap {
    /// The convention a hub config selects ([`kiln_preprocess::hubspec::HubSpec::keys`]).
    pub convention: KeyConvention,
    /// The layout in words, for errors (`timm MobileNetV2`).
    pub label: &'static str,
    /// The names it knows, for errors.
    pub expected: &'static str,
    /// Other name → torchvision name; `None` for a name the layout does not have.
    pub rename: fn(&str) -> Option<String>,
}

/// The parameters of a batch norm, as state dicts name them.
pub const BN_PARAMS: [&str; 5] = [
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
];

/// `module.param` → `(module, param)`.
pub fn split_param(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.')
}
