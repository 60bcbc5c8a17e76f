"""CodeUsage statistics, track_usage (once per forward under activation checkpointing), checkpoints and arguments.

The collectives on two gloo ranks are in tests/integration/test_usage_distributed.py (slow tier).
"""

import copy
import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from ifsq_quant import FSQ, CodeUsage, ResidualFSQ, iFSQ


def test_entropy_utilization_and_usage_on_known_counts():
    usage = CodeUsage([4, 2])
    # dim 0 uses levels 0..3 equally (2 bits); dim 1 uses only level 1 (0 bits).
    usage.update(torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1]]))
    torch.testing.assert_close(usage.bin_entropy(), torch.tensor([2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(usage.utilization(), torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(usage.bins_used(), torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert usage.codebook_usage() == 4 / 8
    assert usage.perplexity() == pytest.approx(4.0)
    assert usage.perplexity_upper_bound() == pytest.approx(4.0)
    summary = usage.summary()
    assert summary["samples"] == 4 and summary["codebook_size"] == 8
    assert summary["mean_bits_per_dim"] == pytest.approx(1.0)
    usage.reset()
    assert usage.num_samples == 0 and usage.codebook_usage() == 0


def test_perplexity_of_dependent_dimensions_is_below_the_bound():
    usage = CodeUsage([3, 3])
    k = torch.randint(0, 3, (3000, 1))
    usage.update(torch.cat([k, k], dim=1))  # perfectly correlated: 3 codes, not 9
    assert usage.perplexity() == pytest.approx(3.0, rel=0.01)
    assert usage.perplexity_upper_bound() == pytest.approx(9.0, rel=0.02)


def test_large_codebooks_are_not_counted_jointly():
    usage = CodeUsage([1000] * 4)
    usage.update(torch.randint(0, 1000, (100, 4)))
    assert usage.codebook_usage() is None and usage.perplexity() is None
    assert usage.summary()["perplexity_upper_bound"] > 1
    assert usage.code_counts.numel() == 0


@pytest.mark.parametrize("bad,error", [
    (torch.tensor([[0, 4]]), ValueError),
    (torch.tensor([[-1, 0]]), ValueError),
    (torch.tensor([[0.5, 1.0]]), ValueError),
    (torch.tensor([[0, 1, 2]]), ValueError),
    (torch.tensor([[True, False]]), TypeError),
])
def test_update_rejects_bad_level_indices(bad, error):
    with pytest.raises(error):
        CodeUsage([4, 4]).update(bad)


def test_track_usage_counts_training_forwards_only():
    q = iFSQ([5, 5, 5], track_usage=True, num_codebooks=2)
    z = torch.randn(4, 10, 6)
    q.train()(z)
    assert q.usage.num_samples == 4 * 10 * 2
    q.eval()(z)
    assert q.usage.num_samples == 80
    _, idx = q(z)
    expected = CodeUsage([5, 5, 5])
    expected.update(q.indices_to_level_indices(idx))
    assert torch.equal(q.usage.bin_counts, expected.bin_counts)
    assert "usage.bin_counts" in q.state_dict()


def test_usage_matches_the_quantizer_levels():
    q = FSQ([8, 5, 5, 5], track_usage=True).train()
    _, idx = q(torch.randn(64, 4) * 0.01)  # all near zero: one level per dimension
    assert q.usage.bins_used().tolist() == [1 / 8, 1 / 5, 1 / 5, 1 / 5]
    assert q.usage.codebook_usage() == pytest.approx(1 / 1000)


def test_counts_are_state_not_buffers():
    q = iFSQ([5, 5], track_usage=True).train()
    q(torch.randn(100, 2))
    assert "usage.bin_counts" not in dict(q.named_buffers())
    state = q.state_dict()
    assert int(state["usage.bin_counts"].sum()) == 200
    fresh = iFSQ([5, 5], track_usage=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.usage.bin_counts, q.usage.bin_counts)
    assert torch.equal(fresh.usage.code_counts, q.usage.code_counts)
    assert fresh.double().usage.bin_counts.dtype == torch.int64  # dtype casts leave counts alone
    with pytest.warns(UserWarning, match="no usage counts.*keeps its own counts"):
        missing = iFSQ([5, 5], track_usage=True).load_state_dict({}, strict=False).missing_keys
    assert "usage.bin_counts" not in missing  # counts are statistics: a checkpoint without them loads
    try:
        iFSQ([7, 5], track_usage=True).load_state_dict(state)
    except RuntimeError as error:
        assert "different levels" in str(error)
    else:
        raise AssertionError("a checkpoint with other levels must not load")


def test_all_reduce_without_distributed_is_a_no_op():
    usage = CodeUsage([3])
    usage.update(torch.tensor([[1]]))
    usage.all_reduce()
    assert usage.bin_counts.tolist() == [[0, 1, 0]]
    assert math.isclose(usage.bin_entropy().item(), 0.0)


def test_utilization_on_mixed_level_counts():
    usage = CodeUsage([3, 5, 2, 17])
    # 204 = lcm(3, 2, 4, 17) rows: dim 0 uniform; dim 1 levels 0 and 4 only, half each; dim 2 at 1:3; dim 3 uniform
    rows = torch.tensor([[j % 3, 4 * (j % 2), int(j % 4 == 0), j % 17] for j in range(204)])
    usage.update(rows)
    h_quarter = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    expected_bits = torch.tensor([math.log2(3), 1.0, h_quarter, math.log2(17)], dtype=torch.float64)
    torch.testing.assert_close(usage.bin_entropy(), expected_bits)
    levels = torch.tensor([3, 5, 2, 17], dtype=torch.float64)
    torch.testing.assert_close(usage.utilization(), expected_bits / torch.log2(levels))
    torch.testing.assert_close(usage.utilization(), torch.tensor([1.0, 1 / math.log2(5), h_quarter, 1.0], dtype=torch.float64))
    torch.testing.assert_close(usage.bins_used(), torch.tensor([1.0, 0.4, 1.0, 1.0], dtype=torch.float64))
    assert usage.flat_bin_counts.shape == (3 + 5 + 2 + 17,) and usage.bin_counts.shape == (4, 17)
    assert usage.bin_counts_of(1).tolist() == [102, 0, 0, 0, 102]
    distinct = len({tuple(r) for r in rows.tolist()})
    assert usage.num_samples == 204 and usage.codebook_usage() == pytest.approx(distinct / (3 * 5 * 2 * 17))


def test_counts_take_memory_in_proportion_to_the_sum_of_levels():
    """[2**22] + [3]*15: one wide dimension must not make the narrow ones as wide (this took 1.29 GB)."""
    levels = [2**22] + [3] * 15
    usage = CodeUsage(levels)
    stored = usage.local_bin_counts.numel() + usage.code_counts.numel()
    assert stored == sum(levels)
    # The peak resident memory of building, updating and summarizing one, in a fresh process.
    code = (
        "import resource, torch, ifsq_quant\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"u = ifsq_quant.CodeUsage({levels!r})\n"
        "k = torch.randint(0, 3, (1000, 16)); k[:, 0] = torch.randint(0, 2**22, (1000,))\n"
        "u.update(k); s = u.summary(); assert s['samples'] == 1000\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    peak = int(out.split()[-1])
    # sum(L) int64 counts are 34 MB (90 MiB peak measured, with torch's own first-use memory);
    # d * max(L) int64 is 537 MB (the padded layout peaked at 1.29 GB).
    assert peak < 4 * 8 * sum(levels), f"peak {peak / 2**20:.0f} MiB"


def test_checkpoints_of_the_padded_layout_still_load():
    usage = CodeUsage([3, 5])
    usage.update(torch.tensor([[0, 4], [2, 4], [2, 1]]))
    state = usage.state_dict()
    assert state["bin_counts"].tolist() == [1, 0, 2, 0, 1, 0, 0, 2]
    legacy = dict(state, bin_counts=usage.bin_counts.clone())  # (d, max L), zero padded
    fresh = CodeUsage([3, 5])
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.flat_bin_counts, usage.flat_bin_counts) and fresh.num_samples == 3


# --- activation checkpointing: one count per real forward --------------------------------------


def _trackers(module):
    return [m for m in module.modules() if isinstance(m, CodeUsage)]


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("make", [
    lambda: FSQ([8, 5, 5, 5], track_usage=True),
    lambda: ResidualFSQ(dim=4, levels=[8, 5, 5, 5], num_quantizers=3, track_usage=True),
], ids=["FSQ", "ResidualFSQ"])
def test_checkpointed_forwards_are_counted_once(make, use_reentrant):
    torch.manual_seed(0)
    plain = make().train()
    checkpointed = copy.deepcopy(plain)
    h = torch.randn(2, 80, 4) * 2
    x = h.clone().requires_grad_(True)
    plain(x)[0].sum().backward()
    y = h.clone().requires_grad_(True)
    checkpoint(checkpointed, y, use_reentrant=use_reentrant)[0].sum().backward()
    assert y.grad is not None  # the recompute ran
    expected, got = _trackers(plain), _trackers(checkpointed)
    assert len(got) == len(expected) >= 1
    for ref, usage in zip(expected, got):
        assert usage.num_samples == 160  # the real positions, once
        assert torch.equal(usage.flat_bin_counts, ref.flat_bin_counts)
        assert torch.equal(usage.code_counts, ref.code_counts)


def test_update_counts_also_inside_a_backward_pass():
    usage = CodeUsage([3])
    x = torch.randn(2, requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: (usage.update(torch.tensor([[1]])), g)[1])
    y.sum().backward()
    assert usage.num_samples == 1  # an explicit update always counts


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,error", [(None, TypeError), (2.5, TypeError), ("8", TypeError), (True, TypeError), (-1, ValueError)])
def test_max_counted_codebook_is_checked(bad, error):
    with pytest.raises(error, match="max_counted_codebook"):
        CodeUsage([5], max_counted_codebook=bad)


def test_max_counted_codebook_zero_counts_no_codes():
    usage = CodeUsage([5, 5], max_counted_codebook=0)
    usage.update(torch.tensor([[1, 2]]))
    assert usage.codebook_usage() is None and usage.num_samples == 1


def test_update_rejects_a_meta_tensor():
    with pytest.raises(ValueError, match="meta"):
        CodeUsage([4, 4]).update(torch.zeros(3, 2, dtype=torch.long, device="meta"))


# --- load_state_dict validates what it loads ---------------------------------------------------


def _filled(levels, rows=((0, 1), (2, 3), (4, 4))):
    usage = CodeUsage(levels)
    usage.update(torch.tensor(rows))
    return usage


def test_state_dict_carries_the_levels():
    state = _filled([5, 6]).state_dict()
    assert state["levels"].dtype == torch.int64 and state["levels"].tolist() == [5, 6]
    fresh = CodeUsage([5, 6])
    fresh.load_state_dict(state)  # strict: no unexpected key
    assert fresh.num_samples == 3


def _load_error(levels, state):
    with pytest.raises(RuntimeError) as info:
        CodeUsage(levels).load_state_dict(state)
    return str(info.value)


def test_load_refuses_counts_of_other_levels_of_the_same_size():
    state = _filled([6, 5]).state_dict()
    message = _load_error([5, 6], state)
    assert "levels" in message and "[6, 5]" in message and "[5, 6]" in message


def _bad_states():
    good = _filled([5, 6]).state_dict()
    negative = good["bin_counts"].clone()
    negative[0] -= 2
    negative[1] += 2  # per-dimension sums unchanged: only the sign is wrong
    uneven = good["bin_counts"].clone()
    uneven[0] += 1  # dimension 0 counts 4 samples, dimension 1 three
    codes = good["code_counts"].clone()
    codes[0] += 1  # 4 codes for 3 samples
    padded_other = torch.zeros(2, 6, dtype=torch.int64)
    padded_other[0, 5] = 1  # a sixth level in the first dimension: other levels
    padded_other[1, 0] = 1
    return {
        "negative": (dict(good, bin_counts=negative), "bin_counts", "non-negative"),
        "float": (dict(good, bin_counts=good["bin_counts"].double()), "bin_counts", "integer"),
        "float codes": (dict(good, code_counts=good["code_counts"].float()), "code_counts", "integer"),
        "list": (dict(good, bin_counts=good["bin_counts"].tolist()), "bin_counts", "list"),
        "list levels": (dict(good, levels=[5, 6]), "levels", "list"),
        "uneven dimensions": (dict(good, bin_counts=uneven), "bin_counts", "same number of samples"),
        "codes against bins": (dict(good, code_counts=codes), "code_counts", "sum to 4"),
        "padded other levels": ({"bin_counts": padded_other, "code_counts": torch.zeros(30, dtype=torch.int64)},
                                "bin_counts", "different levels"),
    }


@pytest.mark.parametrize("case", list(_bad_states()))
def test_load_refuses_bad_counts_naming_the_key(case):
    state, key, words = _bad_states()[case]
    target = _filled([5, 6], rows=((1, 1),))
    before = (target.flat_bin_counts.clone(), target.code_counts.clone())
    with pytest.raises(RuntimeError) as info:
        target.load_state_dict(state)
    assert key in str(info.value) and words in str(info.value)
    assert torch.equal(target.flat_bin_counts, before[0]) and torch.equal(target.code_counts, before[1])  # nothing loaded


def test_bad_counts_are_error_msgs_inside_a_quantizer():
    q = FSQ([5, 6], track_usage=True)
    state = q.state_dict()
    state["usage.bin_counts"] = -state["usage.bin_counts"] - 1
    with pytest.raises(RuntimeError, match=r"usage\.bin_counts"):
        q.load_state_dict(state)


def test_checkpoints_without_levels_still_load():
    usage = _filled([5, 6])
    state = usage.state_dict()
    del state["levels"]
    fresh = CodeUsage([5, 6])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.flat_bin_counts, usage.flat_bin_counts)
    assert torch.equal(fresh.code_counts, usage.code_counts)
    padded = dict(state, bin_counts=usage.bin_counts.clone())  # the (d, max L) layout
    again = CodeUsage([5, 6])
    again.load_state_dict(padded)
    assert torch.equal(again.flat_bin_counts, usage.flat_bin_counts) and again.num_samples == 3


def test_load_state_dict_replaces_the_counts_learnt_from_other_ranks(monkeypatch):
    """A module that holds all-reduced counts and then loads a checkpoint reads the checkpoint's
    totals alone: the other ranks' counts learnt at the last all_reduce are dropped, not added.
    One gloo process whose all_reduce also adds a second rank's counts stands in for two ranks."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    other_rank = {}  # the counts the simulated second rank contributes to the next all_reduce
    real_all_reduce = dist.all_reduce

    def all_reduce_with_a_second_rank(tensor, *args, **kwargs):
        work = real_all_reduce(tensor, *args, **kwargs)
        tensor += other_rank["counts"]
        return work

    monkeypatch.setattr(dist, "all_reduce", all_reduce_with_a_second_rank)
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        usage = CodeUsage([3, 3])
        usage.update(torch.tensor([[0, 0]]))  # this rank: 1 sample at levels (0, 0)
        theirs = CodeUsage([3, 3])
        theirs.update(torch.tensor([[1, 1]] * 4))  # the other rank: 4 samples at levels (1, 1)
        other_rank["counts"] = torch.cat([theirs.flat_bin_counts, theirs.code_counts])
        usage.all_reduce()
        assert usage.num_samples == 5 and usage.bin_counts.tolist() == [[1, 4, 0], [1, 4, 0]]

        saved = CodeUsage([3, 3])
        saved.update(torch.tensor([[2, 2]] * 7))  # a checkpoint of 7 samples in total, at levels (2, 2)
        usage.load_state_dict(saved.state_dict())
        assert usage.bin_counts.tolist() == [[0, 0, 7], [0, 0, 7]]
        assert torch.equal(usage.code_counts, saved.code_counts) and usage.num_samples == 7
        assert torch.equal(usage.state_dict()["bin_counts"], saved.flat_bin_counts)

        other_rank["counts"] = torch.cat([saved.flat_bin_counts, saved.code_counts])  # the other rank loaded it too
        usage.all_reduce()
        assert usage.num_samples == 14 and usage.bin_counts.tolist() == [[0, 0, 14], [0, 0, 14]]
    finally:
        dist.destroy_process_group()
