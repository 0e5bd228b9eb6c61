//! The distillation method of a stage, derived once from its configuration. The method owns the
//! rules that depend on it (what a term may read, where its target comes from) and the expansion
//! of the configured loss terms into the compiled step's terms:
//!
//! - **offline**: one model, alone or against frozen teachers (several teachers as one ensemble
//!   whose logits are their softened mixture); each term as configured;
//! - **mutual** (online, deep mutual learning): several models trained together as one graph of
//!   peers; every term applies to each peer, and a logits term without teachers pulls each peer
//!   toward every other's detached output with weight 1/(K − 1);
//! - **self-distillation** (Be Your Own Teacher): one model with auxiliary classifier heads on
//!   taps; label terms train the model and every head, logits terms pull each head toward the
//!   model's own detached logits, feature terms pull each head's tap toward a deeper tap;
//! - **multi-branch** (ONE, on-the-fly native ensemble): one model of several branches and a
//!   gate whose weighted sum of the branches' logits is the model's output; label terms train
//!   the ensemble and every branch, logits terms pull each branch toward the detached ensemble.

use crate::graph::{LossSpec, PEER, Paraphraser};
use crate::kernels::losses::Role;

use super::config::{LossConfig, StageConfig};

/// How a stage trains its models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// One model, alone or against frozen teachers.
    Offline,
    /// Several models trained together as peers.
    Mutual,
    /// One model with auxiliary heads on its taps.
    SelfDistillation,
    /// One model of this many branches whose gated ensemble teaches each of them (ONE).
    Branches(usize),
}

/// A configuration error: the key at fault (relative to the stage, e.g. `heads`) and what is
/// wrong.
pub type Fault = (String, String);

impl Method {
    /// The method of `stage`, with the rules on which models it trains; `branches` is the
    /// branch count of the one model it trains (0 when it trains several or a single-branch
    /// one).
    pub fn of(stage: &StageConfig, branches: usize) -> Result<Method, Fault> {
        if branches > 0 {
            if !stage.heads.is_empty() || !stage.teachers.is_empty() {
                return Err((
                    "train".into(),
                    "a multi-branch model is its own teacher (its gated ensemble): no heads or teachers"
                        .into(),
                ));
            }
            return Ok(Method::Branches(branches));
        }
        if stage.heads.is_empty() {
            return Ok(if stage.train.len() > 1 {
                Method::Mutual
            } else {
                Method::Offline
            });
        }
        if stage.train.len() != 1 || !stage.teachers.is_empty() {
            return Err((
                "heads".into(),
                "self-distillation trains one model by itself: one model in train, no teachers"
                    .into(),
            ));
        }
        Ok(Method::SelfDistillation)
    }

    /// Checks configured term `j` (its loss already resolved) against the method: where its
    /// target comes from and which taps it may set.
    pub fn check_term(self, j: usize, term: &LossConfig, has_teachers: bool) -> Result<(), Fault> {
        let at = |key: &str| format!("losses[{j}]{key}");
        let loss = term.loss().map_err(|(key, m)| (at(&key), m))?;
        let def = loss.def();
        term.check_taps(def).map_err(|(key, m)| (at(&key), m))?;
        if def.inputs.iter().any(|i| i.role == Role::Target) {
            let message = format!(
                "{}'s targets are supplied by a data-free or adversarial scheme, not by a \
                 configured term (a stage's discriminator = {{ … }} uses bce, deep_inversion \
                 stages bn_match); it runs through `wgdistill op`",
                def.name
            );
            return Err((at(".kind"), message));
        }
        if !def.needs_teacher() {
            if !term.teacher_taps().is_empty()
                || term.adapter.is_some()
                || term.paraphraser.is_some()
            {
                let message = format!(
                    "{} uses the labels: it takes no teacher_tap, adapter or paraphraser",
                    def.name
                );
                return Err((at(""), message));
            }
            return Ok(());
        }
        let has_target = match self {
            Method::Offline => has_teachers,
            // Without teachers, a logits term targets the other peers.
            Method::Mutual => has_teachers || def.reads_logits(),
            // The model's own logits or deeper taps.
            Method::SelfDistillation => true,
            // The ensemble's logits.
            Method::Branches(_) => def.reads_logits(),
        };
        if !has_target {
            let message = match self {
                Method::Branches(_) => format!(
                    "{} compares feature maps, and a multi-branch model's only teacher is its gated ensemble's logits: use a logits term (kd, dkd, js)",
                    def.name
                ),
                _ => format!(
                    "{} needs a teacher: add teachers = [\"…\"] to the stage",
                    def.name
                ),
            };
            return Err((at(".kind"), message));
        }
        if let Some(p) = &term.paraphraser {
            if self != Method::Offline || !has_teachers {
                return Err((
                    at(".paraphraser"),
                    "a paraphraser encodes a teacher's map: one model trained against teachers"
                        .into(),
                ));
            }
            if def.teacher_inputs().count() != 1 {
                let message = format!(
                    "a paraphraser reads one teacher tap; {} has {}",
                    def.name,
                    def.teacher_inputs().count()
                );
                return Err((at(".paraphraser"), message));
            }
            if p.epochs == 0 {
                return Err((
                    at(".paraphraser.epochs"),
                    "must be at least 1 (its reconstruction training before the stage)".into(),
                ));
            }
            if !(p.rate > 0.0 && p.rate <= 1.0) {
                let message = format!("must be in (0, 1], got {}", p.rate);
                return Err((at(".paraphraser.rate"), message));
            }
        }
        if matches!(self, Method::SelfDistillation | Method::Branches(_))
            && (!term.student_taps().is_empty() || def.student_inputs().count() > 1)
        {
            return Err((
                at(".student_tap"),
                "with heads, the student side of each term is the head (its logits, or its tap for feature terms)".into(),
            ));
        }
        Ok(())
    }

