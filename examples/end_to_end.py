"""End to end: FSQ/iFSQ tokenizers, an AR transformer and a diffusion model, measured.

    python -m examples.end_to_end --preset quick --out runs/quick
    python -m torch.distributed.run --nproc_per_node=2 -m examples.end_to_end --preset smoke --out runs/ddp

Run from the repository root (``python -m examples.end_to_end``) or as a path
(``python examples/end_to_end.py``). Stages, in order (``--stages`` picks a subset; the others are
loaded from checkpoints when a later stage needs them):

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

Each stage is one function below; the models' training and sampling are library functions
in ``examples/pipeline.py`` (shared with the studies under ``studies/``), the figures and
``report.md`` come from ``examples/report.py``.

Outputs in ``--out``: ``metrics.json``, ``report.md``, PNG figures, and ``checkpoints/``
(safetensors, with each model's training losses). A folder that holds a run of another
preset or configuration is refused, not rewritten. Ctrl-C stops cleanly: the finished stages
are checkpointed, and ``--resume`` continues from them.

Distributed: under ``torchrun`` every training stage runs with DistributedDataParallel
(gloo on CPU, nccl on CUDA) and a DistributedSampler; the global batch is split over the
ranks; the tokenizers' usage counts are all-reduced; rank 0 evaluates and writes.

Presets (``examples/presets.py``): ``smoke`` (< 1 min; its numbers only check the plumbing),
``quick`` (the demo: ~8 min on a 2-core CPU), ``full`` (longer training, bigger models, more
samples, and FSQ/iFSQ tokenizers on 32x32 natural patches as well). Seeds are fixed: one
command gives the same numbers on one machine (with the same ``--threads``; the thread count
changes float reduction order).

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
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a path (python examples/end_to_end.py): import the package examples from the repository root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from examples import pipeline as P
from examples.checkpoints import check_output_dir, load_checkpoint, read_checkpoint, read_config, save_checkpoint
from examples.data import ImageSet, load_digits_split, load_patches_split
from examples.diffusion import LatentNormalizer, snap_to_grid
from examples.metrics import FeatureClassifier, class_accuracy, extract_features, frechet_distance
from examples.presets import PRESETS, SMOKE_NOTE, TRAINING_KEYS
from examples.report import save_curves_figure, save_grid_figure, save_reconstruction_figure, save_usage_figure, summary_rows, write_report
from examples.tokenizer import Tokenizer
from examples.training import Env, ExampleError, setup_env

STAGES = ("classifier", "tokenizers", "ar", "diffusion")
MODELS_OF_STAGE = {"classifier": ["classifier"], "tokenizers": ["tokenizer_fsq", "tokenizer_ifsq"], "ar": ["ar"], "diffusion": ["diffusion"]}
COMMAND = "python -m examples.end_to_end"
MISSING_HINT = "run its stage first (see --stages)"


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="smoke (< 1 min, plumbing only), quick (the demo), full")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be writable)")
    parser.add_argument("--stages", default="all",
                        help=f"comma-separated subset of {','.join(STAGES)} (default all); other needed models come from checkpoints")
    parser.add_argument("--resume", action="store_true", help="load a stage's checkpoint instead of training it when one exists")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default 1: robust on a shared machine, see the module docstring)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: all cores), got {args.threads}")
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages: unknown stage(s) {unknown}; choose from {','.join(STAGES)} or all")
    args.stages = stages
    args.command = " ".join([COMMAND, *argv])
    return args


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


def checkpoint_configs(cfg: dict, train_set: ImageSet) -> dict[str, dict]:
    """What each model's checkpoint must have been trained with to be reused (sampling settings may change)."""
    in_ch, size = train_set.image_shape[0], train_set.image_shape[1]
    latent, seed = P.latent_size(size), cfg["seed"]
    model = {
        "classifier": dict(in_channels=in_ch, image_size=size, num_classes=10, width=cfg["classifier"]["width"],
                           feature_dim=cfg["classifier"]["feature_dim"]),
        "tokenizer": dict(levels=cfg["levels"], index_groups=cfg["index_groups"], **cfg["tokenizer"]),
        "ar": dict(vocab_sizes=P.group_vocab_sizes(cfg["levels"], cfg["index_groups"]), seq_len=latent * latent, num_classes=10,
                   **{k: cfg["ar"][k] for k in ("dim", "depth", "heads", "class_dropout", "dropout")}),
        "diffusion": dict(in_channels=len(cfg["levels"]), input_size=latent, num_classes=10,
                          **{k: cfg["diffusion"][k] for k in ("dim", "depth", "heads", "patch_size", "class_dropout")}),
    }
    training = {k: {n: v for n, v in cfg[k].items() if n in TRAINING_KEYS} for k in ("classifier", "ar", "diffusion")}
    return {
        "classifier": dict(model=model["classifier"], train=training["classifier"], seed=seed),
        "tokenizer": dict(model=model["tokenizer"], seed=seed),
        "ar": dict(model=model["ar"], train=training["ar"], tokenizer=model["tokenizer"], seed=seed),
        "diffusion": dict(model=model["diffusion"], train=training["diffusion"], tokenizer=model["tokenizer"], seed=seed),
    }


