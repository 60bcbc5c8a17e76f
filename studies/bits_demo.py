"""Study 3 of the paper's findings: the bits sweep.

iFSQ tokenizers with L in {3, 5, 9, 17, 33} levels per dimension and the same latent shape
(4 x 4 positions x d = 4 channels on 16x16 digits), so bits per latent dimension = log2 L.
For each L: validation reconstruction PSNR, the Fréchet distance (FD, in the feature space
of the examples' small CNN) of the reconstructions, of a class-conditional DiT (flow matching
on the continuous codes; also with its samples snapped to the grid) and of a class-conditional
AR transformer on the indices (``index_groups = [2, 2]``: two vocabularies of L^2 per position,
9 ... 1,089). The paper reports an optimum near 4 bits/dim (L = 17) for generation.
Writes ``bits.{json,md,png}`` to ``--out``.

    python -m benchmarks.study_bits            # full: 2 seeds, tokenizer / AR / DiT 600 / 1200 / 1500 steps, the demo's generators (~40 min)
    python -m benchmarks.study_bits --quick    # 1 seed, tokenizer / AR / DiT 300 / 500 / 1000 steps, small generators
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from examples import pipeline as P
from examples.metrics import extract_features, frechet_distance
from examples.report import seed_statistics, study_command

LEVELS = (3, 5, 9, 17, 33)
RESULTS = Path(__file__).resolve().parent / "results"
ENV = P.Env(rank=0, world=1, device=torch.device("cpu"))
PRESETS = P.PRESETS

# Every number that changes the result; the generators' sizes and sampling settings come from examples/pipeline.py.
CONFIGS = {
    "quick": dict(seeds=1, classifier=dict(PRESETS["quick"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"], steps=300),
                  ar=dict(PRESETS["quick"]["ar"], steps=500, dim=64, depth=2),
                  diffusion=dict(PRESETS["quick"]["diffusion"], steps=1000, dim=64, depth=2),
                  num_samples=300, index_groups=[2, 2]),
    # the end-to-end demo's quick training per L (about 4 minutes per L and seed on one thread of this 2-core machine)
    "full": dict(seeds=2, classifier=dict(PRESETS["full"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"]),
                 ar=dict(PRESETS["quick"]["ar"]), diffusion=dict(PRESETS["quick"]["diffusion"]),
                 num_samples=300, index_groups=[2, 2]),
}


# ----------------------------------------------------------------------------- the study


def configure(configs: dict, args) -> tuple[str, dict, list[int]]:
    """The mode's config with the command-line overrides (``--steps``, ``--num-samples``) applied, and the seeds."""
    mode = "quick" if args.quick else "full"
    cfg = copy.deepcopy(configs[mode])
    if args.steps:
        for k in ("classifier", "tokenizer", "ar", "diffusion"):
            cfg[k]["steps"] = args.steps
    if args.num_samples:
        cfg["num_samples"] = args.num_samples
    return mode, cfg, list(range(args.seeds or cfg["seeds"]))


def load_evaluation(cfg: dict):
    """The digits split, the FD classifier trained on it, its training features and the real-vs-real FD."""
    data = P.load_digits_split(n_val_per_class=PRESETS["quick"]["n_val_per_class"], seed=0)
    classifier, _ = P.train_classifier(data[0], cfg["classifier"], ENV, seed=0)
    train_features = extract_features(classifier, data[0].images)
    fd_real = frechet_distance(extract_features(classifier, data[1].images), train_features)
    return data, classifier, train_features, fd_real


def run_level(L: int, seed: int, cfg: dict, data, classifier, train_features) -> dict:
    train_set, val_set = data
    t0 = time.perf_counter()
    tok, _ = P.train_tokenizer("ifsq", [L] * 4, cfg["index_groups"], cfg["tokenizer"], train_set, ENV, seed, f"tokenizer L={L}")
    m, recon, _ = P.evaluate_tokenizer(tok, val_set, ENV)
    row = dict(L=L, seed=seed, bits_per_dim=math.log2(L), psnr=m["psnr"], ssim=m["ssim"], utilization=m["utilization"],
               fd_reconstruction=frechet_distance(extract_features(classifier, recon), train_features),
               ar_vocab_sizes=P.group_vocab_sizes([L] * 4, cfg["index_groups"]))
    labels = P.balanced_labels(cfg["num_samples"], 10)

    a = cfg["ar"]
    ar, _ = P.train_ar(tok, train_set, a, ENV, seed, f"ar L={L}")
    images = P.sample_ar(ar, tok, labels, a["cfg_scale"], seed, ENV, temperature=a["temperature"], top_k=a["top_k"])
    g = P.generated_metrics(classifier, images, labels, train_features)
    row.update(ar_fd=g["fd"], ar_accuracy=g["accuracy"], ar_params=sum(p.numel() for p in ar.parameters()))

    dit, normalizer, _ = P.train_dit(tok, train_set, cfg["diffusion"], ENV, seed, f"diffusion L={L}")
    sample_codes = P.sample_dit(dit, normalizer, labels, cfg["diffusion"], seed, ENV)
    g = P.generated_metrics(classifier, P.decode_codes(tok, sample_codes), labels, train_features)
    gs = P.generated_metrics(classifier, P.decode_codes(tok, P.snap_to_grid(sample_codes, tok.quantizer)), labels, train_features)
    row.update(diffusion_fd=g["fd"], diffusion_accuracy=g["accuracy"], diffusion_fd_snapped=gs["fd"],
               diffusion_accuracy_snapped=gs["accuracy"], diffusion_params=sum(p.numel() for p in dit.parameters()),
               seconds=round(time.perf_counter() - t0, 1))
    return row


