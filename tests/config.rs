//! Configuration errors: each names the file, the key's path (and line where the parser knows
//! it) and what was expected, on one line, before any GPU work.

use wgdistill::train::config::{self, DEFAULT_CONFIG};

/// The example configuration, which must run as written.
const EXAMPLE: &str = include_str!("../configs/example.toml");

fn check(text: &str) -> Result<(), String> {
    let c = config::parse("run.toml", text).map_err(|e| e.to_string())?;
    c.check("run.toml").map_err(|e| e.to_string())
}

#[test]
fn the_default_and_example_configs_parse_and_check() {
    check(DEFAULT_CONFIG).unwrap();
    check(EXAMPLE).unwrap();
    for text in [
        include_str!("../configs/multi_teacher.toml"),
        include_str!("../configs/teacher_assistant.toml"),
        include_str!("../configs/mutual_learning.toml"),
        include_str!("../configs/self_distillation.toml"),
        include_str!("../configs/teacher_cache.toml"),
        include_str!("../examples/pytorch_teacher/distill.toml"),
        include_str!("../configs/results.toml"),
        include_str!("../configs/feature_knowledge.toml"),
        include_str!("../configs/data_free.toml"),
        include_str!("../configs/adversarial.toml"),
        include_str!("../configs/pruning.toml"),
        include_str!("../configs/low_rank.toml"),
        include_str!("../configs/qat.toml"),
        include_str!("../configs/compression.toml"),
        include_str!("../configs/lifelong.toml"),
        include_str!("../configs/search.toml"),
        include_str!("../configs/one.toml"),
        include_str!("../configs/cross_modal.toml"),
    ] {
        check(text).unwrap();
    }
}

/// Each configuration is refused with one line that names run.toml and contains every needle.
fn assert_refused(cases: Vec<(String, &[&str])>) {
    for (text, needles) in cases {
        let e = check(&text).expect_err(&format!("must be refused: {needles:?}"));
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.starts_with("run.toml"), "{e}");
        for n in needles {
            assert!(e.contains(n), "expected '{n}' in: {e}");
        }
    }
}

fn with(find: &str, replace: &str) -> String {
    assert!(EXAMPLE.contains(find), "{find}");
    EXAMPLE.replacen(find, replace, 1)
}

