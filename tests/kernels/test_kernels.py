"""Every fast path against the reference: same codes and indices bit for bit, close gradients."""

import pytest
import torch

from ifsq_quant import FSQ, iFSQ, kernels
from ifsq_quant.activations import ACTIVATION_NAMES, get_activation
from ifsq_quant.bins import LAYOUTS, BinLayout
from ifsq_quant.indexing import IndexPlan
from ifsq_quant.kernels import Implementation, choose, reference, torch_fused

LEVELS = [[8, 5, 5, 5], [17, 17, 17, 17], [7, 6, 4, 3], [16, 9], [3], [2, 4, 6]]


def _inputs(d, dtype=torch.float32, rows=3000):
    torch.manual_seed(d)
    z = torch.randn(rows, d, dtype=dtype) * 2
    z[0, 0], z[1, 0], z[2, 0] = float("nan"), float("inf"), -float("inf")
    z[3] = 0.0
    return z


# every named bound and every layout (a new one is tested here without being listed); "round" refuses L = 2
CONFIGS = [(a, b, levels) for a in ACTIVATION_NAMES for b in LAYOUTS for levels in LEVELS if not (b == "round" and 2 in levels)]


@pytest.mark.parametrize("activation,bins,levels", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_reference(activation, bins, levels, dtype):
    layout = BinLayout(levels, bins, get_activation(activation), 1e-3 if activation == "tanh" else 0.0)
    plan = IndexPlan(levels, [1, len(levels) - 1] if len(levels) > 1 else None)
    z = _inputs(len(levels), dtype).requires_grad_(True)
    codes_ref, levels_ref = reference.quantize(z, layout)
    codes, indices, level_indices = kernels.quantize(z, layout, plan, "torch", need_level_indices=True)
    assert torch.equal(codes, codes_ref)
    assert torch.equal(level_indices, levels_ref)
    assert torch.equal(indices, plan.pack(levels_ref))
    grad_out = torch.randn_like(codes)
    (g_ref,) = torch.autograd.grad(codes_ref, z, grad_out)
    (g,) = torch.autograd.grad(codes, z, grad_out)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)  # NaN and +-inf inputs included (both 0)
    assert g[0, 0] == 0 and g_ref[0, 0] == 0  # the NaN input


def test_every_named_bound_and_layout_has_a_fused_path():
    """Each named bound carries a kernel id and every fused kernel serves it; a bound or layout
    added without its fused code fails here (and in test_fused_equals_reference / test_triton)."""
    ids = {name: get_activation(name).kernel_id for name in ACTIVATION_NAMES}
    assert None not in ids.values() and len(set(ids.values())) == len(ids)
    layout_ids = {kind: BinLayout([5, 7], kind, get_activation("tanh"), 0.0).kernel_id for kind in LAYOUTS}
    assert sorted(layout_ids.values()) == list(range(len(LAYOUTS)))
    for name in ACTIVATION_NAMES:
        layout = BinLayout([5, 7], "round", get_activation(name), 0.0)
        assert layout.fused and choose("auto", torch.zeros(1, 2), layout) is Implementation.FUSED
    custom = BinLayout([5, 7], "round", get_activation(lambda z: torch.tanh(z / 2)), 0.0)
    assert not custom.fused and choose("torch", torch.zeros(1, 2), custom) is Implementation.REFERENCE


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_one_nan_gradient_rule(backend, activation):
    """A NaN input quantizes to level 0 with a zero gradient: in the backward, the double backward and compiled."""
    q = FSQ([8, 5], activation=activation, backend=backend)
    z = torch.tensor([[float("nan"), 0.3], [0.2, float("nan")], [float("inf"), -float("inf")]], requires_grad=True)
    codes, _ = q(z)
    (g,) = torch.autograd.grad(codes.sum(), z, create_graph=True)
    (g_plain,) = torch.autograd.grad(q(z)[0].sum(), z)
    assert torch.isfinite(g).all() and torch.isfinite(g_plain).all()
    assert g[0, 0] == g[1, 1] == 0 and g_plain[0, 0] == g_plain[1, 1] == 0
    torch.testing.assert_close(g.detach(), g_plain)
    if g.requires_grad:  # (clamp's second derivative is zero: no graph) the double-backward formula's NaN mask
        (gg,) = torch.autograd.grad(g[:2].sum(), z)
        assert torch.isfinite(gg[:2]).all() and gg[0, 0] == gg[1, 1] == 0
    torch._dynamo.reset()  # one compiled module per case: stay below dynamo's recompile limit
    compiled = torch.compile(q, fullgraph=True)
    x = z.detach().clone().requires_grad_(True)
    compiled(x)[0].sum().backward()
    torch._dynamo.reset()
    assert torch.equal(x.grad, g_plain)


