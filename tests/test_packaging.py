"""The built wheel installs into a fresh virtual environment that has only torch, and imports."""

import subprocess
import sys
import venv
from pathlib import Path

import ifsq_quant

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd, cwd=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_installs_and_imports_with_torch_alone(tmp_path):
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT))
    [wheel] = wheels.glob("ifsq_quant-*.whl")
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    # torch pinned to the CPU wheel (plain "torch" would pull a CUDA build); einops and numpy follow.
    _run(python, "-m", "pip", "install", "-q", f"torch=={ifsq_quant_torch_version()}", str(wheel))
    listing = _run(python, "-m", "pip", "list", "--format=freeze").lower()
    assert "triton" not in listing and "vector-quantize-pytorch" not in listing
    out = _run(python, "-c", (
        "import ifsq_quant, torch; from ifsq_quant import FSQ, iFSQ, CodeUsage;"
        "q = iFSQ([17, 17, 17, 17]); out, idx = q(torch.randn(2, 4, 8, 8));"
        "assert torch.equal(q.indices_to_codes(idx), out);"
        "import importlib.resources as r; assert r.files('ifsq_quant').joinpath('py.typed').is_file();"
        "print(ifsq_quant.__version__)"
    ), cwd=tmp_path)
    assert out.strip() == ifsq_quant.__version__ == "0.1.0"


def ifsq_quant_torch_version():
    import torch

    return torch.__version__.split("+")[0]
