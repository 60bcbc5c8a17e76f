"""The headline study: does iFSQ's bound give better generation than FSQ's (and erf + equal bins)?

Data: ``load_font_digits`` (digits rendered from 21 fonts with random deformations, 16x16),
five independent splits: ``train`` (the tokenizers and generators), ``val`` (tokenizer LR
choice, AR early stopping, guidance choice), ``test`` (the held-out real images every FD/KID is
measured against), ``features`` (the evaluation network, seen by no generator) and
``reference`` (real images for the real-vs-real calibration row).

Per seed and per bottleneck ``fsq`` (tanh), ``ifsq`` (2*sigmoid(1.6 z) - 1), ``erf_equal``
(erf with equal-width bins): an autoencoder tokenizer (same architecture, steps and seed; the
learning rate picked from a small sweep by validation PSNR), then on its tokens an AR
transformer (stopped at its best validation loss) and a DiT (flow matching), the same for every
bottleneck; with ``--repa`` also the AR transformer with REPA on the tokenizers in ``repa_kinds`` (aligned to a frozen CNN trained on
the generators' training split, not the evaluation network). Guidance is chosen per model from
a sweep by FD on the validation split; the chosen scale's samples are then measured once on the
test split: FD and KID against ``--num-real`` held-out images with 95 % bootstrap intervals,
and class accuracy. Calibration rows at the same n: real vs real, a memorizer (training images)
and decoded random tokens. Paired differences over seeds (iFSQ - FSQ, iFSQ - erf_equal,
AR+REPA - AR) with Student-t intervals.

Outputs in ``--out``: ``generation.json`` (one record per trained generator: tokenizer,
generator, seed, guidance, fd, fd_ci, kid, kid_ci, n_generated, n_real, accuracy, ...; the
paired differences; the configuration), ``protocol.json`` (calibration rows), ``generation.md``
and ``generation.png``.

    python -m benchmarks.study_generation --quick   # 1 seed, short training, n = 2,000 vs 5,000 (about 10-15 min, one thread)
    python -m benchmarks.study_generation           # 3 seeds, LR sweep on seed 0, longer training, REPA on iFSQ (about 1.5-2 h, one thread)

One process per seed (each seed's models depend on that seed alone, so the merged result is the one
process's result, provided there is a single tokenizer learning rate: each part would sweep a list of them
on its own first seed), for example the 9,000-step tokenizers of ``results/generation_9k``::

    for s in 0 1 2; do python -m benchmarks.study_generation --seed-list $s --tokenizer-steps 9000 --tokenizer-lrs 1.6e-2 \
        --tokenizer-eval-every 1000 --generators ar dit --no-repa --out part$s & done; wait
    python -m benchmarks.study_generation --merge part0 part1 part2 --out benchmarks/results/generation_9k
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from examples import pipeline as P
from examples.data import load_font_digits
from examples.metrics import ProtocolEvaluator, paired_difference
from examples.report import study_command

RESULTS = Path(__file__).resolve().parent / "results"
ENV = P.Env(rank=0, world=1, device=torch.device("cpu"))
KINDS = ("fsq", "ifsq", "erf_equal")
TOK = dict(steps=600, batch_size=64, lr=2e-3, channels=[16, 32, 64], blocks=1, l1_weight=0.0, l2_weight=1.0)
AR = dict(steps=1200, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, class_dropout=0.1, dropout=0.1, temperature=1.0, top_k=None,
          repa_layer=2, repa_weight=0.5)
DIT = dict(steps=1500, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, patch_size=1, class_dropout=0.1, sample_steps=16, sampler="heun",
           cfg_scale=1.0)

# Every number that changes the result.
CONFIGS = {
    "quick": dict(seeds=1, levels=[17] * 4, index_groups=[2, 2], splits=dict(train=20_000, val=2_000, test=5_000, features=10_000, reference=5_000),
                  features=dict(steps=400, batch_size=64, lr=2e-3, width=32, feature_dim=64),
                  repa_encoder=dict(steps=300, batch_size=64, lr=2e-3, width=16, feature_dim=32),
                  tokenizer=dict(TOK, steps=300), tokenizer_lrs=[2e-3], tokenizer_sweep_seeds=1,
                  ar=dict(AR, steps=1000, dim=64, depth=2, repa_layer=1), ar_eval_every=100,
                  dit=dict(DIT, steps=2000, dim=64, depth=2, sample_steps=8),
                  ar_guidance=[1.0, 2.0, 3.0], dit_guidance=[1.0, 2.0], num_val_samples=500,
                  num_generated=2000, num_real=5000, n_boot=100, repa=False, repa_kinds=list(KINDS)),
    "full": dict(seeds=3, levels=[17] * 4, index_groups=[2, 2], splits=dict(train=20_000, val=2_000, test=5_000, features=10_000, reference=5_000),
                 features=dict(steps=1500, batch_size=64, lr=2e-3, width=32, feature_dim=64),
                 repa_encoder=dict(steps=1000, batch_size=64, lr=2e-3, width=16, feature_dim=32),
                 tokenizer=dict(TOK, steps=1000), tokenizer_lrs=[1e-3, 2e-3, 4e-3], tokenizer_sweep_seeds=1,
                 ar=dict(AR), ar_eval_every=100, dit=dict(DIT, steps=1200, sample_steps=8),
                 ar_guidance=[1.0, 1.5, 2.0, 3.0, 4.0], dit_guidance=[1.0, 1.5, 2.0, 3.0], num_val_samples=500,
                 num_generated=2000, num_real=5000, n_boot=200, repa=True, repa_kinds=["ifsq"]),
}


def add_protocol_arguments(parser: argparse.ArgumentParser, quick_help: str, splits: tuple[str, ...]) -> None:
    """The command-line options every protocol study shares (mode, seeds, sizes, output)."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="override the steps of every model (tests)")
    parser.add_argument("--split-sizes", type=int, nargs=len(splits), default=None, metavar=tuple(s.upper() for s in splits))
    parser.add_argument("--num-generated", type=int, default=None)
    parser.add_argument("--num-val-samples", type=int, default=None)
    parser.add_argument("--n-boot", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)


