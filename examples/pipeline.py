"""The examples' pipeline: the models of the end-to-end chain built, trained, sampled and evaluated, one function per stage.

``examples/end_to_end.py`` (the demo) and the studies under ``studies/`` both build on it::

    from examples import pipeline as P
    from examples.data import load_digits_split
    from examples.presets import PRESETS
    from examples.training import CPU

    cfg = PRESETS["quick"]
    train_set, val_set = load_digits_split()
    classifier, _ = P.train_classifier(train_set, cfg["classifier"], CPU, seed=0)
    tok, _ = P.train_tokenizer("ifsq", [17] * 4, [2, 2], cfg["tokenizer"], train_set, CPU, seed=0)
    ar, _ = P.train_ar(tok, train_set, cfg["ar"], CPU, seed=0)
    images = P.sample_ar(ar, tok, P.balanced_labels(100, 10), cfg_scale=2.0, seed=0, env=CPU)
    dit, normalizer, _ = P.train_dit(tok, train_set, cfg["diffusion"], CPU, seed=0)
    codes = P.sample_dit(dit, normalizer, P.balanced_labels(100, 10), cfg["diffusion"], seed=0, env=CPU)
    images = P.decode_codes(tok, codes, CPU)

Every model is built by a ``build_*`` function under ``torch.manual_seed(seed)`` (so the
same seed gives the same initialization whether the model is then trained or loaded from a
checkpoint) and trained by ``examples.training.train`` (AdamW, warm-up + cosine, gradient
clipping; under ``torchrun`` with DistributedDataParallel). Run from the repository root
(``python -m ...``) so that ``examples`` is importable as a package.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from examples.ar import ARTransformer
from examples.data import ImageSet
from examples.diffusion import DiT, LatentNormalizer
from examples.metrics import FeatureClassifier, class_accuracy, extract_features, frechet_distance, psnr, ssim
from examples.tokenizer import Tokenizer
from examples.training import Env, train
from ifsq_quant import FSQ, CodeUsage, iFSQ

# ----------------------------------------------------------------------------- losses


def classifier_loss(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def tokenizer_loss(model: Tokenizer, images: torch.Tensor) -> torch.Tensor:
    return model.loss(images, model(images)[0])


def ar_loss(model: ARTransformer, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return model.loss(labels, tokens)


def diffusion_loss(model: DiT, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model.loss(latents, labels)


# ----------------------------------------------------------------------------- models


QUANTIZER_KINDS = ("fsq", "ifsq", "erf_equal")


def make_quantizer(kind: str, cfg: dict) -> nn.Module:
    """The one line that differs between the tokenizers: ``"fsq"`` (tanh), ``"ifsq"`` (2*sigmoid(1.6 z) - 1),
    ``"erf_equal"`` (erf(z / sqrt 2) with equal-width bins: exactly uniform level use on N(0, 1) input)."""
    if kind == "fsq":
        return FSQ(levels=cfg["levels"], index_groups=cfg["index_groups"])
    if kind == "ifsq":
        return iFSQ(levels=cfg["levels"], index_groups=cfg["index_groups"])
    if kind == "erf_equal":
        return FSQ(levels=cfg["levels"], index_groups=cfg["index_groups"], activation="erf", bins="equal", eps=0.0)
    raise ValueError(f"unknown quantizer kind {kind!r}; expected one of {QUANTIZER_KINDS}")


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


# ----------------------------------------------------------------------------- stages


def build_classifier(cls_cfg: dict, image_shape: tuple[int, int, int], seed: int, num_classes: int = 10) -> FeatureClassifier:
    """The FD feature network / sample classifier, initialized under ``seed``."""
    torch.manual_seed(seed)
    return FeatureClassifier(in_channels=image_shape[0], image_size=image_shape[1], num_classes=num_classes, width=cls_cfg["width"],
                             feature_dim=cls_cfg["feature_dim"])


def train_classifier(train_set: ImageSet, cls_cfg: dict, env: Env, seed: int, desc: str = "classifier"
                     ) -> tuple[FeatureClassifier, list[float]]:
    """Stage 1: the classifier trained on ``train_set`` -> (model in eval mode, losses)."""
    model = build_classifier(cls_cfg, train_set.image_shape, seed, train_set.num_classes).to(env.device)
    losses = train(model, classifier_loss, (train_set.images, train_set.labels), cls_cfg, env, seed, desc)
    return model.eval(), losses


def build_tokenizer(kind: str, levels: list[int], index_groups: list[int], tok_cfg: dict, in_channels: int, seed: int) -> Tokenizer:
    """A tokenizer with bottleneck ``kind`` (see ``make_quantizer``), initialized under ``seed``."""
    torch.manual_seed(seed)  # same initialization for every bottleneck
    return make_tokenizer(kind, dict(levels=list(levels), index_groups=list(index_groups)), tok_cfg, in_channels)


def train_tokenizer(kind: str, levels: list[int], index_groups: list[int], tok_cfg: dict, train_set: ImageSet, env: Env, seed: int,
                    desc: str | None = None, callback=None, callback_every: int = 0) -> tuple[Tokenizer, list[float]]:
    """Stage 2: an autoencoder with bottleneck ``kind`` trained on ``train_set`` -> (model in eval mode, losses).

    The training usage counts are all-reduced over the ranks (a no-op in one process).
    ``callback(step, tok)`` runs every ``callback_every`` steps, as in :func:`train`.
    """
    tok = build_tokenizer(kind, levels, index_groups, tok_cfg, train_set.image_shape[0], seed).to(env.device)
    losses = train(tok, tokenizer_loss, (train_set.images,), tok_cfg, env, seed, desc or f"tokenizer {kind}",
                   callback=callback, callback_every=callback_every)
    tok.usage.all_reduce()
    return tok.eval(), losses


def encode_tokens(tok: Tokenizer, images: torch.Tensor, env: Env | None = None) -> torch.Tensor:
    """images (n, c, s, s) -> AR sequences (n, h*w, G) of the tokenizer's group indices, raster order."""
    indices = batched(lambda x: tok.encode(x)[1], images, device=env.device if env else None)  # (n, h, w, G)
    return indices.reshape(len(images), -1, indices.shape[-1])


