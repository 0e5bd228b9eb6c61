//! The `wgdistill` binary as a user meets it: devices on each backend, and one-line errors with no
//! backtrace even when RUST_BACKTRACE is set.

mod common;

use std::process::{Command, Output};

fn wgdistill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgdistill"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("WGPU_BACKEND")
        .env_remove("WGPU_ADAPTER_NAME")
        .output()
        .expect("wgdistill runs")
}

/// The command succeeded (else its stderr is the failure message).
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A JSON file the command wrote.
fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_one_line_error(out: &Output) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("wgdistill:"))
        .collect();
    assert_eq!(ours.len(), 1, "one error line expected:\n{stderr}");
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn dx12_on_linux_is_one_clear_line_and_a_failure() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let out = wgdistill(&["--backend", "dx12", "devices"]);
    assert_one_line_error(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dx12") && stderr.contains("--backend vulkan"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_backend_is_one_clear_line() {
    let out = wgdistill(&["--backend", "cuda", "devices"]);
    assert_one_line_error(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend 'cuda'"));
}

/// `devices` on one backend, or `None` (skip, outside CI) when that backend has no adapter here.
fn devices_on(backend: &str) -> Option<serde_json::Value> {
    let out = wgdistill(&["--backend", backend, "devices", "--json"]);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !common::in_ci(),
            "CI needs an adapter on {backend}: {stderr}"
        );
        eprintln!("SKIP: no {backend} adapter here: {stderr}");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("devices --json prints JSON"))
}

#[test]
fn devices_lists_an_adapter_on_vulkan_and_on_gl() {
    for backend in ["vulkan", "gl"] {
        let Some(json) = devices_on(backend) else {
            continue;
        };
        let adapters = json.as_array().expect("an array of adapters");
        assert!(!adapters.is_empty());
        for a in adapters {
            assert_eq!(a["backend"], backend);
            assert!(a["name"].as_str().is_some_and(|n| !n.is_empty()));
            assert!(
                a["limits"]["max_storage_buffer_binding_size"]
                    .as_u64()
                    .unwrap()
                    > 0
            );
            assert!(a["kernel_style"].is_string());
        }
        if common::in_ci() {
            // CI runs on Mesa's software drivers, and on SwiftShader (tools/webgpu/check.sh).
            assert!(adapters.iter().any(|a| {
                let name = a["name"].as_str().unwrap();
                name.contains("llvmpipe") || name.contains("SwiftShader")
            }));
        }
    }
}

#[test]
fn devices_text_names_backend_driver_and_limits() {
    let out = wgdistill(&["devices"]);
    if !out.status.success() {
        assert!(!common::in_ci(), "{}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "backend",
        "driver",
        "storage binding",
        "workgroups/dimension",
        "kernel style",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
}

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn op_runs_a_golden_case_from_file_to_file() {
    let out_path =
        std::env::temp_dir().join(format!("wgdistill-op-{}.safetensors", std::process::id()));
    let backend = std::env::var("WGPU_BACKEND").unwrap_or_default();
    let out = Command::new(env!("CARGO_BIN_EXE_wgdistill"))
        .args([
            "op",
            "dkd",
            "--input",
            &fixture("dkd_default.in.safetensors"),
        ])
        .args([
            "--output",
            out_path.to_str().unwrap(),
            "--attr",
            "alpha=1",
            "--attr",
            "beta=8",
        ])
        .args(["--attr", "temperature=4", "--backend", &backend])
        .output()
        .expect("runs");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !common::in_ci() && stderr.contains("no GPU adapter"),
            "{stderr}"
        );
        return;
    }
    let got = wgdistill::io::read_safetensors(&out_path).unwrap();
    let want = wgdistill::io::read_safetensors(std::path::Path::new(&fixture(
        "dkd_default.expected.safetensors",
    )))
    .unwrap();
    for name in ["loss", "grad_student"] {
        let w: Vec<f64> = want[name]
            .as_f32()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        wgdistill::reference::allclose(got[name].as_f32().unwrap(), &w, 1e-4, 1e-5).unwrap();
    }
    let _ = std::fs::remove_file(out_path);
}

