//! One epoch of a stage: the schedule's learning rate and loss-weight ramps written into the
//! steps, then the batches in the epoch's shuffled order, each one submission (with the cached
//! teacher rows written beside the images when the teacher is replayed).

use std::time::Instant;

use crate::Result;
use crate::data::{self, Dataset};
use crate::gpu::Gpu;

use super::config::Config;
use super::run::RunOptions;
use super::stage::StagePlan;

/// What one epoch did.
#[derive(Clone, Copy, Debug)]
pub struct EpochStats {
    /// The weighted total loss of the epoch's last full step.
    pub loss: f32,
    /// The mean of the weighted total losses sampled during the epoch (every tenth step's, as
    /// they arrive without a stall, and the last step's): one batch's loss is noisy.
    pub mean_loss: f32,
    /// Samples trained on.
    pub samples: usize,
    /// Training time (no evaluation).
    pub seconds: f64,
    /// A discriminator's losses in the epoch's last step (teacher's tap as real, student's as
    /// fake), when the stage has one.
    pub discriminator: Option<[f32; 2]>,
}

/// Trains epoch `epoch` (0-based) of the planned stage at learning rate `lr`.
pub fn train_epoch(
    gpu: &Gpu,
    config: &Config,
    epoch: usize,
    lr: f32,
    plan: &mut StagePlan<'_>,
    train: &Dataset,
    opts: &RunOptions,
) -> Result<EpochStats> {
    let (stage, index) = (plan.stage, plan.index);
    let start = Instant::now();
    schedule(gpu, plan, epoch as f32, lr);
    let batch = config.data.batch_size;
    let mut order = data::epoch_order(
        plan.pool.as_ref().map_or(train.len(), Vec::len),
        config.seed ^ index as u64,
        epoch as u64,
    );
    if let Some(pool) = &plan.pool {
        order.iter_mut().for_each(|i| *i = pool[*i]);
    }
    let batches = order.len().div_ceil(batch);
    // A term ramping smoothly within this epoch has its weight written before every step.
    let ramping = stage.losses.iter().any(|l| l.ramps_during(epoch));
    let bar = progress_bar(
        opts.progress,
        batches,
        &format!("{} {}/{}", stage.name, epoch + 1, stage.epochs),
    );
    let augment_images = stage.augment.unwrap_or(config.data.augment);
    let (mut xb, mut yb, mut tb, mut rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut samples = 0;
    let (mut sampled, mut sampled_count) = (0.0f64, 0usize);
    // Whether the step that ran last (its losses are the epoch's) was the tail step.
    let mut last_tail = false;
    for (bi, idx) in order.chunks(batch).enumerate() {
        let full = idx.len() == batch;
        // A last batch of one is dropped: batch statistics need two samples.
        if !full && plan.tail_step.is_none() {
            continue;
        }
        if ramping {
            schedule(gpu, plan, epoch as f32 + bi as f32 / batches as f32, lr);
        }
        let Some(step) = (if full {
            Some(&plan.step)
        } else {
            plan.tail_step.as_ref()
        }) else {
            continue;
        };
        let augment =
            augment_images.then_some((2, config.seed ^ ((epoch as u64) << 32) ^ bi as u64));
        data::fill_batch(train, idx, augment, &mut xb, &mut yb);
        if let Some(known) = &plan.known_labels {
            yb.iter_mut().zip(idx).for_each(|(y, &i)| *y = known[i]);
        }
        if let Some(outputs) = &plan.cached {
            for (k, (tap, _)) in outputs.taps.iter().enumerate() {
                outputs.gather(k, idx, &mut tb);
                step.write_teacher_input(gpu, tap, &tb)?;
            }
        }
        // Contrastive terms: each sample's bank row and its negatives, drawn per batch.
        for (term, sampler) in plan.samplers.iter_mut() {
            let seed = config.seed ^ ((epoch as u64) << 40) ^ ((bi as u64) << 8) ^ *term as u64;
            sampler.fill(idx, seed, &mut rows);
            step.write_sample_rows(gpu, *term, &rows)?;
        }
        // Every tenth step also fetches its losses, collected later without a stall: they feed
        // the progress bar and stop a diverging stage early.
        if full && bi % 10 == 0 {
            step.run_fetching_losses(gpu, &xb, &yb)?;
        } else {
            step.run(gpu, &xb, &yb)?;
        }
        last_tail = !full;
        samples += idx.len();
        if let Some(losses) = plan.step.poll_losses(gpu)? {
            let total: f32 = losses.iter().map(|(_, w, l)| w * l).sum();
            if !total.is_finite() {
                let at = format!("epoch {}, step {}", epoch + 1, bi + 1);
                return Err(diverged(
                    &plan.stage.name,
                    &at,
                    (epoch > 0).then_some(epoch),
                ));
            }
            sampled += f64::from(total);
            sampled_count += 1;
            if opts.progress {
                let rate = samples as f64 / start.elapsed().as_secs_f64();
                // The last epoch whose test accuracy was measured (`test_every` skips some).
                let acc = match plan.stage.last_tested(epoch) {
                    Some(measured) => format!(
                        ", test accuracy {:.4} after epoch {measured}",
                        plan.accuracy[0]
                    ),
                    None => String::new(),
                };
                bar.set_message(format!("loss {total:.4}, {rate:.0} samples/s{acc}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let last = match (&plan.tail_step, last_tail) {
        (Some(tail), true) => tail,
        _ => &plan.step,
    };
    let loss = last.total_loss(gpu)?;
    if !loss.is_finite() {
        let at = format!("epoch {}", epoch + 1);
        return Err(diverged(
            &plan.stage.name,
            &at,
            (epoch > 0).then_some(epoch),
        ));
    }
    Ok(EpochStats {
        loss,
        mean_loss: ((sampled + f64::from(loss)) / (sampled_count + 1) as f64) as f32,
        samples,
        seconds: start.elapsed().as_secs_f64(),
        discriminator: last.discriminator_losses(gpu)?,
    })
}

/// The error that stops stage `stage` diverging `at` (an epoch, a step), before its epoch's
/// files are written: the checkpoints of epoch `kept`, the last committed, stay.
pub(super) fn diverged(stage: &str, at: &str, kept: Option<usize>) -> crate::Error {
    let kept = match kept {
        Some(epoch) => format!("the checkpoints of epoch {epoch} are kept"),
        None => "no checkpoint of this stage was written".to_string(),
    };
    crate::error::input_error(
        format!("stage '{stage}'"),
        format!(
            "the loss is not finite at {at}: training diverged ({kept}); lower the learning rate or the loss weights"
        ),
    )
}

/// Writes the epoch's learning rate and each term's weight (ramped) after `progress` epochs
/// into both steps' bound uniforms.
fn schedule(gpu: &Gpu, plan: &mut StagePlan<'_>, progress: f32, lr: f32) {
    let steps = std::iter::once(&mut plan.step).chain(plan.tail_step.as_mut());
    write_schedule(gpu, steps, plan.stage, &plan.terms, progress, lr);
}

/// Writes learning rate `lr` and the weight of each of `terms` (configured term of `stage`,
/// step term) after `progress` epochs, ramped as its term says ([`LossConfig::ramp`]), into
/// `steps`.
///
/// [`LossConfig::ramp`]: crate::train::config::LossConfig::ramp
pub(super) fn write_schedule<'s>(
    gpu: &Gpu,
    steps: impl Iterator<Item = &'s mut crate::graph::TrainStep>,
    stage: &crate::train::config::StageConfig,
    terms: &[(usize, crate::graph::LossSpec)],
    progress: f32,
    lr: f32,
) {
    for step in steps {
        step.set_learning_rate(gpu, lr);
        for (i, (source, term)) in terms.iter().enumerate() {
            let ramp = stage.losses[*source].ramp(progress);
            step.set_loss_weight(gpu, i, term.weight * ramp);
        }
    }
}

/// A progress bar for one epoch: hidden unless asked for and standard error is a terminal.
pub(super) fn progress_bar(show: bool, batches: usize, prefix: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(batches as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar
}
