"""Sources of images to audit.

A source is opened from a :class:`SourceSpec` (small, hashable, so orchestration can key caches on it) and yields
batches ``{"image": uint8 (B, H, W, 3), "label": int64 (B,), "sample_id": str (B,), "foreground": bool (B, H, W)
or None}`` in a stable order, with its class names, image size, length and a cheap content fingerprint.

Built so far: the synthetic planted-shortcut set of the demo (:mod:`pipeline.synthetic`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from . import synthetic
from .errors import AuditError


@dataclass(frozen=True)
class SourceSpec:
    """Where the images come from: ``kind`` is ``"synthetic"`` for now; the rest configures it."""

    kind: str = "synthetic"
    split: str = "test"
    seed: int = 0
    train_size: int = 3000
    test_size: int = 1000
    planted_class: str = "triangle"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """An opened source: everything the audit needs to know about the images, plus access to them."""

    spec: SourceSpec
    name: str
    split: str
    class_names: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    foreground: np.ndarray | None
    fingerprint: str
    planted: dict | None = None
    marked: np.ndarray | None = None  # (N,) bool: where a planted artifact was stamped (synthetic sets only)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """Batches of samples ``start`` to ``stop`` (default: the end), in order."""
        stop = len(self) if stop is None else min(stop, len(self))
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield {
                "image": self.images[i:j],
                "label": self.labels[i:j],
                "sample_id": self.sample_ids[i:j],
                "foreground": None if self.foreground is None else self.foreground[i:j],
                "planted": None if self.marked is None else self.marked[i:j],
            }

    def load(self, sample_ids: list[str]) -> np.ndarray:
        """Original images of the given samples, for the report's overlays."""
        index = {sid: i for i, sid in enumerate(self.sample_ids)}
        return self.images[[index[sid] for sid in sample_ids]]


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """First 16 hex digits of a SHA-256 over the arrays' bytes, shapes and dtypes."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def check_spec(spec: SourceSpec) -> None:
    """Raise :class:`AuditError` for a spec that cannot be opened, without opening it."""
    if spec.kind != "synthetic":
        raise AuditError(f"unknown source kind {spec.kind!r}")
    if spec.split not in ("train", "test"):
        raise AuditError(f"the demo dataset has splits 'train' and 'test', not {spec.split!r}")
    if spec.planted_class not in synthetic.SHAPES:
        raise AuditError(f"planted class {spec.planted_class!r} is not one of {', '.join(synthetic.SHAPES)}")


@functools.lru_cache(maxsize=4)
def open_source(spec: SourceSpec) -> Source:
    """Open the source a spec describes; cached per process, since shards of one run share it."""
    check_spec(spec)
    return _open_synthetic(spec)


def _open_synthetic(spec: SourceSpec) -> Source:
    sizes = {"train": spec.train_size, "test": spec.test_size}
    mark = synthetic.PlantedMark(spec.planted_class)
    # Distinct, seed-derived streams per split so train and test never share images.
    split_seed = [spec.seed, ("train", "test").index(spec.split)]
    data = synthetic.make_split(sizes[spec.split], seed=split_seed, planted=mark)
    return Source(
        spec=spec,
        name="demo",
        split=spec.split,
        class_names=synthetic.SHAPES,
        images=data.images,
        labels=data.labels,
        sample_ids=np.array([f"{spec.split}/{i:05d}" for i in range(len(data.labels))]),
        foreground=data.masks,
        fingerprint=fingerprint_arrays(data.images, data.labels),
        planted=mark.as_dict() | {"marked_samples": int(data.marked.sum()), "class_samples": int(
            (data.labels == synthetic.SHAPES.index(spec.planted_class)).sum())},
        marked=data.marked,
    )
