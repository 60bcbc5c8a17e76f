"""Study 1 of the paper's findings, no training: bits per dimension each bound actually uses.

For activations {tanh, sigmoid (iFSQ), erf} x layouts {round, equal} x L x inputs N(0, s^2):
the entropy of the level occupancy (bits), and the Kolmogorov-Smirnov distance of f(z) from
U(-1, 1). Writes ``utilization.{json,md,png}``.

    python -m studies.utilization --quick                           # 200k samples
    python -m studies.utilization --out studies/results/utilization  # 4M samples (about a minute)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ifsq_quant import FSQ, CodeUsage
from ifsq_quant.activations import get_activation
from studies.harness import Study, pyplot

STUDY = Study("utilization", __doc__)

ACTIVATIONS = ("tanh", "sigmoid", "erf")
LAYOUTS = ("round", "equal")
LEVELS = (3, 5, 9, 17, 33)
SIGMAS = (0.5, 1.0, 2.0)


def ks_from_uniform(y: torch.Tensor) -> float:
    """sup |F_n(t) - (t + 1)/2| of the samples ``y`` (1-D) against U(-1, 1)."""
    y = y.double().sort().values
    n = y.numel()
    cdf = (y + 1) / 2
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    lower = cdf - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(upper, lower).max())


def bits_used(activation: str, bins: str, L: int, z: torch.Tensor) -> float:
    eps = 1e-3 if activation == "tanh" else 0.0  # each bound with its method's eps
    q = FSQ([L], activation=activation, bins=bins, eps=eps)
    _, idx = q(z)
    usage = CodeUsage([L])
    usage.update(idx[:, None])
    return usage.bin_entropy().item()


def run(samples: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(samples, 1, generator=generator)
    rows = []
    for sigma in SIGMAS:
        z = normal * sigma
        ks = {a: ks_from_uniform(get_activation(a)(z[:, 0])) for a in ACTIVATIONS}
        for L in LEVELS:
            for bins in LAYOUTS:
                for a in ACTIVATIONS:
                    rows.append({"sigma": sigma, "L": L, "bins": bins, "activation": a,
                                 "bits": bits_used(a, bins, L, z), "max_bits": float(torch.log2(torch.tensor(L))),
                                 "ks": ks[a]})
    return rows


def to_markdown(result: dict) -> str:
    rows, samples, seed = result["rows"], result["meta"]["samples"], result["meta"]["seed"]
    lines = [f"Bits per dimension used (entropy of level occupancy), {samples:,} samples of N(0, s^2), seed {seed}.", ""]
    for sigma in SIGMAS:
        lines += [f"**s = {sigma}** (KS distance of f(z) from U(-1,1): "
                  + ", ".join(f"{a} {next(r['ks'] for r in rows if r['sigma'] == sigma and r['activation'] == a):.4f}"
                              for a in ACTIVATIONS) + ")", "",
                  "| L | log2 L | " + " | ".join(f"{a} {b}" for b in LAYOUTS for a in ACTIVATIONS) + " | best |",
                  "|---:|---:|" + "---:|" * (len(LAYOUTS) * len(ACTIVATIONS)) + "---|"]
        for L in LEVELS:
            cells = {(r["activation"], r["bins"]): r["bits"] for r in rows if r["sigma"] == sigma and r["L"] == L}
            best = max(cells, key=cells.get)
            lines.append(f"| {L} | {torch.log2(torch.tensor(float(L))):.3f} | "
                         + " | ".join(f"{cells[(a, b)]:.3f}" for b in LAYOUTS for a in ACTIVATIONS)
                         + f" | {best[0]} {best[1]} |")
        lines.append("")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    rows, samples, seed = result["rows"], result["meta"]["samples"], result["meta"]["seed"]
    plt = pyplot()
    z = torch.randn(min(samples, 1_000_000), generator=torch.Generator().manual_seed(seed))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for a in ACTIVATIONS:
        axes[0].hist(get_activation(a)(z).numpy(), bins=100, range=(-1, 1), histtype="step", density=True, label=a)
    axes[0].set_title("f(z), z ~ N(0, 1)")
    axes[0].legend()
    L = 17
    for a in ACTIVATIONS:
        for bins, style in (("round", "-"), ("equal", "--")):
            _, idx = FSQ([L], activation=a, bins=bins, eps=1e-3 if a == "tanh" else 0.0)(z[:, None])
            occupancy = torch.bincount(idx, minlength=L).double() / idx.numel()
            axes[1].plot(range(L), occupancy.numpy(), style, label=f"{a} {bins}")
    axes[1].axhline(1 / L, color="gray", lw=0.5)
    axes[1].set_title(f"level occupancy, L = {L}, N(0, 1)")
    axes[1].legend(fontsize=7)
    for a in ACTIVATIONS:
        for bins, style in (("round", "-"), ("equal", "--")):
            xs = [r["L"] for r in rows if r["sigma"] == 1.0 and r["activation"] == a and r["bins"] == bins]
            gap = [r["max_bits"] - r["bits"] for r in rows if r["sigma"] == 1.0 and r["activation"] == a and r["bins"] == bins]
            axes[2].plot(xs, gap, style, marker="o", label=f"{a} {bins}")
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_title("log2 L - bits used, N(0, 1)")
    axes[2].set_xlabel("L")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = STUDY.parser("200,000 samples instead of 4,000,000", seeds=False)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.from_json:
        return STUDY.rewrite(args.from_json, to_markdown, figure)
    t0 = time.perf_counter()
    samples = args.samples or (200_000 if args.quick else 4_000_000)
    rows = run(samples, args.seed)
    return STUDY.save(args.out, dict(meta=STUDY.meta(args, argv, t0, samples=samples, seed=args.seed), rows=rows), to_markdown, figure)


if __name__ == "__main__":
    main()
