//! `wgdistill check`: every kernel at several shapes against its f64 CPU reference on this
//! adapter; a table, and failure if any case is off. The conformance check for a new GPU or driver.

use std::time::Instant;

use wgdistill::gpu::{Gpu, GpuError, Tensor};
use wgdistill::kernels::{elementwise, losses};
use wgdistill::reference::{self, losses as cpu, max_errors};

use super::CliError;

use wgdistill::reference::{sample as data, widen};

/// A case's GPU result and reference, flattened (a loss's value first, then its gradient).
type Outcome = Result<(Vec<f32>, Vec<f64>), GpuError>;

struct Case {
    kernel: &'static str,
    shape: String,
    rtol: f64,
    atol: f64,
    run: Box<dyn Fn(&Gpu) -> Outcome>,
}

fn read_loss(gpu: &Gpu, plan: losses::LossPlan, want: cpu::LossGrad) -> Outcome {
    let (loss, grad) = plan.run(gpu)?;
    let mut got = gpu.read::<f32>(&loss)?;
    got.extend(gpu.read::<f32>(&grad)?);
    let mut expected = vec![want.loss];
    expected.extend(want.grad);
    Ok((got, expected))
}

fn elementwise_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for n in [1usize, 7, 33, 129, 1000, 65_537] {
        let shape = format!("[{n}]");
        let (x, y) = (data(n, 1), data(n, 2));
        let (x2, y2) = (x.clone(), y.clone());
        cases.push(Case {
            kernel: "elementwise::add",
            shape: shape.clone(),
            rtol: 1e-6,
            atol: 1e-6,
            run: Box::new(move |gpu| {
                let out = elementwise::add(gpu, &gpu.upload(&[n], &x2)?, &gpu.upload(&[n], &y2)?)?;
                Ok((
                    gpu.read(&out)?,
                    reference::elementwise::add(&widen(&x2), &widen(&y2)),
                ))
            }),
        });
        let (x3, y3) = (x.clone(), y.clone());
        cases.push(Case {
            kernel: "elementwise::axpy",
            shape,
            rtol: 1e-6,
            atol: 1e-6,
            run: Box::new(move |gpu| {
                let ty = gpu.upload(&[n], &y3)?;
                elementwise::axpy(gpu, 0.25, &gpu.upload(&[n], &x3)?, &ty)?;
                Ok((
                    gpu.read(&ty)?,
                    reference::elementwise::axpy(0.25, &widen(&x3), &widen(&y3)),
                ))
            }),
        });
    }
    cases
}

fn response_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (b, c) in [(7usize, 33usize), (129, 10), (5, 1000)] {
        let s: Vec<f32> = data(b * c, 3).iter().map(|v| 4.0 * v).collect();
        let t: Vec<f32> = data(b * c, 4).iter().map(|v| 4.0 * v).collect();
        let y: Vec<usize> = (0..b).map(|i| (i * 7 + 3) % c).collect();
        let shape = format!("[{b}, {c}]");
        let upload = move |gpu: &Gpu,
                           s: &[f32],
                           t: &[f32],
                           y: &[usize]|
              -> Result<(Tensor, Tensor, Tensor), GpuError> {
            let labels: Vec<i32> = y.iter().map(|&v| v as i32).collect();
            Ok((
                gpu.upload(&[b, c], s)?,
                gpu.upload(&[b, c], t)?,
                gpu.upload(&[b], &labels)?,
            ))
        };
        let (s1, t1, y1) = (s.clone(), t.clone(), y.clone());
        cases.push(Case {
            kernel: "losses::ce",
            shape: shape.clone(),
            rtol: 2e-4,
            atol: 2e-6,
            run: Box::new(move |gpu| {
                let (ts, _, tl) = upload(gpu, &s1, &t1, &y1)?;
                read_loss(
                    gpu,
                    losses::ce(gpu, &ts, &tl)?,
                    cpu::ce(&widen(&s1), &y1, c),
                )
            }),
        });
        let (s2, t2, y2) = (s.clone(), t.clone(), y.clone());
        cases.push(Case {
            kernel: "losses::kd (T=4)",
            shape: shape.clone(),
            rtol: 2e-4,
            atol: 2e-6,
            run: Box::new(move |gpu| {
                let (ts, tt, _) = upload(gpu, &s2, &t2, &y2)?;
                read_loss(
                    gpu,
                    losses::kd(gpu, &ts, &tt, 4.0)?,
                    cpu::kd(&widen(&s2), &widen(&t2), c, 4.0),
                )
            }),
        });
        cases.push(Case {
            kernel: "losses::dkd (T=4)",
            shape,
            rtol: 2e-4,
            atol: 1e-5,
            run: Box::new(move |gpu| {
                let (ts, tt, tl) = upload(gpu, &s, &t, &y)?;
                let want = cpu::dkd(&widen(&s), &widen(&t), &y, c, 1.0, 8.0, 4.0);
                read_loss(gpu, losses::dkd(gpu, &ts, &tt, &tl, 1.0, 8.0, 4.0)?, want)
            }),
        });
    }
    cases
}

