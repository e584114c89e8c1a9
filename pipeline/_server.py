"""Prefect's temporary API server for a local audit, started while TensorFlow imports.

The server is a process of its own that takes about 3 s to answer here, and importing TensorFlow takes about 4 s of
the audit's process: started in a thread before that import, the server is up when the flow needs it (2.5 s sooner
than one started after it). The thread only launches the server and polls it: Prefect's server module is imported
beforehand, in the calling thread, so no two threads ever import at once.
"""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path


class ServerStart:
    """The start of Prefect's temporary server in a thread; :meth:`wait` returns once it answers (or re-raises why it
    did not). A no-op when a server is configured (``PREFECT_API_URL``) or this process already runs one."""

    def __init__(self):
        import prefect.main  # noqa: F401  (sets up Prefect's logging, so that the server's start is logged)
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME

        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: The started server's API, once :meth:`wait` returned; None when none was started here.
        self.api_url: str | None = None
        if PREFECT_API_URL.value():  # a configured server: nothing to start
            return
        home = Path(PREFECT_HOME.value())
        home.mkdir(parents=True, exist_ok=True)
        # Not a daemon: an interrupted audit waits for the start to end, so that the server's own exit handler (which
        # it registers once launched) stops it; the supervisor's grace period bounds the wait.
        self._thread = threading.Thread(target=self._start, args=(SubprocessASGIServer, home),
                                        name="gradcam-audit-server-start")
        self._thread.start()

    def _start(self, server_class, home: Path) -> None:
        # Runs started together on a fresh Prefect home would otherwise start two servers that run the database
        # migrations of the same SQLite file at once (one fails with "duplicate column name"): a lock on
        # $PREFECT_HOME/.gradcam-audit-server.lock orders the starts. The flow then reuses this process's server
        # (Prefect keeps one per process).
        try:
            with open(home / ".gradcam-audit-server.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                server = server_class()
                server.start()
                self.api_url = server.api_url
        except BaseException as err:  # re-raised in the caller's thread by wait()
            self._error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
