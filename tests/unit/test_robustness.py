"""Boundary inputs, large levels, vector-quantize-pytorch's full surface, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifsq_quant import FSQ, iFSQ
from ifsq_quant.activations import get_activation
from ifsq_quant.bins import BinLayout
from ifsq_quant.kernels import reference, torch_fused


def _same_as_reference(q: FSQ, z: torch.Tensor):
    ref = type(q)(q.levels, eps=q.eps, bins=q.bins, activation=q.activation, backend="reference")
    out, idx = q(z)
    out_ref, idx_ref = ref(z)
    assert torch.equal(idx, idx_ref) and torch.equal(out, out_ref)
    return out, idx


@pytest.mark.parametrize("levels,eps", [([2**20], 1e-3), ([17], 1e4), ([100_003], 1e-3)])
@pytest.mark.parametrize("rows", [5, 131])  # numel % 128 != 0: the fast tanh's padded search
def test_large_bin_scales_fall_back_from_the_fast_tanh(levels, eps, rows):
    z = torch.randn(rows, 1, generator=torch.Generator().manual_seed(rows)) * 2
    q = FSQ(levels, eps=eps)
    _same_as_reference(q, z)
    _same_as_reference(q, z.to(torch.bfloat16))


def test_eps_must_be_finite_and_bounded():
    for eps in (float("inf"), float("nan"), 1e38):
        with pytest.raises(ValueError, match="eps"):
            FSQ([17], eps=eps)


def test_levels_beyond_int32_and_float32():
    """L >= 2**31 does not overflow, and float64 inputs reach every level even where float32 cannot
    hold L (the edge levels 0 and L - 1 included)."""
    L = 2**31 + 1
    q = FSQ([L], eps=0.0)
    z = torch.tensor([[-float("inf")], [0.0], [float("inf")]], dtype=torch.float64)
    _, idx = q(z)
    assert idx.tolist() == [0, L // 2, L - 1]
    assert q.indices_to_codes(idx).view(-1).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("bins", ["round", "symmetric", "equal"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("L", [2**24 + 3, 2**31 - 1, 2**40 - 1])
def test_float32_inputs_with_levels_beyond_float32(L, backend, bins):
    """Where float32 cannot hold every level (L > 2**24), float32 and bf16 inputs are quantized in
    float64: every index is in [0, L), the ends are 0 and L - 1, odd levels above 2**24 are
    reached, and decoding the indices gives the forward's codes (in float32, as the forward)."""
    quantizer = FSQ([L], eps=0.0, bins=bins, backend=backend)
    hw = L // 2
    # float64 inputs aimed at levels float32 cannot hold, and the saturating ends
    targets = torch.tensor([2**24 + 1, L - 2, L - 4], dtype=torch.float64) if bins == "round" else None
    inf = float("inf")
    z64 = torch.tensor([[-inf], [-50.0], [0.0], [50.0], [inf]], dtype=torch.float64)
    if targets is not None:
        z64 = torch.cat([z64, torch.atanh((targets - hw) / hw)[:, None]])
    for dtype in (torch.float32, torch.bfloat16):
        z = z64.to(dtype)
        out, idx = quantizer(z)
        assert out.dtype == dtype and idx.min() >= 0 and idx.max() <= L - 1
        assert idx[0] == 0 and idx[1] == 0 and idx[3] == L - 1 and idx[4] == L - 1
        assert torch.equal(quantizer.indices_to_codes(idx).to(dtype), out)
        # the same float64 computation as a float64 input of the same values
        assert torch.equal(idx, quantizer(z.double())[1])
    if targets is not None:  # exact targets need float64 inputs (float32 cannot place z that finely)
        assert torch.equal(quantizer(z64)[1][5:].view(-1), targets.long())


def test_clamp_bound_never_rounds_up():
    """The float32 clamp bound L - 1 is rounded down where float32 cannot hold it."""
    from ifsq_quant.activations import get_activation
    from ifsq_quant.bins import BinLayout

    for L in (2**24 + 3, 2**31 - 1):
        top = BinLayout([L], "round", get_activation("tanh"), 0.0).constants(torch.device("cpu"), torch.float32)["top"]
        assert top.item() <= L - 1 and torch.nextafter(top, torch.tensor(float("inf"))).item() > L - 1


def test_indices_to_codes_checks_the_codebook_axis():
    q = FSQ([5, 5], num_codebooks=2)
    with pytest.raises(ValueError, match="codebook axis of size 2"):
        q.indices_to_codes(torch.zeros(2, 3, 3, dtype=torch.long))
    assert q.indices_to_codes(torch.zeros(2, 3, 2, dtype=torch.long)).shape == (2, 3, 4)


@pytest.mark.parametrize("cls,kwargs", [(FSQ, {}), (iFSQ, {}), (FSQ, {"preserve_symmetry": True})])
def test_zero_codes_are_positive_zero(cls, kwargs):
    """The fused path returns +0.0 for the zero code, as the reference and vector-quantize-pytorch."""
    z = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0)) * 0.3
    out, _ = cls([8, 5, 5, 5], **kwargs)(z)
    zeros = out == 0
    assert zeros.any() and not torch.signbit(out[zeros]).any()