#[test]
fn every_config_error_names_its_key() {
    let cases: Vec<(String, &[&str])> = vec![
        (
            with(
                "name = \"student-kd\"",
                "name = \"student-kd\"\nlabelled = 0",
            ),
            &["stages[2].labelled", "at least 1"],
        ),
        (
            with(
                "name = \"student-kd\"",
                "name = \"student-kd\"\ntest_every = 0",
            ),
            &["stages[2].test_every", "at least 1"],
        ),
        (
            with(
                "name = \"student-kd\"",
                "name = \"student-kd\"\nuse_unlabelled = false",
            ),
            &["stages[2].use_unlabelled", "set `labelled` too"],
        ),
        (
            with(
                "name = \"student-kd\"",
                "name = \"student-kd\"\nlabelled = -5",
            ),
            &["labelled", "run.toml:"],
        ),
        (
            with("batch_size = 128", "batch_size = 128\nbatchsize = 3"),
            &["run.toml:", "data", "unknown field `batchsize`"],
        ),
        (
            with("batch_size = 128", "batch_size = \"many\""),
            &["data.batch_size", "run.toml:10"],
        ),
        (
            with("dataset = \"fashion-mnist\"", "dataset = \"cifar\""),
            &["data.dataset", "unknown variant `cifar`"],
        ),
        (
            with("augment = false", "augment = true\nteacher_cache = true"),
            &["data.teacher_cache", "augment = false"],
        ),
        (
            with("augment = false", "augment = false\nteacher_cache = true").replace(
                "name = \"student-kd\"",
                "name = \"student-kd\"\naugment = true",
            ),
            &["stages[2].augment", "student-kd"],
        ),
        (
            with(
                "name = \"student-kd\"",
                "name = \"student-kd\"\nonce = true",
            ),
            &["stages[2].once", "leading stages"],
        ),
        (
            with("arch = \"mlp\"\nhidden = [512, 512]", "arch = \"vit\""),
            &["models.teacher", "vit"],
        ),
        (
            with("hidden = [512, 512]", "hidden = [512, 512]\ndepth = 3"),
            &["models.teacher", "depth"],
        ),
        (
            with(
                "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }",
                "{ kind = \"kd\", weight = 0.9, temprature = 4.0 }",
            ),
            &["stages[2].losses[1]", "temprature"],
        ),
        (
            with(
                "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }",
                "{ kind = \"kdd\" }",
            ),
            &["stages[2].losses[1].kind", "kdd"],
        ),
        (
            with(
                "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }",
                "{ kind = \"kd\", temperature = 0.0 }",
            ),
            &["stages[2].losses[1].temperature", "> 0"],
        ),
        (
            with(
                "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }",
                "{ kind = \"kd\", p = 2.0 }",
            ),
            &["stages[2].losses[1].p", "kd takes no p"],
        ),
        (
            with("adapter = \"linear\"", "adapter = \"pooling\""),
            &[
                "stages[2].losses[2].adapter",
                "unknown variant `pooling`",
                "`pool`",
            ],
        ),
        (
            with(
                "{ kind = \"rkd_distance\", weight = 25.0 }",
                "{ kind = \"crd\", nce_t = -1.0 }",
            ),
            &["stages[2].losses[3].nce_t", "> 0"],
        ),
        (
            with("student_tap = \"hidden.0\"", "student_tap = \"hidden.5\""),
            &["stages[2].losses[2].student_tap", "hidden.5", "hidden.0"],
        ),
        (
            with("teacher_tap = \"hidden.1\"", "teacher_tap = \"features.3\""),
            &["stages[2].losses[2].teacher_tap", "features.3"],
        ),
        (
            with("teachers = [\"teacher\"]", "teachers = [\"professor\"]"),
            &["stages[2].teachers[0]", "unknown model 'professor'"],
        ),
        (
            with("train = [\"student_kd\"]", "train = [\"ghost\"]"),
            &["stages[2].train[0]", "unknown model 'ghost'"],
        ),
        (
            with("teachers = [\"teacher\"]", "teachers = []"),
            &["stages[2].losses[1].kind", "needs a teacher"],
        ),
        (
            with(
                "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }",
                "{ kind = \"bce\", weight = 0.9 }",
            ),
            &[
                "stages[2].losses[1].kind",
                "bce's targets",
                "adversarial scheme",
            ],
        ),
        (
            with(
                "epochs = 3\noptimizer = { kind = \"sgd\", lr = 0.1, momentum = 0.9 }\nlosses = [{ kind = \"ce\", weight = 1.0 }]",
                "epochs = 0\noptimizer = { kind = \"sgd\", lr = 0.1, momentum = 0.9 }\nlosses = [{ kind = \"ce\", weight = 1.0 }]",
            ),
            &["stages[1].epochs", "at least 1"],
        ),
        (
            with(
                "{ kind = \"sgd\", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }",
                "{ kind = \"sgd\", lr = -1.0 }",
            ),
            &["stages[0].optimizer.lr", "> 0"],
        ),
        (
            with(
                "{ kind = \"sgd\", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }",
                "{ kind = \"rmsprop\", lr = 0.1 }",
            ),
            &["stages[0].optimizer.kind", "rmsprop"],
        ),
        (
            with(
                "{ kind = \"sgd\", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }",
                "{ kind = \"sgd\", lr = 0.1, gamma = 0.5 }",
            ),
            &["stages[0].optimizer", "schedule = \\\"step\\\""],
        ),
        (
            with(
                "name = \"student-kd\"\ntrain = [\"student_kd\"]",
                "name = \"student-kd\"\ntrain = [\"student_kd\", \"student_kd\"]",
            ),
            &["stages[2].train", "distinct models"],
        ),
        (
            with("batch_size = 128", "batch_size = 1"),
            &["data.batch_size", "at least 2"],
        ),
        ("seed = 0".to_string(), &["missing field `data`"]),
        ("this is = = not toml".to_string(), &["run.toml:1"]),
    ];
    for (text, needles) in cases {
        let e = check(&text).expect_err("must be refused");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.starts_with("run.toml"), "{e}");
        for n in needles {
            let n = n.replace("\\\"", "\"");
            assert!(e.contains(&n), "expected '{n}' in: {e}");
        }
    }
}

#[test]
fn self_distillation_heads_are_checked() {
    const SD: &str = include_str!("../configs/self_distillation.toml");
    check(SD).unwrap();
    let with = |find: &str, replace: &str| {
        assert!(SD.contains(find), "{find}");
        SD.replacen(find, replace, 1)
    };
    for (text, needles) in [
        (
            with(
                "heads = [\"hidden.0\", \"hidden.1\"]",
                "heads = [\"hidden.7\"]",
            ),
            &["stages[1].heads[0]", "hidden.7"][..],
        ),
        (
            with(
                "heads = [\"hidden.0\", \"hidden.1\"]",
                "heads = [\"logits\"]",
            ),
            &["stages[1].heads[0]", "output"],
        ),
        (
            with(
                "train = [\"student_byot\"]",
                "train = [\"student_byot\", \"student_scratch\"]",
            ),
            &["stages[1].heads", "one model"],
        ),
        (
            with(
                "{ kind = \"kd\", weight = 0.3, temperature = 3.0 }",
                "{ kind = \"kd\", weight = 0.3, temperature = 3.0, student_tap = \"hidden.0\" }",
            ),
            &["stages[1].losses[1].student_tap", "head"],
        ),
        (
            with("teacher_tap = \"hidden.2\"", "teacher_tap = \"hidden.9\""),
            &["stages[1].losses[2].teacher_tap", "hidden.9"],
        ),
    ] {
        let e = check(&text).unwrap_err();
        for n in needles {
            assert!(e.contains(n), "{n} not in: {e}");
        }
    }
}

