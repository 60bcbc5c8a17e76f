"""Triton kernels: the whole quantization in one pass over the input (CUDA; CPU under the interpreter).

:func:`forward` has the contract of :func:`.torch_fused.forward`: ``z (M, d)`` float32 or
float64 -> ``codes (M, d)`` in ``z``'s dtype, ``indices (M, G)`` int64 (``None`` without a plan)
and, on request, level indices ``(M, d)`` as exact-integer floats; :func:`backward` gives the
straight-through gradient. On CUDA both run inside the ``triton_op`` operators of
:mod:`.triton_ops`; under the interpreter, inside the opaque op of :mod:`.registered`.

Forward: one kernel reads each row of ``z`` once and writes the codes, the level indices (when
asked for) and the ``G`` packed indices. A program owns a ``[BLOCK_M, BLOCK_D]`` tile of whole
rows (``BLOCK_D = next_pow2(d)``): shift, bound, bins, NaN -> level 0, codes, then the mixed-radix
index ``sum_i k_i * B_i`` of each group, in int64 arithmetic (exact for every codebook that
fits in int64; a group sum is a masked row reduction of ``k_i * B_i``).

Backward: the derivative is recomputed from the saved input instead of being saved by the
forward. Both cost the backward one extra read per element, but recomputing spares the forward
a write per element (and the memory of a saved ``(M, d)`` tensor; ``z`` is kept alive instead).
The gradient repeats the operations of autograd through :func:`.reference.quantize` in the same
order (``grad * slope``, then the activation's backward formula; 0 at NaN inputs), so it
matches the reference to the last bit wherever the transcendental functions do. The activation
code (``_bound``, ``_bound_grad`` and the functions they call) is written once, as device
functions that both kernels call.

Exactness. The operations and their order are those of :class:`~ifsq_quant.bins.BinLayout` and
:mod:`~ifsq_quant.activations` (``y * scale`` then ``+ bias``, ``2 * sigmoid(a * x) - 1``,
``erf(x * sqrt(0.5))``, fmax/fmin clamping that sends NaN to level 0, ...), with every constant
in the compute dtype. Three things keep the compiled kernel from rounding differently:

* every launch passes ``enable_fp_fusion=False``, so neither LLVM nor ptxas (``--fmad=false``)
  contracts a multiply and an add into an FMA, which would round once where the reference
  rounds twice (checked on the PTX for sm_90: with fusion on, ``(y + 1) * scale + bias`` and
  ``k * step - 1`` become ``fma.rn.f32``; with it off, no FMA is left outside libdevice). The
  one FMA written out on purpose is ``1 - y*y`` in the tanh backward, because PyTorch's own
  ``tanh_backward`` kernels are compiled to one (measured on the CPU build);
* float32 divisions are ``tl.math.fdiv(..., ieee_rounding=True)`` (``div.rn.f32``; Triton's
  ``/`` may lower to the approximate ``div.full.f32``); float64 divisions are ``/``, which is
  always ``div.rn.f64`` (Triton 3.9's precise division does not compile for float64);
* ``tanh``, ``exp``, ``erf`` and ``rint`` are libdevice's ``__nv_tanhf``/``__nv_expf``/
  ``__nv_erff``/``__nv_rintf`` (and the float64 versions): the CUDA math library that PyTorch's
  own CUDA kernels call (``sigmoid`` is ``1 / (1 + exp(-t))`` as in PyTorch's CUDA kernel), not
  Triton's approximate ``tl.exp`` (``ex2.approx`` after a scaling).

Under ``TRITON_INTERPRET=1`` (the CPU tests) there is no libdevice; the transcendental calls
are then evaluated by PyTorch's CPU functions on the tile (``torch.tanh``, ``torch.sigmoid``,
``torch.erf``, ``torch.exp``, ``torch.round``) and everything else runs through the
interpreter's IEEE numpy arithmetic, so codes and indices are bit-identical to the CPU
reference (the tests check it, also for inputs a few ulp around every bin edge; PyTorch itself
computes the last ``numel % 32`` elements of a CPU tensor with scalar code that may differ by an
ulp from its vectorised code, so the tests use whole multiples of 32 elements). On a GPU,
bit-identity with the reference *on the same GPU* rests on libdevice computing what PyTorch's
CUDA kernels compute (same library, same operations); what can differ between devices or
library versions is the last ulp of ``tanh``/``exp``/``erf``, which moves a code only for an
input within about an ulp of a bin edge, and the straight-through gradient by a few ulp.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton
from torch.utils._python_dispatch import _disable_current_modes
from triton.language.extra import libdevice
from triton.runtime.jit import JITFunction

from ..activations import CLAMP_KERNEL, ERF_BACKWARD_FACTOR, ERF_KERNEL, SIGMOID_KERNEL, TANH_KERNEL, vector_sigmoid
from ..bins import EQUAL_KERNEL, GRID_KERNEL, ROUND_KERNEL, SYMMETRIC_KERNEL, BinLayout
from ..contexts import cached, tracing
from ..indexing import IndexPlan
from . import triton_support

__all__ = ["forward", "backward"]

# The kernel ids of the bounds (activations.py) and layouts (bins.py), as the kernels' constants.
_TANH, _SIGMOID, _ERF, _CLAMP = (tl.constexpr(i) for i in (TANH_KERNEL, SIGMOID_KERNEL, ERF_KERNEL, CLAMP_KERNEL))
_ROUND, _SYMMETRIC, _EQUAL, _GRID = (tl.constexpr(i) for i in (ROUND_KERNEL, SYMMETRIC_KERNEL, EQUAL_KERNEL, GRID_KERNEL))
_ERF_BACKWARD_FACTOR = tl.constexpr(ERF_BACKWARD_FACTOR)
# Rows of the (8, d) constant table passed to the kernels.
_CONSTANT_ROWS = ("scale", "bias", "shift", "slope", "top", "levels", "half_width", "code_step")
_SCALE, _BIAS, _SHIFT, _SLOPE, _TOP, _LEVELS, _HALF_WIDTH, _CODE_STEP = (tl.constexpr(i) for i in range(8))

TILE_ELEMENTS = 2048  # elements of z per forward program
PACK_ELEMENTS = 8192  # bound on the [BLOCK_M, BLOCK_D, BLOCK_G] int64 temporary of the group sums
BACKWARD_BLOCK = 2048
NUM_WARPS = 4


# --- the kernels -----------------------------------------------------------------------------
# HOST is None when compiled. Under the interpreter it is a _HostMath object that evaluates the
# transcendental functions with torch on the CPU; the INTERPRET branches are resolved at compile
# time (constexpr), so the compiled kernel only ever sees libdevice.
# The kernels call no @triton.jit function of Triton's standard library (tl.sum is one): those
# are wrapped for the interpreter or for compilation once, when Triton is first imported, while
# these kernels follow TRITON_INTERPRET at the time of the call. Sums are tl.reduce with
# tl.standard._sum_combine, which the interpreter recognises by identity and runs as np.sum. The
# device functions below are _DeviceFunction objects, which work in both modes.


class _DeviceFunction(JITFunction):
    """A Triton device function for both modes: a compiled kernel inlines it as any ``@triton.jit``
    function; a kernel running under the interpreter calls it, and it runs interpreted too."""

    def __call__(self, *args, **kwargs):  # only the interpreter calls a device function
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(self.fn)(*args, **kwargs)


def _tanh_math(x, INTERPRET: tl.constexpr, HOST: tl.constexpr):
    if INTERPRET:
        y = HOST.tanh(x)
    else:
        y = libdevice.tanh(x)
    return y


def _exp_math(x, INTERPRET: tl.constexpr, HOST: tl.constexpr):
    if INTERPRET:
        y = HOST.exp(x)
    else:
        y = libdevice.exp(x)
    return y


def _sigmoid_math(t, FP64: tl.constexpr, INTERPRET: tl.constexpr, HOST: tl.constexpr):
    """``1 / (1 + exp(-t))``, as PyTorch's CUDA kernel (the interpreter: torch's CPU sigmoid)."""
    if INTERPRET:
        s = HOST.sigmoid(t)
    else:
        e = 1.0 + libdevice.exp(-t)
        if FP64:
            s = 1.0 / e
        else:
            s = tl.math.fdiv(1.0, e, ieee_rounding=True)
    return s


_tanh = _DeviceFunction(_tanh_math)
_exp = _DeviceFunction(_exp_math)
_sigmoid = _DeviceFunction(_sigmoid_math)


def _bound_math(x, ACT: tl.constexpr, ACT_SCALE: tl.constexpr, FP64: tl.constexpr, INTERPRET: tl.constexpr, HOST: tl.constexpr):
    """``y = f(x)`` for the bound of kernel id ``ACT`` and scale ``ACT_SCALE`` (activations.py), with its operations."""
    if ACT == _TANH:
        y = _tanh(x, INTERPRET, HOST)
    elif ACT == _SIGMOID:
        y = 2.0 * _sigmoid(x * ACT_SCALE, FP64, INTERPRET, HOST) - 1.0
    elif ACT == _ERF:
        u = x * ACT_SCALE
        if INTERPRET:
            y = HOST.erf(u)
        else:
            y = libdevice.erf(u)
    else:
        y = tl.where(x < -1.0, -1.0, tl.where(x > 1.0, 1.0, x))  # clamp, NaN stays NaN
    return y


def _bound_grad_math(g, x, ACT: tl.constexpr, ACT_SCALE: tl.constexpr, FP64: tl.constexpr, INTERPRET: tl.constexpr,
                     HOST: tl.constexpr):
    """``g * f'(x)`` for the bound of kernel id ``ACT``, in the order of autograd's backward formulas."""
    if ACT == _TANH:  # tanh_backward: g * (1 - y*y), whose `1 - y*y` PyTorch's kernels compile to an FMA
        y = _tanh(x, INTERPRET, HOST)
        g = g * tl.math.fma(-y, y, 1.0)
    elif ACT == _SIGMOID:  # 2*s - 1, s = sigmoid(a x): ((g*2) * (1 - s)) * s, then * a
        s = _sigmoid(x * ACT_SCALE, FP64, INTERPRET, HOST)
        g = g * 2.0
        g = g * (1.0 - s)
        g = g * s
        g = g * ACT_SCALE
    elif ACT == _ERF:  # erf(u), u = x*a: (2/sqrt(pi) * exp(-(u*u))) * g (PyTorch's erf backward), then * a
        u = x * ACT_SCALE
        e = _exp(-(u * u), INTERPRET, HOST)
        g = (_ERF_BACKWARD_FACTOR * e) * g
        g = g * ACT_SCALE
    else:  # clamp_backward: where(-1 <= x <= 1, g, 0)
        g = tl.where((x >= -1.0) & (x <= 1.0), g, 0.0)
    return g


_bound = _DeviceFunction(_bound_math)
_bound_grad = _DeviceFunction(_bound_grad_math)


def _quantize_forward_kernel(
    z_ptr, const_ptr, pack_ptr, codes_ptr, levels_ptr, index_ptr, M,
    D: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, ACT_SCALE: tl.constexpr, KIND: tl.constexpr, HAS_SHIFT: tl.constexpr,
    NEED_LEVELS: tl.constexpr, NEED_INDEX: tl.constexpr, FP64: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
    INTERPRET: tl.constexpr, HOST: tl.constexpr,
):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None] * D + cols[None, :]
    x = tl.load(z_ptr + offsets, mask=mask, other=0.0)

    # Bound: y = f(x + shift) (activations.py).
    if HAS_SHIFT:
        x = x + tl.load(const_ptr + _SHIFT * D + cols, mask=col_ok, other=0.0)[None, :]
    y = _bound(x, ACT, ACT_SCALE, FP64, INTERPRET, HOST)

    # Level index k (BinLayout.level_index).
    scale = tl.load(const_ptr + _SCALE * D + cols, mask=col_ok, other=1.0)[None, :]
    bias = tl.load(const_ptr + _BIAS * D + cols, mask=col_ok, other=0.0)[None, :]
    top = tl.load(const_ptr + _TOP * D + cols, mask=col_ok, other=0.0)[None, :]
    if KIND == _ROUND:
        half_width = tl.load(const_ptr + _HALF_WIDTH * D + cols, mask=col_ok, other=1.0)[None, :]
        b = y * scale
        b = b + bias
        if INTERPRET:
            r = HOST.rint(b)
        else:
            r = libdevice.rint(b)  # round half to even, as torch.round
        k = r + half_width
    elif KIND == _GRID:  # (y + s) / step, s in the bias row, step in the scale row
        b = y + bias
        if FP64:
            b = b / scale
        else:
            b = tl.math.fdiv(b, scale, ieee_rounding=True)
        if INTERPRET:
            k = HOST.rint(b)
        else:
            k = libdevice.rint(b)
    else:
        b = y + 1.0
        b = b * scale
        b = b + bias
        k = tl.math.floor(b)
    k = tl.where(k >= 0.0, k, 0.0)  # fmax(k, 0): NaN -> 0
    k = tl.where(k <= top, k, top)  # fmin(k, L - 1)

    # Code (BinLayout.code).
    if KIND == _ROUND:
        if FP64:
            code = (k - half_width) / half_width
        else:
            code = tl.math.fdiv(k - half_width, half_width, ieee_rounding=True)
    elif KIND == _SYMMETRIC:
        step = tl.load(const_ptr + _CODE_STEP * D + cols, mask=col_ok, other=0.0)[None, :]
        code = k * step
        code = code - 1.0
    elif KIND == _GRID:
        step = tl.load(const_ptr + _CODE_STEP * D + cols, mask=col_ok, other=0.0)[None, :]
        code = k * step
        code = code - bias
    else:
        levels = tl.load(const_ptr + _LEVELS * D + cols, mask=col_ok, other=1.0)[None, :]
        code = 2.0 * k + 1.0
        if FP64:
            code = code / levels
        else:
            code = tl.math.fdiv(code, levels, ieee_rounding=True)
        code = code - 1.0
    tl.store(codes_ptr + offsets, code, mask=mask)
    if NEED_LEVELS:
        tl.store(levels_ptr + offsets, k, mask=mask)

    # Packed indices: sum_i k_i * B_i per group, in int64.
    if NEED_INDEX:
        basis = tl.load(pack_ptr + cols, mask=col_ok, other=0)
        terms = k.to(tl.int64) * basis[None, :]
        if G == 1:
            tl.store(index_ptr + rows, tl.reduce(terms, 1, tl.standard._sum_combine), mask=row_ok)
        else:
            group_of = tl.load(pack_ptr + D + cols, mask=col_ok, other=-1)
            groups = tl.arange(0, BLOCK_G)
            member = group_of[:, None] == groups[None, :]  # [BLOCK_D, BLOCK_G]
            per_group = tl.reduce(tl.where(member[None, :, :], terms[:, :, None], 0), 1, tl.standard._sum_combine)
            out = index_ptr + rows[:, None] * G + groups[None, :]
            tl.store(out, per_group, mask=row_ok[:, None] & (groups < G)[None, :])


def _quantize_backward_kernel(
    grad_ptr, z_ptr, const_ptr, out_ptr, N,
    D: tl.constexpr, ACT: tl.constexpr, ACT_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, FP64: tl.constexpr, WIDE: tl.constexpr,
    BLOCK: tl.constexpr, INTERPRET: tl.constexpr, HOST: tl.constexpr,
):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    col = offsets % D
    grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0)
    x = tl.load(z_ptr + offsets, mask=mask, other=0.0)
    if HAS_SHIFT:
        x = x + tl.load(const_ptr + _SHIFT * D + col, mask=mask, other=0.0)
    slope = tl.load(const_ptr + _SLOPE * D + col, mask=mask, other=0.0)
    # soft = f(x) * slope (x = 0 where it is NaN): mul backward, then the bound's backward
    g = _bound_grad(grad * slope, x, ACT, ACT_SCALE, FP64, INTERPRET, HOST)
    g = tl.where(x == x, g, 0.0)  # zero gradient at NaN inputs
    tl.store(out_ptr + offsets, g, mask=mask)


class _HostMath:
    """The transcendental functions of the kernels under the Triton interpreter, where libdevice
    does not exist: PyTorch's CPU implementations, applied to the tile's numpy array."""

    @staticmethod
    def _apply(x, fn):
        from triton.runtime.interpreter import TensorHandle

        data = torch.from_numpy(np.array(x.handle.data, copy=True))
        result = fn(data).numpy()
        return tl.core.tensor(TensorHandle(result, x.handle.dtype.scalar), x.type)

    def tanh(self, x):
        return self._apply(x, torch.tanh)

    def sigmoid(self, x):
        return self._apply(x, vector_sigmoid)

    def erf(self, x):
        return self._apply(x, torch.erf)

    def exp(self, x):
        return self._apply(x, torch.exp)

    def rint(self, x):
        return self._apply(x, torch.round)


_HOST = _HostMath()
# The compiled kernels, created once. ``triton_ops`` names them at its ``wrap_triton`` calls, where
# ``torch.library.triton_op``'s source scan finds them, so the compile caches key on their source.
FORWARD_KERNEL = JITFunction(_quantize_forward_kernel)
BACKWARD_KERNEL = JITFunction(_quantize_backward_kernel)
_interpreted_cache: list = []


def _default_kernel(which: int):
    """Kernel ``which`` (0 forward, 1 backward) for the mode ``TRITON_INTERPRET`` sets at the time
    of the call: wrapped for the interpreter, or the compiled one through ``wrap_triton``."""
    if not triton_support.interpreting():
        return wrap_triton((FORWARD_KERNEL, BACKWARD_KERNEL)[which])
    if not _interpreted_cache:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted_cache.extend(InterpretedFunction(k) for k in (_quantize_forward_kernel, _quantize_backward_kernel))
    return _interpreted_cache[which]


# --- per-layout and per-plan tables, cached on the device --------------------------------------

_constant_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_pack_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _constant_table(layout: BinLayout, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(8, d)`` table of the layout's per-dimension constants (rows ``_CONSTANT_ROWS``)."""
    def make() -> Tensor:  # computed on the host, then made a tensor afresh (a graph constant when traced)
        with _disable_current_modes():
            c = layout.constants(torch.device("cpu"), dtype)
            zeros = torch.zeros_like(c["scale"])
            rows = torch.stack([c.get(name, zeros) for name in _CONSTANT_ROWS]).tolist()
        return torch.tensor(rows, dtype=dtype, device=device)

    return cached(_constant_tables.setdefault(layout, {}), (torch.device(device), dtype), make)