def protocol_config(args: argparse.Namespace, configs: dict, models: tuple[str, ...], overrides: tuple[str, ...] = ()) -> dict:
    """The mode's configuration with the shared options applied: ``--steps`` for every model in
    ``models`` (and half of it as ``ar_eval_every`` where the config has one), ``--split-sizes``,
    and ``num_generated``, ``num_val_samples``, ``n_boot`` and ``overrides`` where given."""
    cfg = copy.deepcopy(configs["quick" if args.quick else "full"])
    if args.steps:
        for k in models:
            cfg[k]["steps"] = args.steps
        if "ar_eval_every" in cfg:
            cfg["ar_eval_every"] = max(1, args.steps // 2)
    if args.split_sizes:
        cfg["splits"] = dict(zip(cfg["splits"], args.split_sizes))
    for key in ("num_generated", "num_val_samples", "n_boot", *overrides):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def load_splits(cfg: dict) -> dict:
    return {name: load_font_digits(name, n=n, seed=0) for name, n in cfg["splits"].items()}


def train_tokenizer(kind: str, cfg: dict, data: dict, seed: int, lrs: list[float], eval_every: int = 0) -> tuple:
    """The tokenizer of ``kind`` at every learning rate in ``lrs``; keeps the best by validation PSNR -> (tok, metrics).

    ``loss_drop_last_tenth``: how much the mean training loss of the last tenth of the steps is
    below that of the tenth before it (relative), a check of how far from converged it stopped.
    ``eval_every > 0`` also logs the validation PSNR every that many steps (``val_curve``).
    """
    best = None
    sweep = {}
    for lr in lrs:
        curve: list[dict] = []

        def on_eval(step: int, tok, curve=curve) -> None:
            curve.append(dict(step=step, val_psnr=P.evaluate_tokenizer(tok, data["val"], ENV)[0]["psnr"]))

        tok, losses = P.train_tokenizer(kind, cfg["levels"], cfg["index_groups"], dict(cfg["tokenizer"], lr=lr), data["train"], ENV, seed,
                                        f"tokenizer {kind} lr={lr:g} seed={seed}", callback=on_eval if eval_every else None,
                                        callback_every=eval_every)
        m, _, _ = P.evaluate_tokenizer(tok, data["val"], ENV)
        tenth = max(1, len(losses) // 10)
        drop = 1.0 - float(np.mean(losses[-tenth:])) / float(np.mean(losses[-2 * tenth:-tenth]))
        sweep[str(lr)] = dict(val_psnr=m["psnr"], final_loss=float(np.mean(losses[-50:])), loss_drop_last_tenth=drop,
                              **(dict(val_curve=curve) if eval_every else {}))
        if best is None or m["psnr"] > best[1]["psnr"]:
            best = (tok, m, lr)
    tok, _, lr = best
    m, _, _ = P.evaluate_tokenizer(tok, data["test"], ENV)
    return tok, dict(lr=lr, lr_sweep=sweep, psnr=m["psnr"], ssim=m["ssim"], utilization=m["utilization"], codebook_usage=m["codebook_usage"],
                     loss_drop_last_tenth=sweep[str(lr)]["loss_drop_last_tenth"])


def train_ar_early_stopped(tok, cfg: dict, data: dict, seed: int, repa_encoder=None) -> tuple:
    """The AR transformer with its validation loss logged every ``ar_eval_every`` steps; returns the best-validation weights."""
    val_tokens = P.encode_tokens(tok, data["val"].images)
    log: list[dict] = []
    best: dict = {}

    def on_eval(step: int, model) -> None:
        with torch.no_grad():
            loss = float(model.loss(data["val"].labels, val_tokens))
        log.append(dict(step=step, val_loss=loss))
        if not best or loss < best["val_loss"]:
            best.update(step=step, val_loss=loss, state=copy.deepcopy(model.state_dict()))

    name = "ar_repa" if repa_encoder is not None else "ar"
    ar, losses = P.train_ar(tok, data["train"], cfg["ar"], ENV, seed, f"{name} seed={seed}", callback=on_eval,
                            callback_every=cfg["ar_eval_every"], repa_encoder=repa_encoder)
    ar.load_state_dict(best["state"])
    return ar.eval(), dict(best_step=best["step"], val_loss=best["val_loss"], val_curve=log, train_loss=float(np.mean(losses[-50:])))


def measure(evaluator: ProtocolEvaluator, sample, scales: list[float], cfg: dict, seed: int) -> dict:
    """Guidance chosen on the validation split (its own sampling noise), then the test metrics of the chosen scale."""
    val_labels = P.balanced_labels(cfg["num_val_samples"], 10)
    guidance, val_fds = evaluator.select_guidance(lambda s: sample(val_labels, s, seed + 1000), scales)
    labels = P.balanced_labels(cfg["num_generated"], 10)
    out = evaluator.evaluate(sample(labels, guidance, seed), labels)
    return dict(out, guidance=guidance, guidance_val_fd={str(k): v for k, v in val_fds.items()})


def run_seed(seed: int, cfg: dict, data: dict, evaluator: ProtocolEvaluator, repa_encoder, kinds: list[str], generators: list[str],
             tokenizer_lrs: dict[str, list[float]]) -> tuple:
    """Every tokenizer of ``kinds`` for ``seed`` (at the learning rates ``tokenizer_lrs[kind]``) and its generators
    -> (records, tokenizers, the learning rate chosen for each kind)."""
    records, tokenizers, chosen_lrs = [], {}, {}
    for kind in kinds:
        t0 = time.perf_counter()
        tok, tm = train_tokenizer(kind, cfg, data, seed, tokenizer_lrs[kind], eval_every=cfg.get("tokenizer_eval_every", 0))
        tokenizers[kind], chosen_lrs[kind] = tok, tm["lr"]
        base = dict(tokenizer=kind, seed=seed, tokenizer_psnr=tm["psnr"], tokenizer_lr=tm["lr"], tokenizer_utilization=tm["utilization"],
                    tokenizer_lr_sweep=tm["lr_sweep"], tokenizer_loss_drop_last_tenth=tm["loss_drop_last_tenth"],
                    tokenizer_steps=cfg["tokenizer"]["steps"])
        print(f"seed {seed} {kind}: test PSNR {tm['psnr']:.2f} dB (lr {tm['lr']:g}), {time.perf_counter() - t0:.0f} s", flush=True)
        for gen in [g for g in generators if g in ("ar", "ar_repa")]:
            if gen == "ar_repa" and (repa_encoder is None or kind not in cfg["repa_kinds"]):
                continue
            t0 = time.perf_counter()
            ar, info = train_ar_early_stopped(tok, cfg, data, seed, repa_encoder if gen == "ar_repa" else None)

            def sample_ar(labels, scale, s, ar=ar, tok=tok):
                return P.sample_ar(ar, tok, labels, scale, s, ENV, temperature=cfg["ar"]["temperature"], top_k=cfg["ar"]["top_k"])

            m = measure(evaluator, sample_ar, cfg["ar_guidance"], cfg, seed)
            records.append(dict(base, generator=gen, **m, **info, seconds=round(time.perf_counter() - t0, 1)))
            print(f"  {gen}: FD {m['fd']:.2f} {m['fd_ci']}, KID {m['kid']:.4f}, accuracy {m['accuracy']:.3f}, guidance {m['guidance']}, "
                  f"best step {info['best_step']}", flush=True)
        if "dit" in generators:
            t0 = time.perf_counter()
            dit, normalizer, losses = P.train_dit(tok, data["train"], cfg["dit"], ENV, seed, f"dit {kind} seed={seed}")
            with torch.no_grad():
                val_loss = float(dit.loss(normalizer.normalize(P.encode_codes(tok, data["val"].images)), data["val"].labels,
                                          generator=torch.Generator().manual_seed(seed + 4)))

            def sample_dit(labels, scale, s, dit=dit, normalizer=normalizer, tok=tok):
                return P.decode_codes(tok, P.sample_dit(dit, normalizer, labels, cfg["dit"], s, ENV, cfg_scale=scale))

            m = measure(evaluator, sample_dit, cfg["dit_guidance"], cfg, seed)
            records.append(dict(base, generator="dit", **m, val_loss=val_loss, train_loss=float(np.mean(losses[-50:])),
                                seconds=round(time.perf_counter() - t0, 1)))
            print(f"  dit: FD {m['fd']:.2f} {m['fd_ci']}, KID {m['kid']:.4f}, accuracy {m['accuracy']:.3f}, guidance {m['guidance']}", flush=True)
    return records, tokenizers, chosen_lrs


def paired(records: list[dict]) -> list[dict]:
    """Paired differences over seeds: for each generator, iFSQ - FSQ and iFSQ - erf_equal (FD, KID, tokenizer PSNR); AR+REPA - AR."""
    def value(tok, gen, seed, key):
        r = [x for x in records if x["tokenizer"] == tok and x["generator"] == gen and x["seed"] == seed]
        return r[0][key] if r else None

    out = []
    comparisons = [(("ifsq", g), (other, g)) for g in ("ar", "dit", "ar_repa") for other in ("fsq", "erf_equal")]
    comparisons += [((t, "ar_repa"), (t, "ar")) for t in KINDS]

    def seeds_of(key):
        return {r["seed"] for r in records if (r["tokenizer"], r["generator"]) == key}

    for a, b in comparisons:
        seeds = sorted(seeds_of(a) & seeds_of(b))
        if not seeds:
            continue
        row = dict(comparison=f"{a[0]}/{a[1]} - {b[0]}/{b[1]}", seeds=seeds)
        for key in ("fd", "kid", "accuracy") + (("tokenizer_psnr",) if a[0] != b[0] else ()):
            row[key] = paired_difference([value(*a, s, key) for s in seeds], [value(*b, s, key) for s in seeds])
        out.append(row)
    return out


def verdict(diff: dict, key: str, lower_is_better: bool = True) -> str:
    d = diff[key]
    lo, hi = d["ci"]
    if d["n"] < 2:
        return f"{d['mean']:+.3g} (one seed: no interval, not testable)"
    better = (hi < 0) if lower_is_better else (lo > 0)
    worse = (lo > 0) if lower_is_better else (hi < 0)
    word = "better" if better else "worse" if worse else "no difference resolved (interval contains 0)"
    return f"{d['mean']:+.3g} [{lo:+.3g}, {hi:+.3g}]: {word}"


def to_markdown(result: dict, protocol: dict) -> str:
    meta = result["meta"]
    lines = [f"Generation study ({meta['mode']} mode), seeds {meta['seeds']}: `{meta['command']}`. Font digits 16x16; "
             f"FD and KID of {meta['num_generated']:,} generated samples against {meta['num_real']:,} held-out test images in the "
             f"feature space of a CNN trained on a disjoint split (test accuracy {protocol['feature_net']['test_accuracy']:.3f}); "
             f"95 % bootstrap intervals ({meta['n_boot']} replicates). Guidance chosen per model by validation FD "
             f"({meta['num_val_samples']} samples). Tokenizers: {meta['config']['tokenizer']['steps']:,} steps, learning rates "
             f"{meta['config']['tokenizer_lrs']}. AR transformers: {meta['config']['ar']['steps']:,} steps, the best validation "
             f"checkpoint kept; DiTs: {meta['config']['dit']['steps']:,} steps. {meta['seconds']:.0f} s"
             + (" (the slowest of the parallel parts)" if "parts" in meta else "") + ".", "",
             "Calibration at the same n:", "", "| row | FD [95 % CI] | KID [95 % CI] | accuracy |", "|---|---|---|---|"]
    for name, r in protocol["rows"].items():
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {name} | {r['fd']:.2f} [{r['fd_ci'][0]:.2f}, {r['fd_ci'][1]:.2f}] | {r['kid']:.4f} "
                     f"[{r['kid_ci'][0]:.4f}, {r['kid_ci'][1]:.4f}] | {acc} |")
    lines += ["", "| tokenizer | generator | seed | tokenizer PSNR | val. loss (best step) | guidance | FD [95 % CI] | KID [95 % CI] | accuracy |",
              "|---|---|---:|---:|---:|---:|---|---|---:|"]
    for r in result["records"]:
        val = f"{r['val_loss']:.3f}" + (f" ({r['best_step']:,})" if "best_step" in r else "")
        lines.append(f"| {r['tokenizer']} | {r['generator']} | {r['seed']} | {r['tokenizer_psnr']:.2f} | {val} | {r['guidance']} | "
                     f"{r['fd']:.2f} [{r['fd_ci'][0]:.2f}, {r['fd_ci'][1]:.2f}] | {r['kid']:.4f} [{r['kid_ci'][0]:.4f}, {r['kid_ci'][1]:.4f}] | "
                     f"{r['accuracy']:.3f} |")
    if result["paired"]:
        lines += ["", "Paired differences over seeds (mean [95 % t interval]; FD and KID: lower is better, PSNR: higher):", "",
                  "| comparison | seeds | FD | KID | tokenizer PSNR (dB) |", "|---|---|---|---|---|"]
        for d in result["paired"]:
            psnr = verdict(d, "tokenizer_psnr", lower_is_better=False) if "tokenizer_psnr" in d else "same tokenizer"
            lines.append(f"| {d['comparison']} | {len(d['seeds'])} | {verdict(d, 'fd')} | {verdict(d, 'kid')} | {psnr} |")
    return "\n".join(lines) + "\n"


def figure(result: dict, protocol: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [g for g in ("ar", "ar_repa", "dit") if any(r["generator"] == g for r in result["records"])]
    fig, axes = plt.subplots(1, len(gens), figsize=(4.5 * len(gens), 4.2), squeeze=False, sharey=True)
    for ax, gen in zip(axes[0], gens):
        for i, kind in enumerate(KINDS):
            rs = [r for r in result["records"] if r["generator"] == gen and r["tokenizer"] == kind]
            for j, r in enumerate(rs):
                x = i + (j - (len(rs) - 1) / 2) * 0.12
                ax.errorbar([x], [r["fd"]], yerr=[[r["fd"] - r["fd_ci"][0]], [r["fd_ci"][1] - r["fd"]]], marker="o", color=f"C{i}", capsize=3)
        for name, style in (("real_vs_real", "--"), ("memorizer", ":")):
            ax.axhline(protocol["rows"][name]["fd"], color="gray", ls=style, lw=1, label=name.replace("_", " "))
        ax.set_xticks(range(len(KINDS)), ["FSQ", "iFSQ", "erf + equal"], fontsize=10)
        ax.set_xlabel("tokenizer bottleneck", fontsize=10)
        ax.set_title({"ar": "AR transformer", "ar_repa": "AR transformer + REPA", "dit": "DiT (flow matching)"}[gen], fontsize=11)
        ax.tick_params(labelsize=9)
    axes[0][0].set_ylabel(f"FD vs {result['meta']['num_real']:,} test images (95 % CI)", fontsize=10)
    axes[0][0].legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, "1 seed, short training, no LR sweep, no REPA (about 15 min)", tuple(CONFIGS["full"]["splits"]))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--generators", nargs="+", default=["ar", "ar_repa", "dit"], choices=["ar", "ar_repa", "dit"])
    parser.add_argument("--repa", action=argparse.BooleanOptionalAction, default=None, help="train AR+REPA too (default: full mode only)")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None,
                        help="run these seeds (instead of 0 .. --seeds - 1): one process per seed, then --merge")
    parser.add_argument("--tokenizer-steps", type=int, default=None, help="train the tokenizers this many steps")
    parser.add_argument("--tokenizer-lrs", type=float, nargs="+", default=None, help="the tokenizers' learning-rate sweep")
    parser.add_argument("--tokenizer-eval-every", type=int, default=None, help="log the tokenizers' validation PSNR every this many steps")
    parser.add_argument("--ar-steps", type=int, default=None, help="train the AR transformers this many steps (the best validation step is kept)")
    parser.add_argument("--ar-eval-every", type=int, default=None, help="the AR transformers' validation loss every this many steps")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                        help="combine the outputs of runs with disjoint --seed-list into --out (trains nothing)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, argv)
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    cfg = protocol_config(args, CONFIGS, ("features", "repa_encoder", "tokenizer", "ar", "dit"),
                          overrides=("repa", "tokenizer_lrs", "tokenizer_eval_every", "ar_eval_every"))
    cfg["num_real"] = cfg["splits"]["test"]
    for model, steps in (("tokenizer", args.tokenizer_steps), ("ar", args.ar_steps)):
        cfg[model]["steps"] = steps or cfg[model]["steps"]
    seeds = args.seed_list or list(range(args.seeds or cfg["seeds"]))
    t0 = time.perf_counter()

    data = load_splits(cfg)
    feature_net, _ = P.train_classifier(data["features"], cfg["features"], ENV, seed=0, desc="feature network")
    evaluator = ProtocolEvaluator(feature_net, data["test"].images, data["test"].labels, data["val"].images, n_boot=cfg["n_boot"])
    repa_encoder = None
    if cfg["repa"] and "ar_repa" in args.generators and set(args.kinds) & set(cfg["repa_kinds"]):
        # a different network than the evaluation's, on the generators' own training split
        repa_encoder, _ = P.train_classifier(data["train"], cfg["repa_encoder"], ENV, seed=1, desc="REPA encoder")

    records, first_tokenizers, chosen_lrs = [], None, {}
    for i, seed in enumerate(seeds):  # the LR sweep on the first seeds; later seeds reuse each bottleneck's chosen LR
        lrs = {k: cfg["tokenizer_lrs"] if i < cfg["tokenizer_sweep_seeds"] else [chosen_lrs[k]] for k in args.kinds}
        rs, toks, chosen_lrs = run_seed(seed, cfg, data, evaluator, repa_encoder, args.kinds, args.generators, lrs)
        records += rs
        first_tokenizers = first_tokenizers or toks
    n = cfg["num_generated"]
    random_kind = "ifsq" if "ifsq" in first_tokenizers else args.kinds[0]
    random_images = P.random_token_images(first_tokenizers[random_kind], n, P.latent_size(None, data["train"].image_shape[1]), seed=0)
    rows = evaluator.calibration(n, data["reference"].images, data["reference"].labels, data["train"].images, data["train"].labels, random_images)
    protocol = dict(rows=rows, n_generated=n, n_real=cfg["num_real"], random_tokens_tokenizer=f"{random_kind}, seed {seeds[0]}",
                    feature_net=dict(split="features", n_train=cfg["splits"]["features"], test_accuracy=evaluator.test_accuracy, **cfg["features"]),
                    notes="real_vs_real: the reference split (disjoint from test) vs test; memorizer: the generators' first n training "
                          "images vs test; random_tokens: decoded uniformly random indices. Same n, same test set, same bootstrap.")
    meta = dict(mode=mode, seeds=seeds, kinds=args.kinds, generators=args.generators, num_generated=n, num_real=cfg["num_real"],
                num_val_samples=cfg["num_val_samples"], n_boot=cfg["n_boot"], config=cfg, seconds=round(time.perf_counter() - t0, 1),
                command=study_command("study_generation", argv))
    result = dict(meta=meta, records=records, paired=paired(records))
    protocol = dict(meta=dict(command=meta["command"], mode=mode), **protocol)
    write_outputs(result, protocol, args.out)
    return result


