//! Integer inference (`shaders/int8.wgsl`, `int8_dot4.wgsl`): the two dot-product paths agree to
//! the bit at scales that are not powers of two, and bad layers are refused in one line.

use super::common::gpu;
use wgdistill::kernels::int8::{self, DotPath, Grid, LayerKind, LayerWeights, Map};
use wgdistill::reference::int8::{Epilogue, Requant, Window};

fn bytes(n: usize, seed: u32) -> Vec<i32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) >> 13) as i32 & 0xff)
        .collect()
}

fn weights(n: usize, seed: u32) -> Vec<i8> {
    bytes(n, seed).iter().map(|&b| (b - 128) as i8).collect()
}

fn layer(
    gpu: &wgdistill::gpu::Gpu,
    packed: &[u32],
    w: &[i8],
    per: usize,
    n: usize,
) -> LayerWeights {
    let ep = Epilogue {
        multiplier: (0..n)
            .map(|c| 0.000_073_1 * (1.0 + c as f32 / 7.0))
            .collect(),
        bias: (0..n).map(|c| 0.37 * c as f32 - 1.1).collect(),
    };
    let words = int8::epilogue_words(&ep, &int8::weight_sums(w, per), 77);
    LayerWeights {
        weights: gpu.upload(&[packed.len()], packed).unwrap(),
        epilogue: gpu.upload(&[words.len()], &words).unwrap(),
        out_channels: n,
    }
}

#[test]
fn both_dot_paths_compute_the_same_bytes_at_arbitrary_scales() {
    let Some(gpu) = gpu() else { return };
    if !gpu.caps().packed_dot {
        eprintln!("no dot4I8Packed here: only the portable path runs");
        return;
    }
    let grid = Grid {
        scale: 0.173,
        zero_point: 90,
    };
    let requant = grid.requant(true, false);
    // A linear layer and a strided convolution, odd sizes.
    let map = Map::vector(37, 131);
    let x = gpu
        .upload(
            &[37, map.words()],
            &int8::pack_map(&bytes(37 * 131, 1), map, 77),
        )
        .unwrap();
    let w = weights(19 * 131, 2);
    let lin = layer(gpu, &int8::pack_linear_weights(&w, 19, map), &w, 131, 19);
    let image = Map::image(3, 7, 11, 10);
    let xi = gpu
        .upload(
            &[3, image.words()],
            &int8::pack_map(&bytes(3 * 7 * 110, 3), image, 77),
        )
        .unwrap();
    let wc = weights(9 * 7 * 9, 4);
    let conv = layer(gpu, &int8::pack_conv_weights(&wc, 9, 7, 3), &wc, 63, 9);
    let window = Window {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let mut outputs = Vec::new();
    for path in [DotPath::Portable, DotPath::Builtin] {
        let (d1, y1) = int8::linear(gpu, path, &x, map, &lin, requant).unwrap();
        let (d2, y2, _) = int8::conv2d(
            gpu,
            path,
            (&xi, image),
            77,
            &conv,
            LayerKind::Conv(window),
            requant,
        )
        .unwrap();
        gpu.execute(&[d1, d2]).unwrap();
        outputs.push((gpu.read::<u32>(&y1).unwrap(), gpu.read::<u32>(&y2).unwrap()));
    }
    assert_eq!(outputs[0], outputs[1]);
    // Not a trivial agreement: the outputs spread over the grid.
    for words in [&outputs[0].0, &outputs[0].1] {
        let mut seen: Vec<u32> = words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .map(u32::from)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() > 30, "only {} distinct bytes", seen.len());
    }
}

#[test]
fn bad_layers_and_grids_are_refused_in_one_line() {
    let Some(gpu) = gpu() else { return };
    let image = Map::image(1, 8, 5, 5);
    let x = gpu
        .zeros(&[1, image.words()], wgdistill::gpu::DType::U32)
        .unwrap();
    let w = weights(4 * 9, 5);
    let dw = layer(gpu, &int8::pack_depthwise_weights(&w, 4, 3), &w, 9, 4);
    let window = Window {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let requant = Grid {
        scale: 0.1,
        zero_point: 0,
    }
    .requant(false, false);
    let err = int8::conv2d(
        gpu,
        DotPath::Portable,
        (&x, image),
        0,
        &dw,
        LayerKind::Depthwise(window),
        requant,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("keeps its 8 channels") && !err.contains('\n'),
        "{err}"
    );
    let err = int8::conv2d(
        gpu,
        DotPath::Portable,
        (&x, image),
        0,
        &dw,
        LayerKind::Conv(window),
        Requant::Float,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("onto a grid"), "{err}");
    let bad = Grid {
        scale: 0.1,
        zero_point: 300,
    };
    let xf = gpu
        .zeros(&[1, 8, 5, 5], wgdistill::gpu::DType::F32)
        .unwrap();
    let err = int8::quantize(gpu, &xf, image, bad)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("zero point in [0, 255]"), "{err}");
}
