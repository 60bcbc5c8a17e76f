"""The end-to-end demo's command line (``python -m examples.end_to_end``): its stages in process on a tiny
preset (a folder of another run refused, Ctrl-C, ``--resume``), bad input, the smoke preset end to end,
and the tokenizer stage under ``torch.distributed.run`` with 2 processes. The subprocess tests are marked
``slow`` (``-m "not slow"`` leaves them out).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from examples import end_to_end, pipeline
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


def run_demo(*args: str) -> int:
    try:
        return end_to_end.main(list(args))
    except KeyboardInterrupt:  # must not escape main(): it would stop the test session
        pytest.fail("KeyboardInterrupt escaped end_to_end.main")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_of_another_preset_is_refused_untouched(tmp_path, tiny, capsys):
    assert run_demo("--preset", "tiny", "--stages", "classifier", "--out", str(tmp_path)) == 0
    before = snapshot(tmp_path)
    assert "metrics.json" in before and "checkpoints/classifier.safetensors" in before
    capsys.readouterr()
    assert run_demo("--preset", "tiny_other", "--stages", "classifier", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "holds another run (preset 'tiny')" in err and "choose another --out" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing rewritten
    # without metrics.json, a checkpoint trained with another configuration is refused as well
    (tmp_path / "metrics.json").unlink()
    assert run_demo("--preset", "tiny_other", "--stages", "classifier", "--out", str(tmp_path)) == 2
    assert "was trained with another configuration" in capsys.readouterr().err
    assert snapshot(tmp_path) == {k: v for k, v in before.items() if k != "metrics.json"}
    # the same preset again is the same run: allowed
    assert run_demo("--preset", "tiny", "--stages", "classifier", "--out", str(tmp_path)) == 0


def test_interrupt_exits_with_one_line_that_says_how_to_resume(tmp_path, tiny, capsys, monkeypatch):
    train = pipeline.train

    def interrupted_in_ar(model, loss_fn, tensors, cfg, env, seed, desc, **kwargs):  # Ctrl-C while the AR transformer trains
        if desc == "ar":
            raise KeyboardInterrupt
        return train(model, loss_fn, tensors, cfg, env, seed, desc, **kwargs)

    monkeypatch.setattr(pipeline, "train", interrupted_in_ar)
    assert run_demo("--preset", "tiny", "--out", str(tmp_path)) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.lstrip().startswith(("classifier", "tokenizer"))]
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].endswith(f"to continue: python -m examples.end_to_end --preset tiny --out {tmp_path} --resume")
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"classifier.safetensors", "tokenizer_fsq.safetensors",
                                                                       "tokenizer_ifsq.safetensors"}  # the finished stages


def test_resume_keeps_the_training_losses_of_loaded_stages(tmp_path, tiny):
    assert run_demo("--preset", "tiny", "--out", str(tmp_path)) == 0
    trained = json.loads((tmp_path / "metrics.json").read_text())
    assert run_demo("--preset", "tiny", "--out", str(tmp_path), "--resume") == 0
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    for stage in ("ar", "diffusion"):  # every model loaded from its checkpoint: same numbers, training losses kept
        assert resumed[stage]["train_loss"] is not None and resumed[stage]["train_loss"] == trained[stage]["train_loss"]
        assert resumed[stage]["fd"] == trained[stage]["fd"] and resumed[stage]["val_loss"] == trained[stage]["val_loss"]
    assert resumed["tokenizers"]["ifsq"]["psnr"] == trained["tokenizers"]["ifsq"]["psnr"]
    assert "Training curves" in (tmp_path / "report.md").read_text()  # the loaded models' curves, from their checkpoints


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


@pytest.mark.slow
def test_sigint_stops_cleanly_and_names_the_resume_command(tmp_path):
    """A real Ctrl-C (SIGINT) once the first checkpoint is written: exit status 130, no traceback, one line with the command."""
    # SIGINT back to its default in the child: a shell's background job (how CI may start pytest) ignores
    # it, the child would inherit that, and Python installs no KeyboardInterrupt handler then
    proc = subprocess.Popen(demo_command(["--preset", "smoke", "--out", str(tmp_path)]), cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (tmp_path / "checkpoints" / "classifier.safetensors").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and last.endswith(f"python -m examples.end_to_end --preset smoke --out {tmp_path} --resume")


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
    assert metrics["config"]["command"] == f"python -m examples.end_to_end --preset smoke --out {tmp_path}"
    report = (tmp_path / "report.md").read_text()
    for png in ("reconstructions.png", "ar_samples.png", "diffusion_samples.png", "bin_usage.png", "training_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in report
    assert "iFSQ tokenizer PSNR" in proc.stdout  # the summary table
    # the smoke preset says, on the terminal and in its report, that its numbers only check the plumbing
    assert "only check the plumbing" in proc.stdout and "only check the plumbing" in report.split("## ")[0]


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
