"""CodeUsage across torch.distributed ranks: two gloo processes on this machine."""

import pytest
import torch

from ifsq_quant import FSQ, CodeUsage
from tests.distributed import gloo_group, spawn

pytestmark = pytest.mark.slow


def _all_reduce_worker(rank, world_size, port, results):
    with gloo_group(rank, world_size, port):
        usage = CodeUsage([3, 3])
        usage.update(torch.full((rank + 1, 2), rank, dtype=torch.long))  # rank r adds r+1 rows of level r
        usage.all_reduce()
        results[rank] = (usage.bin_counts.tolist(), usage.code_counts.tolist())


def test_all_reduce_sums_counts_over_two_gloo_processes():
    results = spawn(_all_reduce_worker)
    expected_bins = [[1, 2, 0], [1, 2, 0]]
    for rank in range(2):
        bins, codes = results[rank]
        assert bins == expected_bins
        assert codes[0] == 1 and codes[4] == 2 and sum(codes) == 3  # codes 0 and 1 + 3*1


def _ddp_worker(rank, world_size, port, results):
    with gloo_group(rank, world_size, port):
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
    results = spawn(_ddp_worker)
    assert results[0] == (20, 60) and results[1] == (40, 60)


def _all_reduce_twice_worker(rank, world_size, port, results):
    with gloo_group(rank, world_size, port):
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
    results = spawn(_all_reduce_twice_worker)
    for rank in range(2):
        once, twice, local, before_reduce, after, bins = results[rank]
        assert once == twice and once[0] == [[1, 2, 0], [1, 2, 0]]
        assert sum(local) == 2 * (rank + 1)  # this rank's own counts are kept apart
        assert before_reduce == 4 and after == 5  # counts added after a reduce are kept, then summed
        assert bins == [[1, 2, 2], [1, 2, 2]]


def _mismatch_worker(rank, world_size, port, results, levels_of_rank):
    with gloo_group(rank, world_size, port):
        usage = CodeUsage(levels_of_rank[rank])
        usage.update(torch.ones(3, len(levels_of_rank[rank]), dtype=torch.long))
        try:
            usage.all_reduce()
        except ValueError as error:
            message = str(error)
        else:
            message = None
        # The group is still usable: a matching reduce afterwards sums.
        same = CodeUsage([4])
        same.update(torch.tensor([[rank]]))
        same.all_reduce()
        results[rank] = (message, usage.num_samples, same.flat_bin_counts.tolist())


@pytest.mark.parametrize("levels_of_rank", [([5, 5], [5, 6]), ([6, 5], [5, 6]), ([5, 5], [5, 5, 5])],
                         ids=["one-level-differs", "same-size-swapped", "other-length"])
def test_all_reduce_refuses_ranks_of_other_levels(levels_of_rank):
    results = spawn(_mismatch_worker, levels_of_rank)
    for rank in range(2):
        message, samples, after = results[rank]
        assert message is not None, f"rank {rank} summed counts of other levels"
        assert "levels" in message
        assert str(levels_of_rank[0]) in message and str(levels_of_rank[1]) in message
        assert samples == 3  # nothing was summed
        assert after == [1, 1, 0, 0]


def _codes_mismatch_worker(rank, world_size, port, results):
    with gloo_group(rank, world_size, port):
        usage = CodeUsage([5, 5], max_counted_codebook=25 if rank == 0 else 0)
        try:
            usage.all_reduce()
        except ValueError as error:
            results[rank] = str(error)
        else:
            results[rank] = None


def test_all_reduce_refuses_ranks_that_count_codes_differently():
    results = spawn(_codes_mismatch_worker)
    for rank in range(2):
        assert results[rank] is not None and "max_counted_codebook" in results[rank]


def _load_after_reduce_worker(rank, world_size, port, results):
    with gloo_group(rank, world_size, port):
        usage = CodeUsage([3, 3])
        usage.update(torch.full((rank + 1, 2), rank, dtype=torch.long))  # rank r adds r+1 rows of level r
        usage.all_reduce()
        reduced = usage.num_samples
        saved = CodeUsage([3, 3])
        saved.update(torch.full((7, 2), 2, dtype=torch.long))  # a checkpoint of 7 samples in total
        usage.load_state_dict(saved.state_dict())
        loaded = (usage.num_samples, usage.bin_counts.tolist(), sum(usage.code_counts.tolist()))
        usage.all_reduce()  # every rank loaded the 7: they are each rank's own counts now
        results[rank] = (reduced, loaded, usage.num_samples)


def test_load_state_dict_after_all_reduce_forgets_the_other_ranks():
    results = spawn(_load_after_reduce_worker)
    for rank in range(2):
        reduced, (samples, bins, codes), after = results[rank]
        assert reduced == 3
        assert samples == 7 and codes == 7 and bins == [[0, 0, 7], [0, 0, 7]]
        assert after == 14
