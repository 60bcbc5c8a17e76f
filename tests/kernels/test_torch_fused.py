"""The fused CPU path (``ifsq_quant.kernels.torch_fused``) against the reference: the fast tanh's
fallback for large bin scales, inputs a few ulp around every rounding boundary over many blocks,
+0.0 for the zero code, and codes that do not depend on position, batch size or thread count."""

from __future__ import annotations

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


@pytest.mark.parametrize("cls,kwargs", [(FSQ, {}), (iFSQ, {}), (FSQ, {"preserve_symmetry": True})])
def test_zero_codes_are_positive_zero(cls, kwargs):
    """The fused path returns +0.0 for the zero code, as the reference and vector-quantize-pytorch."""
    z = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0)) * 0.3
    out, _ = cls([8, 5, 5, 5], **kwargs)(z)
    zeros = out == 0
    assert zeros.any() and not torch.signbit(out[zeros]).any()


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
