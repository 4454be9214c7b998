//! Architecture names → builders, collected from the families' own declarations.
//!
//! Each model file declares one [`Family`] (`pub static FAMILY`): its variants and their
//! builders, its parameters and their check, the keys that identify its checkpoints, its
//! classifier, the training spec its reference weights expect, and other libraries' names for
//! its tensors. This file only lists the families ([`FAMILIES`]) and looks names up; it knows no
//! architecture.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use candle_nn::VarBuilder;
use kiln_preprocess::Preset;

use crate::{ImageModel, ModelError};

/// Architecture parameters by name (e.g. `width_mult`), as found in a spec's `arch_params`.
pub type ArchParams = BTreeMap<String, f64>;

/// Builds a variant from weights and (already checked) parameters.
pub type Builder = fn(VarBuilder, &ArchParams) -> candle_core::Result<Box<dyn ImageModel>>;

/// Checks a family's parameter values (names are checked against [`Family::params`] first);
/// `Err((param, value, expected))` names the first bad one.
pub type ParamCheck = fn(&ArchParams) -> Result<(), (String, f64, String)>;

/// Every family kiln can build: one line per model file.
pub static FAMILIES: &[&Family] = &[
    &crate::mobilenet_v2::FAMILY,
    &crate::resnet::FAMILY,
    &crate::efficientnet_lite::FAMILY,
    &crate::mobilenet_v3::FAMILY,
];

/// One architecture family, declared in its model file.
pub struct Family {
    /// The family (and model file) name, e.g. `resnet`.
    pub name: &'static str,
    /// The first convolution's weight: with the classifier's, what a state dict of this family
    /// must contain whatever its size (used to find wrapper prefixes in checkpoints).
    pub stem_key: &'static str,
    /// Key prefix of the final linear layer (its `.weight` rows are the class count).
    pub classifier: &'static str,
    /// Parameters its variants accept, with their defaults, for `kiln inspect` and `--help`.
    pub params: &'static [(&'static str, f64)],
    /// Checks parameter values.
    pub check: ParamCheck,
    /// The preprocessing its reference weights were trained with (its default training spec).
    /// Declared for tools and exporters; a spec travelling with the weights always wins.
    pub preset: Preset,
    /// Its variants, by registry name.
    pub variants: &'static [Variant],
    /// Other libraries' tensor names for its checkpoints (timm's, transformers'), renamed to
    /// kiln's when a hub model is loaded.
    pub key_maps: &'static [crate::keymap::KeyMap],
}

/// One variant of a family: a registry name and its builder.
pub struct Variant {
    /// Registry name, e.g. `resnet50`.
    pub name: &'static str,
    /// Builds the network from weights.
    pub build: Builder,
}

/// One registered architecture (a family's variant, with the family's data).
pub struct ArchEntry {
    /// Registry name, e.g. `resnet50`.
    pub name: &'static str,
    /// Family (the model file), e.g. `resnet`.
    pub family: &'static str,
    /// Key prefix of the final linear layer (its `.weight` rows are the class count).
    pub classifier: &'static str,
    /// Parameters it accepts, with their defaults, for `kiln inspect` and `--help`.
    pub params: &'static [(&'static str, f64)],
    /// Builds the network from weights.
    pub build: Builder,
    /// The family it belongs to.
    pub declared: &'static Family,
}

impl ArchEntry {
    /// The first convolution's weight key (see [`Family::stem_key`]).
    pub fn stem_key(&self) -> &'static str {
        self.declared.stem_key
    }
}

static ENTRIES: LazyLock<Vec<ArchEntry>> = LazyLock::new(|| {
    FAMILIES
        .iter()
        .flat_map(|f| {
            f.variants.iter().map(move |v| ArchEntry {
                name: v.name,
                family: f.name,
                classifier: f.classifier,
                params: f.params,
                build: v.build,
                declared: f,
            })
        })
        .collect()
});

/// Every architecture kiln can build, family by family.
pub fn architectures() -> impl Iterator<Item = &'static ArchEntry> {
    ENTRIES.iter()
}

/// The key map some family declares for `convention`.
pub fn key_map(convention: crate::keymap::KeyConvention) -> Option<&'static crate::keymap::KeyMap> {
    FAMILIES
        .iter()
        .flat_map(|f| f.key_maps)
        .find(|m| m.convention == convention)
}

/// A parameter's value, or its default.
pub fn param(p: &ArchParams, name: &str, default: f64) -> f64 {
    p.get(name).copied().unwrap_or(default)
}

/// [`ParamCheck`] for families without parameters (names were already checked).
pub fn no_params(_: &ArchParams) -> Result<(), (String, f64, String)> {
    Ok(())
}

/// Looks up an architecture by name.
pub fn find(name: &str) -> Result<&'static ArchEntry, ModelError> {
    architectures()
        .find(|a| a.name == name)
        .ok_or_else(|| ModelError::UnknownArchitecture {
            name: name.to_string(),
            known: architectures()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Validates the parameters and builds `name` from the weights under `vb`.
pub fn build(
    name: &str,
    params: &ArchParams,
    vb: VarBuilder,
) -> Result<Box<dyn ImageModel>, ModelError> {
    let entry = find(name)?;
    for key in params.keys() {
        if !entry.params.iter().any(|(p, _)| p == key) {
            return Err(ModelError::BadParam {
                arch: name.into(),
                param: key.clone(),
                value: params[key].to_string(),
                expected: format!(
                    "one of the parameters {} accepts: [{}]",
                    name,
                    entry
                        .params
                        .iter()
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    (entry.declared.check)(params).map_err(|(param, value, expected)| ModelError::BadParam {
        arch: name.into(),
        param,
        value: value.to_string(),
        expected,
    })?;
    (entry.build)(vb, params).map_err(|e| ModelError::Weights {
        arch: name.into(),
        error: without_backtrace(e),
    })
}

/// candle attaches a backtrace to errors when `RUST_BACKTRACE` is set; a missing key or a wrong
/// shape is the user's data, not a bug, so the message alone is what they should see.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are unique across families, and each key convention has one family's map.
    #[test]
    fn names_and_key_maps_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for a in architectures() {
            assert!(seen.insert(a.name), "{} registered twice", a.name);
        }
        let maps: Vec<_> = FAMILIES.iter().flat_map(|f| f.key_maps).collect();
        for (i, m) in maps.iter().enumerate() {
            assert!(
                maps[..i].iter().all(|o| o.convention != m.convention),
                "{:?} declared twice",
                m.convention
            );
        }
    }
}
