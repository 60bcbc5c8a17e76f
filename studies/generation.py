"""The headline study: does iFSQ's bound give better generation than FSQ's (and erf + equal bins)?

Data: ``studies/font_digits.py`` (digits rendered from 21 fonts with random deformations, 16x16),
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
test split: FD and KID against the held-out test images with 95 % bootstrap intervals,
and class accuracy. Calibration rows at the same n: real vs real, a memorizer (training images)
and decoded random tokens. Paired differences over seeds (iFSQ - FSQ, iFSQ - erf_equal,
AR+REPA - AR) with Student-t intervals.

Outputs in ``--out``: ``generation.json`` (one record per trained generator: tokenizer,
generator, seed, guidance, fd, fd_ci, kid, kid_ci, n_generated, n_real, accuracy, ...; the
paired differences; the configuration), ``protocol.json`` (calibration rows), ``generation.md``
and ``generation.png``.

    python -m studies.generation --quick   # 1 seed, short training, n = 2,000 vs 5,000 (about 10-15 min, one thread)
    python -m studies.generation --out studies/results/generation   # 3 seeds, LR sweep on seed 0, REPA on iFSQ (about 1.7 h, one thread)

Options change one thing at a time: ``--tokenizer-steps``, ``--tokenizer-lrs``, ``--ar-steps``, ``--kinds``,
``--generators``, ``--no-repa``. One process per seed (each seed's models depend on that seed alone, so the
merged result is the one process's result, provided there is a single tokenizer learning rate: each part
would sweep a list of them on its own first seed), for example the 9,000-step tokenizers of
``results/generation/tokenizer_steps_9000``::

    for s in 0 1 2; do python -m studies.generation --seed-list $s --tokenizer-steps 9000 --tokenizer-lrs 1.6e-2 \
        --tokenizer-eval-every 1000 --generators ar dit --no-repa --out part$s & done; wait
    python -m studies.generation --merge part0 part1 part2 --out studies/results/generation/tokenizer_steps_9000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from examples import pipeline as P
from studies import protocol
from studies.font_digits import load_splits
from studies.harness import ENV, Study, command, save_figure, start
from studies.protocol import ProtocolEvaluator
from studies.recipes import HEADLINE, KINDS, seed_records
from studies.stats import paired_difference

STUDY = Study("generation", __doc__, extra_json=("protocol",))
CONFIGS = HEADLINE  # every number that changes the result: studies/recipes.py


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


def to_markdown(result: dict) -> str:
    meta, protocol = result["meta"], result["protocol"]
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


def figure(result: dict, path: Path) -> None:
    protocol = result["protocol"]
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
    save_figure(fig, path)


def main(argv=None):
    parser = STUDY.parser("1 seed, short training, no LR sweep, no REPA (about 15 min)")
    protocol.add_arguments(parser, tuple(CONFIGS["full"]["splits"]))
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
    if args.from_json:
        return STUDY.rewrite(args.from_json, to_markdown, figure)
    if args.merge:
        return merge(args.merge, args.out, argv)
    t0 = start()
    cfg = protocol.configure(args, CONFIGS, ("features", "repa_encoder", "tokenizer", "ar", "dit"),
                             overrides=("repa", "tokenizer_lrs", "tokenizer_eval_every", "ar_eval_every"))
    cfg["num_real"] = cfg["splits"]["test"]
    for model, steps in (("tokenizer", args.tokenizer_steps), ("ar", args.ar_steps)):
        cfg[model]["steps"] = steps or cfg[model]["steps"]
    seeds = args.seed_list or STUDY.seeds(args, cfg)

    data = load_splits(cfg["splits"])
    feature_net, _ = P.train_classifier(data["features"], cfg["features"], ENV, seed=0, desc="feature network")
    evaluator = ProtocolEvaluator(feature_net, data["test"].images, data["test"].labels, data["val"].images, n_boot=cfg["n_boot"])
    repa_encoder = None
    if cfg["repa"] and "ar_repa" in args.generators and set(args.kinds) & set(cfg["repa_kinds"]):
        # a different network than the evaluation's, on the generators' own training split
        repa_encoder, _ = P.train_classifier(data["train"], cfg["repa_encoder"], ENV, seed=1, desc="REPA encoder")

    records, first_tokenizers, chosen_lrs = [], None, {}
    for i, seed in enumerate(seeds):  # the LR sweep on the first seeds; later seeds reuse each bottleneck's chosen LR
        lrs = {k: cfg["tokenizer_lrs"] if i < cfg["tokenizer_sweep_seeds"] else [chosen_lrs[k]] for k in args.kinds}
        rs, toks, chosen_lrs = seed_records(seed, cfg, data, evaluator, repa_encoder, args.kinds, args.generators, lrs)
        records += rs
        first_tokenizers = first_tokenizers or toks
    n = cfg["num_generated"]
    random_kind = "ifsq" if "ifsq" in first_tokenizers else args.kinds[0]
    random_images = P.random_token_images(first_tokenizers[random_kind], n, P.latent_size(data["train"].image_shape[1]), seed=0)
    rows = evaluator.calibration(n, data["reference"].images, data["reference"].labels, data["train"].images, data["train"].labels, random_images)
    meta = STUDY.meta(args, argv, t0, seeds=seeds, kinds=args.kinds, generators=args.generators, num_generated=n, num_real=cfg["num_real"],
                      num_val_samples=cfg["num_val_samples"], n_boot=cfg["n_boot"], config=cfg)
    calibration = dict(meta=dict(command=meta["command"], mode=meta["mode"]), rows=rows, n_generated=n, n_real=cfg["num_real"],
                       random_tokens_tokenizer=f"{random_kind}, seed {seeds[0]}",
                       feature_net=dict(split="features", n_train=cfg["splits"]["features"], test_accuracy=evaluator.test_accuracy,
                                        **cfg["features"]),
                       notes="real_vs_real: the reference split (disjoint from test) vs test; memorizer: the generators' first n training "
                             "images vs test; random_tokens: decoded uniformly random indices. Same n, same test set, same bootstrap.")
    return STUDY.save(args.out, dict(meta=meta, records=records, paired=paired(records), protocol=calibration), to_markdown, figure)


def merge(parts: list[Path], out: Path, argv) -> dict:
    """One result from runs of the same configuration on disjoint seeds (``--seed-list``, one process each).

    The calibration rows are those of the part with the lowest seed (the real-vs-real and memorizer rows are
    the same in every part; the decoded random tokens come from that part's first tokenizer).
    """
    loaded = [STUDY.load(p) for p in parts]
    results, protocols = loaded, [r["protocol"] for r in loaded]
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
                command=command("generation", argv))
    calibration = dict(protocols[first], meta=dict(protocols[first]["meta"], command=meta["command"]))
    return STUDY.save(out, dict(meta=meta, records=records, paired=paired(records), protocol=calibration), to_markdown, figure)


if __name__ == "__main__":
    main()
