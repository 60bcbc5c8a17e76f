"""The download caches of the parity tests honour ``XDG_CACHE_HOME`` and their own variables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.parity.cache_dirs import cache_dir

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"])
def test_default_is_home_cache(monkeypatch, tmp_path, xdg):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("IFSQ_SOME_CACHE", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)  # empty or relative: ignored, as the XDG specification says
    assert cache_dir("IFSQ_SOME_CACHE", "things") == tmp_path / ".cache" / "ifsq-quant" / "things"


def test_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("IFSQ_SOME_CACHE", raising=False)
    assert cache_dir("IFSQ_SOME_CACHE", "things") == tmp_path / "xdg" / "ifsq-quant" / "things"


def test_explicit_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("IFSQ_SOME_CACHE", str(tmp_path / "mine"))
    assert cache_dir("IFSQ_SOME_CACHE", "things") == tmp_path / "mine"


@pytest.mark.parametrize(("file", "variable", "name"), [("conftest.py", "IFSQ_VQP_RELEASES", "vqp-releases"),
                                                      ("test_published_codecs.py", "IFSQ_CODEC_SOURCES", "codec-sources"),
                                                      ("family_sources.py", "IFSQ_FAMILY_SOURCES", "family-sources")])
def test_the_parity_caches_use_it(monkeypatch, tmp_path, file, variable, name):
    """Each cache of the parity tests: under XDG_CACHE_HOME, or where its own variable says."""
    def cache_of(module_file: str) -> Path:  # the module's CACHE, from a fresh copy of the module
        spec = importlib.util.spec_from_file_location(f"_cache_probe_{tmp_path.name}", HERE / module_file)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return Path(module.CACHE)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(variable, raising=False)
    assert cache_of(file) == tmp_path / "ifsq-quant" / name
    monkeypatch.setenv(variable, str(tmp_path / "own"))
    assert cache_of(file) == tmp_path / "own"
