"""The newest vector-quantize-pytorch release against ``vqp_version=None`` and against its own release string.

1.34.1 adds ``materialize_codebook=True`` to ``FSQ`` (the last positional parameter); ``ResidualFSQ``
and ``GroupedResidualFSQ`` pass it to their stages through ``**kwargs``. ``False`` keeps FSQ from
building every code at construction: its ``implicit_codebook`` is then ``None``, and
``ResidualFSQ.codebooks`` and its decoding compute the codes from the levels instead of
gathering them from the stages' codebooks. Codes, indices, outputs, decodes, random draws and
``state_dict`` keys are the same in both settings (``implicit_codebook`` is a non-persistent
buffer in every release), so checkpoints load strictly across the setting and across releases.

Each test runs theirs and ours side by side (``conftest.py`` installs the release) under the same
seeds, with the helpers of ``test_vqp_releases.py``: equal outputs, indices, all codes, torch and
Python RNG states after every forward, close input gradients, strict loads both ways.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ
from ifsq_quant.compat import vqp as table
from tests.parity.test_vqp_releases import SETTINGS, _same_forwards, _twins, level_lists, residual_configs, scales

pytestmark = pytest.mark.slow

FIRST_WITH_MATERIALIZE = "1.34.1"  # the first release with materialize_codebook


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# the newest release the table knows, and at least the first release with materialize_codebook
NEWEST = max(table.LATEST, FIRST_WITH_MATERIALIZE, key=_key)
# ours as the latest semantics and as that release's string
VERSIONS = st.sampled_from([None, NEWEST])
# materialize_codebook left out, or given
MATERIALIZE = st.sampled_from([{}, {"materialize_codebook": True}, {"materialize_codebook": False}])


@pytest.fixture(scope="module")
def newest(vqp_release):
    return vqp_release(NEWEST)


def test_the_table_reproduces_the_newest_release():
    assert _key(table.LATEST) >= _key(FIRST_WITH_MATERIALIZE), f"the release table stops at {table.LATEST}"
    assert table.semantics(NEWEST).is_latest


def test_fsq_takes_their_positional_parameters_in_their_order(newest):
    """A positional call of theirs means the same here: their parameters are ours' first ones."""
    theirs = [p.name for p in inspect.signature(newest.FSQ).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    ours = [p.name for p in inspect.signature(FSQ).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert theirs[-1] == "materialize_codebook"
    assert ours[:len(theirs)] == theirs
    assert inspect.signature(FSQ).parameters["materialize_codebook"].default is True
    positional = [[8, 5, 5, 5], None, 1, None, None, (torch.float32, torch.float64), False, True, True, True, False, 0.0, False, False, False]
    torch.manual_seed(0)
    theirs_fsq, ours_fsq = newest.FSQ(*positional), FSQ(*positional)
    assert theirs_fsq.implicit_codebook is None and ours_fsq.implicit_codebook is None


def test_residual_modules_take_every_argument_of_theirs(newest):
    for theirs_cls, ours_cls in ((newest.ResidualFSQ, ResidualFSQ), (newest.GroupedResidualFSQ, GroupedResidualFSQ)):
        names = {p.name for p in inspect.signature(theirs_cls).parameters.values() if p.kind is not p.VAR_KEYWORD}
        assert names <= set(inspect.signature(ours_cls).parameters), sorted(names - set(inspect.signature(ours_cls).parameters))


def _same_codebook(theirs, ours, materialize: dict) -> None:
    if materialize.get("materialize_codebook", True):
        assert torch.equal(ours.implicit_codebook, theirs.implicit_codebook)
        assert ours.implicit_codebook.dtype == theirs.implicit_codebook.dtype
    else:
        assert theirs.implicit_codebook is None
        assert ours.implicit_codebook is None


@SETTINGS
@given(levels=level_lists, codebooks=st.integers(1, 2), extra_dim=st.sampled_from([0, 3]), layout=st.sampled_from(["seq", "channel_first", "image"]),
       scale=scales, train=st.booleans(), noisy=st.booleans(), version=VERSIONS, materialize=MATERIALIZE)
def test_fsq(newest, levels, codebooks, extra_dim, layout, scale, train, noisy, version, materialize):
    d = len(levels) * codebooks
    kwargs = dict(levels=levels, num_codebooks=codebooks, dim=d + extra_dim, channel_first=layout == "channel_first", **materialize)
    if noisy:
        kwargs.update(noise_dropout=0.5, preserve_symmetry=True)  # theirs requires the symmetric layout with noise dropout
    theirs, ours = _twins(newest.FSQ, FSQ, version, **kwargs)
    assert ours.codebook_size == theirs.codebook_size
    _same_codebook(theirs, ours, materialize)
    shape = (3, d + extra_dim, 5, 4) if layout == "image" else (3, d + extra_dim, 20) if layout == "channel_first" else (3, 20, d + extra_dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(levels))) * scale
    out, indices = _same_forwards(theirs, ours, x, train)

    theirs.eval()
    ours.eval()
    assert torch.equal(ours.indices_to_codes(indices), theirs.indices_to_codes(indices.to(torch.int32)))
    z = (x.movedim(1, -1) if layout != "seq" else x).reshape(-1, len(levels))[:64]
    codes = ours.quantize(z)
    assert torch.equal(codes, theirs.quantize(z)) and torch.equal(ours.bound(z), theirs.bound(z))
    assert torch.equal(ours.codes_to_indices(codes), theirs.codes_to_indices(codes).long())
    for dtype in (torch.bfloat16, torch.float16):  # the codebook follows the module's dtype (float64 differs on purpose: docs/compat.md)
        _same_codebook(copy.deepcopy(theirs).to(dtype), copy.deepcopy(ours).to(dtype), materialize)


@pytest.mark.parametrize("levels", [[7] * 10, [9] * 11], ids=["2^28-codes", "2^34.9-codes"])
@pytest.mark.parametrize("version", [None, NEWEST], ids=["None", NEWEST])
def test_fsq_without_materializing_a_large_codebook(newest, levels, version):
    """Above 2**24 codes their indices are exact from 1.34.1 (int64 above 2**31), ours' values."""
    theirs, ours = _twins(newest.FSQ, FSQ, version, levels=levels, materialize_codebook=False)
    assert ours.codebook_size == theirs.codebook_size
    x = torch.randn(4, 512, len(levels), generator=torch.Generator().manual_seed(0)) * 2
    out, indices = _same_forwards(theirs, ours, x, train=False)
    assert int(indices.max()) >= 2**24  # the range their float32 sum lost before 1.34.1
    assert torch.equal(ours.indices_to_codes(indices), theirs.indices_to_codes(indices))
    assert ours.implicit_codebook is None


@SETTINGS
@given(data=st.data(), scale=scales, mode=st.sampled_from(["eval", "train", "train_no_grad", "train_fixed_seed"]), spatial=st.booleans(),
       version=VERSIONS, materialize=MATERIALIZE)
def test_residual(newest, data, scale, mode, spatial, version, materialize):
    kwargs = {**data.draw(residual_configs(table.LATEST)), **materialize}
    theirs, ours = _twins(newest.ResidualFSQ, ResidualFSQ, version, **kwargs)
    for layer_theirs, layer_ours in zip(theirs.layers, ours.layers):
        _same_codebook(layer_theirs, layer_ours, materialize)
    dim, channel_first = kwargs["dim"], kwargs.get("is_channel_first", False)
    shape = ((2, dim, 4, 5) if spatial else (2, dim, 17)) if channel_first else (2, 17, dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(dim)) * scale
    forward = (lambda m, x: m(x, rand_quantize_dropout_fixed_seed=123)) if mode == "train_fixed_seed" else (
        (lambda m, x: m(x)) if channel_first else (lambda m, x: m(x, return_all_codes=True)))
    out, indices = _same_forwards(theirs, ours, x, train=mode != "eval", grad=mode != "train_no_grad", forward=forward)[:2]

    channel_last = indices.movedim(1, -1) if channel_first else indices
    theirs.eval()
    ours.eval()
    assert torch.equal(ours.codebooks, theirs.codebooks) and ours.codebooks.dtype == theirs.codebooks.dtype
    assert torch.equal(ours.get_codes_from_indices(channel_last), theirs.get_codes_from_indices(channel_last))
    assert torch.equal(ours.get_output_from_indices(channel_last), theirs.get_output_from_indices(channel_last))
    if kwargs.get("quantize_dropout"):  # coarse indices: the later stages read as dropped
        coarse = channel_last[..., :1]
        assert torch.equal(ours.get_output_from_indices(coarse), theirs.get_output_from_indices(coarse))
    theirs.bfloat16()
    ours.bfloat16()
    assert torch.equal(ours.codebooks, theirs.codebooks) and ours.codebooks.dtype == torch.bfloat16


@SETTINGS
@given(levels=level_lists, q=st.integers(1, 3), groups=st.integers(1, 3), extra_dim=st.sampled_from([0, 2]), image=st.booleans(),
       dropout=st.booleans(), scale=scales, mode=st.sampled_from(["eval", "train", "train_no_grad"]), version=VERSIONS, materialize=MATERIALIZE)
def test_grouped(newest, levels, q, groups, extra_dim, image, dropout, scale, mode, version, materialize):
    dim = groups * (len(levels) + extra_dim)
    kwargs = dict(dim=dim, groups=groups, levels=levels, num_quantizers=q, quantize_dropout=dropout and q > 1, **materialize)
    if image:
        kwargs.update(accept_image_fmap=True, is_channel_first=True)
    theirs, ours = _twins(newest.GroupedResidualFSQ, GroupedResidualFSQ, version, **kwargs)
    x = torch.randn((2, dim, 3, 4) if image else (2, 11, dim), generator=torch.Generator().manual_seed(dim)) * scale
    out, indices = _same_forwards(theirs, ours, x, train=mode != "eval", grad=mode != "train_no_grad")[:2]
    theirs.eval()
    ours.eval()
    assert torch.equal(ours.codebooks, theirs.codebooks)
    if not image:  # theirs concatenates channel-last decodes of image indices along axis 1
        assert torch.equal(ours.get_output_from_indices(indices), theirs.get_output_from_indices(indices))
        assert torch.equal(ours.get_codes_from_indices(indices), theirs.get_codes_from_indices(indices))


@pytest.mark.parametrize("saved, loaded", [({}, {"materialize_codebook": False}), ({"materialize_codebook": False}, {})])
def test_checkpoints_load_across_the_setting_and_across_releases(vqp_release, newest, saved, loaded):
    """``implicit_codebook`` is never in a state_dict: strict loads between both settings, ours and theirs, 1.32.0 and the newest."""
    before = vqp_release("1.32.0")
    kwargs = dict(levels=[5, 5], num_quantizers=2, dim=6)
    sources = [newest.ResidualFSQ(**kwargs, **saved), ResidualFSQ(**kwargs, **saved), before.ResidualFSQ(**kwargs)]
    for source in sources:
        state = source.state_dict()
        assert not any("implicit_codebook" in key for key in state)
        for target in (ResidualFSQ(**kwargs, **loaded), newest.ResidualFSQ(**kwargs, **loaded)):
            target.load_state_dict(state, strict=True)
            assert all(torch.equal(value, state[key]) for key, value in target.state_dict().items())


def test_materialize_codebook_is_refused_before_its_release(vqp_release):
    """Releases before 1.34.1 have no such argument (theirs raises a TypeError): set to False it is refused, left at True accepted."""
    before = vqp_release("1.32.0")
    with pytest.raises(TypeError, match="materialize_codebook"):
        before.FSQ([5, 5], materialize_codebook=False)
    builds = {
        "FSQ": lambda **kw: FSQ([5, 5], **kw),
        "ResidualFSQ": lambda **kw: ResidualFSQ(levels=[5, 5], num_quantizers=2, **kw),
        "GroupedResidualFSQ": lambda **kw: GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2, **kw),
    }
    for name, build in builds.items():
        with pytest.raises(TypeError, match=f"materialize_codebook.*{FIRST_WITH_MATERIALIZE}"):
            build(materialize_codebook=False, vqp_version="1.32.0")
        build(materialize_codebook=True, vqp_version="1.32.0")
        module = build(materialize_codebook=False, vqp_version=NEWEST)
        assert module is not None, name
