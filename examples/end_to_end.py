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
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a script: make `import examples.x` work from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.ar import ARTransformer  # noqa: E402
from examples.data import ImageSet, load_digits_split, load_patches_split  # noqa: E402
from examples.diffusion import DiT, LatentNormalizer, snap_to_grid  # noqa: E402
from examples.metrics import FeatureClassifier, class_accuracy, extract_features, frechet_distance, psnr, ssim  # noqa: E402
from examples.tokenizer import Tokenizer  # noqa: E402
from ifsq_quant import FSQ, CodeUsage, iFSQ  # noqa: E402

STAGES = ("classifier", "tokenizers", "ar", "diffusion")
TRAINING_KEYS = ("steps", "batch_size", "lr", "weight_decay")

# Every number that changes the result lives here (and is written to metrics.json).
_BASE = dict(
    seed=0,
    levels=[17, 17, 17, 17],  # ~4 bits per latent dimension, as in the paper
    index_groups=[2, 2],  # AR vocabularies: 17*17 = 289 per group
    n_val_per_class=30,
    classifier=dict(steps=300, batch_size=64, lr=2e-3, width=32, feature_dim=64),
    tokenizer=dict(steps=600, batch_size=64, lr=2e-3, channels=[16, 32, 64], blocks=1, l1_weight=0.0, l2_weight=1.0),
    ar=dict(steps=1200, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, class_dropout=0.1, dropout=0.1,
            cfg_scale=2.0, temperature=1.0, top_k=None, cfg_sweep=[1.0, 1.5, 3.0]),
    diffusion=dict(steps=1500, batch_size=64, lr=1e-3, dim=128, depth=4, heads=4, patch_size=1, class_dropout=0.1,
                   cfg_scale=1.25, sample_steps=16, sampler="heun", cfg_sweep=[1.0, 2.0]),
    num_samples=300,  # generated images per generator (= validation size: FD bias depends on n)
    patches=None,  # natural-patch tokenizers (full only)
)


def _preset(**changes) -> dict:
    cfg = copy.deepcopy(_BASE)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


PRESETS: dict[str, dict] = {
    "smoke": _preset(
        classifier=dict(steps=60),
        tokenizer=dict(steps=60),
        ar=dict(steps=40, dim=64, depth=2, cfg_sweep=[]),
        diffusion=dict(steps=40, dim=64, depth=2, sample_steps=6, cfg_sweep=[]),
        num_samples=100,
    ),
    "quick": _preset(),
    "full": _preset(  # about 2.5 h on one thread of the 2-core CPU; pass --threads 0 on a dedicated machine
        classifier=dict(steps=1000),
        tokenizer=dict(steps=3000, channels=[32, 64, 128]),
        ar=dict(steps=5000, dim=192, depth=6, heads=6, cfg_sweep=[1.0, 1.5, 2.5, 3.0, 4.0]),
        diffusion=dict(steps=6000, dim=192, depth=6, heads=6, sample_steps=32, cfg_sweep=[1.0, 1.5, 2.0, 3.0]),
        patches=dict(steps=2000, batch_size=64, lr=2e-3, channels=[32, 64, 64], blocks=1, l1_weight=0.0, l2_weight=1.0),
    ),
}


class ExampleError(Exception):
    """A problem with the command line, the output folder or a checkpoint: printed, no traceback."""


# ----------------------------------------------------------------------------- setup


