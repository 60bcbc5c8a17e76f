"""Where the parity tests keep what they download, and the download.

``cache_dir(env_var, name)`` is the folder named by the environment variable ``env_var`` when it
is set (and not empty); otherwise ``$XDG_CACHE_HOME/ifsq-quant/<name>``, with ``~/.cache`` in
place of ``$XDG_CACHE_HOME`` when that is unset, empty or not an absolute path (as the XDG Base
Directory specification says to treat it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def user_cache_home() -> Path:
    """``$XDG_CACHE_HOME`` if it is an absolute path, else ``~/.cache``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg)
    return Path.home() / ".cache"


def cache_dir(env_var: str, name: str) -> Path:
    """``$env_var`` if set, else ``<user cache home>/ifsq-quant/<name>``."""
    explicit = os.environ.get(env_var, "")
    if explicit:
        return Path(explicit)
    return user_cache_home() / "ifsq-quant" / name


def download(spec: str, cache: Path) -> Path:
    """The wheel or sdist of ``spec`` ("name==version"), downloaded with ``pip download --no-deps`` into
    ``cache`` on first use (through a partial folder, renamed when complete). Raises ``RuntimeError`` when
    pip cannot get it."""
    folder = cache / spec.replace("==", "-")
    if not folder.is_dir() or not any(folder.iterdir()):
        partial = cache / f".{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "-d", str(partial), spec]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not any(partial.iterdir()):
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"pip download failed: {result.stderr.strip()[-300:]}")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    (archive,) = [p for p in folder.iterdir() if p.name.endswith((".whl", ".tar.gz"))]
    return archive
