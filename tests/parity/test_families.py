"""``ifsq_quant.compat``'s drop-ins against the FSQ classes of other projects' releases.

The references are the releases' own source files (``family_sources.py``: downloaded with ``pip
download --no-deps``, never installed; skipped with the reason where they cannot be had):

* ``ifsq_quant.compat.nemo.{FiniteScalarQuantizer, GroupFiniteScalarQuantizer}`` against
  nemo-toolkit 3.0.0 (NanoCodec, the Low Frame-rate Speech Codec, Magpie-TTS);
* ``ifsq_quant.compat.stable_codec.{DitheredFSQ, ResidualFSQBottleneck}`` against stable-codec
  0.1.2, whose ``fsq.py`` is stable-audio-tools 0.0.19's ``models/fsq.py`` (asserted); and the
  older ``DitheredFSQ`` of stable-audio-tools 0.0.17, the release stable-codec pins, whose codes
  the drop-in reproduces while its indices are exact where 0.0.17's truncate;
* ``ifsq_quant.compat.s3tokenizer.{FSQCodebook, FSQVectorQuantization}`` against s3tokenizer 0.3.0
  (the speech tokens of CosyVoice 2 and 3).

For each, with one set of weights (strict ``state_dict`` loads both ways) and hypothesis-drawn
configurations (levels, eps, scales, group counts, input and module dtypes with float16 and
bfloat16, length masks, eval and training mode): identical outputs (dtype, shape and every bit,
the sign of zero included), identical indices, the same torch and Python RNG states after the
forward under one seed, close input gradients, and the drop-in's decode of the reference's
indices (int32 and int64) identical to the reference's. Where a reference's indices are wrong
(NeMo's and stable-audio-tools 0.0.17's float sums truncated to int32) the drop-in must either
refuse the configuration with a ``ValueError`` or give exact indices; the tests check that its
indices differ from the reference's only where the reference's do not decode to its own codes.
Where the stable codec's level leaves its grid (no clamp in theirs: ``scale < 1``, or ``skip_tanh``
with inputs beyond the scale) the drop-in clamps, its documented difference: the tests compare every
element theirs keeps on the grid bit for bit and check that the others get the grid's edge code and
an index in the codebook.

The drop-ins are imported inside each test, so a missing or broken ``ifsq_quant.compat`` fails
these tests and never skips them (only an unavailable release does, with the reason).
"""

from __future__ import annotations

import importlib
import math
import random
import warnings

import family_sources
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}


def compat(family: str):
    """``ifsq_quant.compat.<family>`` (an ImportError fails the test: the drop-ins belong to the package)."""
    return importlib.import_module(f"ifsq_quant.compat.{family}")


# --- comparisons ---------------------------------------------------------------------------------