fn feature_and_relation_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let (b, cs, ct, h, w) = (3usize, 5usize, 7usize, 3usize, 11usize);
    let (s, t) = (data(b * cs * h * w, 5), data(b * ct * h * w, 6));
    let (s1, t1) = (s.clone(), t.clone());
    cases.push(Case {
        kernel: "losses::at (p=2)",
        shape: format!("[{b}, {cs}|{ct}, {h}, {w}]"),
        rtol: 2e-4,
        atol: 2e-6,
        run: Box::new(move |gpu| {
            let (ts, tt) = (
                gpu.upload(&[b, cs, h, w], &s1)?,
                gpu.upload(&[b, ct, h, w], &t1)?,
            );
            read_loss(
                gpu,
                losses::at(gpu, &ts, &tt, 2.0)?,
                cpu::at(&widen(&s1), &widen(&t1), b, cs, ct, h * w, 2.0),
            )
        }),
    });
    let t2 = data(b * cs * h * w, 7);
    cases.push(Case {
        kernel: "losses::hint",
        shape: format!("[{b}, {cs}, {h}, {w}]"),
        rtol: 2e-4,
        atol: 2e-6,
        run: Box::new(move |gpu| {
            let (ts, tt) = (
                gpu.upload(&[b, cs, h, w], &s)?,
                gpu.upload(&[b, cs, h, w], &t2)?,
            );
            read_loss(
                gpu,
                losses::hint(gpu, &ts, &tt)?,
                cpu::hint(&widen(&s), &widen(&t2)),
            )
        }),
    });
    type GpuLoss = fn(&Gpu, &Tensor, &Tensor) -> wgdistill::gpu::Result<losses::LossPlan>;
    type CpuLoss = fn(&[f64], &[f64], usize) -> cpu::LossGrad;
    let relations: [(&'static str, GpuLoss, CpuLoss); 4] = [
        ("losses::sp", losses::sp, cpu::sp),
        (
            "losses::rkd_distance",
            losses::rkd_distance,
            cpu::rkd_distance,
        ),
        ("losses::rkd_angle", losses::rkd_angle, cpu::rkd_angle),
        ("losses::pkt", losses::pkt, cpu::pkt),
    ];
    for (b, ds, dt) in [(7usize, 33usize, 5usize), (13, 9, 65)] {
        for (kernel, on_gpu, on_cpu) in relations {
            let (s, t): (Vec<f32>, Vec<f32>) = (
                data(b * ds, 8).iter().map(|v| 2.0 * v).collect(),
                data(b * dt, 9).iter().map(|v| 2.0 * v).collect(),
            );
            cases.push(Case {
                kernel,
                shape: format!("[{b}, {ds}|{dt}]"),
                rtol: 1e-3,
                atol: 1e-5,
                run: Box::new(move |gpu| {
                    let (ts, tt) = (gpu.upload(&[b, ds], &s)?, gpu.upload(&[b, dt], &t)?);
                    read_loss(
                        gpu,
                        on_gpu(gpu, &ts, &tt)?,
                        on_cpu(&widen(&s), &widen(&t), b),
                    )
                }),
            });
        }
    }
    cases
}

/// Runs every check and prints a table; any failure makes the command fail.
pub fn run(gpu: &Gpu) -> Result<(), CliError> {
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<24} {:>22} {:>10} {:>10} {:>6} {:>9}",
        "kernel", "shape", "max abs", "max rel", "result", "ms"
    );
    let mut cases = elementwise_cases();
    cases.extend(response_cases());
    cases.extend(feature_and_relation_cases());
    let mut failures = 0;
    for case in &cases {
        let start = Instant::now();
        let (got, want) = (case.run)(gpu)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let (abs, rel) = max_errors(&got, &want);
        let pass = reference::allclose(&got, &want, case.rtol, case.atol).is_ok();
        failures += usize::from(!pass);
        let verdict = if pass { "pass" } else { "FAIL" };
        println!(
            "{:<24} {:>22} {abs:>10.2e} {rel:>10.2e} {verdict:>6} {ms:>9.2}",
            case.kernel, case.shape
        );
    }
    if failures > 0 {
        return Err(CliError::Message(format!(
            "{failures} of {} kernel checks failed on {}",
            cases.len(),
            gpu.caps().name
        )));
    }
    println!("all {} kernel checks passed", cases.len());
    Ok(())
}
