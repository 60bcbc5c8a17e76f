"""The bits sweep rerun with the calibrated protocol (the protocol of ``study_generation``).

iFSQ tokenizers with L in {3, 5, 9, 17, 33} levels per dimension (latents 4x4x4 on 16x16 font
digits, so log2 L bits per latent dimension); on each, an AR transformer (``index_groups = [2, 2]``:
two vocabularies of L^2; stopped at its best validation loss, the validation loss logged every
``ar_eval_every`` steps) and a DiT. Guidance chosen per model by validation FD, then FD/KID with
95 % bootstrap intervals against the held-out test split, class accuracy, and the tokenizer's
test PSNR. The paper reports an optimum near 4 bits/dim (L = 17) for generation.
Writes ``bits_protocol.{json,md,png}`` to ``--out``.

    python -m benchmarks.study_bits_protocol --quick   # 1 seed, short training (tokenizer 200, AR 600, DiT 1,200 steps; about 10 min, one thread)
    python -m benchmarks.study_bits_protocol           # 2 seeds, full AR and DiT, tokenizers 1,200 steps (6,542 s on a shared machine)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import study_generation as G
from examples import pipeline as P
from examples.metrics import ProtocolEvaluator
from examples.report import study_command

LEVELS = (3, 5, 9, 17, 33)
CONFIGS = {
    "quick": dict(G.CONFIGS["quick"], num_val_samples=300, n_boot=50, splits=dict(G.CONFIGS["quick"]["splits"], reference=2000),
                  tokenizer=dict(G.CONFIGS["quick"]["tokenizer"], steps=200), ar=dict(G.CONFIGS["quick"]["ar"], steps=600),
                  dit=dict(G.CONFIGS["quick"]["dit"], steps=1200)),
    "full": dict(G.CONFIGS["full"], seeds=2, tokenizer_lrs=[2e-3], tokenizer=dict(G.CONFIGS["full"]["tokenizer"], steps=1200),
                 ar=dict(G.CONFIGS["full"]["ar"]), repa=False),
}


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"Bits sweep with the calibrated protocol ({meta['mode']} mode): `{meta['command']}`; seeds {meta['seeds']}. iFSQ tokenizers, "
             f"latents 4x4x4 on 16x16 font digits. FD/KID of {meta['num_generated']:,} samples vs {meta['num_real']:,} held-out test images "
             f"(95 % bootstrap CI); guidance chosen by validation FD; AR stopped at its best validation loss. Real vs real at the same n: "
             f"FD {result['real_vs_real']['fd']:.2f}. {meta['seconds']:.0f} s.", "",
             "| L | bits/dim | seed | PSNR (dB) | AR FD [95 % CI] | AR acc | AR val loss | DiT FD [95 % CI] | DiT acc |",
             "|---:|---:|---:|---:|---|---:|---:|---|---:|"]
    for L in meta["levels"]:
        for seed in meta["seeds"]:
            rs = {r["generator"]: r for r in result["records"] if r["L"] == L and r["seed"] == seed}
            if not rs:
                continue
            a, d = rs.get("ar"), rs.get("dit")
            any_r = a or d

            def cell(r):
                return f"{r['fd']:.2f} [{r['fd_ci'][0]:.2f}, {r['fd_ci'][1]:.2f}]" if r else "–"

            nan = float("nan")
            lines.append(f"| {L} | {math.log2(L):.2f} | {seed} | {any_r['tokenizer_psnr']:.2f} | {cell(a)} | {a['accuracy'] if a else nan:.3f} | "
                         f"{a['val_loss'] if a else nan:.3f} | {cell(d)} | {d['accuracy'] if d else nan:.3f} |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for gen, label, color in (("ar", "AR transformer", "C0"), ("dit", "DiT (flow matching)", "C1")):
        rs = sorted([r for r in result["records"] if r["generator"] == gen], key=lambda r: (r["L"], r["seed"]))
        if rs:
            err = [[r["fd"] - r["fd_ci"][0] for r in rs], [r["fd_ci"][1] - r["fd"] for r in rs]]
            axes[0].errorbar([r["bits_per_dim"] for r in rs], [r["fd"] for r in rs], yerr=err, marker="o", capsize=3, ls="none", color=color,
                             label=label)
    axes[0].axhline(result["real_vs_real"]["fd"], color="gray", ls="--", lw=1, label="real vs real (same n)")
    axes[0].set_ylabel("FD vs held-out test (95 % CI)", fontsize=10)
    axes[0].legend(fontsize=8)
    rs = [r for r in result["records"] if r["generator"] == result["records"][0]["generator"]]
    axes[1].plot([r["bits_per_dim"] for r in rs], [r["tokenizer_psnr"] for r in rs], marker="o", ls="none")
    axes[1].set_ylabel("tokenizer test PSNR (dB)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("bits per latent dimension (log2 L)", fontsize=10)
        ax.tick_params(labelsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    G.add_protocol_arguments(parser, "1 seed, short training", tuple(CONFIGS["full"]["splits"]))
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    cfg = G.protocol_config(args, CONFIGS, ("features", "tokenizer", "ar", "dit"))
    cfg["num_real"] = cfg["splits"]["test"]
    seeds = list(range(args.seeds or cfg["seeds"]))
    t0 = time.perf_counter()
    data = G.load_splits(cfg)
    feature_net, _ = P.train_classifier(data["features"], cfg["features"], G.ENV, seed=0, desc="feature network")
    evaluator = ProtocolEvaluator(feature_net, data["test"].images, data["test"].labels, data["val"].images, n_boot=cfg["n_boot"])
    n = cfg["num_generated"]
    real_vs_real = evaluator.evaluate(data["reference"].images[:n], data["reference"].labels[:n])
    records = []
    for seed in seeds:
        for L in args.levels:
            rs, _, _ = G.run_seed(seed, dict(cfg, levels=[L] * 4), data, evaluator, None, ["ifsq"], ["ar", "dit"], {"ifsq": cfg["tokenizer_lrs"]})
            for r in rs:
                r.update(L=L, bits_per_dim=math.log2(L), ar_vocab_sizes=P.group_vocab_sizes([L] * 4, cfg["index_groups"]))
            records += rs
    meta = dict(mode=mode, seeds=seeds, levels=args.levels, num_generated=n, num_real=cfg["num_real"], n_boot=cfg["n_boot"], config=cfg,
                seconds=round(time.perf_counter() - t0, 1), command=study_command("study_bits_protocol", argv))
    result = dict(meta=meta, real_vs_real=real_vs_real, records=records)
    best = {}
    for g in {r["generator"] for r in records}:
        best[g] = min((r for r in records if r["generator"] == g), key=lambda r: r["fd"])["L"]
    result["lowest_fd_L"] = best
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bits_protocol.json").write_text(json.dumps(result, indent=1, default=float))
    md = to_markdown(result)
    (args.out / "bits_protocol.md").write_text(md)
    figure(result, args.out / "bits_protocol.png")
    print(md)
    print("lowest FD at L =", best, "| mean psnr", np.mean([r["tokenizer_psnr"] for r in records]))
    return result


if __name__ == "__main__":
    main()
