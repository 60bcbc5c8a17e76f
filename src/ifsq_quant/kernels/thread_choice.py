"""How many threads the fused CPU path runs on, chosen by measuring the calls themselves.

The fused path (:mod:`.torch_fused`) runs a dozen short elementwise ops per cache-sized block,
and each op is a parallel region that ends at a barrier where every thread waits for the
slowest. On a quiet machine all threads run and a forward takes about ``1/T`` of the time it
takes on one thread. On a busy one (data-loader workers, other jobs, a server answering requests
in threads) the scheduler often takes one of the threads off its core, every region then waits
for it, and a forward can take ten times longer than on a single thread, which has no barriers.

:class:`ThreadChoice` keeps, for each kind of call, the time per element of the last
:data:`WINDOW` calls on all threads and on one thread, runs the mode whose best recent time is
lower, and times the other again after 2, 4, 8, ... calls (at most every :data:`MAX_INTERVAL`
calls), so that a change of load is followed within a hundred calls at a cost of about one
percent. The best of the recent times, not their mean: a call that the scheduler interrupted (a
time many times the usual) says nothing about the next ones, and an average would carry it for
dozens of calls, running the slower mode all that while; a lasting load slows every call of a
mode, its best included. The first call of each mode is not counted: it warms up caches and
allocations and says little about the next ones. The thread count never
changes the results: every op is elementwise and the sigmoid is computed over whole vector loops
for any count (:func:`..activations.vector_loop_size`).

The count is changed for the calling thread only, with OpenMP's ``omp_set_num_threads`` (PyTorch's
CPU builds run their parallel regions with OpenMP, whose thread count is a per-thread setting).
``torch.set_num_threads`` is not used: it also changes the default that every thread starting to
use PyTorch later inherits, and MKL's count for the whole process, so a server thread starting
during a one-thread call would keep one thread for good. Where PyTorch is not built with OpenMP, or
its OpenMP library cannot be reached, every call runs on all threads, as without this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["ThreadChoice", "ALL_THREADS", "ONE_THREAD"]

ALL_THREADS, ONE_THREAD = "all threads", "one thread"
MAX_INTERVAL = 64  # calls between two measurements of the slower mode, at most
WINDOW = 3  # the recent calls of a mode whose best time is its estimate
START_SAMPLES = 2  # calls of each mode before choosing; the first one of each only warms it up


@functools.cache
def _omp_set_num_threads():
    """OpenMP's ``omp_set_num_threads`` of the library PyTorch runs on, or None."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        function = ctypes.CDLL(None).omp_set_num_threads  # the OpenMP library torch has loaded
    except (OSError, AttributeError):  # no such symbol in the process (or no dlopen(NULL), on Windows)
        return None
    function.argtypes, function.restype = [ctypes.c_int], None
    return function


@dataclass
class _Estimates:
    """Seconds per element of each mode's recent calls, how many calls measured it, and when to measure the slower one."""

    recent: dict[str, deque] = field(default_factory=lambda: {ALL_THREADS: deque(maxlen=WINDOW), ONE_THREAD: deque(maxlen=WINDOW)})
    samples: dict[str, int] = field(default_factory=lambda: {ALL_THREADS: 0, ONE_THREAD: 0})
    interval: int = 2
    countdown: int = 0

    @property
    def seconds(self) -> dict[str, float]:
        """Each mode's estimate: the best of its recent times per element."""
        return {mode: min(times) if times else 0.0 for mode, times in self.recent.items()}

    def measured(self) -> bool:
        return min(self.samples.values()) >= START_SAMPLES

    def best(self) -> str:
        if not self.measured():
            return ALL_THREADS
        seconds = self.seconds
        return ONE_THREAD if seconds[ONE_THREAD] < seconds[ALL_THREADS] else ALL_THREADS

    def next_mode(self) -> str:
        if not self.measured():  # alternate, so that a drift in the load hits both modes alike
            return ALL_THREADS if self.samples[ALL_THREADS] <= self.samples[ONE_THREAD] else ONE_THREAD
        best = self.best()
        if self.countdown > 0:
            return best
        return ONE_THREAD if best == ALL_THREADS else ALL_THREADS

    def record(self, mode: str, seconds_per_element: float) -> None:
        was_measured, before = self.measured(), self.best()
        self.samples[mode] += 1
        if self.samples[mode] < START_SAMPLES:  # a warm-up call: not counted
            return
        self.recent[mode].append(seconds_per_element)
        if not was_measured:
            self.countdown = self.interval
        elif mode != before:  # the slower mode was measured again
            self.interval = 2 if self.best() != before else min(2 * self.interval, MAX_INTERVAL)
            self.countdown = self.interval
        else:
            self.countdown -= 1


class ThreadChoice:
    """Chooses all threads or one thread for each call of a kind (a hashable key), by timing.

    Use as ``with choice.threads(key, numel): ...``: inside the block, ``torch.get_num_threads()``
    is the chosen count for the calling thread, and the block's wall time is recorded against it.
    With one thread available, calls below ``min_elements``, or no OpenMP to set the count with,
    nothing is changed or timed. ``clock`` (seconds) is replaceable for tests.
    """

    def __init__(self, min_elements: int, clock=time.perf_counter):
        self.min_elements = min_elements
        self.clock = clock
        self.estimates: dict[object, _Estimates] = {}

    @contextlib.contextmanager
    def threads(self, key: object, numel: int) -> Iterator[str]:
        threads = torch.get_num_threads()  # also makes PyTorch set up this thread's count first
        set_threads = _omp_set_num_threads()
        if threads == 1 or numel < self.min_elements or set_threads is None:
            yield ALL_THREADS
            return
        estimates = self.estimates.setdefault(key, _Estimates())
        mode = estimates.next_mode()
        if mode == ONE_THREAD:
            set_threads(1)
        start = self.clock()
        try:
            yield mode
        finally:
            elapsed = self.clock() - start
            if mode == ONE_THREAD:
                set_threads(threads)
        estimates.record(mode, elapsed / numel)

    def modes(self) -> dict[object, str]:
        """The mode each kind of call runs in now (for reports and tests)."""
        return {key: estimates.best() for key, estimates in self.estimates.items()}
