"""Published codecs' quantizers, rebuilt from their own released files, against the release each pins.

Each codec's distribution is downloaded from PyPI at test time (``pip download --no-deps`` into
``$IFSQ_CODEC_SOURCES``, default ``$XDG_CACHE_HOME/ifsq-quant/codec-sources`` (``cache_dirs.py``); skipped with the reason
when it cannot be had) and read without being imported (their packages need torchaudio,
transformers and the like). From the archive the tests take, with ``ast``:

* the vector-quantize-pytorch (vqp) requirement, from every place that states it (``Requires-Dist``
  of ``METADATA`` / ``PKG-INFO``, an sdist's ``setup.py`` ``install_requires`` and
  ``*.egg-info/requires.txt``; they must agree): ``==X`` pins release X, no version means the
  latest;
* the quantizer's constructor call: class, keyword arguments with literal values, names resolved
  from the enclosing function's defaults or from the config dataclass the codec builds it from;
* the call convention around it: the statements that the tests' encode / decode functions follow
  are asserted present in the codec's own functions.

Then, for each codec, their module (the pinned release, ``vqp_release``) and ours
(``vqp_version=`` the pin) with one set of weights (strict loads both ways), through the codec's
convention, in eval and training mode, on inputs of std 0.5 / 1 / 3: equal outputs, equal tokens,
equal random-number states and close input gradients after the forward, and our decode of their
tokens equal to theirs.

* xcodec2 0.1.5 (sdist; vqp ==1.17.8). ``xcodec2/vq/codec_decoder_vocos.py``,
  ``CodecDecoderVocos.__init__``: ``ResidualFSQ(dim=vq_dim, levels=[4]*8, num_quantizers=1)``,
  ``vq_dim=2048`` the default. ``CodecDecoderVocos.forward``: (B, D, T) permuted to (B, T, D),
  output and tokens permuted back ((B, D, T), (B, Q, T)). ``xcodec2/modeling_xcodec2.py``,
  ``XCodec2Model.decode_code``: ``get_output_from_indices(codes.transpose(1, 2))``, transposed.
* neucodec 0.0.6 (wheel; vqp ==1.17.8): the same call and forward in
  ``neucodec/codec_decoder_vocos.py``; the same decode in ``neucodec/model.py``, ``NeuCodec.decode_code``.
* ChatTTS 0.2.5 (sdist; vqp unversioned, so the latest). ``ChatTTS/model/dvae.py``, ``GFSQ``:
  ``GroupedResidualFSQ(dim=dim, levels=list(levels), num_quantizers=R, groups=G)``, its arguments
  the ``VQ`` dataclass of ``ChatTTS/config/config.py`` (dim 1024, levels (5, 5, 5, 5), G = R = 2;
  ``core.py`` passes ``asdict(config.dvae.vq)``). ``GFSQ.forward``: (B, C, T) transposed to
  (B, T, C), indices (G, B, T, R) -> (B, G*R, T); ``GFSQ._embed``: back to (G, B, T, R),
  ``get_output_from_indices``, transposed to (B, C, T).
* stable-audio-tools 0.0.19 (wheel; vqp ==1.14.41). ``stable_audio_tools/models/bottleneck.py``,
  ``FSQBottleneck``: ``FSQ(**kwargs, allowed_dtypes=[torch.float16, torch.float32, torch.float64])``;
  ``encode``: ``x.float()``, b c n -> b n c, indices b n q -> b q n; ``decode_tokens``:
  ``indices_to_codes``.
* spark-tts-lib 0.2.1 (wheel; "A Python package for Spark-TTS"), its speaker encoder, channel-first.
  ``spark_tts_lib/modules/speaker/speaker_encoder.py``, ``SpeakerEncoder.__init__``:
  ``ResidualFSQ(levels=fsq_levels, num_quantizers=fsq_num_quantizers, dim=latent_dim,
  is_channel_first=True, quantize_dropout=False)`` with the constructor's defaults ([4]*6, 1, 128;
  its model config is downloaded at run time). ``tokenize``: (B, D, T) in, (B, Q, T) indices out;
  ``detokenize`` / ``get_codes_from_indices`` decode ``indices.transpose(1, 2)``, channel-last
  (vqp's decoding ignores ``is_channel_first``), and transpose the result back.

stable-audio-tools takes ``levels`` / ``num_codebooks`` (and any other FSQ argument) from a model
config that the package does not ship; the configurations here are the tests' own, with the
codebook axis its encode rearranges (``num_codebooks > 1`` or ``keep_num_codebooks_dim=True``).
spark-tts-lib ships its own copy of a vqp residual module and requires no vqp; the reference is
the latest vqp release, the drop-in contract for channel-first code.
"""