/// Numbers out of range, sizes past the limits and names that are not identifiers: each a
/// one-line error naming the file and the key, before any GPU work (issue: reliability).
#[test]
fn numbers_sizes_and_names_are_range_checked() {
    let kd = "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }";
    let sgd = "{ kind = \"sgd\", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }";
    let cases: Vec<(String, &[&str])> = vec![
        (
            with(kd, "{ kind = \"kd\", weight = nan }"),
            &["stages[2].losses[1].weight", "≥ 0"],
        ),
        (
            with(kd, "{ kind = \"kd\", weight = inf }"),
            &["stages[2].losses[1].weight"],
        ),
        (
            with(kd, "{ kind = \"kd\", weight = -1.0 }"),
            &["stages[2].losses[1].weight"],
        ),
        (
            with(kd, "{ kind = \"kd\", temperature = 1e30 }"),
            &["stages[2].losses[1].temperature", "≤"],
        ),
        (
            with(kd, "{ kind = \"kd\", temperature = nan }"),
            &["stages[2].losses[1].temperature"],
        ),
        (
            with(kd, "{ kind = \"dkd\", alpha = -1.0 }"),
            &["stages[2].losses[1].alpha", "≥ 0"],
        ),
        (
            with(kd, "{ kind = \"dkd\", beta = inf }"),
            &["stages[2].losses[1].beta"],
        ),
        (
            with(kd, "{ kind = \"kd\", temperature = \"hot\" }"),
            &["stages[2].losses[1].temperature", "number"],
        ),
        (
            with(sgd, "{ kind = \"sgd\", lr = 0.1, momentum = nan }"),
            &["stages[0].optimizer.momentum"],
        ),
        (
            with(sgd, "{ kind = \"sgd\", lr = 0.1, momentum = -0.5 }"),
            &["stages[0].optimizer.momentum"],
        ),
        (
            with(sgd, "{ kind = \"sgd\", lr = 0.1, weight_decay = -1.0 }"),
            &["stages[0].optimizer.weight_decay"],
        ),
        (
            with(sgd, "{ kind = \"adamw\", lr = 0.1, betas = [1.0, 0.9] }"),
            &["stages[0].optimizer.betas[0]"],
        ),
        (
            with(sgd, "{ kind = \"adamw\", lr = 0.1, eps = 0.0 }"),
            &["stages[0].optimizer.eps", "> 0"],
        ),
        (
            with(
                sgd,
                "{ kind = \"sgd\", lr = 0.1, schedule = \"step\", gamma = 0.0 }",
            ),
            &["stages[0].optimizer.gamma"],
        ),
        (
            with(
                sgd,
                "{ kind = \"sgd\", lr = 0.1, schedule = \"step\", step_size = 0 }",
            ),
            &["stages[0].optimizer.step_size"],
        ),
        (
            with("hidden = [512, 512]", "hidden = [0]"),
            &["models.teacher.hidden[0]", "from 1"],
        ),
        (
            with("hidden = [512, 512]", "hidden = [100000000]"),
            &["models.teacher.hidden[0]"],
        ),
        (
            with("hidden = [512, 512]", "hidden = [60000, 60000]"),
            &["models.teacher", "hidden.1.weight", "bytes"],
        ),
        (
            with(
                "arch = \"mlp\"\nhidden = [512, 512]",
                "arch = \"cnn\"\nchannels = [0]",
            ),
            &["models.teacher.channels[0]"],
        ),
        (
            with(
                "arch = \"mlp\"\nhidden = [512, 512]",
                "arch = \"cnn\"\nchannels = []",
            ),
            &["models.teacher.channels"],
        ),
        (
            with(
                "arch = \"mlp\"\nhidden = [512, 512]",
                "arch = \"cnn\"\nchannels = [8]\nkernel = 4",
            ),
            &["models.teacher.kernel", "odd", "got 4"],
        ),
        (
            with(
                "arch = \"mlp\"\nhidden = [512, 512]",
                "arch = \"resnet\"\ndepth = 20000",
            ),
            &["models.teacher.depth", "at most"],
        ),
        (
            with(
                "arch = \"mlp\"\nhidden = [512, 512]",
                "arch = \"mobilenet\"\nwidth = 0.0",
            ),
            &["models.teacher.width", "(0, 8]"],
        ),
        (
            with("train_limit = 20000", "train_limit = 0"),
            &["data.train_limit", "at least 2"],
        ),
        (
            with("train_limit = 20000", "train_limit = 1"),
            &["data.train_limit"],
        ),
        (
            with("test_limit = 5000", "test_limit = 0"),
            &["data.test_limit"],
        ),
        (
            with("batch_size = 128", "batch_size = 10000000"),
            &["data.batch_size"],
        ),
    ];
    let mut cases = cases;
    for bad in ["../../x", "/abs/path", "a/b", ".hidden", ""] {
        let text = EXAMPLE
            .replace("[models.student_scratch]", &format!("[models.\"{bad}\"]"))
            .replace(
                "train = [\"student_scratch\"]",
                &format!("train = [\"{bad}\"]"),
            );
        cases.push((text, &["models.", "letters, digits"]));
    }
    assert_refused(cases);
}

