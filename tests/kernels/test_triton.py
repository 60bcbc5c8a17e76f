"""The Triton kernels against the reference, on the CPU under the Triton interpreter.

Every test here runs with ``TRITON_INTERPRET=1`` set by an autouse fixture (through
``monkeypatch``, so the variable never leaks into other test modules). That is enough even if
Triton was imported earlier in the process: :mod:`ifsq_quant.kernels.triton_kernels` reads the
variable at every call and wraps its kernels for the interpreter or for compilation
accordingly. The checks without the interpreter run in a subprocess.

Codes, level indices and indices must be bit-identical to :func:`reference.quantize` (``torch.equal``),
gradients equal within 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")
# The interpreter's numpy arithmetic warns where +-inf inputs overflow on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

from ifsq_quant import FSQ, iFSQ, kernels  # noqa: E402
from ifsq_quant.activations import ACTIVATION_NAMES, get_activation  # noqa: E402
from ifsq_quant.bins import LAYOUTS, BinLayout  # noqa: E402
from ifsq_quant.indexing import IndexPlan  # noqa: E402
from ifsq_quant.kernels import reference, triton_support  # noqa: E402

# every named bound and every layout: a new one is tested here without being listed
ACTIVATIONS = ACTIVATION_NAMES
KINDS = LAYOUTS
# (levels, index_groups): odd, even and mixed levels, with and without groups.
CODEBOOKS = [
    ([8, 5, 5, 5], None),
    ([17, 17, 17, 17], [2, 2]),
    ([7, 6, 4, 3], [1, 3]),
    ([16, 9], None),
]
# Row counts are kept at multiples of 32. Under the interpreter the kernels evaluate tanh, exp,
# erf and sigmoid with PyTorch's CPU functions, as the reference does, but PyTorch computes the
# last `numel % 32` elements of a tensor with scalar libm code that can differ by an ulp from its
# vectorised code; with whole multiples of 32 both sides use the vectorised code throughout.
ROWS = 256


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_layout(levels, kind, activation, eps=None):
    if eps is None:
        eps = 1e-3 if activation == "tanh" else 0.0
    return BinLayout(levels, kind, get_activation(activation), eps)


def special_rows(d: int, dtype: torch.dtype) -> torch.Tensor:
    """NaN, +-inf, huge, tiny and signed-zero inputs, (6, d)."""
    values = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e-30, -0.0], dtype=dtype)
    return values[:, None].expand(-1, d).clone()


def edge_inputs(layout: BinLayout, dtype: torch.dtype, ulps: int = 3) -> torch.Tensor:
    """Inputs within ``ulps`` ulp of every bin edge of every dimension, ``(M, d)``.

    Each edge is located by bisection on the reference (computing in ``dtype``) from an estimate
    through the activation's inverse, so the ``2 * ulps + 1`` inputs around it fall on both sides.
    """
    c = layout.constants("cpu", torch.float64)
    columns = []
    for i, levels in enumerate(layout.levels):
        one_dim = BinLayout([levels], layout.kind, layout.activation, layout.eps)
        scale, bias = c["scale"][i], c["bias"][i]
        if layout.kind == "round":  # round(y * scale + bias) changes at r + 0.5
            half = levels // 2 + 1
            y = (torch.arange(-half, half + 1, dtype=torch.float64) + 0.5 - bias) / scale
        elif layout.kind == "grid":  # round((y + s) / step) changes at k + 0.5; s is the bias row, step the scale row
            y = (torch.arange(-1, levels + 1, dtype=torch.float64) + 0.5) * scale - bias
        else:  # floor((y + 1) * scale + bias) changes at integers
            y = (torch.arange(0, levels + 1, dtype=torch.float64) - bias) / scale - 1
        y = y[(y > -0.999) & (y < 0.999)]
        x = layout.activation.inverse(y) - one_dim.shift.to(torch.float64)

        def level(v, one_dim=one_dim):
            v = v.to(dtype)[:, None]
            return one_dim.level_index(one_dim.bound(v))[:, 0]

        lo, hi = x - 1e-3 * (1 + x.abs()), x + 1e-3 * (1 + x.abs())
        visible = level(lo) < level(hi)  # edges past the ends (large eps) are clamped away
        assert bool(visible.any())
        lo, hi = lo[visible], hi[visible]
        for _ in range(64):
            mid = (lo + hi) / 2
            below = level(mid) == level(lo)
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        edge = hi.to(dtype)
        near, up, down = [edge], edge, edge
        for _ in range(ulps):
            up = torch.nextafter(up, up.new_tensor(float("inf")))
            down = torch.nextafter(down, down.new_tensor(-float("inf")))
            near += [up, down]
        columns.append(torch.cat(near))
    rows = max(len(col) for col in columns)
    rows = -(-rows // 32) * 32
    return torch.stack([col.repeat(-(-rows // len(col)))[:rows] for col in columns], dim=1)


def random_inputs(d: int, dtype: torch.dtype, seed: int, rows: int = ROWS) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d, generator=g, dtype=torch.float64).mul(2).to(dtype)


def whole_rows(z: torch.Tensor) -> torch.Tensor:
    """``z`` with its rows repeated up to a multiple of 32 (see ROWS)."""
    rows = -(-z.shape[0] // 32) * 32
    return z if rows == z.shape[0] else z.repeat(-(-rows // z.shape[0]), 1)[:rows]


def check_kernel(z: torch.Tensor, layout: BinLayout, plan: IndexPlan | None, seed: int = 0) -> None:
    """Triton vs reference on ``z (M, d)``: codes/levels/indices equal, gradients within 1e-5."""
    if z.is_contiguous():
        z = whole_rows(z)
    assert z.numel() % 32 == 0
    assert kernels.choose("triton", z, layout) is kernels.Implementation.TRITON_INTERPRETED
    z_ref = z.clone().requires_grad_(True)
    z_tri = z.clone().requires_grad_(True)
    codes_ref, levels_ref = reference.quantize(z_ref, layout)
    out = kernels.quantize(z_tri, layout, plan, backend="triton", need_level_indices=True)
    assert out.codes.dtype == z.dtype and out.codes.shape == z.shape
    assert torch.equal(out.codes, codes_ref)
    assert torch.equal(out.level_indices, levels_ref)
    if plan is None:
        assert out.indices is None
    else:
        indices_ref = plan.pack(levels_ref)
        assert out.indices.dtype == torch.int64
        assert torch.equal(out.indices, indices_ref)
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(z.dtype)
    codes_ref.backward(g)
    out.codes.backward(g)
    torch.testing.assert_close(z_tri.grad, z_ref.grad, atol=1e-5, rtol=1e-5, equal_nan=True)


# --- the kernel, every activation x layout ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kernel_matches_reference(activation, kind):
    codebooks = CODEBOOKS + ([([2, 3, 2], [2, 1])] if kind != "round" else [])
    for seed, (levels, groups) in enumerate(codebooks):
        layout = make_layout(levels, kind, activation)
        plan = IndexPlan(levels, groups)
        d = len(levels)
        z = torch.cat([random_inputs(d, torch.float32, seed), special_rows(d, torch.float32),
                       edge_inputs(layout, torch.float32)])
        check_kernel(z, layout, plan, seed)
    # Without a plan (return_indices=False) and without level indices.
    layout = make_layout([8, 5, 5, 5], kind, activation)
    out = kernels.quantize(random_inputs(4, torch.float32, 9), layout, None, backend="triton")
    assert out.indices is None and out.level_indices is None


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kernel_float64(activation):
    for kind in KINDS:
        layout = make_layout([8, 5, 5, 5], kind, activation)
        plan = IndexPlan(layout.levels, [3, 1])
        z = torch.cat([random_inputs(4, torch.float64, 1), special_rows(4, torch.float64),
                       edge_inputs(layout, torch.float64)])
        check_kernel(z, layout, plan)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_kernel_eps_and_wide_range(activation):
    """Large eps (levels past the ends get clamped) and inputs far out in the tails."""
    layout = make_layout([9, 6, 5], "round", activation, eps=0.3)
    z = random_inputs(3, torch.float32, 3).mul(5)
    check_kernel(torch.cat([z, edge_inputs(layout, torch.float32)]), layout, IndexPlan(layout.levels))


def test_kernel_large_codebooks_exact_int64():
    """Indices beyond 2**53 (int64 arithmetic in the kernel), d = 64, many and uneven groups."""
    cases = [
        ([5] * 27, None, "round"),  # 5**27 ~ 7.5e18: a single group near the int64 limit
        ([2] * 64, [32, 32], "symmetric"),  # 2**64 codes in all, 2**32 per group
        ([3] * 40, [8, 8, 8, 8, 8], "equal"),
        ([7, 6, 5, 4, 3] * 4, [1, 2, 3, 4, 5, 5], "round"),
    ]
    for seed, (levels, groups, kind) in enumerate(cases):
        layout = make_layout(levels, kind, "sigmoid")
        plan = IndexPlan(levels, groups)
        z = random_inputs(len(levels), torch.float32, seed, rows=64)
        z[0] = 10.0  # every level at its top: the largest index of every group
        check_kernel(z, layout, plan, seed)
        out = kernels.quantize(z, layout, plan, backend="triton")
        assert out.indices[0].tolist() == [size - 1 for size in plan.group_sizes]


def test_kernel_empty_and_noncontiguous():
    layout = make_layout([8, 5, 5, 5], "round", "sigmoid")
    plan = IndexPlan(layout.levels, [2, 2])
    out = kernels.quantize(torch.empty(0, 4), layout, plan, backend="triton", need_level_indices=True)
    assert out.codes.shape == (0, 4) and out.indices.shape == (0, 2) and out.level_indices.shape == (0, 4)
    z = torch.empty(0, 4, requires_grad=True)
    kernels.quantize(z, layout, plan, backend="triton").codes.sum().backward()
    assert z.grad.shape == (0, 4)
    wide = random_inputs(8, torch.float32, 4)
    check_kernel(wide[:, ::2], layout, plan)  # strided view
    check_kernel(random_inputs(ROWS, torch.float32, 5, rows=4).t(), layout, plan)  # transposed


# --- through the modules ---------------------------------------------------------------------


def module_pair(cls, **kwargs):
    torch.manual_seed(0)
    ref = cls(backend="reference", **kwargs)
    tri = cls(backend="triton", **kwargs)
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def check_modules(ref, tri, x: torch.Tensor, atol: float = 1e-5) -> None:
    x_ref = x.clone().requires_grad_(True)
    x_tri = x.clone().requires_grad_(True)
    out_ref, idx_ref = ref(x_ref)
    out_tri, idx_tri = tri(x_tri)
    assert out_tri.dtype == x.dtype and out_tri.shape == x.shape
    assert torch.equal(out_tri, out_ref)
    assert (idx_ref is None and idx_tri is None) or torch.equal(idx_tri, idx_ref)
    w = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    (out_ref.float() * w.float()).sum().backward()
    (out_tri.float() * w.float()).sum().backward()
    torch.testing.assert_close(x_tri.grad, x_ref.grad, atol=atol, rtol=atol, equal_nan=True)
    for (name, p_ref), (_, p_tri) in zip(ref.named_parameters(), tri.named_parameters()):
        torch.testing.assert_close(p_tri.grad, p_ref.grad, atol=atol, rtol=atol, equal_nan=True, msg=name)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (FSQ, dict(levels=[8, 5, 5, 5])),
        (iFSQ, dict(levels=[17, 17, 17, 17], index_groups=[2, 2])),
        (iFSQ, dict(levels=[7, 6, 4, 3], num_codebooks=2)),
        (FSQ, dict(levels=[16, 9], dim=12, activation="erf", bins="equal")),
        (FSQ, dict(levels=[8, 5, 5, 5], preserve_symmetry=True, bound_hard_clamp=True)),
    ],
)
def test_modules_image_layout(cls, kwargs):
    ref, tri = module_pair(cls, **kwargs)
    channels = ref.dim
    x = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(2)) * 2
    x[0, :, 0, 0] = float("nan")
    x[1, :, 1, 1] = float("inf")
    x[1, :, 2, 2] = -float("inf")
    check_modules(ref, tri, x)


def test_modules_sequence_layouts_and_float64():
    ref, tri = module_pair(iFSQ, levels=[8, 5, 5, 5])
    check_modules(ref, tri, torch.randn(3, 40, 4, generator=torch.Generator().manual_seed(3)) * 3)
    check_modules(ref, tri, torch.randn(3, 40, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    ref, tri = module_pair(FSQ, levels=[8, 6, 5], channel_first=True)
    check_modules(ref, tri, torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_modules_half_precision_inputs(dtype):
    ref, tri = module_pair(iFSQ, levels=[17, 17, 17, 17], index_groups=[2, 2])
    x = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6)) * 2).to(dtype)
    check_modules(ref, tri, x, atol=1e-2)


def test_modules_empty_batch_and_usage():
    ref, tri = module_pair(iFSQ, levels=[8, 5, 5, 5], track_usage=True)
    out, idx = tri(torch.empty(0, 4, 4, 4))
    assert out.shape == (0, 4, 4, 4) and idx.shape == (0, 4, 4)
    ref.train()
    tri.train()
    x = torch.randn(4, 64, 4, generator=torch.Generator().manual_seed(7))
    ref(x)
    tri(x)
    assert ref.usage.summary() == tri.usage.summary()


# --- the triton_op (torch.library) that serves CUDA tensors -------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_triton_op_eager_matches_reference(activation):
    """``torch.ops.ifsq_quant.quantize_triton`` run eagerly (its body launches the interpreter's
    kernels): codes, indices and level indices bit-identical, gradient through the backward
    op within 1e-5, and a second derivative equal to the reference's."""
    from ifsq_quant.kernels import triton_ops

    layout, plan = make_layout([17, 8, 5, 5, 3], "round", activation), IndexPlan([17, 8, 5, 5, 3], [2, 3])
    z = whole_rows(random_inputs(5, torch.float32, seed=3)).requires_grad_(True)
    codes, indices, levels = triton_ops.quantize(z, layout, plan, need_levels=True)
    z_ref = z.detach().clone().requires_grad_(True)
    codes_ref, levels_ref = reference.quantize(z_ref, layout)
    assert torch.equal(codes, codes_ref) and torch.equal(levels, levels_ref) and torch.equal(indices, plan.pack(levels_ref))
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(codes, z, g, retain_graph=True)
    (grad_ref,) = torch.autograd.grad(codes_ref, z_ref, g, retain_graph=True)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-5)
    if activation != "clamp":  # clamp's second derivative is zero everywhere
        (gz,) = torch.autograd.grad(codes, z, g, create_graph=True)
        (gz_ref,) = torch.autograd.grad(codes_ref, z_ref, g, create_graph=True)
        (second,) = torch.autograd.grad(gz.sum(), z)
        (second_ref,) = torch.autograd.grad(gz_ref.sum(), z_ref)
        torch.testing.assert_close(second, second_ref, atol=1e-4, rtol=1e-4)
        assert second.abs().max() > 0


