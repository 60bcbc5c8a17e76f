"""How much the forward time varies from one process to the next (a diagnostic for bench_speed).

Starts ``--runs`` fresh Python processes one after another, each timing the iFSQ forward at the
reference size (input (16, 65536, 4), levels [17]*4, median of 21 calls) and one ``torch.sigmoid``
over the same tensor, first with the environment as it is and then with each ``--env`` setting.
Writes ``benchmarks/results/process_spread.{json,md}``.

    python benchmarks/process_spread.py --runs 10 --env OMP_WAIT_POLICY=ACTIVE
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = """
import time, torch
from ifsq_quant import iFSQ
z = torch.randn(16, 65536, 4)
q = iFSQ([17] * 4)
def median_ms(fn, n=21):
    times = []
    for _ in range(n):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return sorted(times)[n // 2] * 1e3
with torch.no_grad():
    for _ in range(5):
        q(z)
    print(median_ms(lambda: q(z)), median_ms(lambda: torch.sigmoid(z)))
"""


def run(runs: int, extra_env: dict[str, str]) -> list[tuple[float, float]]:
    env = dict(os.environ, **extra_env)
    out = []
    for _ in range(runs):
        line = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True).stdout
        ifsq_ms, sigmoid_ms = map(float, line.split())
        out.append((ifsq_ms, sigmoid_ms))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings to compare with the plain environment")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = {"as is": {}} | {s: dict([s.split("=", 1)]) for s in args.env}
    results = {name: run(args.runs, env) for name, env in settings.items()}
    lines = [f"iFSQ forward at 4M elements ([17]*4), median of 21 calls, in {args.runs} fresh processes per setting.", "",
             "| environment | iFSQ ms per process | median | sigmoid ms (median) |", "|---|---|---:|---:|"]
    for name, rows in results.items():
        ms = [r[0] for r in rows]
        lines.append(f"| {name} | {' '.join(f'{t:.1f}' for t in ms)} | {statistics.median(ms):.1f} | "
                     f"{statistics.median(r[1] for r in rows):.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "process_spread.json").write_text(json.dumps(results, indent=1))
    (args.out / "process_spread.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
