//! Activations (`shaders/activation.wgsl`) and their reference derivatives.

use super::common::{ODD_SIZES, data, gpu, run, up, widen};
use wgdistill::kernels::activation::{self, Kind};
use wgdistill::reference::activation::Act;
use wgdistill::reference::allclose;

#[test]
fn activations_match_reference_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    for &n in ODD_SIZES {
        let xv: Vec<f32> = data(n, 6).iter().map(|v| 4.0 * v).collect();
        let dyv = data(n, 7);
        let (x, dy) = (up(gpu, &[n], &xv), up(gpu, &[n], &dyv));
        let leaky = (Kind::LeakyRelu(0.1), Act::LeakyRelu(f64::from(0.1f32)));
        for (kind, act) in [(Kind::Relu, Act::Relu), leaky, (Kind::Gelu, Act::Gelu)] {
            let want: Vec<f64> = widen(&xv).iter().map(|&v| act.apply(v)).collect();
            allclose(
                &run(gpu, activation::forward(gpu, kind, &x).unwrap()),
                &want,
                1e-6,
                1e-6,
            )
            .unwrap_or_else(|e| panic!("{kind:?} forward n={n}: {e}"));
            let want: Vec<f64> = widen(&xv)
                .iter()
                .zip(widen(&dyv))
                .map(|(&v, g)| g * act.grad(v))
                .collect();
            allclose(
                &run(gpu, activation::backward(gpu, kind, &x, &dy).unwrap()),
                &want,
                1e-6,
                1e-6,
            )
            .unwrap_or_else(|e| panic!("{kind:?} backward n={n}: {e}"));
        }
    }
}

#[test]
fn activation_reference_derivatives_match_finite_differences() {
    for act in [
        Act::Relu,
        Act::LeakyRelu(0.1),
        Act::LeakyRelu(2.5),
        Act::Gelu,
    ] {
        for x in [-3.0, -0.7, 0.3, 1.9, 5.0] {
            let fd = (act.apply(x + 1e-6) - act.apply(x - 1e-6)) / 2e-6;
            assert!(
                (fd - act.grad(x)).abs() < 1e-7,
                "{act:?} at {x}: {fd} vs {}",
                act.grad(x)
            );
        }
    }
}

#[test]
fn leaky_relu_takes_the_negative_slope_at_zero_and_rejects_a_non_finite_one() {
    let Some(gpu) = gpu() else { return };
    let x = up(gpu, &[3], &[0.0, -2.0, 3.0]);
    let dy = up(gpu, &[3], &[1.0, 1.0, 1.0]);
    let kind = Kind::LeakyRelu(0.25);
    let y = run(gpu, activation::forward(gpu, kind, &x).unwrap());
    assert_eq!(y, [0.0, -0.5, 3.0]);
    // PyTorch's leaky_relu_backward: the slope where x <= 0.
    let dx = run(gpu, activation::backward(gpu, kind, &x, &dy).unwrap());
    assert_eq!(dx, [0.25, 0.25, 1.0]);
    let e = activation::forward(gpu, Kind::LeakyRelu(f32::NAN), &x)
        .err()
        .unwrap();
    assert!(e.to_string().contains("slope must be finite"), "{e}");
}