    /// The stage's terms as the step sees them, each with the index of the configured term it
    /// came from. Call on a checked configuration.
    pub fn terms(self, stage: &StageConfig) -> crate::Result<Vec<(usize, LossSpec)>> {
        let mut out = Vec::new();
        for (i, term) in stage.losses.iter().enumerate() {
            let base = spec(term)?;
            let def = base.loss.def();
            match self {
                Method::Offline => out.push((i, base)),
                Method::Mutual => {
                    let peers = &stage.train;
                    // Each peer's own taps: the same names under its prefix.
                    let taps_of = |model: &str| -> Vec<String> {
                        (0..def.student_inputs().count())
                            .map(|k| format!("{model}.{}", base.student_tap(k)))
                            .collect()
                    };
                    let toward_peers = def.distils_logits() && stage.teachers.is_empty();
                    for (a, me) in peers.iter().enumerate() {
                        if !toward_peers {
                            let spec = LossSpec {
                                student_taps: taps_of(me),
                                ..base.clone()
                            };
                            out.push((i, spec));
                            continue;
                        }
                        let others = peers.iter().enumerate().filter(|(b, _)| *b != a);
                        for (_, other) in others {
                            let spec = LossSpec {
                                weight: term.weight / (peers.len() - 1) as f32,
                                student_taps: taps_of(me),
                                teacher_taps: vec![format!("{PEER}{other}.logits")],
                                ..base.clone()
                            };
                            out.push((i, spec));
                        }
                    }
                }
                Method::Branches(branches) => {
                    if !def.needs_teacher() {
                        out.push((i, base.clone()));
                    }
                    for b in 0..branches {
                        let teacher_taps = if def.needs_teacher() {
                            vec![format!("{PEER}logits")]
                        } else {
                            Vec::new()
                        };
                        let spec = LossSpec {
                            student_taps: vec![format!("branch.{b}")],
                            teacher_taps,
                            ..base.clone()
                        };
                        out.push((i, spec));
                    }
                }
                Method::SelfDistillation => {
                    let own = |tap: &str| vec![format!("{PEER}{tap}")];
                    if !def.needs_teacher() {
                        out.push((i, base.clone()));
                    }
                    for (h, tap) in stage.heads.iter().enumerate() {
                        let head_logits = vec![format!("aux.{h}.logits")];
                        let term_spec = if !def.needs_teacher() {
                            LossSpec {
                                student_taps: head_logits,
                                ..base.clone()
                            }
                        } else if def.reads_logits() {
                            LossSpec {
                                student_taps: head_logits,
                                teacher_taps: own("logits"),
                                ..base.clone()
                            }
                        } else {
                            LossSpec {
                                student_taps: vec![tap.clone()],
                                teacher_taps: own(base.teacher_tap(0)),
                                ..base.clone()
                            }
                        };
                        out.push((i, term_spec));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A configured term as the step's loss spec, taps and adapter as written.
fn spec(term: &LossConfig) -> crate::Result<LossSpec> {
    let loss = term
        .loss()
        .map_err(|(key, m)| crate::error::input_error(format!("loss{key}"), m))?;
    Ok(LossSpec {
        loss,
        weight: term.weight,
        student_taps: term.student_taps(),
        teacher_taps: term.teacher_taps(),
        adapter: term.adapter,
        paraphraser: term.paraphraser.as_ref().map(|p| Paraphraser {
            rate: p.rate,
            weights: None,
        }),
    })
}
