"""The fused CPU path's choice between all threads and one (kernels/thread_choice.py)."""

import threading

import pytest
import torch

from ifsq_quant import iFSQ
from ifsq_quant.kernels import thread_choice, torch_fused
from ifsq_quant.kernels.thread_choice import ALL_THREADS, MAX_INTERVAL, ONE_THREAD, ThreadChoice

pytestmark = pytest.mark.skipif(thread_choice._omp_set_num_threads() is None,
                                reason="PyTorch is not built with OpenMP here: every call runs on all threads")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class FakeClock:
    """A clock that advances by ``cost[mode]`` seconds at each reading, the mode being the one the
    calling thread runs in (2 threads: all; 1: one): a timed block lasts ``cost[its mode]``."""

    def __init__(self, cost):
        self.cost, self.now = dict(cost), 0.0

    def __call__(self):
        self.now += self.cost[ALL_THREADS if torch.get_num_threads() == 2 else ONE_THREAD]
        return self.now

    def run(self, choice, calls, numel=1000, key="k"):
        """Run ``calls`` timed blocks; returns the modes they ran in and the thread counts seen inside."""
        modes, counts = [], []
        for _ in range(calls):
            with choice.threads(key, numel) as mode:
                modes.append(mode)
                counts.append(torch.get_num_threads())
        return modes, counts


def test_runs_on_one_thread_when_all_threads_are_slower(two_threads):
    clock = FakeClock({ALL_THREADS: 10.0, ONE_THREAD: 1.0})
    choice = ThreadChoice(min_elements=100, clock=clock)
    modes, counts = clock.run(choice, 50)
    assert modes[:4] == [ALL_THREADS, ONE_THREAD] * 2  # each mode is measured twice first, alternately
    assert modes[4:].count(ONE_THREAD) >= 40  # then the faster, with checks of the other after 2, 4, 8, ... calls
    assert counts == [2 if m == ALL_THREADS else 1 for m in modes]
    assert choice.modes() == {"k": ONE_THREAD}
    assert torch.get_num_threads() == 2  # restored after every call


def test_measures_the_slower_mode_rarely_and_follows_a_change_of_load(two_threads):
    clock = FakeClock({ALL_THREADS: 1.0, ONE_THREAD: 2.0})
    choice = ThreadChoice(min_elements=100, clock=clock)
    modes, _ = clock.run(choice, 2000)
    assert choice.modes() == {"k": ALL_THREADS}
    # the intervals between measurements double up to MAX_INTERVAL: 2 + log2(64) + 1870/64 of them
    assert modes.count(ONE_THREAD) <= 40
    assert modes[-MAX_INTERVAL - 1:].count(ONE_THREAD) >= 1
    clock.cost = {ALL_THREADS: 10.0, ONE_THREAD: 2.0}  # the machine gets busy
    modes, _ = clock.run(choice, MAX_INTERVAL + 10)
    assert choice.modes() == {"k": ONE_THREAD}
    assert modes[-5:] == [ONE_THREAD] * 5


def test_kinds_of_call_are_measured_apart(two_threads):
    clock = FakeClock({ALL_THREADS: 10.0, ONE_THREAD: 1.0})
    choice = ThreadChoice(min_elements=100, clock=clock)
    clock.run(choice, 5, key="a")
    clock.cost = {ALL_THREADS: 1.0, ONE_THREAD: 10.0}
    clock.run(choice, 5, key="b")
    assert choice.modes() == {"a": ONE_THREAD, "b": ALL_THREADS}


def test_small_calls_and_one_thread_are_left_alone(two_threads):
    clock = FakeClock({ALL_THREADS: 10.0, ONE_THREAD: 1.0})
    choice = ThreadChoice(min_elements=100, clock=clock)
    assert clock.run(choice, 10, numel=99) == ([ALL_THREADS] * 10, [2] * 10)
    torch.set_num_threads(1)
    assert clock.run(choice, 10) == ([ALL_THREADS] * 10, [1] * 10)
    assert choice.modes() == {}


def test_an_error_inside_restores_the_thread_count(two_threads):
    clock = FakeClock({ALL_THREADS: 10.0, ONE_THREAD: 1.0})
    choice = ThreadChoice(min_elements=100, clock=clock)
    clock.run(choice, 3)  # all threads measured twice, one thread once: the next call runs on one
    with pytest.raises(RuntimeError, match="inside"):
        with choice.threads("k", 1000) as mode:
            assert mode == ONE_THREAD and torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_one_thread_is_set_for_the_calling_thread_only(two_threads):
    """A one-thread call changes neither another thread's count nor the default a new thread gets."""
    clock = FakeClock({ALL_THREADS: 10.0, ONE_THREAD: 1.0})
    choice = ThreadChoice(min_elements=100, clock=clock)
    clock.run(choice, 3)
    seen = {}
    with choice.threads("k", 1000) as mode:
        assert mode == ONE_THREAD and torch.get_num_threads() == 1
        worker = threading.Thread(target=lambda: seen.update(count=torch.get_num_threads()))
        worker.start()
        worker.join()
    assert seen == {"count": 2}


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_fused_path_on_one_thread_gives_the_reference_bit_for_bit(two_threads, monkeypatch, activation):
    """Large calls (above one block) run under the choice; forced to one thread, every output is
    still the reference's: codes, indices and the straight-through gradient."""
    clock = FakeClock({ALL_THREADS: 10.0, ONE_THREAD: 1.0})
    choice = ThreadChoice(min_elements=torch_fused.BLOCK_ELEMENTS, clock=clock)
    monkeypatch.setattr(torch_fused, "THREADS", choice)
    z = torch.randn(300_001, 4) * 2  # 1.2M elements: above one block
    reference = iFSQ([17] * 4, activation=activation, backend="reference")
    fused = iFSQ([17] * 4, activation=activation, backend="torch")
    z_ref = z.clone().requires_grad_()
    codes_ref, idx_ref = reference(z_ref)
    codes_ref.square().sum().backward()
    for _ in range(5):  # all threads, one thread, twice each, then the faster (one)
        z_f = z.clone().requires_grad_()
        codes, idx = fused(z_f)
        codes.square().sum().backward()
        assert torch.equal(codes, codes_ref) and torch.equal(idx, idx_ref)
        torch.testing.assert_close(z_f.grad, z_ref.grad, rtol=1e-6, atol=1e-6)
    assert set(choice.modes().values()) == {ONE_THREAD}
    assert clock.now > 0  # the calls were timed by the choice


def test_one_interrupted_call_does_not_decide_for_dozens(two_threads):
    """A call the scheduler interrupted (a hundred times the usual time) on all threads moves the choice
    to one thread for at most a few calls: the estimate is the best recent time, not an average."""
    clock = FakeClock({ALL_THREADS: 1.0, ONE_THREAD: 2.0})
    choice = ThreadChoice(min_elements=100, clock=clock)
    clock.run(choice, 20)
    assert choice.modes() == {"k": ALL_THREADS}
    clock.cost = {ALL_THREADS: 100.0, ONE_THREAD: 2.0}  # one interrupted call on all threads ...
    while clock.run(choice, 1)[0] != [ALL_THREADS]:
        pass
    clock.cost = {ALL_THREADS: 1.0, ONE_THREAD: 2.0}  # ... then the machine is as before
    modes, _ = clock.run(choice, 20)
    assert modes.count(ONE_THREAD) <= 2 and choice.modes() == {"k": ALL_THREADS}
