"""Medians over several fresh processes of ``bench_speed.py`` (one JSON each), as a markdown table.

    for i in 1 2 3 4 5; do
      python benchmarks/bench_speed.py --sizes 4194304 --levels '[17]*4' --compiled --stem speed_cpu_compiled_run$i \\
          --out benchmarks/results/speed_compiled
    done
    python benchmarks/bench_speed.py --sizes 4194304 --levels '[17]*4' --compiled --load 2 --stem speed_cpu_loaded \\
        --out benchmarks/results/speed_compiled
    python benchmarks/aggregate_speed.py benchmarks/results/speed_compiled/speed_cpu_compiled_run*.json \\
        --loaded benchmarks/results/speed_compiled/speed_cpu_loaded.json > benchmarks/results/speed_cpu_compiled.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RATIOS = ["vqp/iFSQ", "vqp/FSQ", "iFSQ compiled/eager", "FSQ compiled/eager", "vqp compiled/iFSQ compiled",
          "vqp compiled/FSQ compiled", "reference compiled/iFSQ compiled"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="bench_speed.py JSON files, one per process")
    parser.add_argument("--loaded", type=Path, help="a JSON file measured with --load N")
    args = parser.parse_args(argv)
    by_pass: dict[str, list[dict]] = {}
    for path in args.runs:
        for row in json.loads(path.read_text())["rows"]:
            by_pass.setdefault(f"{row['elements'] / 2**20:.0f}M {row['levels']} {row['pass']}", []).append(row)
    meta = json.loads(args.runs[0].read_text())["meta"]
    print(f"Device: {meta['device']}, torch {meta['torch']}, {meta['threads']} threads; {len(args.runs)} fresh processes, "
          f"each the median of {meta['repeats']} interleaved runs. Ratio `a/b` > 1: `b` is faster.\n")
    print("| input | ratio | median | per process |\n|---|---|---:|---|")
    for label, rows in by_pass.items():
        for ratio in RATIOS:
            values = [r[ratio] for r in rows if r.get(ratio) is not None]
            if values:
                print(f"| {label} | {ratio} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    if args.loaded:
        data = json.loads(args.loaded.read_text())
        print(f"\nOne process with {data['meta'].get('busy_background_processes')} busy background processes:\n")
        print("| input | ratio | value |\n|---|---|---:|")
        for row in data["rows"]:
            for ratio in RATIOS:
                if row.get(ratio) is not None:
                    print(f"| {row['elements'] / 2**20:.0f}M {row['levels']} {row['pass']} | {ratio} | {row[ratio]:.2f} |")


if __name__ == "__main__":
    main()
