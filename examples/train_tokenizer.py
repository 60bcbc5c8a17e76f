"""Train an FSQ or iFSQ image tokenizer on a folder of your own images, then turn the folder into token indices.

    python -m examples.train_tokenizer train --images photos/ --out runs/tok --quantizer ifsq --epochs 20
    python -m examples.train_tokenizer train --images photos/ --out runs/tok --epochs 30 --resume   # 10 epochs more
    python -m examples.train_tokenizer encode --images photos/ --checkpoint runs/tok/tokenizer.safetensors --out tokens.npy

Run from the repository root. ``train``: every image is resized (shorter side) and centre-cropped to
``--image-size``; a tenth of the images (at least one) is held out for validation; an epoch is
``--crops-per-image`` random ``--patch`` crops (random flips) of every training image, in batches, with a
progress bar. After each epoch: validation PSNR on the held-out images' tiles, and bin utilization (the
entropy of each latent dimension's level use over log2 L; 1 = every level used equally), on the
validation tiles and over the epoch's training batches (``ifsq_quant.CodeUsage``). The model and the
optimizer are saved after every epoch to ``--out/tokenizer.safetensors`` (safetensors: loading never
unpickles anything), with the settings and the history; ``--resume`` continues from it up to
``--epochs`` (the settings must match; the learning rate is constant after a warm-up, so training can
be extended). Ctrl-C stops; the last finished epoch is saved, and ``--resume`` continues from it.

``encode``: every image of the folder at the checkpoint's ``--image-size`` -> its token indices, one
``.npy`` of shape (n, image_size/4, image_size/4) in the order of ``<out>.files.txt``; uint16 when the
vocabulary (the product of the levels) fits, else int32 (or int64).

The tokenizer is ``examples/tokenizer.py``'s convolutional autoencoder (two x2 downsamplings) with an
``ifsq_quant.iFSQ`` (2*sigmoid(1.6 z) - 1) or ``FSQ`` (tanh) bottleneck: the one line that differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from examples.checkpoints import read_checkpoint, save_checkpoint
from examples.image_folder import grid_crops, list_images, load_images, random_crops
from examples.metrics import psnr
from examples.tokenizer import Tokenizer
from examples.training import ExampleError
from ifsq_quant import FSQ, CodeUsage, iFSQ

CHECKPOINT = "tokenizer.safetensors"
SETTINGS = ("quantizer", "levels", "image_size", "patch", "channels", "blocks", "batch_size", "lr", "crops_per_image", "val_fraction", "seed")
WARMUP_STEPS = 100


# ----------------------------------------------------------------------------- model and checkpoint


def build_tokenizer(settings: dict) -> Tokenizer:
    """The autoencoder of ``settings`` (quantizer "fsq" or "ifsq", levels, channels, blocks), initialized under its seed."""
    torch.manual_seed(settings["seed"])
    quantizer = (iFSQ if settings["quantizer"] == "ifsq" else FSQ)(settings["levels"])
    return Tokenizer(quantizer, in_channels=3, channels=tuple(settings["channels"]), blocks=settings["blocks"])


def save(path: Path, tok: Tokenizer, optimizer: torch.optim.Optimizer, settings: dict, epoch: int, history: list[dict]) -> None:
    """Model and AdamW state (tensors ``model.*`` and ``optimizer.<param>.<name>``), settings, epoch and history as metadata."""
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in tok.state_dict().items()}
    tensors.update({f"optimizer.{i}.{name}": v for i, state in opt["state"].items() for name, v in state.items()})
    save_checkpoint(path, tensors, settings, epoch=epoch, history=history, param_groups=opt["param_groups"])


def load(path: Path, settings: dict | None) -> tuple[Tokenizer, dict, dict, dict]:
    """A checkpoint written by ``save`` (for ``settings``, unless None) -> (tokenizer, optimizer state, settings, metadata)."""
    tensors, info = read_checkpoint(path, settings)
    tok = build_tokenizer(info["config"])
    tok.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    return tok, dict(state=state, param_groups=info.get("param_groups", [])), info["config"], info


def index_dtype(vocabulary: int) -> np.dtype:
    """The smallest of uint16 / int32 / int64 that holds indices in [0, vocabulary)."""
    if vocabulary <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32) if vocabulary <= 2**31 else np.dtype(np.int64)


# ----------------------------------------------------------------------------- train


def split(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A fixed random split of the image files -> (train, validation); at least one of each."""
    if len(paths) < 2:
        raise ExampleError(f"need at least 2 images (one is held out for validation), found {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths))))
    return [paths[i] for i in sorted(order[n_val:])], [paths[i] for i in sorted(order[:n_val])]


@torch.no_grad()
def validate(tok: Tokenizer, tiles: torch.Tensor, batch_size: int) -> dict:
    """PSNR of the reconstructions of ``tiles`` (n, 3, p, p) and the bin utilization of their indices."""
    tok.eval()
    usage = CodeUsage(tok.levels)
    recons = []
    for i in range(0, len(tiles), batch_size):
        recon, _, indices = tok(tiles[i : i + batch_size])
        recons.append(recon.clamp(-1, 1))
        usage.update(tok.level_indices(indices))
    return dict(val_psnr=psnr(torch.cat(recons), tiles), val_utilization=float(usage.utilization().mean()))


def train(args: argparse.Namespace) -> list[dict]:
    settings = {k: getattr(args, k) for k in SETTINGS}
    if args.image_size % 4 or args.patch % 4 or args.patch > args.image_size:
        raise ExampleError(f"--patch ({args.patch}) and --image-size ({args.image_size}) must be multiples of 4, patch <= image size")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / CHECKPOINT
    train_paths, val_paths = split(list_images(args.images), args.val_fraction, args.seed)
    train_images, val_tiles = load_images(train_paths, args.image_size), grid_crops(load_images(val_paths, args.image_size), args.patch)
    if args.resume and path.is_file():
        tok, opt_state, _, info = load(path, settings)
        start, history = info["epoch"], info["history"]
    elif path.is_file():
        raise ExampleError(f"{str(path)!r} exists: pass --resume to continue it, or choose another --out")
    else:
        tok, opt_state, start, history = build_tokenizer(settings), None, 0, []
    optimizer = torch.optim.AdamW(tok.parameters(), lr=args.lr, betas=(0.9, 0.99))
    if opt_state:
        optimizer.load_state_dict(opt_state)
    print(f"{len(train_paths)} training / {len(val_paths)} validation images ({len(val_tiles)} tiles); {args.quantizer} levels {args.levels} "
          f"({math.prod(args.levels):,} codes); epochs {start + 1}..{args.epochs}")
    steps_per_epoch = max(1, len(train_paths) * args.crops_per_image // args.batch_size)
    for epoch in range(start, args.epochs):
        generator = torch.Generator().manual_seed(args.seed * 100_003 + epoch)  # the epoch's crops and order: the same when resumed
        crops = random_crops(train_images, args.patch, steps_per_epoch * args.batch_size, generator)
        tok.train()
        tok.usage.reset()  # this epoch's training usage
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True, mininterval=1.0)
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / WARMUP_STEPS)
            batch = crops[i * args.batch_size : (i + 1) * args.batch_size]
            loss = F.mse_loss(tok(batch)[0], batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        row = dict(epoch=epoch + 1, train_loss=float(np.mean(losses)), train_utilization=float(tok.usage.utilization().mean()),
                   **validate(tok, val_tiles, args.batch_size))
        history.append(row)
        save(path, tok, optimizer, settings, epoch + 1, history)
        tqdm.write(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, validation PSNR {row['val_psnr']:.2f} dB, bin utilization "
                   f"{row['val_utilization']:.3f} (validation) / {row['train_utilization']:.3f} (training) -> {path}")
    (args.out / "history.json").write_text(json.dumps(dict(settings=settings, history=history), indent=1))
    return history


# ----------------------------------------------------------------------------- encode


@torch.no_grad()
def encode(args: argparse.Namespace) -> np.ndarray:
    tok, _, settings, _ = load(args.checkpoint, None)
    tok.eval()
    paths = list_images(args.images)
    vocabulary = math.prod(settings["levels"])
    dtype = index_dtype(vocabulary)
    out = []
    for i in tqdm(range(0, len(paths), args.batch_size), desc="encode", dynamic_ncols=True):
        _, indices = tok.encode(load_images(paths[i : i + args.batch_size], settings["image_size"]))  # (b, s/4, s/4) int64
        out.append(indices.numpy().astype(dtype))
    tokens = np.concatenate(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, tokens)
    files = args.out.with_name(args.out.name.removesuffix(".npy") + ".files.txt")
    files.write_text("".join(f"{p}\n" for p in paths))
    print(f"{len(paths)} images -> {args.out}: {tokens.shape} {tokens.dtype} indices (vocabulary {vocabulary:,}); order in {files}")
    return tokens


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.train_tokenizer", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train a tokenizer on a folder of images")
    t.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    t.add_argument("--out", type=Path, required=True, help="output folder: tokenizer.safetensors, history.json")
    t.add_argument("--quantizer", choices=["ifsq", "fsq"], default="ifsq", help="iFSQ (2*sigmoid(1.6 z) - 1, default) or FSQ (tanh)")
    t.add_argument("--levels", type=int, nargs="+", default=[8, 8, 8, 5, 5, 5], help="levels per latent channel (default: 64,000 codes)")
    t.add_argument("--image-size", type=int, default=64, help="images are resized and centre-cropped to this (multiple of 4)")
    t.add_argument("--patch", type=int, default=32, help="training crop size (multiple of 4, <= --image-size)")
    t.add_argument("--channels", type=int, nargs=3, default=[32, 64, 128], help="the autoencoder's widths")
    t.add_argument("--blocks", type=int, default=1, help="residual blocks per resolution")
    t.add_argument("--epochs", type=int, default=20, help="train up to this many epochs in all")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (constant after a 100-step warm-up)")
    t.add_argument("--crops-per-image", type=int, default=16, help="random crops of each training image per epoch")
    t.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the images held out for validation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e = commands.add_parser("encode", help="write the token indices of a folder of images to a .npy")
    e.add_argument("--images", type=Path, required=True)
    e.add_argument("--checkpoint", type=Path, required=True, help="a tokenizer.safetensors written by train")
    e.add_argument("--out", type=Path, required=True, help="the .npy to write")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train(args) if args.command == "train" else encode(args)
    except ExampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch is saved; to continue, run the same command with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
