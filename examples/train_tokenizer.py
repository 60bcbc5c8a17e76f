"""Train an FSQ or iFSQ image tokenizer on a folder of your own images; turn images into token indices and back.

    python -m examples.train_tokenizer train --images photos/ --out runs/tok --epochs 20
    python -m examples.train_tokenizer train --images photos/ --out runs/tok --epochs 30 --resume   # 10 epochs more
    python -m examples.train_tokenizer encode --images photos/ --checkpoint runs/tok/tokenizer.safetensors --out tokens.npy
    python -m examples.train_tokenizer decode --tokens tokens.npy --checkpoint runs/tok/tokenizer.safetensors --out decoded/

    torchrun --nproc_per_node=2 -m examples.train_tokenizer train --images photos/ --out runs/tok   # 2 CPU processes (gloo)
    torchrun --nproc_per_node=8 -m examples.train_tokenizer train --images photos/ --out runs/tok --device cuda   # NCCL
    torchrun --nproc_per_node=8 -m examples.train_tokenizer train ... --device cuda --fsdp   # FSDP2 instead of DDP

Run it from the repository root as a module (python -m examples.train_tokenizer) or as a path
(python examples/train_tokenizer.py). Under torchrun every command runs in all the processes:

- train: DistributedDataParallel (DDP) by default, FSDP2 (fully_shard: parameters, gradients and
  optimizer state sharded over the processes) with --fsdp. Backend gloo on the CPU, NCCL with
  --device cuda (one GPU per process, LOCAL_RANK). --batch-size is the global batch: each of the N
  processes takes batch-size / N crops of every batch, so the training (and its checkpoint) does
  not depend on N, and --resume may use another N. Usage counts, losses and validation figures are
  summed over the processes; only the first process (rank 0) prints and writes files.
- encode / decode: each process takes every N-th image (or token map); rank 0 writes the .npy.

train: every image is resized (shorter side) and centre-cropped to --image-size; a fraction of the
images (--val-fraction, at least one) is held out for validation. An epoch is --crops-per-image
random --patch crops (random left-right flips) of every training image, in a new random order every
epoch, in batches of --batch-size; the last (crops mod batch-size) crops of the order are left out
of that epoch. Images are decoded when a batch needs them, by --workers DataLoader processes per
training process. AdamW, a 100-step linear warm-up, then a constant learning rate (so --resume can
extend a run), gradient clipping at 1, bf16 autocast on CUDA (--precision).

After every epoch, in --out (each file written under a temporary name, then renamed):

- tokenizer.safetensors: the model and the optimizer state (safetensors: loading never unpickles),
  the settings, the epoch, the history, the package version and the quantizer's vqp_version;
- history.json and metrics.csv: one row per epoch: training loss, bin utilization over the epoch's
  training batches, validation PSNR and bin utilization of the held-out images at --image-size
  (utilization: each latent dimension's level-use entropy over log2 L, averaged; 1 = every level
  used equally); steps.csv: the training loss every --log-every steps (rank 0's batches);
- reconstructions/epoch_NNN.png: up to 8 validation images (top) and their reconstructions;
- tensorboard/ event files, with --tensorboard (needs the tensorboard package).

--resume continues the checkpoint in --out up to --epochs (the settings that define the training
must be the checkpoint's: a difference is refused, naming each setting). Ctrl-C stops; the last
finished epoch is saved.

encode: every image of the folder at the checkpoint's --image-size -> its token indices, one .npy
of shape (n, image_size/4, image_size/4) in the order of <out>.files.txt (".npy" is appended to
--out when it lacks it); uint16 when the vocabulary (the product of the levels) fits, else int32
(or int64). decode: such a .npy (any token grid size) -> one PNG per token map in --out,
000000.png, 000001.png, ... in the .npy's order.

Threads: one torch thread per process by default: on a small, shared CPU two OpenMP threads that
wait for each other can be many times slower than one. On a dedicated machine --threads 0 gives each
process its share of the cores, or start more processes with torchrun.

The tokenizer is examples/tokenizer.py's convolutional autoencoder (two x2 downsamplings) with an
ifsq_quant.iFSQ (2*sigmoid(1.6 z) - 1) or FSQ (tanh) bottleneck: the one line that differs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a path (python examples/train_tokenizer.py): import the package examples from the repository root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from examples.checkpoints import read_checkpoint, save_checkpoint
from examples.image_folder import FolderImages, ImageError, RandomCrops, list_images, load_images, save_grid, save_png, to_uint8
from examples.tokenizer import Tokenizer
from examples.training import Env, ExampleError, setup_env
from ifsq_quant import FSQ, CodeUsage, iFSQ

COMMAND = "python -m examples.train_tokenizer"
CHECKPOINT = "tokenizer.safetensors"
# What defines a training: --resume refuses a checkpoint trained with other values of these.
SETTINGS = ("quantizer", "levels", "image_size", "patch", "channels", "blocks", "batch_size", "lr", "crops_per_image", "val_fraction", "seed")
WARMUP_STEPS = 100
GRID_IMAGES = 8
STEP_FIELDS = ["step", "epoch", "lr", "train_loss"]


def option(key: str) -> str:
    return "--" + key.replace("_", "-")


# ----------------------------------------------------------------------------- model and checkpoint


def build_tokenizer(settings: dict, vqp_version: str | None = None) -> Tokenizer:
    """The autoencoder of ``settings`` (quantizer "fsq" or "ifsq", levels, channels, blocks), initialized under its seed
    (the same weights in every process)."""
    torch.manual_seed(settings["seed"])
    quantizer = (iFSQ if settings["quantizer"] == "ifsq" else FSQ)(settings["levels"], vqp_version=vqp_version)
    return Tokenizer(quantizer, in_channels=3, channels=tuple(settings["channels"]), blocks=settings["blocks"])


def save(path: Path, model: Tokenizer, optimizer: torch.optim.Optimizer, settings: dict, env: Env, **info) -> None:
    """Model and AdamW state as tensors ``model.<name>`` and ``optimizer.<parameter name>.<state>``; the settings, the
    optimizer's param_groups and ``info`` as metadata.

    Every process calls it: under FSDP2 gathering the full (unsharded) tensors is a collective. Rank 0 writes.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=env.distributed)  # cpu_offload: the full tensors on rank 0 only
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    if env.is_main:
        tensors = {f"model.{k}": v for k, v in model_state.items()}
        tensors.update({f"optimizer.{param}.{name}": v for param, state in optimizer_state["state"].items() for name, v in state.items()})
        save_checkpoint(path, tensors, settings, model=model, param_groups=optimizer_state["param_groups"], **info)