/// The data-free stage kinds' rules: each mistake in configs/data_free.toml is one line naming
/// the stage's key.
#[test]
fn data_free_stage_errors_name_their_keys() {
    const DATA_FREE: &str = include_str!("../configs/data_free.toml");
    let with = |find: &str, replace: &str| {
        assert!(DATA_FREE.contains(find), "{find}");
        DATA_FREE.replacen(find, replace, 1)
    };
    let synthesis = "synthesis = { images = 1000, batch = 50,";
    let generator = "generator = { balance = 5.0, latent = 256, width = 16,";
    let cases: Vec<(String, &[&str])> = vec![
        (
            with(
                "name = \"teacher\"",
                "name = \"teacher\"\nsynthesis = { images = 10 }",
            ),
            &["stages[0].synthesis", "deep_inversion"],
        ),
        (
            with(
                "kind = \"deep_inversion\"",
                "kind = \"deep_inversion\"\nepochs = 3",
            ),
            &["stages[1].epochs", "trains no model"],
        ),
        (
            with("kind = \"deep_inversion\"", "kind = \"gan\""),
            &["stages[1].kind", "unknown variant `gan`"],
        ),
        (
            with(synthesis, "nothing = { images = 1000, batch = 50,"),
            &["stages[1]", "unknown field `nothing`"],
        ),
        (
            with(synthesis, "synthesis = { images = 1001, batch = 50,"),
            &["stages[1].synthesis.images", "multiple of batch"],
        ),
        (
            with("iterations = 500, lr = 0.05", "iterations = 500, lr = 0.0"),
            &["stages[1].synthesis.lr", "> 0"],
        ),
        (
            with("bn_weight = 0.05", "bn_weight = -1.0"),
            &["stages[1].synthesis.bn_weight", "≥ 0"],
        ),
        (
            with(
                "l2_weight = 1e-5 }",
                "l2_weight = 1e-5, competitor = \"student_dfad\" }",
            ),
            &[
                "stages[1].synthesis.competition",
                "needs a competition weight",
            ],
        ),
        (
            with(
                "l2_weight = 1e-5 }",
                "l2_weight = 1e-5, competitor = \"student_dfad\", competition = 0.5 }",
            ),
            &["stages[1].synthesis.competitor", "earlier stage"],
        ),
        (
            with(
                "l2_weight = 1e-5 }",
                "l2_weight = 1e-5, competition = 0.5 }",
            ),
            &["stages[1].synthesis.competitor", "needs a competitor"],
        ),
        (
            with(synthesis, "synthesis = { images = 100, batch = 50,"),
            &["stages[2].transfer", "fewer than one batch"],
        ),
        (
            with("l2_weight = 1e-5 }", "l2_weight = 1e-5, jitter = 100 }"),
            &["stages[1].synthesis.jitter", "0 to 64"],
        ),
        (
            with(
                "arch = \"cnn\"\nchannels = [16, 32]",
                "arch = \"mlp\"\nhidden = [64]",
            ),
            &["stages[1].teachers[0]", "no BatchNorm"],
        ),
        (
            with("transfer = \"synthesise\"", "transfer = \"teacher\""),
            &["stages[2].transfer", "not an earlier deep_inversion stage"],
        ),
        (
            with("batch_size = 128", "batch_size = 128\nteacher_cache = true"),
            &["stages[2].transfer", "teacher_cache"],
        ),
        (
            with(
                "optimizer = { kind = \"adamw\", lr = 2e-3, weight_decay = 1e-4 }\nlosses = [{ kind = \"kd\"",
                "losses = [{ kind = \"kd\"",
            ),
            &["stages[2].optimizer", "trains models"],
        ),
        (
            with(
                generator,
                "nothing = { balance = 5.0, latent = 256, width = 16,",
            ),
            &["stages[3]", "unknown field `nothing`"],
        ),
        (
            with(
                "losses = [{ kind = \"l1\" }]",
                "losses = [{ kind = \"kd\" }]",
            ),
            &["stages[3].losses", "l1"],
        ),
        (
            with(
                generator,
                "generator = { balance = 5.0, latent = 256, width = 0,",
            ),
            &["stages[3].generator.width", "from 1 to 1024"],
        ),
        (
            with(
                generator,
                "generator = { balance = -1.0, latent = 256, width = 16,",
            ),
            &["stages[3].generator.balance", "from 0 to 1e6", "-1"],
        ),
        (
            with(
                "batch = 64, optimizer = { kind = \"adamw\", lr = 1e-3",
                "batch = 1, optimizer = { kind = \"adamw\", lr = 1e-3",
            ),
            &["stages[3].generator.batch", "from 2", "two images"],
        ),
        (
            with(
                "kind = \"adamw\", lr = 1e-3, weight_decay = 0.0",
                "kind = \"adamw\", lr = -1e-3, weight_decay = 0.0",
            ),
            &["stages[3].generator.optimizer.lr", "> 0"],
        ),
        (
            with(
                "train = [\"student_dfad\"]\nteachers = [\"teacher\"]",
                "train = [\"student_dfad\"]\nteachers = [\"teacher\", \"teacher\"]",
            ),
            &["stages[3].teachers", "one teacher"],
        ),
        (
            with(
                "[models.student_dfad]\narch = \"cnn\"\nchannels = [8, 16]",
                "[models.student_dfad]\narch = \"cnn\"\nchannels = [8, 16]\nqat = true\nint8 = true",
            ),
            &["models.student_dfad.int8", "dfad stage"],
        ),
    ];
    assert_refused(cases);
}