def test_triton_op_traces_to_kernel_launches(monkeypatch):
    """The registered ops traced as torch.compile traces them (fake CUDA tensors, a symbolic batch,
    functionalization): each becomes one functional launch of the compiled kernel, the op's
    outputs are the kernel's output buffers (codes, indices; the gradient), the batch stays
    unbounded (no guard on it), no cache keeps a fake tensor, and torch finds the kernel in the
    op's source (so the compile caches key on the kernel's source)."""
    from torch._dynamo.source import ConstantSource
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._library.triton import get_triton_kernels_for_op
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    from ifsq_quant.kernels import triton_kernels, triton_ops  # noqa: F401  (registers the ops)

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the kernels as triton.jit functions, as on a GPU
    shape_env = ShapeEnv()
    m = shape_env.create_symintnode(shape_env.create_symbol(1000, ConstantSource("m"), dynamic_dim=DimDynamic.DYNAMIC), hint=1000)
    args = ([17, 17, 5, 5], "round", "sigmoid", 1.6, 0.0, "inverse", 1.0, [])
    ops = torch.ops.ifsq_quant

    def trace(fn, *tensors):
        return make_fx(dispatch_functionalize(fn), tracing_mode="fake")(*tensors)

    with FakeTensorMode(shape_env=shape_env):
        z, grad = torch.empty(m, 4, device="cuda"), torch.empty(m, 4, device="cuda")
        forward = trace(lambda z: ops.quantize_triton(z, *args, [2, 2], True, False), z)
        backward = trace(lambda g, z: ops.quantize_triton_backward(g, z, *args), grad, z)
    assert not shape_env.guards  # nothing bounds the batch
    for graph, op, kernel, outputs, expected in (
            (forward, "quantize_triton", triton_kernels.FORWARD_KERNEL, ["codes_ptr", "index_ptr"],
             dict(D=4, G=2, ACT=1, KIND=0, NEED_INDEX=True, NEED_LEVELS=False, WIDE=True)),
            (backward, "quantize_triton_backward", triton_kernels.BACKWARD_KERNEL, ["out_ptr"], dict(D=4, ACT=1, WIDE=True))):
        launches = [n for n in graph.graph.nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
        assert len(launches) == 1
        # The launched kernel is the one triton_op found in the op's source: the compile caches key on its source.
        launched = kernel_side_table.get_kernel(launches[0].kwargs["kernel_idx"])
        assert getattr(launched, "fn", launched) is kernel  # torch wraps it in an Autotuner for the launch options
        assert get_triton_kernels_for_op(f"ifsq_quant::{op}") == [kernel]
        kwargs = launches[0].kwargs["kwargs"]
        assert {k: kwargs[k] for k in expected} == expected and not kwargs["INTERPRET"] and kwargs["enable_fp_fusion"] is False
        (grid,) = launches[0].kwargs["grid"]
        assert isinstance(grid[0], torch.fx.Node)  # ceil(m / block): follows the symbolic batch
        returned = graph.graph.output_node().args[0]
        returned = returned if isinstance(returned, (tuple, list)) else [returned]
        assert [(r.args[0], r.args[1]) for r in returned[:len(outputs)]] == [(launches[0], key) for key in outputs]
    cached = [t for per in (*triton_kernels._constant_tables.values(), *triton_kernels._pack_tables.values()) for t in per.values()]
    assert not any(isinstance(t, FakeTensor) for t in cached)


# --- the compiled CUDA path, without a GPU -----------------------------------------------------


def compile_for_gpu(kernel_fn, pointers: dict, constants: dict, fp_fusion: bool = False, arch: int = 90) -> str:
    """PTX of a kernel compiled ahead of time by Triton's own compiler for an A100 (``arch=80``)
    or an H100/H200 (``arch=90``); needs Triton's bundled ptxas, no GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = JITFunction(kernel_fn)
    signature = {name: pointers.get(name, "constexpr") for name in fn.arg_names}
    source = ASTSource(fn, signature, constants)
    options = {"num_warps": 4, "enable_fp_fusion": fp_fusion}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    assert compiled.asm.get("cubin"), "ptxas produced no binary"  # the whole toolchain ran, not only the PTX step
    return compiled.asm["ptx"]


def _kernel_scale(act: int) -> float:
    """The ``ACT_SCALE`` the package passes with kernel id ``act`` (the named bound's)."""
    from ifsq_quant.activations import KERNEL_NAMES

    return get_activation(KERNEL_NAMES[act]).kernel_scale


def forward_ptx(act: int, kind: int, groups: int, dtype: str, fp_fusion: bool = False, arch: int = 90) -> str:
    import triton

    from ifsq_quant.kernels import triton_kernels as tk

    pointers = dict(z_ptr=f"*{dtype}", const_ptr=f"*{dtype}", codes_ptr=f"*{dtype}", levels_ptr=f"*{dtype}",
                    pack_ptr="*i64", index_ptr="*i64", M="i32")
    constants = dict(D=4, G=groups, ACT=act, ACT_SCALE=_kernel_scale(act), KIND=kind, HAS_SHIFT=True, NEED_LEVELS=True, NEED_INDEX=True,
                     FP64=dtype == "fp64", WIDE=act == 1, BLOCK_M=256, BLOCK_D=4, BLOCK_G=triton.next_power_of_2(groups),
                     INTERPRET=False, HOST=None)
    return compile_for_gpu(tk._quantize_forward_kernel, pointers, constants, fp_fusion, arch)


def backward_ptx(act: int, dtype: str, arch: int = 90) -> str:
    from ifsq_quant.kernels import triton_kernels as tk

    pointers = dict(grad_ptr=f"*{dtype}", z_ptr=f"*{dtype}", const_ptr=f"*{dtype}", out_ptr=f"*{dtype}", N="i32")
    constants = dict(D=4, ACT=act, ACT_SCALE=_kernel_scale(act), HAS_SHIFT=True, FP64=dtype == "fp64", WIDE=False, BLOCK=1024,
                     INTERPRET=False, HOST=None)
    return compile_for_gpu(tk._quantize_backward_kernel, pointers, constants, arch=arch)


@pytest.mark.parametrize("arch", [80, 90])
def test_compiles_for_cuda_without_fma_or_approximate_division(monkeypatch, arch):
    """Every activation and dtype compiles ahead of time for sm_80 and sm_90; our own arithmetic keeps its two roundings
    (no fma.rn outside libdevice) and divides with div.rn, never div.full/div.approx."""
    import re

    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    from ifsq_quant.activations import ACTIVATION_NAMES, get_activation

    if "nvidia" not in triton.backends.backends:
        pytest.skip("Triton's NVIDIA backend is not installed")
    if not isinstance(tl.standard._sum_combine, JITFunction):
        pytest.skip("Triton was imported with TRITON_INTERPRET=1; it cannot compile in this process")
    monkeypatch.delenv("TRITON_INTERPRET")
    fused = re.compile(r"fma\.rn\.f(32|64)")
    for name, act in ((name, get_activation(name).kernel_id) for name in ACTIVATION_NAMES):
        for dtype in ("fp32", "fp64"):
            kind = act % 3  # round, symmetric, equal, round
            forward, backward = forward_ptx(act, kind, 1 + act % 3, dtype, arch=arch), backward_ptx(act, dtype, arch)
            for ptx in (forward, backward):
                assert "div.full" not in ptx and "div.approx" not in ptx, (name, dtype)
            if kind != 1:  # "round" and "equal" divide
                assert f"div.rn.f{dtype[2:]}" in forward, (name, dtype)
            if name == "clamp":  # no libdevice call: any fma would be ours
                assert not fused.search(forward) and not fused.search(backward), dtype
    # The check can see a contraction: with fusion allowed, (y + 1) * scale + bias becomes an fma.
    assert not fused.search(forward_ptx(3, 1, 1, "fp32", arch=arch))
    assert fused.search(forward_ptx(3, 1, 1, "fp32", fp_fusion=True, arch=arch))


# --- without the interpreter, without Triton ---------------------------------------------------


def test_without_interpreter_or_triton_subprocess():
    """On CPU tensors without TRITON_INTERPRET, backend="triton" is a clear RuntimeError; with
    Triton missing (its import blocked), "auto" and "torch" still work."""
    script = textwrap.dedent(
        """
        import sys
        import torch
        from ifsq_quant import iFSQ
        from ifsq_quant import kernels
        from ifsq_quant.kernels import triton_support
        from ifsq_quant.bins import BinLayout
        from ifsq_quant.activations import get_activation

        x = torch.randn(2, 10, 4)
        try:
            iFSQ(levels=[8, 5, 5, 5], backend="triton")(x)
        except RuntimeError as e:
            assert "TRITON_INTERPRET" in str(e) and "CUDA" in str(e), e
        else:
            raise SystemExit("no error without the interpreter")
        layout = BinLayout([8, 5, 5, 5], "round", get_activation("sigmoid"), 0.0)
        try:
            kernels.quantize(x.view(-1, 4), layout, None, backend="triton")
        except RuntimeError as e:
            assert "TRITON_INTERPRET" in str(e), e
        else:
            raise SystemExit("no error from the kernel module without the interpreter")

        sys.modules["triton"] = None  # the package is now impossible to import
        triton_support.available.cache_clear()
        assert not triton_support.available()
        ref = iFSQ(levels=[8, 5, 5, 5], backend="reference")(x)
        for backend in ("auto", "torch"):
            out = iFSQ(levels=[8, 5, 5, 5], backend=backend)(x)
            assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        try:
            iFSQ(levels=[8, 5, 5, 5], backend="triton")(x)
        except RuntimeError as e:
            assert "pip install" in str(e), e
        else:
            raise SystemExit("no error without triton")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_auto_without_triton(monkeypatch):
    monkeypatch.setattr(triton_support, "available", lambda: False)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(8))
    ref, _ = module_pair(FSQ, levels=[8, 5, 5, 5])
    auto = FSQ(levels=[8, 5, 5, 5], backend="auto")
    assert torch.equal(auto(x)[0], ref(x)[0]) and torch.equal(auto(x)[1], ref(x)[1])
    with pytest.raises(RuntimeError, match="triton"):
        FSQ(levels=[8, 5, 5, 5], backend="triton")(x)


def test_interpreter_variable_spellings(monkeypatch):
    for value, expected in [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)]:
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert triton_support.interpreting() is expected