def split_state(tensors: dict[str, torch.Tensor], info: dict) -> tuple[dict, dict]:
    """A checkpoint's tensors -> (the model's state_dict, the optimizer's full state dict keyed by parameter name)."""
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[str, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            param, name = key[len("optimizer."):].rsplit(".", 1)
            state.setdefault(param, {})[name] = value
    return model_state, dict(state=state, param_groups=info.get("param_groups", []))


def load(path: Path, device: torch.device | str = "cpu") -> tuple[Tokenizer, dict, dict]:
    """A checkpoint written by ``train`` -> (tokenizer in eval mode on ``device``, its settings, its metadata).

    The quantizer is built with the checkpoint's ``vqp_version``, so it has the semantics it was trained with.
    """
    tensors, info = read_checkpoint(path, None, missing_hint=f"train one with {COMMAND} train")
    settings = info["config"]
    if not isinstance(settings, dict) or any(k not in settings for k in SETTINGS):
        raise ExampleError(f"checkpoint {str(path)!r} was not written by {COMMAND} train (its settings lack {list(SETTINGS)})")
    model = build_tokenizer(settings, info.get("vqp_version"))
    try:
        model.load_state_dict(split_state(tensors, info)[0])
    except RuntimeError as e:
        raise ExampleError(f"checkpoint {str(path)!r} does not fit the model of its settings: {e}") from None
    return model.to(device).eval(), settings, info


def index_dtype(vocabulary: int) -> np.dtype:
    """The smallest of uint16 / int32 / int64 that holds indices in [0, vocabulary)."""
    if vocabulary <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32) if vocabulary <= 2**31 else np.dtype(np.int64)


# ----------------------------------------------------------------------------- data


