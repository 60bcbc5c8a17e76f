"""``python -m ifsq_quant``: measures the bits per dimension each quantizer uses on N(0, 1) input.

Prints a table (``--samples``, ``--seed``, ``--sigma`` adjustable); every figure is measured now.
"""

from __future__ import annotations

import argparse
import math

import torch

from . import FSQ, CodeUsage, iFSQ

CONFIGS = {
    "FSQ (tanh, round)": lambda L: FSQ([L], bins="round" if L > 2 else "symmetric"),
    "iFSQ (sigmoid, round)": lambda L: iFSQ([L], bins="round" if L > 2 else "symmetric"),
    "iFSQ (sigmoid, equal)": lambda L: iFSQ([L], bins="equal"),
    "erf, equal": lambda L: iFSQ([L], activation="erf", bins="equal"),
}


def bits_table(levels, samples: int, seed: int, sigma: float) -> list[dict]:
    """Entropy of the level occupancy (bits) per quantizer and L, on ``sigma * N(0, 1)``."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, 1, generator=generator) * sigma
    rows = []
    for L in levels:
        row = {"L": L, "max": math.log2(L)}
        for name, make in CONFIGS.items():
            _, idx = make(L)(z)
            usage = CodeUsage([L])
            usage.update(idx[:, None])
            row[name] = usage.bin_entropy().item()
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ifsq_quant", description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[3, 5, 8, 9, 16, 17, 33])
    args = parser.parse_args(argv)
    if args.samples < 1 or args.sigma <= 0 or min(args.levels) < 2:
        parser.error("need --samples >= 1, --sigma > 0 and every level >= 2")
    rows = bits_table(args.levels, args.samples, args.seed, args.sigma)
    names = list(CONFIGS)
    print(f"Bits per dimension used on {args.sigma} * N(0, 1), {args.samples:,} samples, seed {args.seed}\n")
    print("| L | log2 L | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))
    for row in rows:
        print(f"| {row['L']} | {row['max']:.3f} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