def write_outputs(result: dict, protocol: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation.json").write_text(json.dumps(result, indent=1))
    (out / "protocol.json").write_text(json.dumps(protocol, indent=1))
    md = to_markdown(result, protocol)
    (out / "generation.md").write_text(md)
    figure(result, protocol, out / "generation.png")
    print(md)


def merge(parts: list[Path], out: Path, argv) -> dict:
    """One result from runs of the same configuration on disjoint seeds (``--seed-list``, one process each).

    The calibration rows are those of the part with the lowest seed (the real-vs-real and memorizer rows are
    the same in every part; the decoded random tokens come from that part's first tokenizer).
    """
    results = [json.loads((p / "generation.json").read_text()) for p in parts]
    protocols = [json.loads((p / "protocol.json").read_text()) for p in parts]
    if any(r["meta"]["config"] != results[0]["meta"]["config"] for r in results):
        raise ValueError("--merge: the parts were run with different configurations")
    if len(results[0]["meta"]["config"]["tokenizer_lrs"]) > 1:
        raise ValueError("--merge: the parts swept several tokenizer learning rates, each on its own first seed, which one "
                         "process over all seeds would not do; run the parts with one --tokenizer-lrs value")
    seeds = [s for r in results for s in r["meta"]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--merge: the parts' seeds overlap: {seeds}")
    first = min(range(len(parts)), key=lambda i: min(results[i]["meta"]["seeds"]))
    records = sorted((x for r in results for x in r["records"]), key=lambda x: x["seed"])
    meta = dict(results[first]["meta"], seeds=sorted(seeds), seconds=max(r["meta"]["seconds"] for r in results),
                parts=[dict(command=r["meta"]["command"], seeds=r["meta"]["seeds"], seconds=r["meta"]["seconds"]) for r in results],
                command=study_command("study_generation", argv))
    result = dict(meta=meta, records=records, paired=paired(records))
    write_outputs(result, dict(protocols[first], meta=dict(protocols[first]["meta"], command=meta["command"])), out)
    return result


if __name__ == "__main__":
    main()