def split(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A fixed random split of the image files -> (train, validation); at least one of each."""
    if len(paths) < 2:
        raise ExampleError(f"need at least 2 images (one is held out for validation), found {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths))))
    return [paths[i] for i in sorted(order[n_val:])], [paths[i] for i in sorted(order[:n_val])]


class EpochShard:
    """The DataLoader sampler of one process: its share of an epoch's crops, as items ``(epoch, crop number)``.

    The epoch's crops ``0 .. n-1`` are shuffled (seeded by ``(seed, epoch)``), cut into ``n // batch_size``
    global batches (the rest is left out of the epoch), and process ``rank`` takes the ``rank``-th of the
    ``world`` equal slices of every batch: each crop is used at most once per epoch over all processes,
    and every process runs the same number of steps. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, env: Env):
        self.n, self.batch_size, self.seed, self.world, self.rank = n, batch_size, seed, env.world, env.rank
        self.steps = n // batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * (self.batch_size // self.world)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)[: self.steps * self.batch_size]
        mine = order.reshape(self.steps, self.world, self.batch_size // self.world)[:, self.rank].reshape(-1)
        return iter([(self.epoch, int(j)) for j in mine])


class Counted(Dataset):
    """``images`` padded to ``length`` items: item i -> (image i mod n, whether i < n), so that every process
    runs the same number of validation batches (FSDP2 gathers the parameters in every forward)."""

    def __init__(self, images: FolderImages, length: int):
        self.images, self.length = images, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        return self.images[i % len(self.images)], i < len(self.images)


def loader(dataset: Dataset, batch_size: int, args: argparse.Namespace, env: Env, sampler=None, persistent: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=args.workers, pin_memory=env.device.type == "cuda",
                      persistent_workers=persistent and args.workers > 0)


# ----------------------------------------------------------------------------- train


@torch.no_grad()
def validate(model: Tokenizer, batches: DataLoader, env: Env, bf16: bool) -> dict:
    """PSNR (mean over images) of the reconstructions of this process's validation images and the bin utilization of
    their indices, summed over the processes. Every process must call it (a collective)."""
    model.eval()
    usage = CodeUsage(model.levels).to(env.device)
    totals = torch.zeros(2, dtype=torch.float64, device=env.device)  # sum of per-image PSNR, images
    for images, counted in batches:
        images, counted = images.to(env.device, non_blocking=True), counted.to(env.device)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
            recon, _, indices = model(images)
        mse = (recon.float().clamp(-1, 1) - images).pow(2).flatten(1).mean(1)  # (b,)
        totals += torch.stack([(10 * torch.log10(4.0 / mse))[counted].double().sum(), counted.sum().double()])
        usage.update(model.level_indices(indices[counted]))
    if env.distributed:
        dist.all_reduce(totals)
        usage.all_reduce()
    return dict(val_psnr=float(totals[0] / totals[1]), val_utilization=float(usage.utilization().mean()))


def check_resumable(path: Path, info: dict, settings: dict, epochs: int) -> None:
    """Raises ExampleError unless the checkpoint was trained with ``settings`` and has fewer than ``epochs`` epochs."""
    saved = info["config"]
    ours = json.loads(json.dumps(settings))
    differ = [f"{option(k)} {' '.join(map(str, v)) if isinstance(v, list) else v} here, {saved.get(k)} in the checkpoint"
              for k, v in ours.items() if saved.get(k) != v]
    if differ:
        raise ExampleError(f"--resume: {str(path)!r} was trained with other settings ({'; '.join(differ)}); pass the checkpoint's "
                           "values to continue it, or choose another --out")
    if info["epoch"] >= epochs:
        raise ExampleError(f"--resume: {str(path)!r} has {info['epoch']} epochs already, so --epochs {epochs} trains nothing; "
                           f"pass --epochs {info['epoch'] + 1} or more")


def write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames or list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def append_csv(path: Path, row: dict) -> None:
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(row)).writerow(row)


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def train(args: argparse.Namespace, env: Env) -> list[dict]:
    settings = {k: getattr(args, k) for k in SETTINGS}
    out, path = args.out, args.out / CHECKPOINT
    log = tqdm.write if env.is_main else (lambda msg: None)
    if args.fsdp and not env.distributed:
        raise ExampleError("--fsdp shards the model over torchrun's processes: start it with torchrun --nproc_per_node=N (N >= 2)")
    train_paths, val_paths = split(list_images(args.images), args.val_fraction, args.seed)
    crops = RandomCrops(train_paths, args.image_size, args.patch, args.crops_per_image, args.seed)
    steps_per_epoch = len(crops) // args.batch_size
    if steps_per_epoch == 0:
        raise ExampleError(f"--batch-size {args.batch_size} is more than the {len(crops)} crops of an epoch ({len(train_paths)} training "
                           f"images x --crops-per-image {args.crops_per_image}); lower it or raise --crops-per-image")

    # the run to continue, or a new one
    resume = args.resume and path.is_file()
    if path.is_file() and not args.resume:
        raise ExampleError(f"{str(path)!r} exists: pass --resume to continue it, or choose another --out")
    start, history, vqp_version, model_state, optimizer_state = 0, [], None, None, None
    if resume:
        tensors, info = read_checkpoint(path, None)
        check_resumable(path, info, settings, args.epochs)
        start, history, vqp_version = info["epoch"], info["history"], info.get("vqp_version")
        model_state, optimizer_state = split_state(tensors, info)
    elif args.resume:
        log(f"--resume: no checkpoint in {str(out)!r} yet; training from epoch 1")
    try:
        (out / "reconstructions").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExampleError(f"output folder {str(out)!r} cannot be created: {e.strerror or e}") from None
    if env.is_main and not os.access(out, os.W_OK):
        raise ExampleError(f"output folder {str(out)!r} is not writable")

    # the model, where it runs, the optimizer
    model = build_tokenizer(settings, vqp_version)
    if resume:
        try:
            model.load_state_dict(model_state)
        except RuntimeError as e:
            raise ExampleError(f"--resume: {str(path)!r} does not fit the model of its settings: {e}") from None
    model.to(env.device)
    forward = model
    if env.distributed and args.fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world,))
        for part in (model.encoder, model.decoder, model):  # each gathers its parameters for its own forward and backward
            fully_shard(part, mesh=mesh)
    elif env.distributed:  # the usage counts stay per process: CodeUsage keeps them out of the buffers DDP broadcasts
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    if resume:
        try:
            set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
        except (KeyError, ValueError, RuntimeError) as e:  # state keyed by anything but this model's parameter names
            raise ExampleError(f"--resume: the optimizer state in {str(path)!r} does not fit the model's parameters "
                               f"({type(e).__name__}: {e}); encode and decode can use it, training cannot continue from it") from None
    bf16 = args.precision == "bf16" or (args.precision == "auto" and env.device.type == "cuda" and torch.cuda.is_bf16_supported())

    # data: this process's shares of the crops and of the validation images
    per_process = args.batch_size // env.world
    shard = EpochShard(len(crops), args.batch_size, args.seed, env)
    train_batches = loader(crops, per_process, args, env, sampler=shard, persistent=True)
    val_images = FolderImages(val_paths, args.image_size)
    padded = math.ceil(len(val_paths) / env.world) * env.world
    val_batches = loader(Subset(Counted(val_images, padded), range(env.rank, padded, env.world)), per_process, args, env, persistent=True)
    grid_images = load_images(val_paths[:GRID_IMAGES], args.image_size).to(env.device)

    writer = None
    if args.tensorboard and env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    if env.is_main:  # steps.csv: the rows of the finished epochs (an interrupted epoch's are dropped), then appended to
        kept = [r for r in read_csv(out / "steps.csv") if int(r["step"]) <= start * steps_per_epoch] if resume else []
        write_csv(out / "steps.csv", kept, fieldnames=STEP_FIELDS)
    how = "FSDP2" if args.fsdp else "DDP" if env.distributed else "one process"
    log(f"{len(train_paths)} training / {len(val_paths)} validation images; {args.quantizer} levels {args.levels} "
        f"({math.prod(args.levels):,} codes); {steps_per_epoch} steps of {args.batch_size} crops per epoch ({env.world} x {per_process}, "
        f"{how} on {env.device}{', bf16 autocast' if bf16 else ''}); epochs {start + 1}..{args.epochs}")
    for epoch in range(start, args.epochs):
        t0 = time.perf_counter()
        shard.set_epoch(epoch)
        model.train()
        model.usage.reset()  # this epoch's training usage
        loss_sum = torch.zeros((), device=env.device)
        recent: list[torch.Tensor] = []
        bar = tqdm(train_batches, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not env.is_main, dynamic_ncols=True, mininterval=1.0)
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = args.lr * min(1.0, (step + 1) / WARMUP_STEPS)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = batch.to(env.device, non_blocking=True)
            with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
                recon = forward(batch)[0]
            loss = F.mse_loss(recon.float(), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_sum += loss.detach()
            if env.is_main:
                recent.append(loss.detach())
                if (step + 1) % args.log_every == 0 or i == steps_per_epoch - 1:
                    mean = float(torch.stack(recent).mean())  # rank 0's batches since the last row
                    recent.clear()
                    bar.set_postfix(loss=f"{mean:.4f}")
                    append_csv(out / "steps.csv", dict(step=step + 1, epoch=epoch + 1, lr=lr, train_loss=mean))
                    if writer is not None:
                        writer.add_scalar("train/loss", mean, step + 1)
                        writer.add_scalar("train/lr", lr, step + 1)

        # the epoch's figures, summed over the processes
        if env.distributed:
            dist.all_reduce(loss_sum)
        model.usage.all_reduce()  # a no-op in one process
        row = dict(epoch=epoch + 1, steps=(epoch + 1) * steps_per_epoch, train_loss=float(loss_sum) / (steps_per_epoch * env.world),
                   train_utilization=float(model.usage.utilization().mean()), **validate(model, val_batches, env, bf16))
        with torch.no_grad(), torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
            grid_recon = model(grid_images)[0]  # in every process: under FSDP2 a forward is a collective
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        save(path, model, optimizer, settings, env, epoch=epoch + 1, history=history, world_size=env.world)
        if env.is_main:
            write_text(out / "history.json", json.dumps(dict(settings=settings, history=history), indent=1))
            write_csv(out / "metrics.csv", history)
            grid = out / "reconstructions" / f"epoch_{epoch + 1:03d}.png"
            save_grid(grid, [grid_images, grid_recon])
            if writer is not None:
                for key in ("train_loss", "train_utilization", "val_psnr", "val_utilization"):
                    writer.add_scalar(f"epoch/{key}", row[key], epoch + 1)
                writer.add_images("validation reconstructions", (torch.cat([grid_images, grid_recon.float()]).clamp(-1, 1) + 1) / 2, epoch + 1)
                writer.flush()
            log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, validation PSNR {row['val_psnr']:.2f} dB, bin utilization "
                f"{row['val_utilization']:.3f} (validation) / {row['train_utilization']:.3f} (training), {row['seconds']:.0f} s -> {path}, {grid}")
    if writer is not None:
        writer.close()
    return history


