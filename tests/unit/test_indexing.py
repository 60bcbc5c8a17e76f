"""Exact int64 indexing for every codebook that fits, index groups, lazy codebooks."""

import math
import subprocess
import sys
import time
import tracemalloc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ifsq_quant import FSQ, iFSQ
from ifsq_quant.indexing import IndexPlan


def _exact_index(level_indices, levels):
    """Python-int reference of the little-endian mixed-radix index."""
    index, base = 0, 1
    for k, level in zip(level_indices, levels):
        index += int(k) * base
        base *= level
    return index


@pytest.mark.parametrize("levels", [[17] * 6, [17] * 8, [4] * 30, [1000] * 5, [3] * 39])
def test_large_codebooks_are_exact(levels):
    q = FSQ(levels, bins="symmetric")  # symmetric: L = 1000 is fine whatever eps
    assert q.codebook_size == math.prod(levels) < 2**63
    torch.manual_seed(0)
    z = torch.randn(64, len(levels)) * 3
    z[0] = 100.0  # the top code: the largest index
    codes, indices = q(z)
    assert indices.dtype == torch.int64
    assert int(indices[0]) == q.codebook_size - 1
    levels_k = q.indices_to_level_indices(indices)
    for row in range(64):
        assert int(indices[row]) == _exact_index(levels_k[row].tolist(), levels)
    assert torch.equal(q.indices_to_codes(indices), codes)
    assert torch.equal(q.codes_to_indices(codes), indices)


def test_top_index_above_float_precision():
    q = FSQ([17] * 8)
    top = torch.tensor([q.codebook_size - 1, q.codebook_size - 2, 2**24 + 1])
    codes = q.indices_to_codes(top)
    assert torch.equal(q.codes_to_indices(codes), top)


def test_construction_is_independent_of_codebook_size():
    start = time.perf_counter()
    tracemalloc.start()
    FSQ([1000] * 6, bins="symmetric")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 1_000_000


def test_implicit_codebook_is_lazy_and_ordered():
    q = FSQ([3, 4, 5], bins="symmetric")
    assert "implicit_codebook" not in dict(q.named_buffers())
    book = q.implicit_codebook
    assert book.shape == (60, 3)
    assert torch.equal(q.codes_to_indices(book), torch.arange(60))
    with pytest.raises(ValueError, match="implicit_codebook"):
        _ = FSQ([1000] * 5, bins="symmetric").implicit_codebook


def test_beyond_int64_needs_groups_or_no_indices():
    with pytest.raises(ValueError, match="int64"):
        FSQ([1000] * 7, bins="symmetric")
    q = FSQ([1000] * 7, bins="symmetric", return_indices=False)
    out, indices = q(torch.randn(2, 5, 7))
    assert indices is None and out.shape == (2, 5, 7)
    grouped = FSQ([1000] * 7, bins="symmetric", index_groups=[3, 4])
    _, indices = grouped(torch.randn(2, 5, 7))
    assert indices.shape == (2, 5, 2)
    assert int(indices.max()) < 1000**4


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_round_trip_with_groups(data):
    levels = data.draw(st.lists(st.integers(3, 40), min_size=1, max_size=10))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(levels) - 1), max_size=3)))) if len(levels) > 1 else []
    groups = [b - a for a, b in zip([0, *cuts], [*cuts, len(levels)])]
    q = iFSQ(levels, index_groups=groups, bins=data.draw(st.sampled_from(["round", "symmetric", "equal"])))
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    codes, indices = q(torch.randn(50, len(levels)) * 2)
    assert indices.shape == (50, len(groups))
    assert torch.equal(q.indices_to_codes(indices), codes)
    assert torch.equal(q.codes_to_indices(codes), indices)
    plan = IndexPlan(levels, groups)
    for gi, size in enumerate(plan.group_sizes):
        assert int(indices[:, gi].min()) >= 0 and int(indices[:, gi].max()) < size
    lv = q.indices_to_level_indices(indices)
    start = 0
    for gi, g in enumerate(groups):
        for row in range(0, 50, 7):
            assert int(indices[row, gi]) == _exact_index(lv[row, start:start + g].tolist(), levels[start:start + g])
        start += g


