//! A training stage's discriminator (`discriminator = { … }`): adversarial distillation, where a
//! small MLP learns to tell the teacher's tap from the student's and the student, besides its
//! loss terms, learns to fool it ([`crate::graph::discriminator`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::{DiscriminatorSpec, Graph};

use super::config::{Config, MAX_WIDTH, OptimizerConfig, StageConfig};
use super::method::{Fault, Method};
use super::stage::{optimizer, seed_of};

/// `discriminator = { … }` of a `train` stage with one teacher.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// The tap it reads, of the student and of the teacher (the same shape).
    #[serde(default = "default_tap")]
    pub tap: String,
    /// Its hidden widths (leaky ReLU 0.2 after each).
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// The weight of the student's adversarial term, `BCE(D(s), 1)`.
    #[serde(default = "default_weight")]
    pub weight: f32,
    /// Its optimizer (its learning rate stays constant).
    pub optimizer: OptimizerConfig,
}

fn default_tap() -> String {
    "logits".into()
}
fn default_hidden() -> Vec<usize> {
    vec![64]
}
fn default_weight() -> f32 {
    1.0
}

impl DiscriminatorConfig {
    /// The step's discriminator for stage `stage` of a run seeded `seed`.
    pub fn spec(&self, seed: u64, stage: &str) -> DiscriminatorSpec {
        DiscriminatorSpec {
            tap: self.tap.clone(),
            hidden: self.hidden.clone(),
            weight: self.weight,
            optimizer: optimizer(&self.optimizer),
            seed: seed_of(seed, &format!("{stage}/discriminator")),
        }
    }
}

/// A stage's discriminator fits it: one model against one teacher, a tap both have with the same
/// shape (the logits when the teacher's outputs are cached), sizes and weights in range. Errors
/// name keys relative to the stage.
pub(super) fn check(
    stage: &StageConfig,
    config: &Config,
    graphs: &BTreeMap<&str, Graph>,
) -> Result<(), Fault> {
    let Some(d) = &stage.discriminator else {
        return Ok(());
    };
    let at = |key: &str| format!("discriminator.{key}");
    let (Ok(Method::Offline), [student], [teacher]) = (
        Method::of(stage, stage.branches(config)),
        stage.train.as_slice(),
        stage.teachers.as_slice(),
    ) else {
        return Err((
            "discriminator".into(),
            "a discriminator plays one trained model against one teacher".into(),
        ));
    };
    if d.hidden.len() > 16 {
        return Err((
            at("hidden"),
            format!("at most 16 layers, got {}", d.hidden.len()),
        ));
    }
    if let Some(i) = d.hidden.iter().position(|&w| !(1..=MAX_WIDTH).contains(&w)) {
        return Err((
            at(&format!("hidden[{i}]")),
            format!("must be from 1 to {MAX_WIDTH}, got {}", d.hidden[i]),
        ));
    }
    if !(d.weight.is_finite() && d.weight >= 0.0) {
        return Err((
            at("weight"),
            format!("must be a number ≥ 0, got {}", d.weight),
        ));
    }
    d.optimizer
        .check()
        .map_err(|(key, m)| (at(&format!("optimizer{key}")), m))?;
    if config.data.teacher_cache && d.tap != "logits" {
        return Err((
            at("tap"),
            "with data.teacher_cache the teacher's logits are what is stored: the discriminator reads tap = \"logits\"".into(),
        ));
    }
    let shape = |name: &str| {
        let g = &graphs[name];
        g.tapped(&d.tap)
            .map(|v| g.shape(v).to_vec())
            .map_err(|e| (at("tap"), format!("{name}: {e}")))
    };
    let (s, t) = (shape(student)?, shape(teacher)?);
    if s != t {
        return Err((
            at("tap"),
            format!(
                "the student's '{}' is {s:?} but the teacher's is {t:?}",
                d.tap
            ),
        ));
    }
    Ok(())
}