def test_the_raw_op_checks_its_arguments():
    z = torch.randn(4, 2)
    op = torch.ops.ifsq_quant.quantize
    good = dict(levels=[5, 5], kind="round", activation="tanh", activation_scale=1.0, eps=0.0, shift="inverse", grid_scale=1.0,
                grid_steps=[], groups=[2], pack=True, need_levels=False, need_deriv=False, impl="fused")
    assert op(z, **good)[0].shape == (4, 2)
    for change, match in [(dict(levels=[5, 5, 5]), "levels has 3 entries but z has 2 columns"), (dict(levels=[5, 1]), "levels"),
                          (dict(kind="floor"), "kind must be one of"), (dict(activation="relu"), "activation"),
                          (dict(activation_scale=2.0), "activation_scale"),
                          (dict(eps=-1.0), "eps must be"), (dict(shift="sin"), "shift must be"),
                          (dict(grid_steps=[1.0]), "grid_steps must be"), (dict(groups=[1]), "groups must add up"),
                          (dict(impl="cuda"), "impl must be one of")]:
        with pytest.raises((ValueError, TypeError), match=match):
            op(z, **dict(good, **change))
    with pytest.raises(TypeError, match="float32 or float64"):
        op(z.half(), **good)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bins", ["round", "symmetric", "equal"])
def test_half_inputs_with_levels_beyond_float32_at_unsaturated_values(dtype, bins):
    """Levels above 2**24 are quantized in float64 also for half inputs, at values spread over many levels."""
    levels = [2**25 + 1, 7]
    q = FSQ(levels, bins=bins, activation="erf", eps=0.0)
    z = (torch.linspace(-2.5, 2.5, 8192).reshape(-1, 2)).to(dtype)
    codes, indices = q(z)
    expected_codes, expected_levels = reference.quantize(z.to(torch.float64), q.layout)
    assert codes.dtype == dtype and torch.equal(codes, expected_codes.to(dtype))
    assert torch.equal(indices, q.index_plan.pack(expected_levels)[..., 0])
    assert indices.unique().numel() > 500 and indices.max() < q.codebook_size


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_cache_keeps_a_value_of_a_fake_tensor_trace_with_real_inputs(backend, dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ifsq_quant import ResidualFSQ

    makes = [lambda: FSQ([8, 5, 5, 5], backend=backend), lambda: ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=2, backend=backend,
                                                                                residual_f32=True)]
    x = torch.randn(4, 10, 4, dtype=dtype)
    for make in makes:
        traced, fresh = make(), make()
        with FakeTensorMode(allow_non_fake_inputs=True):
            traced(x)
        assert all(torch.equal(a, b) for a, b in zip(traced(x), fresh(x)))


def test_levels_beyond_float64_integers_are_named():
    with pytest.raises(ValueError, match=r"levels must be at most 2\*\*53"):
        FSQ([2**54], bins="symmetric", eps=0.0)
    with pytest.raises(ValueError, match="use a smaller eps"):
        FSQ([2**52], eps=10.0)


def test_fused_blocks_cover_every_row(monkeypatch):
    monkeypatch.setattr(torch_fused, "BLOCK_ELEMENTS", 64)  # many blocks and a ragged last one
    layout = BinLayout([7, 6, 5], "round", get_activation("sigmoid"), 0.0)
    z = _inputs(3, rows=1001)
    codes_ref, levels_ref = reference.quantize(z, layout)
    codes, _, level_indices = kernels.quantize(z, layout, None, "torch", need_level_indices=True)
    assert torch.equal(codes, codes_ref) and torch.equal(level_indices, levels_ref)


