"""Do the bottleneck comparisons change as the tokenizers (and the AR models) train longer? A table from the studies' JSON.

Reads any number of result files, each either a generation study's ``generation.json`` (tokenizer
PSNR and, per generator, FD) or the convergence study's ``convergence.json`` (tokenizer PSNR only),
groups them by the training steps of the tokenizers and of the AR transformers, and prints, per pair of
lengths, the mean test PSNR of each bottleneck and the paired differences over seeds (mean and 95 %
Student-t interval).

    python -m studies.training_length --out studies/results/training_length   # the committed results (DEFAULT_RESULTS)
    python -m studies.training_length A/generation.json B/convergence.json ...  # any others
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from studies.harness import RESULTS, Study
from studies.recipes import KINDS
from studies.stats import interval, paired_difference

STUDY = Study("training_length", __doc__)
DEFAULT_RESULTS = tuple(RESULTS / name for name in ("generation/generation.json", "convergence/convergence.json",
                                                     "generation/tokenizer_steps_9000/generation.json", "generation/ar_steps_9000/generation.json"))

COMPARISONS = (("ifsq", "fsq"), ("erf_equal", "ifsq"))
Lengths = tuple[int, int | None]  # (tokenizer steps, AR transformer steps; None where no AR model was trained)


def rows_of(result: dict) -> tuple[Lengths, list[dict]]:
    """(lengths, one row per (bottleneck, seed, generator)) of a study's result; generator None: the tokenizer alone."""
    cfg = result["meta"]["config"]
    steps = cfg["tokenizer"]["steps"]
    if "runs" in result:  # the convergence study
        return (steps, None), [dict(kind=r["kind"], seed=r["seed"], generator=None, psnr=r["psnr"]) for r in result["runs"]]
    rows = [dict(kind=r["tokenizer"], seed=r["seed"], generator=r["generator"], psnr=r["tokenizer_psnr"], fd=r["fd"])
            for r in result["records"]]
    tokenizers = {(r["kind"], r["seed"]): r["psnr"] for r in rows}
    return (steps, cfg["ar"]["steps"]), rows + [dict(kind=k, seed=s, generator=None, psnr=p) for (k, s), p in tokenizers.items()]


def models_of(rows: list[dict]) -> set[tuple]:
    """The (bottleneck, seed, generator) of each row: one trained model (generator None: the tokenizer)."""
    return {(r["kind"], r["seed"], r["generator"]) for r in rows}


def difference(rows: list[dict], a: str, b: str, generator, key: str) -> dict | None:
    value = {(r["kind"], r["seed"]): r[key] for r in rows if r["generator"] == generator and key in r}
    seeds = sorted(s for k, s in value if k == a and (b, s) in value)
    if len(seeds) < 2:
        return None
    return paired_difference([value[a, s] for s in seeds], [value[b, s] for s in seeds])


def to_markdown(by_lengths: dict[Lengths, list[dict]], sources: dict[Lengths, list[str]]) -> str:
    lines = ["| tokenizer steps | AR steps | source | test PSNR (dB): FSQ / iFSQ / erf + equal | PSNR: iFSQ - FSQ "
             "| PSNR: erf + equal - iFSQ | AR FD: iFSQ - FSQ | DiT FD: iFSQ - FSQ |", "|---:|---:|---|---|---|---|---|---|"]
    for steps, ar_steps in sorted(by_lengths, key=lambda lengths: (lengths[0], lengths[1] or 0)):
        rows = by_lengths[steps, ar_steps]
        psnrs = [[r["psnr"] for r in rows if r["kind"] == k and r["generator"] is None] for k in KINDS]
        means = " / ".join(f"{np.mean(p):.2f}" if p else "–" for p in psnrs)
        cells = [interval(difference(rows, a, b, None, "psnr"), 2) for a, b in COMPARISONS]
        cells += [interval(difference(rows, "ifsq", "fsq", g, "fd"), 1) for g in ("ar", "dit")]
        ar = "–" if ar_steps is None else f"{ar_steps:,}"
        lines.append(f"| {steps:,} | {ar} | {', '.join(sources[steps, ar_steps])} | {means} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def source(path: Path) -> str:
    """The result folder of ``path``, relative to ``studies/results`` when it lies there."""
    folder = path.resolve().parent
    return f"`{folder.relative_to(RESULTS)}`" if folder.is_relative_to(RESULTS) else f"`{folder.name}/{path.name}`"


def main(argv=None) -> str:
    parser = STUDY.parser(None, seeds=False, from_json=False)
    parser.add_argument("results", type=Path, nargs="*", default=list(DEFAULT_RESULTS),
                        help="generation.json / convergence.json files (default: the committed results)")
    args = parser.parse_args(argv)
    by_lengths: dict[Lengths, list[dict]] = {}
    sources: dict[Lengths, list[str]] = {}
    for path in args.results:
        lengths, rows = rows_of(json.loads(path.read_text()))
        if models_of(by_lengths.get(lengths, [])) & models_of(rows):
            raise SystemExit(f"{path} repeats a (bottleneck, seed, generator) of {', '.join(sources[lengths])} at the same "
                             "training lengths: pass one result per model")
        by_lengths.setdefault(lengths, []).extend(rows)
        sources.setdefault(lengths, []).append(source(path))
    md = to_markdown(by_lengths, sources)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_length.md").write_text(md)
    print(md, end="")
    return md


if __name__ == "__main__":
    main()
