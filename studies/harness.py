"""The harness every study runs in: its command line, its configuration, and how its results are written.

A study is a module ``studies/<name>.py`` with ``CONFIGS = {"quick": {...}, "full": {...}}`` (every number
that changes its result), a ``to_markdown(result) -> str`` and a ``figure(result, path)``, and a ``main``
that builds its parser with ``Study.parser``, runs, and hands the result to ``Study.save``::

    STUDY = Study("bits", __doc__)

    def main(argv=None):
        parser = STUDY.parser("1 seed, short training")
        args = parser.parse_args(argv)
        if args.from_json:
            return STUDY.rewrite(args.from_json, to_markdown, figure)
        ...
        return STUDY.save(args.out, dict(meta=STUDY.meta(args, argv, t0, ...), ...), to_markdown, figure)

Every study has the options ``--quick`` (minutes instead of hours), ``--seeds N``, ``--out DIR`` (default
``runs/studies/<name>``, so a run never overwrites the committed results unless asked to) and
``--from-json DIR`` (rewrites DIR's table and figure from its JSON; trains nothing). A result is
``<name>.json`` (``meta``: mode, seeds, configuration, seconds and the command that reproduces it, less
``--out``), ``<name>.md`` and ``<name>.png``; ``extra_json`` names keys of the result written to files of
their own (the generation study's calibration rows, ``protocol.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from examples.training import CPU

RESULTS = Path(__file__).resolve().parent / "results"
ENV = CPU  # every study runs in one process on the CPU, one thread


def mode(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "full"


def command(module: str, argv: list[str] | None) -> str:
    """The command that reproduces a run: ``python -m studies.<module>`` with the run's arguments (``argv``, or the
    process's when None), less ``--out`` and its value."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" in args:
        del args[args.index("--out"):args.index("--out") + 2]
    return " ".join([f"python -m studies.{module}", *args])


class Study:
    """One study's name (module ``studies.<name>``, files ``<name>.*``), command line and outputs."""

    def __init__(self, name: str, doc: str, extra_json: tuple[str, ...] = ()):
        self.name, self.doc, self.extra_json = name, doc, extra_json

    def parser(self, quick_help: str | None, seeds: bool = True, from_json: bool = True) -> argparse.ArgumentParser:
        """``--quick`` (unless ``quick_help`` is None), ``--seeds``, ``--out`` and ``--from-json`` (each unless turned off)."""
        parser = argparse.ArgumentParser(prog=f"python -m studies.{self.name}", description=self.doc,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        if quick_help is not None:
            parser.add_argument("--quick", action="store_true", help=quick_help)
        if seeds:
            parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0 .. N-1; default: the mode's)")
        parser.add_argument("--out", type=Path, default=Path("runs") / "studies" / self.name,
                            help=f"output folder (default runs/studies/{self.name}; the committed results: studies/results/{self.name})")
        if from_json:
            parser.add_argument("--from-json", type=Path, default=None, metavar="DIR",
                                help=f"rewrite DIR's {self.name}.md and {self.name}.png from its {self.name}.json (trains nothing)")
        return parser

    @staticmethod
    def seeds(args: argparse.Namespace, cfg: dict) -> list[int]:
        return list(range(args.seeds or cfg["seeds"]))

    def meta(self, args: argparse.Namespace, argv: list[str] | None, t0: float, **fields) -> dict:
        """The result's ``meta``: the mode, ``fields`` (seeds, configuration, ...), the seconds since ``t0`` and the command."""
        return dict(mode=mode(args), **fields, seconds=round(time.perf_counter() - t0, 1), command=command(self.name, argv))

    def save(self, out: Path, result: dict, to_markdown, figure) -> dict:
        """Writes ``result`` as ``<name>.json`` (and its ``extra_json`` keys as files of their own), the Markdown table and
        the figure into ``out``; prints the table; returns ``result``."""
        out.mkdir(parents=True, exist_ok=True)
        main = {k: v for k, v in result.items() if k not in self.extra_json}
        (out / f"{self.name}.json").write_text(json.dumps(main, indent=1, default=float))
        for key in self.extra_json:
            (out / f"{key}.json").write_text(json.dumps(result[key], indent=1, default=float))
        self.write_views(out, result, to_markdown, figure)
        return result

    def load(self, folder: Path) -> dict:
        """A saved result (``<name>.json`` and its ``extra_json`` files) from ``folder``."""
        result = json.loads((folder / f"{self.name}.json").read_text())
        for key in self.extra_json:
            result[key] = json.loads((folder / f"{key}.json").read_text())
        return result

    def rewrite(self, folder: Path, to_markdown, figure) -> dict:
        """``--from-json``: the table and figure of the result in ``folder``, rewritten from its JSON."""
        result = self.load(folder)
        self.write_views(folder, result, to_markdown, figure)
        return result

    def write_views(self, out: Path, result: dict, to_markdown, figure) -> None:
        md = to_markdown(result)
        (out / f"{self.name}.md").write_text(md)
        if figure is not None:
            figure(result, out / f"{self.name}.png")
        print(md)


def pyplot():
    """matplotlib.pyplot on the Agg backend (figures are written to files, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Writes ``fig`` to ``path`` (PNG, 100 dpi, tight layout) and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def start(threads: int = 1) -> float:
    """What a study does before it trains: one torch thread (the results depend on it); returns the start time."""
    torch.set_num_threads(threads)
    return time.perf_counter()
