"""Checkpoints as safetensors files, and the output folder they are written to.

A checkpoint is a safetensors file of tensors (a module's ``state_dict``) with JSON metadata:
``config``, what the tensors were trained with (a checkpoint is reused only for the same
``config``); ``ifsq_quant_version``, the package that wrote it; ``vqp_version``, the
vector-quantize-pytorch release whose semantics the model's quantizers have (``"1.32.0"``: build
them with ``vqp_version="1.32.0"`` to get the same codes and indices from a later version of the
package; a mapping from module name to release where they differ; ``null`` for a model without
a quantizer); and any further information the caller keeps beside it (the demo keeps the training
losses, ``examples/train_tokenizer.py`` the epoch and its validation history).
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

import ifsq_quant
from examples.training import ExampleError
from ifsq_quant import vqp_releases


def check_output_dir(out: Path) -> None:
    """Creates ``out`` (and ``out/checkpoints``) and proves it is writable, or raises ExampleError."""
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ExampleError(f"output folder {str(out)!r} is not writable: {e.strerror or e}") from None


def quantizer_releases(module: nn.Module) -> str | dict[str, str] | None:
    """The vector-quantize-pytorch release (``vqp_releases.semantics(...).release``) of every quantizer in
    ``module``: one string when they agree, ``{module name: release}`` when not, None without a quantizer."""
    releases = {name: vqp_releases.semantics(m.vqp_version).release for name, m in module.named_modules()
                if hasattr(m, "vqp_version") and hasattr(m, "vqp")}
    if not releases:
        return None
    distinct = set(releases.values())
    return distinct.pop() if len(distinct) == 1 else releases


def save_checkpoint(path: Path, tensors: nn.Module | dict[str, torch.Tensor], config: dict, *, model: nn.Module | None = None,
                    **info) -> None:
    """``tensors`` (a module: its state_dict) -> safetensors file ``path``; ``config`` and each ``info`` value as JSON metadata.

    The metadata also records ``ifsq_quant_version`` and ``vqp_version`` (``quantizer_releases`` of
    ``model``, or of ``tensors`` when that is the module).
    """
    from safetensors.torch import save_file

    if model is None and isinstance(tensors, nn.Module):
        model = tensors
    state = tensors.state_dict() if isinstance(tensors, nn.Module) else tensors
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    info = dict(ifsq_quant_version=ifsq_quant.__version__, vqp_version=None if model is None else quantizer_releases(model), **info)
    metadata = {"config": json.dumps(config, sort_keys=True), **{k: json.dumps(v) for k, v in info.items()}}
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata=metadata)
    os.replace(partial, path)


def read_config(path: Path) -> dict:
    """The ``config`` a checkpoint was written with (raises ExampleError if it has none)."""
    return read_checkpoint(path, None)[1]["config"]


def config_differences(saved, expected, prefix: str = "") -> list[str]:
    """The keys (dotted for nested dicts) whose values differ between two configurations, as ``key: saved -> expected``."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(saved) | set(expected), key=str):
            missing = "(absent)"
            out += config_differences(saved.get(key, missing), expected.get(key, missing), f"{prefix}{key}.")
        return out
    return [] if saved == expected else [f"{prefix.rstrip('.')}: {saved} in the checkpoint, {expected} here"]


def read_checkpoint(path: Path, config: dict | None, missing_hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a checkpoint written by ``save_checkpoint`` -> (tensors, metadata: ``config`` and the ``info`` values).

    Raises ExampleError if the file is missing (the message ends with ``missing_hint``), is not a
    readable safetensors file, or (unless ``config`` is None) was written for a different
    configuration (the message names every setting that differs).
    """
    from safetensors import safe_open

    if not path.is_file():
        raise ExampleError(f"checkpoint {str(path)!r} not found{'; ' + missing_hint if missing_hint else ''}")
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
    expected = None if config is None else json.loads(json.dumps(config, sort_keys=True))
    if expected is not None and saved != expected:
        raise ExampleError(f"checkpoint {str(path)!r} was written for another configuration: {'; '.join(config_differences(saved, expected))}")
    return state, info


def load_checkpoint(path: Path, module: nn.Module, config: dict, missing_hint: str = "") -> dict:
    """Loads a checkpoint of ``config`` into ``module`` -> its metadata (see ``read_checkpoint``).

    Raises ExampleError also when the checkpoint's ``vqp_version`` (when it records one) is not the
    release of ``module``'s quantizers: their codes and indices would differ from the training's.
    """
    state, info = read_checkpoint(path, config, missing_hint)
    recorded, here = info.get("vqp_version"), quantizer_releases(module)
    if recorded is not None and recorded != here:
        raise ExampleError(f"checkpoint {str(path)!r} was trained with quantizers of vqp_version={recorded!r}, this model's are "
                           f"{here!r}: build its quantizers with vqp_version={recorded!r}")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ExampleError(f"checkpoint {str(path)!r} does not fit the model: {e}") from None
    return info
