"""What a run is asked to do, and what it returns; shared by the CLI, the Python API and the Prefect flow."""

from __future__ import annotations

import fcntl
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .artifacts import BACKGROUND_NEEDS_MASKS
from .errors import AuditError, quoted

#: How raw 0-255 RGB pixels are turned into a model's input, by name (``--preprocess``); implemented by
#: :func:`pipeline.models.preprocess_function`.
PREPROCESSING = {
    "none": "raw 0-255 RGB pixels (the model rescales them itself)",
    "unit": "pixels / 255, in [0, 1]",
    "tf": "pixels / 127.5 - 1, in [-1, 1] (MobileNet, Inception)",
    "imagenet-caffe": "RGB to BGR minus the ImageNet channel means (VGG16, ResNet50 of keras.applications)",
    "imagenet-torch": "pixels / 255 minus the ImageNet means over the ImageNet stds (DenseNet, PyTorch ports)",
}

#: Grad-CAM methods by name (``--method``). They differ only in how a channel's weight is computed from its
#: activations and gradients; :data:`pipeline.gradcam.METHODS` implements each of them.
CAM_METHODS = {
    "gradcam": "Grad-CAM: the gradient averaged over the positions (Selvaraju et al. 2017)",
    "gradcam++": "Grad-CAM++: positive gradients weighted per position (Chattopadhay et al. 2018)",
    "hirescam": "HiResCAM: the gradient itself, position by position (Draelos & Carin 2020)",
}


@dataclass(frozen=True)
class Thresholds:
    """The thresholds behind every flag (:mod:`pipeline.findings`); recorded in ``audit.json``, each can be changed
    with ``--threshold NAME=VALUE``."""

    min_focus_ratio: float = 1.5  # class mean / median of the other classes' means
    min_auroc: float = 0.75  # P(a sample of the class is more focused than a sample of another class)
    tail_quantile: float = 0.95  # "more focused than other classes' images": above this quantile of theirs
    min_tail_share: float = 0.25  # a sub-population: this share of the class above it (5x the 5% expected)
    min_occlusion_drop: float = 0.05  # blanking the region: class's label-probability loss minus the others'
    # ... and this share of the class's images lose more evidence (log-odds) when it is blanked than the tail_quantile
    # of the other classes' images (3x the 5% expected; below min_tail_share, so a shortcut of a fifth of a class holds)
    min_reliance_share: float = 0.15
    # ... a drop of the log-odds counts only from this size on (the odds of the label fall by a fifth; below it,
    # blanking the region costs no image much, and beating the others' quantile is noise against noise)
    min_reliance_drop: float = 0.25
    # ... and a candidate whose mean drop falls short is confirmed when this share of its images do (5x the 5%
    # expected; at least min_reliance_share)
    min_reliance_confirm_share: float = 0.25
    # ... or when pasting the region from its images into other classes' images makes the model call this many more of
    # them the class than pasting it from other classes' images does (regions of at most a quarter of the image)
    min_transplant_excess: float = 0.35
    spot_share: float = 0.0625  # the hot spot rule's window: a square of this share of the image (a corner square)
    # a hot spot: this many more of the class's images than of other classes' have their densest window there (a
    # sub-population worth checking; what tells a mark from a part of the object is the likeness below)
    min_spot_excess: float = 0.05
    # ... and those images look alike there or next to it (mean correlation of their fine detail with the others'
    # mean): a logo
    min_spot_consistency: float = 0.5
    min_duplicate_correlation: float = 0.92  # near duplicate: aligned correlation of the thumbnails' details ...
    min_colour_correlation: float = 0.6  # ... and of each colour channel's 8x8 block means

    def __post_init__(self):
        for name, (low, high) in THRESHOLD_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise AuditError(f"threshold {name} must be in [{low}, {high}], got {value}")
        if self.min_reliance_confirm_share < self.min_reliance_share:  # a share between them would be both
            raise AuditError(f"threshold min_reliance_confirm_share ({self.min_reliance_confirm_share}) must be at "
                             f"least min_reliance_share ({self.min_reliance_share})")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_overrides(cls, overrides: dict | None) -> Thresholds:
        """The defaults with ``overrides`` (name -> number) applied; unknown names, non-numbers and values out of
        their range (:data:`THRESHOLD_RANGES`) are refused."""
        overrides = overrides or {}
        known = cls.__dataclass_fields__
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise AuditError(f"unknown threshold(s) {', '.join(quoted(u) for u in unknown)}; known: {', '.join(known)}")
        try:
            values = {name: float(value) for name, value in overrides.items()}
        except (TypeError, ValueError):
            raise AuditError(f"thresholds must be numbers, got {quoted(overrides)}") from None
        return cls(**values)


