"""CodeUsage across torch.distributed ranks: two gloo processes on this machine."""

import contextlib
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ifsq_quant import FSQ, CodeUsage

pytestmark = pytest.mark.slow


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


def _spawn(worker, *args, world_size=2, timeout=120):
    """Runs ``worker(rank, world_size, port, results, *args)`` in ``world_size`` processes; returns ``results``.

    A worker that dies (a crash inside a collective) or hangs past ``timeout`` seconds fails the test.
    """
    results = mp.Manager().dict()
    context = mp.spawn(worker, args=(world_size, _free_port(), results, *args), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {world_size} workers did not finish within {timeout} s")
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


def _mismatch_worker(rank, world_size, port, results, levels_of_rank):
    with _gloo_group(rank, world_size, port):
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
    results = _spawn(_mismatch_worker, levels_of_rank)
    for rank in range(2):
        message, samples, after = results[rank]
        assert message is not None, f"rank {rank} summed counts of other levels"
        assert "levels" in message
        assert str(levels_of_rank[0]) in message and str(levels_of_rank[1]) in message
        assert samples == 3  # nothing was summed
        assert after == [1, 1, 0, 0]


def _codes_mismatch_worker(rank, world_size, port, results):
    with _gloo_group(rank, world_size, port):
        usage = CodeUsage([5, 5], max_counted_codebook=25 if rank == 0 else 0)
        try:
            usage.all_reduce()
        except ValueError as error:
            results[rank] = str(error)
        else:
            results[rank] = None


def test_all_reduce_refuses_ranks_that_count_codes_differently():
    results = _spawn(_codes_mismatch_worker)
    for rank in range(2):
        assert results[rank] is not None and "max_counted_codebook" in results[rank]


def _load_after_reduce_worker(rank, world_size, port, results):
    with _gloo_group(rank, world_size, port):
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
    results = _spawn(_load_after_reduce_worker)
    for rank in range(2):
        reduced, (samples, bins, codes), after = results[rank]
        assert reduced == 3
        assert samples == 7 and codes == 7 and bins == [[0, 0, 7], [0, 0, 7]]
        assert after == 14
