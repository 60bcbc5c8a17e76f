"""The bits sweep: is generation best near 4 bits per latent dimension, as the paper reports?

iFSQ tokenizers with L in {3, 5, 9, 17, 33} levels per dimension and the same latent shape
(4 x 4 positions x d = 4 channels on 16x16 digits), so bits per latent dimension = log2 L. On each,
a class-conditional AR transformer on the indices (``index_groups = [2, 2]``: two vocabularies of L^2
per position, 9 ... 1,089) and a class-conditional DiT (flow matching on the continuous codes).

``--evaluation protocol`` (the default): font digits and the calibrated protocol of the generation
study (``studies/recipes.py``): the AR transformer stopped at its best validation loss, guidance chosen
per model by validation FD, then FD/KID with 95 % bootstrap intervals against the held-out test split,
class accuracy, and the tokenizer's test PSNR.

``--evaluation demo``: the end-to-end demo's models and measurement (``studies.protocol.DemoEvaluation``):
scikit-learn's digits, the demo's generators at its guidance, FD of 300 samples against the training
digits; also the FD of the reconstructions and of the DiT's samples snapped to the grid. Mean and std
over seeds.

    python -m studies.bits --quick                       # 1 seed, short training (about 10 min, one thread)
    python -m studies.bits --out studies/results/bits    # 2 seeds, tokenizers 1,200 steps (about 1.8 h, one thread)
    python -m studies.bits --evaluation demo --out studies/results/bits/evaluation_demo   # 2 seeds, the demo's training (about 1 h)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from examples import pipeline as P
from examples.diffusion import snap_to_grid
from examples.metrics import extract_features, frechet_distance
from examples.presets import PRESETS
from studies import protocol
from studies.font_digits import load_splits
from studies.harness import ENV, Study, pyplot, save_figure, start
from studies.protocol import DemoEvaluation, ProtocolEvaluator
from studies.recipes import HEADLINE, seed_records
from studies.stats import seed_statistics

STUDY = Study("bits", __doc__)
LEVELS = (3, 5, 9, 17, 33)

# Every number that changes the result, per evaluation and mode.
CONFIGS = {
    "protocol": {
        "quick": dict(HEADLINE["quick"], num_val_samples=300, n_boot=50, splits=dict(HEADLINE["quick"]["splits"], reference=2000),
                      tokenizer=dict(HEADLINE["quick"]["tokenizer"], steps=200), ar=dict(HEADLINE["quick"]["ar"], steps=600),
                      dit=dict(HEADLINE["quick"]["dit"], steps=1200)),
        "full": dict(HEADLINE["full"], seeds=2, tokenizer_lrs=[2e-3], tokenizer=dict(HEADLINE["full"]["tokenizer"], steps=1200),
                     ar=dict(HEADLINE["full"]["ar"]), repa=False),
    },
    "demo": {  # the end-to-end demo's generators (examples/presets.py) and its quick training per L
        "quick": dict(seeds=1, classifier=dict(PRESETS["quick"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"], steps=300),
                      ar=dict(PRESETS["quick"]["ar"], steps=500, dim=64, depth=2),
                      diffusion=dict(PRESETS["quick"]["diffusion"], steps=1000, dim=64, depth=2),
                      num_samples=300, index_groups=[2, 2]),
        "full": dict(seeds=2, classifier=dict(PRESETS["full"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"]),
                     ar=dict(PRESETS["quick"]["ar"]), diffusion=dict(PRESETS["quick"]["diffusion"]),
                     num_samples=300, index_groups=[2, 2]),
    },
}


# ----------------------------------------------------------------------------- the calibrated protocol


def run_protocol(args, argv, t0: float) -> dict:
    cfg = protocol.configure(args, CONFIGS["protocol"], ("features", "tokenizer", "ar", "dit"))
    cfg["num_real"] = cfg["splits"]["test"]
    seeds = STUDY.seeds(args, cfg)
    data = load_splits(cfg["splits"])
    feature_net, _ = P.train_classifier(data["features"], cfg["features"], ENV, seed=0, desc="feature network")
    evaluator = ProtocolEvaluator(feature_net, data["test"].images, data["test"].labels, data["val"].images, n_boot=cfg["n_boot"])
    n = cfg["num_generated"]
    real_vs_real = evaluator.evaluate(data["reference"].images[:n], data["reference"].labels[:n])
    records = []
    for seed in seeds:
        for L in args.levels:
            rs, _, _ = seed_records(seed, dict(cfg, levels=[L] * 4), data, evaluator, None, ["ifsq"], ["ar", "dit"], {"ifsq": cfg["tokenizer_lrs"]})
            for r in rs:
                r.update(L=L, bits_per_dim=math.log2(L), ar_vocab_sizes=P.group_vocab_sizes([L] * 4, cfg["index_groups"]))
            records += rs
    meta = STUDY.meta(args, argv, t0, seeds=seeds, levels=args.levels, num_generated=n, num_real=cfg["num_real"], n_boot=cfg["n_boot"],
                      config=cfg, evaluation="protocol")
    lowest = {g: min((r for r in records if r["generator"] == g), key=lambda r: r["fd"])["L"] for g in {r["generator"] for r in records}}
    return dict(meta=meta, real_vs_real=real_vs_real, records=records, lowest_fd_L=lowest)


def protocol_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"Bits sweep with the calibrated protocol ({meta['mode']} mode): `{meta['command']}`; seeds {meta['seeds']}. iFSQ tokenizers, "
             f"latents 4x4x4 on 16x16 font digits. FD/KID of {meta['num_generated']:,} samples vs {meta['num_real']:,} held-out test images "
             f"(95 % bootstrap CI); guidance chosen by validation FD; AR stopped at its best validation loss. Real vs real at the same n: "
             f"FD {result['real_vs_real']['fd']:.2f}. {meta['seconds']:.0f} s.", "",
             "| L | bits/dim | seed | PSNR (dB) | AR FD [95 % CI] | AR acc | AR val loss | DiT FD [95 % CI] | DiT acc |",
             "|---:|---:|---:|---:|---|---:|---:|---|---:|"]
    nan = float("nan")

    def cell(r):
        return f"{r['fd']:.2f} [{r['fd_ci'][0]:.2f}, {r['fd_ci'][1]:.2f}]" if r else "–"

    for L in meta["levels"]:
        for seed in meta["seeds"]:
            rs = {r["generator"]: r for r in result["records"] if r["L"] == L and r["seed"] == seed}
            if not rs:
                continue
            a, d = rs.get("ar"), rs.get("dit")
            lines.append(f"| {L} | {math.log2(L):.2f} | {seed} | {(a or d)['tokenizer_psnr']:.2f} | {cell(a)} | {a['accuracy'] if a else nan:.3f} | "
                         f"{a['val_loss'] if a else nan:.3f} | {cell(d)} | {d['accuracy'] if d else nan:.3f} |")
    lines += ["", "Lowest FD at L = " + ", ".join(f"{g}: {L}" for g, L in sorted(result["lowest_fd_L"].items())) + "."]
    return "\n".join(lines) + "\n"


def protocol_figure(result: dict, path: Path) -> None:
    plt = pyplot()
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
    save_figure(fig, path)


# ----------------------------------------------------------------------------- the demo's evaluation


def demo_level(L: int, seed: int, cfg: dict, ev: DemoEvaluation) -> dict:
    """One L and seed with the demo's models: reconstruction PSNR and FD, then AR and DiT FD (the DiT also snapped to the grid)."""
    t0 = time.perf_counter()
    tok, _ = P.train_tokenizer("ifsq", [L] * 4, cfg["index_groups"], cfg["tokenizer"], ev.train_set, ENV, seed, f"tokenizer L={L}")
    m, recon, _ = P.evaluate_tokenizer(tok, ev.val_set, ENV)
    row = dict(L=L, seed=seed, bits_per_dim=math.log2(L), psnr=m["psnr"], ssim=m["ssim"], utilization=m["utilization"],
               fd_reconstruction=frechet_distance(extract_features(ev.classifier, recon), ev.train_features),
               ar_vocab_sizes=P.group_vocab_sizes([L] * 4, cfg["index_groups"]))
    labels = P.balanced_labels(cfg["num_samples"], 10)

    a = cfg["ar"]
    ar, _ = P.train_ar(tok, ev.train_set, a, ENV, seed, f"ar L={L}")
    g = ev.evaluate(P.sample_ar(ar, tok, labels, a["cfg_scale"], seed, ENV, temperature=a["temperature"], top_k=a["top_k"]), labels)
    row.update(ar_fd=g["fd"], ar_accuracy=g["accuracy"], ar_params=sum(p.numel() for p in ar.parameters()))

    dit, normalizer, _ = P.train_dit(tok, ev.train_set, cfg["diffusion"], ENV, seed, f"diffusion L={L}")
    sample_codes = P.sample_dit(dit, normalizer, labels, cfg["diffusion"], seed, ENV)
    g = ev.evaluate(P.decode_codes(tok, sample_codes), labels)
    gs = ev.evaluate(P.decode_codes(tok, snap_to_grid(sample_codes, tok.quantizer)), labels)
    row.update(diffusion_fd=g["fd"], diffusion_accuracy=g["accuracy"], diffusion_fd_snapped=gs["fd"],
               diffusion_accuracy_snapped=gs["accuracy"], diffusion_params=sum(p.numel() for p in dit.parameters()),
               seconds=round(time.perf_counter() - t0, 1))
    return row


