//! `wgdistill check`: every kernel at several shapes against its CPU reference on this adapter.

use std::time::Instant;

use wgdistill::gpu::{Gpu, GpuError};
use wgdistill::kernels::elementwise;
use wgdistill::reference::{self, max_errors};

use super::CliError;

/// Deterministic test data in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

struct Row {
    kernel: &'static str,
    shape: usize,
    abs: f64,
    rel: f64,
    pass: bool,
    seconds: f64,
}

fn check_one(gpu: &Gpu, kernel: &'static str, n: usize) -> Result<Row, GpuError> {
    let (x, y) = (data(n, 1), data(n, 2));
    let (tx, ty) = (gpu.upload(&[n], &x)?, gpu.upload(&[n], &y)?);
    let start = Instant::now();
    let (got, want) = match kernel {
        "add" => (
            elementwise::add(gpu, &tx, &ty)?,
            reference::elementwise::add(&widen(&x), &widen(&y)),
        ),
        "scale" => (
            elementwise::scale(gpu, &tx, -1.5)?,
            reference::elementwise::scale(&widen(&x), -1.5),
        ),
        "axpy" => {
            elementwise::axpy(gpu, 0.25, &tx, &ty)?;
            (
                ty,
                reference::elementwise::axpy(0.25, &widen(&x), &widen(&y)),
            )
        }
        _ => {
            elementwise::fill(gpu, &tx, 3.5)?;
            (tx, vec![3.5; n])
        }
    };
    let got = gpu.read::<f32>(&got)?;
    let seconds = start.elapsed().as_secs_f64();
    let (abs, rel) = max_errors(&got, &want);
    let pass = reference::allclose(&got, &want, 1e-6, 1e-6).is_ok();
    Ok(Row {
        kernel,
        shape: n,
        abs,
        rel,
        pass,
        seconds,
    })
}

/// Runs every check and prints a table; any failure makes the command fail.
pub fn run(gpu: &Gpu) -> Result<(), CliError> {
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<22} {:>9} {:>11} {:>11} {:>6} {:>10}",
        "kernel", "elements", "max abs", "max rel", "result", "ms"
    );
    let mut failures = 0;
    for kernel in ["add", "scale", "axpy", "fill"] {
        for n in [1, 7, 33, 129, 1000, 65_537] {
            let row = check_one(gpu, kernel, n)?;
            failures += usize::from(!row.pass);
            println!(
                "{:<22} {:>9} {:>11.3e} {:>11.3e} {:>6} {:>10.3}",
                format!("elementwise::{}", row.kernel),
                row.shape,
                row.abs,
                row.rel,
                if row.pass { "pass" } else { "FAIL" },
                row.seconds * 1e3
            );
        }
    }
    if failures > 0 {
        return Err(CliError::Message(format!(
            "{failures} kernel checks failed on {}",
            gpu.caps().name
        )));
    }
    println!("all kernel checks passed");
    Ok(())
}
