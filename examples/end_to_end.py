"""End to end: FSQ/iFSQ tokenizers, an AR transformer and a diffusion model, measured.

    python examples/end_to_end.py --preset quick --out runs/quick
    python -m torch.distributed.run --nproc_per_node=2 examples/end_to_end.py --preset smoke --out runs/ddp

Stages, in order (``--stages`` picks a subset; the others are loaded from checkpoints
when a later stage needs them):

1. ``classifier``  a small CNN on the real training digits; its pre-activation features
                   are the space of the Fréchet distance (FD), its predictions the class
                   accuracy of conditional samples.
2. ``tokenizers``  two autoencoders, identical but for the bottleneck, ``FSQ`` (tanh) and
                   ``iFSQ`` (2*sigmoid(1.6 z) - 1): same architecture, seed and steps.
                   Validation PSNR/SSIM, bin utilization, codebook usage. Then the
                   baselines: FD of real validation images, of iFSQ reconstructions and of
                   decoded uniformly random indices, all against the training images.
3. ``ar``          a class-conditional transformer on the iFSQ tokenizer's indices
                   (``index_groups``: G small vocabularies per position).
4. ``diffusion``   a class-conditional DiT on the iFSQ tokenizer's continuous codes,
                   flow matching; samples decoded as they are and snapped to the FSQ grid.

The stages themselves are library functions in ``examples/pipeline.py`` (shared with the
studies under ``studies/``), the figures and ``report.md`` come from ``examples/report.py``;
this file is the command line: which stages run, checkpoints, and what is measured.

Outputs in ``--out``: ``metrics.json``, ``report.md``, PNG figures, and ``checkpoints/``
(safetensors: loading one never unpickles anything, the guarantee ``weights_only=True``
gives ``torch.load``).

Distributed: under ``torchrun`` every training stage runs with DistributedDataParallel
(gloo on CPU, nccl on CUDA) and a DistributedSampler; the global batch is split over the
ranks; the tokenizers' usage counts are all-reduced; rank 0 evaluates and writes.

Presets: ``smoke`` (< 1 min, checks the wiring), ``quick`` (the demo: ~7 min on a 2-core
CPU), ``full`` (longer training, bigger models, more samples, and FSQ/iFSQ tokenizers on
32x32 natural patches as well). Seeds are fixed: one command gives the same numbers on one
machine (with the same ``--threads``; the thread count changes float reduction order).

Threads: one per process by default. These models are small, and two OpenMP threads on a
2-core machine that something else is also using can be 20x slower than one (the threads
spin waiting for each other); with one thread the worst case is 2x. On a dedicated machine
``--threads 2`` (or ``--threads 0``: all cores) is about 1.5x faster, or use both cores with
``torchrun --nproc_per_node=2``.
"""


from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a script (the documented command): make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.checkpoints import check_output_dir, load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from examples.data import load_digits_split, load_patches_split  # noqa: E402
from examples.diffusion import LatentNormalizer, snap_to_grid  # noqa: E402
from examples.metrics import class_accuracy, extract_features, frechet_distance  # noqa: E402
from examples.pipeline import (  # noqa: E402
    balanced_labels,
    build_ar,
    build_classifier,
    build_dit,
    build_tokenizer,
    decode_codes,
    encode_codes,
    encode_tokens,
    evaluate_tokenizer,
    gaussian_utilization,
    generated_metrics,
    group_vocab_sizes,
    make_quantizer,
    random_token_images,
    sample_ar,
    sample_dit,
    train_ar,
    train_classifier,
    train_dit,
    train_tokenizer,
)
from examples.presets import PRESETS, TRAINING_KEYS  # noqa: E402
from examples.report import (  # noqa: E402
    save_curves_figure,
    save_grid_figure,
    save_reconstruction_figure,
    save_usage_figure,
    summary_rows,
    write_report,
)
from examples.tokenizer import Tokenizer  # noqa: E402
from examples.training import ExampleError, setup_env  # noqa: E402

STAGES = ("classifier", "tokenizers", "ar", "diffusion")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="smoke (< 1 min), quick (the demo), full")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be writable)")
    parser.add_argument("--stages", default="all",
                        help=f"comma-separated subset of {','.join(STAGES)} (default all); other needed models come from checkpoints")
    parser.add_argument("--resume", action="store_true", help="load a stage's checkpoint instead of training it when one exists")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default 1: robust on a shared machine, see the module docstring)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: all cores), got {args.threads}")
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages: unknown stage(s) {unknown}; choose from {','.join(STAGES)} or all")
    args.stages = stages
    return args


