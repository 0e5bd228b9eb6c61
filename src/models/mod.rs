//! Built-in model families as graphs, with PyTorch's parameter names so checkpoints interchange:
//! an MLP and a small CNN (conv-bn-relu-pool stacks). Every model reads `x` as (B, C, H, W) and
//! taps its hidden features and `logits`.

use crate::Result;
use crate::error::shape_error;
use crate::gpu::DType;
use crate::graph::{ConvLayer, Graph, Value};

/// What a model sees of each image: the image, or a second modality derived from it inside the
/// graph (cross-modal distillation: a teacher on the image teaches a student on the derived
/// modality; the pairs are exact, and the student cannot see past its modality).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// The image itself.
    #[default]
    Image,
    /// A thumbnail: 4×4 average pooling, 7×7 for 28×28 images (a sixteenth of the values).
    Thumbnail,
    /// The row and column intensity profiles: each row's and each column's mean (28 + 28
    /// values for 28×28 images), a vector for an MLP.
    Profiles,
}

impl Modality {
    /// Every modality, in the order of the docs.
    pub const ALL: [Modality; 3] = [Modality::Image, Modality::Thumbnail, Modality::Profiles];

    /// The modality called `name` (as in configs), or what the names are.
    pub fn parse(name: &str) -> std::result::Result<Modality, String> {
        Modality::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| format!("expected image, thumbnail or profiles, got '{name}'"))
    }

    /// Its name in configs.
    pub fn name(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Thumbnail => "thumbnail",
            Modality::Profiles => "profiles",
        }
    }

    /// The model's view of `x` (N, C, H, W) as maps: the image or its thumbnail (profiles are
    /// not maps).
    fn maps(self, g: &mut Graph, x: Value) -> Result<Value> {
        match self {
            Modality::Image => Ok(x),
            Modality::Thumbnail => g.avg_pool(x, 4, 4, 0),
            Modality::Profiles => Err(shape_error(
                "modality",
                "profiles are vectors, not maps: read them with an mlp",
            )),
        }
    }

    /// The model's view of `x` as flat vectors, with a name for each: one vector, or the row
    /// and the column profiles (which a first layer reads as one concatenated vector).
    fn vectors(self, g: &mut Graph, x: Value) -> Result<Vec<(&'static str, Value)>> {
        if self != Modality::Profiles {
            let maps = self.maps(g, x)?;
            return Ok(vec![("", g.flatten(maps)?)]);
        }
        let &[_, _, h, w] = g.shape(x) else {
            return Err(shape_error("modality", "profiles need (N, C, H, W) images"));
        };
        let rows = g.adaptive_avg_pool(x, [h, 1])?;
        let columns = g.adaptive_avg_pool(x, [1, w])?;
        Ok(vec![
            ("rows", g.flatten(rows)?),
            ("columns", g.flatten(columns)?),
        ])
    }
}

/// A linear layer over the concatenation of `parts` (named, flat), written as one `Linear` per
/// part, summed: `W·[a; b] + c = W_a·a + W_b·b + c`, so no concatenation is needed. One part
/// keeps the plain name (`name.weight`, `name.bias`); several are `name.PART.weight`, the bias
/// on the first.
fn linear_over(g: &mut Graph, name: &str, parts: &[(&str, Value)], width: usize) -> Result<Value> {
    let mut sum: Option<Value> = None;
    for &(part, v) in parts {
        let layer = if parts.len() == 1 {
            name.to_string()
        } else {
            format!("{name}.{part}")
        };
        let z = g.linear(&layer, v, width, sum.is_none())?;
        sum = Some(match sum {
            None => z,
            Some(s) => g.add(s, z)?,
        });
    }
    sum.ok_or_else(|| shape_error(name, "a linear layer needs an input"))
}

/// `x.flatten(1)`, then `hidden.i = ReLU(Linear)` for each width, then `head = Linear`.
/// Parameters `hidden.{i}.weight/bias`, `head.weight/bias`; taps `hidden.{i}` (after the
/// activation) and `logits`.
pub fn mlp(input: [usize; 4], hidden: &[usize], classes: usize) -> Result<Graph> {
    mlp_seeing(input, hidden, classes, Modality::Image)
}

