"""Where the parity tests keep what they download.

``cache_dir(env_var, name)`` is the folder named by the environment variable ``env_var`` when it
is set (and not empty); otherwise ``$XDG_CACHE_HOME/ifsq-quant/<name>``, with ``~/.cache`` in
place of ``$XDG_CACHE_HOME`` when that is unset, empty or not an absolute path (as the XDG Base
Directory specification says to treat it).
"""

from __future__ import annotations

import os
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