def test_numpy_integers_are_accepted():
    q = FSQ(np.array([8, 5, 5, 5]), dim=np.int64(16), num_codebooks=np.int64(1), index_groups=[np.int64(2), np.int64(2)])
    assert q.levels == [8, 5, 5, 5] and q.dim == 16 and q.index_groups == [2, 2]
    out, idx = q(torch.randn(2, 10, 16))
    assert out.shape == (2, 10, 16) and idx.shape == (2, 10, 2)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="index_groups"):
        FSQ([5, 5], index_groups=3)
    with pytest.raises(TypeError, match="noise_dropout"):
        FSQ([5, 5], noise_dropout="0.5")
    q = FSQ([5, 5])
    with pytest.raises(TypeError, match="indices"):
        q.indices_to_codes(torch.zeros(3, dtype=torch.uint64))
    with pytest.raises(ValueError, match="meta"):
        q(torch.empty(2, 3, 2, device="meta"))
    with pytest.raises(ValueError, match="implicit_codebook"):
        _ = FSQ([5, 5], index_groups=[1, 1]).implicit_codebook
    assert not hasattr(FSQ([5, 5], index_groups=[1, 1]), "implicit_codebook")  # tools that probe attributes pass over it


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "erf"])
@pytest.mark.parametrize("levels", [[7, 6, 5], [17, 9, 8, 5, 3]])  # d = 3 and 5: not powers of two
def test_fused_over_many_blocks_near_every_boundary(monkeypatch, activation, levels):
    """Inputs a few ulp around every rounding boundary, spread over many blocks with a ragged
    last one: the fused path equals the reference bit for bit."""
    monkeypatch.setattr(torch_fused, "BLOCK_ELEMENTS", 960)
    layout = BinLayout(levels, "round", get_activation(activation), 1e-3 if activation == "tanh" else 0.0)
    columns = []
    for i, L in enumerate(levels):
        c = layout.constants("cpu", torch.float64)
        # u = f(z + shift) * scale + bias crosses k + 1/2 at z = f^-1((k + 1/2 - bias) / scale) - shift
        k = torch.arange(-(L // 2), L // 2, dtype=torch.float64)
        y = ((k + 0.5 - c["bias"][i]) / c["scale"][i]).clamp(-0.999999, 0.999999)
        edges = (layout.activation.inverse(y) - c["shift"][i]).float()
        ulps = torch.arange(-4, 5, dtype=torch.float32)
        near = edges[:, None] + ulps * torch.finfo(torch.float32).eps * edges.abs().clamp_min(1e-3)[:, None]
        columns.append(near.reshape(-1))
    n = max(len(col) for col in columns) * 3 + 7
    z = torch.stack([col.repeat(n // len(col) + 1)[:n] for col in columns], dim=1)
    codes_ref, levels_ref = reference.quantize(z, layout)
    from ifsq_quant import kernels

    out = kernels.quantize(z, layout, None, "torch", need_level_indices=True)
    assert torch.equal(out.codes, codes_ref) and torch.equal(out.level_indices, levels_ref)


def test_a_subclass_quantize_is_used_by_forward():
    """vector-quantize-pytorch's extension point: a subclass overriding quantize() gets its codes
    (and their indices) from forward."""

    class Coarse(FSQ):
        def quantize(self, z):
            return torch.zeros_like(z)

    out, idx = Coarse([5, 5])(torch.randn(2, 7, 2))
    assert torch.equal(out, torch.zeros(2, 7, 2)) and torch.equal(idx, torch.full((2, 7), 12))


def _near_ifsq_edges(rows: int) -> torch.Tensor:
    """``(rows, 4)`` inputs within 6 ulp of every rounding boundary of iFSQ with L = 17."""
    k = torch.arange(-8, 8, dtype=torch.float64) + 0.5
    edges = (torch.atanh(k / 8) / 0.8).float()
    ulps = torch.arange(-6, 7, dtype=torch.float32)
    near = (edges[:, None] + ulps * torch.finfo(torch.float32).eps * edges.abs().clamp_min(1e-3)[:, None]).reshape(-1)
    pick = torch.randint(0, near.numel(), (rows * 4,), generator=torch.Generator().manual_seed(0))
    return near[pick].view(rows, 4)


@pytest.mark.parametrize("threads", [1, 2])
def test_codes_do_not_depend_on_position_batch_size_or_threads(threads):
    """PyTorch's CPU sigmoid differs by an ulp between its vector loop and its scalar tails; the
    sigmoid here always takes the vector code, so an element's code is the same alone, inside any
    slice of a batch and with any thread count, on the fused path and the reference alike."""
    z = _near_ifsq_edges(70_001)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        full = iFSQ([17] * 4, backend="reference")(z)[1]
        torch.set_num_threads(threads)
        for backend in ("torch", "reference"):
            q = iFSQ([17] * 4, backend=backend)
            assert torch.equal(q(z)[1], full), backend
            for n in (1, 3, 7, 13, 1000, 40_001):
                for start in (0, 5, 77):
                    assert torch.equal(q(z[start:start + n])[1], full[start:start + n]), (backend, n, start)
    finally:
        torch.set_num_threads(before)