/// A discriminator's settings: each mistake in configs/adversarial.toml is one line naming the
/// stage's key.
#[test]
fn discriminator_errors_name_their_keys() {
    const ADVERSARIAL: &str = include_str!("../configs/adversarial.toml");
    let with = |find: &str, replace: &str| {
        assert!(ADVERSARIAL.contains(find), "{find}");
        ADVERSARIAL.replacen(find, replace, 1)
    };
    let cases: Vec<(String, &[&str])> = vec![
        (
            with("tap = \"logits\", hidden", "tap = \"features.3\", hidden"),
            &["stages[3].discriminator.tap", "teacher_cache"],
        ),
        (
            with("teacher_cache = true", "teacher_cache = false")
                .replace("tap = \"logits\", hidden", "tap = \"features.3\", hidden"),
            &[
                "stages[3].discriminator.tap",
                "[128, 8, 14, 14]",
                "[128, 16, 14, 14]",
            ],
        ),
        (
            with("teacher_cache = true", "teacher_cache = false")
                .replace("tap = \"logits\", hidden", "tap = \"nowhere\", hidden"),
            &["stages[3].discriminator.tap", "no such tap"],
        ),
        (
            with("hidden = [64]", "hidden = [0]"),
            &["stages[3].discriminator.hidden[0]", "from 1"],
        ),
        (
            with("weight = 0.1, optimizer", "weight = -0.1, optimizer"),
            &["stages[3].discriminator.weight", "≥ 0"],
        ),
        (
            with("lr = 2e-4", "lr = 0.0"),
            &["stages[3].discriminator.optimizer.lr", "> 0"],
        ),
        (
            with(
                "weight_decay = 0.0 } }",
                "weight_decay = 0.0 }, depth = 3 }",
            ),
            &["stages[3]", "unknown field `depth`"],
        ),
        (
            with(
                "name = \"scratch\"\ntrain = [\"scratch\"]",
                "name = \"scratch\"\ntrain = [\"scratch\"]\ndiscriminator = { optimizer = { kind = \"sgd\", lr = 0.1 } }",
            ),
            &["stages[1].discriminator", "one teacher"],
        ),
    ];
    assert_refused(cases);
}

