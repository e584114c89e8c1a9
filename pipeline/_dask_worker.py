"""Set-up run in every worker process of the local Dask cluster as it starts (a Dask preload; see
:func:`pipeline.flows.task_runner`).

When the cluster closes, or after a worker was killed and its nanny started a new one, a worker can send its heartbeat
to a scheduler that has just gone, and the scheduler can write to a worker that has just gone. ``distributed`` logs
those races with full tracebacks (the first at ERROR, the second at INFO), which a user reads as a crash of a run that
completed. So, in the workers and in the process that runs the flow, ``distributed`` logs at WARNING and above only
(its INFO lines are the cluster's own chatter: workers registered, streams closed), and the failed heartbeat is one
line at WARNING with the error's text.
"""

from __future__ import annotations

import logging
import os

#: Set by :func:`pipeline.flows.task_runner` for a local cluster: the cores each worker's TensorFlow may use (the
#: machine's divided among the workers; each would otherwise use all of them, and the workers fight over the cores).
THREADS_ENV = "GRADCAM_AUDIT_WORKER_THREADS"
_HEARTBEAT = "Failed to communicate with scheduler during heartbeat"


class HeartbeatFailure(logging.Filter):
    """Rewrite ``distributed.worker``'s failed-heartbeat record as one line; every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_HEARTBEAT):
            error = record.exc_info[1] if record.exc_info else None
            record.msg, record.args = "heartbeat: the scheduler could not be reached (%s)", (error,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet() -> None:
    """``distributed`` logs WARNING and above in this process."""
    logging.getLogger("distributed").setLevel(logging.WARNING)


def tensorflow_threads() -> int:
    """The threads this process's TensorFlow runs an operation on (0: its default, every core)."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads()


def dask_setup(worker) -> None:  # called by distributed's preloading with the worker being started
    quiet()
    logging.getLogger("distributed.worker").addFilter(HeartbeatFailure())
    if os.environ.get(THREADS_ENV):  # before TensorFlow runs anything in this process
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(os.environ[THREADS_ENV]))
