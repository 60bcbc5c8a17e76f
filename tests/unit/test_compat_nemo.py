"""NeMo's FSQ drop-ins (``ifsq_quant.compat.nemo``): what NeMo's classes lack and what this package refuses.

The bit-for-bit comparisons with nemo-toolkit itself are in ``tests/parity/test_families.py``; these
tests need no NeMo: usage statistics, the meta device, ``torch.compile``, ONNX export, int32/int64
decoding, the warnings and errors, and the core's layout as NeMo's runs it (fused and reference).
"""

import warnings

import pytest
import torch
from torch import nn

from ifsq_quant import kernels
from ifsq_quant.compat.nemo import DimensionMismatchError, FiniteScalarQuantizer, GroupFiniteScalarQuantizer, lossy_levels, nemo_layout
from ifsq_quant.indexing import IndexPlan
from ifsq_quant.kernels import reference
from tests.helpers import onnx_run


def inputs(shape, seed=0, scale=2.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def exact_indices(codes: torch.Tensor, levels) -> torch.Tensor:
    """The exact index (B, T) of NeMo codes (B, D, T): digits round(c * (L//2) + L//2), little endian."""
    half = torch.tensor([L // 2 for L in levels], dtype=torch.float64).view(1, -1, 1)
    digits = torch.round(codes.double() * half + half).long()
    basis = torch.tensor(IndexPlan(levels).basis).view(1, -1, 1)
    return (digits * basis).sum(1)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3, 4], [27, 5], [6, 6, 6, 6, 6]], ids=str)
@pytest.mark.parametrize("eps", [1e-3, 0.0, 0.3])
def test_layout_fused_equals_reference(levels, eps):
    """NeMo's layout (shrinking eps, tan shift, L = 2 included) on the fused path: the reference's
    codes and level indices bit for bit, in float32 and float64, a few ulps around every bin edge."""
    layout = nemo_layout(levels, eps)
    assert layout.fused
    for dtype in (torch.float32, torch.float64):
        c = layout.constants(torch.device("cpu"), dtype)
        # the inputs whose value before rounding, tanh(z + shift) * scale + bias, is a half-integer
        u = torch.arange(-1, max(levels) + 1, dtype=dtype)[:, None] - c["half_width"] + 0.5
        edges = torch.atanh(((u - c["bias"]) / c["scale"]).clamp(-0.999999, 0.999999)) - c["shift"]
        ulps = torch.finfo(dtype).eps * edges.abs().clamp(min=1)
        z = torch.cat([edges + i * ulps for i in range(-4, 5)] + [inputs((64, len(levels))).to(dtype)])
        fused = kernels.quantize(z, layout, IndexPlan(levels), "torch", need_level_indices=True)
        codes, level_indices = reference.quantize(z, layout)
        assert torch.equal(fused.codes, codes) and torch.equal(fused.level_indices, level_indices)


def test_float64_default_layout_computes_its_constants_in_float64():
    """Under a float64 default dtype NeMo's constants are float64: (L - 1) / 2 * (1 - eps) and tan(0.5 / h)
    rounded once in float64, not float32 values cast up. That layout runs on the reference kernel."""
    levels = [8, 5, 6]
    f32, f64 = nemo_layout(levels, 1e-3), nemo_layout(levels, 1e-3, torch.float64)
    assert f32.fused and not f64.fused
    c64 = f64.constants(torch.device("cpu"), torch.float64)
    L = torch.tensor(levels, dtype=torch.float64)
    half = (L - 1) / 2 * (1 - 1e-3)
    assert torch.equal(c64["scale"], half)
    assert torch.equal(c64["shift"], (torch.where(L % 2 == 0, 0.5, 0.0).double() / half).tan())
    assert not torch.equal(f32.constants(torch.device("cpu"), torch.float64)["scale"], half)  # the float32 table, cast