#[test]
fn pruning_settings_are_checked() {
    let kd = "losses = [\n  { kind = \"ce\", weight = 0.1 },";
    let prune = |p: &str| with(kd, &format!("prune = {p}\n{kd}"));
    assert!(check(&prune("{ sparsity = 0.5 }")).is_ok());
    assert_refused(vec![
        (
            prune("{ sparsity = 1.0 }"),
            &[
                "stages[2].prune.sparsity",
                "from 0 up to (not including) 1",
                "1",
            ],
        ),
        (
            prune("{ sparsity = 0.5, begin_epoch = 2, ramp_epochs = 2 }"),
            &["stages[2].prune", "must not pass the stage's 3 epochs"],
        ),
        (
            prune("{ sparsity = 0.5, ramp_epochs = 0 }"),
            &["stages[2].prune.ramp_epochs", "at least 1"],
        ),
        (
            prune("{ sparsity = 0.5, amount = 1 }"),
            &["stages[2]", "unknown field `amount`"],
        ),
        (
            prune("{ sparsity = 0.5, scope = \"row\" }"),
            &["stages[2]", "unknown variant `row`"],
        ),
        (
            with(kd, &format!("start_from = \"nobody\"\n{kd}")),
            &["stages[2].start_from", "'nobody' is neither trained"],
        ),
        (
            with(kd, &format!("start_from = \"teacher\"\n{kd}")),
            &["stages[2].start_from", "different parameters"],
        ),
    ]);
}

#[test]
fn low_rank_tables_are_checked_and_start_from_splits_their_layers() {
    let scratch = "[models.student_scratch]\narch = \"mlp\"\nhidden = [32]";
    let factorised = |table: &str| with(scratch, &format!("{scratch}\nlow_rank = {table}"));
    assert!(check(&factorised("{ head = 10, \"hidden.0\" = 1 }")).is_ok());
    // A KD student that starts from the scratch student, its first layer split at rank 8.
    let kd = "losses = [\n  { kind = \"ce\", weight = 0.1 },";
    let split = with(
        "[models.student_kd]\narch = \"mlp\"\nhidden = [32]",
        "[models.student_kd]\narch = \"mlp\"\nhidden = [32]\nlow_rank = { \"hidden.0\" = 8 }",
    )
    .replacen(kd, &format!("start_from = \"student_scratch\"\n{kd}"), 1);
    assert!(check(&split).is_ok(), "{:?}", check(&split));
    // A quantisation-aware student starts from a float one: its observers start afresh.
    let qat = split.replacen("low_rank = { \"hidden.0\" = 8 }", "qat = true", 1);
    assert!(check(&qat).is_ok(), "{:?}", check(&qat));
    let mobilenet = "[models.mobile]\narch = \"mobilenet\"\nwidth = 0.5\nlow_rank = ";
    assert_refused(vec![
        (
            factorised("{ head = 0 }"),
            &[
                "models.student_scratch.low_rank.head",
                "from 1 to 10, got 0",
            ],
        ),
        (
            factorised("{ \"hidden.0\" = 33 }"),
            &["models.student_scratch.low_rank.hidden.0", "from 1 to 32"],
        ),
        (
            factorised("{ hidden = 3 }"),
            &["low_rank.hidden", "no layer of this name"],
        ),
        (
            with(scratch, &format!("{scratch}\nqat = \"yes\"")),
            &["models.student_scratch", "expected a boolean"],
        ),
        (
            with(scratch, &format!("{scratch}\nint8 = true")),
            &["models.student_scratch.int8", "set qat = true"],
        ),
        (
            with(
                scratch,
                "[models.student_scratch]\narch = \"resnet\"\ndepth = 8\nqat = true\nint8 = true",
            ),
            &["models.student_scratch.int8", "no int8 kernel"],
        ),
        (
            factorised("{ head = \"two\" }"),
            &["models.student_scratch", "expected usize"],
        ),
        (
            with(
                scratch,
                &format!("{scratch}\n{mobilenet}{{ \"features.1.conv.0\" = 2 }}"),
            ),
            &[
                "models.mobile.low_rank.features.1.conv.0",
                "grouped convolution",
            ],
        ),
        (
            split.replacen(
                "hidden = [32]\n[models",
                "hidden = [32]\nlow_rank = { head = 4 }\n[models",
                1,
            ),
            &["stages[2].start_from", "different parameters", "low_rank"],
        ),
    ]);
}

