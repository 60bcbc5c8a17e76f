"""CodeUsage statistics, track_usage, and the all-reduce over torch.distributed ranks."""

import contextlib
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ifsq_quant import FSQ, CodeUsage, iFSQ


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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _gloo_group(rank, world_size, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _spawn(worker, world_size=2):
    """Runs ``worker(rank, world_size, port, results)`` in ``world_size`` processes; returns ``results``."""
    results = mp.Manager().dict()
    mp.spawn(worker, args=(world_size, _free_port(), results), nprocs=world_size, join=True)
    return results


def _all_reduce_worker(rank, world_size, port, results):
    with _gloo_group(rank, world_size, port):
        usage = CodeUsage([3, 3])
        usage.update(torch.full((rank + 1, 2), rank, dtype=torch.long))  # rank r adds r+1 rows of level r
        usage.all_reduce()
        results[rank] = (usage.bin_counts.tolist(), usage.code_counts.tolist())


def test_all_reduce_sums_counts_over_two_gloo_processes():
    results = _spawn(_all_reduce_worker)
    expected_bins = [[1, 2, 0], [1, 2, 0]]
    for rank in range(2):
        bins, codes = results[rank]
        assert bins == expected_bins
        assert codes[0] == 1 and codes[4] == 2 and sum(codes) == 3  # codes 0 and 1 + 3*1


def _ddp_worker(rank, world_size, port, results):
    with _gloo_group(rank, world_size, port):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), FSQ([5, 5, 5], preserve_symmetry=True, track_usage=True))
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # default broadcast_buffers=True
        for _ in range(2):
            out, _ = ddp(torch.randn(10 * (rank + 1), 3))  # rank r sees 10 (r + 1) vectors per step
            out.sum().backward()
        usage = model[1].usage
        before = usage.num_samples
        usage.all_reduce()
        results[rank] = (before, usage.num_samples)


def test_usage_counts_survive_ddp_buffer_broadcast():
    results = _spawn(_ddp_worker)
    assert results[0] == (20, 60) and results[1] == (40, 60)


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
    missing = iFSQ([5, 5], track_usage=True).load_state_dict({}, strict=False).missing_keys
    assert "usage.bin_counts" in missing
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


def _all_reduce_twice_worker(rank, world_size, port, results):
    with _gloo_group(rank, world_size, port):
        usage = CodeUsage([3, 3])
        usage.update(torch.full((rank + 1, 2), rank, dtype=torch.long))  # rank r adds r+1 rows of level r
        usage.all_reduce()
        once = (usage.bin_counts.tolist(), usage.code_counts.tolist())
        usage.all_reduce()
        twice = (usage.bin_counts.tolist(), usage.code_counts.tolist())
        local = usage.local_bin_counts.tolist()
        usage.update(torch.full((1, 2), 2, dtype=torch.long))  # one more row of level 2 on each rank
        before_reduce = usage.num_samples
        usage.all_reduce()
        results[rank] = (once, twice, local, before_reduce, usage.num_samples, usage.bin_counts.tolist())


def test_all_reduce_twice_does_not_double_the_counts():
    results = _spawn(_all_reduce_twice_worker)
    for rank in range(2):
        once, twice, local, before_reduce, after, bins = results[rank]
        assert once == twice and once[0] == [[1, 2, 0], [1, 2, 0]]
        assert sum(local) == 2 * (rank + 1)  # this rank's own counts are kept apart
        assert before_reduce == 4 and after == 5  # counts added after a reduce are kept, then summed
        assert bins == [[1, 2, 2], [1, 2, 2]]


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