# ----------------------------------------------------------------------------- encode and decode


def npy_path(path: Path) -> Path:
    """``path`` with ``.npy`` appended unless it ends with it (what numpy.save writes)."""
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def gather_rows(rows: np.ndarray, mine: list[int], n: int, env: Env) -> np.ndarray | None:
    """Each process's ``rows`` (for items ``mine``) -> all ``n`` rows in order on rank 0 (None elsewhere)."""
    if not env.distributed:
        return rows
    parts = [None] * env.world if env.is_main else None
    dist.gather_object((mine, rows), parts, dst=0)
    if not env.is_main:
        return None
    out = np.empty((n, *rows.shape[1:]), dtype=rows.dtype)
    for idx, part in parts:
        out[idx] = part
    return out


@torch.no_grad()
def encode(args: argparse.Namespace, env: Env) -> np.ndarray | None:
    """The folder's images -> their token indices (n, s/4, s/4), written to ``args.out`` (.npy) by rank 0 (returned there)."""
    model, settings, _ = load(args.checkpoint, env.device)
    out = npy_path(args.out)
    paths = list_images(args.images)
    vocabulary = math.prod(settings["levels"])
    dtype = index_dtype(vocabulary)
    mine = list(range(env.rank, len(paths), env.world))
    side = settings["image_size"] // 4
    parts = [np.zeros((0, side, side), dtype)]
    for images in tqdm(loader(Subset(FolderImages(paths, settings["image_size"]), mine), args.batch_size, args, env),
                       desc="encode", disable=not env.is_main, dynamic_ncols=True):
        _, indices = model.encode(images.to(env.device))  # (b, s/4, s/4) int64
        parts.append(indices.cpu().numpy().astype(dtype))
    tokens = gather_rows(np.concatenate(parts), mine, len(paths), env)
    if not env.is_main:
        return None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with partial.open("wb") as f:
            np.save(f, tokens)
        os.replace(partial, out)
        files = out.with_name(out.name.removesuffix(".npy") + ".files.txt")
        write_text(files, "".join(f"{p}\n" for p in paths))
    except OSError as e:
        raise ExampleError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    print(f"{len(paths)} images -> {out}: {tokens.shape} {tokens.dtype} indices (vocabulary {vocabulary:,}); order in {files}")
    return tokens