/// `op --replay` writes a launch record with everything another WebGPU implementation needs:
/// each launch's kernel, layout, parameters and ranges inside recorded buffers, the inputs' bytes,
/// and the op's outputs by name. (tools/webgpu/dawn_check.mjs replays them on Dawn in CI.)
#[test]
fn op_writes_a_launch_record_another_implementation_can_replay() {
    use base64::Engine as _;
    let stem = std::env::temp_dir().join(format!("wgdistill-replay-{}", std::process::id()));
    let (out_path, record_path) = (
        stem.with_extension("safetensors"),
        stem.with_extension("json"),
    );
    let input = fixture("kd_t4.in.safetensors");
    let Some(out) = on_ci_backend(&[
        "op",
        "kd",
        "--input",
        &input,
        "--output",
        out_path.to_str().unwrap(),
        "--attr",
        "temperature=4",
        "--replay",
        record_path.to_str().unwrap(),
    ]) else {
        return;
    };
    assert_success(&out);
    let record: serde_json::Value = read_json(&record_path);
    assert_eq!(record["format"], wgdistill::gpu::replay::FORMAT);
    let b64 = base64::engine::general_purpose::STANDARD;
    let buffers: Vec<Vec<u8>> = record["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let bytes = b64.decode(b["data"].as_str().unwrap()).unwrap();
            assert_eq!(bytes.len() as u64, b["bytes"].as_u64().unwrap());
            bytes
        })
        .collect();
    let all = wgdistill::kernels::all_kernels();
    let launches = record["launches"].as_array().unwrap();
    assert!(!launches.is_empty());
    for l in launches {
        let spec = all
            .iter()
            .find(|k| l["family"] == k.family && l["entry"] == k.entry)
            .unwrap_or_else(|| panic!("unknown kernel {l}"));
        let params = b64.decode(l["params"].as_str().unwrap()).unwrap();
        assert_eq!(params.len(), spec.params, "{}", spec.name());
        let resources = l["resources"].as_array().unwrap();
        assert_eq!(resources.len() + 1, spec.bindings.len(), "{}", spec.name());
        for r in resources {
            let end = r["offset"].as_u64().unwrap() + r["size"].as_u64().unwrap();
            assert!(end as usize <= buffers[r["buffer"].as_u64().unwrap() as usize].len());
        }
    }
    // The inputs' values are in the record, at the offset a launch binds them.
    let inputs = wgdistill::io::read_safetensors(std::path::Path::new(&input)).unwrap();
    for (name, tensor) in &inputs {
        let bytes: &[u8] = bytemuck::cast_slice(tensor.as_f32().unwrap());
        let found = launches
            .iter()
            .flat_map(|l| l["resources"].as_array().unwrap())
            .any(|r| {
                let (buffer, offset) =
                    (r["buffer"].as_u64().unwrap(), r["offset"].as_u64().unwrap());
                buffers[buffer as usize].get(offset as usize..offset as usize + bytes.len())
                    == Some(bytes)
            });
        assert!(found, "input '{name}' is not in the record");
    }
    let names: Vec<&str> = record["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    let written = wgdistill::io::read_safetensors(&out_path).unwrap();
    let mut expected: Vec<&str> = written.keys().map(String::as_str).collect();
    expected.sort_unstable();
    let mut names_sorted = names.clone();
    names_sorted.sort_unstable();
    assert_eq!(names_sorted, expected);
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(record_path);
}

#[test]
fn op_input_errors_are_one_line_before_any_gpu_work() {
    let input = fixture("kd_t4.in.safetensors");
    for args in [
        vec![
            "op",
            "kd",
            "--input",
            "/no/such/file.safetensors",
            "--output",
            "/tmp/x.safetensors",
        ],
        vec![
            "op",
            "kd",
            "--input",
            &input,
            "--output",
            "/tmp/x.safetensors",
            "--attr",
            "temperature",
        ],
        vec![
            "op",
            "kd",
            "--input",
            &input,
            "--output",
            "/tmp/x.safetensors",
            "--attr",
            "t=4",
        ],
        vec![
            "op",
            "ce",
            "--input",
            &input,
            "--output",
            "/tmp/x.safetensors",
        ],
        vec![
            "op",
            "nope",
            "--input",
            &input,
            "--output",
            "/tmp/x.safetensors",
        ],
        vec![
            "op",
            "kd",
            "--input",
            &input,
            "--output",
            "/no/such/dir/x.safetensors",
        ],
    ] {
        // An adapter that cannot exist: each error must come before the GPU is touched.
        let mut full = vec!["--adapter", "no-such-adapter-anywhere"];
        full.extend(args.iter().copied());
        let out = wgdistill(&full);
        assert_one_line_error(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("no GPU adapter"),
            "input error expected first: {stderr}"
        );
    }
}