from __future__ import annotations

import ast
import dataclasses
import email.parser
import random
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import ifsq_quant
from ifsq_quant.compat.vqp import LATEST, semantics
from tests.parity.cache_dirs import cache_dir, download

pytestmark = pytest.mark.slow

CACHE = cache_dir("IFSQ_CODEC_SOURCES", "codec-sources")
VQP = canonicalize_name("vector-quantize-pytorch")
SCALES = [0.5, 1.0, 3.0]


# --- the released files --------------------------------------------------------------------------

class Distribution:
    """One downloaded wheel or sdist, read in place."""

    def __init__(self, archive: Path):
        self.archive = archive
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z:
                self._files = {name: z.read(name) for name in z.namelist() if not name.endswith("/")}
        else:
            with tarfile.open(archive) as t:
                self._files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}

    def text(self, path: str) -> str:
        """The file whose path (without an sdist's top folder) is ``path``."""
        hits = [name for name in self._files if name == path or name.split("/", 1)[-1] == path]
        assert len(hits) == 1, f"{self.archive.name}: {path} found {len(hits)} times"
        return self._files[hits[0]].decode("utf-8")

    def tree(self, path: str) -> ast.Module:
        return ast.parse(self.text(path))

    def vqp_requirements(self) -> dict[str, Requirement]:
        """Every statement of the vqp requirement: {where: requirement}."""
        found: dict[str, Requirement] = {}

        def add(where: str, line: str) -> None:
            req = Requirement(line)
            if canonicalize_name(req.name) == VQP:
                found[where] = req

        for name, data in self._files.items():
            parts = name.split("/")
            if name.endswith(".dist-info/METADATA") or (len(parts) == 2 and parts[1] == "PKG-INFO"):
                for line in email.parser.Parser().parsestr(data.decode("utf-8")).get_all("Requires-Dist") or []:
                    add(name, line)
            elif name.endswith(".egg-info/requires.txt"):
                for line in data.decode("utf-8").split("\n[", 1)[0].splitlines():
                    if line.strip():
                        add(name, line.strip())
            elif len(parts) == 2 and parts[1] == "setup.py":
                for node in ast.walk(ast.parse(data.decode("utf-8"))):
                    if isinstance(node, ast.keyword) and node.arg == "install_requires":
                        for line in ast.literal_eval(node.value):
                            add(name, line)
        return found

    def vqp_pin(self) -> str | None:
        """The release pinned (``==X``), ``LATEST`` for an unversioned requirement, ``None`` for none."""
        reqs = self.vqp_requirements()
        if not reqs:
            return None
        specifiers = {str(req.specifier) for req in reqs.values()}
        assert len(specifiers) == 1, f"{self.archive.name}: the vqp requirement differs between {reqs}"
        (spec,) = specifiers
        if not spec:
            return LATEST
        assert spec.startswith("==") and "," not in spec, f"{self.archive.name}: vqp{spec} is no pin"
        return spec[2:]


_downloaded: dict[str, Distribution] = {}
_failed: dict[str, str] = {}


def distribution(spec: str) -> Distribution:
    """``spec`` ("name==version") downloaded into the cache on first use (skips when it cannot be)."""
    if spec in _failed:
        pytest.skip(_failed[spec])
    if spec not in _downloaded:
        try:
            archive = download(spec, CACHE)
            _downloaded[spec] = Distribution(archive)
        except Exception as error:  # no network, no such release
            _failed[spec] = f"{spec} unavailable: {error}"
            pytest.skip(_failed[spec])
    return _downloaded[spec]


# --- reading the sources ----------------------------------------------------------------------------

def function(tree: ast.Module, qualname: str) -> ast.FunctionDef:
    """``Class.method`` or a top-level function."""
    nodes: list[ast.AST] = [tree]
    for part in qualname.split("."):
        (node,) = [n for parent in nodes for n in getattr(parent, "body", [])
                   if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part]
        nodes = [node]
    return nodes[0]


def defaults(func: ast.FunctionDef) -> dict[str, object]:
    """The parameters' literal defaults."""
    args = func.args
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    return {a.arg: ast.literal_eval(d) for a, d in pairs}


