//! The kernel families against their f64 references, one module per family (the same stem as
//! `shaders/`, `src/kernels/` and `src/reference/`), and the whole conformance catalogue: every
//! check case of every family on the test adapter, as `wgdistill check` runs them.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod batchnorm;
mod conv;
mod dropout;
mod elementwise;
mod feature;
mod int8;
mod losses;
mod matmul;
mod optimizer;
mod pool;
mod quantize;
mod reduce;
mod relation;
mod response;
mod softmax;

use wgdistill::catalogue::{self, Suite};

#[test]
fn every_catalogue_case_matches_its_reference() {
    let Some(gpu) = common::gpu() else { return };
    let cases = catalogue::all(gpu, Suite::Check);
    assert!(cases.len() > 100, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        assert!(case.has_reference(), "{}: no reference", case.key());
        match case.verify(gpu) {
            Ok(v) if v.pass => {}
            Ok(v) => failures.push(format!(
                "{}: max abs {:.2e}, max rel {:.2e}",
                case.key(),
                v.max_abs,
                v.max_rel
            )),
            Err(e) => failures.push(format!("{}: {e}", case.key())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_family_has_check_and_bench_cases() {
    let Some(gpu) = common::gpu() else { return };
    for family in wgdistill::kernels::FAMILIES {
        for suite in [Suite::Check, Suite::bench_for(gpu)] {
            assert!(
                !(family.cases)(gpu, suite).is_empty(),
                "{}: no {suite:?} cases",
                family.name
            );
        }
    }
}
