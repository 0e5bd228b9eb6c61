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
        let kinds = [
            (Kind::Relu, Act::Relu),
            (Kind::Relu6, Act::Relu6),
            leaky,
            (Kind::Gelu, Act::Gelu),
            (Kind::Tanh, Act::Tanh),
        ];
        for (kind, act) in kinds {
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
        Act::Relu6,
        Act::LeakyRelu(0.1),
        Act::LeakyRelu(2.5),
        Act::Gelu,
        Act::Tanh,
    ] {
        for x in [-3.0, -0.7, 0.3, 1.9, 5.0, 7.5] {
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

/// ReLU6 at and around both kinks: the gradient passes strictly inside (0, 6), as PyTorch's
/// hardtanh backward.
#[test]
fn relu6_clamps_at_zero_and_six_and_blocks_the_gradient_at_both() {
    let Some(gpu) = gpu() else { return };
    // Seven values take the one-per-lane kernel; with an eighth, the vec4 one.
    let xv = [-1.0f32, 0.0, 0.5, 5.999, 6.0, 6.001, 1e30, 3.0];
    for n in [7, 8] {
        let x = up(gpu, &[n], &xv[..n]);
        let dy = up(gpu, &[n], &vec![2.0; n]);
        let y = run(gpu, activation::forward(gpu, Kind::Relu6, &x).unwrap());
        assert_eq!(y, [0.0, 0.0, 0.5, 5.999, 6.0, 6.0, 6.0, 3.0][..n]);
        let dx = run(
            gpu,
            activation::backward(gpu, Kind::Relu6, &x, &dy).unwrap(),
        );
        assert_eq!(dx, [0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 2.0][..n]);
        let dx = run(gpu, activation::backward(gpu, Kind::Relu, &x, &dy).unwrap());
        assert_eq!(dx, [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0][..n]);
    }
}

/// tanh saturates to exactly ±1 with a zero gradient, never NaN, however large the input (some
/// drivers compute it through exp(2x)); near 0 and in the tails it and its gradient keep their
/// relative precision (lavapipe's built-in tanh is off by 2e-4 relative at 1e-4).
#[test]
fn tanh_saturates_cleanly_and_is_precise_near_zero() {
    let Some(gpu) = gpu() else { return };
    let xv = [
        0.0f32,
        1e-4,
        -1e-4,
        0.5,
        -3.0,
        9.0,
        -100.0,
        1e30,
        f32::MAX,
        -f32::MAX,
    ];
    let x = up(gpu, &[xv.len()], &xv);
    let dy = up(gpu, &[xv.len()], &[1.0; 10]);
    let y = run(gpu, activation::forward(gpu, Kind::Tanh, &x).unwrap());
    let dx = run(gpu, activation::backward(gpu, Kind::Tanh, &x, &dy).unwrap());
    for (i, &v) in xv.iter().enumerate() {
        let want = f64::from(v).tanh();
        assert!(
            (f64::from(y[i]) - want).abs() <= 1e-6 * want.abs().max(1e-3),
            "tanh({v}) = {}, want {want}",
            y[i]
        );
        // 1/cosh², relatively precise in the tails too (where 1 − y² would cancel).
        let want_grad = 1.0 / f64::from(v).cosh().powi(2);
        assert!(
            (f64::from(dx[i]) - want_grad).abs() <= 1e-5 * want_grad + 1e-30,
            "tanh'({v}) = {}, want {want_grad}",
            dx[i]
        );
    }
    assert_eq!(&y[6..], &[-1.0, 1.0, 1.0, -1.0]);
}