def dataclass_fields(tree: ast.Module, name: str) -> dict[str, ast.expr]:
    """A config dataclass's fields, as their default expressions."""
    cls = function(tree, name)
    assert isinstance(cls, ast.ClassDef)
    return {n.target.id: n.value for n in cls.body if isinstance(n, ast.AnnAssign) and n.value is not None}


def value(node: ast.expr, scope: dict[str, object]):
    """A literal, a name from ``scope``, ``list(...)`` / ``tuple(...)`` of one, or ``torch.<dtype>``."""
    if isinstance(node, ast.Name):
        return scope[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("list", "tuple") and len(node.args) == 1:
        return {"list": list, "tuple": tuple}[node.func.id](value(node.args[0], scope))
    if isinstance(node, (ast.List, ast.Tuple)):
        return (list if isinstance(node, ast.List) else tuple)(value(e, scope) for e in node.elts)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        return getattr(torch, node.attr)
    return ast.literal_eval(node)


def constructor(func: ast.FunctionDef, class_name: str, scope: dict[str, object]) -> tuple[dict, bool]:
    """The one ``class_name(...)`` call in ``func``: (its keyword arguments resolved, whether it has ``**``)."""
    calls = [n for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == class_name]
    assert len(calls) == 1, f"{func.name}: {len(calls)} calls of {class_name}"
    (call,) = calls
    assert not call.args, f"{class_name} is called with positional arguments"
    kwargs = {k.arg: value(k.value, scope) for k in call.keywords if k.arg is not None}
    return kwargs, any(k.arg is None for k in call.keywords)


def assert_imports(tree: ast.Module, module: str, name: str) -> None:
    assert any(isinstance(n, ast.ImportFrom) and n.module == module and any(a.name == name for a in n.names)
               for n in ast.walk(tree)), f"no 'from {module} import {name}'"


def assert_follows(func: ast.FunctionDef, *statements: str) -> None:
    """Each of ``statements`` appears in ``func`` (compared as ``ast.unparse`` renders them)."""
    text = ast.unparse(func)
    for statement in statements:
        assert ast.unparse(ast.parse(statement)) in text, f"{func.name} does not do {statement!r}"


# --- the codecs ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Codec:
    """A codec's quantizer, rebuilt from its release: class name, arguments, pin, convention."""

    cls: str
    kwargs: dict
    pin: str
    shape: tuple  # the codec's input to its quantizer call
    encode: Callable  # (quantizer, x) -> (quantized, tokens), as the codec calls its quantizer
    decode: Callable  # (quantizer, tokens) -> what the codec decodes its tokens to
    extra_decodes: tuple = ()  # further (quantizer, tokens) -> tensor decodes the codec makes
    decoded_layout: Callable = lambda t: t  # the decode's output in the layout of encode's quantized output


def _vocos_encode(q, x):  # CodecDecoderVocos.forward(x, vq=True)
    x = x.permute(0, 2, 1)
    x, codes = q(x)
    return x.permute(0, 2, 1), codes.permute(0, 2, 1)


def _vocos_decode(q, codes):  # XCodec2Model.decode_code / NeuCodec.decode_code
    return q.get_output_from_indices(codes.transpose(1, 2)).transpose(1, 2)


def _xcodec2_like(spec: str, module: str, decoder_file: str, decode_function: str, codes_name: str, emb_name: str) -> Codec:
    dist = distribution(spec)
    tree = dist.tree(module)
    assert_imports(tree, "vector_quantize_pytorch", "ResidualFSQ")
    init = function(tree, "CodecDecoderVocos.__init__")
    kwargs, double_star = constructor(init, "ResidualFSQ", defaults(init))
    assert not double_star
    assert_follows(function(tree, "CodecDecoderVocos.forward"), "x = x.permute(0, 2, 1)", "x, q = self.quantizer(x)",
                   "x = x.permute(0, 2, 1)", "q = q.permute(0, 2, 1)")
    assert_follows(function(dist.tree(decoder_file), decode_function),
                   f"{emb_name} = self.generator.quantizer.get_output_from_indices({codes_name}.transpose(1, 2))",
                   f"{emb_name} = {emb_name}.transpose(1, 2)")
    return Codec("ResidualFSQ", kwargs, dist.vqp_pin(), (2, kwargs["dim"], 40), _vocos_encode, _vocos_decode)


def xcodec2() -> Codec:
    return _xcodec2_like("xcodec2==0.1.5", "xcodec2/vq/codec_decoder_vocos.py", "xcodec2/modeling_xcodec2.py",
                         "XCodec2Model.decode_code", "vq_code", "vq_post_emb")


def neucodec() -> Codec:
    return _xcodec2_like("neucodec==0.0.6", "neucodec/codec_decoder_vocos.py", "neucodec/model.py",
                         "NeuCodec.decode_code", "fsq_codes", "fsq_post_emb")


def chattts() -> Codec:
    dist = distribution("ChatTTS==0.2.5")
    dvae, config = dist.tree("ChatTTS/model/dvae.py"), dist.tree("ChatTTS/config/config.py")
    assert_imports(dvae, "vector_quantize_pytorch", "GroupedResidualFSQ")
    # Chat.load builds DVAE(vq_config=asdict(self.config.dvae.vq)) and DVAE builds GFSQ(**vq_config):
    # GFSQ's arguments are the fields of the VQ dataclass, which DVAE's config holds as VQ().
    assert "vq_config=asdict(self.config.dvae.vq)" in ast.unparse(dist.tree("ChatTTS/core.py"))
    assert_follows(function(dvae, "DVAE.__init__"), "self.vq_layer = GFSQ(**vq_config)")
    assert ast.unparse(dataclass_fields(config, "DVAE")["vq"]) == "VQ()"
    vq = {name: ast.literal_eval(node) for name, node in dataclass_fields(config, "VQ").items()}
    init = function(dvae, "GFSQ.__init__")
    scope = {**defaults(init), **vq}
    assert scope["transpose"] is True
    kwargs, double_star = constructor(init, "GroupedResidualFSQ", scope)
    assert not double_star
    groups, stages = vq["G"], vq["R"]
    # the GPT predicts num_vq token streams per frame: the G * R indices of one frame
    assert dataclass_fields(config, "GPT")["num_vq"].value == groups * stages
    assert_follows(function(dvae, "GFSQ.forward"), "x.transpose_(1, 2)", "_, ind = self.quantizer(x)",
                   "ind = ind.permute(1, 2, 0, 3).contiguous()", "ind = ind.view(ind.size(0), ind.size(1), -1)",
                   "return ind.transpose_(1, 2) if self.transpose else ind")
    assert_follows(function(dvae, "GFSQ._embed"), "x = x.transpose(1, 2)",
                   "x = x.view(x.size(0), x.size(1), self.G, self.R).permute(2, 0, 1, 3)",
                   "feat = self.quantizer.get_output_from_indices(x)", "return feat.transpose_(1, 2) if self.transpose else feat")

    def encode(q, x):  # GFSQ.forward (which drops the quantized features; here in _embed's layout (B, C, T))
        out, ind = q(x.transpose(1, 2))
        ind = ind.permute(1, 2, 0, 3).contiguous()
        ind = ind.view(ind.size(0), ind.size(1), -1)
        return out.transpose(1, 2), ind.transpose(1, 2)

    def decode(q, ind):  # GFSQ._embed
        x = ind.transpose(1, 2)
        x = x.view(x.size(0), x.size(1), groups, stages).permute(2, 0, 1, 3)
        return q.get_output_from_indices(x).transpose(1, 2)

    return Codec("GroupedResidualFSQ", kwargs, dist.vqp_pin(), (2, kwargs["dim"], 30), encode, decode)


# FSQ arguments that stable-audio-tools reads from a model config not in its package (see the module docstring)
STABLE_AUDIO_CONFIGS = {"8555x2": dict(levels=[8, 5, 5, 5], num_codebooks=2, dim=16),
                        "4444_kept": dict(levels=[4, 4, 4, 4], keep_num_codebooks_dim=True, dim=8)}


def stable_audio(config: dict) -> Codec:
    dist = distribution("stable-audio-tools==0.0.19")
    tree = dist.tree("stable_audio_tools/models/bottleneck.py")
    init = function(tree, "FSQBottleneck.__init__")
    assert_imports(init, "vector_quantize_pytorch", "FSQ")
    fixed, double_star = constructor(init, "FSQ", {})
    assert double_star and set(fixed) == {"allowed_dtypes"}
    assert "np.prod(kwargs['levels'])" in ast.unparse(init) and "kwargs.get('num_codebooks', 1)" in ast.unparse(init)
    assert_follows(function(tree, "FSQBottleneck.encode"), "x = x.float()", "x = rearrange(x, 'b c n -> b n c')",
                   "x, indices = self.quantizer(x)", "x = rearrange(x, 'b n c -> b c n')", "indices = rearrange(indices, 'b n q -> b q n')")
    assert_follows(function(tree, "FSQBottleneck.decode_tokens"), "latents = self.quantizer.indices_to_codes(tokens)")

    def encode(q, x):  # FSQBottleneck.encode
        orig_dtype = x.dtype
        out, indices = q(x.float().transpose(1, 2))
        return out.transpose(1, 2).to(orig_dtype), indices.transpose(1, 2)

    def decode(q, tokens):  # decode_tokens' indices_to_codes, of the quantizer's own (b, n, q) layout: (b, n, c)
        return q.indices_to_codes(tokens.transpose(1, 2))

    kwargs = {**config, **fixed}
    return Codec("FSQ", kwargs, dist.vqp_pin(), (2, kwargs["dim"], 40), encode, decode, decoded_layout=lambda t: t.transpose(1, 2))


def spark_speaker_encoder() -> Codec:
    dist = distribution("spark-tts-lib==0.2.1")
    tree = dist.tree("spark_tts_lib/modules/speaker/speaker_encoder.py")
    assert dist.vqp_pin() is None  # it ships its own residual module
    init = function(tree, "SpeakerEncoder.__init__")
    kwargs, double_star = constructor(init, "ResidualFSQ", defaults(init))
    assert not double_star and kwargs["is_channel_first"] is True
    assert_follows(function(tree, "SpeakerEncoder.tokenize"), "x = self.perceiver_sampler(features.transpose(1, 2)).transpose(1, 2)",
                   "zq, indices = self.quantizer(x)")
    assert_follows(function(tree, "SpeakerEncoder.detokenize"),
                   "zq = self.quantizer.get_output_from_indices(indices.transpose(1, 2)).transpose(1, 2)")
    assert_follows(function(tree, "SpeakerEncoder.get_codes_from_indices"),
                   "zq = self.quantizer.get_codes_from_indices(indices.transpose(1, 2))", "return zq.transpose(1, 2)")
    token_num = defaults(init)["token_num"]

    def encode(q, x):  # SpeakerEncoder.tokenize (the quantizer's input is (B, latent_dim, token_num))
        return q(x)

    def decode(q, indices):  # SpeakerEncoder.detokenize
        return q.get_output_from_indices(indices.transpose(1, 2)).transpose(1, 2)

    def codes(q, indices):  # SpeakerEncoder.get_codes_from_indices
        return q.get_codes_from_indices(indices.transpose(1, 2)).transpose(1, 2)

    return Codec("ResidualFSQ", kwargs, LATEST, (3, kwargs["dim"], token_num), encode, decode, (codes,))


CODECS = {"xcodec2": xcodec2, "neucodec": neucodec, "chattts": chattts, "spark_speaker_encoder": spark_speaker_encoder,
          **{f"stable_audio_{name}": (lambda c=config: stable_audio(c)) for name, config in STABLE_AUDIO_CONFIGS.items()}}
EXPECTED_PINS = {"xcodec2": "1.17.8", "neucodec": "1.17.8", "chattts": LATEST, "spark_speaker_encoder": LATEST,
                 **{f"stable_audio_{name}": "1.14.41" for name in STABLE_AUDIO_CONFIGS}}
EXPECTED_CONFIGS = {  # what the sources give, stated once here so that a misread source fails loudly
    "xcodec2": dict(dim=2048, levels=[4] * 8, num_quantizers=1),
    "neucodec": dict(dim=2048, levels=[4] * 8, num_quantizers=1),
    "chattts": dict(dim=1024, levels=[5, 5, 5, 5], num_quantizers=2, groups=2),
    "spark_speaker_encoder": dict(levels=[4] * 6, num_quantizers=1, dim=128, is_channel_first=True, quantize_dropout=False),
}


_built: dict[str, Codec] = {}


def codec(name: str) -> Codec:
    if name not in _built:
        _built[name] = CODECS[name]()
    return _built[name]


# --- the comparison ------------------------------------------------------------------------------------

def _twins(theirs_cls, ours_cls, c: Codec, vqp_version: str | None):
    """Their module and ours, ours with their weights (strict loads both ways)."""
    torch.manual_seed(0)
    theirs = theirs_cls(**c.kwargs)
    torch.manual_seed(1)  # another init: the load must bring every weight
    ours = ours_cls(**c.kwargs, vqp_version=vqp_version)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    torch.manual_seed(2)
    theirs_cls(**c.kwargs).load_state_dict(ours.state_dict(), strict=True)
    return theirs, ours


def _run(module, c: Codec, x: torch.Tensor, train: bool):
    """The codec's encode under fixed seeds: (quantized, tokens, input gradient, RNG states after)."""
    module.train(train)
    torch.manual_seed(3)
    random.seed(3)
    x = x.detach().clone().requires_grad_(True)
    quantized, tokens = c.encode(module, x)
    quantized.float().square().sum().backward()
    return quantized.detach(), tokens, x.grad, (torch.get_rng_state(), random.getstate())


def _input(c: Codec, scale: float) -> torch.Tensor:
    return torch.randn(c.shape, generator=torch.Generator().manual_seed(7)) * scale


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(CODECS))
def test_codec_keeps_its_tokens(vqp_release, name, train, scale):
    c = codec(name)
    assert c.pin == EXPECTED_PINS[name]
    if name in EXPECTED_CONFIGS:
        assert c.kwargs == EXPECTED_CONFIGS[name]
    release = vqp_release(c.pin)
    for vqp_version in [c.pin] + ([None] if c.pin == LATEST else []):
        theirs, ours = _twins(getattr(release, c.cls), getattr(ifsq_quant, c.cls), c, vqp_version)
        x = _input(c, scale)
        q_a, tokens_a, grad_a, rng_a = _run(theirs, c, x, train)
        q_b, tokens_b, grad_b, rng_b = _run(ours, c, x, train)
        assert tokens_b.shape == tokens_a.shape and torch.equal(tokens_a.long(), tokens_b.long())
        assert q_b.dtype == q_a.dtype and torch.equal(q_a, q_b)
        assert torch.equal(rng_a[0], rng_b[0]) and rng_a[1] == rng_b[1], "the RNG states after the forward differ"
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5)
        theirs.eval(), ours.eval()
        with torch.no_grad():
            for decode in (c.decode, *c.extra_decodes):
                assert torch.equal(decode(ours, tokens_a), decode(theirs, tokens_a))  # our decode of their tokens
                assert torch.equal(decode(ours, tokens_a.int()), decode(theirs, tokens_a))  # int32 tokens too
            if not train:
                assert torch.equal(c.decoded_layout(c.decode(ours, tokens_a)), q_a)  # the decode is the forward's output