def test_module_backends_agree_on_images_and_bf16():
    z = (torch.randn(2, 4, 16, 16) * 2).to(torch.bfloat16)
    results = [iFSQ([17] * 4, index_groups=[2, 2], backend=b)(z) for b in ("torch", "reference")]
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_custom_activation_runs_on_the_reference_path():
    q = FSQ([9, 9], activation=lambda z: torch.tanh(0.5 * z))
    z = torch.randn(2000, 2)
    assert choose("auto", z, q.layout) is Implementation.REFERENCE
    codes, idx = q(z)
    assert torch.equal(codes, FSQ([9, 9], activation=get_activation(lambda z: torch.tanh(0.5 * z)), backend="reference")(z)[0])
    x = z.clone().requires_grad_(True)
    q(x)[0].sum().backward()
    expected = 0.5 * (1 - torch.tanh(0.5 * z) ** 2) * (8 * 1.001 / 2 / 4)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_custom_activation_with_even_levels_inverts_by_bisection():
    q = FSQ([8, 6], activation=lambda z: torch.tanh(0.5 * z))
    torch.testing.assert_close(torch.tanh(0.5 * q.layout.shift.double()),
                               0.5 / q.layout.scale.double(), rtol=1e-6, atol=1e-7)
    _, idx = q(torch.randn(1000, 2) * 10)
    assert int(idx.max()) < 48


@pytest.mark.parametrize("cls,kwargs", [(FSQ, {}), (iFSQ, {"index_groups": [2, 2]}), (iFSQ, {"bins": "equal", "activation": "erf"})])
def test_torch_compile_fullgraph(cls, kwargs):
    q = cls([8, 5, 5, 5], **kwargs)
    z = torch.randn(2, 4, 8, 8)
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    out, idx = compiled(z)
    out_eager, idx_eager = q(z)
    assert torch.equal(out, out_eager) and torch.equal(idx, idx_eager)


def test_fast_tanh_is_within_the_bound_the_margin_assumes():
    x = torch.cat([torch.linspace(-12, 12, 4_000_001), torch.randn(1_000_000) * 3, torch.randn(200_000) * 1e-3])
    fast = torch.add(torch.tensor(-1.0), torch.sigmoid(2 * x), alpha=2)
    assert float((fast - torch.tanh(x)).abs().max()) < 1e-6  # TANH_MARGIN (1e-5) assumes this


def _near_tanh_boundaries(layout: BinLayout) -> torch.Tensor:
    """``(N, d)`` float32 inputs within 12 ulp of every rounding boundary of every dimension,
    some rows with NaN in the other dimensions."""
    c = layout.constants(torch.device("cpu"), torch.float64)
    blocks = []
    for i, L in enumerate(layout.levels):
        scale, bias, shift = float(c["scale"][i]), float(c["bias"][i]), float(c["shift"][i])
        if layout.kind == "round":  # u = t * scale + bias, boundaries at half-integers
            u = torch.arange(-L, L + 1, dtype=torch.float64) + 0.5
            t = (u - bias) / scale
        else:  # u = (t + 1) * scale (+ 0.5), boundaries at integers
            u = torch.arange(0, L + 1, dtype=torch.float64)
            t = (u - (0.5 if layout.kind == "symmetric" else 0.0)) / scale - 1
        x = (torch.atanh(t[t.abs() < 1]) - shift).float()
        near = [x]
        for direction in (float("inf"), -float("inf")):
            y = x
            for _ in range(12):
                y = torch.nextafter(y, torch.full_like(y, direction))
                near.append(y)
        column = torch.cat(near)
        z = torch.randn(len(column), len(layout.levels))
        z[::5] = float("nan")  # NaN shares the fast path's search chunks with values near a boundary
        z[:, i] = column
        blocks.append(z)
    return torch.cat(blocks)


