"""The FSQ classes of other projects' releases, loaded from their own released files.

Each release is downloaded once (``pip download --no-deps``) into ``$IFSQ_FAMILY_SOURCES``
(default ``$XDG_CACHE_HOME/ifsq-quant/family-sources``, see ``cache_dirs.py``), and the few
source files the tests need are read from the archive. Nothing is installed: the full packages
pull in Lightning, transformers, torchaudio, hydra and the like, none of which the quantizers
use. Where a release cannot be had (no network, no such release) the test asking for it is
skipped with the reason.

* ``nemo()``: nemo-toolkit 3.0.0, ``nemo/collections/tts/modules/audio_codec_modules.py``:
  the class definitions ``VectorQuantizerBase``, ``FiniteScalarQuantizer`` and
  ``GroupFiniteScalarQuantizer``, taken with ``ast`` and executed with the function
  ``mask_sequence_tensor`` of ``nemo/collections/common/parts/utils.py`` (also taken from the
  release) and small stand-ins for NeMo's module and typing machinery (``NeuralModule`` is a
  ``torch.nn.Module``; ``typecheck`` does the input checks of ``nemo.core.classes.common.typecheck``
  that decide whether a call is valid: arguments by keyword only, the mandatory ones present, no
  unknown names, tensors of the declared rank; it attaches no neural types to outputs).
* ``stable_codec()``: stable-codec 0.1.2, ``stable_codec/fsq.py`` (``DitheredFSQ``) and
  ``stable_codec/residual_fsq.py`` (``ResidualFSQBottleneck``, which imports ``.fsq``), imported
  as a package of these two modules only, without its ``__init__``.
* ``stable_audio_tools(version)``: ``stable_audio_tools/models/fsq.py`` of stable-audio-tools
  0.0.19 (the newest release; the same file as stable-codec's) or 0.0.17 (the release stable-codec
  0.1.2 pins, whose ``DitheredFSQ`` is older), imported as a single module.
* ``s3tokenizer()``: s3tokenizer 0.3.0, ``s3tokenizer/model_v2.py``: the class definitions
  ``FSQCodebook`` and ``FSQVectorQuantization`` (the module itself imports the package's
  audio front end), taken with ``ast``.

Every loader checks that the code it executes names nothing it was not given, so a release whose
classes need more than these stand-ins fails loudly instead of running on a wrong stub.
``sys.modules`` is left as it was.
"""

from __future__ import annotations

import abc
import ast
import builtins
import functools
import importlib
import importlib.util
import math
import shutil
import sys
import tarfile
import types
import typing
import zipfile
from pathlib import Path

import einops
import pytest
import torch

from tests.parity.cache_dirs import cache_dir, download

CACHE = cache_dir("IFSQ_FAMILY_SOURCES", "family-sources")

NEMO = "nemo-toolkit==3.0.0"
STABLE_CODEC = "stable-codec==0.1.2"
STABLE_AUDIO_TOOLS = {"0.0.19": "stable-audio-tools==0.0.19", "0.0.17": "stable-audio-tools==0.0.17"}
S3TOKENIZER = "s3tokenizer==0.3.0"

NEMO_CODEC_MODULES = "nemo/collections/tts/modules/audio_codec_modules.py"
NEMO_UTILS = "nemo/collections/common/parts/utils.py"
STABLE_CODEC_FSQ = "stable_codec/fsq.py"
STABLE_CODEC_RESIDUAL = "stable_codec/residual_fsq.py"
STABLE_AUDIO_TOOLS_FSQ = "stable_audio_tools/models/fsq.py"
S3TOKENIZER_MODEL_V2 = "s3tokenizer/model_v2.py"



class Release(types.SimpleNamespace):
    """A release's classes and source texts (``spec`` names it; the texts stay out of its repr)."""

    def __repr__(self) -> str:
        return f"Release({self.spec})"


_archives: dict[str, Path] = {}
_loaded: dict[str, Release] = {}
_failed: dict[str, str] = {}


# --- the archives ----------------------------------------------------------------------------

def _read(archive: Path, path: str) -> str:
    """The text of ``path`` in the archive (an sdist's top folder is not part of ``path``)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n == path]
            assert len(names) == 1, f"{archive.name}: {path} found {len(names)} times"
            return z.read(names[0]).decode("utf-8")
    with tarfile.open(archive) as t:
        members = [m for m in t.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == path]
        assert len(members) == 1, f"{archive.name}: {path} found {len(members)} times"
        return t.extractfile(members[0]).read().decode("utf-8")


def archive(spec: str) -> Path:
    """``spec``'s downloaded archive (``pytest.skip`` when it cannot be had)."""
    if spec in _failed:
        pytest.skip(_failed[spec])
    if spec not in _archives:
        try:
            _archives[spec] = download(spec, CACHE)
        except Exception as error:  # no network, no such release
            _failed[spec] = f"{spec} unavailable: {error}"
            pytest.skip(_failed[spec])
    return _archives[spec]