def _pack_table(plan: IndexPlan, device: torch.device) -> Tensor:
    """``(2, d)`` int64: the basis ``B_i`` of each dimension and the number of its group."""
    def make() -> Tensor:
        group_of = [gi for gi, size in enumerate(plan.groups) for _ in range(size)]
        return torch.tensor([list(plan.basis), group_of], dtype=torch.int64, device=device)

    return cached(_pack_tables.setdefault(plan, {}), torch.device(device), make)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _wide(largest_offset) -> bool:
    """Whether element offsets up to ``largest_offset`` need int64 arithmetic; always for a
    symbolic size (a traced graph serves every batch size, and a comparison would bound it)."""
    return isinstance(largest_offset, torch.SymInt) or largest_offset >= 2**31


def _launch(kernel, grid, z: Tensor, *args, **kwargs) -> None:
    """Runs ``kernel`` (an interpreted kernel, or a compiled one through ``wrap_triton``: a direct
    launch in eager code, a ``triton_kernel_wrapper`` node when the enclosing ``triton_op`` is traced)."""
    launch = kernel[grid]
    if z.is_cuda and not tracing():  # the launch goes to the current device
        with torch.cuda.device(z.device):
            launch(*args, **kwargs)
    else:
        launch(*args, **kwargs)


def forward(z: Tensor, layout: BinLayout, plan: IndexPlan | None, need_levels: bool, kernel=None):
    """``z (M, d)`` contiguous float32/float64 -> ``codes (M, d)``, ``indices (M, G) | None``, level
    indices ``(M, d) | None``. ``kernel``: the forward kernel to launch (default: for the current mode)."""
    m, d = z.shape
    codes = torch.empty_like(z)
    levels = torch.empty_like(z) if need_levels else None
    groups = plan.num_groups if plan is not None else 1
    indices = torch.empty(m, groups, dtype=torch.int64, device=z.device) if plan is not None else None
    if m == 0:
        return codes, indices, levels
    interpret = triton_support.interpreting()
    block_d, block_g = _next_pow2(d), _next_pow2(groups)
    block_m = max(1, TILE_ELEMENTS // block_d)  # powers of two throughout
    if groups > 1:
        block_m = min(block_m, max(1, PACK_ELEMENTS // (block_d * block_g)))
    # Pointers the kernel never touches get placeholders of their own: an output passed twice would
    # make a traced (functionalized) launch return the wrong copy as the codes.
    placeholder = z.new_empty(1, dtype=torch.int64)
    grid = (triton.cdiv(m, block_m),)
    _launch(
        kernel or _default_kernel(0), grid, z,
        z, _constant_table(layout, z.device, z.dtype), _pack_table(plan, z.device) if plan is not None else placeholder, codes,
        levels if levels is not None else z.new_empty(1), indices if indices is not None else placeholder.clone(), m,
        D=d, G=groups, ACT=layout.activation.kernel_id, ACT_SCALE=layout.activation.kernel_scale, KIND=layout.kernel_id,
        HAS_SHIFT=layout.has_shift, NEED_LEVELS=need_levels, NEED_INDEX=plan is not None,
        FP64=z.dtype == torch.float64,
        WIDE=_wide((m + block_m) * max(d, groups)),
        BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_G=block_g,
        INTERPRET=interpret, HOST=_HOST if interpret else None,
        num_warps=NUM_WARPS, enable_fp_fusion=False,
    )
    return codes, indices, levels


def backward(grad: Tensor, z: Tensor, layout: BinLayout, kernel=None) -> Tensor:
    """The straight-through gradient ``grad * slope * f'(z + shift)``, ``(M, d)``, recomputed from
    ``z``. ``kernel``: the backward kernel to launch (default: for the current mode)."""
    grad = grad.to(z.dtype).contiguous()
    out = torch.empty_like(z)
    n = z.numel()
    if n == 0:
        return out
    interpret = triton_support.interpreting()
    block = BACKWARD_BLOCK
    _launch(
        kernel or _default_kernel(1), (triton.cdiv(n, block),), z,
        grad, z, _constant_table(layout, z.device, z.dtype), out, n,
        D=z.shape[1], ACT=layout.activation.kernel_id, ACT_SCALE=layout.activation.kernel_scale, HAS_SHIFT=layout.has_shift,
        FP64=z.dtype == torch.float64,
        WIDE=_wide(n + block), BLOCK=block,
        INTERPRET=interpret, HOST=_HOST if interpret else None,
        num_warps=NUM_WARPS, enable_fp_fusion=False,
    )
    return out