@pytest.mark.parametrize("bins", ["round", "symmetric", "equal"])
@pytest.mark.parametrize("levels", [[3, 5, 9, 17], [4, 6, 8, 16], [33, 1000]])
def test_fast_tanh_is_exact_at_rounding_boundaries(bins, levels):
    layout = BinLayout(levels, bins, get_activation("tanh"), 1e-3)
    plan = IndexPlan(levels)
    z = _near_tanh_boundaries(layout)
    codes_ref, levels_ref = reference.quantize(z, layout)
    codes, indices, level_indices = kernels.quantize(z, layout, plan, "torch", need_level_indices=True)
    assert torch.equal(codes, codes_ref) and torch.equal(level_indices, levels_ref)
    assert torch.equal(indices, plan.pack(levels_ref))


def test_fast_tanh_needs_its_correction(monkeypatch):
    """Without the margin the fast tanh rounds some boundary inputs differently: the test above can fail."""
    monkeypatch.setattr(torch_fused, "TANH_MARGIN", 0.0)
    layout = BinLayout([17, 16, 9, 8], "round", get_activation("tanh"), 1e-3)
    z = _near_tanh_boundaries(layout)
    assert not torch.equal(kernels.quantize(z, layout, None, "torch", need_level_indices=True)[2], reference.quantize(z, layout)[1])


def test_constant_blocks_are_cached_and_bounded():
    z = _inputs(3, rows=500)
    for L in range(3, 3 + 2 * torch_fused.CONSTANT_CACHE_SIZE):
        layout = BinLayout([L, 5, 4], "round", get_activation("sigmoid"), 0.0)
        codes_ref, levels_ref = reference.quantize(z, layout)
        for _ in range(2):  # the second call reads the cached blocks
            codes, _, level_indices = kernels.quantize(z, layout, None, "torch", need_level_indices=True)
            assert torch.equal(codes, codes_ref) and torch.equal(level_indices, levels_ref)
    assert len(torch_fused._CONSTANT_BLOCKS) <= torch_fused.CONSTANT_CACHE_SIZE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [dict(kind="round", eps=-1e-3, shift="tan"), dict(kind="round", eps=-0.3),
                                     dict(kind="grid", eps=0.0, grid_scale=0.7),
                                     dict(kind="grid", eps=0.0, grid_scale=1.0, grid_steps=[0.25, 0.5, 0.4, 1 / 3])])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_family_options_fused_equal_reference(options, activation, dtype):
    """The options published FSQ code needs (a shrinking eps, the tan shift, the grid layout with its
    scale and steps) give the reference's codes and indices on the fused path, clamped into range."""
    options = dict(options)
    layout = BinLayout([8, 5, 6, 3], options.pop("kind"), get_activation(activation), options.pop("eps"), **options)
    plan = IndexPlan(layout.levels)
    z = (_inputs(4, dtype) * 1.5).requires_grad_(True)
    codes_ref, levels_ref = reference.quantize(z, layout)
    codes, indices, level_indices = kernels.quantize(z, layout, plan, "torch", need_level_indices=True)
    assert torch.equal(codes, codes_ref) and torch.equal(level_indices, levels_ref)
    assert torch.equal(indices, plan.pack(levels_ref)) and int(indices.max()) < 8 * 5 * 6 * 3
    (g,) = torch.autograd.grad(codes.sum(), z)
    (g_ref,) = torch.autograd.grad(codes_ref.sum(), z)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_tan_shift_and_shrinking_eps_are_the_formulas():
    """``half_l = (L - 1) (1 + eps) / 2`` with eps < 0, and the shift of even L as tan(0.5 / half_l), in float32."""
    layout = BinLayout([8, 5], "round", get_activation("tanh"), -1e-3, shift="tan")
    half_l = torch.tensor([7.0, 4.0]) * (1 - 1e-3) / 2
    assert torch.equal(layout.scale, half_l)
    assert torch.equal(layout.shift, torch.stack([torch.tan(0.5 / half_l[0]), torch.tensor(0.0)]))
    grid = BinLayout([5, 4], "grid", get_activation("tanh"), 0.0, grid_scale=0.3)
    assert torch.equal(grid.scale, torch.tensor([4.0, 3.0]).reciprocal() * 0.6)  # reciprocal(L - 1) * 2s, in float32