DEMO_METRICS = ("psnr", "ssim", "utilization", "fd_reconstruction", "ar_fd", "ar_accuracy", "diffusion_fd", "diffusion_fd_snapped",
                "diffusion_accuracy")


def run_demo(args, argv, t0: float) -> dict:
    cfg = protocol.configure_demo(args, CONFIGS["demo"])
    seeds = STUDY.seeds(args, cfg)
    ev = DemoEvaluation(cfg["classifier"])
    rows = []
    for seed in seeds:
        for L in args.levels:
            rows.append(demo_level(L, seed, cfg, ev))
            r = rows[-1]
            print(f"L={L} seed={seed}: PSNR {r['psnr']:.2f}, AR FD {r['ar_fd']:.3f}, DiT FD {r['diffusion_fd']:.3f} "
                  f"(snapped {r['diffusion_fd_snapped']:.3f}), {r['seconds']} s", flush=True)
    summary = []
    for L in sorted({r["L"] for r in rows}):
        group = [r for r in rows if r["L"] == L]
        summary.append(dict(L=L, bits_per_dim=math.log2(L), seeds=len(group), ar_vocab_sizes=group[0]["ar_vocab_sizes"],
                            **seed_statistics(group, DEMO_METRICS)))
    meta = STUDY.meta(args, argv, t0, seeds=seeds, levels=args.levels, num_samples=cfg["num_samples"], fd_real=ev.fd_real, config=cfg,
                      evaluation="demo")
    return dict(meta=meta, summary=summary, rows=rows)


