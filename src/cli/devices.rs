//! `wgdistill devices`: every adapter, its driver, and the limits and features we use.

use wgdistill::Error;
use wgdistill::gpu::caps::Capabilities;
use wgdistill::gpu::{AdapterQuery, ChoiceSource, select};

use super::CliError;

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The implementations and drivers CI runs wgdistill's tests on, for `devices` to say.
const TESTED_IN_CI: &[&str] = &[
    "wgpu on Mesa lavapipe (Vulkan) and llvmpipe (GL): every test",
    "wgpu on SwiftShader (Vulkan, subgroups of 4 lanes): every test, and `check`",
    "Dawn/Tint (Chrome's WebGPU) on SwiftShader: every exported WGSL file and pipeline, every \
     check and golden case (tools/webgpu/check.sh)",
    "Chromium's WebGPU: the browser example (examples/web) on every check case",
];

/// Prints each adapter matching the query (text or JSON); none is an error naming the fix.
pub fn run(query: &AdapterQuery, json: bool) -> Result<(), CliError> {
    let instance = select::create_instance(query.backends);
    let all = select::enumerate(&instance, query.backends);
    let caps = all
        .iter()
        .filter(|a| query.matches(&a.get_info()))
        .map(|a| Capabilities::of_adapter(&instance, a).tuned())
        .collect::<Result<Vec<Capabilities>, Error>>()?;
    if caps.is_empty() {
        // Reuse the adapter search's message: what was tried and how to fix it.
        return Err(select::choose(&instance, query).err().map_or_else(
            || CliError::Message("no adapter found".into()),
            |e: Error| e.into(),
        ));
    }
    if json {
        let text =
            serde_json::to_string_pretty(&caps).map_err(|e| CliError::Message(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    for (i, c) in caps.iter().enumerate() {
        let l = &c.limits;
        println!("[{i}] {}", c.name);
        println!(
            "    backend {}, device type {}, driver {} {}",
            c.backend, c.device_type, c.driver, c.driver_info
        );
        println!(
            "    kernel style {}, timestamp queries {}, shader f16 {}, subgroups {} (size {}..{}), packed_dot {}",
            c.kernel_style,
            yes(c.timestamp_query),
            yes(c.shader_f16),
            yes(c.subgroups),
            c.subgroup_sizes[0],
            c.subgroup_sizes[1],
            yes(c.packed_dot)
        );
        println!(
            "    storage binding {}, buffer {}, storage buffers/stage {}, workgroup memory {} KiB, invocations/workgroup {}, workgroups/dimension {}",
            mib(l.max_storage_buffer_binding_size),
            mib(l.max_buffer_size),
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size / 1024,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension
        );
        let from = match c.kernels_from {
            ChoiceSource::DeviceType => "by device type; `wgdistill tune` times them here",
            ChoiceSource::Tuned => "tuned on this adapter and driver",
            ChoiceSource::Override => "set by WGDISTILL_KERNEL_STYLE",
        };
        println!(
            "    kernels: matmul {}, conv {} ({from})",
            c.kernels.matmul, c.kernels.conv
        );
        if let Some(limit) = c.loop_limit {
            println!(
                "    loops stop after {limit} iterations per invocation (llvmpipe): longer launches are refused"
            );
        }
    }
    println!("tested in CI:");
    for line in TESTED_IN_CI {
        println!("    {line}");
    }
    Ok(())
}