#[test]
fn lifelong_stage_errors_name_their_keys() {
    const LIFELONG: &str = include_str!("../configs/lifelong.toml");
    let with = |find: &str, replace: &str| {
        assert!(LIFELONG.contains(find), "{find}");
        LIFELONG.replacen(find, replace, 1)
    };
    let lwf = "train = [\"lwf\"]";
    let cases: Vec<(String, &[&str])> = vec![
        (
            with("lifelong = { tasks = 5 }", "lifelong = { tasks = 3 }"),
            &["stages[0].lifelong.tasks", "2, 5, 10", "got 3"],
        ),
        (
            with(
                "lifelong = { tasks = 5 }",
                "lifelong = { tasks = 5, epochs = 2 }",
            ),
            &["unknown field `epochs`"],
        ),
        (
            with(lwf, "train = [\"lwf\", \"joint\"]"),
            &["stages[1].train", "one model"],
        ),
        (
            with(lwf, &format!("{lwf}\nteachers = [\"finetune\"]")),
            &["stages[1].teachers", "previous task"],
        ),
        (
            with(
                "lifelong = { tasks = 5, joint = true }",
                "lifelong = { tasks = 5, joint = true, memory = 100 }",
            ),
            &["lifelong.memory", "joint"],
        ),
        (
            with(
                "lifelong = { tasks = 5, memory = 2000 }",
                "lifelong = { tasks = 5, memory = 5 }",
            ),
            &["stages[3].lifelong.memory", "at least 10", "got 5"],
        ),
        (
            with(
                "lifelong = { tasks = 5, memory = 2000 }",
                "lifelong = { tasks = 5, memory = 2000, labels = \"task\" }",
            ),
            &["stages[3].lifelong.labels", "\"seen\""],
        ),
        (
            with(
                "lifelong = { tasks = 5, joint = true }\noptimizer = { kind = \"adamw\", lr = 1e-3, weight_decay = 0.0 }\nlosses = [{ kind = \"ce\" }]",
                "lifelong = { tasks = 5, joint = true }\noptimizer = { kind = \"adamw\", lr = 1e-3, weight_decay = 0.0 }\nlosses = [{ kind = \"ce\" }, { kind = \"kd\" }]",
            ),
            &["stages[4].losses[1].kind", "joint"],
        ),
        (
            with(
                "losses = [{ kind = \"ce\" }, { kind = \"kd\", temperature = 2.0 }]",
                "losses = [{ kind = \"ce\" }, { kind = \"dkd\" }]",
            ),
            &["stages[1].losses[1].kind", "dkd", "old classes"],
        ),
        (
            with(
                "losses = [{ kind = \"ce\" }, { kind = \"kd\", temperature = 2.0 }]",
                "losses = [{ kind = \"ce\" }, { kind = \"kd\", teacher_tap = \"hidden.0\" }]",
            ),
            &["stages[1].losses[1]", "picks the taps"],
        ),
        (
            with(
                "losses = [{ kind = \"ce\" }, { kind = \"kd\", temperature = 2.0 }]",
                "losses = [{ kind = \"kd\", temperature = 2.0 }]",
            ),
            &["stages[1].losses", "label term"],
        ),
        (
            with(
                "name = \"finetune\"\nkind = \"lifelong\"",
                "name = \"finetune\"",
            ),
            &["stages[0].lifelong", "belongs to lifelong stages"],
        ),
        (
            with(lwf, &format!("{lwf}\nlabelled = 100")),
            &["stages[1].labelled", "only in a `train` stage"],
        ),
        (
            with(lwf, &format!("{lwf}\ntest_every = 2")),
            &["stages[1].test_every", "only there"],
        ),
    ];
    assert_refused(cases);
}

#[test]
fn search_settings_are_checked() {
    const SEARCH: &str = include_str!("../configs/search.toml");
    let with = |find: &str, replace: &str| {
        assert!(SEARCH.contains(find), "{find}");
        SEARCH.replacen(find, replace, 1)
    };
    let cases: Vec<(String, &[&str])> = vec![
        (
            with(
                "teacher = \"teacher\"\ncandidates",
                "teacher = \"tutor\"\ncandidates",
            ),
            &["search.teacher", "unknown model 'tutor'"],
        ),
        (
            with("candidates = 16", "candidates = 0"),
            &["search.candidates", "from 1 to", "got 0"],
        ),
        (
            with("latency_ms = 150.0", "latency_ms = -1.0"),
            &["search.latency_ms", "> 0"],
        ),
        (
            with("population = 6", "population = 6\nbudget = 3"),
            &["search", "unknown field `budget`"],
        ),
        (
            with(
                "final_epochs = 5",
                "final_epochs = 5\nspace = { cnn_depth = [0, 2] }",
            ),
            &["search.space.cnn_depth", "1 ≤ least"],
        ),
        (
            with(
                "final_epochs = 5",
                "final_epochs = 5\nspace = { families = [] }",
            ),
            &["search.space.families", "at least one"],
        ),
        (
            with(
                "final_epochs = 5",
                "final_epochs = 5\nspace = { cnn_kernels = [3, 4] }",
            ),
            &["search.space.cnn_kernels", "1, 3, 5 and 7", "[3, 4]"],
        ),
        (
            with(
                "final_epochs = 5",
                "final_epochs = 5\nspace = { families = [\"resnet\"] }",
            ),
            &["search.space", "resnet"],
        ),
        (
            with(
                "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }",
                "{ kind = \"kd\", weight = 0.9, temperature = -4.0 }",
            ),
            &["search.losses", "temperature"],
        ),
    ];
    assert_refused(cases);
}

