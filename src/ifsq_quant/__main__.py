"""``python -m ifsq_quant``: the bits per dimension each quantizer uses on Gaussian input.

Prints a table measured now (entropy of the level occupancy, in bits, next to the maximum log2 L).
"""

from __future__ import annotations

import argparse
import math

import torch

from . import FSQ, __version__, iFSQ

# name -> (module for one dimension of L levels, or None where the layout does not exist for that L)
CONFIGS = {
    "FSQ (tanh, round)": lambda L: FSQ([L]) if L > 2 else None,
    "iFSQ (sigmoid, round)": lambda L: iFSQ([L]) if L > 2 else None,
    "iFSQ (sigmoid, equal)": lambda L: iFSQ([L], bins="equal"),
    "erf, equal": lambda L: iFSQ([L], activation="erf", bins="equal"),
}
NOT_DEFINED = "–"  # the round layout has no L = 2 (its codes would be {-1, 0})

MAX_LEVELS = 2**53  # the quantizers' limit: beyond, even float64 has no integer resolution
MAX_SAMPLES = 10**8  # the samples, their codes and indices are held in memory (about 2 GB at this count)
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes a 64-bit seed
# sigma * N(0, 1) is float32 (largest finite value 3.4e38): this leaves 34 standard deviations of room
MAX_SIGMA = 1e37


def _entropy_bits(indices: torch.Tensor) -> float:
    """Entropy (bits) of the distribution of the integer ``indices``; only the levels that occur are counted,
    so any number of levels costs memory in proportion to the samples."""
    counts = torch.unique(indices, return_counts=True)[1].to(torch.float64)
    p = counts / counts.sum()
    return float(-(p * torch.log2(p)).sum()) + 0.0  # + 0.0: one level used gives 0.0, not -0.0


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
            row[name] = _entropy_bits(idx)
        rows.append(row)
    return rows


def _integer(low: int, high: int, what: str):
    """An argparse type: an integer in [low, high]; anything else names the range and what came."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be an integer from {low:,} to {high:,}, got {text}")
        return value
    return parse


def _sigma(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SIGMA):
        raise argparse.ArgumentTypeError(f"the standard deviation must be a finite number > 0 and at most {MAX_SIGMA:g} "
                                         f"(the samples are float32), got {text}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ifsq_quant",
        description="Measure how many bits per dimension FSQ, iFSQ and the equal-bin layouts use on "
                    "Gaussian input (the entropy of their level occupancy), and print a Markdown table.",
    )
    parser.add_argument("--version", action="version", version=f"ifsq-quant {__version__}")
    parser.add_argument("--samples", type=_integer(1, MAX_SAMPLES, "the number of samples"), default=1_000_000,
                        help=f"number of N(0, 1) samples, 1 to {MAX_SAMPLES:,} (default: %(default)s)")
    parser.add_argument("--seed", type=_integer(0, MAX_SEED, "the seed"), default=0,
                        help="random seed of the samples, 0 to 2**64 - 1 (default: %(default)s)")
    parser.add_argument("--sigma", type=_sigma, default=1.0,
                        help=f"standard deviation of the input, a finite number > 0, at most {MAX_SIGMA:g} (default: %(default)s)")
    parser.add_argument("--levels", type=_integer(2, MAX_LEVELS, "each level count"), nargs="+", default=[3, 5, 8, 9, 16, 17, 33],
                        metavar="L", help="level counts to measure, each from 2 to 2**53 (default: %(default)s); "
                                          "L = 2 has no round layout")
    args = parser.parse_args(argv)
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