def test_forward_shapes_dtypes_and_exact_indices():
    q = FiniteScalarQuantizer([8, 5, 5, 5])
    x = inputs((3, 4, 11))
    for dtype, out_dtype in [(torch.float32, torch.float32), (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                             (torch.float64, torch.float64)]:
        codes, indices = q(inputs=x.to(dtype), input_len=None)
        assert codes.dtype == out_dtype and codes.shape == (3, 4, 11)
        assert indices.dtype == torch.int32 and indices.shape == (1, 3, 11)
        assert torch.equal(indices[0].long(), exact_indices(codes, [8, 5, 5, 5]))
    # positional and keyword calls agree
    assert all(torch.equal(a, b) for a, b in zip(q(x), q(inputs=x, input_len=None)))
    assert torch.equal(q.encode(x), q(x)[1])
    q.eps = 0.2  # NeMo reads eps at every call
    assert torch.equal(q(x)[0], FiniteScalarQuantizer([8, 5, 5, 5], eps=0.2)(x)[0])
    assert not torch.equal(q(x)[0], FiniteScalarQuantizer([8, 5, 5, 5])(x)[0])


def test_lengths_mask_codes_and_indices():
    """Frames at or past input_len: codes zero (-0.0 where the code was negative, as NeMo's product with
    a bool mask), indices 0; int32 and int64 lengths; lengths beyond T keep every frame."""
    q = FiniteScalarQuantizer([8, 5, 5, 5])
    x = inputs((3, 4, 6))
    full_codes, full_indices = q(x)
    for lengths in (torch.tensor([6, 0, 3]), torch.tensor([9, 2, 5], dtype=torch.int32)):
        codes, indices = q(x, lengths)
        keep = torch.arange(6) < lengths[:, None]
        assert torch.equal(codes, full_codes * keep[:, None, :])
        assert torch.equal(indices[0], torch.where(keep, full_indices[0], 0))
        dropped = codes.transpose(1, 2)[~keep]
        assert torch.equal(torch.signbit(dropped), torch.signbit(full_codes.transpose(1, 2)[~keep]))
    with pytest.raises(ValueError, match="input_len"):
        q(x, torch.tensor([1, 2]))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_decode_takes_int32_and_int64(index_dtype):
    q = FiniteScalarQuantizer([8, 5, 5, 5])
    x = inputs((2, 4, 7))
    codes, indices = q(x)
    decoded = q.decode(indices=indices.to(index_dtype))
    assert decoded.dtype == torch.float32 and torch.equal(decoded, codes)
    assert torch.equal(q.decode(indices.to(index_dtype), torch.tensor([7, 3])), q(x, torch.tensor([7, 3]))[0])
    assert q.codes.shape == (1000, 4) and torch.equal(q.codebook, q.codes)
    assert torch.equal(q.codes_to_indices(q.codes.T[None]), torch.arange(1000, dtype=torch.int32)[None])


def test_decode_refuses_indices_outside_the_codebook_at_kept_frames():
    q = FiniteScalarQuantizer([4, 4])
    indices = torch.tensor([[[3, 15, 16]]])
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        q.decode(indices)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        q.decode(-indices)
    assert q.decode(indices, torch.tensor([2])).shape == (1, 2, 3)  # the frame input_len drops may hold anything
    with pytest.raises(ValueError, match="single codebook"):
        q.decode(torch.zeros(2, 1, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        q.decode(indices.float())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_levels"):
        FiniteScalarQuantizer([5, 1])
    with pytest.raises(TypeError, match="num_levels"):
        FiniteScalarQuantizer([5, 2.5])
    with pytest.raises(ValueError, match=r"int32|2\*\*31"):
        FiniteScalarQuantizer([2] * 31)
    with pytest.warns(UserWarning, match=r"2\*\*24"):
        FiniteScalarQuantizer([2] * 30)  # 2**30 codes fit (NeMo's float32 sums of them do not)
    with pytest.raises(ValueError, match="eps"):
        FiniteScalarQuantizer([5], eps=1.0)
    with pytest.raises(ValueError, match="backend"):
        FiniteScalarQuantizer([5], backend="cuda")
    q = FiniteScalarQuantizer([8, 5])
    with pytest.raises(DimensionMismatchError, match="dimension 3") as error:
        q(torch.randn(1, 3, 4))
    assert isinstance(error.value, RuntimeError) and isinstance(error.value, ValueError)  # NeMo raises RuntimeError
    with pytest.raises(ValueError, match=r"\(B, D, T\)"):
        q(torch.randn(2, 4))


def test_lossy_levels_warn_and_indices_stay_exact():
    """NeMo's float digits truncate for L = 27 (float32) and its float sum rounds past 2**24 codes: the
    warning names them; this module's indices are the exact ones."""
    assert lossy_levels([8, 5, 5, 5]) == [] and lossy_levels([5] * 4) == []
    assert lossy_levels([27, 5]) == ["L=27"]
    assert lossy_levels([51, 2]) == ["L=51"]  # float64 digits
    assert lossy_levels([17] * 6)[-1].startswith("a codebook of 24137569 codes")
    with pytest.warns(UserWarning, match=r"L=27.*exact"):
        q = FiniteScalarQuantizer([27, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FiniteScalarQuantizer([8, 5, 5, 5])
    with pytest.warns(UserWarning) as caught:
        GroupFiniteScalarQuantizer(3, [27, 5])
    assert len(caught) == 1  # one warning for the groups
    codes, indices = q(inputs((2, 2, 300)))
    assert torch.equal(indices[0].long(), exact_indices(codes, [27, 5]))


def test_checkpoint_of_other_levels_is_an_error():
    q = FiniteScalarQuantizer([8, 5, 5, 5])
    other = FiniteScalarQuantizer([8, 5, 5, 4]).state_dict()
    with pytest.raises(RuntimeError, match="num_levels"):
        q.load_state_dict(other)
    q.load_state_dict(FiniteScalarQuantizer([8, 5, 5, 5]).state_dict())


def test_track_usage_counts_the_kept_frames_and_loads_plain_checkpoints():
    q = FiniteScalarQuantizer([8, 5, 5, 5], track_usage=True)
    x = inputs((3, 4, 6))
    q(x, torch.tensor([6, 0, 3]))
    assert q.usage.num_samples == 9
    q.encode(x)
    assert q.usage.num_samples == 27
    _, indices = q(x)
    expected = torch.bincount(indices.flatten().long(), minlength=1000)
    q.usage.reset()
    q(x)
    assert torch.equal(q.usage.code_counts, expected)
    q.decode(indices)  # decoding counts nothing
    assert q.usage.num_samples == 18
    plain = FiniteScalarQuantizer([8, 5, 5, 5])
    with pytest.warns(UserWarning, match="no usage counts"):
        q.load_state_dict(plain.state_dict())  # a NeMo checkpoint, strict
    with pytest.warns(UserWarning, match="not loaded"):
        plain.load_state_dict(q.state_dict())
    group = GroupFiniteScalarQuantizer(2, [8, 5], track_usage=True)
    group(inputs((2, 4, 5)))
    assert [fsq.usage.num_samples for fsq in group.fsqs] == [10, 10]


def test_meta_device_then_to_empty():
    """Built on the meta device and given storage: the level buffers are NeMo's values, and the module
    quantizes as one built on the CPU (usage counts start at zero)."""
    with torch.device("meta"):
        q = FiniteScalarQuantizer([8, 5, 5, 5], track_usage=True)
    q.to_empty(device="cpu")
    built = FiniteScalarQuantizer([8, 5, 5, 5])
    for key, value in built.state_dict().items():
        assert torch.equal(q.state_dict()[key], value), key
    assert q.usage.num_samples == 0
    x = inputs((2, 4, 5))
    assert all(torch.equal(a, b) for a, b in zip(q(x), built(x)))
    q.load_state_dict(built.state_dict() | q.usage.state_dict(prefix="usage."))


def test_group_shapes_and_codes_to_indices():
    g = GroupFiniteScalarQuantizer(num_groups=3, num_levels_per_group=[8, 5])
    assert (g.num_codebooks, g.codebook_size, g.codebook_dim) == (3, 40, 6)
    assert list(g.state_dict()) == [f"fsqs.{i}.{name}" for i in range(3) for name in ("dim_base_index", "num_levels")]
    x = inputs((2, 6, 5))
    codes, indices = g(x, torch.tensor([5, 2]))
    assert codes.shape == (2, 6, 5) and indices.shape == (3, 2, 5) and indices.dtype == torch.int32
    assert torch.equal(g.encode(x, torch.tensor([5, 2])), indices)
    for index_dtype in (torch.int32, torch.int64):
        assert torch.equal(g.decode(indices.to(index_dtype), torch.tensor([5, 2])), codes)
    assert torch.equal(g.codes_to_indices(codes, torch.tensor([5, 2])), indices.permute(1, 0, 2))  # (B, G, T)
    assert torch.equal(g.codes_to_indices(codes=g(x)[0]), g(x)[1].permute(1, 0, 2))  # input_len may be left out
    with pytest.raises(ValueError, match="num_groups=3"):
        g(inputs((2, 2, 5)))


class _Call(nn.Module):
    """A method of ``module`` as a module's forward (what the exporters take)."""

    def __init__(self, module, method):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [6, 2, 7]], ids=str)
def test_compile_fullgraph_equals_eager(levels):
    q = FiniteScalarQuantizer(levels)
    x, lengths = inputs((2, len(levels), 9)), torch.tensor([9, 4])
    torch._dynamo.reset()
    forward = torch.compile(lambda x, n: q(inputs=x, input_len=n), fullgraph=True, backend="aot_eager")
    decode = torch.compile(lambda i, n: q.decode(indices=i, input_len=n), fullgraph=True, backend="aot_eager")
    for got, expected in zip(forward(x, lengths), q(x, lengths)):
        assert torch.equal(got, expected)
    indices = q.encode(x)
    assert torch.equal(decode(indices, lengths), q.decode(indices, lengths))
    leaf = x.clone().requires_grad_(True)
    forward(leaf, lengths)[0].sum().backward()
    expected = x.clone().requires_grad_(True)
    q(expected, lengths)[0].sum().backward()
    torch.testing.assert_close(leaf.grad, expected.grad)


def test_onnx_export_of_encode_and_decode():
    """encode (with lengths) and decode (int32 and int64 indices) exported with the dynamo exporter and
    run by onnxruntime: NeMo's indices and codes."""
    q = FiniteScalarQuantizer([8, 5, 5, 5]).eval()
    x, lengths = inputs((2, 4, 9)), torch.tensor([9, 4])
    (indices,) = onnx_run(_Call(q, "encode"), (x, lengths))
    assert indices.dtype == torch.int32 and torch.equal(indices, q.encode(x, lengths))
    for index_dtype in (torch.int32, torch.int64):
        (codes,) = onnx_run(_Call(q, "decode"), (indices.to(index_dtype), lengths))
        assert torch.equal(codes, q.decode(indices, lengths))