def assert_identical(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Same dtype, shape and bits (a float's sign of zero and NaN payload included)."""
    assert isinstance(ours, torch.Tensor), f"{what}: ours is a {type(ours).__name__}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype}, theirs {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)}, theirs {tuple(theirs.shape)}"
    a, b = ours.detach(), theirs.detach()
    if a.dtype in _BITS:
        a, b = a.view(_BITS[a.dtype]), b.view(_BITS[b.dtype])
    differ = a != b
    assert not differ.any(), f"{what}: {int(differ.sum())} of {differ.numel()} elements differ"


def assert_twins(theirs: torch.nn.Module, ours: torch.nn.Module, build_theirs) -> None:
    """The same state_dict keys, dtypes and shapes; strict loads both ways."""
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(b) == list(a), f"state_dict keys {list(b)}, theirs {list(a)}"
    for key in a:
        assert (b[key].dtype, b[key].shape) == (a[key].dtype, a[key].shape), key
    ours.load_state_dict(a, strict=True)
    torch.manual_seed(12345)  # another initialisation: the load must bring every weight back
    build_theirs().load_state_dict(ours.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert_identical(value, a[key], f"state_dict[{key!r}] after the load")


def seeded(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def rng_states():
    return torch.get_rng_state(), random.getstate()


def assert_same_rng(ours, theirs) -> None:
    assert torch.equal(ours[0], theirs[0]) and ours[1] == theirs[1], "the RNG states after the forward differ"


def assert_close_grads(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert (ours is None) == (theirs is None), "only one side has an input gradient"
    if theirs is not None:
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=4e-3 if theirs.dtype in (torch.float16, torch.bfloat16) else 1e-5,
                                   atol=1e-6)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def randn(shape, dtype: torch.dtype, scale: float, seed: int) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def weights_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed float32 cotangent for ``t`` (a plain sum would give every element the same weight)."""
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))


# =================================================================================== NeMo

@pytest.fixture(scope="module")
def nemo_release():
    return family_sources.nemo()


def _nemo_digit_exact(level: int) -> bool:
    """Whether NeMo's float digit ``k * (r / k) + k`` truncates to ``r + k`` for every level r of ``L``,
    in float32 and float64 (the dtypes its codes come in)."""
    k = level // 2
    r = torch.arange(-k, level - k, dtype=torch.float64)
    kk = torch.tensor(k, dtype=torch.int32)
    return all(torch.equal((kk * (r.to(dt) / kk) + kk).to(torch.int64), torch.arange(level)) for dt in (torch.float32, torch.float64))


def nemo_exact(levels: list[int]) -> bool:
    """NeMo's indices are exact: every digit exact and every partial sum a float32 integer."""
    return all(_nemo_digit_exact(level) for level in levels) and math.prod(levels) <= 2**24


@st.composite
def nemo_levels(draw, max_dims: int = 5):
    levels = draw(st.lists(st.integers(2, 25), min_size=1, max_size=max_dims))
    assume(math.prod(levels) <= 2**20)
    assert nemo_exact(levels)  # every L <= 25 has exact digits: the lossy ones are tested apart
    return levels


epsilons = st.one_of(st.sampled_from([1e-3, 0.0, 1e-2, 0.1]), st.floats(0.0, 0.5))


@st.composite
def lengths(draw, batch: int, steps: int):
    """None or a (B,) tensor of valid lengths in [0, T] (int64 or int32)."""
    if draw(st.booleans()):
        return None
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    return torch.tensor(draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch)), dtype=dtype)


def _nemo_calls(module, x, input_len, train: bool, seed: int):
    """forward by keywords under a seed: (dequantized, indices, input gradient, RNG states after)."""
    module.train(train)
    seeded(seed)
    x = leaf(x)
    dequantized, indices = module(inputs=x, input_len=input_len)
    states = rng_states()
    (dequantized.float() * weights_like(dequantized, 9)).sum().backward()
    return dequantized, indices, x.grad, states


@SETTINGS
@given(data=st.data(), levels=nemo_levels(), eps=epsilons, dtype=st.sampled_from(DTYPES), batch=st.integers(1, 3),
       steps=st.integers(1, 7), scale=st.sampled_from([0.3, 1.0, 3.0]), train=st.booleans())
def test_nemo_fsq(nemo_release, data, levels, eps, dtype, batch, steps, scale, train):
    ours_cls = compat("nemo").FiniteScalarQuantizer
    input_len = data.draw(lengths(batch, steps))
    theirs = nemo_release.FiniteScalarQuantizer(num_levels=levels, eps=eps)
    ours = ours_cls(num_levels=levels, eps=eps)
    assert_twins(theirs, ours, lambda: nemo_release.FiniteScalarQuantizer(num_levels=levels, eps=eps))
    for name in ("num_codebooks", "codebook_size", "dim", "codebook_dim", "eps"):
        assert getattr(ours, name) == getattr(theirs, name), name
    # NeMo's AudioCodecModel reads the quantizer's output_types keys (a third one, commit_loss, changes its training)
    assert list(ours.output_types) == list(theirs.output_types) and list(ours.input_types) == list(theirs.input_types)

    x = randn((batch, len(levels), steps), dtype, scale, seed=len(levels) * 7 + steps)
    dq_a, idx_a, grad_a, rng_a = _nemo_calls(theirs, x, input_len, train, 3)
    dq_b, idx_b, grad_b, rng_b = _nemo_calls(ours, x, input_len, train, 3)
    assert_identical(dq_b, dq_a, "dequantized")
    assert_identical(idx_b, idx_a, "indices")
    assert_same_rng(rng_b, rng_a)
    assert_close_grads(grad_b, grad_a)

    with torch.no_grad():
        assert_identical(ours.encode(inputs=x, input_len=input_len), theirs.encode(inputs=x, input_len=input_len), "encode")
        assert_identical(ours.encode(inputs=x), theirs.encode(inputs=x), "encode without input_len")
        for index_dtype in (torch.int32, torch.int64):
            tokens = idx_a.to(index_dtype)
            assert_identical(ours.decode(indices=tokens, input_len=input_len), theirs.decode(indices=tokens, input_len=input_len),
                             f"decode of {index_dtype} indices")
            assert_identical(ours.decode(indices=tokens), theirs.decode(indices=tokens), f"decode of {index_dtype} without input_len")
        codes = theirs.inputs_to_codes(inputs=x, input_len=None)
        assert_identical(ours.inputs_to_codes(inputs=x, input_len=None), codes, "inputs_to_codes")
        assert_identical(ours.codes_to_indices(codes=codes), theirs.codes_to_indices(codes=codes), "codes_to_indices")
        if input_len is None:  # the forward's indices decode to its output (in the default dtype, whatever the input's)
            decoded = ours.decode(indices=idx_b)
            assert_identical(decoded, dq_a.detach().to(decoded.dtype), "decode of the forward's indices")
        if theirs.codebook_size <= 4096:
            assert_identical(ours.codes, theirs.codes, "codes")
            assert_identical(ours.codebook, theirs.codebook, "codebook")


@SETTINGS
@given(data=st.data(), groups=st.integers(1, 4), levels=nemo_levels(max_dims=3), eps=epsilons, dtype=st.sampled_from(DTYPES),
       batch=st.integers(1, 3), steps=st.integers(1, 6), train=st.booleans())
def test_nemo_group_fsq(nemo_release, data, groups, levels, eps, dtype, batch, steps, train):
    ours_cls = compat("nemo").GroupFiniteScalarQuantizer
    input_len = data.draw(lengths(batch, steps))
    kwargs = dict(num_groups=groups, num_levels_per_group=levels, eps=eps)
    theirs, ours = nemo_release.GroupFiniteScalarQuantizer(**kwargs), ours_cls(**kwargs)
    assert_twins(theirs, ours, lambda: nemo_release.GroupFiniteScalarQuantizer(**kwargs))
    for name in ("num_codebooks", "codebook_size", "codebook_dim", "num_groups", "codebook_dim_per_group"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert list(ours.output_types) == list(theirs.output_types)

    x = randn((batch, groups * len(levels), steps), dtype, 1.5, seed=groups * 31 + steps)
    dq_a, idx_a, grad_a, rng_a = _nemo_calls(theirs, x, input_len, train, 4)
    dq_b, idx_b, grad_b, rng_b = _nemo_calls(ours, x, input_len, train, 4)
    assert idx_a.shape == (groups, batch, steps)
    assert_identical(dq_b, dq_a, "dequantized")
    assert_identical(idx_b, idx_a, "indices")
    assert_same_rng(rng_b, rng_a)
    assert_close_grads(grad_b, grad_a)
    with torch.no_grad():
        assert_identical(ours.encode(inputs=x, input_len=input_len), theirs.encode(inputs=x, input_len=input_len), "encode")
        for index_dtype in (torch.int32, torch.int64):
            tokens = idx_a.to(index_dtype)
            assert_identical(ours.decode(indices=tokens, input_len=input_len), theirs.decode(indices=tokens, input_len=input_len),
                             f"decode of {index_dtype} indices")
        # VectorQuantizerIndexConverter's call: codes (B, D, T) -> indices (B, G, T), masked
        full = torch.full((batch,), steps, dtype=torch.int64) if input_len is None else input_len
        codes = theirs.decode(indices=idx_a, input_len=full)
        assert_identical(ours.codes_to_indices(codes=codes, input_len=full), theirs.codes_to_indices(codes=codes, input_len=full),
                         "codes_to_indices")


def nemo_bin_edges(levels: list[int], eps: float = 1e-3) -> torch.Tensor:
    """(1, D, T) float64 inputs within a few ulps of every bin edge of NeMo's quantizer with float64
    constants: there float32 constants cast up (a relative error of about 1e-8) round the other way."""
    columns = []
    for level in levels:
        half = torch.tensor((level - 1) / 2 * (1 - eps), dtype=torch.float64)
        offset = 0.5 if level % 2 == 0 else 0.0
        shift = torch.tan(torch.tensor(offset, dtype=torch.float64) / half)
        edges = torch.atanh((torch.arange(-(level // 2), level - level // 2, dtype=torch.float64) - 0.5 + offset) / half) - shift
        edges = edges[edges.isfinite()]
        columns.append(torch.cat([edges + i * 4e-16 * edges.abs().clamp(min=1) for i in range(-3, 4)]))
    count = max(len(c) for c in columns)
    return torch.stack([c.repeat(count // len(c) + 1)[:count] for c in columns]).unsqueeze(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [4, 4, 3]])
def test_nemo_follows_the_default_dtype(nemo_release, levels, dtype):
    """NeMo's float constants come in torch's default dtype (its codec sets float32 around the
    quantizer); under float64 the codes and decodes are float64, computed with float64 constants
    (float64 inputs at the bin edges tell them from float32 constants cast up)."""
    ours_cls = compat("nemo").FiniteScalarQuantizer
    x = randn((2, len(levels), 5), dtype, 1.0, seed=5)
    if dtype == torch.float64:
        x = torch.cat([x, nemo_bin_edges(levels).expand(2, -1, -1)], dim=-1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        theirs, ours = nemo_release.FiniteScalarQuantizer(num_levels=levels), ours_cls(num_levels=levels)
        dq_a, idx_a = theirs(inputs=x, input_len=None)
        dq_b, idx_b = ours(inputs=x, input_len=None)
        assert dq_a.dtype == torch.float64
        assert_identical(dq_b, dq_a, "dequantized")
        assert_identical(idx_b, idx_a, "indices")
        assert_identical(ours.decode(indices=idx_a), theirs.decode(indices=idx_a), "decode")
    finally:
        torch.set_default_dtype(previous)


# levels whose NeMo indices are wrong: digits that truncate (L = 26, 27, 38, 39, ... in float32;
# 50, 51, ... in float64) and codebooks past 2**24 codes, whose float32 sums are rounded
NEMO_LOSSY = [[27, 5], [26, 4, 3], [38], [51, 2], [5] * 11, [17] * 6]
# where the inputs below meet NeMo's wrong indices (their count with nemo-toolkit 3.0.0: 8, 5, 47, 1 and 2, 813, 469)
NEMO_WRONG_HERE = [([27, 5], torch.float32), ([26, 4, 3], torch.float32), ([38], torch.float32), ([51, 2], torch.float32),
                   ([51, 2], torch.float64), ([5] * 11, torch.float32), ([17] * 6, torch.float32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", NEMO_LOSSY, ids=str)
def test_nemo_lossy_indices_are_refused_or_exact(nemo_release, levels, dtype):
    """Not NeMo's wrong indices: a ValueError at construction, or exact indices that differ from
    NeMo's only where NeMo's do not decode to its own dequantized output."""
    assert not nemo_exact(levels)
    ours_cls = compat("nemo").FiniteScalarQuantizer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a warning naming the difference is welcome, not required here
            ours = ours_cls(num_levels=levels)
    except ValueError:
        return
    theirs = nemo_release.FiniteScalarQuantizer(num_levels=levels)
    x = randn((4, len(levels), 500), dtype, 2.0, seed=11)
    with torch.no_grad():
        dq_a, idx_a = theirs(inputs=x, input_len=None)
        dq_b, idx_b = ours(inputs=x, input_len=None)
    assert_identical(dq_b, dq_a, "dequantized")
    assert idx_b.dtype == torch.int32 and idx_b.shape == idx_a.shape
    exact = exact_nemo_indices(dq_a, levels)
    assert torch.equal(idx_b[0].long(), exact), "our indices are not the exact indices of the codes"
    if (levels, dtype) in NEMO_WRONG_HERE:
        assert not torch.equal(idx_a[0].long(), exact)  # NeMo's are wrong here: the test compared something


def exact_nemo_indices(dequantized: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """The int64 index of each code vector of a NeMo output (B, D, T): digits ``round(c * (L//2) + L//2)``
    (exact in float64), packed little-endian."""
    half = torch.tensor([level // 2 for level in levels], dtype=torch.float64).view(1, -1, 1)
    digits = torch.round(dequantized.double() * half + half).long()
    base = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.int64).view(1, -1, 1)
    return (digits * base).sum(dim=1)


def test_nemo_codebooks_past_int32_are_refused(nemo_release):
    """2**32 codes: NeMo's int32 basis and indices overflow. The drop-in says so."""
    ours_cls = compat("nemo").FiniteScalarQuantizer
    with pytest.raises(ValueError, match="int32|2\\*\\*31"):
        ours_cls(num_levels=[2] * 32)


# ============================================================================ stable codec

@pytest.fixture(scope="module")
def stable_codec_release():
    return family_sources.stable_codec()


def test_stable_codec_fsq_is_stable_audio_tools_0_0_19(stable_codec_release):
    """stable-codec's fsq.py is stable-audio-tools 0.0.19's models/fsq.py, byte for byte: the
    tests of the one hold for the other."""
    assert stable_codec_release.text == family_sources.stable_audio_tools("0.0.19").text


DITHERED_ATTRIBUTES = ("levels", "codebook_dim", "codebook_size", "num_codebooks", "dim", "dither_inference", "scale",
                       "noise_dropout", "allowed_dtypes")
step_scales = st.one_of(st.sampled_from([1.0, 0.5, 0.25, 0.125, 0.3, 1.7]), st.floats(0.05, 3.0))


def _dithered_call(module, x, train: bool, skip_tanh: bool | None, seed: int):
    module.train(train)
    seeded(seed)
    x = leaf(x)
    codes, indices = module(x) if skip_tanh is None else module(x, skip_tanh=skip_tanh)
    states = rng_states()
    (codes.float() * weights_like(codes, 8)).sum().backward()
    return codes, indices, x.grad, states


def theirs_levels(theirs, z: torch.Tensor, skip_tanh: bool, seed: int) -> torch.Tensor:
    """The levels ``(b, n, c, d)`` their forward of ``z (b, n, c, d)`` rounds its codes to (its indices' digits), as
    it computes them (before the cast back to the input's dtype): outside ``[0, L)`` where it leaves its grid."""
    seeded(seed)  # the forward's draws again
    with torch.no_grad():
        z = z if z.dtype in (torch.float32, torch.float64) else z.to(torch.float64)
        return theirs._scale_and_shift(theirs.quantize(z, skip_tanh=skip_tanh)).round()


def assert_dithered_twins(ours, codes_b, codes_a, levels_a, idx_b=None, idx_a=None) -> torch.Tensor:
    """Ours equals theirs wherever theirs stays on its grid. Theirs does not clamp its level (scale < 1, or
    skip_tanh with inputs beyond +-scale); ours does (the documented difference): where theirs' level
    leaves [0, L), our code is its value or the grid's edge code (the raw and dithered values of training
    are the same), and our index is in the codebook. Returns which code vectors (b, n, c) theirs kept on the grid."""
    top = torch.tensor(ours._checked_levels, dtype=levels_a.dtype) - 1
    inside = (levels_a >= 0) & (levels_a <= top)  # (b, n, c, d)
    flat_inside = inside.flatten(-2)
    assert_identical(codes_b[flat_inside], codes_a[flat_inside], "codes where theirs stays on the grid")
    outside = ~flat_inside
    if outside.any():
        edge = (torch.where(levels_a < 0, 0.0, top.double()) * ours.half_l.double() - ours.scale).flatten(-2)
        b, a = codes_b[outside].double(), codes_a[outside].double()
        tolerance = 1e-2 if codes_b.dtype in (torch.float16, torch.bfloat16) else 1e-6
        on_edge = (b - edge[outside]).abs() <= tolerance * max(1.0, ours.scale)
        assert ((b == a) | on_edge).all(), "where theirs leaves the grid, ours is neither theirs nor the edge code"
    vectors = inside.all(-1)  # (b, n, c)
    if idx_b is not None:
        assert idx_b.dtype == idx_a.dtype and idx_b.shape == idx_a.shape
        assert_identical(idx_b[vectors], idx_a[vectors], "indices of the code vectors on the grid")
        assert ((idx_b >= 0) & (idx_b < ours.codebook_size)).all(), "an index outside the codebook"
    return vectors


@SETTINGS
@given(levels=st.lists(st.integers(2, 20), min_size=1, max_size=5), num_codebooks=st.integers(1, 3), scale=step_scales,
       noise_dropout=st.sampled_from([0.5, 0.05, 0.0, 1.0, 0.8]), dither_inference=st.booleans(), dtype=st.sampled_from(DTYPES),
       module_dtype=st.sampled_from([None, torch.float64, torch.bfloat16]), skip_tanh=st.sampled_from([None, False, True]),
       input_scale=st.sampled_from([0.5, 1.0, 3.0]), train=st.booleans(), positional=st.booleans())
def test_dithered_fsq(stable_codec_release, levels, num_codebooks, scale, noise_dropout, dither_inference, dtype, module_dtype,
                      skip_tanh, input_scale, train, positional):
    ours_cls = compat("stable_codec").DitheredFSQ
    theirs_cls = stable_codec_release.DitheredFSQ
    args = (levels, dither_inference, num_codebooks, noise_dropout, scale)

    def build(cls):
        if positional:
            return cls(*args)
        return cls(levels=levels, dither_inference=dither_inference, num_codebooks=num_codebooks, noise_dropout=noise_dropout,
                   scale=scale)

    theirs, ours = build(theirs_cls), build(ours_cls)
    assert_twins(theirs, ours, lambda: build(theirs_cls))  # no persistent state: empty on both sides
    for name in DITHERED_ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    if module_dtype is not None:  # their half_l is a floating buffer: Module.to(dtype) converts it
        theirs.to(module_dtype), ours.to(module_dtype)
    assert_identical(ours.half_l, theirs.half_l, "half_l")

    x = randn((3, 5, num_codebooks * len(levels)), dtype, input_scale, seed=len(levels) + 10 * num_codebooks)
    codes_a, idx_a, grad_a, rng_a = _dithered_call(theirs, x, train, skip_tanh, 5)
    codes_b, idx_b, grad_b, rng_b = _dithered_call(ours, x, train, skip_tanh, 5)
    z = x.unflatten(-1, (num_codebooks, len(levels)))
    levels_a = theirs_levels(theirs, z, bool(skip_tanh), 5)
    assert_same_rng(rng_b, rng_a)
    on_grid = assert_dithered_twins(ours, codes_b, codes_a, levels_a, idx_b, idx_a)
    assert codes_b.dtype == codes_a.dtype and codes_b.shape == codes_a.shape
    assert_close_grads(grad_b, grad_a)

    theirs.eval(), ours.eval()
    with torch.no_grad():
        rows = on_grid.all(-1)  # (b, n): theirs' indices of these decode to their own codes
        for index_dtype in (torch.int64, torch.int32):
            tokens = idx_a[rows].to(index_dtype)
            assert_identical(ours.indices_to_codes(tokens), theirs.indices_to_codes(tokens), f"indices_to_codes of {index_dtype}")
        off_grid = idx_a[~on_grid]
        off_grid = off_grid[(off_grid < 0) | (off_grid >= theirs.codebook_size)]
        if off_grid.numel():  # theirs wraps an index outside its codebook onto another code; ours refuses it
            with pytest.raises(ValueError, match="out of range|>= 0"):
                ours.indices_to_codes(off_grid[:1, None].expand(1, num_codebooks))
        z64 = z.to(torch.float64)
        quantized_a, quantized_b = theirs.quantize(z64, skip_tanh=bool(skip_tanh)), ours.quantize(z64, skip_tanh=bool(skip_tanh))
        assert quantized_b.dtype == quantized_a.dtype and quantized_b.shape == quantized_a.shape
        assert_dithered_twins(ours, quantized_b.flatten(-2), quantized_a.flatten(-2), theirs._scale_and_shift(quantized_a).round())


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("levels", "scale"), [([3], 1.0), ([5, 2], 1.0), ([4, 3], 0.5), ([9], 0.25)])
def test_dithered_fsq_rounds_ties_to_even(stable_codec_release, levels, scale, train):
    """Inputs on the midpoints between grid points (exact in float64 with these steps): their
    ``round`` sends a midpoint to the even level (and the midpoints beyond the ends off the grid,
    where ours keeps the edge)."""
    theirs, ours = stable_codec_release.DitheredFSQ(levels, scale=scale), compat("stable_codec").DitheredFSQ(levels, scale=scale)
    steps = [2 * scale / (level - 1) for level in levels]
    midpoints = [[-scale + (k + 0.5) * step for k in range(-1, level)] for level, step in zip(levels, steps)]
    count = max(len(m) for m in midpoints)
    z = torch.tensor([[m[i % len(m)] for m in midpoints] for i in range(count)], dtype=torch.float64).unsqueeze(0)
    codes_a, idx_a, _, rng_a = _dithered_call(theirs, z, train, True, 7)
    codes_b, idx_b, _, rng_b = _dithered_call(ours, z, train, True, 7)
    assert_same_rng(rng_b, rng_a)
    levels_a = theirs_levels(theirs, z.unsqueeze(-2), True, 7)
    on_grid = assert_dithered_twins(ours, codes_b, codes_a, levels_a, idx_b, idx_a)
    assert on_grid.any()  # (the midpoints past an end that even rounding sends off the grid are the clamped ones)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("levels", "scale"), [([3], 1.0), ([5, 2], 1.0), ([4, 3], 0.5), ([7, 6], 0.3), ([17], 1.7)])
def test_dithered_fsq_float32_into_a_float64_module(stable_codec_release, levels, scale, train):
    """A float32 input into a module made float64: theirs adds the scale in float32 and divides by the
    float64 step. Float32 values within 40 ulps of every midpoint between grid points tell that apart
    from a division of the float64 sum (which rounds some of them the other way)."""
    theirs = stable_codec_release.DitheredFSQ(levels, scale=scale).double()
    ours = compat("stable_codec").DitheredFSQ(levels, scale=scale).double()
    columns = []
    for level, step in zip(levels, theirs.half_l):
        around = [(-scale + (torch.arange(-1, level, dtype=torch.float64) + 0.5) * step).float()]  # the midpoints
        for direction in (math.inf, -math.inf):
            value = around[0]
            for _ in range(40):
                value = torch.nextafter(value, torch.tensor(direction))
                around.append(value)
        columns.append(torch.cat(around))
    count = max(len(c) for c in columns)
    z = torch.stack([c.repeat(count // len(c) + 1)[:count] for c in columns], dim=-1).unsqueeze(0)
    codes_a, idx_a, grad_a, rng_a = _dithered_call(theirs, z, train, True, 3)
    codes_b, idx_b, grad_b, rng_b = _dithered_call(ours, z, train, True, 3)
    assert codes_a.dtype == codes_b.dtype == torch.float32
    assert_same_rng(rng_b, rng_a)
    assert assert_dithered_twins(ours, codes_b, codes_a, theirs_levels(theirs, z.unsqueeze(-2), True, 3), idx_b, idx_a).any()
    assert_close_grads(grad_b, grad_a)


@st.composite
def residual_stages(draw):
    dims = draw(st.integers(1, 6))
    count = draw(st.integers(1, 4))
    first = draw(st.sampled_from([1.0, 0.9, 1.5]))
    stages = []
    for i in range(count):
        levels = draw(st.lists(st.integers(2, 9), min_size=dims, max_size=dims))
        scale = draw(st.sampled_from([first / 2**i, first / 3**i, draw(st.floats(0.02, 1.0))]))
        stages.append((levels, scale))
    return stages


def theirs_residual_levels(theirs, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Each stage's levels ``(b, n, 1, C)`` in their encode of ``x`` (its own loop, run again under the seed)."""
    seeded(seed)
    with torch.no_grad():
        residual = torch.tanh(x.to(torch.float64)).transpose(1, 2)
        out = []
        for stage in theirs.quantizers:
            codes, _ = stage(residual, skip_tanh=True)  # float64 in, float64 out: the codes as computed
            out.append(stage._scale_and_shift(codes.unsqueeze(-2)).round())
            residual = residual - codes
    return out


@SETTINGS
@given(stages=residual_stages(), dtype=st.sampled_from(DTYPES), input_scale=st.sampled_from([0.5, 1.0, 3.0]),
       mode=st.sampled_from(["as_built", "eval", "train"]))
def test_residual_fsq_bottleneck(stable_codec_release, stages, dtype, input_scale, mode):
    """encode: (B, C, T) -> a list of (B, T, 1) int64 index tensors; decode: back to float32 (B, C, T).
    A new bottleneck's stages are in eval mode (its constructor says so) while the bottleneck
    itself trains; ``.train()`` on it puts the stages in training mode, dither included.
    The stages are identical up to the first one where theirs leaves its grid (a residual beyond a
    stage's scale): from there ours quantizes a clamped residual, and its indices stay in the codebooks."""
    ours_cls = compat("stable_codec").ResidualFSQBottleneck
    theirs_cls = stable_codec_release.ResidualFSQBottleneck
    theirs, ours = theirs_cls(stages), ours_cls(stages)
    assert_twins(theirs, ours, lambda: theirs_cls(stages))
    assert ours.n_codebooks == theirs.n_codebooks and ours.codebook_size == theirs.codebook_size
    assert len(ours.quantizers) == len(theirs.quantizers)
    if mode != "as_built":
        theirs.train(mode == "train"), ours.train(mode == "train")
    for q_a, q_b in zip(theirs.quantizers, ours.quantizers):
        assert q_b.training == q_a.training
        for name in DITHERED_ATTRIBUTES:
            assert getattr(q_b, name) == getattr(q_a, name), name

    dims = len(stages[0][0])
    x = randn((2, dims, 9), dtype, input_scale, seed=dims * 13 + len(stages))
    seeded(6)
    ids_a = theirs.encode(x)
    rng_a = rng_states()
    seeded(6)
    ids_b = ours.encode(x)
    rng_b = rng_states()
    assert isinstance(ids_b, list) and len(ids_b) == len(ids_a)
    assert_same_rng(rng_b, rng_a)
    levels_a = theirs_residual_levels(theirs, x, 6)
    for i, (b, a, stage) in enumerate(zip(ids_b, ids_a, ours.quantizers)):
        assert b.dtype == a.dtype == torch.int64 and b.shape == a.shape, f"stage {i}"
        inside = ((levels_a[i] >= 0) & (levels_a[i] <= torch.tensor(stage._checked_levels) - 1)).all(-1)  # (b, n, 1)
        assert_identical(b[inside], a[inside], f"stage {i} indices on the grid")
        assert ((b >= 0) & (b < stage.codebook_size)).all(), f"stage {i}: an index outside the codebook"
        if not inside.all():
            break  # theirs left its grid: the later residuals differ
    theirs.eval(), ours.eval()
    with torch.no_grad():
        on_grid = all(((lv >= 0) & (lv <= torch.tensor(q._checked_levels) - 1)).all() for lv, q in zip(levels_a, ours.quantizers))
        for index_dtype in (torch.int64, torch.int32):
            tokens = [t.to(index_dtype) for t in (ids_a if on_grid else ids_b)]  # theirs decodes ours' tokens too
            assert_identical(ours.decode(tokens), theirs.decode(tokens), f"decode of {index_dtype}")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [[6] * 6, [8, 5, 5, 5], [17] * 6, [5] * 6, [4, 4, 4, 4]], ids=str)
def test_stable_audio_tools_0_0_17(stable_codec_release, levels, dtype, train):
    """stable-audio-tools 0.0.17 / 0.0.18 (the release stable-codec 0.1.2 pins, and the one its
    model's own bottleneck is built from) has the same codes and random draws for float32 and
    float64 inputs, but sums its unrounded float levels and truncates the sum to int32: indices
    one below the code's for some even levels and for codebooks past 2**24 codes. The drop-in's
    int64 indices (0.0.19's) differ from 0.0.17's only where 0.0.17's do not decode to its codes."""
    old = family_sources.stable_audio_tools("0.0.17").DitheredFSQ
    ours_cls = compat("stable_codec").DitheredFSQ
    theirs, ours = old(levels, noise_dropout=0.3), ours_cls(levels, noise_dropout=0.3)
    x = randn((8, 300, len(levels)), dtype, 1.0, seed=17)
    theirs.train(train), ours.train(train)
    seeded(2)
    codes_a, idx_a = theirs(x)
    rng_a = rng_states()
    seeded(2)
    codes_b, idx_b = ours(x)
    assert_same_rng(rng_states(), rng_a)
    assert_identical(codes_b, codes_a, "codes")
    assert idx_a.dtype == torch.int32 and idx_b.dtype == torch.int64
    if not train:  # training codes are off the grid (raw values, dither): they have no exact index
        exact = exact_dithered_indices(codes_a, levels, ours.half_l)
        assert torch.equal(idx_b, exact), "our indices are not the exact indices of the codes"
        if dtype == torch.float32 and levels in ([6] * 6, [8, 5, 5, 5], [17] * 6):
            assert not torch.equal(idx_a.long(), exact)  # 0.0.17's truncation shows here: the test compared something


def exact_dithered_indices(codes: torch.Tensor, levels: list[int], step: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The int64 index of each code vector (..., d) of a one-codebook DitheredFSQ on its grid ``k * step - scale``."""
    digits = torch.round((codes.double() + scale) / step.double()).long()
    base = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.int64)
    return (digits * base).sum(dim=-1, keepdim=True)


# ============================================================================ S3Tokenizer

@pytest.fixture(scope="module")
def s3_release():
    return family_sources.s3tokenizer()


def _s3_pair(release, which: str, dim: int):
    if which == "FSQCodebook":
        build = lambda cls: cls(dim=dim)
    else:
        build = lambda cls: cls(dim, 3**8)  # S3TokenizerV2 / V3's call
    torch.manual_seed(dim)
    theirs = build(getattr(release, which))
    ours = build(getattr(compat("s3tokenizer"), which))
    assert_twins(theirs, ours, lambda: build(getattr(release, which)))
    return theirs, ours


@SETTINGS
@given(which=st.sampled_from(["FSQCodebook", "FSQVectorQuantization"]), dim=st.integers(1, 48), batch=st.integers(1, 3),
       steps=st.integers(1, 9), dtype=st.sampled_from(DTYPES), input_scale=st.sampled_from([0.1, 1.0, 10.0]), train=st.booleans())
def test_s3tokenizer(s3_release, which, dim, batch, steps, dtype, input_scale, train):
    """encode: (B, T, dim) in the module's dtype -> int32 (B, T) token ids (inference only)."""
    theirs, ours = _s3_pair(s3_release, which, dim)
    theirs.to(dtype).train(train), ours.to(dtype).train(train)
    x = randn((batch, steps, dim), dtype, input_scale, seed=dim + 100 * steps)
    seeded(1)
    ids_a = theirs.encode(x)
    rng_a = rng_states()
    seeded(1)
    ids_b = ours.encode(leaf(x))
    assert_same_rng(rng_states(), rng_a)
    assert_identical(ids_b, ids_a, "token ids")
    assert not ids_b.requires_grad
    if which == "FSQVectorQuantization":
        assert ours.codebook_size == theirs.codebook_size
        assert ours.codebook is None and theirs.codebook is None  # no codebook tensor was released
    else:
        assert ours.level == theirs.level and ours.embed is None and theirs.embed is None

    # what theirs lacks: the level indices of a token id, the digits its encode rounded to
    codebook = theirs if which == "FSQCodebook" else theirs._codebook
    with torch.no_grad():
        h = codebook.project_down(x.reshape(-1, dim)).float()
        expected = ((h.tanh() * 0.9990000128746033).round() + 1).long().reshape(batch, steps, 8)
    for index_dtype in (torch.int32, torch.int64):
        levels = ours.indices_to_level_indices(ids_a.to(index_dtype))
        assert levels.shape == (batch, steps, 8) and torch.equal(levels.long(), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_s3tokenizer_rounding_boundary(s3_release, dtype):
    """Every value of ``dtype`` within 300 steps of the boundary ``tanh(h) * 0.999 = +-0.5`` (h about
    0.54997; for float64, float32's steps and their midpoints), through an identity projection: the
    digit flips where theirs flips, so the tanh runs in the same dtype (float32 after the
    projection) and the factor is the same float32 0.999."""
    theirs, ours = _s3_pair(s3_release, "FSQCodebook", 8)
    with torch.no_grad():
        for module in (theirs, ours):
            module.project_down.weight.copy_(torch.eye(8))
            module.project_down.bias.zero_()
            module.to(dtype)
    grid = torch.float32 if dtype == torch.float64 else dtype  # float64 goes through .float(): float32's steps matter
    bits = torch.tensor(math.atanh(0.5 / 0.9990000128746033), dtype=grid).view(_BITS[grid])
    around = (bits + torch.arange(-300, 300, dtype=bits.dtype)).view(grid).to(dtype)
    if dtype == torch.float64:  # and the midpoints between float32 neighbours, which .float() rounds to even
        around = torch.cat([around, (around[1:] + around[:-1]) / 2])
    values = torch.cat([around, -around])
    x = values.repeat_interleave(8).reshape(1, -1, 8)  # each value in all 8 dimensions
    ids_a, ids_b = theirs.encode(x), ours.encode(x)
    assert_identical(ids_b, ids_a, "token ids")
    assert len(set(ids_a.flatten().tolist())) == 3  # both roundings and the flip between them were met


@pytest.mark.parametrize("which", ["FSQCodebook", "FSQVectorQuantization"])
def test_s3tokenizer_has_no_decode(s3_release, which):
    """No up-projection was released: decode raises NotImplementedError on both sides."""
    theirs, ours = _s3_pair(s3_release, which, 16)
    ids = theirs.encode(torch.randn(2, 3, 16))
    for module in (theirs, ours):
        with pytest.raises(NotImplementedError):
            module.decode(ids)


def test_s3tokenizer_refuses_what_theirs_cannot_run(s3_release):
    """FSQVectorQuantization asserts codebook_size == 3**8; FSQCodebook with level != 3 fails at
    encode (it takes 2**level digits of 8). The drop-in refuses both, at construction or encode."""
    with pytest.raises(AssertionError):
        s3_release.FSQVectorQuantization(16, 3**7)
    with pytest.raises((AssertionError, ValueError)):
        compat("s3tokenizer").FSQVectorQuantization(16, 3**7)
    with pytest.raises(RuntimeError):
        s3_release.FSQCodebook(16, level=2).encode(torch.randn(1, 2, 16))
    with pytest.raises((ValueError, RuntimeError)):
        compat("s3tokenizer").FSQCodebook(16, level=2).encode(torch.randn(1, 2, 16))


# ============================================================================== the sources

# The statements the drop-ins' specification rests on, as the released files spell them (each once,
# or the number of times given): a repacked or different release fails here first, naming the statement.
SOURCE_STATEMENTS = {
    "nemo": (family_sources.NEMO, family_sources.NEMO_CODEC_MODULES, [
        "output_scale = output_scale * (1 - self.eps)",
        "output_offset = torch.where(self.num_levels % 2 == 0, 0.5, 0)",
        "input_shift = (output_offset / output_scale).tan()",
        "output = output_scale * (inputs + input_shift).tanh() - output_offset",
        "indices = torch.sum(indices * self.dim_base_index, dim=1)",
        "return indices.to(torch.int32)",
        "indices_grouped = indices.chunk(self.num_groups, dim=0)",
    ]),
    "stable-codec": (family_sources.STABLE_CODEC, family_sources.STABLE_CODEC_FSQ, [
        "half_l = self.scale * 2 / (self._levels - 1)",
        "z = z.to(torch.float64)",
        "zhat = zhat.round().to(torch.int64)",
        ("mask = torch.bernoulli(torch.full([z.shape[0],1,1,1], self.noise_dropout, device = z.device)).bool().expand_as(z)", 2),
        "quantized = torch.where(mask, quantized, z + (torch.rand_like(z) - 0.5) * self.half_l)",
    ]),
    "stable-codec residual": (family_sources.STABLE_CODEC, family_sources.STABLE_CODEC_RESIDUAL, [
        "DitheredFSQ(levels=levels, scale=scale).eval().requires_grad_(False)",
        "z = torch.tanh(x.to(torch.float64))",
        "r = r - q.to(torch.float64)",
    ]),
    "stable-audio-tools 0.0.17": (family_sources.STABLE_AUDIO_TOOLS["0.0.17"], family_sources.STABLE_AUDIO_TOOLS_FSQ, [
        "return (zhat * self._basis).sum(dim=-1).to(int32)",
        "z = z.float()",
    ]),
    "s3tokenizer": (family_sources.S3TOKENIZER, family_sources.S3TOKENIZER_MODEL_V2, [
        "self.project_down = torch.nn.Linear(dim, 8)",
        "h = self.project_down(x).float()",
        "h = h * 0.9990000128746033",
        "h = h.round() + 1",
        "torch.arange(2**self.level, device=x.device, dtype=h.dtype))",
        "ind = mu.reshape(x_shape[0], x_shape[1]).int()",
    ]),
}


@pytest.mark.parametrize("family", list(SOURCE_STATEMENTS))
def test_the_released_sources_say_what_the_drop_ins_follow(family):
    spec, path, statements = SOURCE_STATEMENTS[family]
    text = family_sources.source(spec, path)
    for statement in statements:
        statement, count = statement if isinstance(statement, tuple) else (statement, 1)
        lines = family_sources.lines_of(text, statement)
        assert len(lines) == count, f"{spec} {path}: {statement!r} on lines {lines}, expected {count} times"
