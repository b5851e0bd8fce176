"""A pytest-benchmark timer that reads GPU time from CUDA events.

pytest-benchmark times a round as ``timer()`` before the call minus ``timer()`` after it, on the host.
GPU work is asynchronous, so a host clock would measure the launch, not the kernels. ``CudaEventClock``
is a drop-in timer (``@pytest.mark.benchmark(timer=CLOCK)``) whose readings are GPU time:

* every reading records a CUDA event on the current stream;
* ``arm()`` (called from ``benchmark.pedantic``'s ``setup``, after the L2 flush was enqueued) marks the
  next reading as the start of a timed call: it records the start event and returns at once, without
  synchronising, so the GPU is still busy with the flush while the host launches the call -- no idle
  launch gap lands inside the measurement (the ``triton.testing.do_bench`` pattern);
* any other reading waits for its event and returns the clock advanced by the GPU time elapsed since
  the previous event (for an armed pair: since the start event).

So ``end - start`` of an armed pair is exactly ``start_event.elapsed_time(end_event)``, in seconds, and
the readings are a monotonic float64 clock (each interval is measured between two nearby events, so
precision does not decay as the session goes on). The event factory is injectable for CPU tests.
"""

from __future__ import annotations

from typing import Callable, Optional


def _cuda_event():
    import torch

    return torch.cuda.Event(enable_timing=True)


class CudaEventClock:
    """A monotonic clock in seconds of GPU time; see the module docstring."""

    # pytest-benchmark names the timer in saved results from __module__ and __name__
    __name__ = "CudaEventClock"

    def __init__(self, event_factory: Optional[Callable[[], object]] = None):
        self._new_event = event_factory or _cuda_event
        self._seconds = 0.0
        self._last_event = None  # the event the current reading is relative to
        self._armed = False

    def arm(self) -> None:
        """Make the next reading the (non-blocking) start of a timed call."""
        self._armed = True

    def __call__(self) -> float:
        event = self._new_event()
        event.record()
        if self._armed:
            # start of a timed call: no synchronisation; the reading is the clock as it stands
            self._armed = False
            self._last_event = event
            return self._seconds
        event.synchronize()
        if self._last_event is not None:
            self._seconds += self._last_event.elapsed_time(event) / 1e3  # elapsed_time is in ms
        self._last_event = event
        return self._seconds


# the one clock of the perf suite (a test module marks itself with pytest.mark.benchmark(timer=CLOCK))
CLOCK = CudaEventClock()