/// A multi-branch model's only teacher is its gated ensemble: feature terms and teachers are
/// refused in one line that says so.
#[test]
fn multi_branch_stages_take_logits_terms_only() {
    const ONE: &str = include_str!("../configs/one.toml");
    let kd = "losses = [{ kind = \"ce\" }, { kind = \"kd\", temperature = 3.0, rampup = { epochs = 0.54 } }]";
    assert!(ONE.contains(kd));
    let cases: Vec<(String, &[&str])> = vec![(
        ONE.replacen(kd, "losses = [{ kind = \"ce\" }, { kind = \"hint\" }]", 1),
        &[
            "stages[2].losses[1].kind",
            "hint compares feature maps",
            "gated ensemble",
        ],
    )];
    assert_refused(cases);
}

/// A term's weight ramp: `warmup_epochs` steps linearly once per epoch (as before), `rampup`
/// climbs smoothly within epochs along its shape; its settings are range-checked, and stage
/// kinds that would not apply it refuse it.
#[test]
fn loss_weight_ramps_follow_their_shape_and_are_checked() {
    let parsed = |kd: &str| {
        let c = config::parse(
            "run.toml",
            &with("{ kind = \"kd\", weight = 0.9, temperature = 4.0 }", kd),
        )
        .unwrap();
        c.check("run.toml").unwrap();
        c.stages[2].losses[1].clone()
    };
    let sigmoid = parsed("{ kind = \"kd\", rampup = { epochs = 0.5 } }");
    assert!((sigmoid.ramp(0.0) - (-5.0f32).exp()).abs() < 1e-7);
    assert!((sigmoid.ramp(0.25) - (-1.25f32).exp()).abs() < 1e-6);
    assert_eq!(sigmoid.ramp(0.5), 1.0);
    assert_eq!(sigmoid.ramp(3.0), 1.0);
    assert!(sigmoid.ramps_during(0) && !sigmoid.ramps_during(1));
    let linear = parsed("{ kind = \"kd\", rampup = { epochs = 2.0, shape = \"linear\" } }");
    assert_eq!(linear.ramp(0.0), 0.0);
    assert_eq!(linear.ramp(1.5), 0.75);
    assert!(linear.ramps_during(1) && !linear.ramps_during(2));
    let warmup = parsed("{ kind = \"kd\", warmup_epochs = 4 }");
    let per_epoch: Vec<f32> = [0.0, 0.9, 1.0, 3.5, 7.0].map(|p| warmup.ramp(p)).to_vec();
    assert_eq!(per_epoch, [0.25, 0.25, 0.5, 1.0, 1.0]);
    assert!(!warmup.ramps_during(0));
    assert_eq!(parsed("{ kind = \"kd\" }").ramp(0.0), 1.0);

    let kd = "{ kind = \"kd\", weight = 0.9, temperature = 4.0 }";
    let mut cases: Vec<(String, &[&str])> = vec![
        (
            with(kd, "{ kind = \"kd\", rampup = { epochs = 0.0 } }"),
            &["stages[2].losses[1].rampup.epochs", "(0, 10000]", "got 0"],
        ),
        (
            with(kd, "{ kind = \"kd\", rampup = { epochs = nan } }"),
            &["stages[2].losses[1].rampup.epochs"],
        ),
        (
            with(
                kd,
                "{ kind = \"kd\", rampup = { epochs = 1.0, shape = \"cosine\" } }",
            ),
            &["unknown variant `cosine`", "sigmoid"],
        ),
        (
            with(
                kd,
                "{ kind = \"kd\", warmup_epochs = 2, rampup = { epochs = 1.0 } }",
            ),
            &["stages[2].losses[1].rampup", "not both"],
        ),
    ];
    const LIFELONG: &str = include_str!("../configs/lifelong.toml");
    let lwf_kd = "{ kind = \"kd\", temperature = 2.0 }";
    assert!(LIFELONG.contains(lwf_kd));
    cases.push((
        LIFELONG.replacen(
            lwf_kd,
            "{ kind = \"kd\", temperature = 2.0, rampup = { epochs = 1.0 } }",
            1,
        ),
        &["losses[1].rampup", "warmup_epochs"],
    ));
    const DATA_FREE: &str = include_str!("../configs/data_free.toml");
    let l1 = "losses = [{ kind = \"l1\" }]";
    assert!(DATA_FREE.contains(l1));
    cases.push((
        DATA_FREE.replacen(l1, "losses = [{ kind = \"l1\", warmup_epochs = 2 }]", 1),
        &["losses", "constant weight"],
    ));
    assert_refused(cases);
}