#[test]
fn op_list_names_every_loss_with_its_contract() {
    let out = wgdistill(&["op", "--list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "ce",
        "kd",
        "dkd",
        "hint",
        "at",
        "sp",
        "rkd_distance",
        "rkd_angle",
        "pkt",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains("temperature=4") && text.contains("grad_student"));
}

fn on_ci_backend(args: &[&str]) -> Option<Output> {
    on_ci_backend_with(args, &[])
}

/// [`on_ci_backend`] with these environment variables set.
fn on_ci_backend_with(args: &[&str], envs: &[(&str, &std::path::Path)]) -> Option<Output> {
    let backend = std::env::var("WGPU_BACKEND").unwrap_or_default();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wgdistill"));
    command
        .args(["--backend", backend.as_str()])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("WGPU_ADAPTER_NAME");
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().expect("wgdistill runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("no GPU adapter") {
        assert!(!common::in_ci(), "{stderr}");
        return None;
    }
    Some(out)
}

#[test]
fn check_passes_on_this_adapter() {
    let dir = std::env::temp_dir().join(format!("wgdistill-records-{}", std::process::id()));
    let Some(out) = on_ci_backend(&["check", "--replay", dir.to_str().unwrap()]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("kernel checks passed") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    // --replay: one record per case, each with its reference and tolerances.
    let index: Vec<serde_json::Value> = read_json(&dir.join("index.json"));
    let cases = stdout.lines().filter(|l| l.contains(" pass ")).count();
    assert_eq!(index.len(), cases, "{stdout}");
    let kd = index
        .iter()
        .find(|e| e["kernel"] == "kd (temperature=4)")
        .unwrap();
    let record: serde_json::Value = read_json(&dir.join(kd["file"].as_str().unwrap()));
    assert_eq!(
        record["name"],
        format!("kd (temperature=4) {}", kd["shape"].as_str().unwrap())
    );
    assert!(record["expected"].as_array().is_some_and(|e| !e.is_empty()));
    assert!(record["rtol"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_writes_json_with_the_adapter_and_same_run_baselines() {
    let path = std::env::temp_dir().join(format!("wgdistill-bench-{}.json", std::process::id()));
    let Some(out) = on_ci_backend(&[
        "bench",
        "--filter",
        "relu",
        "--json",
        path.to_str().unwrap(),
    ]) else {
        return;
    };
    assert_success(&out);
    let json: serde_json::Value = read_json(&path);
    let rows = json.as_array().unwrap();
    let relu = rows
        .iter()
        .find(|r| r["kernel"] == "relu")
        .expect("relu row");
    for key in [
        "kernel", "shape", "seconds", "gbps", "adapter", "backend", "driver", "baseline", "ratio",
    ] {
        assert!(!relu[key].is_null(), "{key} missing: {relu}");
    }
    assert!(relu["seconds"].as_f64().unwrap() > 0.0);
    assert!(
        rows.iter().any(|r| r["kernel"] == "stream"),
        "the baseline is measured in the same run"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn bench_with_a_filter_that_matches_nothing_fails() {
    let Some(out) = on_ci_backend(&["bench", "--filter", "no-such-kernel"]) else {
        return;
    };
    assert!(!out.status.success());
    assert_one_line_error(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-kernel") && stderr.contains("matmul"),
        "{stderr}"
    );
}

/// A whole training step in the bench suite, beside a peer's figure for the same case: the
/// table names the speedup, the JSON the samples per second and the launches per step, and
/// `--profile` where the step's time goes, kernel by kernel.
#[test]
fn bench_times_a_training_step_and_compares_it_with_a_peer() {
    let dir = std::env::temp_dir().join(format!("wgdistill-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let peer = dir.join("peer.json");
    std::fs::write(
        &peer,
        r#"[{"kernel": "kd_step", "shape": "mlp[512,512]→mlp[32] b128", "seconds": 0.5, "peer": "a test"}]"#,
    )
    .unwrap();
    let json = dir.join("bench.json");
    let Some(out) = on_ci_backend(&[
        "bench",
        "--filter",
        "kd_step",
        "--json",
        json.to_str().unwrap(),
        "--compare",
        peer.to_str().unwrap(),
        "--profile",
    ]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_success(&out);
    assert!(
        stdout.contains("speedup") && stdout.contains("a test"),
        "{stdout}"
    );
    assert!(stdout.contains("by kernel:"), "{stdout}");
    let rows: serde_json::Value = read_json(&json);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "the filtered case: {rows:?}");
    assert!(rows[0]["samples_per_second"].as_f64().unwrap() > 0.0);
    let launches = rows[0]["launches"].as_u64().unwrap();
    assert!(launches > 10);
    // The profile accounts for every launch, each kernel once, with a positive time.
    let profile = rows[0]["profile"].as_array().expect("profile");
    let counted: u64 = profile
        .iter()
        .map(|k| k["launches"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, launches, "{profile:?}");
    assert!(profile.iter().all(|k| k["seconds"].as_f64().unwrap() > 0.0));
    assert!(
        profile.iter().any(|k| k["kernel"] == "response::kd"),
        "{profile:?}"
    );
    // The slowest launches, one by one: five, slowest first, each the largest of its kernel's
    // share, at distinct places in the plan.
    let slowest = rows[0]["slowest"].as_array().expect("slowest");
    assert_eq!(slowest.len(), 5, "{slowest:?}");
    let times: Vec<f64> = slowest
        .iter()
        .map(|l| l["seconds"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    for l in slowest {
        let share = profile.iter().find(|k| k["kernel"] == l["kernel"]).unwrap();
        assert!(l["seconds"].as_f64().unwrap() <= share["seconds"].as_f64().unwrap());
        assert!(l["index"].as_u64().unwrap() < launches);
    }
    assert!(stdout.contains("the slowest launches"), "{stdout}");
    // A peer file that is not one, and one with no case in common.
    std::fs::write(&peer, "[{\"kernel\": 3}]").unwrap();
    let out = on_ci_backend(&["bench", "--compare", peer.to_str().unwrap()]).unwrap();
    assert_one_line_error(&out);
    std::fs::write(&peer, r#"[{"kernel": "x", "shape": "y", "seconds": 1.0}]"#).unwrap();
    let out = on_ci_backend(&["bench", "--compare", peer.to_str().unwrap()]).unwrap();
    assert_one_line_error(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no case of the peer's"));
}

/// `wgdistill shaders --export DIR` writes every kernel family as standard WGSL (the subgroup
/// files with their `enable` directive); a folder it cannot create is one line.
#[test]
fn shaders_export_writes_every_family_as_standard_wgsl() {
    let dir = std::env::temp_dir().join(format!("wgdistill-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = wgdistill(&["shaders", "--export", dir.to_str().unwrap()]);
    assert_success(&out);
    for file in wgdistill::gpu::shaders::SHADER_FILES {
        let text = std::fs::read_to_string(dir.join(format!("{}.wgsl", file.name))).unwrap();
        assert_eq!(text, file.standard_source(), "{}", file.name);
    }
    // kernels.json: every pipeline the launchers build, with its layout and overrides.
    let list: Vec<serde_json::Value> = read_json(&dir.join("kernels.json"));
    let all = wgdistill::kernels::all_kernels();
    assert_eq!(list.len(), all.len());
    for (entry, spec) in list.iter().zip(&all) {
        assert_eq!(entry["family"], spec.family);
        assert_eq!(entry["entry"], spec.entry);
        assert_eq!(
            entry["bindings"].as_array().unwrap().len(),
            spec.bindings.len()
        );
        assert_eq!(entry["bindings"][0], "uniform", "{}", spec.name());
    }
    let matmul = list.iter().find(|e| e["entry"] == "matmul_rb").unwrap();
    assert_eq!(
        matmul["overrides"],
        serde_json::json!(["TRANS_A", "TRANS_B"])
    );
    let listed = String::from_utf8_lossy(&wgdistill(&["shaders"]).stdout).into_owned();
    assert!(
        listed.contains("matmul_subgroup") && listed.contains("(subgroups)"),
        "{listed}"
    );
    let blocked = dir.join("response.wgsl").join("sub");
    let out = wgdistill(&["shaders", "--export", blocked.to_str().unwrap()]);
    assert_one_line_error(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `wgdistill eval` reads a low-rank, quantisation-aware checkpoint with the model's `low_rank`
/// table given as `--low-rank` and `--qat`; a malformed entry, and a whole checkpoint read as a
/// split model, are one line.
#[test]
fn eval_reads_a_low_rank_checkpoint_and_refuses_a_mismatch_in_one_line() {
    use wgdistill::io::{HostTensor, TensorMap};
    let dir = std::env::temp_dir().join(format!("wgdistill-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A small Fashion-MNIST-shaped data set (300 test images), so that each eval is quick.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (prefix, n) in [("train", 8u32), ("t10k", 300)] {
        let idx = |dims: &[u32], body: Vec<u8>| {
            let mut b = vec![0, 0, 8, dims.len() as u8];
            dims.iter()
                .for_each(|d| b.extend_from_slice(&d.to_be_bytes()));
            b.extend(body);
            b
        };
        let pixels = (0..n * 784).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8);
        let images = idx(&[n, 28, 28], pixels.collect());
        std::fs::write(data.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let labels = idx(&[n], (0..n).map(|i| (i % 10) as u8).collect());
        std::fs::write(data.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
    let data = data.display().to_string();
    let ranks = [("classifier".to_string(), 3)].into();
    let whole = wgdistill::models::cnn([1, 1, 28, 28], &[4, 8], 10).unwrap();
    let checkpoint = |graph: &wgdistill::graph::Graph, name: &str| {
        let tensors: TensorMap = graph
            .params()
            .map(|(_, n)| {
                let count = n.shape.iter().product();
                (n.name.clone(), HostTensor::f32(&n.shape, vec![0.01; count]))
            })
            .collect();
        let path = dir.join(name);
        wgdistill::io::write_safetensors(&path, &tensors).unwrap();
        path.display().to_string()
    };
    // A split, quantisation-aware checkpoint: observer buffers beside the weights.
    let split = checkpoint(
        &whole
            .factorised(&ranks)
            .unwrap()
            .quantization_aware(0.01)
            .unwrap(),
        "split.safetensors",
    );
    let dense = checkpoint(&whole, "whole.safetensors");
    let eval = |file: &str, low_rank: &str| {
        let args = [
            "eval",
            file,
            "--arch",
            "cnn",
            "--channels",
            "4,8",
            "--low-rank",
            low_rank,
            "--qat",
            "--data",
            &data,
        ];
        on_ci_backend(&args)
    };
    let Some(out) = eval(&split, "classifier=3") else {
        return;
    };
    assert_success(&out);
    // Conv 36 + BN 8 + conv 288 + BN 16 + classifier.0 3·392 + classifier.1 3·10 + 10: the
    // observers' buffers, like BatchNorm's running statistics, are not parameters.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("test accuracy"), "{stdout}");
    assert!(stdout.contains("; 1564 parameters, "), "{stdout}");
    assert!(stdout.contains(" images/s at batch 256"), "{stdout}");
    let out = eval(&split, "classifier").unwrap();
    assert_one_line_error(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected LAYER=RANK"));
    let out = eval(&dense, "classifier=3").unwrap();
    assert_one_line_error(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("whole.safetensors"), "{stderr}");

    // A quantisation-aware checkpoint with observed grids: exported to int8, which eval runs.
    let qat = whole.quantization_aware(0.01).unwrap();
    let tensors: TensorMap = qat
        .params()
        .map(|(_, n)| {
            let count: usize = n.shape.iter().product();
            let values = if n.name.ends_with(".qparams") {
                let scale = if n.name.contains("weight") {
                    1e-4
                } else {
                    0.05
                };
                [scale, 0.0].repeat(count / 2)
            } else if n.name.ends_with(".range") {
                [-1.0, 1.0].repeat(count / 2)
            } else {
                (0..count).map(|i| 0.01 * (i % 7) as f32).collect()
            };
            (n.name.clone(), HostTensor::f32(&n.shape, values))
        })
        .collect();
    let qat_file = dir.join("qat.safetensors");
    wgdistill::io::write_safetensors(&qat_file, &tensors).unwrap();
    let int8_file = dir.join("qat.int8.safetensors");
    let (qat_file, int8_file) = (
        qat_file.display().to_string(),
        int8_file.display().to_string(),
    );
    let cnn = ["--arch", "cnn", "--channels", "4,8", "--data", &data];
    let run = |args: &[&str]| on_ci_backend(&[&["eval"], args, &cnn].concat()).unwrap();
    let out = run(&[&qat_file, "--qat", "--export-int8", &int8_file]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("int8 test accuracy"), "{stdout}");
    let out = run(&[&int8_file, "--int8"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("bytes of packed weights"));
    // An int8 file read as a float one, and an export without --qat, fail in one line.
    assert_one_line_error(&run(&[&int8_file, "--qat"]));
    assert_one_line_error(&run(&[&qat_file, "--export-int8", &int8_file]));
    // Model flags out of range are checked as a config's keys are, naming the flag.
    for (flag, value, needle) in [
        ("--kernel", "4", "--kernel: must be 1, 3, 5 or 7"),
        ("--channels", "4,0", "--channels: must be from 1"),
    ] {
        let out = on_ci_backend(&["eval", &qat_file, "--arch", "cnn", flag, value]).unwrap();
        assert_one_line_error(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `wgdistill search` on a configuration without a [search] table, or with a bad one, is one
/// line naming the file, before any GPU work.
#[test]
fn search_refuses_a_configuration_without_a_search_in_one_line() {
    let out_dir = std::env::temp_dir().join(format!("wgdistill-cli-search-{}", std::process::id()));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/example.toml");
    let out = wgdistill(&["search", example, "--out", out_dir.to_str().unwrap()]);
    assert_one_line_error(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("example.toml: no [search] table"),
        "{stderr}"
    );
    let bad = out_dir.join("bad.toml");
    std::fs::create_dir_all(&out_dir).unwrap();
    let text = include_str!("../configs/search.toml").replace("candidates = 16", "candidates = 0");
    std::fs::write(&bad, text).unwrap();
    let out = wgdistill(&[
        "search",
        bad.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_one_line_error(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml: search.candidates"), "{stderr}");
}

/// `tune` times every matmul variant the adapter has, on a training step and a square product,
/// and writes the one with the least geometric-mean time into the tuning file; later runs read
/// it: `devices` says so and a bench step launches the chosen kernel. A damaged file is one
/// line naming it.
#[test]
fn tune_keeps_the_fastest_variant_and_later_runs_launch_it() {
    let dir = std::env::temp_dir().join(format!("wgdistill-tune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tuning.json");
    let args = ["tune", "--quick", "--family", "matmul", "--file"];
    let Some(out) = on_ci_backend(&[&args[..], &[file.to_str().unwrap()]].concat()) else {
        return;
    };
    assert_success(&out);
    let mut json: serde_json::Value = read_json(&file);
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{json}");
    let entry = &entries[0];
    assert!(!entry["adapter"].as_str().unwrap().is_empty());
    let timings = entry["timings"].as_array().unwrap();
    let mean_log = |variant: &str| {
        let logs: Vec<f64> = timings
            .iter()
            .filter(|t| t["variant"] == variant)
            .map(|t| t["seconds"].as_f64().unwrap().ln())
            .collect();
        assert_eq!(logs.len(), 2, "{variant}: a step and a product");
        logs.iter().sum::<f64>() / 2.0
    };
    let mut timed: Vec<&str> = timings
        .iter()
        .map(|t| t["variant"].as_str().unwrap())
        .collect();
    timed.dedup();
    assert!(
        timed.starts_with(&["register_blocked", "workgroup_tiled"]),
        "{timed:?}"
    );
    let chosen = entry["choices"]["matmul"].as_str().unwrap();
    for v in &timed {
        assert!(
            mean_log(chosen) <= mean_log(v),
            "{chosen} chosen over faster {v}"
        );
    }

    // Whatever won, a file that says workgroup_tiled makes the step launch the tiled kernel.
    json["entries"][0]["choices"]["matmul"] = "workgroup_tiled".into();
    std::fs::write(&file, json.to_string()).unwrap();
    let env = [("WGDISTILL_TUNING", file.as_path())];
    let out = on_ci_backend_with(&["devices"], &env).unwrap();
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kernels: matmul workgroup_tiled")
            && stdout.contains("tuned on this adapter and driver"),
        "{stdout}"
    );
    let bench = dir.join("bench.json");
    let args = [
        "bench",
        "--filter",
        "kd_step",
        "--json",
        bench.to_str().unwrap(),
    ];
    let out = on_ci_backend_with(&args, &env).unwrap();
    assert_success(&out);
    let rows: serde_json::Value = read_json(&bench);
    let kernels = rows[0]["kernels"].to_string();
    assert!(
        kernels.contains("matmul_tiled") && !kernels.contains("matmul_sg"),
        "{kernels}"
    );

    std::fs::write(&file, "{ \"entries\": [").unwrap();
    let out = on_ci_backend_with(&["devices"], &env).unwrap();
    assert_one_line_error(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(file.to_str().unwrap()) && stderr.contains("wgdistill tune"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A setting that only a stage's start can refuse (more labels than training images) is one
/// line naming the file, the stage and the key.
#[test]
fn a_stage_time_error_names_the_config_file() {
    let dir = std::env::temp_dir().join(format!("wgdistill-cli-stage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("few.toml");
    let text = r#"
[data]
dataset = "synthetic"
batch_size = 16
train_limit = 32
test_limit = 16
[models.m]
arch = "mlp"
hidden = [8]
[[stages]]
name = "few"
train = ["m"]
epochs = 1
labelled = 40
optimizer = { kind = "sgd", lr = 0.1 }
losses = [{ kind = "ce" }]
"#;
    std::fs::write(&config, text).unwrap();
    let out_dir = dir.join("out");
    let (config, out_dir) = (config.to_str().unwrap(), out_dir.to_str().unwrap());
    let Some(out) = on_ci_backend(&["train", config, "--out", out_dir]) else {
        return;
    };
    assert_one_line_error(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("few.toml: stage 'few': labelled: 40 is more than the 32 training images"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train --update` starts a run where there is none, and on a changed configuration keeps the
/// unchanged stages and trains the new one; `--resume` refuses that change in one line.
#[test]
fn train_update_keeps_unchanged_stages() {
    let dir = std::env::temp_dir().join(format!("wgdistill-cli-update-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rows.toml");
    let stage_at = |name: &str, lr: f64| {
        format!(
            "[models.{name}]\narch = \"mlp\"\nhidden = [8]\n[[stages]]\nname = \"{name}\"\ntrain = [\"{name}\"]\nepochs = 1\noptimizer = {{ kind = \"sgd\", lr = {lr} }}\nlosses = [{{ kind = \"ce\" }}]\n"
        )
    };
    let stage = |name: &str| stage_at(name, 0.1);
    let head =
        "[data]\ndataset = \"synthetic\"\nbatch_size = 16\ntrain_limit = 32\ntest_limit = 16\n";
    let (config_s, out) = (config.to_str().unwrap(), dir.join("out"));
    let out_s = out.to_str().unwrap();
    std::fs::write(&config, format!("{head}{}", stage("a"))).unwrap();
    let Some(first) = on_ci_backend(&["train", config_s, "--out", out_s, "--update"]) else {
        return;
    };
    assert_success(&first);
    std::fs::write(&config, format!("{head}{}{}", stage("a"), stage("b"))).unwrap();
    let refused = on_ci_backend(&["train", config_s, "--out", out_s, "--resume"]).unwrap();
    assert_one_line_error(&refused);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--update"));
    let updated = on_ci_backend(&["train", config_s, "--out", out_s, "--update"]).unwrap();
    assert_success(&updated);
    let stdout = String::from_utf8_lossy(&updated.stdout);
    assert!(
        stdout.contains("1 of its 1 finished stages unchanged") && stdout.contains("b epoch 1/1"),
        "{stdout}"
    );
    assert!(!stdout.contains("a epoch"), "{stdout}");
    // A change in the middle retrains that stage alone, and the finished stages after it stay
    // recorded as finished: a second update trains nothing.
    std::fs::write(
        &config,
        format!("{head}{}{}{}", stage("a"), stage("b"), stage("c")),
    )
    .unwrap();
    assert_success(&on_ci_backend(&["train", config_s, "--out", out_s, "--update"]).unwrap());
    let middle = format!("{head}{}{}{}", stage("a"), stage_at("b", 0.05), stage("c"));
    std::fs::write(&config, middle).unwrap();
    let trained = |output: &Output| {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let names = ["a", "b", "c"].into_iter();
        let trained: Vec<&str> = names
            .filter(|n| stdout.contains(&format!("{n} epoch")))
            .collect();
        (trained.join(","), stdout)
    };
    let updated = on_ci_backend(&["train", config_s, "--out", out_s, "--update"]).unwrap();
    assert_success(&updated);
    let (names, stdout) = trained(&updated);
    assert_eq!(names, "b", "{stdout}");
    let again = on_ci_backend(&["train", config_s, "--out", out_s, "--update"]).unwrap();
    assert_success(&again);
    let (names, stdout) = trained(&again);
    assert_eq!(names, "", "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
