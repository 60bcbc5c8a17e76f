"""Checkpoints as safetensors files, and the output folder they are written to.

A checkpoint is a safetensors file of tensors (a module's ``state_dict``) with JSON metadata:
``config``, what the tensors were trained with (a checkpoint is reused only for the same
``config``), and any further information the caller keeps beside it (the demo keeps the
training losses, ``examples/train_tokenizer.py`` the epoch and its validation history).
Loading one never unpickles anything (the guarantee ``weights_only=True`` gives ``torch.load``),
and a file is written under a temporary name and renamed, so an interrupted write never leaves
a damaged checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from examples.training import ExampleError


def check_output_dir(out: Path) -> None:
    """Creates ``out`` (and ``out/checkpoints``) and proves it is writable, or raises ExampleError."""
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ExampleError(f"output folder {str(out)!r} is not writable: {e.strerror or e}") from None


def save_checkpoint(path: Path, tensors: nn.Module | dict[str, torch.Tensor], config: dict, **info) -> None:
    """``tensors`` (a module: its state_dict) -> safetensors file ``path``; ``config`` and each ``info`` value as JSON metadata."""
    from safetensors.torch import save_file

    state = tensors.state_dict() if isinstance(tensors, nn.Module) else tensors
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"config": json.dumps(config, sort_keys=True), **{k: json.dumps(v) for k, v in info.items()}}
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata=metadata)
    os.replace(partial, path)


def read_config(path: Path) -> dict:
    """The ``config`` a checkpoint was written with (raises ExampleError if it has none)."""
    return read_checkpoint(path, None)[1]["config"]


def read_checkpoint(path: Path, config: dict | None) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a checkpoint written by ``save_checkpoint`` -> (tensors, metadata: ``config`` and the ``info`` values).

    Raises ExampleError if the file is missing, is not a readable safetensors file, or (unless
    ``config`` is None) was written for a different configuration.
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
        info = {k: json.loads(v) for k, v in metadata.items()}
        saved = info["config"]
    except (KeyError, json.JSONDecodeError):
        raise ExampleError(f"checkpoint {str(path)!r} has no readable configuration metadata; delete it and retrain") from None
    if config is not None and saved != json.loads(json.dumps(config, sort_keys=True)):
        raise ExampleError(f"checkpoint {str(path)!r} was written for another configuration ({saved}); expected {config}")
    return state, info


def load_checkpoint(path: Path, module: nn.Module, config: dict) -> dict:
    """Loads a checkpoint of ``config`` into ``module`` -> its metadata (see ``read_checkpoint``)."""
    state, info = read_checkpoint(path, config)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ExampleError(f"checkpoint {str(path)!r} does not fit the model: {e}") from None
    return info
