//! `wgdistill check`: every kernel at several shapes against its f64 CPU reference on this
//! adapter; a table, and failure if any case is off. The conformance check for a new GPU or driver.

use std::time::Instant;

use wgdistill::Error;
use wgdistill::gpu::{DType, Dispatch, Gpu, KernelStyle, Tensor};
use wgdistill::kernels::batchnorm::{self, BatchNormState};
use wgdistill::kernels::conv::{self, Conv2d};
use wgdistill::kernels::matmul::{Activation, MatmulOptions, matmul};
use wgdistill::kernels::pool::{self, Pool2d};
use wgdistill::kernels::{activation, elementwise, losses, optimizer, softmax};
use wgdistill::reference::conv::{self as cpu_conv, Window};
use wgdistill::reference::dense::{self as cpu_dense, Act, LinearShape};
use wgdistill::reference::{
    self, losses as cpu, max_errors, optim as cpu_optim, softmax as cpu_softmax,
};

use super::CliError;

use wgdistill::reference::{sample as data, widen};

/// A case's GPU result and reference, flattened (a loss's value first, then its gradient).
type Outcome = Result<(Vec<f32>, Vec<f64>), Error>;

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
              -> Result<(Tensor, Tensor, Tensor), Error> {
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
    type GpuLoss = fn(&Gpu, &Tensor, &Tensor) -> wgdistill::Result<losses::LossPlan>;
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

/// Runs launches and reads back several outputs, concatenated.
fn run_read(gpu: &Gpu, plan: &[Dispatch], outputs: &[&Tensor]) -> Result<Vec<f32>, Error> {
    gpu.execute(plan)?;
    let mut got = Vec::new();
    for t in outputs {
        got.extend(gpu.read::<f32>(t)?);
    }
    Ok(got)
}

/// A linear layer's forward (`x·wᵀ + b`, then GELU) through one matmul variant.
fn linear_case(
    kernel: &'static str,
    (m, n, k): (usize, usize, usize),
    options: MatmulOptions,
) -> Case {
    let (x, w, b) = (data(m * k, 20), data(n * k, 21), data(n, 22));
    Case {
        kernel,
        shape: format!("{m}x{n}x{k}"),
        rtol: 1e-4,
        atol: 1e-5,
        run: Box::new(move |gpu| {
            let (tx, tw, tb) = (
                gpu.upload(&[m, k], &x)?,
                gpu.upload(&[n, k], &w)?,
                gpu.upload(&[n], &b)?,
            );
            let options = MatmulOptions {
                trans_b: true,
                activation: Activation::Gelu,
                ..options
            };
            let (d, y) = matmul(gpu, &tx, &tw, Some(&tb), options)?;
            let shape = LinearShape { m, n, k };
            Ok((
                run_read(gpu, &[d], &[&y])?,
                cpu_dense::linear_forward(&widen(&x), &widen(&w), &widen(&b), shape, Act::Gelu).1,
            ))
        }),
    }
}

fn layer_cases(gpu: &Gpu) -> Vec<Case> {
    let mut cases = Vec::new();
    for shape in [(7usize, 33usize, 129usize), (65, 130, 67)] {
        for (kernel, style) in [
            ("matmul (rb) +bias+gelu", KernelStyle::RegisterBlocked),
            ("matmul (tiled) +bias+gelu", KernelStyle::WorkgroupTiled),
        ] {
            let options = MatmulOptions {
                style: Some(style),
                subgroups: Some(false),
                ..Default::default()
            };
            cases.push(linear_case(kernel, shape, options));
        }
    }
    // The subgroup kernels need K % 4 == 0 here; M and N stay off the block size.
    if gpu.caps().subgroup_matmul() {
        for shape in [(7usize, 33usize, 132usize), (65, 130, 68)] {
            let options = MatmulOptions {
                subgroups: Some(true),
                ..Default::default()
            };
            cases.push(linear_case("matmul (subgroup) +bias+gelu", shape, options));
        }
    }
    let (n, xv, dyv) = (1000usize, data(1000, 23), data(1000, 24));
    cases.push(Case {
        kernel: "activation (relu, gelu)",
        shape: format!("[{n}] fwd+bwd"),
        rtol: 1e-5,
        atol: 1e-6,
        run: Box::new(move |gpu| {
            let (x, dy) = (gpu.upload(&[n], &xv)?, gpu.upload(&[n], &dyv)?);
            let (a, ya) = activation::forward(gpu, activation::Kind::Relu, &x)?;
            let (b, yb) = activation::forward(gpu, activation::Kind::Gelu, &x)?;
            let (c, dg) = activation::backward(gpu, activation::Kind::Gelu, &x, &dy)?;
            let got = run_read(gpu, &[a, b, c], &[&ya, &yb, &dg])?;
            let xs = widen(&xv);
            let mut want: Vec<f64> = xs.iter().map(|&v| Act::Relu.apply(v)).collect();
            want.extend(xs.iter().map(|&v| Act::Gelu.apply(v)));
            want.extend(
                xs.iter()
                    .zip(widen(&dyv))
                    .map(|(&v, g)| g * Act::Gelu.grad(v)),
            );
            Ok((got, want))
        }),
    });
    let (rows, cols) = (33usize, 129usize);
    let (sx, sdy) = (data(rows * cols, 25), data(rows * cols, 26));
    cases.push(Case {
        kernel: "softmax (T=2) fwd+bwd",
        shape: format!("[{rows}, {cols}]"),
        rtol: 1e-4,
        atol: 1e-6,
        run: Box::new(move |gpu| {
            let (x, dy) = (
                gpu.upload(&[rows, cols], &sx)?,
                gpu.upload(&[rows, cols], &sdy)?,
            );
            let (f, y) = softmax::forward(gpu, &x, 2.0, false)?;
            gpu.execute(&[f])?;
            let (b, dx) = softmax::backward(gpu, &y, &dy, 2.0, false)?;
            let got = run_read(gpu, &[b], &[&y, &dx])?;
            let mut want = cpu_softmax::forward(&widen(&sx), cols, 2.0, false);
            let back = cpu_softmax::backward(&want, &widen(&sdy), cols, 2.0, false);
            want.extend(back);
            Ok((got, want))
        }),
    });
    let win = Window {
        n: 2,
        c: 3,
        h: 7,
        w: 9,
        k: [3, 3],
        s: [2, 1],
        p: [1, 1],
    };
    let cout = 5;
    let [ho, wo] = win.out();
    let (cx, cw, cdy) = (
        data(2 * 3 * 7 * 9, 27),
        data(cout * 3 * 9, 28),
        data(2 * cout * ho * wo, 29),
    );
    cases.push(Case {
        kernel: "conv2d fwd+bwd",
        shape: "[2, 3, 7, 9] 3x3/2,1 → 5".to_string(),
        rtol: 1e-4,
        atol: 1e-5,
        run: Box::new(move |gpu| {
            let (x, w, dy) = (
                gpu.upload(&[2, 3, 7, 9], &cx)?,
                gpu.upload(&[cout, 3, 3, 3], &cw)?,
                gpu.upload(&[2, cout, ho, wo], &cdy)?,
            );
            let spec = Conv2d {
                stride: [2, 1],
                padding: [1, 1],
            };
            let (f, y) = conv::forward(gpu, &x, &w, None, &spec)?;
            let (mut plan, g) = conv::backward(gpu, &x, &w, &dy, false, &spec)?;
            plan.insert(0, f);
            let mut outputs = vec![&y];
            outputs.extend(g.dx.as_ref());
            outputs.push(&g.dw);
            let got = run_read(gpu, &plan, &outputs)?;
            let mut want = cpu_conv::conv2d(&widen(&cx), &widen(&cw), None, &win, cout);
            let (dx, dw, _) =
                cpu_conv::conv2d_backward(&widen(&cx), &widen(&cw), &widen(&cdy), &win, cout);
            want.extend(dx);
            want.extend(dw);
            Ok((got, want))
        }),
    });
    let pwin = Window {
        n: 2,
        c: 3,
        h: 7,
        w: 9,
        k: [3, 3],
        s: [2, 2],
        p: [1, 1],
    };
    let px = data(2 * 3 * 7 * 9, 30);
    cases.push(Case {
        kernel: "max_pool2d, avg_pool2d",
        shape: "[2, 3, 7, 9] 3x3/2 pad 1".to_string(),
        rtol: 1e-5,
        atol: 1e-6,
        run: Box::new(move |gpu| {
            let x = gpu.upload(&[2, 3, 7, 9], &px)?;
            let spec = Pool2d {
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
            };
            let (a, ym, _) = pool::max_pool_forward(gpu, &x, &spec)?;
            let (b, ya) = pool::avg_pool_forward(gpu, &x, &spec)?;
            let got = run_read(gpu, &[a, b], &[&ym, &ya])?;
            let mut want = cpu_conv::max_pool(&widen(&px), &pwin).0;
            want.extend(cpu_conv::avg_pool(&widen(&px), &pwin));
            Ok((got, want))
        }),
    });
    let (bx, bg, bb, bdy) = (
        data(4 * 3 * 25, 31),
        data(3, 32),
        data(3, 33),
        data(4 * 3 * 25, 34),
    );
    cases.push(Case {
        kernel: "batch_norm train fwd+bwd",
        shape: "[4, 3, 5, 5]".to_string(),
        rtol: 1e-3,
        atol: 1e-5,
        run: Box::new(move |gpu| {
            let (x, g, b, dy) = (
                gpu.upload(&[4, 3, 5, 5], &bx)?,
                gpu.upload(&[3], &bg)?,
                gpu.upload(&[3], &bb)?,
                gpu.upload(&[4, 3, 5, 5], &bdy)?,
            );
            let (rm, rv) = (gpu.zeros(&[3], DType::F32)?, gpu.zeros(&[3], DType::F32)?);
            let st = BatchNormState {
                gamma: &g,
                beta: &b,
                running_mean: &rm,
                running_var: &rv,
                eps: 1e-5,
                momentum: 0.1,
            };
            let (mut plan, y, saved) = batchnorm::forward_train(gpu, &x, &st)?;
            let (back, grads) = batchnorm::backward(gpu, &x, &dy, &st, &saved)?;
            plan.extend(back);
            let got = run_read(gpu, &plan, &[&y, &grads.dx, &grads.dgamma, &grads.dbeta])?;
            let mut want =
                cpu_conv::batch_norm(&widen(&bx), 4, 3, 25, &widen(&bg), &widen(&bb), 1e-5).0;
            let (dx, dg, db) = cpu_conv::batch_norm_backward(
                &widen(&bx),
                &widen(&bdy),
                4,
                3,
                25,
                &widen(&bg),
                1e-5,
            );
            want.extend(dx);
            want.extend(dg);
            want.extend(db);
            Ok((got, want))
        }),
    });
    let (op, og) = (data(1031, 35), data(1031, 36));
    cases.push(Case {
        kernel: "adamw (2 steps)",
        shape: "[1031]".to_string(),
        rtol: 2e-6,
        atol: 1e-7,
        run: Box::new(move |gpu| {
            let (p, g) = (gpu.upload(&[1031], &op)?, gpu.upload(&[1031], &og)?);
            let (m, v) = (
                gpu.zeros(&[1031], DType::F32)?,
                gpu.zeros(&[1031], DType::F32)?,
            );
            let step = gpu.zeros(&[1], DType::U32)?;
            let s = optimizer::AdamW {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            };
            let mut plan = Vec::new();
            for _ in 0..2 {
                plan.push(optimizer::advance_step(gpu, &step)?);
                plan.push(optimizer::adamw(gpu, &s, &p, &g, &m, &v, &step)?);
            }
            let got = run_read(gpu, &plan, &[&p])?;
            let (mut want, mut mm, mut vv) = (widen(&op), vec![0.0; 1031], vec![0.0; 1031]);
            for t in 1..=2 {
                cpu_optim::adamw(
                    &mut want,
                    &widen(&og),
                    &mut mm,
                    &mut vv,
                    t,
                    1e-2,
                    0.9,
                    0.999,
                    1e-8,
                    0.01,
                );
            }
            Ok((got, want))
        }),
    });
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
    cases.extend(layer_cases(gpu));
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
