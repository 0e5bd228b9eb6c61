#!/usr/bin/env python3
"""Markdown tables from a device report (tools/device-report.sh's JSON), for docs/benchmarks.md.

    tools/bench-table.py docs/benchmarks/ADAPTER-BACKEND-DATE.json

Prints the adapter line, then two tables: the kernels (throughput and the ratio against the
baseline measured in the same run) and the cases the PyTorch peer measured too (wgdistill's time,
the peer's, and the speedup, peer time / wgdistill time: above 1 means wgdistill is faster).
"""
import json
import sys


def throughput(row):
    for key, unit in (("gflops", "GFLOP/s"), ("gbps", "GB/s"), ("samples_per_second", "samples/s")):
        if key in row:
            return f"{row[key]:,.1f} {unit}" if row[key] < 100 else f"{row[key]:,.0f} {unit}"
    return "–"


def cell(text):
    """Table-safe text: the shapes of two-input losses hold '|'."""
    return str(text).replace("|", "\\|")


def main(path):
    report = json.load(open(path))
    device = report["devices"][0]
    print(
        f"**{device['name']}**, {device['backend']}, {device['driver_info'] or device['driver']}"
        f" ({report['check']['summary']})\n"
    )
    print("| kernel | shape | ms | throughput | vs same-run baseline | launches |")
    print("|---|---|---|---|---|---|")
    for row in report["bench"]:
        ratio = f"{row['ratio']:.2f}× {row['baseline']}" if "ratio" in row else "–"
        print(
            f"| {cell(row['kernel'])} | {cell(row['shape'])} | {row['seconds'] * 1e3:.3f} | {throughput(row)}"
            f" | {ratio} | {row.get('launches', '–')} |"
        )
    peers = {(p["kernel"], p["shape"]): p for p in report["peer"]}
    shared = [r for r in report["bench"] if (r["kernel"], r["shape"]) in peers]
    if not shared:
        return
    print(f"\nAgainst {report['peer'][0]['peer']}:\n")
    print("| case | shape | wgdistill ms | peer ms | speedup |")
    print("|---|---|---|---|---|")
    for row in shared:
        peer = peers[(row["kernel"], row["shape"])]
        print(
            f"| {cell(row['kernel'])} | {cell(row['shape'])} | {row['seconds'] * 1e3:.2f}"
            f" | {peer['seconds'] * 1e3:.2f} | {peer['seconds'] / row['seconds']:.2f}× |"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tools/bench-table.py REPORT.json")
    main(sys.argv[1])
