//! Modules a stage's terms train before its first epoch: FT's paraphraser, trained to
//! reconstruct the teacher's map (RepDistiller's initialisation for factor transfer) and frozen
//! for the stage, where its encoder's factor is the term's target.

use crate::Result;
use crate::data::{self, Dataset};
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{
    Graph, LossSpec, StepSpec, TEACHER_INPUT, TrainStep, Weights, paraphraser_graph,
};
use crate::kernels::losses::Loss;

use super::config::{Config, StageConfig};
use super::stage::{optimizer, seed_of};

/// Trains the paraphraser of every term of `stage` that has one (`terms`: the step's terms, each
/// with its configured term's index) on the teacher's map, and gives the term its trained
/// encoder. Full batches only, in a shuffled order per epoch; `log` gets a line per epoch with
/// the last batch's reconstruction loss.
#[allow(clippy::too_many_arguments)]
pub fn paraphrasers(
    gpu: &Gpu,
    config: &Config,
    stage: &StageConfig,
    teacher: (&Graph, &Weights),
    terms: &mut [(usize, LossSpec)],
    train: &Dataset,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let batch = config.data.batch_size;
    for (i, (source, term)) in terms.iter_mut().enumerate() {
        let (Some(p), Some(settings)) = (
            term.paraphraser.as_mut(),
            stage.losses[*source].paraphraser.as_ref(),
        ) else {
            continue;
        };
        let what = format!("stage '{}': losses[{source}].paraphraser", stage.name);
        if train.len() < batch {
            return Err(input_error(
                what,
                format!("needs a full batch of {batch} training samples"),
            ));
        }
        let tap = term.teacher_taps.first().map_or("logits", String::as_str);
        let (tg, tw) = teacher;
        let shape = tg.shape(tg.tapped(tap)?).to_vec();
        let graph = paraphraser_graph(i, &format!("{TEACHER_INPUT}{tap}"), &shape, p.rate, true)?;
        let seed = seed_of(config.seed, &format!("{}.paraphraser.{i}", stage.name));
        let weights = Weights::init(gpu, &graph, seed)?;
        let spec = StepSpec {
            student: &graph,
            student_weights: &weights,
            teacher: Some((tg, tw)),
            losses: vec![LossSpec::taps(Loss::new("hint")?, 1.0, "logits", tap)],
            optimizer: optimizer(stage.optimizer()?),
            seed,
        };
        let step = TrainStep::compile(gpu, &spec)?;
        let augment = stage.augment.unwrap_or(config.data.augment);
        let (mut xb, mut yb) = (Vec::new(), Vec::new());
        for epoch in 0..settings.epochs {
            let order = data::epoch_order(train.len(), seed, epoch as u64);
            for (bi, idx) in order.chunks_exact(batch).enumerate() {
                let jitter = augment.then_some((2, seed ^ ((epoch as u64) << 32) ^ bi as u64));
                data::fill_batch(train, idx, jitter, &mut xb, &mut yb);
                step.run(gpu, &xb, &yb)?;
            }
            let loss = step.total_loss(gpu)?;
            if !loss.is_finite() {
                return Err(input_error(
                    what,
                    format!(
                        "the reconstruction loss is not finite after epoch {}: lower the stage's learning rate",
                        epoch + 1
                    ),
                ));
            }
            log(&format!(
                "{}: paraphraser of losses[{source}] epoch {}/{}: reconstruction loss {loss:.4}",
                stage.name,
                epoch + 1,
                settings.epochs
            ));
        }
        p.weights = Some(weights.with_prefix(&format!("terms.{i}.paraphraser.encoder.")));
    }
    Ok(())
}
