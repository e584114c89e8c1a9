import os
import tempfile

# Before anything imports Prefect: a throwaway Prefect home and model cache, offline-friendly settings.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="gradcam-audit-test-prefect-")
os.environ["GRADCAM_AUDIT_CACHE"] = tempfile.mkdtemp(prefix="gradcam-audit-test-cache-")
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"  # nothing left to flush when the server stops
from pipeline.settings import apply_environment_defaults  # noqa: E402

apply_environment_defaults()
# Prefect binds its log handlers to the stderr of the moment it is imported: import it now, outside any test's
# capsys, so no handler is left writing to a test's closed capture stream.
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pipeline.flows  # noqa: E402, F401


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
