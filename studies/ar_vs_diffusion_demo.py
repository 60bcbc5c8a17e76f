"""Study 4 of the paper's findings: AR vs diffusion on one iFSQ tokenizer, FD against training compute.

One iFSQ tokenizer (L = 17, d = 4, ``index_groups = [2, 2]``) on 16x16 digits; on it a
class-conditional AR transformer (on the indices) and a class-conditional DiT (flow matching on
the continuous codes), of matched parameter count (the DiT's width is chosen so that its
parameter count is the closest to the AR model's). Both are trained with the examples' training
loop; every ``eval_every`` steps samples are drawn and their Fréchet distance (FD, in the
feature space of the examples' small CNN) is measured. The x-axis is training compute: the
FLOPs of one training step (forward + backward at the training batch size), counted with
``torch.utils.flop_counter.FlopCounterMode`` on the real shapes, times the step. The counter
counts matrix products and convolutions; attention's score and value products go through
``scaled_dot_product_attention``, which it does not count on the CPU (3-4 % of a step
at 17 positions; analytic estimate in the JSON). Sampling compute is not included.
The paper's claim: AR leads early, diffusion ends better; where do they cross?
Writes ``ar_vs_diffusion.{json,md,png}`` to ``--out``.

    python -m benchmarks.study_ar_vs_diffusion            # full: 2 seeds, 3000 steps, AR width 128 / 4 blocks, DiT matched (~25 min)
    python -m benchmarks.study_ar_vs_diffusion --quick    # 1 seed, 1000 steps, width 64 / 2 blocks
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.study_bits import ENV, configure, load_evaluation
from examples import pipeline as P
from examples.diffusion import LatentNormalizer
from examples.pipeline import PRESETS
from examples.report import study_command

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "quick": dict(seeds=1, levels=[17] * 4, index_groups=[2, 2], eval_every=100, num_samples=300,
                  classifier=dict(PRESETS["quick"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"], steps=400),
                  ar=dict(PRESETS["quick"]["ar"], steps=1000, dim=64, depth=2), diffusion=dict(PRESETS["quick"]["diffusion"], steps=1000, depth=2)),
    "full": dict(seeds=2, levels=[17] * 4, index_groups=[2, 2], eval_every=300, num_samples=300,
                 classifier=dict(PRESETS["full"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"]),
                 ar=dict(PRESETS["quick"]["ar"], steps=3000), diffusion=dict(PRESETS["quick"]["diffusion"], steps=3000)),
}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def match_dit_width(tok, ar_params: int, dit_cfg: dict, latent: int) -> int:
    """The DiT width (a multiple of 4 * heads) whose parameter count is closest to ``ar_params``."""
    step = 4 * dit_cfg["heads"]
    widths = range(step, 513, step)
    return min(widths, key=lambda w: abs(params(P.build_dit(tok, dict(dit_cfg, dim=w), latent, seed=0)) - ar_params))


def step_flops(loss_fn, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one training step's forward and backward on ``batch`` (FlopCounterMode)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, *batch).backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    return int(counter.get_total_flops())


def attention_flops(seq: int, dim: int, depth: int, batch: int) -> int:
    """Analytic FLOPs of the attention products (QK^T and AV) of one training step: 3x forward for backward."""
    return 3 * depth * batch * 2 * 2 * seq * seq * dim


def matched_generators(tok, cfg: dict, latent: int, seed: int, labels, tokens, latents):
    """An AR transformer and a DiT of matched parameter count on ``tok``'s latents, the DiT's
    config, and the FLOPs of one training step of each (``flops``: counted; ``attention``: the
    attention products the counter does not see)."""
    ar = P.build_ar(tok, cfg["ar"], latent, seed)
    dit_cfg = dict(cfg["diffusion"], dim=match_dit_width(tok, params(ar), cfg["diffusion"], latent))
    dit = P.build_dit(tok, dit_cfg, latent, seed)
    b = cfg["ar"]["batch_size"]
    flops = dict(ar=step_flops(P.ar_loss, ar, (labels[:b], tokens[:b])),
                 diffusion=step_flops(P.diffusion_loss, dit, (latents[:b], labels[:b])))
    attention = dict(ar=attention_flops(latent * latent, cfg["ar"]["dim"], cfg["ar"]["depth"], b),
                     diffusion=attention_flops(latent * latent, dit_cfg["dim"], dit_cfg["depth"], b))
    return ar, dit, dit_cfg, flops, attention


def crossings(ar_curve: list[dict], dit_curve: list[dict]) -> list[float]:
    """Training FLOPs where FD(AR) - FD(DiT) changes sign, both curves interpolated linearly in log FLOPs."""
    lo = max(ar_curve[0]["flops"], dit_curve[0]["flops"])
    hi = min(ar_curve[-1]["flops"], dit_curve[-1]["flops"])
    if lo >= hi:
        return []
    grid = np.logspace(np.log10(lo), np.log10(hi), 200)

    def interp(curve):
        return np.interp(np.log10(grid), np.log10([p["flops"] for p in curve]), [p["fd"] for p in curve])

    diff = interp(ar_curve) - interp(dit_curve)
    return [float(grid[i + 1]) for i in range(len(grid) - 1) if np.sign(diff[i]) != np.sign(diff[i + 1]) and diff[i + 1] != 0]


def run_seed(seed: int, cfg: dict, data, classifier, train_features) -> dict:
    train_set, _ = data
    latent = train_set.image_shape[1] // 4
    tok, _ = P.train_tokenizer("ifsq", cfg["levels"], cfg["index_groups"], cfg["tokenizer"], train_set, ENV, seed, f"tokenizer L={cfg['levels'][0]}")
    labels = P.balanced_labels(cfg["num_samples"], 10)
    tokens = P.encode_tokens(tok, train_set.images)
    codes = P.encode_codes(tok, train_set.images)
    normalizer = LatentNormalizer(codes.shape[1]).fit(codes)
    latents = normalizer.normalize(codes)

    ar, dit, dit_cfg, flops, attention = matched_generators(tok, cfg, latent, seed, train_set.labels, tokens, latents)
    curves: dict[str, list[dict]] = {"ar": [], "diffusion": []}
    a = cfg["ar"]

    def eval_ar(step: int, model) -> None:
        images = P.sample_ar(model, tok, labels, a["cfg_scale"], seed, ENV, temperature=a["temperature"], top_k=a["top_k"])
        g = P.generated_metrics(classifier, images, labels, train_features)
        curves["ar"].append(dict(step=step, flops=step * flops["ar"], **g))

    def eval_dit(step: int, model) -> None:
        images = P.decode_codes(tok, P.sample_dit(model, normalizer, labels, dit_cfg, seed, ENV))
        g = P.generated_metrics(classifier, images, labels, train_features)
        curves["diffusion"].append(dict(step=step, flops=step * flops["diffusion"], **g))

    t0 = time.perf_counter()
    P.train(ar, P.ar_loss, (train_set.labels, tokens), cfg["ar"], ENV, seed, "ar", callback=eval_ar, callback_every=cfg["eval_every"])
    t_ar = time.perf_counter() - t0
    torch.manual_seed(seed)
    P.train(dit, P.diffusion_loss, (latents, train_set.labels), dit_cfg, ENV, seed, "diffusion", callback=eval_dit,
            callback_every=cfg["eval_every"])
    t_dit = time.perf_counter() - t0 - t_ar
    return dict(seed=seed, ar_params=params(ar), diffusion_params=params(dit), diffusion_dim=dit_cfg["dim"], step_flops=flops,
                attention_flops_uncounted=attention, curves=curves, crossings_flops=crossings(curves["ar"], curves["diffusion"]),
                seconds=dict(ar=round(t_ar, 1), diffusion=round(t_dit, 1)))


def to_markdown(rows: list[dict], meta: dict) -> str:
    r0 = rows[0]
    lines = [f"AR vs diffusion ({meta['mode']} mode) on one iFSQ tokenizer (L = 17, d = 4), seeds {meta['seeds']}. "
             f"AR: {r0['ar_params']:,} parameters, {r0['step_flops']['ar'] / 1e9:.2f} GFLOP per training step; "
             f"DiT (width {r0['diffusion_dim']}): {r0['diffusion_params']:,} parameters, {r0['step_flops']['diffusion'] / 1e9:.2f} GFLOP "
             f"per step (batch {meta['batch_size']}, forward + backward, FlopCounterMode). FD of {meta['num_samples']} samples "
             f"(real validation images: {meta['fd_real']:.3f})."]
    for r in rows:  # one table per seed
        lines += ["", f"Seed {r['seed']}:", "", "| step | AR GFLOP | AR FD | AR acc | DiT GFLOP | DiT FD | DiT acc |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for a, d in zip(r["curves"]["ar"], r["curves"]["diffusion"]):
            lines.append(f"| {a['step']} | {a['flops'] / 1e9:.0f} | {a['fd']:.3f} | {a['accuracy']:.3f} | "
                         f"{d['flops'] / 1e9:.0f} | {d['fd']:.3f} | {d['accuracy']:.3f} |")
        cross = ", ".join(f"{c / 1e12:.2f} TFLOP" for c in r["crossings_flops"]) or "none"
        lines += ["", f"Seed {r['seed']}: FD curves (interpolated in log FLOPs) cross at: {cross}."]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for r in rows:
        for name, label, color in (("ar", "AR transformer", "C0"), ("diffusion", "DiT (flow matching)", "C1")):
            c = r["curves"][name]
            ax.plot([p["flops"] for p in c], [p["fd"] for p in c], marker="o", ms=3, lw=1, color=color,
                    label=f"{label}, {r[name + '_params'] / 1e3:.0f}k params" if r is rows[0] else None)
        for x in r["crossings_flops"]:
            ax.axvline(x, color="gray", lw=0.6, ls=":")
    ax.axhline(meta["fd_real"], color="gray", lw=0.6, ls="--", label="real validation")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training compute (FLOPs)", fontsize=8)
    ax.set_ylabel("FD (small-CNN features)", fontsize=8)
    ax.set_title("AR vs diffusion on one iFSQ tokenizer", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1000 steps, small models (minutes)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="override the steps of every model (tests)")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mode, cfg, seeds = configure(CONFIGS, args)
    cfg["eval_every"] = args.eval_every or cfg["eval_every"]
    t0 = time.perf_counter()
    data, classifier, train_features, fd_real = load_evaluation(cfg)
    rows = []
    for seed in seeds:
        rows.append(run_seed(seed, cfg, data, classifier, train_features))
        r = rows[-1]
        print(f"seed {seed}: final FD AR {r['curves']['ar'][-1]['fd']:.3f}, DiT {r['curves']['diffusion'][-1]['fd']:.3f}; "
              f"crossings {r['crossings_flops']}", flush=True)
    meta = dict(mode=mode, seeds=seeds, num_samples=cfg["num_samples"], batch_size=cfg["ar"]["batch_size"], fd_real=fd_real, config=cfg,
                seconds=round(time.perf_counter() - t0, 1),
                command=study_command("study_ar_vs_diffusion", argv))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ar_vs_diffusion.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    md = to_markdown(rows, meta)
    (args.out / "ar_vs_diffusion.md").write_text(md)
    figure(rows, meta, args.out / "ar_vs_diffusion.png")
    print(md)
    return dict(meta=meta, rows=rows)


if __name__ == "__main__":
    main()