def source(spec: str, path: str) -> str:
    """The text of one file of a release (``pytest.skip`` when the release cannot be had)."""
    return _read(archive(spec), path)


def lines_of(text: str, needle: str) -> list[int]:
    """The 1-based lines of ``text`` that hold ``needle``."""
    return [i for i, line in enumerate(text.splitlines(), 1) if needle in line]


# --- executing selected definitions ------------------------------------------------------------

def _definitions(text: str, names: list[str]) -> list[ast.stmt]:
    """The top-level class / function definitions ``names`` of a module, in the module's order."""
    tree = ast.parse(text)
    found = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in names]
    missing = set(names) - {n.name for n in found}
    assert not missing, f"no definition of {sorted(missing)}"
    return found


def _free_names(nodes: list[ast.stmt]) -> set[str]:
    """Names the definitions read without binding them anywhere (an over-approximation of the globals they need)."""
    loaded, bound = set(), set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                bound.add(n.name)
            elif isinstance(n, ast.arg):
                bound.add(n.arg)
    return loaded - bound - set(dir(builtins))


def _execute(nodes: list[ast.stmt], namespace: dict, filename: str) -> dict:
    """Runs the definitions in ``namespace`` (after checking they need no name it lacks)."""
    missing = _free_names(nodes) - set(namespace)
    assert not missing, f"{filename}: the definitions need {sorted(missing)}, which the loader does not provide"
    module = ast.Module(body=nodes, type_ignores=[])
    exec(compile(module, filename, "exec"), namespace)  # noqa: S102 - the release's own code, read above
    return namespace


def import_package_modules(package: str, folder: Path, modules: list[str]) -> dict[str, types.ModuleType]:
    """``package.<module>`` for each of ``modules``, imported from ``folder`` without the package's
    ``__init__``; ``sys.modules`` restored afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == package or k.startswith(package + ".")}
    for key in saved:
        del sys.modules[key]
    stub = types.ModuleType(package)
    stub.__path__ = [str(folder / package)]
    sys.modules[package] = stub
    try:
        return {name: importlib.import_module(f"{package}.{name}") for name in modules}
    finally:
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]
        sys.modules.update(saved)


def _extract(spec: str, paths: list[str]) -> Path:
    """A folder holding ``paths`` of the release (written once, next to its archive)."""
    arch = archive(spec)
    folder = arch.parent / "files"
    if not all((folder / p).is_file() for p in paths):
        partial = arch.parent / ".files.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for path in paths:
            (partial / path).parent.mkdir(parents=True, exist_ok=True)
            (partial / path).write_text(_read(arch, path), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


def _cached(key: str, build) -> Release:
    if key in _failed:
        pytest.skip(_failed[key])
    if key not in _loaded:
        _loaded[key] = build()
    return _loaded[key]


# --- NeMo's stand-ins ---------------------------------------------------------------------------

class _NeuralType:
    """``NeuralType(axes, elements_type, optional=False)``: what ``typecheck`` reads of it."""

    def __init__(self, axes=None, elements_type=None, optional: bool = False):
        self.axes = tuple(axes) if axes is not None else None
        self.elements_type = elements_type
        self.optional = optional


class _ElementType:
    """``EncodedRepresentation()``, ``LengthsType()``, ``TokenIndex()``: carried, never compared."""


class _typecheck:  # noqa: N801 - NeMo's decorator name
    """The call checks of ``nemo.core.classes.common.typecheck`` (see the module docstring)."""

    def __init__(self, input_types=None, output_types=None, ignore_collections: bool = False):
        self.input_types = input_types

    def __call__(self, method):
        @functools.wraps(method)
        def checked(instance, *args, **kwargs):
            types_ = self.input_types if self.input_types is not None else instance.input_types
            if types_ is not None:
                if args:
                    raise TypeError("All arguments must be passed by kwargs only for typed methods")
                mandatory = [k for k, t in types_.items() if not t.optional]
                if not len(mandatory) <= len(kwargs) <= len(types_):
                    raise TypeError(f"Number of input arguments provided ({len(kwargs)}) is not as expected. Function has "
                                    f"{len(types_)} total inputs with {len(mandatory)} mandatory inputs.")
                for key, value in kwargs.items():
                    if key not in types_:
                        raise TypeError(f"Input argument {key} has no corresponding input_type match.")
                    axes = types_[key].axes
                    if hasattr(value, "shape") and axes is not None and len(value.shape) != len(axes):
                        raise TypeError(f"Input shape mismatch occured for {key}: expected {axes}, found {tuple(value.shape)}")
            return method(instance, *args, **kwargs)

        return checked


class _NeuralModule(torch.nn.Module):
    """``nemo.core.classes.module.NeuralModule`` as far as these classes use it: a ``torch.nn.Module``."""


_LOGGING = types.SimpleNamespace(debug=lambda *args, **kwargs: None, info=lambda *args, **kwargs: None)


def nemo() -> Release:
    """nemo-toolkit 3.0.0's ``FiniteScalarQuantizer`` and ``GroupFiniteScalarQuantizer`` (and ``mask_sequence_tensor``)."""

    def build():
        text = source(NEMO, NEMO_CODEC_MODULES)
        utils = source(NEMO, NEMO_UTILS)
        namespace = {"__name__": "nemo_audio_codec_modules_of_the_release", "torch": torch, "nn": torch.nn, "einops": einops,
                     "rearrange": einops.rearrange, "math": math, "ABC": abc.ABC, "abstractmethod": abc.abstractmethod,
                     "List": list, "Optional": typing.Optional, "Tuple": tuple, "Iterable": typing.Iterable,
                     "NeuralModule": _NeuralModule, "typecheck": _typecheck, "NeuralType": _NeuralType,
                     "EncodedRepresentation": _ElementType, "LengthsType": _ElementType, "TokenIndex": _ElementType,
                     "logging": _LOGGING}
        _execute(_definitions(utils, ["mask_sequence_tensor"]), namespace, f"{NEMO}:{NEMO_UTILS}")
        names = ["VectorQuantizerBase", "FiniteScalarQuantizer", "GroupFiniteScalarQuantizer"]
        _execute(_definitions(text, names), namespace, f"{NEMO}:{NEMO_CODEC_MODULES}")
        return Release(spec=NEMO, text=text, FiniteScalarQuantizer=namespace["FiniteScalarQuantizer"],
                                     GroupFiniteScalarQuantizer=namespace["GroupFiniteScalarQuantizer"],
                                     mask_sequence_tensor=namespace["mask_sequence_tensor"])

    return _cached("nemo", build)


