"""AR vs diffusion on one iFSQ tokenizer: does AR lead early and diffusion end better, as the paper reports?

One iFSQ tokenizer (L = 17, d = 4, ``index_groups = [2, 2]``) per seed; on it a class-conditional
AR transformer (on the indices) and a class-conditional DiT (flow matching on the continuous codes)
of matched parameter count (the DiT's width is chosen so that its parameter count is the closest to
the AR model's), both trained with the examples' training loop and measured every ``eval_every``
steps. The x-axis is training compute: the FLOPs of one training step (forward + backward at the
training batch size), counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real shapes,
times the step. The counter counts matrix products and convolutions; attention's score and value
products go through ``scaled_dot_product_attention``, which it does not count on the CPU (2-4 % of a
step at 17 positions; an analytic estimate is in the JSON). Where do the FD curves cross?

``--evaluation protocol`` (the default): font digits and the calibrated protocol. At every
checkpoint, for each model, guidance is chosen by FD on the validation split (its own sampling
noise), then the chosen scale's samples are measured on the held-out test split (FD and KID with
95 % bootstrap intervals, class accuracy); the validation losses are logged, and the sampling FLOPs
per image at the chosen guidance are counted the same way (guidance doubles the batch).

``--evaluation demo``: the end-to-end demo's models and measurement (``studies.protocol.DemoEvaluation``):
scikit-learn's digits, the demo's guidance, FD of 300 samples against the training digits.

    python -m studies.ar_vs_diffusion --quick                                  # 1 seed, 1,000 steps, small models (about 10-15 min)
    python -m studies.ar_vs_diffusion --out studies/results/ar_vs_diffusion   # 2 seeds, 3,000 steps, 6 checkpoints (about 70 min)
    python -m studies.ar_vs_diffusion --evaluation demo --out studies/results/ar_vs_diffusion/evaluation_demo   # 2 seeds (about 25 min)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from examples import pipeline as P
from examples.diffusion import LatentNormalizer
from examples.presets import PRESETS
from examples.training import train
from studies import protocol
from studies.font_digits import load_font_digits, load_splits
from studies.harness import ENV, Study, pyplot, save_figure, start
from studies.protocol import DemoEvaluation, ProtocolEvaluator
from studies.recipes import AR, DIT, FEATURES, SPLITS, TOK

STUDY = Study("ar_vs_diffusion", __doc__)

# Every number that changes the result, per evaluation and mode.
_SPLITS = {k: SPLITS[k] for k in ("train", "val", "test", "features")}
CONFIGS = {
    "protocol": {
        "quick": dict(seeds=1, levels=[17] * 4, index_groups=[2, 2], splits=dict(_SPLITS), eval_every=250, features=dict(FEATURES, steps=400),
                      tokenizer=dict(TOK, steps=300), ar=dict(AR, steps=1000, dim=64, depth=2),
                      diffusion=dict(DIT, steps=1000, depth=2, sample_steps=8),
                      ar_guidance=[1.0, 2.0, 3.0], dit_guidance=[1.0, 2.0], num_val_samples=300, num_generated=2000, n_boot=50),
        "full": dict(seeds=2, levels=[17] * 4, index_groups=[2, 2], splits=dict(_SPLITS), eval_every=500, features=dict(FEATURES),
                     tokenizer=dict(TOK, steps=2000), ar=dict(AR, steps=3000), diffusion=dict(DIT, steps=3000, sample_steps=8),
                     ar_guidance=[1.0, 1.5, 2.0, 3.0], dit_guidance=[1.0, 1.5, 2.0, 3.0], num_val_samples=500, num_generated=2000, n_boot=100),
    },
    "demo": {  # the end-to-end demo's generators (examples/presets.py)
        "quick": dict(seeds=1, levels=[17] * 4, index_groups=[2, 2], eval_every=100, num_samples=300,
                      classifier=dict(PRESETS["quick"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"], steps=400),
                      ar=dict(PRESETS["quick"]["ar"], steps=1000, dim=64, depth=2),
                      diffusion=dict(PRESETS["quick"]["diffusion"], steps=1000, depth=2)),
        "full": dict(seeds=2, levels=[17] * 4, index_groups=[2, 2], eval_every=300, num_samples=300,
                     classifier=dict(PRESETS["full"]["classifier"]), tokenizer=dict(PRESETS["quick"]["tokenizer"]),
                     ar=dict(PRESETS["quick"]["ar"], steps=3000), diffusion=dict(PRESETS["quick"]["diffusion"], steps=3000)),
    },
}


# ----------------------------------------------------------------------------- matched generators and compute


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


def sampling_flops(sample_fn, labels: torch.Tensor) -> int:
    """FLOPs per generated image of ``sample_fn(labels)`` (matrix products and convolutions, FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        sample_fn(labels)
    return int(counter.get_total_flops() // len(labels))


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


def race(seed: int, cfg: dict, train_set, val_set, evaluate_ar, evaluate_dit) -> dict:
    """One seed: the tokenizer, then the matched generators trained one after the other, each evaluated every ``eval_every``
    steps by ``evaluate_x(step, model, ctx) -> dict`` (``ctx``: seed, tok, normalizer, dit_cfg and, when ``val_set`` is
    given, its tokens and normalized latents ``val_tokens``, ``val_latents``)."""
    latent = train_set.image_shape[1] // 4
    tok, _ = P.train_tokenizer("ifsq", cfg["levels"], cfg["index_groups"], cfg["tokenizer"], train_set, ENV, seed,
                               f"tokenizer seed={seed}" if val_set is not None else f"tokenizer L={cfg['levels'][0]}")
    tokens = P.encode_tokens(tok, train_set.images)
    codes = P.encode_codes(tok, train_set.images)
    normalizer = LatentNormalizer(codes.shape[1]).fit(codes)
    latents = normalizer.normalize(codes)
    ar, dit, dit_cfg, flops, attention = matched_generators(tok, cfg, latent, seed, train_set.labels, tokens, latents)
    ctx = dict(seed=seed, tok=tok, normalizer=normalizer, dit_cfg=dit_cfg)
    if val_set is not None:
        ctx.update(val_tokens=P.encode_tokens(tok, val_set.images), val_latents=normalizer.normalize(P.encode_codes(tok, val_set.images)))
    curves: dict[str, list[dict]] = {"ar": [], "diffusion": []}

    def on_ar(step: int, model) -> None:
        curves["ar"].append(dict(step=step, flops=step * flops["ar"], **evaluate_ar(step, model, ctx)))

    def on_dit(step: int, model) -> None:
        curves["diffusion"].append(dict(step=step, flops=step * flops["diffusion"], **evaluate_dit(step, model, ctx)))

    t0 = time.perf_counter()
    train(ar, P.ar_loss, (train_set.labels, tokens), cfg["ar"], ENV, seed, "ar", callback=on_ar, callback_every=cfg["eval_every"])
    t_ar = time.perf_counter() - t0
    train(dit, P.diffusion_loss, (latents, train_set.labels), dit_cfg, ENV, seed, "diffusion", callback=on_dit, callback_every=cfg["eval_every"])
    t_dit = time.perf_counter() - t0 - t_ar
    return dict(seed=seed, ar_params=params(ar), diffusion_params=params(dit), diffusion_dim=dit_cfg["dim"], step_flops=flops,
                attention_flops_uncounted=attention, curves=curves, crossings_flops=crossings(curves["ar"], curves["diffusion"]),
                seconds=dict(ar=round(t_ar, 1), diffusion=round(t_dit, 1)))


# ----------------------------------------------------------------------------- the two evaluations


def run_protocol(args, argv, t0: float) -> dict:
    cfg = protocol.configure(args, CONFIGS["protocol"], ("features", "tokenizer", "ar", "diffusion"), overrides=("eval_every",))
    seeds = STUDY.seeds(args, cfg)
    data = load_splits(cfg["splits"])
    feature_net, _ = P.train_classifier(data["features"], cfg["features"], ENV, seed=0, desc="feature network")
    evaluator = ProtocolEvaluator(feature_net, data["test"].images, data["test"].labels, data["val"].images, n_boot=cfg["n_boot"])
    n = cfg["num_generated"]
    reference = load_font_digits("reference", n=n, seed=0)
    calibration = dict(real_vs_real=evaluator.evaluate(reference.images, reference.labels))
    probe = P.balanced_labels(20, 10)
    val_labels = data["val"].labels

    def point(name: str, model, sample, scales: list[float], val_loss: float, seed: int) -> dict:
        """Guidance chosen on validation, the test metrics, and the sampling FLOPs per image at that guidance."""
        m = evaluator.measure(lambda labels, s, noise: sample(model, labels, s, noise), scales, cfg["num_val_samples"], n, seed)
        per_image = sampling_flops(lambda lab: sample(model, lab, m["guidance"], seed), probe)
        print(f"  {name}: FD {m['fd']:.2f} [{m['fd_ci'][0]:.2f}, {m['fd_ci'][1]:.2f}], guidance {m['guidance']}, "
              f"validation loss {val_loss:.4f}", flush=True)
        return dict(val_loss=val_loss, sampling_flops_per_image=per_image, **m)

    def evaluate_ar(step: int, model, ctx: dict) -> dict:
        def sample(model, labels, scale, s):
            return P.sample_ar(model, ctx["tok"], labels, scale, s, ENV, temperature=cfg["ar"]["temperature"], top_k=cfg["ar"]["top_k"])

        with torch.no_grad():
            val_loss = float(model.loss(val_labels, ctx["val_tokens"]))
        return point(f"ar step {step}", model, sample, cfg["ar_guidance"], val_loss, ctx["seed"])

    def evaluate_dit(step: int, model, ctx: dict) -> dict:
        def sample(model, labels, scale, s):
            return P.decode_codes(ctx["tok"], P.sample_dit(model, ctx["normalizer"], labels, ctx["dit_cfg"], s, ENV, cfg_scale=scale))

        with torch.no_grad():
            val_loss = float(model.loss(ctx["val_latents"], val_labels, generator=torch.Generator().manual_seed(ctx["seed"] + 4)))
        return point(f"diffusion step {step}", model, sample, cfg["dit_guidance"], val_loss, ctx["seed"])

    rows = [race(seed, cfg, data["train"], data["val"], evaluate_ar, evaluate_dit) for seed in seeds]
    meta = STUDY.meta(args, argv, t0, seeds=seeds, num_generated=n, num_real=cfg["splits"]["test"], n_boot=cfg["n_boot"], config=cfg,
                      evaluation="protocol")
    return dict(meta=meta, protocol=calibration, rows=rows)


def run_demo(args, argv, t0: float) -> dict:
    cfg = protocol.configure_demo(args, CONFIGS["demo"])
    cfg["eval_every"] = args.eval_every or cfg["eval_every"]
    seeds = STUDY.seeds(args, cfg)
    ev = DemoEvaluation(cfg["classifier"])
    labels = P.balanced_labels(cfg["num_samples"], 10)
    a = cfg["ar"]

    def evaluate_ar(step: int, model, ctx: dict) -> dict:
        images = P.sample_ar(model, ctx["tok"], labels, a["cfg_scale"], ctx["seed"], ENV, temperature=a["temperature"], top_k=a["top_k"])
        return ev.evaluate(images, labels)

    def evaluate_dit(step: int, model, ctx: dict) -> dict:
        return ev.evaluate(P.decode_codes(ctx["tok"], P.sample_dit(model, ctx["normalizer"], labels, ctx["dit_cfg"], ctx["seed"], ENV)), labels)

    rows = []
    for seed in seeds:
        rows.append(race(seed, cfg, ev.train_set, None, evaluate_ar, evaluate_dit))
        r = rows[-1]
        print(f"seed {seed}: final FD AR {r['curves']['ar'][-1]['fd']:.3f}, DiT {r['curves']['diffusion'][-1]['fd']:.3f}; "
              f"crossings {r['crossings_flops']}", flush=True)
    meta = STUDY.meta(args, argv, t0, seeds=seeds, num_samples=cfg["num_samples"], batch_size=cfg["ar"]["batch_size"], fd_real=ev.fd_real,
                      config=cfg, evaluation="demo")
    return dict(meta=meta, rows=rows)


# ----------------------------------------------------------------------------- tables and figures


def to_markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    r0 = rows[0]
    models = (f"AR {r0['ar_params']:,} parameters, {r0['step_flops']['ar'] / 1e9:.2f} GFLOP per training step; DiT (width "
              f"{r0['diffusion_dim']}) {r0['diffusion_params']:,} parameters, {r0['step_flops']['diffusion'] / 1e9:.2f} GFLOP per step "
              f"(forward + backward, FlopCounterMode)")
    if meta["evaluation"] == "demo":
        lines = [f"AR vs diffusion with the demo's evaluation ({meta['mode']} mode): `{meta['command']}`; one iFSQ tokenizer (L = 17, d = 4), "
                 f"seeds {meta['seeds']}. {models}, batch {meta['batch_size']}. FD of {meta['num_samples']} samples against the training digits "
                 f"(real validation images: {meta['fd_real']:.3f})."]
        for r in rows:
            lines += ["", f"Seed {r['seed']}:", "", "| step | AR GFLOP | AR FD | AR acc | DiT GFLOP | DiT FD | DiT acc |",
                      "|---:|---:|---:|---:|---:|---:|---:|"]
            for a, d in zip(r["curves"]["ar"], r["curves"]["diffusion"]):
                lines.append(f"| {a['step']} | {a['flops'] / 1e9:.0f} | {a['fd']:.3f} | {a['accuracy']:.3f} | "
                             f"{d['flops'] / 1e9:.0f} | {d['fd']:.3f} | {d['accuracy']:.3f} |")
            lines += ["", f"FD curves (interpolated in log training FLOPs) cross at: {crossing_list(r)}."]
        return "\n".join(lines) + "\n"
    rr = result["protocol"]["real_vs_real"]
    lines = [f"AR vs diffusion with the calibrated protocol ({meta['mode']} mode): `{meta['command']}`; seeds {meta['seeds']}. {models}. "
             f"FD/KID of {meta['num_generated']:,} samples vs {meta['num_real']:,} held-out test font digits (95 % bootstrap CI, "
             f"{meta['n_boot']} replicates); guidance chosen per checkpoint by validation FD. Real vs real at the same n: "
             f"FD {rr['fd']:.2f} [{rr['fd_ci'][0]:.2f}, {rr['fd_ci'][1]:.2f}]. {meta['seconds']:.0f} s."]
    for r in rows:
        lines += ["", f"Seed {r['seed']}:", "",
                  "| model | step | training GFLOP | validation loss | guidance | FD [95 % CI] | KID | accuracy | sampling MFLOP / image |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for name in ("ar", "diffusion"):
            for p in r["curves"][name]:
                lines.append(f"| {'AR' if name == 'ar' else 'DiT'} | {p['step']} | {p['flops'] / 1e9:.0f} | {p['val_loss']:.4f} | {p['guidance']} | "
                             f"{p['fd']:.2f} [{p['fd_ci'][0]:.2f}, {p['fd_ci'][1]:.2f}] | {p['kid']:.4f} | {p['accuracy']:.3f} | "
                             f"{p['sampling_flops_per_image'] / 1e6:.1f} |")
        lines += ["", f"FD curves (interpolated in log training FLOPs) cross at: {crossing_list(r)}."]
    return "\n".join(lines) + "\n"


def crossing_list(row: dict) -> str:
    return ", ".join(f"{c / 1e12:.2f} TFLOP" for c in row["crossings_flops"]) or "none"


def figure(result: dict, path: Path) -> None:
    plt = pyplot()
    rows, demo = result["rows"], result["meta"]["evaluation"] == "demo"
    floor = result["meta"]["fd_real"] if demo else result["protocol"]["real_vs_real"]["fd"]
    fig, axes = plt.subplots(1, 1 if demo else 2, figsize=(6, 4.2) if demo else (12, 4.5), squeeze=False)
    axes = axes[0]
    for r in rows:
        for name, label, color in (("ar", "AR transformer", "C0"), ("diffusion", "DiT (flow matching)", "C1")):
            c = r["curves"][name]
            axes[0].plot([p["flops"] for p in c], [p["fd"] for p in c], marker="o", ms=3, color=color,
                         label=f"{label}, {r[name + '_params'] / 1e3:.0f}k params" if r is rows[0] else None)
            if demo:
                continue
            axes[0].fill_between([p["flops"] for p in c], [p["fd_ci"][0] for p in c], [p["fd_ci"][1] for p in c], color=color, alpha=0.2)
            last = c[-1]
            err = [[last["fd"] - last["fd_ci"][0]], [last["fd_ci"][1] - last["fd"]]]
            axes[1].errorbar([last["sampling_flops_per_image"]], [last["fd"]], yerr=err, marker="o", color=color, capsize=3,
                             label=f"{label}, guidance {last['guidance']}" if r is rows[0] else None)
        for x in r["crossings_flops"] if demo else ():
            axes[0].axvline(x, color="gray", lw=0.6, ls=":")
    for ax in axes:
        ax.axhline(floor, color="gray", ls="--", lw=1, label="real validation" if demo else "real vs real (same n)")
        ax.set_xscale("log")
        ax.set_ylabel("FD (small-CNN features)" if demo else "FD vs held-out test (95 % CI)", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.legend(fontsize=8)
    if demo:
        axes[0].set_yscale("log")
    axes[0].set_xlabel("training compute (FLOPs)", fontsize=10)
    axes[0].set_title("FD over training" + ("" if demo else " (guidance chosen on validation at each point)"), fontsize=10)
    if not demo:
        axes[1].set_xlabel("sampling compute per image (FLOPs), final checkpoint", fontsize=10)
        axes[1].set_title("FD against sampling cost", fontsize=10)
    save_figure(fig, path)


def main(argv=None):
    parser = STUDY.parser("1 seed, 1,000 steps, small models")
    protocol.add_arguments(parser, tuple(CONFIGS["protocol"]["full"]["splits"]))
    protocol.add_evaluation_argument(parser)
    parser.add_argument("--eval-every", type=int, default=None, help="measure both generators every this many steps")
    args = parser.parse_args(argv)
    if args.from_json:
        return STUDY.rewrite(args.from_json, to_markdown, figure)
    t0 = start()
    result = (run_demo if args.evaluation == "demo" else run_protocol)(args, argv, t0)
    return STUDY.save(args.out, result, to_markdown, figure)


if __name__ == "__main__":
    main()
