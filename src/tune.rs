//! The autotuner (`wgdistill tune`): times every variant of each tunable kernel family that this
//! adapter can run, on the work training gives it (whole training steps, and a square product
//! for matmul), and keeps the fastest per family in the tuning file, which every device opened
//! on the same adapter and driver then reads ([`crate::gpu::tuning`]).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::Result;
use crate::bench;
use crate::catalogue::{Case, Suite};
use crate::gpu::Gpu;
use crate::gpu::tuning::{Entry, Timing};
use crate::gpu::{KernelChoices, Variant};
use crate::kernels::matmul;

/// A tunable family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `kernels::matmul`.
    Matmul,
    /// `kernels::conv`.
    Conv,
}

impl Family {
    /// Every tunable family, in the order they are tuned.
    pub const ALL: [Family; 2] = [Family::Matmul, Family::Conv];

    /// Its name in the tuning file.
    pub fn name(self) -> &'static str {
        match self {
            Family::Matmul => "matmul",
            Family::Conv => "conv",
        }
    }

    /// The family called `name`.
    pub fn parse(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The variants of it this adapter can run. Convolutions have no workgroup-tiled kernel
    /// (that variant runs their register-blocked ones), so it is not timed twice.
    pub fn candidates(self, gpu: &Gpu) -> Vec<Variant> {
        let mut v = vec![Variant::RegisterBlocked];
        if self == Family::Matmul {
            v.extend([Variant::WorkgroupTiled, Variant::WorkgroupTiled128]);
        }
        if gpu.caps().subgroup_matmul() {
            v.push(Variant::Subgroup);
        }
        v
    }

    /// The cases it is timed on: the bench suite's whole steps that spend their time in it,
    /// and for matmul a square product of the suite's size.
    fn cases(self, suite: Suite) -> Vec<Case> {
        let step = |name: &'static str| {
            bench::step_cases(suite)
                .into_iter()
                .filter(move |c| c.kernel == name)
        };
        match self {
            Family::Matmul => {
                let s = suite.pick(512, 2048);
                step("kd_step")
                    .chain(std::iter::once(matmul::bench_case(s, s, s)))
                    .collect()
            }
            Family::Conv => step("cnn_step").collect(),
        }
    }

    fn set(self, choices: &mut KernelChoices, v: Variant) {
        match self {
            Family::Matmul => choices.matmul = v,
            Family::Conv => choices.conv = v,
        }
    }
}

/// The variant with the least geometric mean of its times over the cases (so that each case
/// counts alike, however long it runs); ties go to the earlier candidate.
pub fn fastest(timings: &[Timing], candidates: &[Variant]) -> Option<Variant> {
    let score = |v: Variant| -> f64 {
        let logs: Vec<f64> = timings
            .iter()
            .filter(|t| t.variant == v)
            .map(|t| t.seconds.ln())
            .collect();
        logs.iter().sum::<f64>() / logs.len().max(1) as f64
    };
    candidates
        .iter()
        .copied()
        .filter(|&v| timings.iter().any(|t| t.variant == v))
        .min_by(|&a, &b| score(a).total_cmp(&score(b)))
}

/// Times the candidates of each of `families` (about `target` seconds a round, three rounds
/// per case), reporting each timing to `progress`, and leaves `gpu` launching the winners (the
/// other families keep their current variant); returns the choices as the adapter's
/// tuning-file entry.
pub fn tune(
    gpu: &mut Gpu,
    families: &[Family],
    target: f64,
    progress: &mut dyn FnMut(&Timing),
) -> Result<Entry> {
    let suite = Suite::bench_for(gpu);
    let mut choices = gpu.caps().kernels;
    let mut timings = Vec::new();
    for &family in families {
        let candidates = family.candidates(gpu);
        let cases = family.cases(suite);
        let mut mine = Vec::new();
        for &v in &candidates {
            let mut trial = choices;
            family.set(&mut trial, v);
            gpu.set_kernels(trial);
            for case in &cases {
                let r = bench::run(gpu, std::slice::from_ref(case), target, false)?;
                let t = Timing {
                    family: family.name().to_string(),
                    variant: v,
                    case: format!("{} {}", case.kernel, case.shape),
                    seconds: r[0].seconds,
                };
                progress(&t);
                mine.push(t);
            }
        }
        if let Some(winner) = fastest(&mine, &candidates) {
            family.set(&mut choices, winner);
        }
        timings.extend(mine);
    }
    gpu.set_kernels(choices);
    let caps = gpu.caps();
    Ok(Entry {
        adapter: caps.name.clone(),
        backend: caps.backend.to_string(),
        driver: caps.driver.clone(),
        driver_info: caps.driver_info.clone(),
        tuned_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        choices,
        timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(variant: Variant, case: &str, seconds: f64) -> Timing {
        Timing {
            family: "matmul".into(),
            variant,
            case: case.into(),
            seconds,
        }
    }

    #[test]
    fn the_fastest_variant_is_the_least_geometric_mean() {
        use Variant::*;
        // Tiled is 4× slower on the step but 3× faster on the product: geometric means
        // √(1·9) = 3 (register-blocked) against √(4·3) ≈ 3.46 (tiled).
        let timings = [
            t(RegisterBlocked, "step", 1.0),
            t(RegisterBlocked, "product", 9.0),
            t(WorkgroupTiled, "step", 4.0),
            t(WorkgroupTiled, "product", 3.0),
        ];
        let all = [RegisterBlocked, WorkgroupTiled, Subgroup];
        assert_eq!(fastest(&timings, &all), Some(RegisterBlocked));
        assert_eq!(fastest(&timings[2..], &all), Some(WorkgroupTiled));
        assert_eq!(fastest(&[], &all), None);
        // A tie goes to the earlier candidate.
        let tie = [t(Subgroup, "step", 2.0), t(RegisterBlocked, "step", 2.0)];
        assert_eq!(fastest(&tie, &all), Some(RegisterBlocked));
    }
}
