"""Where gradcam-audit keeps things, and the environment defaults it needs before Prefect is imported."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Trained reference models and Prefect results: ``$GRADCAM_AUDIT_CACHE``, else ``~/.cache/gradcam-audit``."""
    return Path(os.environ.get("GRADCAM_AUDIT_CACHE", Path.home() / ".cache" / "gradcam-audit"))


#: Set only when the user has not set them: offline-friendly Prefect and quiet TensorFlow.
OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The ephemeral API server took 10-38 s to start on a loaded 2-core machine; Prefect's default is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def apply_environment_defaults() -> None:
    """Fill in :data:`OFFLINE_DEFAULTS` and Prefect's result storage (``<cache>/prefect-results``) where unset."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(cache_dir() / "prefect-results"))
