#!/usr/bin/env bash
# wgdistill beyond wgpu on Mesa: a third driver and a second WebGPU implementation.
#   1. wgpu on SwiftShader (Google's Vulkan CPU driver, subgroups of 4 lanes): every test binary
#      but the end-to-end training runs, then `wgdistill check`, which also records every case
#      for the next steps;
#   2. Dawn/Tint (Chrome's WebGPU, Node's `webgpu` package) on SwiftShader: every exported WGSL
#      file and pipeline, every check and golden case against its reference (dawn_check.mjs);
#   3. headless Chromium's WebGPU: the browser example on every check case (browser_check.mjs).
# Needs Node.js with npm and Debian's chromium (which ships SwiftShader); .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { echo "webgpu check: $* (at ${SECONDS} s)"; }

icd="${SWIFTSHADER_ICD:-/usr/lib/chromium/vk_swiftshader_icd.json}"
chromium="${CHROMIUM:-/usr/bin/chromium}"
for need in "$icd" "$chromium"; do
    if [ ! -e "$need" ]; then
        echo "webgpu check: $need is missing (apt-get install chromium)" >&2
        exit 1
    fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
    echo "webgpu check: needs Node.js 20 or later (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi
# A missing adapter fails the tests rather than skipping them, as in CI.
export CI="${CI:-true}"

say "npm ci (tools/webgpu)"
npm ci --prefix tools/webgpu --no-audit --no-fund --loglevel=error

# wgdistill records on wgpu's adapter and Dawn replays on its own: the same driver for both.
export WGPU_BACKEND=vulkan VK_ICD_FILENAMES="$icd"
# Every test binary but the end-to-end training runs (tests/train.rs, lifelong.rs, search.rs):
# they take SwiftShader over half an hour on two cores, and every kernel and compiled step they
# launch is tested here by the other binaries (the kernel catalogue, the executor, the
# data-free and adversarial steps); lavapipe and llvmpipe run them in full.
say "the tests on SwiftShader (all but the end-to-end training runs)"
targets=(--lib --bins --test kernels)
for file in tests/*.rs; do
    name="$(basename "$file" .rs)"
    case "$name" in
        train | lifelong | search) ;;
        *) targets+=(--test "$name") ;;
    esac
done
cargo test --release --quiet "${targets[@]}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/wgdistill"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say "Dawn/Tint: every exported kernel and case"
node tools/webgpu/dawn_check.mjs --wgdistill "$bin" --work "$work"
say "Chromium's WebGPU: the browser example on every case"
node tools/webgpu/browser_check.mjs --work "$work" --chromium "$chromium"
say "all green"
