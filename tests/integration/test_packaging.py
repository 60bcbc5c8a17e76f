"""Packaging: the sdist and wheel build and pass twine check, their metadata is complete, the
sdist's tests collect, and the wheel installs into a fresh environment that has only torch."""

import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import ifsq_quant

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd, cwd=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and the wheel, built once (without build isolation: offline and fast)."""
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT))
    [sdist] = out.glob("ifsq_quant-*.tar.gz")
    [wheel] = out.glob("ifsq_quant-*.whl")
    return sdist, wheel


@pytest.mark.slow
def test_sdist_and_wheel_pass_twine_check(dists):
    pytest.importorskip("twine", reason="twine is in the dev extra")
    out = _run(sys.executable, "-m", "twine", "check", "--strict", *map(str, dists))
    assert out.count("PASSED") == 2


@pytest.mark.slow
def test_metadata_is_complete_and_the_version_is_in_one_place(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        [name] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(name).decode())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
    assert meta["Version"] == ifsq_quant.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Author"] == "ifsq-quant developers" or "ifsq-quant developers" in (meta["Author-email"] or "")
    assert meta["Keywords"] and len(meta.get_all("Classifier")) >= 5
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(core) == ["einops>=0.7", "torch>=2.6"]  # numpy comes only with the triton extra
    assert any(r.startswith("triton>=3.2") for r in requires)
    assert any(r.startswith("twine") and "dev" in r for r in requires)
    # the version lives in ifsq_quant/__init__.py only
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M) and not re.search(r'^version = "', pyproject, re.M)
    assert "ifsq-quant developers" in (ROOT / "LICENSE").read_text()


@pytest.mark.slow
def test_sdist_tests_collect(dists, tmp_path):
    """The sdist ships the tests that run against the installed package, and they collect."""
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp_path, filter="data")
        else:  # Python < 3.10.12
            tar.extractall(tmp_path)
    root = tmp_path / sdist.name.removesuffix(".tar.gz")
    shipped = {Path(n).name for n in names if "/tests/" in n}
    assert "test_residual.py" in shipped and "test_examples.py" not in shipped and "test_studies.py" not in shipped
    assert any(n.endswith("/LICENSE") for n in names) and any(n.endswith("/docs/design.md") for n in names)
    out = _run(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", cwd=root)
    assert "error" not in out.lower().split("\n")[-2], out[-2000:]
    assert " collected" in out or "tests collected" in out
