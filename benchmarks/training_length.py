"""Do the bottleneck comparisons change as the tokenizers train longer? A table from the studies' JSON.

Reads any number of result files, each either a generation study's ``generation.json`` (tokenizer
PSNR and, per generator, FD) or the convergence study's ``convergence.json`` (tokenizer PSNR only),
groups them by the tokenizers' training steps, and prints, per length, the mean test PSNR of each
bottleneck and the paired differences over seeds (mean and 95 % Student-t interval).

    python -m benchmarks.training_length benchmarks/results/generation.json benchmarks/results/convergence.json \\
        benchmarks/results/generation_9k/generation.json > benchmarks/results/training_length.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from examples.metrics import paired_difference

KINDS = ("fsq", "ifsq", "erf_equal")
COMPARISONS = (("ifsq", "fsq"), ("erf_equal", "ifsq"))


def rows_of(result: dict) -> tuple[int, list[dict]]:
    """(tokenizer steps, one row per (bottleneck, seed, generator)) of a study's result; generator None: the tokenizer alone."""
    cfg = result["meta"]["config"]
    steps = cfg["tokenizer"]["steps"]
    if "runs" in result:  # the convergence study
        return steps, [dict(kind=r["kind"], seed=r["seed"], generator=None, psnr=r["psnr"]) for r in result["runs"]]
    rows = [dict(kind=r["tokenizer"], seed=r["seed"], generator=r["generator"], psnr=r["tokenizer_psnr"], fd=r["fd"])
            for r in result["records"]]
    tokenizers = {(r["kind"], r["seed"]): r["psnr"] for r in rows}
    return steps, rows + [dict(kind=k, seed=s, generator=None, psnr=p) for (k, s), p in tokenizers.items()]


def difference(rows: list[dict], a: str, b: str, generator, key: str) -> dict | None:
    value = {(r["kind"], r["seed"]): r[key] for r in rows if r["generator"] == generator and key in r}
    seeds = sorted(s for k, s in value if k == a and (b, s) in value)
    if len(seeds) < 2:
        return None
    return paired_difference([value[a, s] for s in seeds], [value[b, s] for s in seeds])


def fmt(d: dict | None, digits: int) -> str:
    return "–" if d is None else f"{d['mean']:+.{digits}f} [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}]"


def to_markdown(by_steps: dict[int, list[dict]], sources: dict[int, list[str]]) -> str:
    lines = ["| tokenizer steps | source | test PSNR (dB): FSQ / iFSQ / erf + equal | PSNR: iFSQ - FSQ | PSNR: erf + equal - iFSQ "
             "| AR FD: iFSQ - FSQ | DiT FD: iFSQ - FSQ |", "|---:|---|---|---|---|---|---|"]
    for steps in sorted(by_steps):
        rows = by_steps[steps]
        means = " / ".join(f"{np.mean([r['psnr'] for r in rows if r['kind'] == k and r['generator'] is None]):.2f}" for k in KINDS)
        cells = [fmt(difference(rows, a, b, None, "psnr"), 2) for a, b in COMPARISONS]
        cells += [fmt(difference(rows, "ifsq", "fsq", g, "fd"), 1) for g in ("ar", "dit")]
        lines.append(f"| {steps:,} | {', '.join(sources[steps])} | {means} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="generation.json / convergence.json files")
    args = parser.parse_args(argv)
    by_steps: dict[int, list[dict]] = {}
    sources: dict[int, list[str]] = {}
    for path in args.results:
        steps, rows = rows_of(json.loads(path.read_text()))
        by_steps.setdefault(steps, []).extend(rows)
        sources.setdefault(steps, []).append(f"`{path.parent.name}/{path.name}`")
    md = to_markdown(by_steps, sources)
    print(md, end="")
    return md


if __name__ == "__main__":
    main()
