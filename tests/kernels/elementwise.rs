//! Elementwise kernels (`shaders/elementwise.wgsl`).

use super::common::{ODD_SIZES, data, gpu, widen};
use wgdistill::kernels::elementwise;
use wgdistill::reference::allclose;
use wgdistill::reference::elementwise as cpu;

const RTOL: f64 = 1e-6;

const ATOL: f64 = 1e-6;

#[test]
fn add_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for &n in ODD_SIZES {
        let (a, b) = (data(n, 1), data(n, 2));
        let out = elementwise::add(
            gpu,
            &gpu.upload(&[n], &a).unwrap(),
            &gpu.upload(&[n], &b).unwrap(),
        )
        .unwrap();
        allclose(
            &gpu.read(&out).unwrap(),
            &cpu::add(&widen(&a), &widen(&b)),
            RTOL,
            ATOL,
        )
        .unwrap_or_else(|e| panic!("add n={n}: {e}"));
    }
}

#[test]
fn scale_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for &n in ODD_SIZES {
        let x = data(n, 3);
        let out = elementwise::scale(gpu, &gpu.upload(&[n], &x).unwrap(), -2.5).unwrap();
        allclose(
            &gpu.read(&out).unwrap(),
            &cpu::scale(&widen(&x), -2.5),
            RTOL,
            ATOL,
        )
        .unwrap_or_else(|e| panic!("scale n={n}: {e}"));
    }
}

#[test]
fn axpy_matches_reference_and_refuses_aliasing() {
    let Some(gpu) = gpu() else { return };
    for &n in ODD_SIZES {
        let (x, y) = (data(n, 4), data(n, 5));
        let ty = gpu.upload(&[n], &y).unwrap();
        elementwise::axpy(gpu, 0.75, &gpu.upload(&[n], &x).unwrap(), &ty).unwrap();
        allclose(
            &gpu.read(&ty).unwrap(),
            &cpu::axpy(0.75, &widen(&x), &widen(&y)),
            RTOL,
            ATOL,
        )
        .unwrap_or_else(|e| panic!("axpy n={n}: {e}"));
    }
    let t = gpu.upload(&[4], &[1.0f32; 4]).unwrap();
    assert!(elementwise::axpy(gpu, 1.0, &t, &t.reshape(&[2, 2]).unwrap()).is_err());
}

#[test]
fn fill_writes_every_element_and_nothing_else() {
    let Some(gpu) = gpu() else { return };
    for &n in ODD_SIZES {
        let t = gpu.upload(&[n], &data(n, 6)).unwrap();
        elementwise::fill(gpu, &t, -4.0).unwrap();
        assert!(
            gpu.read::<f32>(&t).unwrap().iter().all(|&v| v == -4.0),
            "fill n={n}"
        );
    }
}

#[test]
fn shape_mismatches_name_the_op_and_both_shapes() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.upload(&[3], &[1.0f32; 3]).unwrap();
    let b = gpu.upload(&[4], &[1.0f32; 4]).unwrap();
    let err = elementwise::add(gpu, &a, &b).unwrap_err().to_string();
    assert!(
        err.starts_with("add:") && err.contains("[3]") && err.contains("[4]"),
        "{err}"
    );
    let labels = gpu.upload(&[3], &[1i32; 3]).unwrap();
    assert!(elementwise::scale(gpu, &labels, 2.0).is_err());
}

#[test]
fn reference_comparison_can_fail() {
    // The helper every GPU test relies on must reject a wrong answer.
    assert!(allclose(&[1.0, 2.0], &[1.0, 2.001], RTOL, ATOL).is_err());
    assert!(allclose(&[1.0], &[1.0, 2.0], RTOL, ATOL).is_err());
    assert!(allclose(&[f32::NAN], &[1.0], RTOL, ATOL).is_err());
}