def stable_codec() -> Release:
    """stable-codec 0.1.2's ``DitheredFSQ`` and ``ResidualFSQBottleneck``."""

    def build():
        folder = _extract(STABLE_CODEC, [STABLE_CODEC_FSQ, STABLE_CODEC_RESIDUAL])
        modules = import_package_modules("stable_codec", folder, ["fsq", "residual_fsq"])
        assert modules["residual_fsq"].DitheredFSQ is modules["fsq"].DitheredFSQ
        return Release(spec=STABLE_CODEC, text=(folder / STABLE_CODEC_FSQ).read_text(),
                                     residual_text=(folder / STABLE_CODEC_RESIDUAL).read_text(),
                                     DitheredFSQ=modules["fsq"].DitheredFSQ,
                                     ResidualFSQBottleneck=modules["residual_fsq"].ResidualFSQBottleneck)

    return _cached("stable-codec", build)


def stable_audio_tools(version: str = "0.0.19") -> Release:
    """``DitheredFSQ`` of stable-audio-tools ``version`` ("0.0.19" or "0.0.17")."""
    spec = STABLE_AUDIO_TOOLS[version]

    def build():
        folder = _extract(spec, [STABLE_AUDIO_TOOLS_FSQ])
        name = f"stable_audio_tools_{version.replace('.', '_')}_fsq"  # a name of its own: not left in sys.modules
        module_spec = importlib.util.spec_from_file_location(name, folder / STABLE_AUDIO_TOOLS_FSQ)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return Release(spec=spec, text=(folder / STABLE_AUDIO_TOOLS_FSQ).read_text(), DitheredFSQ=module.DitheredFSQ)

    return _cached(spec, build)


def s3tokenizer() -> Release:
    """s3tokenizer 0.3.0's ``FSQCodebook`` and ``FSQVectorQuantization``."""

    def build():
        text = source(S3TOKENIZER, S3TOKENIZER_MODEL_V2)
        namespace = {"__name__": "s3tokenizer_model_v2_of_the_release", "torch": torch, "rearrange": einops.rearrange}
        _execute(_definitions(text, ["FSQCodebook", "FSQVectorQuantization"]), namespace, f"{S3TOKENIZER}:{S3TOKENIZER_MODEL_V2}")
        return Release(spec=S3TOKENIZER, text=text, FSQCodebook=namespace["FSQCodebook"],
                                     FSQVectorQuantization=namespace["FSQVectorQuantization"])

    return _cached("s3tokenizer", build)