#: The values each threshold may take (inclusive): probabilities and shares in [0, 1], cosines and correlations
#: in [-1, 1], a ratio of means above 0.
THRESHOLD_RANGES = {
    "min_focus_ratio": (0.0, float("inf")),
    "min_auroc": (0.0, 1.0),
    "tail_quantile": (0.0, 1.0),
    "min_tail_share": (0.0, 1.0),
    "min_occlusion_drop": (-1.0, 1.0),
    "min_reliance_share": (0.0, 1.0),
    "min_reliance_confirm_share": (0.0, 1.0),
    "min_reliance_drop": (0.0, float("inf")),
    "min_transplant_excess": (-1.0, 1.0),
    "spot_share": (0.0, 1.0),
    "min_spot_excess": (0.0, 1.0),
    "min_spot_consistency": (-1.0, 1.0),
    "min_duplicate_correlation": (-1.0, 1.0),
    "min_colour_correlation": (-1.0, 1.0),
}


@dataclass(frozen=True)
class AuditConfig:
    """One audit's options; each has the same meaning in the CLI, in :func:`pipeline.audit` and in the flow."""

    dataset: str = "demo"  # "demo", an image folder, or a tfds name
    split: str | None = None  # None: "test" where there is one; "all" for a folder without split folders
    model: str | None = None  # path of a .keras/.h5 model; None trains (or reuses) a reference model
    layer: str | None = None  # Grad-CAM target layer; None picks the last spatial layer
    method: str = "gradcam"
    batch_size: int = 128
    shard_size: int = 2048
    out: str | None = None  # report directory; None means reports/<dataset>-<split>-<time>
    seed: int = 0
    epochs: int | None = None  # reference-model training epochs; None: by training-set size (models.reference_recipe)
    train_limit: int | None = None  # reference models: train on at most this many images (a fixed random subset)
    train_size: int = 3000  # demo dataset only
    test_size: int = 1000  # demo dataset only
    gallery_size: int = 24
    link_images: bool = False  # image folders: the report's explorer links the dataset's files instead of thumbnails
    data_dir: str | None = None  # tfds: a prepared copy
    masks: str | None = None  # image folders: foreground masks named like the images
    preprocess: str | None = None  # pixels -> model input (models.PREPROCESSING); None: "none" for reference models
    unsafe_model: bool = False  # allow arbitrary code (Lambda layers) in a trusted --model file
    # K >= 2: K reference models on K folds of the audited split, each sample audited out of fold; 0: in-sample;
    # None: runs.DEFAULT_CROSS_FIT folds when a reference model would train on the audited split, else 0.
    cross_fit: int | None = None
    weights: str | None = None  # "imagenet": a pretrained MobileNetV2 reference model (needs network once)
    workers: int = 0  # N >= 1: run shards on a local Dask cluster of N worker processes
    dask_address: str | None = None  # run shards on an existing Dask cluster (tcp://host:port)
    artifact: dict | None = None  # Artifact fields: plant it into a copy of the dataset (``gradcam-audit validate``)
    thresholds: dict | None = None  # overrides of pipeline.findings.Thresholds, by name

    def __post_init__(self):
        for name in ("batch_size", "shard_size", "epochs", "train_limit", "train_size", "test_size", "gallery_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AuditError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.method not in CAM_METHODS:
            raise AuditError(f"unknown Grad-CAM method {self.method!r}; choose from {', '.join(CAM_METHODS)}")
        if self.cross_fit is not None and (self.cross_fit == 1 or self.cross_fit < 0):
            raise AuditError(f"--cross-fit needs at least 2 folds, got {self.cross_fit}")
        if self.cross_fit and self.model is not None:
            raise AuditError("--cross-fit trains its own reference models; it cannot be combined with --model")
        if self.weights not in (None, "imagenet"):
            raise AuditError(f"--weights must be 'imagenet', got {self.weights!r}")
        if self.workers < 0:
            raise AuditError(f"--workers must be at least 1, got {self.workers}")
        if self.workers and self.dask_address:
            raise AuditError("give --workers (a local cluster) or --dask-address (an existing one), not both")
        if self.artifact and self.model is not None:
            raise AuditError("validate trains a reference model on the planted data; it cannot use --model (a model "
                             "that never saw the artifact has no shortcut to find)")
        if self.artifact and self.artifact.get("kind") == "background" and self.dataset != "demo" and not self.masks:
            raise AuditError(BACKGROUND_NEEDS_MASKS)
        if self.link_images and self.artifact:
            raise AuditError("--link-images shows the files as they are on disk, without the planted artifact; "
                             "validate cannot use it")
        if self.weights and self.model is not None:
            raise AuditError("--weights chooses the reference model's weights; it cannot be combined with --model")

    def as_dict(self) -> dict:
        return asdict(self)

    def check_paths(self) -> None:
        """The checks of this configuration that need only the file system (no TensorFlow, no Prefect), so that the
        command line answers a mistyped path or an unusable ``--out`` at once: a folder dataset, the model file and
        the mask folder exist, and the report directory is free and can be written."""
        looks_like_path = "/" in self.dataset or self.dataset.startswith(".")
        if self.dataset != "demo" and looks_like_path and not Path(self.dataset).is_dir():
            raise AuditError(f"image folder {quoted(self.dataset)} does not exist")
        if self.model is not None:
            check_model_file(self.model)
        if self.link_images and not Path(self.dataset).is_dir():
            raise AuditError("--link-images links the files of an image folder; "
                             f"{quoted(self.dataset)} is not one (drop the option: the report carries thumbnails)")
        if self.masks is not None and not Path(self.masks).is_dir():
            raise AuditError(f"mask folder {quoted(self.masks)} does not exist")
        if self.out is not None:
            check_out_dir(Path(self.out))


def check_model_file(path: str | Path) -> Path:
    """The path of an existing ``.keras`` or ``.h5`` file, or an :class:`AuditError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"model file {quoted(str(path))} does not exist")
    if path.suffix not in (".keras", ".h5"):
        raise AuditError(f"model file {quoted(str(path))} must be a .keras or .h5 file saved by Keras")
    return path


def out_lock(out: Path) -> Path:
    """The lock file a run holds while it may write the report directory ``out`` (:func:`pipeline.runs.reserved`)."""
    return out.parent / f".{out.name}.lock"


def taken_by_another_run(out: Path) -> AuditError:
    return AuditError(f"another run is writing the report directory {quoted(str(out))}; choose another --out")


def check_out_dir(out: Path) -> None:
    """Refuse a report directory that exists or that another run is writing, or whose parent cannot be created or
    written to."""
    if out.exists():
        raise AuditError(f"report directory {quoted(str(out))} already exists; choose another --out")
    try:
        with open(out_lock(out)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
    except BlockingIOError:
        raise taken_by_another_run(out) from None
    except OSError:
        pass  # no lock file: nobody holds it
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise AuditError(f"cannot write the report directory {quoted(str(out))}: {err.strerror or err}") from None


@dataclass(frozen=True)
class AuditResult:
    """A finished audit: where its report is, and its tables."""

    report_dir: Path
    samples: pd.DataFrame
    classes: pd.DataFrame
    meta: dict
    duplicates: pd.DataFrame | None = None

    @property
    def flagged_classes(self) -> list[str]:
        return self.classes.loc[self.classes["flagged"], "class_name"].tolist()
