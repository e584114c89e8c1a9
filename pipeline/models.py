"""Models to audit: a user's saved model (loaded in Keras safe mode) or a small reference CNN trained and cached here.

Reference models carry their own ``Rescaling`` layer, so they take raw 0-255 pixels like every batch a source yields.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .errors import AuditError


@dataclass(frozen=True)
class TrainConfig:
    """How a reference model is trained; part of its cache key."""

    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 3e-3
    width: int = 16
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainedModel:
    model: keras.Model
    path: Path
    fingerprint: str
    history: dict  # train/validation accuracy per epoch
    seconds: float  # training time (0 when loaded from the cache)
    cached: bool


def build_reference_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> keras.Model:
    """A compact VGG-style CNN: three conv stages with BatchNorm, global average pooling, a softmax classifier.

    The last conv stage keeps a quarter of the input resolution (8x8 on 32x32 images) for Grad-CAM.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for i in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{stage + 1}_{i + 1}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{stage + 1}_{i + 1}")(x)
            x = keras.layers.ReLU(name=f"relu{stage + 1}_{i + 1}")(x)
        if stage < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{stage + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="reference_cnn")


def reference_input_size(natural_size: tuple[int, int] | None) -> tuple[int, int]:
    """Input size of a reference CNN: the images' own size when they are all small (<= 64 px), else 96 x 96.

    Photos are audited at this reduced resolution when no model is given; the report says so.
    """
    if natural_size is not None and max(natural_size) <= 64:
        return tuple(natural_size)
    return (96, 96)


def fingerprint_model(model: keras.Model) -> str:
    """A hash of the model's architecture and weights (first 16 hex digits of SHA-256)."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def check_model_file(path: str | Path) -> Path:
    """The path of an existing ``.keras`` or ``.h5`` file, or an :class:`AuditError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"model file {str(path)!r} does not exist")
    if path.suffix not in (".keras", ".h5"):
        raise AuditError(f"model file {str(path)!r} must be a .keras or .h5 file saved by Keras")
    return path


def load_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` classifier in Keras safe mode (no arbitrary code from the file)."""
    path = check_model_file(path)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as err:
        raise AuditError(f"could not load model {str(path)!r} in safe mode: {err}") from err


def train_reference_model(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cache_dir: Path,
    dataset_fingerprint: str,
    config: TrainConfig = TrainConfig(),
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[str], None] = print,
) -> TrainedModel:
    """Train (or load from ``cache_dir``) a reference CNN on uint8 images (N, H, W, 3) with integer labels.

    The cache key covers the dataset fingerprint, the training configuration and the TensorFlow/Keras versions, so
    an unchanged dataset is never trained on twice.
    """
    key_source = json.dumps(
        {"data": dataset_fingerprint, "train": config.as_dict(), "tf": tf.__version__, "keras": keras.__version__},
        sort_keys=True,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"reference-{key}.keras"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model = load_model(path)
        return TrainedModel(model, path, fingerprint_model(model), json.loads(meta_path.read_text()), 0.0, True)

    keras.utils.set_random_seed(config.seed)
    model = build_reference_cnn(images.shape[1:], num_classes, config.width)
    steps = int(np.ceil(len(images) / config.batch_size)) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=config.learning_rate,
                                                      warmup_steps=max(1, steps // 10))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    train = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=config.seed)
        .map(lambda x, y: (tf.image.random_flip_left_right(tf.cast(x, tf.float32), seed=config.seed), y))
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = None
    if validation is not None:
        val = tf.data.Dataset.from_tensor_slices(validation).map(lambda x, y: (tf.cast(x, tf.float32), y))
        val = val.batch(256)
    start = time.perf_counter()
    result = model.fit(train, epochs=config.epochs, validation_data=val, verbose=0, shuffle=False,
                       callbacks=[_ProgressCallback(config.epochs, progress)])
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in values] for k, values in result.history.items() if "accuracy" in k}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.replace(path)
    meta_path.write_text(json.dumps(history))
    return TrainedModel(model, path, fingerprint_model(model), history, seconds, False)


class _ProgressCallback(keras.callbacks.Callback):
    """One line per epoch: accuracy and the time left."""

    def __init__(self, epochs: int, progress: Callable[[str], None]):
        super().__init__()
        self.epochs, self.progress = epochs, progress
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        done = epoch + 1
        eta = (time.perf_counter() - self.start) / done * (self.epochs - done)
        val = f", val accuracy {logs['val_accuracy']:.3f}" if "val_accuracy" in logs else ""
        self.progress(f"epoch {done}/{self.epochs}: accuracy {logs.get('accuracy', float('nan')):.3f}{val}, "
                      f"ETA {eta:.0f} s")
