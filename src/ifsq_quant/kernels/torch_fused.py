"""Fused PyTorch path: the default on CPU (and on CUDA without Triton).

Same results as :mod:`.reference`, computed with in-place operations on blocks of rows that
stay in cache, so that the input is read once and codes, indices and (when a gradient is
needed) the straight-through derivative are each written once. The backward is one multiply.
The block loop and its NaN test are not traceable: the kernel runs inside the registered op
(:mod:`.registered`), which graphs see as one node.

``torch.tanh`` is about seven times slower than ``torch.sigmoid`` on the CPU, so float32 tanh is
computed as ``2 * sigmoid(2x) - 1`` (within 1.5 ulp of 1 of ``torch.tanh``; the tests check a
bound of 1e-6) and only the values that land within :data:`TANH_MARGIN` of a rounding boundary
are recomputed with ``torch.tanh``: the codes and indices stay those of the reference exactly.
Where it is exact (or corrected anyway), ``2s - 1`` and the scale before rounding are folded
into one pass (:meth:`_Block.prerounded`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import TypeAlias, cast

import torch
from torch import Tensor

from ..activations import CLAMP_KERNEL, ERF_DERIVATIVE_SCALE, ERF_KERNEL, SIGMOID_KERNEL, TANH_KERNEL, Activation, vector_loop_size
from ..bins import EQUAL_KERNEL, GRID_KERNEL, ROUND_KERNEL, SYMMETRIC_KERNEL, BinLayout
from ..indexing import IndexPlan
from .thread_choice import ThreadChoice

__all__ = ["forward"]

BLOCK_ELEMENTS = 1 << 19  # elements per block: 2 MiB of float32, half of it per thread in L2 (2 MiB per core here)
# |2 sigmoid(2x) - 1 - torch.tanh(x)| < 1.8e-7 (measured); values before rounding move by at most
# scale times that plus two roundings, so a margin of 1e-5 * scale leaves a factor of 25.
TANH_MARGIN = 1e-5
MAX_TANH_MARGIN = 0.25  # in units of a bin
CHUNK = 128  # elements per chunk in the search for values near a boundary (1 in 6000 is, for L = 17)
THREADS = ThreadChoice(min_elements=BLOCK_ELEMENTS)  # below one block, a call is too short to time reliably


Const: TypeAlias = float | Tensor  # a per-dimension constant: a Python float when uniform, else a block


def _bound_into(activation: Activation, x: Tensor, y: Tensor, deriv: Tensor | None, slope: Const) -> None:
    """``y = f(x)`` for a bound with a kernel id (``x`` may be ``y``); ``deriv = slope * f'(x)`` when given. Same operations
    as :mod:`..activations`, so that the values match the reference bit for bit."""
    bound, a = activation.kernel_id, activation.kernel_scale
    if bound == ERF_KERNEL and deriv is not None:
        torch.mul(x, x, out=deriv)
        deriv.mul_(-0.5).exp_().mul_(ERF_DERIVATIVE_SCALE).mul_(slope)
    if bound == CLAMP_KERNEL and deriv is not None:
        torch.abs(x, out=deriv)
        deriv.le_(1).mul_(slope)
    if bound == TANH_KERNEL:
        torch.tanh(x, out=y)
    elif bound == SIGMOID_KERNEL:
        torch.mul(x, a, out=y)
        sigmoid_(y)
        torch.add(y.new_tensor(-1.0), y, alpha=2, out=y)  # 2s - 1 in one pass (2s is exact: same rounding)
    elif bound == ERF_KERNEL:
        torch.mul(x, a, out=y)
        y.erf_()
    else:
        torch.clamp(x, -1.0, 1.0, out=y)
    if bound in (TANH_KERNEL, SIGMOID_KERNEL) and deriv is not None:
        # tanh' = 1 - y^2 and (2 sigmoid(a z) - 1)' = a/2 (1 - y^2), from the output as autograd does.
        c = 1.0 if bound == TANH_KERNEL else a / 2
        if isinstance(slope, float):
            c *= slope
        torch.addcmul(y.new_tensor(c), y, y, value=-c, out=deriv)  # c - c y^2 in one pass
        if not isinstance(slope, float):
            deriv.mul_(slope)


def sigmoid_(y: Tensor) -> None:
    """In-place sigmoid of the block ``y``, a view at the start of a flat buffer whose length is
    at least :func:`vector_loop_size` of it: computed over that length, every element takes the
    vector code and its value does not depend on its position (:func:`..activations.vector_sigmoid`)."""
    flat = y.view(-1)
    buffer = torch.as_strided(flat, (vector_loop_size(flat.numel()),), (1,))
    buffer.sigmoid_()


_SCRATCH = threading.local()


def scratch(name: str, numel: int, like: Tensor) -> Tensor:
    """A zero-initialized flat buffer of at least ``numel`` elements of ``like``'s dtype and device, kept
    per calling thread and reused by the next calls: no allocation (and no page faults) per call. Its
    contents after a call are finite values of that call (the next call overwrites what it reads)."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (name, like.dtype, like.device)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor, usable inside and outside inference mode
            buffer = torch.zeros(numel, dtype=like.dtype, device=like.device)
        buffers[key] = buffer
    return buffer[:numel]