def encode_codes(tok: Tokenizer, images: torch.Tensor, env: Env | None = None) -> torch.Tensor:
    """images (n, c, s, s) -> continuous codes on the grid (n, d, h, w)."""
    return batched(lambda x: tok.encode(x)[0], images, device=env.device if env else None)


def latent_size(image_size: int) -> int:
    """Side of a tokenizer's latent grid for square images of side ``image_size`` (two x2 downsamplings)."""
    return image_size // 4


def build_ar(tok: Tokenizer, ar_cfg: dict, latent: int, seed: int, num_classes: int = 10, repa_dim: int = 0) -> ARTransformer:
    """The class-conditional AR transformer over ``tok``'s group indices, initialized under ``seed``.

    ``repa_dim > 0`` adds the REPA projector (to features of that size); ``ar_cfg`` may set
    ``repa_layer`` and ``repa_weight`` (see ``examples/ar.py``).
    """
    vocab = group_vocab_sizes(tok.levels, list(tok.quantizer.index_groups))
    repa = dict(repa_dim=repa_dim, repa_layer=ar_cfg.get("repa_layer"), repa_weight=ar_cfg.get("repa_weight", 0.5)) if repa_dim else {}
    torch.manual_seed(seed)
    return ARTransformer(vocab_sizes=vocab, seq_len=latent * latent, num_classes=num_classes,
                         **{k: ar_cfg[k] for k in ("dim", "depth", "heads", "class_dropout", "dropout")}, **repa)


@torch.no_grad()
def repa_targets(encoder: FeatureClassifier, images: torch.Tensor, env: Env | None = None) -> torch.Tensor:
    """REPA targets: the frozen ``encoder``'s last conv feature map (b, C, s/4, s/4) per latent position -> (n, (s/4)^2, C).

    Raster order, like the AR sequence; each channel is centred by its mean over ``images``
    (the ReLU features are all >= 0, and cosine similarity to an uncentred target mostly
    measures the mean).
    """
    encoder.eval()
    feats = batched(lambda x: encoder.convs(x).flatten(2).transpose(1, 2), images, device=env.device if env else None)
    return feats - feats.mean(dim=(0, 1), keepdim=True)


