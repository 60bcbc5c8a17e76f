"""Medians over several fresh processes of ``bench_speed.py`` (one JSON each), as a markdown table.

    mkdir -p benchmarks/results/speed_processes
    for i in 1 2 3 4 5; do
      python benchmarks/bench_speed.py --sizes 4194304 --levels '[17]*4' --compiled --out benchmarks/results/speed_processes --stem quiet$i
      python benchmarks/bench_speed.py --sizes 4194304 --levels '[17]*4' --load 2 --out benchmarks/results/speed_processes --stem loaded$i
    done
    python benchmarks/aggregate_speed.py benchmarks/results/speed_processes/quiet*.json > benchmarks/results/speed_quiet.md
    python benchmarks/aggregate_speed.py benchmarks/results/speed_processes/loaded*.json > benchmarks/results/speed_loaded.md

(``--compiled`` on the runs adds the compiled columns to the table.)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RATIOS = ["vqp/iFSQ", "vqp/FSQ", "iFSQ/sigmoid", "FSQ/sigmoid", "iFSQ compiled/eager", "FSQ compiled/eager", "vqp compiled/iFSQ compiled",
          "vqp compiled/FSQ compiled", "reference compiled/iFSQ compiled"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="bench_speed.py JSON files, one per process")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    by_pass: dict[str, list[dict]] = {}
    for run in runs:
        for row in run["rows"]:
            by_pass.setdefault(f"{row['elements'] / 2**20:.0f}M {row['levels']} {row['pass']}", []).append(row)
    meta = runs[0]["meta"]
    load = meta.get("busy_background_processes") or 0
    print(f"Device: {meta['device']}, torch {meta['torch']}, {meta['threads']} threads, {load} busy background processes; "
          f"{len(args.runs)} fresh processes, each the median of {meta['repeats']} interleaved runs. Ratio `a/b` > 1: `b` is "
          "faster; `ours/sigmoid`: our time in units of one `torch.sigmoid` pass (forward) or its forward+backward.\n")
    print("| input | ratio | median | per process |\n|---|---|---:|---|")
    for label, rows in by_pass.items():
        for ratio in RATIOS:
            values = [r[ratio] for r in rows if r.get(ratio) is not None]
            if values:
                print(f"| {label} | {ratio} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    decode: dict[str, list[float]] = {}
    for run in runs:
        for row in run.get("decode", []):
            if row["vqp/ours"] is not None:
                decode.setdefault(f"`{row['decode']}`, {row['threads']} thread(s)", []).append(row["vqp/ours"])
    if decode:
        print("\n| decode | vqp/ours median | per process |\n|---|---:|---|")
        for label, values in decode.items():
            print(f"| {label} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
