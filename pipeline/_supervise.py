"""Run an audit command in a child process that a terminal's Ctrl-C cannot tear apart.

A terminal sends Ctrl-C (SIGINT) to every process of its foreground process group. An audit's Prefect server is a
process of its own: hit by the same SIGINT it dies while the flow still needs it, and the flow then hangs retrying
it. So the CLI runs the audit in a child process in a session of its own (with its server, and its Dask workers),
and itself only forwards signals:

- the first SIGINT or SIGTERM is passed to the child alone, as SIGINT: the audit stops at the next Python
  instruction, records the crash with the server that is still alive, removes its temporary files, stops its server
  and exits 130 with one line saying what was kept;
- a second one, or a child still running :data:`GRACE_SECONDS` later, ends the child's whole process group
  (SIGKILL): nothing of the run is left running;
- if this process dies without a chance to forward anything (SIGKILL), the kernel sends the child SIGTERM
  (``PR_SET_PDEATHSIG``), which it treats as the first Ctrl-C.

The child and everything it starts get a temporary directory of their own (``TMPDIR``), removed when the child has
ended however it ended: TensorFlow's AutoGraph writes a ``__autograph_generated_file*.py`` per converted function and
removes it only at a normal interpreter exit, which a killed process, or a worker process ending with ``os._exit``,
never reaches. The named semaphores of the foreground estimate's worker pool (:mod:`pipeline._workers`), which its
resource tracker unlinks unless it is killed with the group, are removed then too. Should the supervisor itself be
killed, the child removes its temporary directory as it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

#: How long an interrupted audit may take to stop cleanly before its process group is killed.
GRACE_SECONDS = 20.0
#: Set in the child's environment: the process that does the audit (and must not supervise again).
CHILD_ENV = "GRADCAM_AUDIT_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def is_child() -> bool:
    """Whether this process is the supervised audit itself."""
    return os.environ.get(CHILD_ENV) is not None


class Interrupts:
    """The child's handler of SIGINT and SIGTERM: it raises KeyboardInterrupt like Python's own, and remembers that
    it did, because libraries the interrupt passes through may turn it into an exception of their own (a
    ``PydanticSerializationError`` while Prefect's server starts): any exception after an interrupt is the
    interrupt."""

    def __init__(self):
        self.received = False

    def __call__(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt


def become_child() -> Interrupts:
    """In the child: SIGINT and SIGTERM interrupt the audit, and so does the supervisor's death (Linux), also if it
    already happened. Returns the handler, which says whether an interrupt came."""
    interrupts = Interrupts()
    atexit.register(remove_scratch_if_orphaned)  # first registered, so run last: after AutoGraph removes its files
    signal.signal(signal.SIGINT, interrupts)
    signal.signal(signal.SIGTERM, interrupts)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != os.environ.get(CHILD_ENV):
        interrupts(signal.SIGTERM, None)  # the supervisor died before the line above took effect
    return interrupts


def run_supervised(argv: list[str]) -> int:
    """Run ``python -m pipeline *argv`` as a supervised child and return its exit status (130 when interrupted)."""
    scratch = tempfile.mkdtemp(prefix="gradcam-audit-")
    child = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], start_new_session=True,
                             env=os.environ | {CHILD_ENV: str(os.getpid()), "TMPDIR": scratch})
    signals = []

    def forward(signum, frame):
        signals.append(time.monotonic())
        try:
            if len(signals) == 1:
                os.kill(child.pid, signal.SIGINT)
            else:
                os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                status = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if signals and time.monotonic() - signals[0] > GRACE_SECONDS:
                    forward(signal.SIGTERM, None)
        # Whatever the child left behind (a server, a Dask worker's server) goes with its group, and what the group
        # could not remove for being killed with it goes after.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _remove_leftovers(child.pid, scratch)
    finally:  # a further Ctrl-C during the clean-up is forwarded (to no one), not raised
        for s, handler in previous.items():
            signal.signal(s, handler)
    if signals and status != 0:  # an audit that finished while being interrupted keeps its success
        if status not in (130, 2):
            print("gradcam-audit: interrupted; no report was written", file=sys.stderr)
        return 130
    if status < 0:  # killed by a signal nobody here sent (the kernel's out-of-memory killer, say)
        print(f"gradcam-audit: error: the audit process was killed by signal {-status} "
              f"({signal.Signals(-status).name}); no report was written", file=sys.stderr)
        return 128 - status
    return status


def _remove_leftovers(child: int, scratch: str) -> None:
    """The child's temporary directory, and the named semaphores of its foreground workers' executor (loky names them
    ``/dev/shm/sem.loky-<pid>-*``; its resource tracker, killed with the group, would have unlinked them)."""
    for _ in range(3):  # a process of the group dying just now may still write a file
        shutil.rmtree(scratch, ignore_errors=True)
        if not os.path.exists(scratch):
            break
        time.sleep(0.2)
    for semaphore in glob.glob(f"/dev/shm/sem.loky-{child}-*"):
        with contextlib.suppress(OSError):
            os.unlink(semaphore)


def remove_scratch_if_orphaned() -> None:
    """At the child's exit: its temporary directory, if the supervisor that would have removed it is gone."""
    if str(os.getppid()) != os.environ.get(CHILD_ENV) and "gradcam-audit-" in os.environ.get("TMPDIR", ""):
        shutil.rmtree(os.environ["TMPDIR"], ignore_errors=True)