/// [`mlp`] on a modality of the image: its first layer reads the thumbnail, or both profiles
/// (`hidden.0.rows.weight/bias` and `hidden.0.columns.weight`, a linear layer over the 56
/// concatenated values split in two).
pub fn mlp_seeing(
    input: [usize; 4],
    hidden: &[usize],
    classes: usize,
    modality: Modality,
) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("x", &input, DType::F32)?;
    let mut parts = modality.vectors(&mut g, x)?;
    for (i, &width) in hidden.iter().enumerate() {
        let name = format!("hidden.{i}");
        let z = linear_over(&mut g, &name, &parts, width)?;
        let h = g.relu(z)?;
        g.tap(&name, h)?;
        parts = vec![("", h)];
    }
    let logits = linear_over(&mut g, "head", &parts, classes)?;
    g.set_output(logits)?;
    Ok(g)
}

/// `features` = [Conv2d(3×3, pad 1, no bias), BatchNorm2d, ReLU, MaxPool2d(2)] per width, then
/// `classifier` = Linear over the flattened features, as `nn.Sequential` numbers them
/// (`features.0.weight`, `features.1.running_mean`, …, `classifier.weight`). Taps
/// `features.{4i+1}` (each block's batch-normalised map, before its ReLU: activation
/// boundaries read it), `features.{4i+3}` (each block's output) and `logits`.
pub fn cnn(input: [usize; 4], channels: &[usize], classes: usize) -> Result<Graph> {
    cnn_seeing(input, channels, classes, Modality::Image)
}

/// [`cnn`] on the image or its thumbnail (the same parameters; profiles are refused).
pub fn cnn_seeing(
    input: [usize; 4],
    channels: &[usize],
    classes: usize,
    modality: Modality,
) -> Result<Graph> {
    cnn_with_kernel(input, channels, 3, classes, modality)
}

/// [`cnn_seeing`] with `kernel`×`kernel` convolutions (odd, zero-padded to keep the map's size)
/// instead of 3×3.
pub fn cnn_with_kernel(
    input: [usize; 4],
    channels: &[usize],
    kernel: usize,
    classes: usize,
    modality: Modality,
) -> Result<Graph> {
    if kernel.is_multiple_of(2) {
        return Err(shape_error(
            "cnn",
            format!("the kernel size must be odd (its padding keeps the map's size), got {kernel}"),
        ));
    }
    let mut g = Graph::new();
    let x = g.input("x", &input, DType::F32)?;
    let mut h = modality.maps(&mut g, x)?;
    for (i, &c) in channels.iter().enumerate() {
        h = cnn_block(&mut g, "features", i, h, c, kernel)?;
    }
    let flat = g.flatten(h)?;
    let logits = g.linear("classifier", flat, classes, true)?;
    g.set_output(logits)?;
    Ok(g)
}

/// Block `i` of [`cnn`] under `prefix` (`PREFIX.{4i}` `kernel`×`kernel` conv, `.{4i+1}` BN,
/// ReLU, max pool), with its taps `PREFIX.{4i+1}` and `PREFIX.{4i+3}`.
fn cnn_block(
    g: &mut Graph,
    prefix: &str,
    i: usize,
    h: Value,
    channels: usize,
    kernel: usize,
) -> Result<Value> {
    let conv = g.conv2d(
        &format!("{prefix}.{}", 4 * i),
        h,
        ConvLayer::same(channels, kernel),
    )?;
    let bn = g.batch_norm(&format!("{prefix}.{}", 4 * i + 1), conv)?;
    g.tap(&format!("{prefix}.{}", 4 * i + 1), bn)?;
    let act = g.relu(bn)?;
    let out = g.max_pool(act, 2, 2, 0)?;
    g.tap(&format!("{prefix}.{}", 4 * i + 3), out)?;
    Ok(out)
}