METRICS = ("psnr", "ssim", "utilization", "fd_reconstruction", "ar_fd", "ar_accuracy", "diffusion_fd", "diffusion_fd_snapped",
           "diffusion_accuracy")


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for L in sorted({r["L"] for r in rows}):
        group = [r for r in rows if r["L"] == L]
        s = dict(L=L, bits_per_dim=math.log2(L), seeds=len(group), ar_vocab_sizes=group[0]["ar_vocab_sizes"])
        s.update(seed_statistics(group, METRICS))
        out.append(s)
    return out


def to_markdown(summary: list[dict], meta: dict) -> str:
    lines = [f"Bits sweep ({meta['mode']} mode), iFSQ tokenizers, latents 4x4x4, seeds {meta['seeds']}. FD against the training "
             f"digits in the small CNN's feature space ({meta['num_samples']} samples each; real validation images: "
             f"{meta['fd_real']:.3f}). Mean ± std over seeds (std 0 with one seed).", "",
             "| L | bits/dim | AR vocab | PSNR (dB) | utilization | FD recon | AR FD | AR acc | DiT FD | DiT FD snapped | DiT acc |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['L']} | {s['bits_per_dim']:.2f} | {'x'.join(map(str, s['ar_vocab_sizes']))} | "
                     f"{s['psnr']:.2f} ± {s['psnr_std']:.2f} | {s['utilization']:.3f} | {s['fd_reconstruction']:.3f} | "
                     f"{s['ar_fd']:.3f} ± {s['ar_fd_std']:.3f} | {s['ar_accuracy']:.3f} | {s['diffusion_fd']:.3f} ± {s['diffusion_fd_std']:.3f} | "
                     f"{s['diffusion_fd_snapped']:.3f} | {s['diffusion_accuracy']:.3f} |")
    best = {k: min(summary, key=lambda s: s[k])["L"] for k in ("ar_fd", "diffusion_fd")}
    lines += ["", f"Lowest FD: AR at L = {best['ar_fd']}, DiT at L = {best['diffusion_fd']}."]
    return "\n".join(lines) + "\n"


def figure(summary: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["bits_per_dim"] for s in summary]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for key, label in (("ar_fd", "AR"), ("diffusion_fd", "DiT"), ("diffusion_fd_snapped", "DiT, snapped"), ("fd_reconstruction", "reconstruction")):
        axes[0].errorbar(x, [s[key] for s in summary], yerr=[s[key + "_std"] for s in summary], marker="o", lw=1, capsize=2, label=label)
    axes[0].axhline(meta["fd_real"], color="gray", lw=0.6, ls="--", label="real validation")
    axes[0].set_yscale("log")
    axes[0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_title("FD vs bits/dim", fontsize=9)
    axes[0].legend(fontsize=6)
    axes[1].errorbar(x, [s["psnr"] for s in summary], yerr=[s["psnr_std"] for s in summary], marker="o", lw=1, capsize=2)
    axes[1].set_title("reconstruction PSNR (dB) vs bits/dim", fontsize=9)
    for ax in axes:
        ax.set_xlabel("bits per latent dimension (log2 L)", fontsize=8)
        ax.set_xticks(x, [f"{v:.1f}\nL={s['L']}" for v, s in zip(x, summary)], fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, short training, small generators (minutes)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="override the steps of every model (tests)")
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mode, cfg, seeds = configure(CONFIGS, args)
    t0 = time.perf_counter()
    data, classifier, train_features, fd_real = load_evaluation(cfg)
    rows = []
    for seed in seeds:
        for L in args.levels:
            row = run_level(L, seed, cfg, data, classifier, train_features)
            rows.append(row)
            print(f"L={L} seed={seed}: PSNR {row['psnr']:.2f}, AR FD {row['ar_fd']:.3f}, DiT FD {row['diffusion_fd']:.3f} "
                  f"(snapped {row['diffusion_fd_snapped']:.3f}), {row['seconds']} s", flush=True)
    summary = summarize(rows)
    meta = dict(mode=mode, seeds=seeds, levels=args.levels, num_samples=cfg["num_samples"], fd_real=fd_real, config=cfg,
                seconds=round(time.perf_counter() - t0, 1), command=study_command("study_bits", argv))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bits.json").write_text(json.dumps(dict(meta=meta, summary=summary, rows=rows), indent=1))
    md = to_markdown(summary, meta)
    (args.out / "bits.md").write_text(md)
    figure(summary, meta, args.out / "bits.png")
    print(md)
    return dict(meta=meta, summary=summary, rows=rows)


if __name__ == "__main__":
    main()
