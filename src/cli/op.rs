//! `wgdistill op`: run one kernel on the chosen adapter, tensors in and out as safetensors.

use std::collections::BTreeMap;
use std::path::Path;

use wgdistill::gpu::{AdapterQuery, Gpu};
use wgdistill::io;
use wgdistill::ops;

use super::CliError;

/// Prints every op with its inputs (optional ones in brackets), attributes and outputs.
pub fn list() {
    for op in ops::all() {
        let attrs: Vec<String> = op
            .attrs
            .iter()
            .map(|a| format!("{}={}", a.name, a.default))
            .collect();
        let attrs = if attrs.is_empty() {
            "none".to_string()
        } else {
            attrs.join(", ")
        };
        let optional = op.optional.iter().map(|o| format!("[{o}]"));
        let inputs: Vec<String> = op
            .inputs
            .iter()
            .map(|i| i.to_string())
            .chain(optional)
            .collect();
        println!("{:<20}{}", op.name, op.summary);
        println!(
            "{:<20}inputs: {}; attrs: {attrs}; outputs: {}",
            "",
            inputs.join(", "),
            op.outputs.join(", ")
        );
    }
}

/// Parses `key=value` attributes.
fn parse_attrs(attrs: &[String]) -> Result<BTreeMap<String, f64>, CliError> {
    attrs
        .iter()
        .map(|a| {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| CliError::Message(format!("--attr '{a}': expected KEY=VALUE")))?;
            let value: f64 = v
                .trim()
                .parse()
                .map_err(|_| CliError::Message(format!("--attr '{a}': '{v}' is not a number")))?;
            Ok((k.trim().to_string(), value))
        })
        .collect()
}

/// Reads and checks everything on the host first, then runs the op and writes its outputs.
pub fn run(
    query: &AdapterQuery,
    name: &str,
    input: &Path,
    output: &Path,
    attrs: &[String],
    replay: Option<&Path>,
) -> Result<(), CliError> {
    let info = ops::find(name)?;
    let attrs = parse_attrs(attrs)?;
    let inputs = io::read_safetensors(input)?;
    ops::validate(&info, &inputs, &attrs)?;
    for path in std::iter::once(output).chain(replay) {
        super::check_parent(path)?;
    }
    let gpu = Gpu::new(query)?;
    let (outputs, record) = ops::run_recorded(&gpu, name, &inputs, &attrs, replay.is_some())?;
    io::write_safetensors(output, &outputs)?;
    if let (Some(path), Some(record)) = (replay, record) {
        io::write_atomic(path, record.to_json()?.as_bytes())?;
        println!("{name}: wrote its launch record to {}", path.display());
    }
    let names: Vec<&str> = outputs.keys().map(String::as_str).collect();
    println!(
        "{name} on {}: wrote {} to {}",
        gpu.caps().name,
        names.join(", "),
        output.display()
    );
    Ok(())
}