/// ONE (on-the-fly native ensemble, Lan et al. 2018) on [`cnn`]: the blocks but the last are
/// shared (`features.*`); each of `branches` branches has its own last block and classifier
/// (`branches.{b}.features.*`, `branches.{b}.classifier`, tapped as `branch.{b}`); a gate on the
/// shared features (global average pooling, `gate.0` linear to one logit per branch, `gate.1`
/// batch norm, ReLU) weighs the branches' logits by its softmax into the output, the
/// on-the-fly teacher. Branch b alone is a [`cnn`] of the same channels ([`one_branch`]).
pub fn one(
    input: [usize; 4],
    channels: &[usize],
    branches: usize,
    classes: usize,
) -> Result<Graph> {
    let Some((&last, shared)) = channels.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(shape_error(
            "one",
            "needs at least two blocks: shared ones and the branches' last",
        ));
    };
    if branches < 2 {
        return Err(shape_error(
            "one",
            format!("needs at least two branches, got {branches}"),
        ));
    }
    let mut g = Graph::new();
    let mut h = g.input("x", &input, DType::F32)?;
    for (i, &c) in shared.iter().enumerate() {
        h = cnn_block(&mut g, "features", i, h, c, 3)?;
    }
    let pooled = g.global_avg_pool(h)?;
    let gate = g.linear("gate.0", pooled, branches, true)?;
    let gate = g.batch_norm("gate.1", gate)?;
    let gate = g.relu(gate)?;
    let mut logits = Vec::with_capacity(branches);
    for b in 0..branches {
        let prefix = format!("branches.{b}");
        let out = cnn_block(
            &mut g,
            &format!("{prefix}.features"),
            shared.len(),
            h,
            last,
            3,
        )?;
        let flat = g.flatten(out)?;
        let z = g.linear(&format!("{prefix}.classifier"), flat, classes, true)?;
        g.tap(&format!("branch.{b}"), z)?;
        logits.push(z);
    }
    let ensemble = g.gated_ensemble(gate, &logits)?;
    g.set_output(ensemble)?;
    Ok(g)
}

/// Branch `b` of a [`one`] model's weights as a [`cnn`] checkpoint (what one deploys): the
/// shared blocks as they are, the branch's block and classifier renamed, the gate and the other
/// branches left out.
pub fn one_branch(weights: &crate::io::TensorMap, b: usize) -> crate::io::TensorMap {
    let own = format!("branches.{b}.");
    weights
        .iter()
        .filter_map(|(name, t)| {
            if name.starts_with("features.") {
                Some((name.clone(), t.clone()))
            } else {
                name.strip_prefix(&own)
                    .map(|rest| (rest.to_string(), t.clone()))
            }
        })
        .collect()
}

/// A CIFAR-style ResNet (RepDistiller's `resnet8` … `resnet110`, with a width multiplier as in
/// `wrn-16-2`-style models): a 3×3 stem, three stages of `(depth − 2) / 6` basic blocks at widths
/// `widths` (stride 2 between stages; 1×1 conv + BN shortcuts where the shape changes), global
/// average pooling and `fc`. Parameter names follow `torchvision`/RepDistiller (`conv1.weight`,
/// `layer2.0.downsample.1.running_var`, `fc.bias`); taps `layer1`, `layer2`, `layer3`, `logits`.
pub fn resnet(
    input: [usize; 4],
    depth: usize,
    widths: [usize; 3],
    classes: usize,
) -> Result<Graph> {
    if depth < 8 || !(depth - 2).is_multiple_of(6) {
        return Err(crate::error::shape_error(
            "resnet",
            format!("depth must be 6n + 2 (8, 14, 20, 32, …), got {depth}"),
        ));
    }
    let blocks = (depth - 2) / 6;
    let conv3 = |out, stride| ConvLayer::same(out, 3).with_stride(stride);
    let mut g = Graph::new();
    let x = g.input("x", &input, DType::F32)?;
    let stem = g.conv2d("conv1", x, conv3(widths[0], 1))?;
    let stem = g.batch_norm("bn1", stem)?;
    let mut h = g.relu(stem)?;
    for (stage, &width) in widths.iter().enumerate() {
        for b in 0..blocks {
            let prefix = format!("layer{}.{b}", stage + 1);
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let c1 = g.conv2d(&format!("{prefix}.conv1"), h, conv3(width, stride))?;
            let b1 = g.batch_norm(&format!("{prefix}.bn1"), c1)?;
            let r1 = g.relu(b1)?;
            let c2 = g.conv2d(&format!("{prefix}.conv2"), r1, conv3(width, 1))?;
            let b2 = g.batch_norm(&format!("{prefix}.bn2"), c2)?;
            let shortcut = if g.shape(h) != g.shape(b2) {
                let layer = ConvLayer::same(width, 1).with_stride(stride);
                let d = g.conv2d(&format!("{prefix}.downsample.0"), h, layer)?;
                g.batch_norm(&format!("{prefix}.downsample.1"), d)?
            } else {
                h
            };
            let sum = g.add(b2, shortcut)?;
            h = g.relu(sum)?;
        }
        g.tap(&format!("layer{}", stage + 1), h)?;
    }
    let pooled = g.global_avg_pool(h)?;
    let logits = g.linear("fc", pooled, classes, true)?;
    g.set_output(logits)?;
    Ok(g)
}

