#!/usr/bin/env bash
# The device report: everything a lent GPU's minutes should measure, in one run (a few minutes),
# into one JSON file under docs/benchmarks/:
#   1. `wgdistill devices` (the adapter, its limits and features);
#   2. `wgdistill check` (every kernel against its f64 reference on this adapter);
#   3. `wgdistill tune` (each matmul and conv variant timed; the fastest kept for the bench);
#   4. the PyTorch peer (tools/peers/torch_steps.py: the same training steps and sgemm, on CUDA
#      when PyTorch sees a GPU, else on the CPU);
#   5. `wgdistill bench --json --compare` (the bench suite on the tuned variants, with same-run
#      baselines, beside the peer).
#
#   tools/device-report.sh [OUT_DIR]        # default docs/benchmarks
#
# Needs the release binary (WGDISTILL, default target/release/wgdistill, built first) and, for the
# peer, python3 with torch. WGPU_BACKEND picks the backend (default vulkan). Test it on lavapipe
# before a device's minutes are spent on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${WGDISTILL:-target/release/wgdistill}"
out_dir="${1:-docs/benchmarks}"
backend="${WGPU_BACKEND:-vulkan}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ -x "$bin" ] || { echo "device-report: $bin not found; build it with cargo build --release" >&2; exit 1; }
mkdir -p "$out_dir"

echo "== devices"
"$bin" --backend "$backend" devices --json > "$work/devices.json"
read -r adapter device_type < <(python3 - "$work/devices.json" <<'PY'
import json, sys
devices = json.load(open(sys.argv[1]))
if not devices:
    sys.exit("device-report: no adapter on this backend")
d = devices[0]
slug = "".join(c if c.isalnum() or c == "." else "-" for c in d["name"].lower())
print("-".join(part for part in slug.split("-") if part), d["device_type"])
PY
)
echo "adapter: $adapter ($device_type)"

echo "== check"
check_status=0
"$bin" --backend "$backend" check > "$work/check.txt" || check_status=$?
tail -n 1 "$work/check.txt"

echo "== tune"
# Into the report's own file: the user's tuning cache stays as it was.
"$bin" --backend "$backend" tune --file "$work/tuning.json" | tee "$work/tune.txt"
export WGDISTILL_TUNING="$work/tuning.json"

echo "== peer"
# The bench suite's matmul sizes: smaller on CPU-like drivers.
if [ "$device_type" = "cpu" ]; then sizes="256,1024"; else sizes="1024,4096"; fi
peer_device="$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo none)"
if [ "$peer_device" = none ]; then
    echo "device-report: no torch here; the bench runs without a peer" >&2
    echo "[]" > "$work/peer.json"
else
    threads=()
    [ "$peer_device" = cpu ] && threads=(--threads "$(nproc)")
    python3 tools/peers/torch_steps.py --device "$peer_device" "${threads[@]}" --matmul "$sizes" --out "$work/peer.json"
fi

echo "== bench"
compare=()
[ "$peer_device" != none ] && compare=(--compare "$work/peer.json")
"$bin" --backend "$backend" bench --json "$work/bench.json" "${compare[@]}" | tee "$work/bench.txt"

report="$out_dir/${adapter}-${backend}-$(date +%F).json"
python3 - "$work" "$report" "$check_status" <<'PY'
import json, os, sys
work, report, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda name: json.load(open(os.path.join(work, name)))
check = open(os.path.join(work, "check.txt")).read().splitlines()
json.dump({
    "devices": load("devices.json"),
    "check": {"passed": status == 0, "summary": check[-1] if check else "", "lines": check},
    "tuning": load("tuning.json"),
    "bench": load("bench.json"),
    "peer": load("peer.json"),
}, open(report, "w"), indent=1, ensure_ascii=False)
print(f"wrote {report}")
PY
exit "$check_status"
