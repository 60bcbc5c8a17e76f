"""``examples/train_tokenizer.py``: train (logs, figures, checkpoints), --resume, encode and decode on a tiny
configuration in this process; bad command lines; the epoch's sharding over processes; checkpoints that
record vqp_version. Slow tier: the same command under ``torch.distributed.run`` with 2 gloo processes
(DDP and FSDP2), compared with one process."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from examples import train_tokenizer
from examples.checkpoints import load_checkpoint, save_checkpoint
from examples.image_folder import list_images, load_images, to_uint8
from examples.training import Env, ExampleError
from ifsq_quant import iFSQ, vqp_releases

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six small images of different sizes and formats (PNG, JPEG, one greyscale, one 16-bit)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = 24 + 5 * i, 40 - 3 * i
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([(np.sin(x / (2 + i)) + 1) * 127, (np.cos(y / (3 + i)) + 1) * 127, rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
        img = Image.fromarray(rgb)
        if i == 3:
            img = img.convert("L")
        if i == 5:
            img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit greyscale
        img.save(folder / (f"img{i}.jpg" if i == 1 else f"img{i}.png"))
    return folder


def tiny(images: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    """A tiny training: 5 training images x 4 crops = 20 crops, 5 steps of 4 per epoch, 1 validation image."""
    return ["train", "--images", str(images), "--out", str(out), "--epochs", str(epochs), "--image-size", "16", "--patch", "8",
            "--channels", "4", "4", "8", "--levels", "8", "5", "5", "5", "--crops-per-image", "4", "--batch-size", "4",
            "--workers", "0", "--log-every", "2", *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and any(k.startswith("optimizer.") for k in wa)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def relative_gap(reference: Path, other: Path) -> float:
    """||other - reference|| / ||reference - initialization|| over the model's float weights: how far apart two
    trainings ended, measured against how far the reference moved (another global batch gives about 2)."""
    ref, oth = weights(reference), weights(other)
    with safe_open(str(reference), "pt") as f:
        init = train_tokenizer.build_tokenizer(json.loads(f.metadata()["config"])).state_dict()
    keys = [k for k, v in init.items() if v.is_floating_point()]
    assert oth.keys() == ref.keys() and keys
    gap = sum(float((oth[f"model.{k}"] - ref[f"model.{k}"]).double().norm() ** 2) for k in keys) ** 0.5
    moved = sum(float((ref[f"model.{k}"] - init[k]).double().norm() ** 2) for k in keys) ** 0.5
    assert moved > 0.1  # the training moved the weights: a gap is measured against something
    return gap / moved


def run_main(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    try:
        return train_tokenizer.main(argv)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- in this process


def test_train_logs_resume_encode_decode(images, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_main(tiny(images, straight, 2)) == 0
    assert run_main(tiny(images, resumed, 1)) == 0
    printed = capsys.readouterr().out
    assert printed.count("validation PSNR") == 3 and "5 steps of 4 crops per epoch" in printed
    # written as it goes: after one epoch, history, metrics.csv, steps.csv and the reconstruction grid are there
    assert json.loads((resumed / "history.json").read_text())["history"][0]["epoch"] == 1
    assert [r["epoch"] for r in csv.DictReader((resumed / "metrics.csv").open())] == ["1"]
    assert [r["step"] for r in csv.DictReader((resumed / "steps.csv").open())] == ["2", "4", "5"]
    grid = np.asarray(Image.open(resumed / "reconstructions" / "epoch_001.png"))
    assert grid.shape == (2 * 18 + 2, 18 + 2, 3)  # one validation image (16x16) over its reconstruction, 2-pixel gaps

    assert run_main(tiny(images, resumed, 1)) == 2  # an existing checkpoint is not overwritten
    assert "pass --resume" in capsys.readouterr().err
    # the second epoch with DataLoader workers: the crops do not depend on who decodes them
    assert run_main(tiny(images, resumed, 2, "--resume", "--workers", "2")) == 0
    assert_same_weights(straight / "tokenizer.safetensors", resumed / "tokenizer.safetensors")  # 1 + 1 epochs == 2 epochs
    history = json.loads((resumed / "history.json").read_text())["history"]
    untimed = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert untimed == [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((straight / "history.json").read_text())["history"]]
    assert [h["epoch"] for h in history] == [1, 2] and [h["steps"] for h in history] == [5, 10]
    for h in history:
        assert h["val_psnr"] > 0 and 0.0 < h["val_utilization"] <= 1.0 and 0.0 < h["train_utilization"] <= 1.0
    assert [r["step"] for r in csv.DictReader((resumed / "steps.csv").open())] == ["2", "4", "5", "6", "8", "10"]
    assert sorted(p.name for p in (resumed / "reconstructions").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert not list(resumed.rglob("*.partial"))

    # --resume that trains nothing, or with other settings, is refused naming why
    capsys.readouterr()
    assert run_main(tiny(images, resumed, 2, "--resume")) == 2
    assert "has 2 epochs already, so --epochs 2 trains nothing; pass --epochs 3 or more" in capsys.readouterr().err
    assert run_main(tiny(images, resumed, 3, "--resume", "--lr", "5e-3", "--crops-per-image", "2")) == 2
    err = capsys.readouterr().err
    assert "--lr 0.005 here, 0.001 in the checkpoint" in err and "--crops-per-image 2 here, 4 in the checkpoint" in err
    assert "--seed" not in err and "Traceback" not in err

    # encode: the tokenizer's indices, image by image; ".npy" appended to --out and reported as written
    model, settings, info = train_tokenizer.load(resumed / "tokenizer.safetensors")
    assert info["epoch"] == 2 and settings["levels"] == [8, 5, 5, 5] and info["vqp_version"] == vqp_releases.LATEST
    assert run_main(["encode", "--images", str(images), "--checkpoint", str(resumed / "tokenizer.safetensors"), "--out",
                     str(tmp_path / "tokens"), "--workers", "0", "--batch-size", "4"]) == 0
    assert f"-> {tmp_path / 'tokens.npy'}:" in capsys.readouterr().out
    tokens = np.load(tmp_path / "tokens.npy")
    assert tokens.shape == (6, 4, 4) and tokens.dtype == np.uint16  # 8*5*5*5 = 1,000 codes fit uint16
    paths = list_images(images)
    assert (tmp_path / "tokens.files.txt").read_text().split() == [str(p) for p in paths]
    with torch.no_grad():
        _, expected = model.encode(load_images(paths, 16))
    assert np.array_equal(tokens, expected.numpy())

    # decode: token maps -> PNGs of the tokenizer's decoding
    assert run_main(["decode", "--tokens", str(tmp_path / "tokens.npy"), "--checkpoint", str(resumed / "tokenizer.safetensors"),
                     "--out", str(tmp_path / "decoded"), "--batch-size", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == [f"{i:06d}.png" for i in range(6)]
    with torch.no_grad():
        expected_images = to_uint8(model.decode_indices(torch.from_numpy(tokens.astype(np.int64))))
    for i in range(6):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "decoded" / f"{i:06d}.png")), expected_images[i])


def test_decode_refuses_bad_tokens(images, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(tiny(images, out, 1)) == 0
    ckpt = str(out / "tokenizer.safetensors")
    for name, array, needle in (("range", np.full((1, 2, 2), 1000), "indices must lie in [0, 1000)"),
                                ("shape", np.zeros((2, 2), dtype=np.int64), "of shape (n, h, w)"),
                                ("float", np.zeros((1, 2, 2)), "integer token indices")):
        np.save(tmp_path / f"{name}.npy", array)
        capsys.readouterr()
        assert run_main(["decode", "--tokens", str(tmp_path / f"{name}.npy"), "--checkpoint", ckpt, "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    assert run_main(["decode", "--tokens", str(tmp_path / "none.npy"), "--checkpoint", ckpt, "--out", str(tmp_path / "d")]) == 2
    assert "cannot read it as a .npy file" in capsys.readouterr().err
    assert run_main(["encode", "--images", str(images), "--checkpoint", str(tmp_path / "none.safetensors"), "--out", "t.npy"]) == 2
    err = capsys.readouterr().err
    assert "not found; train one with python -m examples.train_tokenizer train" in err and "--stages" not in err


BAD_TRAIN_ARGUMENTS = [
    (["--patch", "0"], "--patch must be a positive multiple of 4"),
    (["--patch", "6"], "--patch must be a positive multiple of 4"),
    (["--patch", "32"], "--patch (32) must be at most --image-size (16)"),
    (["--image-size", "-4"], "--image-size must be a positive multiple of 4"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--levels", "2", "2", "2"], "--levels 2 2 2: "),
    (["--levels", "1", "5"], "--levels 1 5: "),
    (["--channels", "0", "0", "0"], "--channels: each width"),
    (["--channels", "4", "12", "16"], "--channels: each width"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "inf"], "--lr must be a positive number"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--crops-per-image", "0"], "--crops-per-image must be >= 1"),
    (["--val-fraction", "1.5"], "--val-fraction must lie strictly between 0 and 1"),
    (["--val-fraction", "0"], "--val-fraction must lie strictly between 0 and 1"),
    (["--blocks", "-1"], "--blocks must be >= 1"),
    (["--epochs", "-3"], "--epochs must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--workers", "-2"], "--workers must be >= 0"),
    (["--log-every", "0"], "--log-every must be >= 1"),
    (["--epochs", "two"], "argument --epochs: invalid int value"),
    (["--quantizer", "vq"], "argument --quantizer: invalid choice"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--precision", "fp8"], "argument --precision: invalid choice"),
]


@pytest.mark.parametrize("extra, needle", BAD_TRAIN_ARGUMENTS, ids=[" ".join(e) for e, _ in BAD_TRAIN_ARGUMENTS])
def test_bad_train_arguments_are_one_error_line(extra, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_tokenizer.parse_args(tiny(tmp_path, tmp_path / "out", 1, *extra))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: {needle}" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_batch_size_is_global_and_must_split_over_the_processes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit):
        train_tokenizer.parse_args(tiny(tmp_path, tmp_path / "out", 1))
    assert "--batch-size 4 is the global batch: it must be divisible by the 3 processes" in capsys.readouterr().err


def test_clear_errors_at_run_time(images, tmp_path, capsys):
    assert run_main(tiny(images, tmp_path / "a", 1, "--batch-size", "32")) == 2
    assert "--batch-size 32 is more than the 20 crops of an epoch" in capsys.readouterr().err
    assert run_main(tiny(images, tmp_path / "a", 1, "--fsdp")) == 2
    assert "--fsdp shards the model over torchrun's processes" in capsys.readouterr().err
    (tmp_path / "one").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "one" / "a.png")
    assert run_main(tiny(tmp_path / "one", tmp_path / "b", 1)) == 2
    assert "need at least 2 images" in capsys.readouterr().err
    assert run_main(tiny(tmp_path / "missing", tmp_path / "b", 1)) == 2
    assert "does not exist" in capsys.readouterr().err
    # a damaged file, met in a DataLoader worker: one line naming it, no traceback
    (tmp_path / "one" / "b.png").write_bytes(b"not a png")
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 60, 0, 0)).save(tmp_path / "one" / f"c{i}.png")
    assert run_main(tiny(tmp_path / "one", tmp_path / "c", 1, "--workers", "1", "--val-fraction", "0.2")) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: cannot read image") and "b.png" in last and "Traceback" not in err


def test_help_has_no_rest_markup_and_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_tokenizer.parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "``" not in out
    assert all(c in out for c in ("train", "encode", "decode", "torchrun --nproc_per_node", "--fsdp", "global batch"))


def test_epoch_shard_splits_every_global_batch_over_the_processes():
    """Two processes take disjoint halves of each global batch of the one-process order; every crop at most once."""
    n, batch, seed = 23, 4, 5
    one = train_tokenizer.EpochShard(n, batch, seed, Env(0, 1, torch.device("cpu")))
    two = [train_tokenizer.EpochShard(n, batch, seed, Env(r, 2, torch.device("cpu"))) for r in range(2)]
    for epoch in (0, 1):
        for s in (one, *two):
            s.set_epoch(epoch)
        order = list(one)
        assert len(order) == len(one) == 20 and len(set(order)) == 20 and all(e == epoch for e, _ in order)
        halves = [list(s) for s in two]
        assert all(len(h) == len(s) == 10 for h, s in zip(halves, two))
        for step in range(5):
            assert order[4 * step : 4 * step + 4] == halves[0][2 * step : 2 * step + 2] + halves[1][2 * step : 2 * step + 2]
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert [j for _, j in first] != [j for _, j in one]  # a new order every epoch


def test_checkpoints_record_and_enforce_vqp_version(images, tmp_path):
    out = tmp_path / "run"
    assert run_main(tiny(images, out, 1)) == 0
    with safe_open(str(out / "tokenizer.safetensors"), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta["vqp_version"] == vqp_releases.LATEST  # the default quantizer: the latest release's semantics
    assert meta["ifsq_quant_version"] and meta["world_size"] == 1
    # a checkpoint that pins another release is loaded with that release's quantizer
    tensors = load_file(str(out / "tokenizer.safetensors"))
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={k: json.dumps(dict(meta, vqp_version="1.22.15")[k]) for k in meta})
    model, _, _ = train_tokenizer.load(tmp_path / "old.safetensors")
    assert model.quantizer.vqp_version == "1.22.15"
    # the shared checkpoint helpers refuse a model whose quantizer has another release
    quantizer = torch.nn.Sequential(iFSQ([5, 5], vqp_version="1.22.15"))
    save_checkpoint(tmp_path / "q.safetensors", quantizer, {"a": 1})
    with pytest.raises(ExampleError, match=rf"vqp_version='1.22.15'.*this model's are '{vqp_releases.LATEST}'"):
        load_checkpoint(tmp_path / "q.safetensors", torch.nn.Sequential(iFSQ([5, 5])), {"a": 1})
    assert load_checkpoint(tmp_path / "q.safetensors", torch.nn.Sequential(iFSQ([5, 5], vqp_version="1.22.15")), {"a": 1})[
        "vqp_version"] == "1.22.15"


# ----------------------------------------------------------------------------- under torch.distributed.run (slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "examples.train_tokenizer", *args]
    proc = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_ddp_train_resume_encode_match_one_process(images, tmp_path):
    """2 gloo processes (DDP): 1 epoch, --resume to 2, encode; the same training as one process (global batch)."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run_main(tiny(images, single, 2, "--lr", "0.05")) == 0
    first = torchrun(tiny(images, ddp, 1, "--lr", "0.05", "--workers", "1"))
    assert "(2 x 2, DDP on cpu)" in first.stdout
    assert first.stdout.count("epoch 1: train loss") == 1  # rank 0 alone prints
    second = torchrun(tiny(images, ddp, 2, "--lr", "0.05", "--resume", "--workers", "1"))
    assert "epochs 2..2" in second.stdout and second.stdout.count("epoch 2: train loss") == 1
    # the global batch of 4 is 2 per process: the same crops and mean gradients, to float rounding (Adam amplifies it a little)
    assert relative_gap(single / "tokenizer.safetensors", ddp / "tokenizer.safetensors") < 0.1
    one = json.loads((single / "history.json").read_text())["history"]
    two = json.loads((ddp / "history.json").read_text())["history"]
    for a, b in zip(one, two, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3) and a["val_psnr"] == pytest.approx(b["val_psnr"], rel=1e-3)
    with safe_open(str(ddp / "tokenizer.safetensors"), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta["world_size"] == 2 and meta["epoch"] == 2
    # the usage counts of both processes' batches, all-reduced: every latent of the epoch's 5 x 4 crops (2x2 latents each)
    usage = load_file(str(ddp / "tokenizer.safetensors"))["model.usage.bin_counts"]
    assert int(usage[:8].sum()) == 5 * 4 * 2 * 2

    tokens = tmp_path / "tokens.npy"
    third = torchrun(["encode", "--images", str(images), "--checkpoint", str(ddp / "tokenizer.safetensors"), "--out", str(tokens),
                      "--workers", "1", "--batch-size", "2"])
    assert third.stdout.count("6 images ->") == 1
    model, _, _ = train_tokenizer.load(ddp / "tokenizer.safetensors")
    with torch.no_grad():
        _, expected = model.encode(load_images(list_images(images), 16))
    assert np.array_equal(np.load(tokens), expected.numpy())  # every image once, in the folder's order


@pytest.mark.slow
def test_torchrun_fsdp2_matches_one_process(images, tmp_path):
    """2 gloo processes with --fsdp (fully_shard): one epoch, the checkpoint gathered to full tensors, then --resume
    (the full optimizer state sharded again) to two: the same training as one process."""
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    assert run_main(tiny(images, single, 1, "--lr", "0.05")) == 0
    proc = torchrun(tiny(images, fsdp, 1, "--lr", "0.05", "--fsdp"))
    assert "(2 x 2, FSDP2 on cpu)" in proc.stdout and proc.stdout.count("epoch 1: train loss") == 1
    assert relative_gap(single / "tokenizer.safetensors", fsdp / "tokenizer.safetensors") < 0.1
    assert run_main(tiny(images, single, 2, "--lr", "0.05", "--resume")) == 0
    proc = torchrun(tiny(images, fsdp, 2, "--lr", "0.05", "--fsdp", "--resume"))
    assert "epochs 2..2" in proc.stdout and proc.stdout.count("epoch 2: train loss") == 1
    assert relative_gap(single / "tokenizer.safetensors", fsdp / "tokenizer.safetensors") < 0.1
    assert sorted(p.name for p in (fsdp / "reconstructions").iterdir()) == ["epoch_001.png", "epoch_002.png"]


def test_bf16_autocast_on_the_cpu_and_resume_without_a_checkpoint(images, tmp_path, capsys):
    assert run_main(tiny(images, tmp_path / "bf16", 1, "--precision", "bf16", "--resume")) == 0
    out = capsys.readouterr().out
    assert "no checkpoint in" in out and "training from epoch 1" in out and "bf16 autocast" in out
    row = json.loads((tmp_path / "bf16" / "history.json").read_text())["history"][0]
    assert np.isfinite(row["train_loss"]) and row["val_psnr"] > 0
    assert all(v.dtype == torch.float32 for k, v in weights(tmp_path / "bf16" / "tokenizer.safetensors").items() if "weight" in k)


def test_tensorboard_event_files(images, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard); --tensorboard is optional")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_main(tiny(images, tmp_path / "tb", 1, "--tensorboard")) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "epoch/val_psnr", "epoch/train_utilization"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 5]
    assert events.Tags()["images"]  # the reconstruction grid