_CONSTANT_BLOCKS: OrderedDict[tuple, Tensor] = OrderedDict()
CONSTANT_CACHE_SIZE = 16  # blocks of at most BLOCK_ELEMENTS elements each


def _constant_block(vector: Tensor, rows: int) -> Tensor:
    """``vector (d,)`` repeated over ``rows`` rows, contiguous. Kept in a small LRU cache: writing
    it costs as much as a pass over the data, and it depends only on the values and the size."""
    key = (tuple(vector.tolist()), vector.dtype, vector.device, rows)
    block = _CONSTANT_BLOCKS.pop(key, None)
    if block is None:
        block = vector.expand(rows, -1).contiguous()
    _CONSTANT_BLOCKS[key] = block
    while len(_CONSTANT_BLOCKS) > CONSTANT_CACHE_SIZE:
        _CONSTANT_BLOCKS.popitem(last=False)
    return block


class _Block:
    """The constants of one call, shaped for fast in-place arithmetic on ``(rows, d)`` blocks.

    A constant that is the same for every dimension is a Python float (a scalar operand is
    the fastest); otherwise it is materialized, when first used, as a contiguous ``(rows, d)``
    block, because broadcasting a ``(d,)`` vector over a short last axis is several times slower.
    """

    def __init__(self, layout: BinLayout, plan: IndexPlan | None, z: Tensor, rows: int):
        c = layout.constants(z.device, z.dtype)
        self.layout, self.kind, self.plan = layout, layout.kernel_id, plan
        zero = torch.zeros_like(c["top"])
        lowest = -c["half_width"] if layout.kernel_id == ROUND_KERNEL else zero
        highest = c["top"] - c["half_width"] if layout.kernel_id == ROUND_KERNEL else c["top"]
        self.vectors = dict(c, lowest=lowest, highest=highest)
        self.const: dict[str, Const] = {}
        self.const_rows = 1 << (rows - 1).bit_length()  # few distinct sizes for the cache
        self.has_bias = bool(c["bias"].ne(0).any())
        # On the CPU a NaN test is cheap and usually spares the clamp; elsewhere it would sync.
        self.always_clamp = layout.needs_clamp or z.device.type != "cpu"
        # Same reason: the fast tanh needs a data-dependent test, so it is a CPU float32 path.
        # Its values before rounding go to a flat buffer padded to whole chunks for that test.
        self.margin = TANH_MARGIN * float(c["scale"].abs().max())
        # (a margin of half a bin or more would flag everything: large scales take torch.tanh)
        self.fast_tanh = (layout.activation.kernel_id == TANH_KERNEL and z.device.type == "cpu" and z.dtype == torch.float32
                          and self.margin < MAX_TANH_MARGIN and layout.kernel_id != GRID_KERNEL)
        if self.fast_tanh:
            self.rounded = scratch("rounded", rows * c["scale"].shape[0], z).view(rows, c["scale"].shape[0])
        self.affine = self._sigmoid_affine(layout.activation.kernel_id)
        self.d = c["scale"].shape[0]
        # (zeroed once: the padding that sigmoid_ computes over holds finite values)
        self.work = scratch("work", max(-(-rows * self.d // CHUNK) * CHUNK, vector_loop_size(rows * self.d)), z)
        if plan is not None and layout.kernel_id == ROUND_KERNEL:
            # "round" carries r = k - L//2: each group's index is Horner(r) + sum_i (L_i // 2) B_i
            half_width = c["half_width"].to(torch.int64)
            self.pack_offsets: list[int] | None = [int((half_width[sl] * torch.tensor(plan.basis[sl])).sum()) for sl in plan.group_slices]
        else:
            self.pack_offsets = None

    def buffer(self, n: int) -> Tensor:
        """``(n, d)`` scratch for the bounded values of ``n`` rows: a view of :attr:`work`."""
        return self.work[: n * self.d].view(n, self.d)

    def _sigmoid_affine(self, bound: int | None) -> tuple[float, Const, Const] | None:
        """``(alpha, a, b)`` such that the value before rounding is ``u = a * sigmoid(alpha x) + b``,
        computed in one pass instead of two (``2s - 1``, then the scale), or None.

        Exact for iFSQ's sigmoid when the scale is one power of two and there is no bias (then
        ``scale * (2s - 1)`` is rounded once either way): L = 3, 5, 9, 17, 33... in "round".
        Always used by the fast tanh (``tanh x = 2 sigmoid(2x) - 1``), which is corrected anyway.
        """
        v = self.vectors
        if self.fast_tanh:
            if self.kind == ROUND_KERNEL:
                return 2.0, self.constant(2 * v["scale"]), self.constant(v["bias"] - v["scale"])
            # floor layouts: u + 1/2, so that the level boundaries sit at half-integers as in "round"
            return 2.0, self.constant(2 * v["scale"]), 1.0 if self.kind == SYMMETRIC_KERNEL else 0.5
        scale = self.constant(v["scale"])
        exact = (bound == SIGMOID_KERNEL and self.kind == ROUND_KERNEL and not self.has_bias and isinstance(scale, float)
                 and isinstance(self.get("slope", 0), float) and scale > 0 and math.frexp(scale)[0] == 0.5)
        return (self.layout.activation.kernel_scale, 2 * scale, -scale) if exact else None

    def prerounded(self, x: Tensor, y: Tensor, deriv: Tensor | None) -> None:
        """``y =`` the values before rounding of inputs ``x`` (``x`` may be ``y``); ``deriv = slope * f'(x)`` when given."""
        n = y.shape[0]
        slope = self.get("slope", n)
        if self.affine is None:
            _bound_into(self.layout.activation, x, y, deriv, slope)
            self.scaled(y, n)
            return
        alpha, a, b = self.affine
        torch.mul(x, alpha, out=y)
        sigmoid_(y)
        if deriv is not None and self.fast_tanh:  # tanh' = 4 s (1 - s) with s = sigmoid(2x)
            torch.addcmul(y, y, y, value=-1, out=deriv)
            deriv.mul_(4.0).mul_(slope)
        if isinstance(a, float):
            torch.add(y.new_tensor(b), y, alpha=a, out=y)
        else:
            torch.addcmul(y.new_tensor(b) if isinstance(b, float) else b[:n], y, a[:n], out=y)
        if deriv is not None and not self.fast_tanh:
            # a/2 slope (1 - y^2) with y = u / scale: the same bits as from y (powers of two)
            # (this form is taken for a uniform slope and scale only: both are floats, see _sigmoid_affine)
            c = alpha / 2 * cast(float, slope)
            torch.addcmul(y.new_tensor(c), y, y, value=-c / cast(float, self.get("scale", n)) ** 2, out=deriv)

    def constant(self, vector: Tensor) -> Const:
        """A ``(d,)`` constant as a float when uniform, else as a cached ``(rows, d)`` block."""
        if bool((vector == vector[0]).all()):
            return vector[0].item()
        return _constant_block(vector, self.const_rows)

    def get(self, name: str, n: int, where: Tensor | None = None) -> Const:
        """The named constant for the first ``n`` rows of a block (or the flat positions ``where``)."""
        if name not in self.const:
            self.const[name] = self.constant(self.vectors[name])
        value = self.const[name]
        if isinstance(value, float):
            return value
        return value[:n] if where is None else value[:n].reshape(-1)[where]

    def scaled(self, y: Tensor, n: int, where: Tensor | None = None) -> None:
        """Bounded values -> values before rounding, in place (``where``: ``y`` holds only the
        block's elements at these flat positions)."""
        if self.kind == ROUND_KERNEL:
            y.mul_(self.get("scale", n, where))
            if self.has_bias:
                y.add_(self.get("bias", n, where))
        elif self.kind == GRID_KERNEL:
            y.add_(self.get("bias", n, where)).div_(self.get("scale", n, where))
        else:
            y.add_(1).mul_(self.get("scale", n, where))
            if self.kind == SYMMETRIC_KERNEL:
                y.add_(0.5)

    def rounded_(self, u: Tensor) -> Tensor:
        return u.round_() if self.kind in (ROUND_KERNEL, GRID_KERNEL) else u.floor_()

    def levels(self, y: Tensor, x: Tensor | None = None) -> Tensor:
        """Values before rounding -> level values (``r = k - L//2`` for "round", else ``k``), in ``y``
        or in another buffer, which is returned. With the fast tanh, ``x`` is the tanh's input."""
        n = y.shape[0]
        if self.fast_tanh:
            y = self._rounded_exactly(y, cast(Tensor, x))  # given with the fast tanh
        else:
            self.rounded_(y)
        # the values are bounded: only NaN makes a NaN sum (not tested where the clamp runs anyway)
        self.has_nan = None if self.always_clamp else bool(y.sum().isnan())
        if self.always_clamp or self.has_nan:
            self._fmax(y, self.get("lowest", n))  # also sends NaN to level 0, as the reference
        if self.always_clamp or self.kind == EQUAL_KERNEL:
            self._fmin(y, self.get("highest", n))
        return y

    def _rounded_exactly(self, v: Tensor, x: Tensor) -> Tensor:
        """Levels from values ``v`` computed with the fast tanh (``v = u`` for "round", ``u + 1/2``
        for the floor layouts). Those within the margin of a rounding boundary (a half-integer
        of ``v``) are recomputed from ``torch.tanh(x)``. Returns the buffer holding the result."""
        n, numel = v.shape[0], v.numel()
        r = torch.round(v, out=self.rounded[:n])
        v.sub_(r).abs_()  # distance to the nearest integer: near 1/2 means near a boundary
        padded = -(-numel // CHUNK) * CHUNK
        self.work[numel:padded].zero_()
        distance, threshold = self.work[:padded], 0.5 - self.margin
        # Chunk maxima first (one cheap reduction); "not <=" also flags chunks holding a NaN.
        chunks = distance.view(-1, CHUNK).amax(1).le(threshold).logical_not_().nonzero().squeeze(1)
        if self.kind != ROUND_KERNEL:
            r.sub_(1)  # round(u + 1/2) = floor(u) + 1 away from the boundaries
        if chunks.numel():
            candidates = (chunks.unsqueeze(1) * CHUNK + torch.arange(CHUNK, device=v.device)).view(-1)
            where = candidates[distance[candidates] > threshold]
            exact = torch.tanh(x.reshape(-1)[where])
            self.scaled(exact, n, where)
            r.view(-1)[where] = self.rounded_(exact)
        return r

    @staticmethod
    def _fmax(y: Tensor, bound: Const) -> None:
        torch.fmax(y, bound if isinstance(bound, Tensor) else torch.tensor(bound, dtype=y.dtype, device=y.device), out=y)

    @staticmethod
    def _fmin(y: Tensor, bound: Const) -> None:
        torch.fmin(y, bound if isinstance(bound, Tensor) else torch.tensor(bound, dtype=y.dtype, device=y.device), out=y)

    def codes(self, r: Tensor, out: Tensor) -> None:
        n = r.shape[0]
        if self.kind == ROUND_KERNEL:
            # r may be -0.0 after rounding; the reference's (k - L//2) / (L//2) is +0.0: adding 0.0 makes it so
            half_width = self.get("half_width", n)
            if isinstance(half_width, float) and math.frexp(half_width)[0] == 0.5:  # a power of two: an exact multiply
                torch.add(r.new_tensor(0.0), r, alpha=1 / half_width, out=out)
            else:
                torch.div(r, half_width, out=out)
                out.add_(0.0)
        elif self.kind == SYMMETRIC_KERNEL:
            torch.mul(r, self.get("code_step", n), out=out)
            out.sub_(1)
        elif self.kind == GRID_KERNEL:
            torch.mul(r, self.get("code_step", n), out=out)
            out.sub_(self.get("bias", n))
        else:
            torch.mul(r, 2, out=out)
            out.add_(1).div_(self.get("levels", n)).sub_(1)

    def level_indices(self, r: Tensor, out: Tensor) -> None:
        if self.kind == ROUND_KERNEL:
            torch.add(r, self.get("half_width", r.shape[0]), out=out)
        else:
            out.copy_(r)

    def pack(self, r: Tensor, out: Tensor) -> None:
        """Level values ``r (n, d)`` -> indices ``out (n, G)`` int64: elementwise, never through a matmul,
        whose float32 precision is a global setting (see :mod:`..indexing`)."""
        plan = cast(IndexPlan, self.plan)  # called with a plan only
        values = r if r.dtype == plan.pack_dtype else r.to(plan.pack_dtype)
        for g, acc in enumerate(plan.horner(values)):
            out[:, g].copy_(acc)
            if self.pack_offsets is not None:
                out[:, g].add_(self.pack_offsets[g])


def forward(z: Tensor, layout: BinLayout, plan: IndexPlan | None, need_levels: bool, need_grad: bool):
    """``z (M, d)`` contiguous float32/float64 -> ``codes (M, d)``, ``indices (M, G) | None``, ``level
    indices (M, d) | None`` and ``deriv = slope * f'(z + shift) (M, d) | None`` (when ``need_grad``).

    On the CPU, large calls run on all threads or on one, whichever :data:`THREADS` measures as
    faster for this kind of call; the results are the same either way."""
    if z.device.type != "cpu":
        return _forward(z, layout, plan, need_levels, need_grad)
    # the thread count is set before the block is built: its buffer sizes depend on it
    kind = (z.dtype, z.shape[1], layout.kernel_id, layout.activation.kernel_id, plan is not None, need_levels, need_grad)
    with THREADS.threads(kind, z.numel()):
        return _forward(z, layout, plan, need_levels, need_grad)


def _forward(z: Tensor, layout: BinLayout, plan: IndexPlan | None, need_levels: bool, need_grad: bool):
    m, d = z.shape
    # Whole multiples of 32 rows: PyTorch computes a tensor's last numel % 32 elements with scalar
    # code that can differ from its vector code by an ulp, so blocks must not create new tails.
    rows = max(32, BLOCK_ELEMENTS // d // 32 * 32)
    block = _Block(layout, plan, z, min(rows, m))
    codes = torch.empty_like(z)
    indices = torch.empty(m, plan.num_groups, dtype=torch.int64, device=z.device) if plan is not None else None
    levels = torch.empty_like(z) if need_levels else None
    deriv = torch.empty_like(z) if need_grad else None
    # the fast tanh keeps its input for the exact recomputation: shift into a buffer of its own
    shifted = torch.empty(min(rows, m), d, dtype=z.dtype, device=z.device) if layout.has_shift and block.fast_tanh else None
    for start in range(0, m, rows):
        sl = slice(start, min(start + rows, m))
        x = z[sl]
        n = x.shape[0]
        y = block.buffer(n)
        if layout.has_shift:
            x = torch.add(x, block.get("shift", n), out=y if shifted is None else shifted[:n])
        block.prerounded(x, y, deriv[sl] if deriv is not None else None)
        y = block.levels(y, x)
        if deriv is not None and (block.has_nan if block.has_nan is not None else bool(deriv[sl].sum().isnan())):
            deriv[sl].nan_to_num_(nan=0.0)  # zero gradient at NaN inputs (their code is level 0's, whatever z)
        block.codes(y, codes[sl])
        if levels is not None:
            block.level_indices(y, levels[sl])
        if indices is not None:
            block.pack(y, indices[sl])
    return codes, indices, levels, deriv
