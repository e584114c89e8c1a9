"""Models to audit: a user's saved model (loaded in Keras safe mode) or a small reference CNN trained and cached here.

Reference models carry their own ``Rescaling`` layer, so they take raw 0-255 pixels like every batch a source yields.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from ._decode import STREAM_OPTIONS
from ._hashing import sample_hash
from .config import PREPROCESSING, check_model_file
from .errors import AuditError, quoted

if TYPE_CHECKING:
    from .datasets import Source


def walk_layers(model: keras.Model):
    """Every layer of ``model``, descending into nested models, in model order."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer)


@dataclass(frozen=True)
class TrainConfig:
    """How a reference model is trained; part of its cache key."""

    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 3e-3
    width: int = 16
    seed: int = 0
    architecture: str = "cnn"  # "cnn" (build_reference_cnn) or "mobilenetv2" (build_transfer_model)
    weights: str | None = None  # mobilenetv2 only: "imagenet" for a pretrained, frozen backbone
    augment: bool = True  # random horizontal flips and small translations

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


def cross_fit_folds(sample_ids: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The fold (0 .. k-1) of each sample: a hash of the seed and its id, so a sample keeps its fold across runs,
    shards and processes without any stored assignment. Folds come out balanced to within sampling noise."""
    return (sample_hash(sample_ids, str(seed)) % np.uint64(k)).astype(np.int64)


def training_subset(sample_ids: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of a fixed pseudo-random subset of ``limit`` samples: the lowest hashes of the seed and the
    sample id, so the same ids give the same subset in every run; classes keep about their shares."""
    return np.sort(np.argsort(sample_hash(sample_ids, f"train-subset:{seed}"), kind="stable")[:limit])


def build_transfer_model(input_size: tuple[int, int], num_classes: int, weights: str | None) -> keras.Model:
    """MobileNetV2 (alpha 0.35) from ``keras.applications`` with a new softmax head, for photos.

    With ``weights="imagenet"`` the backbone is pretrained and frozen (only the head trains); Keras downloads the
    weights on first use, which needs network access.
    """
    backbone = keras.applications.MobileNetV2(input_shape=(*input_size, 3), include_top=False, weights=weights,
                                              alpha=0.35)
    backbone.trainable = weights is None
    inputs = keras.Input(shape=(*input_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(x))
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="reference_mobilenetv2")


def reference_input_size(natural_size: tuple[int, int] | None, weights: str | None = None) -> tuple[int, int]:
    """Input size of a reference model: 160 x 160 for a pretrained MobileNetV2 (``weights``); for a CNN trained
    from scratch, the images' own size when they are all small (<= 64 px), else 96 x 96.

    Photos are audited at this reduced resolution when no model is given; the report says so.
    """
    if weights:
        return (160, 160)
    if natural_size is not None and max(natural_size) <= 64:
        return tuple(natural_size)
    return (96, 96)


#: From this many training images on, reference CNNs are wider and train longer (CIFAR-10 scale).
LARGE_TRAINING_SET = 5_000


def reference_recipe(training_images: int, *, epochs: int | None = None, seed: int = 0, weights: str | None = None,
                     augment: bool = True) -> TrainConfig:
    """How a reference model is trained on ``training_images`` images: a CNN from scratch, width 16 for 8 epochs,
    or width 32 for 15 epochs from :data:`LARGE_TRAINING_SET` images on (``epochs`` overrides the count); with
    ``weights`` a MobileNetV2 with that pretrained backbone."""
    large = training_images >= LARGE_TRAINING_SET
    return TrainConfig(epochs=epochs or (15 if large else 8), width=32 if large else 16, seed=seed,
                       architecture="mobilenetv2" if weights else "cnn", weights=weights, augment=augment)


def fingerprint_model(model: keras.Model) -> str:
    """A hash of the model's architecture and weights (first 16 hex digits of SHA-256)."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def load_model(path: str | Path, unsafe: bool = False) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` classifier in Keras safe mode, which refuses arbitrary code from the file
    (a ``Lambda`` layer's Python function); ``unsafe=True`` (``--unsafe-model``) allows it for a trusted file."""
    path = check_model_file(path)
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras says "File not found" of a .keras file that is not a zip archive; the file is there, but broken.
        raise AuditError(f"model file {quoted(str(path))} is corrupt: a .keras file is a zip archive and this one is "
                         "not (truncated, or not saved by Keras)")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except ValueError as err:
        if "safe_mode" in str(err) or "arbitrary code" in str(err):
            raise AuditError(f"model {quoted(str(path))} contains arbitrary Python code (a Lambda layer), which safe "
                             "mode refuses; pass --unsafe-model only if you trust the file") from None
        raise AuditError(f"could not load model {quoted(str(path))}: {str(err).splitlines()[0][:200]}") from None
    except (OSError, TypeError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise AuditError(f"model file {quoted(str(path))} is corrupt or not a Keras model "
                         f"({type(err).__name__}: {str(err)[:200]})") from None


def preprocess_function(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The function for a :data:`PREPROCESSING` name, on float32 batches (B, H, W, 3) of 0-255 RGB pixels."""
    if name not in PREPROCESSING:
        raise AuditError(f"unknown --preprocess {name!r}; choose from {', '.join(PREPROCESSING)}")
    if name == "none":
        return lambda x: x
    if name == "unit":
        return lambda x: x / 255.0
    mode = {"tf": "tf", "imagenet-caffe": "caffe", "imagenet-torch": "torch"}[name]
    return lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode=mode)


def has_own_preprocessing(model: keras.Model) -> bool:
    """True when a Rescaling or Normalization layer comes before the first convolution (nested models included)."""
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.Rescaling | keras.layers.Normalization):
            return True
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.Dense):
            return False
    return False


def check_fit(model: keras.Model, class_names: tuple[str, ...]) -> None:
    """Fail fast, saying what does not match, when ``model`` cannot classify this dataset's RGB images."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise AuditError(f"model {model.name!r} does not take one batch of images (its inputs: "
                         f"{[tuple(i.shape) for i in model.inputs]})")
    channels = model.inputs[0].shape[-1]
    if channels != 3:
        raise AuditError(f"model {model.name!r} takes images with {channels} channel(s); the dataset's images are "
                         "RGB (3 channels)")
    units = model.outputs[0].shape[-1]
    classes = 2 if units == 1 else units
    if classes != len(class_names):
        raise AuditError(f"model {model.name!r} predicts {classes} classes but the dataset has {len(class_names)} "
                         f"({', '.join(map(str, class_names[:10]))}{', ...' if len(class_names) > 10 else ''})")


def train_reference_model(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
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
    path.parent.mkdir(parents=True, exist_ok=True)
    # One run trains a given model; another that needs it meanwhile waits and then loads it.
    with open(path.with_suffix(".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"another run is training this reference model ({path.name}); waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and meta_path.exists():
            model = load_model(path)
            return TrainedModel(model, path, fingerprint_model(model), json.loads(meta_path.read_text()), 0.0, True)
        model, history, seconds = _fit(images, labels, num_classes, config, validation, progress)
        _save(model, history, path, meta_path)
    return TrainedModel(model, path, fingerprint_model(model), history, seconds, False)


def _save(model: keras.Model, history: dict, path: Path, meta_path: Path) -> None:
    """Write a cache entry so that no reader ever sees half of it: each file under a unique temporary name, then
    renamed into place, the model last (an entry counts only when both files exist)."""
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_model, tmp_meta = path.with_name(path.stem + tag + ".keras"), meta_path.with_name(meta_path.name + tag)
    try:
        tmp_meta.write_text(json.dumps(history))
        model.save(tmp_model)
        tmp_meta.replace(meta_path)
        tmp_model.replace(path)
    finally:
        tmp_model.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def _fit(images: np.ndarray, labels: np.ndarray, num_classes: int, config: TrainConfig,
         validation: tuple[np.ndarray, np.ndarray] | None, progress: Callable[[str], None]):
    """Build and train a reference model by ``config``: (model, accuracy history per epoch, seconds)."""
    keras.utils.set_random_seed(config.seed)
    if config.architecture == "mobilenetv2":
        try:
            model = build_transfer_model(images.shape[1:3], num_classes, config.weights)
        except Exception as err:  # Keras raises several types when the weights cannot be downloaded
            raise AuditError(f"could not get {config.weights} weights for MobileNetV2 ({type(err).__name__}: "
                             f"{str(err)[:150]}); without network access, drop --weights to train a CNN from "
                             "scratch") from None
    else:
        model = build_reference_cnn(images.shape[1:], num_classes, config.width)
    steps = int(np.ceil(len(images) / config.batch_size)) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=config.learning_rate,
                                                      warmup_steps=max(1, steps // 10))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    height, width = images.shape[1:3]
    pad = max(1, height // 8)

    def augment(x, y):
        # Random horizontal flips and translations by up to 1/8 of the side (zero padding, then a random crop).
        x = tf.image.random_flip_left_right(tf.cast(x, tf.float32))
        x = tf.image.random_crop(tf.image.pad_to_bounding_box(x, pad, pad, height + 2 * pad, width + 2 * pad),
                                 (height, width, 3))
        return x, y

    train = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=config.seed)
        .map(augment if config.augment else (lambda x, y: (tf.cast(x, tf.float32), y)),
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(config.batch_size)
        .prefetch(2)
        .with_options(STREAM_OPTIONS)
    )
    val = None
    if validation is not None:
        val = tf.data.Dataset.from_tensor_slices(validation).map(lambda x, y: (tf.cast(x, tf.float32), y))
        val = val.batch(256).with_options(STREAM_OPTIONS)
    start = time.perf_counter()
    result = model.fit(train, epochs=config.epochs, validation_data=val, verbose=0, shuffle=False,
                       callbacks=[_ProgressCallback(config.epochs, progress)])
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in values] for k, values in result.history.items() if "accuracy" in k}
    return model, history, seconds


def train_reference_models(
    train: Source,
    *,
    cache_dir: Path,
    weights: str | None = None,
    epochs: int | None = None,
    train_limit: int | None = None,
    cross_fit: int = 0,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> tuple[list[TrainedModel], str]:
    """The reference model(s) of a source's training split ``train``, trained or loaded from ``cache_dir``.

    One model on the whole split (or, with ``train_limit``, on a fixed random subset of that many images), or with
    ``cross_fit`` K, K models, the k-th trained without fold k (:func:`cross_fit_folds`), for out-of-fold
    predictions. The recipe is :func:`reference_recipe` of each model's training-set size, at
    :func:`reference_input_size`. Returns the models and a phrase saying what they were trained on.
    """
    size = reference_input_size(train.natural_size, weights)
    progress(f"training reference model(s) on {train.name}/{train.split} at {size[0]}x{size[1]}")
    images, labels, ids = train.arrays(size)
    key = f"{train.fingerprint}-{size}"
    if train_limit and len(labels) > train_limit:
        keep = training_subset(ids, train_limit, seed)
        images, labels, ids = images[keep], labels[keep], ids[keep]
        key += f"-limit{train_limit}"
        progress(f"training on a random subset of {len(labels)} of the split's images (--train-limit)")

    def fit(chosen: np.ndarray | None, name: str) -> TrainedModel:
        x, y = (images, labels) if chosen is None else (images[chosen], labels[chosen])
        recipe = reference_recipe(len(y), epochs=epochs, seed=seed, weights=weights, augment=train.augments_training)
        trained = train_reference_model(x, y, len(train.class_names), cache_dir=cache_dir, dataset_fingerprint=name,
                                        config=recipe, progress=progress)
        progress(f"{'loaded from cache' if trained.cached else f'trained in {trained.seconds:.0f} s'} "
                 f"({trained.path})")
        return trained

    if not cross_fit:
        return [fit(None, key)], f"{train.name}/{train.split}"
    folds = cross_fit_folds(ids, cross_fit, seed)
    runs = [fit(folds != k, f"{key}-fold{k}of{cross_fit}") for k in range(cross_fit)]
    return runs, f"{train.name}/{train.split}, {cross_fit} folds (out-of-fold predictions)"


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