/// The widths [`mobilenet`] accepts, (0, 8]: the one rule, for the builder and the config check.
pub fn check_mobilenet_width(width: f64) -> std::result::Result<(), String> {
    if width.is_finite() && width > 0.0 && width <= 8.0 {
        Ok(())
    } else {
        Err(format!("width must be in (0, 8], got {width}"))
    }
}

/// The activation after each of [`mobilenet`]'s batch norms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(x, 0)`.
    #[default]
    Relu,
    /// `min(max(x, 0), 6)`, MobileNetV2's: a bounded range that int8 quantisation keeps.
    Relu6,
}

impl Activation {
    fn apply(self, g: &mut Graph, x: crate::graph::Value) -> Result<crate::graph::Value> {
        match self {
            Activation::Relu => g.relu(x),
            Activation::Relu6 => g.relu6(x),
        }
    }
}

/// The blocks of [`mobilenet`] at width 1: (output channels, stride) after a 16-channel stem,
/// for 28×28 inputs (two stride-2 blocks leave 7×7 maps).
pub const MOBILENET_BLOCKS: [(usize, usize); 5] = [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1)];

/// A MobileNet-style network of depthwise-separable blocks (MobileNetV1's, with torchvision's
/// `features.i.…` naming): a 3×3 stem (`features.0.0` conv, `features.0.1` BN, ReLU), then per
/// block `features.i.conv.0` a depthwise 3×3 convolution (groups = its channels), `.1` BN, ReLU,
/// `.3` a pointwise 1×1 convolution, `.4` BN, ReLU; global average pooling and `classifier`.
/// Every channel count is [`MOBILENET_BLOCKS`]'s (and the stem's 16) times `width`, rounded, at
/// least 4. Every ReLU is `activation` (ReLU or ReLU6). Taps: `features.i` after each block.
pub fn mobilenet(
    input: [usize; 4],
    width: f64,
    activation: Activation,
    classes: usize,
) -> Result<Graph> {
    if let Err(message) = check_mobilenet_width(width) {
        return Err(crate::error::shape_error("mobilenet", message));
    }
    let scaled = |c: usize| ((c as f64 * width).round() as usize).max(4);
    let conv = |out, kernel, stride, groups| {
        ConvLayer::same(out, kernel)
            .with_stride(stride)
            .with_groups(groups)
    };
    let mut g = Graph::new();
    let x = g.input("x", &input, DType::F32)?;
    let stem = g.conv2d("features.0.0", x, conv(scaled(16), 3, 1, 1))?;
    let stem = g.batch_norm("features.0.1", stem)?;
    let mut h = activation.apply(&mut g, stem)?;
    g.tap("features.0", h)?;
    for (i, &(out, stride)) in MOBILENET_BLOCKS.iter().enumerate() {
        let prefix = format!("features.{}.conv", i + 1);
        let channels = g.shape(h)[1];
        let dw = g.conv2d(
            &format!("{prefix}.0"),
            h,
            conv(channels, 3, stride, channels),
        )?;
        let dw = g.batch_norm(&format!("{prefix}.1"), dw)?;
        let dw = activation.apply(&mut g, dw)?;
        let pw = g.conv2d(&format!("{prefix}.3"), dw, conv(scaled(out), 1, 1, 1))?;
        let pw = g.batch_norm(&format!("{prefix}.4"), pw)?;
        h = activation.apply(&mut g, pw)?;
        g.tap(&format!("features.{}", i + 1), h)?;
    }
    let pooled = g.global_avg_pool(h)?;
    let logits = g.linear("classifier", pooled, classes, true)?;
    g.set_output(logits)?;
    Ok(g)
}

