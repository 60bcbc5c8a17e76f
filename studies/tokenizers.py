"""Study 2 of the paper's findings: tokenizers that differ only in the bottleneck, over seeds.

The same conv autoencoder (``examples/tokenizer.py``), data, steps and seeds, with these
bottlenecks (d = 4 latent channels, every dimension with L levels):

- ``fsq``        FSQ: tanh, the papers' ``round`` layout (vector-quantize-pytorch numerics)
- ``ifsq``       iFSQ: 2*sigmoid(1.6 z) - 1 = tanh(0.8 z), ``round`` layout
- ``erf_equal``  erf(z / sqrt 2) with equal-width bins (exactly uniform on N(0, 1))
- ``fsq_scale``  the control: FSQ whose tanh input is multiplied by a learnable scalar
                 initialized at 0.8 (so it starts as iFSQ, up to FSQ's eps = 1e-3, and the
                 optimizer may move it)
- ``fsp``        vector-quantize-pytorch's ``FSP`` (finite scalar perturbation, VP-VAE) with
                 its defaults (tanh CDF, equal bins, perturbation in training, its
                 moment-matching ``norm_loss`` added to the reconstruction loss), the outside anchor

For each: validation PSNR, SSIM, utilization (entropy / log2 L), codebook usage, as mean and
std over seeds, and the validation PSNR along training (learning curves).
Writes ``tokenizers.{json,md,png}`` to ``--out``.

    python -m studies.tokenizers --quick                          # digits, L in {17, 5}, 2 seeds, 250 steps (a few minutes)
    python -m studies.tokenizers --out studies/results/tokenizers  # digits (800 steps) + natural patches (500 steps), L in {17, 5}, 3 seeds

The full mode is 60 trainings of the small autoencoder (channels 16/32/64) with batch 64 on 16x16
digits and batch 32 on 32x32 photo patches: about 75 minutes on one CPU thread.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from examples.data import load_dataset
from examples.metrics import psnr
from examples.pipeline import evaluate_tokenizer
from examples.presets import PRESETS
from examples.tokenizer import Tokenizer
from examples.training import Env, train
from ifsq_quant import FSQ, iFSQ
from studies.harness import ENV, Study, mode, pyplot, start
from studies.stats import seed_statistics

STUDY = Study("tokenizers", __doc__)

VARIANTS = ("fsq", "ifsq", "erf_equal", "fsq_scale", "fsp")
LABELS = {"fsq": "FSQ (tanh)", "ifsq": "iFSQ (sigmoid 1.6)", "erf_equal": "erf + equal bins",
          "fsq_scale": "FSQ, learnable input scale (init 0.8)", "fsp": "FSP (vector-quantize-pytorch)"}
EVAL_EVERY = 50
# Training per dataset and mode: the examples' quick tokenizer (channels 16/32/64, AdamW 2e-3).
TRAINING = {
    "quick": {"digits": dict(PRESETS["quick"]["tokenizer"], steps=250)},
    "full": {"digits": dict(PRESETS["quick"]["tokenizer"], steps=800),
             "patches": dict(PRESETS["quick"]["tokenizer"], steps=500, batch_size=32)},
}


class ScaledFSQ(nn.Module):
    """The control: ``FSQ(levels)(scale * z)`` with one learnable ``scale``, initialized at ``init``.

    With ``init = 0.8`` it starts as iFSQ's bound (2*sigmoid(1.6 z) - 1 = tanh(0.8 z)); whether
    a learnable scale stays there, and whether it matters, is what the study measures.
    """

    def __init__(self, levels: list[int], init: float = 0.8):
        super().__init__()
        self.fsq = FSQ(levels)
        self.scale = nn.Parameter(torch.tensor(float(init)))
        self.codebook_dim, self.levels = self.fsq.codebook_dim, self.fsq.levels

    def forward(self, z: torch.Tensor):
        return self.fsq(z * self.scale)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(indices)

    def indices_to_level_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_level_indices(indices)


class FSPAdapter(nn.Module):
    """vector-quantize-pytorch's ``FSP`` behind the ``(codes, indices) = q(z)`` interface of ``Tokenizer``.

    z: channel-first (b, d, h, w). FSP's ``norm_loss`` (its statistical regularizer) of the
    last call is kept in ``aux_loss`` and added to the training loss.
    """

    def __init__(self, levels: list[int]):
        super().__init__()
        from vector_quantize_pytorch import FSP

        self.fsp = FSP(levels, channel_first=True)
        self.codebook_dim, self.levels = len(levels), list(levels)
        self.aux_loss = torch.zeros(())

    def forward(self, z: torch.Tensor):
        codes, indices, norm_loss, _ = self.fsp(z)
        self.aux_loss = norm_loss
        return codes, indices.long()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.fsp.indices_to_codes(indices)

    def indices_to_level_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.fsp.indices_to_level_indices(indices).long()


def make_bottleneck(variant: str, L: int, d: int = 4) -> nn.Module:
    levels = [L] * d
    if variant == "fsq":
        return FSQ(levels)
    if variant == "ifsq":
        return iFSQ(levels)
    if variant == "erf_equal":
        return FSQ(levels, activation="erf", bins="equal", eps=0.0)
    if variant == "fsq_scale":
        return ScaledFSQ(levels)
    if variant == "fsp":
        return FSPAdapter(levels)
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def loss_with_aux(model: Tokenizer, images: torch.Tensor) -> torch.Tensor:
    """Reconstruction loss plus the bottleneck's own auxiliary loss (FSP's norm_loss; 0 for the others)."""
    loss = model.loss(images, model(images)[0])
    aux = getattr(model.quantizer, "aux_loss", None)
    return loss + aux if aux is not None else loss


def has_fsp() -> bool:
    try:
        from vector_quantize_pytorch import FSP  # noqa: F401
    except ImportError:
        return False
    return True


def run_one(variant: str, L: int, seed: int, data, tok_cfg: dict, env: Env) -> dict:
    train_set, val_set = data
    torch.manual_seed(seed)
    tok = Tokenizer(make_bottleneck(variant, L), in_channels=train_set.image_shape[0], channels=tuple(tok_cfg["channels"]),
                    blocks=tok_cfg["blocks"], l1_weight=tok_cfg["l1_weight"], l2_weight=tok_cfg["l2_weight"])
    curve = []

    def evaluate(step: int, model: Tokenizer) -> None:
        with torch.no_grad():
            recon = torch.cat([model(val_set.images[i : i + 500])[0] for i in range(0, len(val_set), 500)])
        curve.append((step, psnr(recon.clamp(-1, 1), val_set.images)))

    t0 = time.perf_counter()
    losses = train(tok, loss_with_aux, (train_set.images,), tok_cfg, env, seed, f"{variant} L={L} seed={seed}",
                   callback=evaluate, callback_every=EVAL_EVERY)
    m, _, _ = evaluate_tokenizer(tok, val_set, env)
    row = dict(variant=variant, L=L, seed=seed, psnr=m["psnr"], ssim=m["ssim"], utilization=m["utilization"],
               codebook_usage=m["codebook_usage"], bits_per_dim=float(np.mean(m["bits_per_dim"])),
               final_train_loss=float(np.mean(losses[-25:])), curve=curve, seconds=round(time.perf_counter() - t0, 1))
    if variant == "fsq_scale":
        row["learned_scale"] = float(tok.quantizer.scale.detach())
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std (over seeds; ddof = 1 when there are >= 2) per (dataset, L, variant)."""
    out = []
    keys = sorted({(r["dataset"], r["L"], r["variant"]) for r in rows}, key=lambda k: (k[0], -k[1], VARIANTS.index(k[2])))
    for dataset, L, variant in keys:
        group = [r for r in rows if (r["dataset"], r["L"], r["variant"]) == (dataset, L, variant)]
        s = dict(dataset=dataset, L=L, variant=variant, seeds=len(group))
        s.update(seed_statistics(group, ("psnr", "ssim", "utilization", "codebook_usage", "learned_scale")))
        out.append(s)
    return out