MODELS_OF_STAGE = {"classifier": ["classifier"], "tokenizers": ["tokenizer_fsq", "tokenizer_ifsq"], "ar": ["ar"], "diffusion": ["diffusion"]}


def plan_models(stages: tuple[str, ...], resume: bool, ckpt: Path) -> tuple[set[str], set[str]]:
    """Which models this run trains and which it loads from ``ckpt`` -> (train, load).

    A listed stage trains its models (or, with ``resume``, loads them when all its
    checkpoints exist). The AR and diffusion stages also need the classifier and the iFSQ
    tokenizer; the tokenizer stage uses the classifier for its FD figures when one exists.
    """
    train_now, load_now = set(), set()
    for stage in stages:
        names = MODELS_OF_STAGE[stage]
        if resume and all((ckpt / f"{n}.safetensors").is_file() for n in names):
            load_now.update(names)
        else:
            train_now.update(names)
    if set(stages) & {"ar", "diffusion"}:
        load_now.update(n for n in ("classifier", "tokenizer_ifsq") if n not in train_now)
    if "tokenizers" in stages and "classifier" not in train_now and (ckpt / "classifier.safetensors").is_file():
        load_now.add("classifier")
    return train_now, load_now


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    cfg = PRESETS[args.preset]
    out: Path = args.out
    check_output_dir(out)
    env = setup_env(args.device, args.threads)
    ckpt = out / "checkpoints"
    seed = cfg["seed"]
    train_now, load_now = plan_models(args.stages, args.resume, ckpt)
    have = train_now | load_now
    kinds = [k for k in ("fsq", "ifsq") if f"tokenizer_{k}" in have]

    train_set, val_set = load_digits_split(n_val_per_class=cfg["n_val_per_class"], seed=seed)
    in_ch, size = train_set.image_shape[0], train_set.image_shape[1]
    latent = size // 4
    vocab_sizes = group_vocab_sizes(cfg["levels"], cfg["index_groups"])
    model_cfgs = {
        "classifier": dict(in_channels=in_ch, image_size=size, num_classes=10, width=cfg["classifier"]["width"],
                           feature_dim=cfg["classifier"]["feature_dim"]),
        "tokenizer": dict(levels=cfg["levels"], index_groups=cfg["index_groups"], **cfg["tokenizer"]),
        "ar": dict(vocab_sizes=vocab_sizes, seq_len=latent * latent, num_classes=10,
                   **{k: cfg["ar"][k] for k in ("dim", "depth", "heads", "class_dropout", "dropout")}),
        "diffusion": dict(in_channels=len(cfg["levels"]), input_size=latent, num_classes=10,
                          **{k: cfg["diffusion"][k] for k in ("dim", "depth", "heads", "patch_size", "class_dropout")}),
    }
    training = {k: {n: v for n, v in cfg[k].items() if n in TRAINING_KEYS} for k in ("classifier", "ar", "diffusion")}
    ckpt_cfg = {  # what a checkpoint must have been trained with to be reused (sampling settings may change)
        "classifier": dict(model=model_cfgs["classifier"], train=training["classifier"], seed=seed),
        "tokenizer": dict(model=model_cfgs["tokenizer"], seed=seed),
        "ar": dict(model=model_cfgs["ar"], train=training["ar"], tokenizer=model_cfgs["tokenizer"], seed=seed),
        "diffusion": dict(model=model_cfgs["diffusion"], train=training["diffusion"], tokenizer=model_cfgs["tokenizer"], seed=seed),
    }
    # Every checkpoint this run loads is read (and checked) now, before any training starts.
    for name in sorted(load_now):
        read_checkpoint(ckpt / f"{name}.safetensors", ckpt_cfg[name.split("_")[0]])

    metrics: dict = {
        "config": dict(preset=args.preset, command=" ".join(["python examples/end_to_end.py"] + sys.argv[1:]),
                       stages=list(args.stages), world_size=env.world, threads=torch.get_num_threads(),
                       device=str(env.device), torch=torch.__version__, ar_vocab_sizes=vocab_sizes,
                       data=dict(train=len(train_set), val=len(val_set)), **copy.deepcopy(cfg)),
        "seconds": {},
    }
    seconds = metrics["seconds"]
    curves: dict[str, list[float]] = {}
    figures: dict[str, str] = {}

    def log(msg: str) -> None:
        if env.is_main:
            tqdm.write(msg)

    def timed(name: str, t0: float) -> None:
        seconds[name] = round(time.perf_counter() - t0, 2)

    # 1. classifier -------------------------------------------------------------------------
    classifier = train_features = None
    if "classifier" in have:
        t0 = time.perf_counter()
        if "classifier" in load_now:
            classifier = build_classifier(cfg["classifier"], train_set.image_shape, seed).to(env.device)
            load_checkpoint(ckpt / "classifier.safetensors", classifier, ckpt_cfg["classifier"])
        else:
            classifier, curves["classifier"] = train_classifier(train_set, cfg["classifier"], env, seed)
            if env.is_main:
                save_checkpoint(ckpt / "classifier.safetensors", classifier, ckpt_cfg["classifier"])
        classifier.eval()
        train_features = extract_features(classifier, train_set.images)
        metrics["classifier"] = dict(val_accuracy=class_accuracy(classifier, val_set.images, val_set.labels))
        log(f"classifier: validation accuracy {metrics['classifier']['val_accuracy']:.3f}")
        timed("classifier", t0)

    # 2. tokenizers -------------------------------------------------------------------------
    tokenizers: dict[str, Tokenizer] = {}
    evaluate_tokenizers = "tokenizers" in args.stages
    if kinds:
        recons, bin_counts = {}, {}
        for kind in kinds:
            t0 = time.perf_counter()
            path = ckpt / f"tokenizer_{kind}.safetensors"
            if f"tokenizer_{kind}" in load_now:  # same initialization (seed) for FSQ and iFSQ
                tok = build_tokenizer(kind, cfg["levels"], cfg["index_groups"], cfg["tokenizer"], in_ch, seed).to(env.device)
                load_checkpoint(path, tok, ckpt_cfg["tokenizer"])
            else:  # training usage summed over ranks (a no-op in one process)
                tok, curves[f"tokenizer {kind}"] = train_tokenizer(kind, cfg["levels"], cfg["index_groups"], cfg["tokenizer"], train_set, env, seed)
                if env.is_main:
                    save_checkpoint(path, tok, ckpt_cfg["tokenizer"])
            tok.eval()
            tokenizers[kind] = tok
            timed(f"tokenizer_{kind}", t0)
            if env.is_main and evaluate_tokenizers:
                t0 = time.perf_counter()
                m, recons[kind], bin_counts[kind] = evaluate_tokenizer(tok, val_set, env)
                train_usage = tok.usage.summary()
                m["train_usage"] = dict(samples=train_usage["samples"], utilization=train_usage["mean_utilization"])
                m["gaussian_utilization"] = gaussian_utilization(make_quantizer(kind, cfg), seed=seed)
                if classifier is not None:
                    m["fd_reconstruction"] = frechet_distance(extract_features(classifier, recons[kind]), train_features)
                metrics.setdefault("tokenizers", {})[kind] = m
                log(f"tokenizer {kind}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, utilization {m['utilization']:.3f}")
                timed(f"tokenizer_{kind}_eval", t0)
        if env.is_main and evaluate_tokenizers:
            save_reconstruction_figure(out / "reconstructions.png", val_set.images[:: len(val_set) // 16][:16],
                                       {k: v[:: len(val_set) // 16][:16] for k, v in recons.items()})
            save_usage_figure(out / "bin_usage.png", bin_counts, cfg["levels"])
            figures["Reconstructions (validation): real, FSQ, iFSQ"] = "reconstructions.png"
            figures["Bin usage per latent dimension (validation), FSQ vs iFSQ; dashed: uniform"] = "bin_usage.png"

        # Baselines: real vs real, reconstructions, decoded uniformly random indices.
        if env.is_main and classifier is not None and evaluate_tokenizers:
            t0 = time.perf_counter()
            n = cfg["num_samples"]
            random_images = random_token_images(tokenizers["ifsq"], n, latent, seed, env)
            val_features = extract_features(classifier, val_set.images)
            metrics["baselines"] = dict(
                fd_real=frechet_distance(val_features, train_features),
                accuracy_real=metrics["classifier"]["val_accuracy"],
                fd_reconstruction=metrics["tokenizers"]["ifsq"]["fd_reconstruction"],
                accuracy_reconstruction=class_accuracy(classifier, recons["ifsq"], val_set.labels),
                fd_random_tokens=frechet_distance(extract_features(classifier, random_images), train_features),
            )
            save_grid_figure(out / "random_tokens.png", [("decoded uniformly random indices", random_images[:100], 10)])
            figures["Baseline: decoded uniformly random indices"] = "random_tokens.png"
            b = metrics["baselines"]
            log(f"baselines: FD real {b['fd_real']:.3f}, reconstruction {b['fd_reconstruction']:.3f}, random tokens {b['fd_random_tokens']:.3f}")
            timed("baselines", t0)

    ifsq_tok = tokenizers.get("ifsq")
    labels = balanced_labels(cfg["num_samples"], 10)
    rows_per_class = min(10, len(labels) // 10)
    figure_idx = torch.cat([torch.arange(c * (len(labels) // 10), c * (len(labels) // 10) + rows_per_class) for c in range(10)])

    # 3. autoregressive transformer on the iFSQ indices ----------------------------------------
    if "ar" in have:
        t0 = time.perf_counter()
        if "ar" in load_now:
            ar = build_ar(ifsq_tok, cfg["ar"], latent, seed).to(env.device)
            load_checkpoint(ckpt / "ar.safetensors", ar, ckpt_cfg["ar"])
        else:
            ar, curves["ar"] = train_ar(ifsq_tok, train_set, cfg["ar"], env, seed)
            if env.is_main:
                save_checkpoint(ckpt / "ar.safetensors", ar, ckpt_cfg["ar"])
        timed("ar", t0)
        if env.is_main:
            t0 = time.perf_counter()
            a = cfg["ar"]
            val_tokens = encode_tokens(ifsq_tok, val_set.images, env)

            def ar_images(cfg_scale: float) -> torch.Tensor:
                return sample_ar(ar, ifsq_tok, labels, cfg_scale, seed, env, temperature=a["temperature"], top_k=a["top_k"], progress=True)

            images = ar_images(a["cfg_scale"])
            with torch.no_grad():
                val_loss = float(ar.eval().loss(val_set.labels.to(env.device), val_tokens.to(env.device)))
            metrics["ar"] = dict(generated_metrics(classifier, images, labels, train_features), cfg_scale=a["cfg_scale"],
                                 temperature=a["temperature"], top_k=a["top_k"], num_samples=len(labels),
                                 train_loss=float(np.mean(curves["ar"][-50:])) if "ar" in curves else None, val_loss=val_loss)
            metrics["ar"]["cfg_sweep"] = {str(c): generated_metrics(classifier, ar_images(c), labels, train_features)
                                          for c in a["cfg_sweep"] if c != a["cfg_scale"]}
            save_grid_figure(out / "ar_samples.png", [(f"AR samples (guidance {a['cfg_scale']}), one row per class", images[figure_idx], 10)])
            figures["AR transformer samples, one row per class"] = "ar_samples.png"
            log(f"ar: FD {metrics['ar']['fd']:.3f}, accuracy {metrics['ar']['accuracy']:.3f}, validation loss {val_loss:.3f}")
            timed("ar_sampling", t0)

    # 4. diffusion transformer on the iFSQ codes -------------------------------------------------
    if "diffusion" in have:
        t0 = time.perf_counter()
        if "diffusion" in load_now:
            dit = build_dit(ifsq_tok, cfg["diffusion"], latent, seed).to(env.device)
            normalizer = LatentNormalizer(len(cfg["levels"])).to(env.device)
            holder = nn.ModuleDict({"dit": dit, "normalizer": normalizer})
            load_checkpoint(ckpt / "diffusion.safetensors", holder, ckpt_cfg["diffusion"])
        else:
            dit, normalizer, curves["diffusion"] = train_dit(ifsq_tok, train_set, cfg["diffusion"], env, seed)
            holder = nn.ModuleDict({"dit": dit, "normalizer": normalizer})
            if env.is_main:
                save_checkpoint(ckpt / "diffusion.safetensors", holder, ckpt_cfg["diffusion"])
        timed("diffusion", t0)
        if env.is_main:
            t0 = time.perf_counter()
            dcfg = cfg["diffusion"]

            def diffusion_codes(cfg_scale: float) -> torch.Tensor:
                return sample_dit(dit, normalizer, labels, dcfg, seed, env, cfg_scale=cfg_scale, progress=True)

            def decode(codes: torch.Tensor) -> torch.Tensor:
                return decode_codes(ifsq_tok, codes, env)

            sample_codes = diffusion_codes(dcfg["cfg_scale"])
            snapped = snap_to_grid(sample_codes, ifsq_tok.quantizer)
            images, images_snapped = decode(sample_codes), decode(snapped)
            m = generated_metrics(classifier, images, labels, train_features)
            ms = generated_metrics(classifier, images_snapped, labels, train_features)
            val_codes = encode_codes(ifsq_tok, val_set.images, env)
            with torch.no_grad():
                val_loss = float(dit.eval().loss(normalizer.normalize(val_codes.to(env.device)), val_set.labels.to(env.device),
                                                 generator=torch.Generator(env.device).manual_seed(seed + 4)))
            metrics["diffusion"] = dict(m, fd_snapped=ms["fd"], accuracy_snapped=ms["accuracy"], cfg_scale=dcfg["cfg_scale"],
                                        sampler=dcfg["sampler"], sample_steps=dcfg["sample_steps"], num_samples=len(labels),
                                        mean_snap_distance=float((snapped - sample_codes).abs().mean()),
                                        train_loss=float(np.mean(curves["diffusion"][-50:])) if "diffusion" in curves else None,
                                        val_loss=val_loss)
            metrics["diffusion"]["cfg_sweep"] = {str(c): generated_metrics(classifier, decode(diffusion_codes(c)), labels, train_features)
                                                 for c in dcfg["cfg_sweep"] if c != dcfg["cfg_scale"]}
            save_grid_figure(out / "diffusion_samples.png", [("DiT samples (continuous codes)", images[figure_idx], 10),
                                                               ("the same, snapped to the FSQ grid", images_snapped[figure_idx], 10)])
            figures["Diffusion (DiT, flow matching) samples, one row per class: continuous / snapped to the grid"] = "diffusion_samples.png"
            log(f"diffusion: FD {m['fd']:.3f} (snapped {ms['fd']:.3f}), accuracy {m['accuracy']:.3f} (snapped {ms['accuracy']:.3f}), "
                f"validation loss {val_loss:.3f}")
            timed("diffusion_sampling", t0)

    # 5. optional: tokenizers on natural patches (full preset) -----------------------------------
    if cfg["patches"] and evaluate_tokenizers:
        patch_train, patch_val = load_patches_split(seed=seed)
        for kind in kinds:
            t0 = time.perf_counter()
            tok, curves[f"patches {kind}"] = train_tokenizer(kind, cfg["levels"], cfg["index_groups"], cfg["patches"], patch_train, env, seed,
                                                             f"patch tokenizer {kind}")
            if env.is_main:
                save_checkpoint(ckpt / f"patch_tokenizer_{kind}.safetensors", tok, dict(model=cfg["patches"], seed=seed))
                m, recon, _ = evaluate_tokenizer(tok, patch_val, env)
                metrics.setdefault("tokenizers_patches", {})[kind] = m
                if kind == "ifsq":
                    save_grid_figure(out / "patch_reconstructions.png", [("held-out patches", patch_val.images[:32], 4),
                                                                          ("iFSQ reconstructions", recon[:32], 4)])
                    figures["Natural patches: held-out photographs, iFSQ reconstructions"] = "patch_reconstructions.png"
            timed(f"patches_{kind}", t0)

    seconds["total"] = round(time.perf_counter() - t_start, 2)
    if env.is_main:
        if curves:
            save_curves_figure(out / "training_curves.png", curves)
            figures["Training curves"] = "training_curves.png"
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_report(out, metrics, figures)
        rows = summary_rows(metrics)
        width = max(len(r[0]) for r in rows) if rows else 0
        print(f"\n== ifsq-quant end to end, preset {args.preset}: {out} ==")
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
    if env.distributed:
        dist.barrier()
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ExampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

