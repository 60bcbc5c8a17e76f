"""Releases of vector-quantize-pytorch for the parity tests, each installed into its own cached folder.

``vqp_release(version)`` installs the release with ``pip install --no-deps --target`` into
``$IFSQ_VQP_RELEASES/<version>`` (default ``$XDG_CACHE_HOME/ifsq-quant/vqp-releases``, where
``XDG_CACHE_HOME`` defaults to ``~/.cache``: ``cache_dirs.py``; its
dependencies, torch, einops and einx, come from the dev extra) and imports its
``finite_scalar_quantization`` and ``residual_fsq`` modules under their own names without its
package ``__init__`` (which imports quantizers unrelated to FSQ), leaving ``sys.modules`` as it
was: several releases live side by side in one process. Where a release cannot be installed
(no network, no wheel), the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from tests.parity.cache_dirs import cache_dir
from tests.parity.family_sources import import_package_modules

CACHE = cache_dir("IFSQ_VQP_RELEASES", "vqp-releases")
PACKAGE = "vector_quantize_pytorch"
_loaded: dict[str, types.SimpleNamespace] = {}
_failed: dict[str, str] = {}


def _install(version: str) -> Path:
    """The folder holding ``vector_quantize_pytorch`` of ``version``, installed on first use."""
    target = CACHE / version
    if (target / PACKAGE / "residual_fsq.py").exists():
        return target
    partial = CACHE / f".{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
           "--target", str(partial), f"vector-quantize-pytorch=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not (partial / PACKAGE / "residual_fsq.py").exists():
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"pip could not install vector-quantize-pytorch=={version}: {result.stderr.strip()[-300:]}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _import(version: str, folder: Path) -> types.SimpleNamespace:
    """The release's FSQ modules, imported in isolation (``sys.modules`` restored afterwards)."""
    with warnings.catch_warnings():  # old releases use deprecated torch.cuda.amp spellings
        warnings.simplefilter("ignore")
        modules = import_package_modules(PACKAGE, folder, ["finite_scalar_quantization", "residual_fsq"])
    fsq, residual = modules["finite_scalar_quantization"], modules["residual_fsq"]
    return types.SimpleNamespace(version=version, FSQ=fsq.FSQ, ResidualFSQ=residual.ResidualFSQ,
                                 GroupedResidualFSQ=residual.GroupedResidualFSQ)


def load_release(version: str) -> types.SimpleNamespace:
    """``version``'s ``FSQ``, ``ResidualFSQ`` and ``GroupedResidualFSQ`` (``pytest.skip`` if it cannot be installed)."""
    if version in _failed:
        pytest.skip(_failed[version])
    if version not in _loaded:
        try:
            _loaded[version] = _import(version, _install(version))
        except Exception as error:  # no network, no such release, an import that fails here
            _failed[version] = f"vector-quantize-pytorch {version} unavailable: {error}"
            pytest.skip(_failed[version])
    return _loaded[version]


@pytest.fixture(scope="session")
def vqp_release():
    """``vqp_release("1.17.8")`` -> that release's FSQ classes (see the module docstring)."""
    return load_release
