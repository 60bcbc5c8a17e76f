"""The end-to-end demo's command line (``python -m examples.end_to_end``): its stages in process on a tiny
preset, bad input, the smoke preset end to end,
and the tokenizer stage under ``torch.distributed.run`` with 2 processes. The subprocess tests are marked
``slow`` (``-m "not slow"`` leaves them out).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from examples import end_to_end
from examples.presets import PRESETS, make_preset

ROOT = Path(__file__).resolve().parents[2]

# A preset that trains every model for two steps: the whole chain in a few seconds.
TINY = make_preset(classifier=dict(steps=2), tokenizer=dict(steps=2), ar=dict(steps=3, dim=32, depth=1, heads=2, cfg_sweep=[]),
                   diffusion=dict(steps=3, dim=32, depth=1, heads=2, sample_steps=2, cfg_sweep=[]), num_samples=20)


@pytest.fixture
def tiny(monkeypatch):
    """Presets ``tiny`` and ``tiny_other`` (its classifier trained one step longer); restores the thread count after."""
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    monkeypatch.setitem(PRESETS, "tiny_other", make_preset(**{**TINY, "classifier": dict(TINY["classifier"], steps=3)}))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the demo sets the thread count of this (pytest's) process


def test_full_preset_patch_tokenizers_wiring(tmp_path, tiny, monkeypatch):
    """The ``full`` preset's natural-patch tokenizers, with a few steps (in process)."""
    monkeypatch.setitem(PRESETS, "tiny_patches", make_preset(classifier=dict(steps=2), tokenizer=dict(steps=2),
                                                            patches=dict(PRESETS["full"]["patches"], steps=2, channels=[8, 8, 16], blocks=1)))
    args = end_to_end.parse_args(["--preset", "tiny_patches", "--stages", "classifier,tokenizers", "--out", str(tmp_path)])
    metrics = end_to_end.run(args)
    for kind in ("fsq", "ifsq"):
        m = metrics["tokenizers_patches"][kind]
        assert math.isfinite(m["psnr"]) and 0.0 < m["utilization"] <= 1.0
    assert (tmp_path / "patch_reconstructions.png").is_file()
    assert "natural 32x32 patches" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------- as a command (subprocesses)


def demo_command(args: list[str], launcher: list[str] | None = None) -> list[str]:
    return [sys.executable, *(launcher or []), "-m", "examples.end_to_end", *args]


def run_script(args: list[str], timeout: float, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(demo_command(args, launcher), cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_unknown_preset_is_a_clear_error(tmp_path):
    assert_clean_error(run_script(["--preset", "huge", "--out", str(tmp_path)], timeout=120), "invalid choice: 'huge'")


@pytest.mark.slow
def test_unknown_stage_is_a_clear_error(tmp_path):
    assert_clean_error(run_script(["--preset", "smoke", "--stages", "gan", "--out", str(tmp_path)], timeout=120), "unknown stage")


@pytest.mark.slow
def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    proc = run_script(["--preset", "smoke", "--out", str(blocker / "out")], timeout=120)
    assert_clean_error(proc, "is not writable")
    assert "classifier" not in proc.stderr  # no training started
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_clear_error_before_training(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for name in ("classifier", "tokenizer_ifsq"):
        (ckpt / f"{name}.safetensors").write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    proc = run_script(["--preset", "smoke", "--stages", "ar", "--out", str(tmp_path)], timeout=120)
    assert_clean_error(proc, "is corrupt or not a safetensors file")
    assert "ar:" not in proc.stderr and not (ckpt / "ar.safetensors").exists()


SMOKE_BUDGET_S = 180


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    t0 = time.perf_counter()
    proc = run_script(["--preset", "smoke", "--out", str(tmp_path)], timeout=SMOKE_BUDGET_S + 60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < SMOKE_BUDGET_S, f"smoke preset took {elapsed:.0f} s"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for kind in ("fsq", "ifsq"):
        m = metrics["tokenizers"][kind]
        for key in ("psnr", "ssim", "utilization", "codebook_usage"):
            assert isinstance(m[key], float) and math.isfinite(m[key]), (kind, key, m[key])
        assert 0.0 < m["utilization"] <= 1.0 and 0.0 < m["codebook_usage"] <= 1.0
    for gen in ("ar", "diffusion"):
        assert math.isfinite(metrics[gen]["fd"]) and 0.0 <= metrics[gen]["accuracy"] <= 1.0
    assert {"fd_real", "fd_reconstruction", "fd_random_tokens"} <= set(metrics["baselines"])
    assert metrics["baselines"]["fd_real"] < metrics["baselines"]["fd_random_tokens"]
    assert metrics["config"]["preset"] == "smoke" and metrics["seconds"]["total"] > 0
    report = (tmp_path / "report.md").read_text()
    for png in ("reconstructions.png", "ar_samples.png", "diffusion_samples.png", "bin_usage.png", "training_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in report
    assert "iFSQ tokenizer PSNR" in proc.stdout  # the summary table
    assert "only check the plumbing" in report.split("## ")[0]  # the smoke preset says its numbers only check the plumbing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_tokenizer_stage(tmp_path):
    launcher = ["-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}"]
    proc = run_script(["--preset", "smoke", "--stages", "tokenizers", "--out", str(tmp_path)], timeout=240, launcher=launcher)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["world_size"] == 2
    assert set(metrics["tokenizers"]) == {"fsq", "ifsq"}
    tok_cfg = PRESETS["smoke"]["tokenizer"]
    for kind in ("fsq", "ifsq"):
        m = metrics["tokenizers"][kind]
        assert math.isfinite(m["psnr"]) and 0.0 < m["utilization"] <= 1.0
        # usage counted on both ranks' shards, then all-reduced: every training latent of the global batch
        assert m["train_usage"]["samples"] == tok_cfg["steps"] * tok_cfg["batch_size"] * 16
        assert (tmp_path / "checkpoints" / f"tokenizer_{kind}.safetensors").is_file()
    assert "ar" not in metrics and "diffusion" not in metrics
