"""gradcam-audit: what does an image classifier really look at, across a whole dataset?

``audit`` runs an audit (the Prefect flow :func:`pipeline.flows.audit_flow`) and returns its tables; TensorFlow and
Prefect are imported only when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import AuditError

if TYPE_CHECKING:
    from .config import AuditConfig, AuditResult

__all__ = ["AuditConfig", "AuditError", "AuditResult", "audit"]


def __getattr__(name: str):
    # AuditConfig and AuditResult on first use: their module imports pandas, which a process importing one light
    # module of the package (the foreground estimate's workers, pipeline._workers) does not need (about 75 MB each).
    if name in ("AuditConfig", "AuditResult"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def audit(dataset: str = "demo", split: str | None = None, *, progress=None, **options) -> AuditResult:
    """Audit every sample of ``split`` of ``dataset`` and write its report.

    ``options`` are the fields of :class:`AuditConfig` (``model``, ``layer``, ``batch_size``, ``out``, ...);
    ``progress``, if given, is called as ``progress(samples_done, total, images_per_second)`` after every shard.
    Returns an :class:`AuditResult` with the report directory and the ``samples`` and ``classes`` DataFrames.
    Raises :class:`AuditError` for a mistake in the options or the inputs.
    """
    import dataclasses
    from datetime import datetime

    from .config import AuditConfig
    from .settings import apply_environment_defaults

    known = {f.name for f in dataclasses.fields(AuditConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AuditError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = AuditConfig(dataset=dataset, split=split, **options)
    apply_environment_defaults()
    from ._server import ServerStart

    server = ServerStart()  # Prefect's server starts while TensorFlow imports
    from .flows import audit_flow, task_runner
    from .runs import check_config, default_out_dir

    source = check_config(config)  # user errors surface here, before the flow starts
    if config.out is None:
        config = dataclasses.replace(config, out=str(default_out_dir(source, datetime.now())))
    server.wait()
    runner = task_runner(config)
    if runner is None:
        return audit_flow(**config.as_dict(), progress=progress)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The local cluster's workers report their shards to the server started here (each would otherwise start a
    # temporary server of its own, another process beside the audit's); a remote cluster's workers cannot reach it,
    # and use the server PREFECT_API_URL names, if any.
    local = {PREFECT_API_URL: server.api_url} if server.api_url and config.workers else {}
    with temporary_settings(local):
        return audit_flow.with_options(task_runner=runner)(**config.as_dict(), progress=progress)
