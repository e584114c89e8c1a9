"""Worker processes for a shard's single-threaded CPU work, run beside its Grad-CAM: the foreground estimate.

The estimate (:mod:`pipeline.foreground`) is Python and NumPy on one core (threads were measured: the GIL wins). In
the audit's process it held one core while the other idled, and the batch's Grad-CAM waited for it; in
:data:`PROCESSES` worker processes it runs while the audit's process computes the batch's Grad-CAM.

The workers are loky's reusable executor: spawned, not forked from a process that runs TensorFlow's threads; unlike
the standard library's spawned workers they do not import the main module (a script without an
``if __name__ == "__main__"`` guard would run again in each), and a worker that dies is replaced. The flow stops
them at the end of an audit (:func:`stop`); idle ones end by themselves after :data:`IDLE_SECONDS`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError

import loky
import numpy as np
from loky.process_executor import ShutdownExecutorError

#: Worker processes of an audit that runs its shards in its own process (its Grad-CAM already uses every core, so
#: more would only queue). Shards on Dask workers estimate in the worker's own process: they already run side by side.
PROCESSES = min(2, loky.cpu_count())
#: Batches of fewer items are computed in the calling process: sending them costs more than it saves.
MIN_ITEMS = 32
#: Idle workers end after this long: longer than any batch's Grad-CAM (they wait through it).
IDLE_SECONDS = 300

_log = logging.getLogger(__name__)
_UNAVAILABLE = (BrokenExecutor, CancelledError, ShutdownExecutorError)


class Pending:
    """``function(items)``, computed in parts by the worker processes (or here, on :meth:`result`)."""

    def __init__(self, function: Callable[[np.ndarray], np.ndarray], items: np.ndarray, futures: list | None):
        self._function, self._items, self._futures = function, items, futures

    def result(self) -> np.ndarray:
        """The parts' results concatenated, as ``function(items)`` would return them; computed here when the items
        were too few, or a worker died meanwhile (the next batch gets new workers)."""
        if self._futures is not None:
            try:
                return np.concatenate([future.result() for future in self._futures])
            except _UNAVAILABLE as err:
                _log.warning("a worker process of the foreground estimate ended (%s); this batch is estimated in the "
                             "audit's process", type(err).__name__)
        return self._function(self._items)


def split_map(function: Callable[[np.ndarray], np.ndarray], items: np.ndarray, processes: int) -> Pending:
    """Start ``function`` on ``processes`` consecutive parts of ``items`` in the worker processes; ``function`` must
    map an array to one row per item, and be importable (a module-level function). With fewer than two processes
    or :data:`MIN_ITEMS` items, nothing is started."""
    if processes < 2 or len(items) < MIN_ITEMS:
        return Pending(function, items, None)
    try:
        executor = _executor(processes)
        return Pending(function, items, [executor.submit(function, part) for part in np.array_split(items, processes)])
    except _UNAVAILABLE:  # its workers died since it was handed out: computed here, on result()
        return Pending(function, items, None)


def start(processes: int) -> None:
    """Start the worker processes now (about a second each, mostly importing NumPy and scikit-image), so that they
    are ready for the first batch."""
    if processes >= 2:
        executor = _executor(processes)
        for _ in range(processes):
            executor.submit(int)


def stop() -> None:
    """End the worker processes, if any were started (:func:`start` and :func:`split_map` start them again)."""
    global _started
    executor, _started = _started, None
    if executor is not None:
        executor.shutdown(wait=True)


_started = None  # the executor last handed out, for stop()


def _executor(processes: int):
    global _started
    _started = loky.get_reusable_executor(max_workers=processes, timeout=IDLE_SECONDS, initializer=_worker_start)
    return _started


def _worker_start() -> None:
    # An interrupt is the audit's to handle (it stops the workers), not each worker's to print.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
