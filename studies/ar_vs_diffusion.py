"""AR vs diffusion rerun with the calibrated protocol (the protocol of ``study_generation``).

One iFSQ tokenizer (L = 17, d = 4, ``index_groups = [2, 2]``) on the font digits
(``load_font_digits``); on it a class-conditional AR transformer and a DiT of matched parameter
count (as ``study_ar_vs_diffusion``). At every ``eval_every`` steps, for each model: the
guidance scale is swept and chosen by FD on the validation split (its own sampling noise),
then the chosen scale's samples are measured on the held-out test split (FD and KID with 95 %
bootstrap intervals, class accuracy), in the feature space of a network trained on a split no
generator sees. The AR model's validation loss (and the DiT's validation flow-matching loss) is
logged at every checkpoint. x-axes: training FLOPs (one step's forward + backward counted with
``FlopCounterMode``, times the step) and sampling FLOPs per generated image (counted the same
way over one sampling batch at the chosen guidance: guidance doubles the batch).
Writes ``ar_vs_diffusion_protocol.{json,md,png}`` to ``--out``.

    python -m benchmarks.study_ar_vs_diffusion_protocol --quick   # 1 seed, 1000 steps, small models, 4 checkpoints (about 10-15 min)
    python -m benchmarks.study_ar_vs_diffusion_protocol           # 2 seeds, 3000 steps, width 128 / 4 blocks, 6 checkpoints (about 42 min alone)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.study_ar_vs_diffusion import crossings, matched_generators, params
from benchmarks.study_generation import AR, DIT, TOK, add_protocol_arguments, load_splits, protocol_config
from examples import pipeline as P
from examples.data import load_font_digits
from examples.diffusion import LatentNormalizer
from examples.metrics import ProtocolEvaluator
from examples.report import study_command

ENV = P.Env(rank=0, world=1, device=torch.device("cpu"))
SPLITS = dict(train=20_000, val=2_000, test=5_000, features=10_000)
CONFIGS = {
    "quick": dict(seeds=1, levels=[17] * 4, index_groups=[2, 2], splits=dict(SPLITS), eval_every=250,
                  features=dict(steps=400, batch_size=64, lr=2e-3, width=32, feature_dim=64), tokenizer=dict(TOK, steps=300),
                  ar=dict(AR, steps=1000, dim=64, depth=2), diffusion=dict(DIT, steps=1000, depth=2, sample_steps=8),
                  ar_guidance=[1.0, 2.0, 3.0], dit_guidance=[1.0, 2.0], num_val_samples=300, num_generated=2000, n_boot=50),
    "full": dict(seeds=2, levels=[17] * 4, index_groups=[2, 2], splits=dict(SPLITS), eval_every=500,
                 features=dict(steps=1500, batch_size=64, lr=2e-3, width=32, feature_dim=64), tokenizer=dict(TOK, steps=2000),
                 ar=dict(AR, steps=3000), diffusion=dict(DIT, steps=3000, sample_steps=8),
                 ar_guidance=[1.0, 1.5, 2.0, 3.0], dit_guidance=[1.0, 1.5, 2.0, 3.0], num_val_samples=500, num_generated=2000, n_boot=100),
}


def sampling_flops(sample_fn, labels: torch.Tensor) -> int:
    """FLOPs per generated image of ``sample_fn(labels)`` (matrix products and convolutions, FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        sample_fn(labels)
    return int(counter.get_total_flops() // len(labels))


def run_seed(seed: int, cfg: dict, data: dict, evaluator: ProtocolEvaluator) -> dict:
    train_set, val_set = data["train"], data["val"]
    latent = train_set.image_shape[1] // 4
    tok, _ = P.train_tokenizer("ifsq", cfg["levels"], cfg["index_groups"], cfg["tokenizer"], train_set, ENV, seed, f"tokenizer seed={seed}")
    tokens, val_tokens = P.encode_tokens(tok, train_set.images), P.encode_tokens(tok, val_set.images)
    codes = P.encode_codes(tok, train_set.images)
    normalizer = LatentNormalizer(codes.shape[1]).fit(codes)
    latents, val_latents = normalizer.normalize(codes), normalizer.normalize(P.encode_codes(tok, val_set.images))

    ar, dit, dit_cfg, flops, attention = matched_generators(tok, cfg, latent, seed, train_set.labels, tokens, latents)
    curves: dict[str, list[dict]] = {"ar": [], "diffusion": []}
    a = cfg["ar"]
    probe = P.balanced_labels(20, 10)

    def evaluate(name: str, step: int, model, sample, scales, val_loss: float) -> None:
        val_labels = P.balanced_labels(cfg["num_val_samples"], 10)
        guidance, val_fds = evaluator.select_guidance(lambda s: sample(model, val_labels, s, seed + 1000), scales)
        labels = P.balanced_labels(cfg["num_generated"], 10)
        m = evaluator.evaluate(sample(model, labels, guidance, seed), labels)
        per_image = sampling_flops(lambda lab: sample(model, lab, guidance, seed), probe)
        curves[name].append(dict(step=step, flops=step * flops[name], val_loss=val_loss, guidance=guidance,
                                 guidance_val_fd={str(k): v for k, v in val_fds.items()}, sampling_flops_per_image=per_image, **m))
        print(f"  {name} step {step}: FD {m['fd']:.2f} [{m['fd_ci'][0]:.2f}, {m['fd_ci'][1]:.2f}], guidance {guidance}, "
              f"validation loss {val_loss:.4f}", flush=True)

    def sample_ar(model, labels, scale, s):
        return P.sample_ar(model, tok, labels, scale, s, ENV, temperature=a["temperature"], top_k=a["top_k"])

    def sample_dit(model, labels, scale, s):
        return P.decode_codes(tok, P.sample_dit(model, normalizer, labels, dit_cfg, s, ENV, cfg_scale=scale))

    def eval_ar(step: int, model) -> None:
        with torch.no_grad():
            val_loss = float(model.loss(val_set.labels, val_tokens))
        evaluate("ar", step, model, sample_ar, cfg["ar_guidance"], val_loss)

    def eval_dit(step: int, model) -> None:
        with torch.no_grad():
            val_loss = float(model.loss(val_latents, val_set.labels, generator=torch.Generator().manual_seed(seed + 4)))
        evaluate("diffusion", step, model, sample_dit, cfg["dit_guidance"], val_loss)

    t0 = time.perf_counter()
    P.train(ar, P.ar_loss, (train_set.labels, tokens), cfg["ar"], ENV, seed, "ar", callback=eval_ar, callback_every=cfg["eval_every"])
    t_ar = time.perf_counter() - t0
    P.train(dit, P.diffusion_loss, (latents, train_set.labels), dit_cfg, ENV, seed, "diffusion", callback=eval_dit,
            callback_every=cfg["eval_every"])
    t_dit = time.perf_counter() - t0 - t_ar
    return dict(seed=seed, ar_params=params(ar), diffusion_params=params(dit), diffusion_dim=dit_cfg["dim"], step_flops=flops,
                attention_flops_uncounted=attention, curves=curves, crossings_flops=crossings(curves["ar"], curves["diffusion"]),
                seconds=dict(ar=round(t_ar, 1), diffusion=round(t_dit, 1)))


def to_markdown(rows: list[dict], meta: dict, protocol: dict) -> str:
    r0 = rows[0]
    lines = [f"AR vs diffusion with the calibrated protocol ({meta['mode']} mode): `{meta['command']}`; seeds {meta['seeds']}. "
             f"AR {r0['ar_params']:,} parameters, {r0['step_flops']['ar'] / 1e9:.2f} GFLOP per training step; DiT (width "
             f"{r0['diffusion_dim']}) {r0['diffusion_params']:,} parameters, {r0['step_flops']['diffusion'] / 1e9:.2f} GFLOP per step. "
             f"FD/KID of {meta['num_generated']:,} samples vs {meta['num_real']:,} held-out test font digits (95 % bootstrap CI, "
             f"{meta['n_boot']} replicates); guidance chosen per checkpoint by validation FD. Real vs real at the same n: "
             f"FD {protocol['real_vs_real']['fd']:.2f} [{protocol['real_vs_real']['fd_ci'][0]:.2f}, {protocol['real_vs_real']['fd_ci'][1]:.2f}]. "
             f"{meta['seconds']:.0f} s."]
    for r in rows:
        lines += ["", f"Seed {r['seed']}:", "",
                  "| model | step | training GFLOP | validation loss | guidance | FD [95 % CI] | KID | accuracy | sampling MFLOP / image |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for name in ("ar", "diffusion"):
            for p in r["curves"][name]:
                lines.append(f"| {'AR' if name == 'ar' else 'DiT'} | {p['step']} | {p['flops'] / 1e9:.0f} | {p['val_loss']:.4f} | {p['guidance']} | "
                             f"{p['fd']:.2f} [{p['fd_ci'][0]:.2f}, {p['fd_ci'][1]:.2f}] | {p['kid']:.4f} | {p['accuracy']:.3f} | "
                             f"{p['sampling_flops_per_image'] / 1e6:.1f} |")
        cross = ", ".join(f"{c / 1e12:.2f} TFLOP" for c in r["crossings_flops"]) or "none"
        lines += ["", f"FD curves (interpolated in log training FLOPs) cross at: {cross}."]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], protocol: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        for name, label, color in (("ar", "AR transformer", "C0"), ("diffusion", "DiT (flow matching)", "C1")):
            c = r["curves"][name]
            fd = [p["fd"] for p in c]
            axes[0].plot([p["flops"] for p in c], fd, marker="o", color=color, label=label if r is rows[0] else None)
            axes[0].fill_between([p["flops"] for p in c], [p["fd_ci"][0] for p in c], [p["fd_ci"][1] for p in c], color=color, alpha=0.2)
            last = c[-1]
            err = [[last["fd"] - last["fd_ci"][0]], [last["fd_ci"][1] - last["fd"]]]
            axes[1].errorbar([last["sampling_flops_per_image"]], [last["fd"]], yerr=err, marker="o", color=color, capsize=3,
                             label=f"{label}, guidance {last['guidance']}" if r is rows[0] else None)
    for ax in axes:
        ax.axhline(protocol["real_vs_real"]["fd"], color="gray", ls="--", lw=1, label="real vs real (same n)")
        ax.set_xscale("log")
        ax.set_ylabel("FD vs held-out test (95 % CI)", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.legend(fontsize=8)
    axes[0].set_xlabel("training compute (FLOPs)", fontsize=10)
    axes[0].set_title("FD over training (guidance chosen on validation at each point)", fontsize=10)
    axes[1].set_xlabel("sampling compute per image (FLOPs), final checkpoint", fontsize=10)
    axes[1].set_title("FD against sampling cost", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, "1 seed, 1000 steps, small models, 4 checkpoints", tuple(CONFIGS["full"]["splits"]))
    parser.add_argument("--eval-every", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    cfg = protocol_config(args, CONFIGS, ("features", "tokenizer", "ar", "diffusion"), overrides=("eval_every",))
    seeds = list(range(args.seeds or cfg["seeds"]))
    t0 = time.perf_counter()
    data = load_splits(cfg)
    feature_net, _ = P.train_classifier(data["features"], cfg["features"], ENV, seed=0, desc="feature network")
    evaluator = ProtocolEvaluator(feature_net, data["test"].images, data["test"].labels, data["val"].images, n_boot=cfg["n_boot"])
    n = cfg["num_generated"]
    reference = load_font_digits("reference", n=n, seed=0)
    protocol = dict(real_vs_real=evaluator.evaluate(reference.images, reference.labels))
    rows = [run_seed(seed, cfg, data, evaluator) for seed in seeds]
    meta = dict(mode=mode, seeds=seeds, num_generated=n, num_real=cfg["splits"]["test"], n_boot=cfg["n_boot"], config=cfg,
                seconds=round(time.perf_counter() - t0, 1),
                command=study_command("study_ar_vs_diffusion_protocol", argv))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ar_vs_diffusion_protocol.json").write_text(json.dumps(dict(meta=meta, protocol=protocol, rows=rows), indent=1))
    md = to_markdown(rows, meta, protocol)
    (args.out / "ar_vs_diffusion_protocol.md").write_text(md)
    figure(rows, protocol, args.out / "ar_vs_diffusion_protocol.png")
    print(md)
    return dict(meta=meta, protocol=protocol, rows=rows)


if __name__ == "__main__":
    main()