@torch.no_grad()
def decode(args: argparse.Namespace, env: Env) -> list[Path]:
    """Token indices (n, h, w) from ``args.tokens`` -> ``args.out``/000000.png ... (n images of (4h, 4w)); this process's files."""
    model, settings, _ = load(args.checkpoint, env.device)
    try:
        tokens = np.load(args.tokens, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ExampleError(f"--tokens {str(args.tokens)!r}: cannot read it as a .npy file ({e})") from None
    vocabulary = math.prod(settings["levels"])
    if tokens.ndim != 3 or not np.issubdtype(tokens.dtype, np.integer):
        raise ExampleError(f"--tokens {str(args.tokens)!r}: expected integer token indices of shape (n, h, w), got {tokens.dtype} "
                           f"{tokens.shape}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocabulary):
        raise ExampleError(f"--tokens {str(args.tokens)!r}: indices must lie in [0, {vocabulary}) for levels {settings['levels']}, "
                           f"got {int(tokens.min())}..{int(tokens.max())}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExampleError(f"--out {str(args.out)!r} cannot be created: {e.strerror or e}") from None
    mine = list(range(env.rank, len(tokens), env.world))
    written = []
    for start in tqdm(range(0, len(mine), args.batch_size), desc="decode", disable=not env.is_main, dynamic_ncols=True):
        idx = mine[start : start + args.batch_size]
        images = model.decode_indices(torch.from_numpy(tokens[idx].astype(np.int64)).to(env.device))  # (b, 3, 4h, 4w)
        for i, image in zip(idx, to_uint8(images)):
            written.append(args.out / f"{i:06d}.png")
            save_png(written[-1], image)
    if env.distributed:
        dist.barrier()
    if env.is_main:
        print(f"{len(tokens)} token maps {tuple(tokens.shape[1:])} -> {len(tokens)} images {4 * tokens.shape[1]}x{4 * tokens.shape[2]} "
              f"in {args.out}/")
    return written


# ----------------------------------------------------------------------------- command line


class Parser(argparse.ArgumentParser):
    """argparse that prints its errors in the first process only (under torchrun every process parses the same line)."""

    def error(self, message: str):
        if int(os.environ.get("RANK", "0")) != 0:
            self.exit(2)
        super().error(message)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (exit status 2, one line naming the option) for values the commands cannot run with."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    at_least = {"threads": 0, "workers": 0, "batch_size": 1}
    if args.command == "train":
        at_least.update(epochs=1, blocks=1, crops_per_image=1, seed=0, log_every=1)
    for key, low in at_least.items():
        if getattr(args, key) < low:
            parser.error(f"{option(key)} must be >= {low}, got {getattr(args, key)}")
    if args.command != "train":
        return
    for key in ("image_size", "patch"):
        if getattr(args, key) < 4 or getattr(args, key) % 4:
            parser.error(f"{option(key)} must be a positive multiple of 4 (the tokenizer downsamples by 4), got {getattr(args, key)}")
    if args.patch > args.image_size:
        parser.error(f"--patch ({args.patch}) must be at most --image-size ({args.image_size})")
    for c in args.channels:
        if c < 1 or c % min(8, c):
            parser.error(f"--channels: each width must be 1..7 or a multiple of 8 (GroupNorm with up to 8 groups), got {args.channels}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must lie strictly between 0 and 1, got {args.val_fraction}")
    if args.seed >= 2**63:
        parser.error(f"--seed must be below 2**63, got {args.seed}")
    if args.batch_size % world:
        parser.error(f"--batch-size {args.batch_size} is the global batch: it must be divisible by the {world} processes")
    try:
        (iFSQ if args.quantizer == "ifsq" else FSQ)(args.levels)
    except (ValueError, TypeError) as e:
        parser.error(f"--levels {' '.join(map(str, args.levels))}: {e}")
    if args.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            parser.error("--tensorboard needs the tensorboard package (pip install tensorboard)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    help_text = __doc__.replace("``", "")
    parser = Parser(prog=COMMAND, description=help_text.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog=help_text.split("\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, batch_help: str) -> None:
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (the default): cuda when available")
        p.add_argument("--batch-size", type=int, default=32, help=batch_help)
        p.add_argument("--threads", type=int, default=1, help="torch threads per process (default %(default)s; 0: the cores shared out)")
        p.add_argument("--workers", type=int, default=2, help="DataLoader processes per process that decode images (default %(default)s; 0: none)")

    t = commands.add_parser("train", help="train a tokenizer on a folder of images")
    t.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    t.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, logs, reconstructions)")
    t.add_argument("--quantizer", choices=["ifsq", "fsq"], default="ifsq", help="iFSQ (2*sigmoid(1.6 z) - 1, the default) or FSQ (tanh)")
    t.add_argument("--levels", type=int, nargs="+", default=[8, 8, 8, 5, 5, 5], help="levels per latent channel (default: %(default)s, 64,000 codes)")
    t.add_argument("--image-size", type=int, default=64, help="images are resized and centre-cropped to this (multiple of 4; default %(default)s)")
    t.add_argument("--patch", type=int, default=32, help="training crop size (multiple of 4, <= --image-size; default %(default)s)")
    t.add_argument("--channels", type=int, nargs=3, default=[32, 64, 128], help="the autoencoder's widths (default: %(default)s)")
    t.add_argument("--blocks", type=int, default=1, help="residual blocks per resolution (default %(default)s)")
    t.add_argument("--epochs", type=int, default=20, help="train up to this many epochs in all (default %(default)s)")
    common(t, "global batch of crops, split evenly over the torchrun processes (default %(default)s)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, constant after a 100-step warm-up (default %(default)s)")
    t.add_argument("--crops-per-image", type=int, default=16, help="random crops of each training image per epoch (default %(default)s)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the images held out for validation (default %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="initialization, split, crops and their order (default %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (fully_shard) instead of DDP")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto (the default): bf16 autocast on CUDA, fp32 on the CPU")
    t.add_argument("--log-every", type=int, default=50, help="steps between rows of steps.csv (default %(default)s)")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files to --out/tensorboard")
    e = commands.add_parser("encode", help="write the token indices of a folder of images to a .npy")
    e.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    e.add_argument("--checkpoint", type=Path, required=True, help="a tokenizer.safetensors written by train")
    e.add_argument("--out", type=Path, required=True, help="the .npy to write (.npy is appended if missing)")
    common(e, "images per forward, per process (default %(default)s)")
    d = commands.add_parser("decode", help="turn token indices (a .npy written by encode) back into PNG images")
    d.add_argument("--tokens", type=Path, required=True, help="a .npy of integer token indices (n, h, w)")
    d.add_argument("--checkpoint", type=Path, required=True, help="the tokenizer.safetensors that encoded them")
    d.add_argument("--out", type=Path, required=True, help="folder for the PNG files 000000.png, 000001.png, ...")
    common(d, "token maps per forward, per process (default %(default)s)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def message(e: ExampleError) -> str:
    """The error's one line (an error raised in a DataLoader worker arrives with the worker's traceback around it)."""
    text = str(e).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = None
    try:
        env = setup_env(args.device, args.threads)
        {"train": train, "encode": encode, "decode": decode}[args.command](args, env)
    except ExampleError as e:
        # an unreadable image is met by one process only; every other error by all of them alike
        if env is None or env.is_main or isinstance(e, ImageError):
            rank = f" (rank {env.rank})" if env is not None and env.distributed and isinstance(e, ImageError) else ""
            print(f"error{rank}: {message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if env is None or env.is_main:
            print("\ninterrupted: the last finished epoch is saved; to continue, run the same command with --resume", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