def refuse_another_run(out: Path, preset: str, cfg: dict, ckpt_cfg: dict[str, dict], train_now: set[str]) -> None:
    """Raises ExampleError, before anything is written, if ``out`` holds a run of another preset or configuration:
    its ``metrics.json`` names another one, or a checkpoint this run would overwrite was trained with another one."""
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        try:
            saved = json.loads(metrics_path.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            saved = None
        same = saved is not None and saved.get("preset") == preset and all(saved.get(k) == v for k, v in json.loads(json.dumps(cfg)).items())
        if not same:
            name = saved.get("preset") if isinstance(saved, dict) else None
            raise ExampleError(f"{str(out)!r} holds another run ({f'preset {name!r}' if name else 'unreadable metrics.json'}"
                               f"{', another configuration' if name == preset else ''}); this run (preset {preset!r}) would rewrite part "
                               "of it: choose another --out, or delete that folder")
    for name in sorted(train_now):
        path = out / "checkpoints" / f"{name}.safetensors"
        if not path.is_file():
            continue
        try:
            saved_cfg = read_config(path)
        except ExampleError:  # unreadable: nothing of a run to keep
            continue
        if saved_cfg != json.loads(json.dumps(ckpt_cfg[name.split("_")[0]], sort_keys=True)):
            raise ExampleError(f"{str(path)!r} was trained with another configuration; this run (preset {preset!r}) would overwrite it: "
                               "choose another --out, or delete that folder")


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What the stages share: the configuration, where they write, the data, and what each stage adds
    (models, metrics, training curves, figures)."""

    args: argparse.Namespace
    cfg: dict
    env: Env
    train_now: set[str]
    load_now: set[str]
    ckpt_cfg: dict[str, dict]
    train_set: ImageSet
    val_set: ImageSet
    metrics: dict
    curves: dict[str, list[float]] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    classifier: FeatureClassifier | None = None
    train_features: np.ndarray | None = None
    tokenizers: dict[str, Tokenizer] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.args.out

    @property
    def latent(self) -> int:
        return P.latent_size(self.train_set.image_shape[1])

    @property
    def evaluate_tokenizers(self) -> bool:
        return "tokenizers" in self.args.stages

    def log(self, msg: str) -> None:
        if self.env.is_main:
            tqdm.write(msg)

    @contextmanager
    def timed(self, name: str):
        t0 = time.perf_counter()
        yield
        self.metrics["seconds"][name] = round(time.perf_counter() - t0, 2)

    def load_or_train(self, name: str, curve: str, build, fit) -> nn.Module:
        """Model ``name``: loaded from its checkpoint into ``build()`` (with its training losses) when the plan
        says so, else ``fit() -> (model, losses)`` and saved (rank 0)."""
        path = self.out / "checkpoints" / f"{name}.safetensors"
        config = self.ckpt_cfg[name.split("_")[0]]
        if name in self.load_now:
            model = build().to(self.env.device)
            info = load_checkpoint(path, model, config, MISSING_HINT)
            if "losses" in info:
                self.curves[curve] = info["losses"]
        else:
            model, self.curves[curve] = fit()
            if self.env.is_main:
                save_checkpoint(path, model, config, losses=self.curves[curve])
        return model


def prepare(args: argparse.Namespace) -> Run:
    """Configuration, data and the plan of what to train or load; checks the output folder and every checkpoint to load
    before any training starts."""
    cfg = PRESETS[args.preset]
    ckpt = args.out / "checkpoints"
    env = setup_env(args.device, args.threads)
    train_now, load_now = plan_models(args.stages, args.resume, ckpt)
    train_set, val_set = load_digits_split(n_val_per_class=cfg["n_val_per_class"], seed=cfg["seed"])
    ckpt_cfg = checkpoint_configs(cfg, train_set)
    refuse_another_run(args.out, args.preset, cfg, ckpt_cfg, train_now)
    check_output_dir(args.out)
    for name in sorted(load_now):
        read_checkpoint(ckpt / f"{name}.safetensors", ckpt_cfg[name.split("_")[0]], MISSING_HINT)
    metrics = {
        "config": dict(preset=args.preset, command=args.command, stages=list(args.stages), world_size=env.world,
                       threads=torch.get_num_threads(), device=str(env.device), torch=torch.__version__,
                       ar_vocab_sizes=P.group_vocab_sizes(cfg["levels"], cfg["index_groups"]),
                       data=dict(train=len(train_set), val=len(val_set)), **copy.deepcopy(cfg)),
        "seconds": {},
    }
    return Run(args, cfg, env, train_now, load_now, ckpt_cfg, train_set, val_set, metrics)


def classifier_stage(run: Run) -> None:
    """1. The FD feature network / sample classifier, and the features of the training images."""
    cfg, env, train_set = run.cfg, run.env, run.train_set
    with run.timed("classifier"):
        run.classifier = run.load_or_train(
            "classifier", "classifier",
            build=lambda: P.build_classifier(cfg["classifier"], train_set.image_shape, cfg["seed"]),
            fit=lambda: P.train_classifier(train_set, cfg["classifier"], env, cfg["seed"])).eval()
        run.train_features = extract_features(run.classifier, train_set.images)
        run.metrics["classifier"] = dict(val_accuracy=class_accuracy(run.classifier, run.val_set.images, run.val_set.labels))
        run.log(f"classifier: validation accuracy {run.metrics['classifier']['val_accuracy']:.3f}")


def tokenizer_stage(run: Run, kinds: list[str]) -> None:
    """2. The tokenizers of ``kinds`` (same initialization for FSQ and iFSQ); with the ``tokenizers`` stage listed,
    their validation metrics, figures and the FD baselines."""
    cfg, env, seed = run.cfg, run.env, run.cfg["seed"]
    in_ch = run.train_set.image_shape[0]
    recons, bin_counts = {}, {}
    for kind in kinds:
        with run.timed(f"tokenizer_{kind}"):  # training usage summed over ranks (a no-op in one process)
            tok = run.load_or_train(
                f"tokenizer_{kind}", f"tokenizer {kind}",
                build=lambda kind=kind: P.build_tokenizer(kind, cfg["levels"], cfg["index_groups"], cfg["tokenizer"], in_ch, seed),
                fit=lambda kind=kind: P.train_tokenizer(kind, cfg["levels"], cfg["index_groups"], cfg["tokenizer"], run.train_set, env, seed))
            run.tokenizers[kind] = tok.eval()
        if env.is_main and run.evaluate_tokenizers:
            with run.timed(f"tokenizer_{kind}_eval"):
                m, recons[kind], bin_counts[kind] = P.evaluate_tokenizer(tok, run.val_set, env)
                train_usage = tok.usage.summary()
                m["train_usage"] = dict(samples=train_usage["samples"], utilization=train_usage["mean_utilization"])
                m["gaussian_utilization"] = P.gaussian_utilization(P.make_quantizer(kind, cfg), seed=seed)
                if run.classifier is not None:
                    m["fd_reconstruction"] = frechet_distance(extract_features(run.classifier, recons[kind]), run.train_features)
                run.metrics.setdefault("tokenizers", {})[kind] = m
                run.log(f"tokenizer {kind}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, utilization {m['utilization']:.3f}")
    if env.is_main and run.evaluate_tokenizers:
        every = len(run.val_set) // 16
        save_reconstruction_figure(run.out / "reconstructions.png", run.val_set.images[::every][:16], {k: v[::every][:16] for k, v in recons.items()})
        save_usage_figure(run.out / "bin_usage.png", bin_counts, cfg["levels"])
        run.figures["Reconstructions (validation): real, FSQ, iFSQ"] = "reconstructions.png"
        run.figures["Bin usage per latent dimension (validation), FSQ vs iFSQ; dashed: uniform"] = "bin_usage.png"
        if run.classifier is not None:
            baselines(run, recons["ifsq"])


def baselines(run: Run, ifsq_recon: torch.Tensor) -> None:
    """FD of real validation images, of the iFSQ reconstructions and of decoded uniformly random indices."""
    with run.timed("baselines"):
        random_images = P.random_token_images(run.tokenizers["ifsq"], run.cfg["num_samples"], run.latent, run.cfg["seed"], run.env)
        val_features = extract_features(run.classifier, run.val_set.images)
        run.metrics["baselines"] = b = dict(
            fd_real=frechet_distance(val_features, run.train_features),
            accuracy_real=run.metrics["classifier"]["val_accuracy"],
            fd_reconstruction=run.metrics["tokenizers"]["ifsq"]["fd_reconstruction"],
            accuracy_reconstruction=class_accuracy(run.classifier, ifsq_recon, run.val_set.labels),
            fd_random_tokens=frechet_distance(extract_features(run.classifier, random_images), run.train_features),
        )
        save_grid_figure(run.out / "random_tokens.png", [("decoded uniformly random indices", random_images[:100], 10)])
        run.figures["Baseline: decoded uniformly random indices"] = "random_tokens.png"
        run.log(f"baselines: FD real {b['fd_real']:.3f}, reconstruction {b['fd_reconstruction']:.3f}, random tokens {b['fd_random_tokens']:.3f}")


def sample_labels(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels every generator samples (balanced, class-major) and the indices of the figure's rows (up to 10 per class)."""
    labels = P.balanced_labels(cfg["num_samples"], 10)
    per_class = len(labels) // 10
    figure_idx = torch.cat([torch.arange(c * per_class, c * per_class + min(10, per_class)) for c in range(10)])
    return labels, figure_idx


def mean_loss(losses: list[float] | None) -> float | None:
    """The mean training loss of the last 50 steps (None without a curve)."""
    return float(np.mean(losses[-50:])) if losses else None


def ar_stage(run: Run) -> None:
    """3. The AR transformer on the iFSQ tokenizer's indices: FD, class accuracy, losses and a guidance sweep."""
    cfg, env, seed, tok, a = run.cfg, run.env, run.cfg["seed"], run.tokenizers["ifsq"], run.cfg["ar"]
    with run.timed("ar"):
        ar = run.load_or_train("ar", "ar", build=lambda: P.build_ar(tok, a, run.latent, seed),
                               fit=lambda: P.train_ar(tok, run.train_set, a, env, seed))
    if not env.is_main:
        return
    labels, figure_idx = sample_labels(cfg)
    with run.timed("ar_sampling"):
        val_tokens = P.encode_tokens(tok, run.val_set.images, env)

        def ar_images(cfg_scale: float) -> torch.Tensor:
            return P.sample_ar(ar, tok, labels, cfg_scale, seed, env, temperature=a["temperature"], top_k=a["top_k"], progress=True)

        images = ar_images(a["cfg_scale"])
        with torch.no_grad():
            val_loss = float(ar.eval().loss(run.val_set.labels.to(env.device), val_tokens.to(env.device)))
        m = run.metrics["ar"] = dict(P.generated_metrics(run.classifier, images, labels, run.train_features), cfg_scale=a["cfg_scale"],
                                     temperature=a["temperature"], top_k=a["top_k"], num_samples=len(labels),
                                     train_loss=mean_loss(run.curves.get("ar")), val_loss=val_loss)
        m["cfg_sweep"] = {str(c): P.generated_metrics(run.classifier, ar_images(c), labels, run.train_features)
                          for c in a["cfg_sweep"] if c != a["cfg_scale"]}
        save_grid_figure(run.out / "ar_samples.png", [(f"AR samples (guidance {a['cfg_scale']}), one row per class", images[figure_idx], 10)])
        run.figures["AR transformer samples, one row per class"] = "ar_samples.png"
        run.log(f"ar: FD {m['fd']:.3f}, accuracy {m['accuracy']:.3f}, validation loss {val_loss:.3f}")


def diffusion_stage(run: Run) -> None:
    """4. The DiT on the iFSQ tokenizer's codes: FD and accuracy as sampled and snapped to the grid, losses, a guidance sweep."""
    cfg, env, seed, tok, d = run.cfg, run.env, run.cfg["seed"], run.tokenizers["ifsq"], run.cfg["diffusion"]

    def fit() -> tuple[nn.Module, list[float]]:
        dit, normalizer, losses = P.train_dit(tok, run.train_set, d, env, seed)
        return nn.ModuleDict({"dit": dit, "normalizer": normalizer}), losses

    with run.timed("diffusion"):
        holder = run.load_or_train("diffusion", "diffusion", fit=fit, build=lambda: nn.ModuleDict(
            {"dit": P.build_dit(tok, d, run.latent, seed), "normalizer": LatentNormalizer(len(cfg["levels"]))}))
    if not env.is_main:
        return
    dit, normalizer = holder["dit"], holder["normalizer"]
    labels, figure_idx = sample_labels(cfg)
    with run.timed("diffusion_sampling"):

        def diffusion_codes(cfg_scale: float) -> torch.Tensor:
            return P.sample_dit(dit, normalizer, labels, d, seed, env, cfg_scale=cfg_scale, progress=True)

        def decode(codes: torch.Tensor) -> torch.Tensor:
            return P.decode_codes(tok, codes, env)

        sample_codes = diffusion_codes(d["cfg_scale"])
        snapped = snap_to_grid(sample_codes, tok.quantizer)
        images, images_snapped = decode(sample_codes), decode(snapped)
        m = P.generated_metrics(run.classifier, images, labels, run.train_features)
        ms = P.generated_metrics(run.classifier, images_snapped, labels, run.train_features)
        val_codes = P.encode_codes(tok, run.val_set.images, env)
        with torch.no_grad():
            val_loss = float(dit.eval().loss(normalizer.normalize(val_codes.to(env.device)), run.val_set.labels.to(env.device),
                                             generator=torch.Generator(env.device).manual_seed(seed + 4)))
        run.metrics["diffusion"] = dict(m, fd_snapped=ms["fd"], accuracy_snapped=ms["accuracy"], cfg_scale=d["cfg_scale"],
                                        sampler=d["sampler"], sample_steps=d["sample_steps"], num_samples=len(labels),
                                        mean_snap_distance=float((snapped - sample_codes).abs().mean()),
                                        train_loss=mean_loss(run.curves.get("diffusion")), val_loss=val_loss)
        run.metrics["diffusion"]["cfg_sweep"] = {str(c): P.generated_metrics(run.classifier, decode(diffusion_codes(c)), labels, run.train_features)
                                                 for c in d["cfg_sweep"] if c != d["cfg_scale"]}
        save_grid_figure(run.out / "diffusion_samples.png", [("DiT samples (continuous codes)", images[figure_idx], 10),
                                                              ("the same, snapped to the FSQ grid", images_snapped[figure_idx], 10)])
        run.figures["Diffusion (DiT, flow matching) samples, one row per class: continuous / snapped to the grid"] = "diffusion_samples.png"
        run.log(f"diffusion: FD {m['fd']:.3f} (snapped {ms['fd']:.3f}), accuracy {m['accuracy']:.3f} (snapped {ms['accuracy']:.3f}), "
                f"validation loss {val_loss:.3f}")


def patches_stage(run: Run, kinds: list[str]) -> None:
    """5. (full preset) FSQ and iFSQ tokenizers on natural 32x32 patches, measured on held-out photographs."""
    cfg, env, seed = run.cfg, run.env, run.cfg["seed"]
    patch_train, patch_val = load_patches_split(seed=seed)
    for kind in kinds:
        with run.timed(f"patches_{kind}"):
            tok, run.curves[f"patches {kind}"] = P.train_tokenizer(kind, cfg["levels"], cfg["index_groups"], cfg["patches"], patch_train, env,
                                                                   seed, f"patch tokenizer {kind}")
            if env.is_main:
                save_checkpoint(run.out / "checkpoints" / f"patch_tokenizer_{kind}.safetensors", tok, dict(model=cfg["patches"], seed=seed),
                                losses=run.curves[f"patches {kind}"])
                m, recon, _ = P.evaluate_tokenizer(tok, patch_val, env)
                run.metrics.setdefault("tokenizers_patches", {})[kind] = m
                if kind == "ifsq":
                    save_grid_figure(run.out / "patch_reconstructions.png", [("held-out patches", patch_val.images[:32], 4),
                                                                              ("iFSQ reconstructions", recon[:32], 4)])
                    run.figures["Natural patches: held-out photographs, iFSQ reconstructions"] = "patch_reconstructions.png"


def write_outputs(run: Run) -> None:
    """metrics.json, report.md, the training curves and the summary on the terminal (rank 0)."""
    if run.curves:
        save_curves_figure(run.out / "training_curves.png", run.curves)
        run.figures["Training curves"] = "training_curves.png"
    (run.out / "metrics.json").write_text(json.dumps(run.metrics, indent=2))
    write_report(run.out, run.metrics, run.figures)
    rows = summary_rows(run.metrics)
    width = max(len(r[0]) for r in rows) if rows else 0
    print(f"\n== ifsq-quant end to end, preset {run.args.preset}: {run.out} ==")
    if run.args.preset == "smoke":
        print(f"  ({SMOKE_NOTE})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def run(args: argparse.Namespace) -> dict:
    """Every listed stage (and the models later stages need), then the outputs -> metrics."""
    t_start = time.perf_counter()
    r = prepare(args)
    have = r.train_now | r.load_now
    kinds = [k for k in ("fsq", "ifsq") if f"tokenizer_{k}" in have]
    if "classifier" in have:
        classifier_stage(r)
    if kinds:
        tokenizer_stage(r, kinds)
    if "ar" in have:
        ar_stage(r)
    if "diffusion" in have:
        diffusion_stage(r)
    if r.cfg["patches"] and r.evaluate_tokenizers:
        patches_stage(r, kinds)
    r.metrics["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    if r.env.is_main:
        write_outputs(r)
    if r.env.distributed:
        dist.barrier()
    return r.metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ExampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            again = args.command if args.resume else f"{args.command} --resume"
            print(f"\ninterrupted: the finished stages are checkpointed in {args.out / 'checkpoints'}; to continue: {again}", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
