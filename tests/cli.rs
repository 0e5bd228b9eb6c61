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
            // CI runs on Mesa's software drivers.
            assert!(
                adapters
                    .iter()
                    .any(|a| a["name"].as_str().unwrap().contains("llvmpipe"))
            );
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
