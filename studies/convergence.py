"""Are the tokenizers converged, and does the bottleneck comparison hold when they are?

The generation study's tokenizers (1,000 steps) all choose the largest learning rate of their
sweep, and their training loss still falls 5-7 % in the last tenth of training. This study trains
the same tokenizers (same data splits, architecture, levels, seeds and bottlenecks: FSQ, iFSQ,
erf + equal bins) longer, with a learning-rate sweep that starts where that one ended, and logs
the validation PSNR along the way. The learning rate is chosen per bottleneck by validation PSNR
on the first seed; later seeds reuse it. Reported: test PSNR per run, the paired differences
over seeds (iFSQ - FSQ, erf_equal - iFSQ) with Student-t intervals, and each run's validation
curve and last-tenth loss drop.

Outputs in ``--out``: ``convergence.json``, ``convergence.md``, ``convergence.png``.

    python -m studies.convergence --quick                           # 1 seed, 300 steps (about 4 min, one thread)
    python -m studies.convergence --out studies/results/convergence  # 3 seeds, 3,000 steps, LRs 4e-3, 8e-3, 1.6e-2 on seed 0 (about 1.7 h)
"""

from __future__ import annotations

import copy
from pathlib import Path

from studies.font_digits import load_splits
from studies.harness import Study, mode, pyplot, save_figure, start
from studies.recipes import HEADLINE, KINDS, swept_tokenizer
from studies.stats import paired_difference

STUDY = Study("convergence", __doc__)
SPLITS = ("train", "val", "test")
COMPARISONS = (("ifsq", "fsq"), ("erf_equal", "ifsq"), ("erf_equal", "fsq"))

# Every number that changes the result; data, architecture and levels as in the generation study.
_SHARED = dict(levels=HEADLINE["full"]["levels"], index_groups=HEADLINE["full"]["index_groups"],
               splits={k: HEADLINE["full"]["splits"][k] for k in SPLITS}, tokenizer_lrs=[4e-3, 8e-3, 1.6e-2], tokenizer_sweep_seeds=1)
CONFIGS = {
    "quick": dict(_SHARED, seeds=1, tokenizer=dict(HEADLINE["full"]["tokenizer"], steps=300), eval_every=100),
    "full": dict(_SHARED, seeds=3, tokenizer=dict(HEADLINE["full"]["tokenizer"], steps=3000), eval_every=250),
}


def paired(runs: list[dict]) -> list[dict]:
    """Paired differences of test PSNR over the seeds both bottlenecks ran."""
    psnr = {(r["kind"], r["seed"]): r["psnr"] for r in runs}
    out = []
    for a, b in COMPARISONS:
        seeds = sorted(s for k, s in psnr if k == a and (b, s) in psnr)
        if seeds:
            out.append(dict(comparison=f"{a} - {b}", seeds=seeds,
                            psnr=paired_difference([psnr[a, s] for s in seeds], [psnr[b, s] for s in seeds])))
    return out


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    cfg = meta["config"]
    lines = [f"Tokenizer convergence ({meta['mode']} mode): `{meta['command']}`; seeds {meta['seeds']}, "
             f"{cfg['tokenizer']['steps']:,} steps, learning rates {cfg['tokenizer_lrs']} on the first seed; "
             f"{meta['seconds']:,.0f} s on one thread.", "",
             "| bottleneck | seed | LR | test PSNR (dB) | val PSNR at each LR | loss drop, last tenth |", "|---|---:|---:|---:|---|---:|"]
    for r in result["runs"]:
        sweep = ", ".join(f"{lr}: {v['val_psnr']:.2f}" for lr, v in r["lr_sweep"].items())
        lines.append(f"| {r['kind']} | {r['seed']} | {r['lr']:g} | {r['psnr']:.2f} | {sweep} | {100 * r['loss_drop_last_tenth']:.1f} % |")
    lines += ["", "Paired differences of test PSNR (mean, 95 % Student-t interval over seeds):", "",
              "| comparison | seeds | mean (dB) | 95 % CI |", "|---|---|---:|---|"]
    for p in result["paired"]:
        d = p["psnr"]
        lines.append(f"| {p['comparison']} | {p['seeds']} | {d['mean']:+.3f} | [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |")
    lines += ["", "Validation PSNR along training (chosen LR, each seed):", "",
              "| bottleneck | seed | " + " | ".join(f"step {c['step']}" for c in result["runs"][0]["val_curve"]) + " |",
              "|---|---:|" + "---:|" * len(result["runs"][0]["val_curve"])]
    for r in result["runs"]:
        lines.append(f"| {r['kind']} | {r['seed']} | " + " | ".join(f"{c['val_psnr']:.2f}" for c in r["val_curve"]) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = dict(fsq="tab:blue", ifsq="tab:orange", erf_equal="tab:green")
    for r in result["runs"]:
        for lr, sweep in r["lr_sweep"].items():
            steps = [c["step"] for c in sweep["val_curve"]]
            ax.plot(steps, [c["val_psnr"] for c in sweep["val_curve"]], color=colors[r["kind"]],
                    ls="-" if float(lr) == r["lr"] else ":", lw=1.2, alpha=0.9,
                    label=f"{r['kind']} (chosen LR)" if r["seed"] == result["meta"]["seeds"][0] and float(lr) == r["lr"] else None)
    ax.set_xlabel("training step (cosine schedule to the last step)", fontsize=10)
    ax.set_ylabel("validation PSNR (dB)", fontsize=10)
    ax.set_title("Tokenizer validation PSNR during training (dotted: LRs not chosen)", fontsize=11)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv=None):
    parser = STUDY.parser("1 seed, 300 steps")
    parser.add_argument("--steps", type=int, default=None, help="override the training steps (tests)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="the learning-rate sweep")
    parser.add_argument("--split-sizes", type=int, nargs=len(SPLITS), default=None, metavar=tuple(s.upper() for s in SPLITS))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = parser.parse_args(argv)
    if args.from_json:
        return STUDY.rewrite(args.from_json, to_markdown, figure)
    t0 = start()
    cfg = copy.deepcopy(CONFIGS[mode(args)])
    if args.steps:
        cfg["tokenizer"]["steps"] = args.steps
        cfg["eval_every"] = max(1, args.steps // 2)
    if args.lrs:
        cfg["tokenizer_lrs"] = args.lrs
    if args.split_sizes:
        cfg["splits"] = dict(zip(SPLITS, args.split_sizes))
    seeds = STUDY.seeds(args, cfg)
    data = load_splits(cfg["splits"])
    runs, chosen = [], {}
    for i, seed in enumerate(seeds):
        for kind in args.kinds:
            lrs = cfg["tokenizer_lrs"] if i < cfg["tokenizer_sweep_seeds"] else [chosen[kind]]
            _, m = swept_tokenizer(kind, cfg, data, seed, lrs, eval_every=cfg["eval_every"])
            chosen[kind] = m["lr"]
            runs.append(dict(kind=kind, seed=seed, val_curve=m["lr_sweep"][str(m["lr"])]["val_curve"], **m))
    meta = STUDY.meta(args, argv, t0, seeds=seeds, kinds=args.kinds, config=cfg)
    return STUDY.save(args.out, dict(meta=meta, runs=runs, paired=paired(runs)), to_markdown, figure)


if __name__ == "__main__":
    main()
