"""``python -m ifsq_quant``: the bits per dimension each quantizer uses on Gaussian input.

Prints a table measured now (entropy of the level occupancy, in bits, next to the maximum log2 L).
"""

from __future__ import annotations

import argparse
import math

import torch

from . import FSQ, CodeUsage, __version__, iFSQ

# name -> (module for one dimension of L levels, or None where the layout does not exist for that L)
CONFIGS = {
    "FSQ (tanh, round)": lambda L: FSQ([L]) if L > 2 else None,
    "iFSQ (sigmoid, round)": lambda L: iFSQ([L]) if L > 2 else None,
    "iFSQ (sigmoid, equal)": lambda L: iFSQ([L], bins="equal"),
    "erf, equal": lambda L: iFSQ([L], activation="erf", bins="equal"),
}
NOT_DEFINED = "–"  # the round layout has no L = 2 (its codes would be {-1, 0})


def bits_table(levels, samples: int, seed: int, sigma: float) -> list[dict]:
    """Entropy of the level occupancy (bits) per quantizer and L, on ``sigma * N(0, 1)`` (``None``: not defined)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, 1, generator=generator) * sigma
    rows = []
    for L in levels:
        row = {"L": L, "max": math.log2(L)}
        for name, make in CONFIGS.items():
            quantizer = make(L)
            if quantizer is None:
                row[name] = None
                continue
            _, idx = quantizer(z)
            usage = CodeUsage([L])
            usage.update(idx[:, None])
            row[name] = usage.bin_entropy().item()
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ifsq_quant",
        description="Measure how many bits per dimension FSQ, iFSQ and the equal-bin layouts use on "
                    "Gaussian input (the entropy of their level occupancy), and print a Markdown table.",
    )
    parser.add_argument("--version", action="version", version=f"ifsq-quant {__version__}")
    parser.add_argument("--samples", type=int, default=1_000_000, help="number of N(0, 1) samples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the samples (default: %(default)s)")
    parser.add_argument("--sigma", type=float, default=1.0, help="standard deviation of the input (default: %(default)s)")
    parser.add_argument("--levels", type=int, nargs="+", default=[3, 5, 8, 9, 16, 17, 33], metavar="L",
                        help="level counts to measure, each >= 2 (default: %(default)s); L = 2 has no round layout")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.sigma <= 0 or min(args.levels) < 2:
        parser.error("need --samples >= 1, --sigma > 0 and every level >= 2")
    rows = bits_table(args.levels, args.samples, args.seed, args.sigma)
    names = list(CONFIGS)
    print(f"Bits per dimension used on {args.sigma} * N(0, 1), {args.samples:,} samples, seed {args.seed}\n")
    print("| L | log2 L | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))
    for row in rows:
        cells = [NOT_DEFINED if row[n] is None else f"{row[n]:.3f}" for n in names]
        print(f"| {row['L']} | {row['max']:.3f} | " + " | ".join(cells) + " |")
    if any(row[n] is None for row in rows for n in names):
        print(f"\n{NOT_DEFINED}: the round layout is not defined for L = 2 (its codes would be {{-1, 0}}).")


if __name__ == "__main__":
    main()