/// The widths [`generator`] accepts: its `ngf`, from 1 to 1024.
pub fn check_generator_width(width: usize) -> std::result::Result<(), String> {
    if (1..=1024).contains(&width) {
        Ok(())
    } else {
        Err(format!("width must be from 1 to 1024, got {width}"))
    }
}

/// DFAD's image generator (Fang et al. 2019, their `GeneratorA` with `ngf = width`) for `image`
/// = (C, H, W) with H and W multiples of 4: the latent `z` (B, latent) → `l1.0` Linear to
/// 2·ngf maps of (H/4, W/4) → `conv_blocks0.0` BN → nearest 2× upsampling → `conv_blocks1.0`
/// 3×3 conv, `.1` BN, leaky ReLU 0.2 → 2× upsampling → `conv_blocks2.0` 3×3 conv to ngf, `.1`
/// BN, leaky ReLU 0.2, `.3` 3×3 conv to C, tanh, `.5` BN without affine parameters (so the
/// images come out standardised per channel, like the normalised data a teacher learnt on).
/// Reads `z`; its output (tapped `images`) is the batch of images.
pub fn generator(batch: usize, latent: usize, image: [usize; 3], width: usize) -> Result<Graph> {
    let [c, h, w] = image;
    if h % 4 != 0 || w % 4 != 0 || h == 0 || w == 0 {
        return Err(crate::error::shape_error(
            "generator",
            format!("needs image sides that are multiples of 4, got {h}×{w}"),
        ));
    }
    if let Err(message) = check_generator_width(width) {
        return Err(crate::error::shape_error("generator", message));
    }
    let conv = |out| ConvLayer::same(out, 3).with_bias();
    let mut g = Graph::new();
    let z = g.input("z", &[batch, latent], DType::F32)?;
    let (h0, w0) = (h / 4, w / 4);
    let projected = g.linear("l1.0", z, 2 * width * h0 * w0, true)?;
    let maps = g.reshape(projected, &[batch, 2 * width, h0, w0])?;
    let x = g.batch_norm("conv_blocks0.0", maps)?;
    let x = g.upsample_nearest(x, 2)?;
    let x = g.conv2d("conv_blocks1.0", x, conv(2 * width))?;
    let x = g.batch_norm("conv_blocks1.1", x)?;
    let x = g.leaky_relu(x, 0.2)?;
    let x = g.upsample_nearest(x, 2)?;
    let x = g.conv2d("conv_blocks2.0", x, conv(width))?;
    let x = g.batch_norm("conv_blocks2.1", x)?;
    let x = g.leaky_relu(x, 0.2)?;
    let x = g.conv2d("conv_blocks2.3", x, conv(c))?;
    let x = g.tanh(x)?;
    let images = g.batch_norm_with("conv_blocks2.5", x, false)?;
    g.tap("images", images)?;
    g.output = Some(images);
    Ok(g)
}

/// An adversarial distillation discriminator: an MLP over a tap's features (flattened) that
/// outputs one logit per sample, "teacher" (real) against "student" (fake). `layers.{2i}` is a
/// Linear to `hidden[i]` followed by leaky ReLU 0.2 (`layers.{2i+1}`), then `layers.{2n}` the
/// Linear to 1, as an `nn.Sequential` numbers them. Reads `x` of `input` shape.
pub fn discriminator(input: &[usize], hidden: &[usize]) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("x", input, DType::F32)?;
    let mut h = g.flatten(x)?;
    for (i, &width) in hidden.iter().enumerate() {
        let z = g.linear(&format!("layers.{}", 2 * i), h, width, true)?;
        h = g.leaky_relu(z, 0.2)?;
    }
    let logit = g.linear(&format!("layers.{}", 2 * hidden.len()), h, 1, true)?;
    g.set_output(logit)?;
    Ok(g)
}