def ar_repa_loss(model: ARTransformer, labels: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return model.loss(labels, tokens, targets)


def train_ar(tok: Tokenizer, train_set: ImageSet, ar_cfg: dict, env: Env, seed: int, desc: str = "ar", callback=None,
             callback_every: int = 0, repa_encoder: FeatureClassifier | None = None) -> tuple[ARTransformer, list[float]]:
    """Stage 3: the AR transformer trained on ``tok``'s indices of ``train_set`` -> (model in eval mode, losses).

    ``repa_encoder``: a frozen image encoder (never the evaluation network) whose features of the
    training images the model's hidden states are aligned to (LlamaGen-REPA, ``repa_targets``).
    """
    tokens = encode_tokens(tok, train_set.images, env)
    latent = latent_size(train_set.image_shape[1])
    if repa_encoder is None:
        ar = build_ar(tok, ar_cfg, latent, seed, train_set.num_classes).to(env.device)
        data, loss_fn = (train_set.labels, tokens), ar_loss
    else:
        targets = repa_targets(repa_encoder, train_set.images, env)
        ar = build_ar(tok, ar_cfg, latent, seed, train_set.num_classes, repa_dim=targets.shape[-1]).to(env.device)
        data, loss_fn = (train_set.labels, tokens, targets), ar_repa_loss
    losses = train(ar, loss_fn, data, ar_cfg, env, seed, desc, callback=callback, callback_every=callback_every)
    return ar.eval(), losses


def sample_ar(ar: ARTransformer, tok: Tokenizer, labels: torch.Tensor, cfg_scale: float, seed: int, env: Env, temperature: float = 1.0,
              top_k: int | None = None, progress: bool = False) -> torch.Tensor:
    """Class-conditional AR samples for ``labels`` (n,), decoded -> images (n, c, s, s) in [-1, 1].

    The sampling noise comes from a generator seeded with ``seed + 2``.
    """
    latent = math.isqrt(ar.seq_len)
    gen = torch.Generator(env.device).manual_seed(seed + 2)
    sampled = ar.sample(labels.to(env.device), cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, generator=gen, progress=progress)
    return batched(lambda i: tok.decode_indices(i).clamp(-1, 1), sampled.reshape(len(labels), latent, latent, -1), device=env.device)


def build_dit(tok: Tokenizer, dit_cfg: dict, latent: int, seed: int, num_classes: int = 10) -> DiT:
    """The class-conditional DiT over ``tok``'s continuous codes, initialized under ``seed``."""
    torch.manual_seed(seed)
    return DiT(in_channels=tok.latent_dim, input_size=latent, num_classes=num_classes,
               **{k: dit_cfg[k] for k in ("dim", "depth", "heads", "patch_size", "class_dropout")})


def train_dit(tok: Tokenizer, train_set: ImageSet, dit_cfg: dict, env: Env, seed: int, desc: str = "diffusion", callback=None,
              callback_every: int = 0) -> tuple[DiT, LatentNormalizer, list[float]]:
    """Stage 4: the DiT (flow matching) on ``tok``'s normalized codes of ``train_set`` -> (model, normalizer, losses)."""
    codes = encode_codes(tok, train_set.images, env)
    dit = build_dit(tok, dit_cfg, latent_size(train_set.image_shape[1]), seed, train_set.num_classes).to(env.device)
    normalizer = LatentNormalizer(codes.shape[1]).fit(codes).to(env.device)
    latents = normalizer.normalize(codes.to(env.device)).cpu()
    losses = train(dit, diffusion_loss, (latents, train_set.labels), dit_cfg, env, seed, desc, callback=callback, callback_every=callback_every)
    return dit.eval(), normalizer, losses


def sample_dit(dit: DiT, normalizer: LatentNormalizer, labels: torch.Tensor, dit_cfg: dict, seed: int, env: Env,
               cfg_scale: float | None = None, progress: bool = False) -> torch.Tensor:
    """Class-conditional DiT samples for ``labels`` (n,) -> continuous codes (n, d, h, w) (not snapped).

    ``dit_cfg`` gives ``sample_steps``, ``sampler`` and the default ``cfg_scale``; the noise
    comes from a generator seeded with ``seed + 3``.
    """
    gen = torch.Generator(env.device).manual_seed(seed + 3)
    x = dit.sample(labels.to(env.device), steps=dit_cfg["sample_steps"], cfg_scale=dit_cfg["cfg_scale"] if cfg_scale is None else cfg_scale,
                   method=dit_cfg["sampler"], generator=gen, progress=progress)
    return normalizer.denormalize(x)


def decode_codes(tok: Tokenizer, codes: torch.Tensor, env: Env | None = None) -> torch.Tensor:
    """codes (n, d, h, w) -> images (n, c, s, s) clamped to [-1, 1]."""
    return batched(lambda c: tok.decode(c).clamp(-1, 1), codes, device=env.device if env else None)


def random_token_images(tok: Tokenizer, n: int, latent: int, seed: int, env: Env | None = None) -> torch.Tensor:
    """Decoded uniformly random indices (a baseline): (n, c, s, s); indices drawn from a generator seeded with ``seed + 1``."""
    vocab_sizes = group_vocab_sizes(tok.levels, list(tok.quantizer.index_groups))
    gen = torch.Generator().manual_seed(seed + 1)
    indices = torch.stack([torch.randint(0, v, (n, latent, latent), generator=gen) for v in vocab_sizes], dim=-1)
    return batched(lambda i: tok.decode_indices(i).clamp(-1, 1), indices, device=env.device if env else None)