@dataclass
class Env:
    """Where this process runs: rank/world of torch.distributed (0/1 when not distributed)."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_env(device: str, threads: int | None) -> Env:
    """Initializes torch.distributed when launched by torchrun; picks the device and threads."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ExampleError("--device cuda was requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.set_num_threads(threads if threads else max(1, (os.cpu_count() or 1) // world))  # 0: all cores
    return Env(rank=rank, world=world, device=dev)


def check_output_dir(out: Path) -> None:
    """Creates ``out`` (and ``out/checkpoints``) and proves it is writable, or raises ExampleError."""
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ExampleError(f"output folder {str(out)!r} is not writable: {e.strerror or e}") from None


def save_checkpoint(path: Path, module: nn.Module, config: dict) -> None:
    """state_dict -> safetensors file, with ``config`` as JSON metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(config, sort_keys=True)})


def read_checkpoint(path: Path, config: dict) -> dict[str, torch.Tensor]:
    """Reads and validates a checkpoint written by ``save_checkpoint`` for ``config``.

    Raises ExampleError if the file is missing, is not a readable safetensors file, or was
    written for a different configuration.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise ExampleError(f"checkpoint {str(path)!r} not found; run its stage first (see --stages)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise ExampleError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file ({type(e).__name__}: {e})") from None
    try:
        saved = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise ExampleError(f"checkpoint {str(path)!r} has no readable configuration metadata; delete it and retrain") from None
    if saved != json.loads(json.dumps(config, sort_keys=True)):
        raise ExampleError(f"checkpoint {str(path)!r} was written for another configuration ({saved}); expected {config}")
    return state


def load_checkpoint(path: Path, module: nn.Module, config: dict) -> None:
    state = read_checkpoint(path, config)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ExampleError(f"checkpoint {str(path)!r} does not fit the model: {e}") from None


# ----------------------------------------------------------------------------- training


class LossModule(nn.Module):
    """Wraps ``model`` so that ``forward(*batch)`` returns ``loss_fn(model, *batch)``.

    DistributedDataParallel synchronizes gradients only for computations that run through
    its ``forward``; wrapping the loss lets every model keep its own ``loss`` method.
    """

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, *batch)


def train(model: nn.Module, loss_fn, tensors: tuple[torch.Tensor, ...], cfg: dict, env: Env, seed: int, desc: str,
          callback=None, callback_every: int = 0) -> list[float]:
    """A plain training loop; returns the loss of every step (this rank's batch).

    tensors: the training set, each (n, ...); batches of ``cfg["batch_size"]`` (global;
    ``batch_size / world`` per rank) are drawn by a DistributedSampler (shuffled each epoch).
    AdamW, linear warm-up then cosine decay of the learning rate, gradient clipping at 1.

    ``callback(step, model)``, if given, runs after every ``callback_every``-th step (and
    after the last), with the model in eval mode and the global RNG state saved and
    restored around it, so that evaluating along the way does not change the training.
    """
    steps, batch_size, lr = cfg["steps"], cfg["batch_size"], cfg["lr"]
    if batch_size % env.world:
        raise ExampleError(f"{desc}: batch_size={batch_size} is not divisible by the {env.world} processes")
    dataset = TensorDataset(*tensors)
    sampler = DistributedSampler(dataset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size // env.world, sampler=sampler, drop_last=True)
    wrapped: nn.Module = LossModule(model, loss_fn)
    if env.distributed:  # no buffer broadcast: the models have no running statistics, and usage counts stay per rank
        wrapped = DistributedDataParallel(wrapped, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                          broadcast_buffers=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=cfg.get("weight_decay", 0.0))
    warmup = min(100, max(1, steps // 10))
    torch.manual_seed(seed + 1000 * env.rank)  # dropout / noise streams: fixed, distinct per rank
    model.train()
    losses: list[float] = []
    epoch, batches = 0, None
    bar = tqdm(range(steps), desc=desc, disable=not env.is_main, mininterval=1.0, dynamic_ncols=True)
    for step in bar:
        if batches is None:
            sampler.set_epoch(epoch)
            batches = iter(loader)
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        step_lr = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        loss = wrapped(*(t.to(env.device) for t in batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if callback is not None and ((callback_every and (step + 1) % callback_every == 0) or step == steps - 1):
            rng = torch.get_rng_state()
            model.eval()
            callback(step + 1, model)
            model.train()
            torch.set_rng_state(rng)
    model.eval()
    return losses


def classifier_loss(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def tokenizer_loss(model: Tokenizer, images: torch.Tensor) -> torch.Tensor:
    return model.loss(images, model(images)[0])


def ar_loss(model: ARTransformer, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return model.loss(labels, tokens)


def diffusion_loss(model: DiT, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model.loss(latents, labels)


# ----------------------------------------------------------------------------- models


def make_quantizer(kind: str, cfg: dict) -> nn.Module:
    """The one line that differs between the two tokenizers."""
    quantizer_class = {"fsq": FSQ, "ifsq": iFSQ}[kind]
    return quantizer_class(levels=cfg["levels"], index_groups=cfg["index_groups"])


def make_tokenizer(kind: str, cfg: dict, tok_cfg: dict, in_channels: int) -> Tokenizer:
    return Tokenizer(make_quantizer(kind, cfg), in_channels=in_channels, channels=tuple(tok_cfg["channels"]),
                     blocks=tok_cfg["blocks"], l1_weight=tok_cfg["l1_weight"], l2_weight=tok_cfg["l2_weight"])


def group_vocab_sizes(levels: list[int], groups: list[int]) -> list[int]:
    sizes, start = [], 0
    for g in groups:
        sizes.append(math.prod(levels[start : start + g]))
        start += g
    return sizes


@torch.no_grad()
def batched(fn, *tensors: torch.Tensor, batch_size: int = 500, device: torch.device | None = None):
    """Applies ``fn`` to slices of ``tensors`` and concatenates the (tuple of) outputs on the CPU."""
    outs = []
    for i in range(0, len(tensors[0]), batch_size):
        out = fn(*(t[i : i + batch_size].to(device) if device else t[i : i + batch_size] for t in tensors))
        outs.append(tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu())
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """(n,) labels 0, 0, ..., 1, 1, ...: n // num_classes of each class (class-major)."""
    return torch.arange(num_classes).repeat_interleave(max(1, n // num_classes))


# ----------------------------------------------------------------------------- figures


def image_mosaic(images: torch.Tensor, rows: int) -> np.ndarray:
    """images (n, c, s, s) in [-1, 1] -> (rows*s, cols*s[, 3]) float in [0, 1], 1-pixel gaps."""
    n, c, s, _ = images.shape
    cols = math.ceil(n / rows)
    pad = 1
    canvas = np.ones(((s + pad) * rows - pad, (s + pad) * cols - pad, c), dtype=np.float32)
    imgs = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[r * (s + pad) : r * (s + pad) + s, q * (s + pad) : q * (s + pad) + s] = imgs[i]
    return canvas[..., 0] if c == 1 else canvas


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid_figure(path: Path, panels: list[tuple[str, torch.Tensor, int]], ylabel: str | None = None) -> None:
    """One image mosaic per panel (title, images (n, c, s, s), rows), side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (title, images, rows) in zip(axes[0], panels):
        ax.imshow(image_mosaic(images, rows), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_reconstruction_figure(path: Path, real: torch.Tensor, recons: dict[str, torch.Tensor]) -> None:
    """Rows: real validation images, then the reconstruction of each tokenizer."""
    plt = _pyplot()
    rows = [("real", real)] + [(f"{k.upper() if k == 'fsq' else 'iFSQ'} reconstruction", v) for k, v in recons.items()]
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 1.0 * len(rows) + 0.3))
    for ax, (title, images) in zip(np.atleast_1d(axes), rows):
        ax.imshow(image_mosaic(images, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_usage_figure(path: Path, counts: dict[str, np.ndarray], levels: list[int]) -> None:
    """Bin-usage histograms: counts[kind] (d, L) level frequencies, one subplot per dimension."""
    plt = _pyplot()
    d = len(levels)
    fig, axes = plt.subplots(1, d, figsize=(2.6 * d, 2.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        x = np.arange(levels[i])
        width = 0.8 / len(counts)
        for j, (kind, c) in enumerate(counts.items()):
            freq = c[i, : levels[i]] / max(1, c[i].sum())
            ax.bar(x + (j - (len(counts) - 1) / 2) * width, freq, width=width, label="FSQ (tanh)" if kind == "fsq" else "iFSQ (sigmoid)")
        ax.axhline(1.0 / levels[i], color="k", lw=0.8, ls="--")
        ax.set_title(f"latent dim {i}", fontsize=8)
        ax.set_xlabel("level index", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("frequency (validation)", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_curves_figure(path: Path, curves: dict[str, list[float]]) -> None:
    """Training loss per stage (moving average over 25 steps), log scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(2.8 * len(curves), 2.4), squeeze=False)
    for ax, (name, losses) in zip(axes[0], curves.items()):
        y = np.asarray(losses, dtype=np.float64)
        k = min(25, len(y))
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, lw=1)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_tokenizer(tok: Tokenizer, val: ImageSet, env: Env) -> tuple[dict, torch.Tensor, np.ndarray]:
    """Validation metrics of a tokenizer -> (metrics, reconstructions (n, c, s, s), bin counts (d, L))."""
    tok.eval()

    def reconstruct(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon, _, indices = tok(images)
        return recon.clamp(-1, 1), indices

    recon, indices = batched(reconstruct, val.images, device=env.device)
    usage = CodeUsage(levels=tok.levels)
    usage.update(tok.level_indices(indices.to(env.device)))
    summary = usage.summary()
    metrics = dict(
        psnr=psnr(recon, val.images),
        ssim=ssim(recon, val.images),
        utilization=summary["mean_utilization"],
        utilization_per_dim=summary["utilization"],
        bits_per_dim=summary["bits_per_dim"],
        bins_used=summary["bins_used"],
        codebook_usage=summary["codebook_usage"],
        perplexity=summary["perplexity"],
        codebook_size=summary["codebook_size"],
        tokens=summary["samples"],
    )
    return metrics, recon, usage.bin_counts.cpu().numpy()


@torch.no_grad()
def gaussian_utilization(quantizer: nn.Module, n: int = 65536, seed: int = 0) -> float:
    """Mean utilization of ``quantizer``'s levels on N(0, 1) inputs (the paper's premise, without an encoder)."""
    z = torch.randn(n, int(quantizer.codebook_dim), generator=torch.Generator().manual_seed(seed))
    _, indices = quantizer.eval()(z)
    usage = CodeUsage(levels=[int(v) for v in quantizer.levels])
    usage.update(quantizer.indices_to_level_indices(indices))
    return float(usage.utilization().mean())


def generated_metrics(classifier: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor, train_features: np.ndarray) -> dict:
    return dict(fd=frechet_distance(extract_features(classifier, images), train_features),
                accuracy=class_accuracy(classifier, images, labels))


# ----------------------------------------------------------------------------- report


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = []
    for kind, m in metrics.get("tokenizers", {}).items():
        name = "FSQ" if kind == "fsq" else "iFSQ"
        rows.append((f"{name} tokenizer PSNR / SSIM", f"{fmt(m['psnr'], 2)} dB / {fmt(m['ssim'])}"))
        rows.append((f"{name} utilization / codebook usage", f"{fmt(m['utilization'])} / {fmt(m['codebook_usage'], 4)}"))
    base = metrics.get("baselines", {})
    random_fd = base.get("fd_random_tokens")
    for name in ("ar", "diffusion"):
        if name in metrics:
            m = metrics[name]
            ratio = f" ({m['fd'] / random_fd:.3f} x random)" if random_fd else ""
            rows.append((f"{name} FD{ratio}", fmt(m["fd"])))
            rows.append((f"{name} class accuracy", fmt(m["accuracy"])))
            if "fd_snapped" in m:
                rows.append(("diffusion snapped FD / accuracy", f"{fmt(m['fd_snapped'])} / {fmt(m['accuracy_snapped'])}"))
    for key in ("fd_real", "fd_reconstruction", "fd_random_tokens"):
        if key in base:
            rows.append((key, fmt(base[key])))
    if "total" in metrics.get("seconds", {}):
        rows.append(("wall time", f"{metrics['seconds']['total']:.0f} s"))
    return rows


def write_report(out: Path, metrics: dict, figures: dict[str, str]) -> None:
    """report.md: configuration, tables and the figures (relative links)."""
    cfg = metrics["config"]
    lines = [f"# ifsq-quant end to end — preset `{cfg['preset']}`", ""]
    lines += [f"Digits 16x16 ({cfg['data']['train']} train / {cfg['data']['val']} validation), latents 4x4x{len(cfg['levels'])}, "
              f"levels {cfg['levels']}, index groups {cfg['index_groups']} (AR vocabularies {cfg['ar_vocab_sizes']}). "
              f"{cfg['world_size']} process(es), {cfg['threads']} thread(s) each, device {cfg['device']}, torch {cfg['torch']}.", ""]
    lines += [f"Command: `{cfg['command']}`", ""]
    if "tokenizers" in metrics:
        lines += ["## Tokenizers (validation)", "",
                  "| bottleneck | PSNR (dB) | SSIM | utilization | bits/dim | codebook usage | perplexity | FD of reconstructions |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, m in metrics["tokenizers"].items():
            lines.append(f"| {'FSQ (tanh)' if kind == 'fsq' else 'iFSQ (2·sigmoid(1.6z)−1)'} | {fmt(m['psnr'], 2)} | {fmt(m['ssim'])} | "
                         f"{fmt(m['utilization'])} | {fmt(float(np.mean(m['bits_per_dim'])), 2)} | {fmt(m['codebook_usage'], 4)} | "
                         f"{fmt(m['perplexity'], 0)} | {fmt(m.get('fd_reconstruction'))} |")
        lines += ["", "Utilization is the entropy of each latent dimension's level occupancy over log2(L), averaged over "
                  "dimensions; codebook usage is the fraction of the L^d codes used on the validation set.", ""]
        gauss = {k: m.get("gaussian_utilization") for k, m in metrics["tokenizers"].items()}
        if all(v is not None for v in gauss.values()):
            lines += ["Without an encoder, on N(0, 1) inputs, the bounds alone give utilization "
                      + ", ".join(f"{'FSQ' if k == 'fsq' else 'iFSQ'} {fmt(v)}" for k, v in gauss.items())
                      + " (for comparison: the trained encoders adapt their output distribution to the bound they are trained with).", ""]
    if "tokenizers_patches" in metrics:
        lines += ["## Tokenizers on natural 32x32 patches (held-out photographs)", "",
                  "| bottleneck | PSNR (dB) | SSIM | utilization |", "|---|---|---|---|"]
        for kind, m in metrics["tokenizers_patches"].items():
            lines.append(f"| {'FSQ' if kind == 'fsq' else 'iFSQ'} | {fmt(m['psnr'], 2)} | {fmt(m['ssim'])} | {fmt(m['utilization'])} |")
        lines.append("")
    base = metrics.get("baselines", {})
    if any(k in metrics for k in ("ar", "diffusion")) or base:
        random_fd = base.get("fd_random_tokens")
        lines += ["## Generators (class-conditional, on the iFSQ tokenizer)", "",
                  "Fréchet distance in the feature space of a small CNN trained on the real training digits "
                  f"(validation accuracy {fmt(metrics.get('classifier', {}).get('val_accuracy'))}), against the training images; "
                  "accuracy: fraction of samples that classifier assigns to the requested class.", "",
                  "| model | FD | FD / FD(random tokens) | class accuracy |", "|---|---|---|---|"]

        def row(name: str, fd: float | None, acc: float | None) -> str:
            ratio = fmt(fd / random_fd) if (fd is not None and random_fd) else "–"
            return f"| {name} | {fmt(fd)} | {ratio} | {fmt(acc)} |"

        if "fd_real" in base:
            lines.append(row("real validation images", base["fd_real"], base.get("accuracy_real")))
            lines.append(row("iFSQ reconstructions of validation", base["fd_reconstruction"], base.get("accuracy_reconstruction")))
            lines.append(row("decoded uniformly random indices", base["fd_random_tokens"], None))
        if "ar" in metrics:
            m = metrics["ar"]
            lines.append(row(f"AR transformer (guidance {m['cfg_scale']})", m["fd"], m["accuracy"]))
        if "diffusion" in metrics:
            m = metrics["diffusion"]
            lines.append(row(f"DiT, flow matching (guidance {m['cfg_scale']})", m["fd"], m["accuracy"]))
            lines.append(row("DiT samples snapped to the FSQ grid", m["fd_snapped"], m["accuracy_snapped"]))
        lines.append("")
        sweep = []
        for name, label in (("ar", "AR transformer"), ("diffusion", "DiT")):
            if name in metrics:
                m = metrics[name]
                points = {m["cfg_scale"]: m, **{float(c): v for c, v in m.get("cfg_sweep", {}).items()}}
                sweep += [row(f"{label}, guidance {c}", v["fd"], v["accuracy"]) for c, v in sorted(points.items())]
        if len(sweep) > 2:
            lines += ["### Classifier-free guidance", "", "Same models and seeds, only the guidance scale changes.", "",
                      "| model | FD | FD / FD(random tokens) | class accuracy |", "|---|---|---|---|", *sweep, ""]
        losses = [f"{label}: train {fmt(metrics[name].get('train_loss'))}, validation {fmt(metrics[name]['val_loss'])}"
                  for name, label in (("ar", "AR cross-entropy per index (nats)"), ("diffusion", "DiT flow-matching MSE")) if name in metrics]
        if losses:
            lines += ["Final losses — " + "; ".join(losses) + ". A validation loss far above the training loss means the "
                      "generator has largely memorized the training digits (1,497 images).", ""]
    if metrics.get("seconds"):
        lines += ["## Time (seconds)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in metrics["seconds"].items()]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for title, name in figures.items():
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines))


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
        torch.manual_seed(seed)
        classifier = FeatureClassifier(**model_cfgs["classifier"]).to(env.device)
        if "classifier" in load_now:
            load_checkpoint(ckpt / "classifier.safetensors", classifier, ckpt_cfg["classifier"])
        else:
            curves["classifier"] = train(classifier, classifier_loss, (train_set.images, train_set.labels), cfg["classifier"], env,
                                         seed, "classifier")
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
            torch.manual_seed(seed)  # same initialization for FSQ and iFSQ
            tok = make_tokenizer(kind, cfg, cfg["tokenizer"], in_ch).to(env.device)
            path = ckpt / f"tokenizer_{kind}.safetensors"
            if f"tokenizer_{kind}" in load_now:
                load_checkpoint(path, tok, ckpt_cfg["tokenizer"])
            else:
                curves[f"tokenizer {kind}"] = train(tok, tokenizer_loss, (train_set.images,), cfg["tokenizer"], env, seed, f"tokenizer {kind}")
                tok.usage.all_reduce()  # training usage summed over ranks (a no-op in one process)
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
            gen = torch.Generator().manual_seed(seed + 1)
            random_indices = torch.stack([torch.randint(0, v, (n, latent, latent), generator=gen) for v in vocab_sizes], dim=-1)
            random_images = batched(lambda i: tokenizers["ifsq"].decode_indices(i).clamp(-1, 1), random_indices, device=env.device)
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
        indices = batched(lambda x: ifsq_tok.encode(x)[1], train_set.images, device=env.device)  # (n, h, w, G)
        tokens = indices.reshape(len(train_set), latent * latent, -1)  # raster order
        torch.manual_seed(seed)
        ar = ARTransformer(**model_cfgs["ar"]).to(env.device)
        if "ar" in load_now:
            load_checkpoint(ckpt / "ar.safetensors", ar, ckpt_cfg["ar"])
        else:
            curves["ar"] = train(ar, ar_loss, (train_set.labels, tokens), cfg["ar"], env, seed, "ar")
            if env.is_main:
                save_checkpoint(ckpt / "ar.safetensors", ar, ckpt_cfg["ar"])
        timed("ar", t0)
        if env.is_main:
            t0 = time.perf_counter()
            a = cfg["ar"]
            val_tokens = batched(lambda x: ifsq_tok.encode(x)[1], val_set.images, device=env.device).reshape(len(val_set), latent * latent, -1)

            def ar_images(cfg_scale: float) -> torch.Tensor:
                gen = torch.Generator(env.device).manual_seed(seed + 2)
                sampled = ar.sample(labels.to(env.device), cfg_scale=cfg_scale, temperature=a["temperature"], top_k=a["top_k"],
                                    generator=gen, progress=True)
                return batched(lambda i: ifsq_tok.decode_indices(i).clamp(-1, 1), sampled.reshape(len(labels), latent, latent, -1),
                               device=env.device)

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
        codes = batched(lambda x: ifsq_tok.encode(x)[0], train_set.images, device=env.device)  # (n, d, h, w)
        torch.manual_seed(seed)
        dit = DiT(**model_cfgs["diffusion"]).to(env.device)
        normalizer = LatentNormalizer(codes.shape[1]).fit(codes).to(env.device)
        holder = nn.ModuleDict({"dit": dit, "normalizer": normalizer})
        if "diffusion" in load_now:
            load_checkpoint(ckpt / "diffusion.safetensors", holder, ckpt_cfg["diffusion"])
        else:
            latents = normalizer.normalize(codes.to(env.device)).cpu()
            curves["diffusion"] = train(dit, diffusion_loss, (latents, train_set.labels), cfg["diffusion"], env, seed, "diffusion")
            if env.is_main:
                save_checkpoint(ckpt / "diffusion.safetensors", holder, ckpt_cfg["diffusion"])
        timed("diffusion", t0)
        if env.is_main:
            t0 = time.perf_counter()
            dcfg = cfg["diffusion"]

            def diffusion_codes(cfg_scale: float) -> torch.Tensor:
                gen = torch.Generator(env.device).manual_seed(seed + 3)
                x = dit.sample(labels.to(env.device), steps=dcfg["sample_steps"], cfg_scale=cfg_scale, method=dcfg["sampler"],
                               generator=gen, progress=True)
                return normalizer.denormalize(x)

            def decode(codes: torch.Tensor) -> torch.Tensor:
                return batched(lambda c: ifsq_tok.decode(c).clamp(-1, 1), codes, device=env.device)

            sample_codes = diffusion_codes(dcfg["cfg_scale"])
            snapped = snap_to_grid(sample_codes, ifsq_tok.quantizer)
            images, images_snapped = decode(sample_codes), decode(snapped)
            m = generated_metrics(classifier, images, labels, train_features)
            ms = generated_metrics(classifier, images_snapped, labels, train_features)
            val_codes = batched(lambda x: ifsq_tok.encode(x)[0], val_set.images, device=env.device)
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
            torch.manual_seed(seed)
            tok = make_tokenizer(kind, cfg, cfg["patches"], patch_train.image_shape[0]).to(env.device)
            curves[f"patches {kind}"] = train(tok, tokenizer_loss, (patch_train.images,), cfg["patches"], env, seed, f"patch tokenizer {kind}")
            tok.usage.all_reduce()
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