def demo_markdown(result: dict) -> str:
    summary, meta = result["summary"], result["meta"]
    lines = [f"Bits sweep with the demo's evaluation ({meta['mode']} mode): `{meta['command']}`; iFSQ tokenizers, latents 4x4x4, seeds "
             f"{meta['seeds']}. FD against the training digits in the small CNN's feature space ({meta['num_samples']} samples each; real "
             f"validation images: {meta['fd_real']:.3f}). Mean ± std over seeds (std 0 with one seed).", "",
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


def demo_figure(result: dict, path: Path) -> None:
    import matplotlib

    plt = pyplot()
    summary, meta = result["summary"], result["meta"]
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


# ----------------------------------------------------------------------------- the command line


def to_markdown(result: dict) -> str:
    return (demo_markdown if result["meta"]["evaluation"] == "demo" else protocol_markdown)(result)


def figure(result: dict, path: Path) -> None:
    (demo_figure if result["meta"]["evaluation"] == "demo" else protocol_figure)(result, path)


def main(argv=None):
    parser = STUDY.parser("1 seed, short training")
    protocol.add_arguments(parser, tuple(CONFIGS["protocol"]["full"]["splits"]))
    protocol.add_evaluation_argument(parser)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    args = parser.parse_args(argv)
    if args.from_json:
        return STUDY.rewrite(args.from_json, to_markdown, figure)
    t0 = start()
    result = (run_demo if args.evaluation == "demo" else run_protocol)(args, argv, t0)
    return STUDY.save(args.out, result, to_markdown, figure)


if __name__ == "__main__":
    main()
