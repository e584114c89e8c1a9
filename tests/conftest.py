import atexit
import os
import shutil
import tempfile

# Before anything imports Prefect: a throwaway temporary directory (what the tests, TensorFlow Datasets and the
# runs they start write there: tfds leaves an empty one each time it looks for a dataset's metadata offline), Prefect
# home and model cache, offline-friendly settings. Removed at the end of the session (registered first, so run last:
# after Prefect's temporary server has stopped).
os.environ["TMPDIR"] = tempfile.tempdir = tempfile.mkdtemp(prefix="gradcam-audit-test-tmp-")
atexit.register(shutil.rmtree, tempfile.tempdir, ignore_errors=True)
for variable, prefix in (("PREFECT_HOME", "gradcam-audit-test-prefect-"),
                         ("GRADCAM_AUDIT_CACHE", "gradcam-audit-test-cache-")):
    os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, os.environ[variable], ignore_errors=True)
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"  # nothing left to flush when the server stops
from pipeline.settings import apply_environment_defaults  # noqa: E402

apply_environment_defaults()
# Prefect binds its log handlers to the stderr of the moment it is imported: import it now, outside any test's
# capsys, so no handler is left writing to a test's closed capture stream.
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import pipeline.flows  # noqa: E402, F401
from pipeline import findings, heatmaps  # noqa: E402
from pipeline.datasets import FolderSource, SourceSpec  # noqa: E402
from pipeline.heatmaps import upsample  # noqa: E402


def small_cnn(num_classes: int = 3, head: str = "dense-softmax", seed: int = 0) -> keras.Model:
    """A tiny functional CNN on 16x16 RGB; ``head`` picks how the class scores leave the model."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if head == "dense-softmax":
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    elif head == "softmax-layer":
        outputs = keras.layers.Softmax()(keras.layers.Dense(num_classes, name="head")(x))
    elif head == "activation-layer":
        outputs = keras.layers.Activation("softmax")(keras.layers.Dense(num_classes, name="head")(x))
    elif head == "logits":
        outputs = keras.layers.Dense(num_classes, name="head")(x)
    else:
        raise ValueError(head)
    return keras.Model(inputs, outputs)


def same_evidence(samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` with the given label's CAM's statistics (``label_*``) equal to the predicted class's: what the
    scan computes for a model that predicts every given label."""
    from pipeline.samples import LABEL_STATISTICS

    return samples.assign(**{f"label_{name}": samples[name] for name in LABEL_STATISTICS if name in samples})


HOSTILE = ("<img src=x onerror=alert(1)>", 'quote"s\'', "&amp;..")  # folder names cannot hold '/


def hostile_audit(root: Path, n: int = 30) -> tuple[FolderSource, findings.AuditTables]:
    """A tiny audit of a real image folder whose class and file names carry HTML, script, quotes and '../'."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "data" / HOSTILE[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"<svg onload=alert({i})>..png")
    source = FolderSource(SourceSpec(kind="folder", name=str(root / "data")))
    class_names = source.class_names
    ids, labels = source.sample_ids, source.labels
    probs = rng.dirichlet(np.ones(3), n).astype(np.float32)
    cams = rng.uniform(0, 1, (n, 4, 4)).astype(np.float32)
    mass, valid = heatmaps.to_mass(upsample(cams, (16, 16)))
    samples = pd.DataFrame({
        "sample_id": ids, "label": labels, "pred": probs.argmax(1), "confidence": probs.max(1),
        "label_prob": probs[np.arange(n), labels], "cam_valid": valid,
        **heatmaps.summarise(mass, rng.uniform(0, 1, (n, 16, 16)) > 0.5),
    })
    # The given label's CAMs taken as the predicted ones (what this audit checks is the escaping of names).
    tables = findings.build_tables(same_evidence(samples), probs, cams, cams, class_names, (16, 16),
                                   findings.Thresholds())
    # Duplicates name samples too: a pair of two hostile file names.
    tables.duplicates = pd.DataFrame({"sample_id_a": [ids[0]], "split_a": ["all"], "sample_id_b": [ids[1]],
                                      "split_b": ["all"], "similarity": [0.99], "kind": ["near"]})
    tables.meta = {
        "run_id": "r", "dataset": {"name": "<b>set</b>", "split": "test", "classes": list(class_names),
                                   "fingerprint": "f", "planted": None},
        "model": {"name": "m", "origin": "user model", "layer": "<i>layer</i>", "fingerprint": "g"},
        "config": {"method": "gradcam", "out": "<script>x</script>"}, "results": {"accuracy": 0.5, "samples": n},
        "skipped": [], "warnings": ["<script>warn()</script>"], "thresholds": findings.Thresholds().as_dict(),
        "versions": {"gradcam-audit": "0"}, "timings": {"total_s": 1.0}, "validation": None,
    }
    return source, tables


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="session", autouse=True)
def stop_prefect_ephemeral_server():
    """Stop Prefect's ephemeral API server at the end of the session, while pytest's streams are still open
    (Prefect would otherwise log its shutdown into a closed capture stream at interpreter exit)."""
    yield
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        if server.running:
            server.stop()