def to_markdown(result: dict) -> str:
    summary, meta = result["summary"], result["meta"]
    training = "; ".join(f"{d}: {c['steps']} steps, batch {c['batch_size']}" for d, c in meta["training"].items())
    lines = [f"Tokenizer study ({meta['mode']} mode): {training}; seeds {meta['seeds']}, "
             f"d = 4 latent channels at 1/4 resolution. Mean ± std over seeds, validation set.", "",
             "| data | L | bottleneck | PSNR (dB) | SSIM | utilization | codebook usage | learned scale |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for s in summary:
        scale = f"{s['learned_scale']:.3f} ± {s['learned_scale_std']:.3f}" if "learned_scale" in s else "–"
        lines.append(f"| {s['dataset']} | {s['L']} | {LABELS[s['variant']]} | {s['psnr']:.2f} ± {s['psnr_std']:.2f} | "
                     f"{s['ssim']:.3f} ± {s['ssim_std']:.3f} | {s['utilization']:.3f} ± {s['utilization_std']:.3f} | "
                     f"{s['codebook_usage']:.4f} ± {s['codebook_usage_std']:.4f} | {scale} |")
    if not meta["fsp_available"]:
        lines += ["", "vector-quantize-pytorch has no `FSP` in this environment: the FSP anchor was skipped."]
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    rows = result["rows"]
    plt = pyplot()
    panels = sorted({(r["dataset"], r["L"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (dataset, L) in zip(axes[0], panels):
        for variant in VARIANTS:
            group = [r for r in rows if r["dataset"] == dataset and r["L"] == L and r["variant"] == variant]
            if not group:
                continue
            steps = [s for s, _ in group[0]["curve"]]
            values = np.array([[v for _, v in r["curve"]] for r in group])
            mean = values.mean(0)
            line, = ax.plot(steps, mean, marker=".", lw=1, label=LABELS[variant])
            if len(group) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
        ax.set_title(f"{dataset}, L = {L}: validation PSNR", fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv=None):
    parser = STUDY.parser("digits only, 2 seeds, 250 steps (a few minutes)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--levels", type=int, nargs="+", default=[17, 5], help="L per latent dimension (d = 4)")
    parser.add_argument("--datasets", nargs="+", default=None, choices=["digits", "patches"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args(argv)
    if args.from_json:
        return STUDY.rewrite(args.from_json, to_markdown, figure)
    t0 = start()
    seeds = STUDY.seeds(args, dict(seeds=2 if args.quick else 3))
    datasets = args.datasets or list(TRAINING[mode(args)])
    # quick mode has no patches config: asking for patches there uses the full one (steps still overridable)
    training = {d: dict(TRAINING[mode(args)].get(d) or TRAINING["full"][d]) for d in datasets}
    for cfg in training.values():
        cfg["steps"] = args.steps or cfg["steps"]
    fsp_available = has_fsp()
    variants = [v for v in args.variants if v != "fsp" or fsp_available]
    rows = []
    for dataset in datasets:
        data = load_dataset(dataset)
        tok_cfg = training[dataset]
        for L in args.levels:
            for seed in seeds:
                for variant in variants:
                    row = run_one(variant, L, seed, data, tok_cfg, ENV)
                    row["dataset"] = dataset
                    rows.append(row)
                    print(f"{dataset} L={L} seed={seed} {variant}: PSNR {row['psnr']:.2f}, utilization {row['utilization']:.3f}"
                          + (f", scale {row['learned_scale']:.3f}" if "learned_scale" in row else ""), flush=True)
    shown = ("steps", "batch_size", "lr", "channels")
    meta = STUDY.meta(args, argv, t0, training={d: {k: c[k] for k in shown} for d, c in training.items()}, seeds=seeds, levels=args.levels,
                      datasets=datasets, variants=variants, fsp_available=fsp_available, eval_every=EVAL_EVERY)
    return STUDY.save(args.out, dict(meta=meta, summary=summarize(rows), rows=rows), to_markdown, figure)


if __name__ == "__main__":
    main()
