"""What a run is asked to do, and what it returns; shared by the CLI, the Python API and the Prefect flow."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .errors import AuditError


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
    epochs: int = 8  # reference-model training epochs
    train_size: int = 3000  # demo dataset only
    test_size: int = 1000  # demo dataset only
    gallery_size: int = 24
    data_dir: str | None = None  # tfds: a prepared copy
    masks: str | None = None  # image folders: foreground masks named like the images

    def __post_init__(self):
        for name in ("batch_size", "shard_size", "epochs", "train_size", "test_size", "gallery_size"):
            if getattr(self, name) < 1:
                raise AuditError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    """A finished audit: where its report is, and its tables."""

    report_dir: Path
    samples: pd.DataFrame
    classes: pd.DataFrame
    meta: dict

    @property
    def flagged_classes(self) -> list[str]:
        return self.classes.loc[self.classes["flagged"], "class_name"].tolist()