# Every way to set the float32 matmul precision, legacy and new API; each runs in a fresh process,
# because PyTorch refuses to read the legacy setting once the new API has been used in a process.
PRECISION_SETTINGS = {
    "legacy highest": "torch.set_float32_matmul_precision('highest')",
    "legacy high": "torch.set_float32_matmul_precision('high')",
    "legacy medium": "torch.set_float32_matmul_precision('medium')",
    "fp32_precision tf32": "torch.backends.fp32_precision = 'tf32'",
    "cuda matmul tf32": "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
    "mkldnn matmul bf16": "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
    "mkldnn matmul tf32": "torch.backends.mkldnn.matmul.fp32_precision = 'tf32'",
}

PRECISION_CHECK = """
import sys, torch
{setting}
from ifsq_quant import FSQ, iFSQ, ResidualFSQ
device = sys.argv[1]
torch.manual_seed(0)
for q in (FSQ([17] * 5), iFSQ([17] * 5, dim=12), FSQ([17] * 4, index_groups=[2, 2]), FSQ([2**13, 2**13, 4], bins="equal")):
    q = q.to(device)
    z = torch.randn(3, 4096, q.dim, device=device) * 2
    _, indices = q(z)
    with torch.no_grad():
        exact = q.index_plan.pack(q.indices_to_level_indices(indices).long())  # int64 packing
        flat = indices.reshape(-1, q.index_plan.num_groups)
        assert torch.equal(flat, exact.reshape(flat.shape)), "forward indices"
    size = min(q.index_plan.group_sizes)
    top = torch.arange(max(0, size - 1000), size, device=device)
    if q.index_groups is not None:
        top = top[:, None].expand(-1, q.index_plan.num_groups)
    codes = q.indices_to_codes(top) if q.dim == q.codebook_dim else None
    if codes is not None:
        assert torch.equal(q.codes_to_indices(codes), top), "round trip"
rq = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16).to(device).eval()
x = torch.randn(2, 300, 16, device=device)
out, indices = rq(x)
assert torch.equal(rq.get_output_from_indices(indices), out), "residual decode"
print("exact")
"""


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("setting", list(PRECISION_SETTINGS))
def test_indices_are_exact_under_every_matmul_precision_setting(setting, device):
    """The forward and codes_to_indices run and give exact indices whatever the float32 matmul
    precision is, set through the legacy API or the new ``fp32_precision`` one."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA settings: no CUDA device here")
    script = PRECISION_CHECK.format(setting=PRECISION_SETTINGS[setting])
    result = subprocess.run([sys.executable, "-c", script, device], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "exact", result.stderr[-2000:]


@pytest.mark.parametrize("bad,error,match", [
    (torch.tensor([0.0, 1.0]), TypeError, "integer"),
    (torch.tensor([-1, 0]), ValueError, ">= 0"),
    (torch.tensor([0, 1000]), ValueError, "out of range"),
    ([0, 1], TypeError, "torch.Tensor"),
])
def test_indices_to_codes_rejects_bad_indices(bad, error, match):
    with pytest.raises(error, match=match):
        FSQ([8, 5, 5, 5]).indices_to_codes(bad)


def test_grouped_indices_need_group_axis():
    q = FSQ([5, 5, 5, 5], index_groups=[2, 2])
    with pytest.raises(ValueError, match="last axis"):
        q.indices_to_codes(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="group 1"):
        q.indices_to_codes(torch.tensor([[0, 25]]))


def test_int32_indices_are_accepted():
    q = FSQ([8, 5, 5, 5])
    idx = torch.arange(1000, dtype=torch.int32)
    assert torch.equal(q.indices_to_codes(idx), q.indices_to_codes(idx.long()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, {"preserve_symmetry": True}, {"bins": "equal"}, {"num_codebooks": 2, "dim": 8}])
def test_table_decoding_of_large_batches_matches_decoding_row_by_row(dtype, kwargs):
    """Batches with more indices than codes are decoded through a table of every code; slices with
    fewer are decoded row by row: both give the same codes bit for bit."""
    q = FSQ([8, 5, 5, 5], **kwargs).to(dtype)
    shape = (3, 700) + ((2,) if kwargs.get("num_codebooks") else ())
    indices = torch.randint(0, q.codebook_size, shape, generator=torch.Generator().manual_seed(0))
    table = q.indices_to_codes(indices)  # 2100+ indices > 1000 codes
    rows = torch.cat([q.indices_to_codes(indices[:, i:i + 100]) for i in range(0, 700, 100)], dim=1)  # 300 or 600 each
    assert table.dtype == rows.dtype and torch.equal(table, rows)
    assert torch.equal(q.indices_to_codes(indices.to(torch.int32)), table)
    with pytest.raises(ValueError, match="out of range"):
        q.indices_to_codes(indices.masked_fill(indices == indices[0, 0], q.codebook_size))