@pytest.mark.parametrize("name", ["xcodec2", "neucodec"])
def test_old_pins_need_vqp_version(vqp_release, name):
    """Without ``vqp_version`` (the latest release's semantics) a codec pinned to 1.17.8 gets other
    tokens on unit-scale inputs, and decodes its own tokens to other embeddings."""
    c = codec(name)
    assert not semantics(c.pin).is_latest and semantics(c.pin).stage_scale != semantics(LATEST).stage_scale
    theirs, latest = _twins(getattr(vqp_release(c.pin), c.cls), getattr(ifsq_quant, c.cls), c, None)
    x = _input(c, 1.0)
    _, tokens_a, _, _ = _run(theirs, c, x, train=False)
    _, tokens_b, _, _ = _run(latest, c, x, train=False)
    assert tokens_b.shape == tokens_a.shape
    assert (tokens_a.long() != tokens_b.long()).float().mean() > 0.5  # most tokens (95 % here)
    with torch.no_grad():
        assert not torch.allclose(c.decode(latest, tokens_a), c.decode(theirs, tokens_a), atol=1e-3)


def test_channel_first_decode_reads_channel_last_indices(vqp_release):
    """The speaker encoder's call: channel-first forward indices (b, q, n) are decoded transposed to
    (b, n, q), as vqp's decoding reads them whatever ``is_channel_first``; ours with
    ``channel_first=True`` reads the forward's layout directly and gives the same."""
    c = codec("spark_speaker_encoder")
    theirs, ours = _twins(vqp_release(LATEST).ResidualFSQ, ifsq_quant.ResidualFSQ, c, None)
    theirs.eval(), ours.eval()
    x = _input(c, 1.0)
    with torch.no_grad():
        out, indices = theirs(x)
        assert indices.shape == (c.shape[0], c.kwargs["num_quantizers"], c.shape[2])  # channel-first tokens
        assert torch.equal(ours.get_output_from_indices(indices.transpose(1, 2)), theirs.get_output_from_indices(indices.transpose(1, 2)))
        assert torch.equal(ours.get_output_from_indices(indices, channel_first=True), out)
