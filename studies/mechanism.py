"""The mechanism: where does the bound's shape matter? A sweep of the bound's input scale.

iFSQ's argument is about the distribution that reaches the bound: a Gaussian pushed through
``tanh`` piles up at the edge levels, through ``2*sigmoid(1.6 z) - 1`` (= tanh(0.8 z)) it comes
out nearly uniform. Trained encoders adapt their output scale, so the premise (saturation)
may never occur. Here the encoder's output is multiplied by a fixed scale ``s`` in
{0.4, 0.6, 0.8, 1.0, 1.25, 1.6, 2.5} before the bound, for FSQ (tanh), iFSQ (sigmoid) and erf +
equal bins, with two encoders:

- ``normalized``: the encoder output is standardized per channel (BatchNorm without affine
  parameters: batch statistics in training, running statistics in evaluation), so the latent
  reaching the bound has std ``s`` whatever the encoder does: the premise holds by construction,
  and large ``s`` saturates;
- ``free``: no output normalization (the 1x1 conv output as is): the encoder can shrink its
  output to undo ``s``.

Plus the learnable-scale control in both: FSQ with a learnable ``s`` initialized at 1.0 (plain
FSQ, not iFSQ's 0.8).

Logged per tokenizer on the validation split: the pre-bound latent ``s * z`` (std, excess
kurtosis, fraction with ``|f(s z)| > 0.95``: saturated), level utilization (entropy / log2 L),
PSNR; and the learned scale. Data: ``studies/font_digits.py`` (train / val splits), 16x16, latents
4x4x4, L = 17. Writes ``mechanism.{json,md,png}`` to ``--out``.

    python -m studies.mechanism --quick                         # 1 seed, 100 steps, 5,000 training images (about 8 min, one thread)
    python -m studies.mechanism --out studies/results/mechanism  # 2 seeds, 500 steps, 20,000 training images (about 1.5 h, one thread)
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from examples import pipeline as P
from examples.tokenizer import Tokenizer
from examples.training import train
from studies.font_digits import load_font_digits
from studies.harness import ENV, Study, mode, pyplot, save_figure, start
from studies.stats import seed_statistics

STUDY = Study("mechanism", __doc__)
SCALES = (0.4, 0.6, 0.8, 1.0, 1.25, 1.6, 2.5)
KINDS = ("fsq", "ifsq", "erf_equal")
ENCODERS = ("normalized", "free")
TOK = dict(batch_size=64, lr=2e-3, channels=[16, 32, 64], blocks=1, l1_weight=0.0, l2_weight=1.0)
CONFIGS = {
    "quick": dict(seeds=1, levels=[17] * 4, n_train=5_000, n_val=1_000, tokenizer=dict(TOK, steps=100)),
    "full": dict(seeds=2, levels=[17] * 4, n_train=20_000, n_val=2_000, tokenizer=dict(TOK, steps=500)),
}


class ScaledBound(nn.Module):
    """``quantizer(s * z)``: a fixed scale (a buffer) or, with ``learnable``, a parameter initialized at ``s``.

    Exposes the interface ``Tokenizer`` uses (codebook_dim, levels, indices_to_codes,
    indices_to_level_indices).
    """

    def __init__(self, quantizer: nn.Module, s: float, learnable: bool = False, normalize: bool = False):
        super().__init__()
        self.quantizer = quantizer
        self.norm = nn.BatchNorm2d(int(quantizer.codebook_dim), affine=False) if normalize else nn.Identity()
        if learnable:
            self.scale = nn.Parameter(torch.tensor(float(s)))
        else:
            self.register_buffer("scale", torch.tensor(float(s)))
        self.codebook_dim, self.levels = quantizer.codebook_dim, quantizer.levels

    def prebound(self, z: torch.Tensor) -> torch.Tensor:
        """The latent that reaches the bound: ``s * norm(z)``."""
        return self.norm(z) * self.scale

    def forward(self, z: torch.Tensor):
        return self.quantizer(self.prebound(z))

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_codes(indices)

    def indices_to_level_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_level_indices(indices)


def bound(kind: str):
    """The bounded activation f of ``kind`` (for the saturation statistic)."""
    return {"fsq": torch.tanh, "ifsq": lambda x: 2 * torch.sigmoid(1.6 * x) - 1, "erf_equal": lambda x: torch.erf(x / 2**0.5)}[kind]


@torch.no_grad()
def latent_stats(tok: Tokenizer, kind: str, images: torch.Tensor) -> dict:
    """Statistics of the pre-bound latents ``s * z`` over all validation positions and channels."""
    z = P.batched(lambda x: tok.quantizer.prebound(tok.encoder(x)), images).double()
    flat = z.flatten()
    std = float(flat.std())
    centred = flat - flat.mean()
    kurtosis = float((centred**4).mean() / (centred**2).mean() ** 2 - 3.0)
    saturated = float((bound(kind)(flat).abs() > 0.95).double().mean())
    per_channel_std = z.transpose(0, 1).flatten(1).std(1).tolist()
    return dict(latent_std=std, latent_kurtosis=kurtosis, saturated=saturated, latent_std_per_channel=per_channel_std)


def run_one(kind: str, s: float, learnable: bool, seed: int, cfg: dict, data, encoder: str = "free") -> dict:
    train_set, val_set = data
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # same initialization for every bottleneck and scale
    q = ScaledBound(P.make_quantizer(kind, dict(levels=cfg["levels"], index_groups=[2, 2])), s, learnable, normalize=encoder == "normalized")
    tc = cfg["tokenizer"]
    tok = Tokenizer(q, in_channels=1, channels=tuple(tc["channels"]), blocks=tc["blocks"], l1_weight=tc["l1_weight"], l2_weight=tc["l2_weight"])
    desc = f"{encoder} {kind} s={s}{' learnable' if learnable else ''} seed={seed}"
    losses = train(tok, P.tokenizer_loss, (train_set.images,), tc, ENV, seed, desc)
    m, _, _ = P.evaluate_tokenizer(tok.eval(), val_set, ENV)
    return dict(encoder=encoder, kind=kind, s=s, learnable=learnable, seed=seed, learned_scale=float(q.scale.detach()), psnr=m["psnr"],
                utilization=m["utilization"],
                codebook_usage=m["codebook_usage"], final_loss=float(np.mean(losses[-50:])), **latent_stats(tok, kind, val_set.images),
                seconds=round(time.perf_counter() - t0, 1))


KEYS = ("psnr", "utilization", "latent_std", "latent_kurtosis", "saturated", "learned_scale")


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["encoder"], r["kind"], r["s"], r["learnable"]) for r in rows},
                      key=lambda k: (ENCODERS.index(k[0]), k[3], KINDS.index(k[1]), k[2])):
        group = [r for r in rows if (r["encoder"], r["kind"], r["s"], r["learnable"]) == key]
        s = dict(encoder=key[0], kind=key[1], s=key[2], learnable=key[3], seeds=len(group))
        s.update(seed_statistics(group, KEYS))
        out.append(s)
    return out


def to_markdown(result: dict) -> str:
    summary, meta = result["summary"], result["meta"]
    lines = [f"Mechanism sweep ({meta['mode']} mode): `{meta['command']}`; seeds {meta['seeds']}, {meta['config']['tokenizer']['steps']} steps, "
             f"{meta['config']['n_train']:,} training / {meta['config']['n_val']:,} validation font digits, L = 17, d = 4. "
             "Latent statistics of the pre-bound s*z on the validation split; saturated: fraction with |f(s z)| > 0.95. "
             f"Mean ± std over seeds (0 with one seed). {meta['seconds']:.0f} s.", "",
             "| encoder | bottleneck | s | PSNR (dB) | utilization | latent std | excess kurtosis | saturated | learned s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        name = {"fsq": "FSQ (tanh)", "ifsq": "iFSQ (sigmoid)", "erf_equal": "erf + equal"}[r["kind"]] + (" learnable s" if r["learnable"] else "")
        lines.append(f"| {r['encoder']} | {name} | {r['s']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['utilization']:.3f} | "
                     f"{r['latent_std']:.3f} | {r['latent_kurtosis']:.2f} | {r['saturated']:.3f} | {r['learned_scale']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    summary = result["summary"]
    plt = pyplot()
    panels = (("psnr", "validation PSNR (dB)"), ("utilization", "level utilization"), ("latent_std", "std of s*z (pre-bound)"),
              ("saturated", "fraction saturated (|f| > 0.95)"))
    encoders = [e for e in ENCODERS if any(r["encoder"] == e for r in summary)]
    fig, axes = plt.subplots(len(encoders), 4, figsize=(17, 4.0 * len(encoders)), squeeze=False)
    for row, encoder in zip(axes, encoders):
        for ax, (key, label) in zip(row, panels):
            for i, kind in enumerate(KINDS):
                rs = [r for r in summary if r["encoder"] == encoder and r["kind"] == kind and not r["learnable"]]
                ax.errorbar([r["s"] for r in rs], [r[key] for r in rs], yerr=[r[key + "_std"] for r in rs], marker="o", capsize=2,
                            color=f"C{i}", label={"fsq": "FSQ (tanh)", "ifsq": "iFSQ (sigmoid)", "erf_equal": "erf + equal"}[kind])
            for r in summary:
                if r["learnable"] and r["encoder"] == encoder:
                    ax.plot([r["learned_scale"]], [r[key]], marker="*", ms=12, color="k", ls="none", label="FSQ, learnable s (from 1.0)")
            ax.set_xscale("log")
            ax.set_xticks(SCALES, [str(s) for s in SCALES])
            ax.minorticks_off()
            ax.set_xlabel("bound input scale s", fontsize=10)
            ax.set_ylabel(label, fontsize=10)
            ax.set_title(f"{encoder} encoder output", fontsize=10)
            ax.tick_params(labelsize=9)
        row[0].legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    parser = STUDY.parser("1 seed, 100 steps, 5,000 training images")
    parser.add_argument("--steps", type=int, default=None, help="override the tokenizer steps (tests)")
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    args = parser.parse_args(argv)
    if args.from_json:
        return STUDY.rewrite(args.from_json, to_markdown, figure)
    t0 = start()
    cfg = copy.deepcopy(CONFIGS[mode(args)])
    if args.steps:
        cfg["tokenizer"]["steps"] = args.steps
    if args.n_train:
        cfg["n_train"], cfg["n_val"] = args.n_train, max(10, args.n_train // 5)
    seeds = STUDY.seeds(args, cfg)
    data = (load_font_digits("train", n=cfg["n_train"]), load_font_digits("val", n=cfg["n_val"]))
    rows = []
    for seed in seeds:
        for encoder in args.encoders:
            for kind in args.kinds:
                for s in args.scales:
                    rows.append(run_one(kind, s, False, seed, cfg, data, encoder))
                    r = rows[-1]
                    print(f"{encoder} {kind} s={s} seed={seed}: PSNR {r['psnr']:.2f}, utilization {r['utilization']:.3f}, "
                          f"std {r['latent_std']:.3f}, saturated {r['saturated']:.3f}", flush=True)
            rows.append(run_one("fsq", 1.0, True, seed, cfg, data, encoder))
            print(f"{encoder} fsq learnable seed={seed}: learned s {rows[-1]['learned_scale']:.3f}, PSNR {rows[-1]['psnr']:.2f}", flush=True)
    meta = STUDY.meta(args, argv, t0, seeds=seeds, scales=args.scales, kinds=args.kinds, encoders=args.encoders, config=cfg)
    return STUDY.save(args.out, dict(meta=meta, summary=summarize(rows), rows=rows), to_markdown, figure)


if __name__ == "__main__":
    main()
