"""Sources of images to audit: the synthetic demo set, image folders, and tensorflow-datasets.

A source is opened from a :class:`SourceSpec` (small and hashable, so orchestration can key caches on it). It knows
its class names, the stable ``sample_id`` and label of every sample, a cheap fingerprint, and the inputs it had to
skip with their reasons; :meth:`Source.batches` yields :class:`Batch` es of images resized to the model's input size
(policy: :data:`pipeline._decode.RESIZE_POLICY`), and :meth:`Source.load` returns original images for the report.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from . import _decode, synthetic
from .artifacts import BACKGROUND_NEEDS_MASKS, Artifact
from .errors import AuditError


@dataclass(frozen=True)
class SourceSpec:
    """Where the images come from. ``kind``: ``synthetic`` (the demo set), ``folder`` or ``tfds``."""

    kind: str = "synthetic"
    name: str = "demo"  # the tfds name or the folder's path
    split: str | None = None  # None: "test" where there is one; "all" for a folder without split folders
    data_dir: str | None = None  # tfds only: a prepared copy
    masks: str | None = None  # folder only: foreground masks named like the images
    seed: int = 0  # synthetic only, like the three below
    train_size: int = 3000
    test_size: int = 1000
    planted_class: str | None = synthetic.PLANTED_CLASS  # None: no mark (the clean set that ``validate`` plants into)
    artifact: Artifact | None = None  # any kind: planted into a copy of the source (``gradcam-audit validate``)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Batch:
    """Samples resized to the model's input size, with what the audit needs to know about each."""

    images: np.ndarray  # (B, H, W, 3) uint8
    labels: np.ndarray  # (B,) int64
    sample_ids: np.ndarray  # (B,) str
    foreground: np.ndarray | None = None  # (B, H, W) bool where ``mask_kind`` is "true"
    mask_kind: np.ndarray | None = None  # (B,) "true" (a given mask) or "none"
    planted: np.ndarray | None = None  # (B,) bool, planted sources: where the artifact was stamped
    skipped: list[dict] = field(default_factory=list)  # samples of this batch's range that could not be decoded


class Source:
    """An opened source. Subclasses implement :meth:`batches` and :meth:`load`."""

    spec: SourceSpec
    name: str
    split: str
    class_names: tuple[str, ...]
    sample_ids: np.ndarray
    labels: np.ndarray
    fingerprint: str
    skipped: list[dict]  # inputs skipped when the source was opened, with reasons
    planted: dict | None = None
    natural_size: tuple[int, int] | None = None  # when every image has the same size
    has_masks: bool = False  # whether the source gives true object masks (for some of its images at least)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, size: tuple[int, int], batch_size: int, start: int = 0, stop: int | None = None,
                rows: np.ndarray | None = None) -> Iterator[Batch]:
        """The samples ``start`` to ``stop`` at ``size``, ``batch_size`` at a time; given ``rows`` (sorted, unique
        sample indices), those samples instead. In the source's order, except that an image folder's files that
        need the careful decoder come last: a batch's ``sample_ids`` say which samples it holds. A sample that cannot
        be decoded is left out of the images and recorded in a batch's ``skipped``."""
        raise NotImplementedError

    def rows_of(self, sample_ids) -> np.ndarray:
        """The index of each of ``sample_ids`` among the source's samples (KeyError for an unknown one)."""
        index = self._index
        return np.array([index[sid] for sid in sample_ids], dtype=np.int64)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.sample_ids)}

    def load(self, sample_ids: list[str]) -> list[np.ndarray]:
        """Original images (RGB uint8, each its own size) of the given samples, for the report's overlays."""
        raise NotImplementedError

    def load_masks(self, sample_ids: list[str]) -> list[np.ndarray | None]:
        """True object masks (boolean, each at its image's original size) of the given samples; None for a sample
        without one (every sample of a source without masks)."""
        return [None] * len(sample_ids)

    def arrays(self, size: tuple[int, int], batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every readable image at ``size`` with its label and sample id, for training a reference model."""
        images, labels, ids = [], [], []
        for batch in self.batches(size, batch_size):
            images.append(batch.images)
            labels.append(batch.labels)
            ids.append(batch.sample_ids)
        return np.concatenate(images), np.concatenate(labels), np.concatenate(ids)

    def training_split(self) -> str:
        """The split a reference model for this source trains on: the audited split itself, unless the source has a
        separate training split (then its subclass says so)."""
        return self.split

    #: Whether reference models train with random flips and shifts (the demo set says no, see SyntheticSource).
    augments_training: bool = True

    def describe(self) -> dict:
        return {"name": self.name, "split": self.split, "kind": self.spec.kind, "samples": len(self),
                "classes": list(self.class_names), "fingerprint": self.fingerprint, "planted": self.planted,
                "resize_policy": _decode.RESIZE_POLICY, "spec": self.spec.as_dict()}


def _wanted(length: int, start: int, stop: int | None, rows: np.ndarray | None) -> np.ndarray:
    """The sample indices a :meth:`Source.batches` call asks for."""
    if rows is not None:
        return np.asarray(rows, dtype=np.int64)
    return np.arange(start, length if stop is None else min(stop, length))


def _fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return digest.hexdigest()[:16]


# --- the synthetic demo set ------------------------------------------------------------------------------------


class SyntheticSource(Source):
    """The demo's planted-shortcut set (:mod:`pipeline.synthetic`), held in memory, with true masks."""

    def __init__(self, spec: SourceSpec):
        sizes = {"train": spec.train_size, "test": spec.test_size}
        split = spec.split or "test"
        mark = synthetic.PlantedMark(spec.planted_class) if spec.planted_class else None
        # Distinct, seed-derived streams per split so train and test never share images.
        data = synthetic.make_split(sizes[split], seed=[spec.seed, ("train", "test").index(split)], planted=mark)
        self.spec, self.name, self.split = spec, "demo", split
        self.class_names = synthetic.SHAPES
        self.images, self.labels, self.masks, self.marked = data.images, data.labels, data.masks, data.marked
        self.sample_ids = np.array([f"{split}/{i:05d}" for i in range(len(data.labels))])
        self.fingerprint = _fingerprint(data.images, data.labels)
        self.skipped = []
        self.natural_size = data.images.shape[1:3]
        self.planted = None if mark is None else mark.as_dict() | {
            "marked_samples": int(data.marked.sum()),
            "class_samples": int((data.labels == synthetic.SHAPES.index(spec.planted_class)).sum())}

    has_masks = True

    #: The demo trains like a careless pipeline, without flips and shifts that would move its planted mark, so the
    #: model is free to learn the shortcut the audit is meant to find.
    augments_training = False

    def training_split(self) -> str:
        return "train"

    def batches(self, size, batch_size, start=0, stop=None, rows=None):
        wanted = _wanted(len(self), start, stop, rows)
        for i in range(0, len(wanted), batch_size):
            chosen = wanted[i : i + batch_size]
            images, masks = self.images[chosen], self.masks[chosen]
            if tuple(size) != self.natural_size:
                images, masks = _decode.resize(images, size), _decode.resize_masks(masks, size)
            yield Batch(images, self.labels[chosen], self.sample_ids[chosen], masks,
                        np.full(len(chosen), "true", dtype=object), self.marked[chosen])

    def load(self, sample_ids):
        index = self._index
        return [self.images[index[sid]] for sid in sample_ids]

    def load_masks(self, sample_ids):
        return [self.masks[self._index[sid]] for sid in sample_ids]


# --- image folders ---------------------------------------------------------------------------------------------


def printable(name: str) -> str:
    """A file or folder name as text: itself when it is valid UTF-8, else with its undecodable bytes written as
    backslash escapes (``caf\\xe9.jpg``), so that it can go into tables, JSON and HTML and stays unique."""
    return name if _utf8(name) else os.fsencode(name).decode("utf-8", "backslashreplace")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _visible(p))


class FolderSource(Source):
    """Images in ``<root>/<class>/<file>`` or ``<root>/<split>/<class>/<file>``; class names are the sorted folder
    names (over every split, so labels agree between splits); ``sample_id`` is the path relative to the root.

    Every file in a class folder is a sample: files that are not decodable images are skipped at opening with
    their reason (empty, not an image, permission denied), and files that fail while decoding are skipped with
    theirs. With ``masks``, a mask ``<masks>/<class path>/<stem>.png`` or ``<masks>/<stem>.png`` gives the object:
    a trimap (values 1 = object, 2 = background, 3 = boundary, as in Oxford-IIIT Pet; the boundary counts as
    object) or a binary mask (non-zero = object).
    """

    def __init__(self, spec: SourceSpec):
        root = Path(spec.name)
        if not root.is_dir():
            raise AuditError(f"image folder {spec.name!r} does not exist or is not a folder")
        top = _subdirs(root)
        if not top:
            raise AuditError(f"image folder {spec.name!r} has no class folders; expected <root>/<class>/<file> "
                             "or <root>/<split>/<class>/<file>")
        split_layout = all(_subdirs(d) and not any(f.is_file() and _visible(f) for f in d.iterdir()) for d in top)
        if split_layout:
            splits = [d.name for d in top]
            split = spec.split or ("test" if "test" in splits else None)
            if split not in splits:
                raise AuditError(f"image folder {spec.name!r} has splits {', '.join(splits)}; choose one with --split")
            class_dirs = sorted({c.name for d in top for c in _subdirs(d)})
            class_root = root / split
        else:
            if spec.split not in (None, "all"):
                raise AuditError(f"image folder {spec.name!r} has no split folders, so it is one split, 'all'; "
                                 f"drop --split {spec.split}")
            split, class_dirs, class_root = "all", [d.name for d in top], root

        self.spec, self.root, self.name, self.split = spec, root, root.name, split
        # Folder and file names are bytes to the file system; the ones that are not UTF-8 are shown (and keyed)
        # with backslash escapes, and opened by their real names.
        self.class_names = tuple(printable(name) for name in class_dirs)
        paths, labels, fast, sizes, stats, self.skipped = [], [], [], set(), [], []
        shapes, jpeg = [], []
        for label, name in enumerate(class_dirs):
            folder = class_root / name
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.iterdir() if p.is_file() and _visible(p)):
                rel = printable(path.relative_to(root).as_posix())
                try:
                    ordinary, shape, kind = _decode.sniff(path)
                except _decode.Unreadable as err:
                    self.skipped.append({"sample_id": rel, "reason": str(err)})
                    continue
                stat = path.stat()
                fast.append(ordinary and _utf8(str(path)))  # TensorFlow's reader takes UTF-8 paths only
                shapes.append(shape)
                jpeg.append(kind == "JPEG")
                sizes.add(shape)
                paths.append(path)
                labels.append(label)
                stats.append((rel, label, stat.st_size, stat.st_mtime_ns))
        if not paths:
            raise AuditError(f"image folder {spec.name!r} (split {split!r}) holds no readable images")
        self.paths, self.fast = np.array([str(p) for p in paths]), np.array(fast)
        self.shapes, self.jpeg = np.array(shapes, dtype=np.int64).reshape(-1, 2), np.array(jpeg)
        self.labels = np.array(labels, dtype=np.int64)
        self.sample_ids = np.array([s[0] for s in stats])
        self.fingerprint = _fingerprint(self.class_names, stats)
        self.natural_size = next(iter(sizes)) if len(sizes) == 1 else None
        self.masks = Path(spec.masks) if spec.masks else None
        if self.masks is not None and not self.masks.is_dir():
            raise AuditError(f"mask folder {spec.masks!r} does not exist")
        self.has_masks = self.masks is not None

    def training_split(self) -> str:
        """``train`` when the folder has split folders and one of them is ``train``; else the audited split."""
        return "train" if self.split != "all" and (self.root / "train").is_dir() else self.split

    def _mask(self, index: int) -> np.ndarray | None:
        path = Path(self.paths[index])
        for candidate in (self.masks / path.relative_to(self.root).with_suffix(".png"),
                          self.masks / path.parent.relative_to(self.root) / f"{path.stem}.png",
                          self.masks / f"{path.stem}.png"):
            if candidate.is_file():
                values = np.asarray(Image.open(candidate))
                if values.ndim == 3:
                    values = values[..., 0]
                if set(np.unique(values)) <= {1, 2, 3}:
                    return values != 2
                return values > 0
        return None

    def _with_masks(self, batch: Batch, indices: list[int], size: tuple[int, int]) -> Batch:
        if self.masks is None:
            return batch
        foreground = np.zeros((len(indices), *size), dtype=bool)
        kind = np.full(len(indices), "none", dtype=object)
        for row, index in enumerate(indices):
            mask = self._mask(index)
            if mask is not None:
                foreground[row] = _decode.resize_masks(mask[None], size)[0]
                kind[row] = "true"
        return Batch(batch.images, batch.labels, batch.sample_ids, foreground, kind, None, batch.skipped)

    def _fast_decoder(self, size: tuple[int, int], reduced: bool):
        def decode(path, index, scale):
            contents = tf.io.read_file(path)

            def at_scale(ratio: int):
                if ratio == 1:
                    return lambda: tf.io.decode_image(contents, channels=3, expand_animations=False)
                return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=ratio)

            # scale indexes JPEG_SCALES: 0 for full size (any format), else a JPEG decoded at 1/2, 1/4 or 1/8. The
            # branch costs about a quarter of the decode of a 32x32 image, so it is left out when no file needs it.
            if reduced:
                image = tf.switch_case(scale, [at_scale(r) for r in _decode.JPEG_SCALES])
            else:
                image = at_scale(1)()
            image.set_shape([None, None, 3])
            same = tf.reduce_all(tf.shape(image)[:2] == size)
            return tf.cond(same, lambda: image, lambda: _decode.resize_tensor(image, size)), index
        return decode

    def _scales(self, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Per file, the index in :data:`~pipeline._decode.JPEG_SCALES` of the scale it is decoded at."""
        scales = [_decode.JPEG_SCALES.index(_decode.jpeg_scale(tuple(self.shapes[i]), size)) if self.jpeg[i] else 0
                  for i in indices]
        return np.array(scales, dtype=np.int32)

    def batches(self, size, batch_size, start=0, stop=None, rows=None):
        size = tuple(size)
        wanted = _wanted(len(self), start, stop, rows)
        fast = wanted[self.fast[wanted]]
        careful = list(wanted[~self.fast[wanted]])
        # TensorFlow decodes the ordinary files in parallel; a file it fails on is dropped from the stream
        # (ignore_errors) and caught by its missing index, then retried by the careful decoder.
        scales = self._scales(fast, size)
        stream = (
            tf.data.Dataset.from_tensor_slices((self.paths[fast], fast, scales))
            .map(self._fast_decoder(size, reduced=bool(scales.any())), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .ignore_errors()
            .batch(batch_size)
            .prefetch(2)
            .with_options(_decode.STREAM_OPTIONS)
        )
        cursor = 0
        for images, indices in stream:
            indices = indices.numpy()
            upto = np.searchsorted(fast, indices[-1], side="right")
            careful.extend(np.setdiff1d(fast[cursor:upto], indices))
            cursor = upto
            yield self._with_masks(self._batch(images.numpy(), indices), list(indices), size)
        careful.extend(fast[cursor:])  # failures after the last file decoded
        for i in range(0, len(careful), batch_size):
            decoded, images, skipped = [], [], []
            for index in careful[i : i + batch_size]:
                try:
                    images.append(_decode.resize(_decode.decode_careful(Path(self.paths[index])), size))
                    decoded.append(index)
                except _decode.Unreadable as err:
                    skipped.append({"sample_id": str(self.sample_ids[index]), "reason": str(err)})
            stacked = np.stack(images) if images else np.zeros((0, *size, 3), dtype=np.uint8)
            yield self._with_masks(self._batch(stacked, np.array(decoded, dtype=np.int64), skipped), decoded, size)

    def _batch(self, images: np.ndarray, indices: np.ndarray, skipped: list[dict] | None = None) -> Batch:
        return Batch(images, self.labels[indices], self.sample_ids[indices], skipped=skipped or [])

    def load(self, sample_ids):
        return [_decode.decode_careful(Path(self.paths[self._index[sid]])) for sid in sample_ids]

    def load_masks(self, sample_ids):
        return [self._mask(self._index[sid]) if self.masks is not None else None for sid in sample_ids]


# --- tensorflow-datasets ---------------------------------------------------------------------------------------


class TfdsSource(Source):
    """One split (slicing allowed: ``train[:20%]``) of a tfds dataset with an Image feature and a ClassLabel.

    ``sample_id`` is tfds' own record id. Downloads happen only when the dataset is not prepared in ``data_dir``;
    when that fails (offline), the error says what to do instead.
    """

    def __init__(self, spec: SourceSpec):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(spec.name, data_dir=spec.data_dir)
        except Exception as err:  # tfds raises several types for unknown or unloadable names
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise AuditError(f"{spec.name!r} is neither an image folder nor a tfds dataset ({reason})") from None
        features = builder.info.features
        image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
        label_keys = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
        if not image_keys or not label_keys:
            raise AuditError(f"tfds dataset {spec.name!r} is not an image classification set "
                             "(it needs an Image feature and a ClassLabel feature)")
        self.image_key = image_keys[0]
        self.label_key = "label" if "label" in label_keys else label_keys[0]
        if not builder.is_prepared():
            try:
                builder.download_and_prepare()
            except Exception as err:
                raise AuditError(
                    f"could not download tfds dataset {spec.name!r} ({type(err).__name__}: {str(err)[:200]}); "
                    "without network access, pass --data-dir with a prepared copy, or audit an image folder"
                ) from None
        known = list(builder.info.splits.keys())
        split = spec.split or ("test" if "test" in known or not known else known[0])
        self.spec, self.builder, self.name, self.split = spec, builder, spec.name, split
        self.class_names = tuple(features[self.label_key].names)
        ids, labels = [], []
        for record in self._records():
            ids.append(record["tfds_id"].decode())
            labels.append(record[self.label_key])
        self.sample_ids, self.labels = np.array(ids), np.array(labels, dtype=np.int64)
        self.fingerprint = _fingerprint(builder.info.full_name, split, self.sample_ids, self.labels)
        self.skipped = []
        shape = features[self.image_key].shape
        self.natural_size = tuple(shape[:2]) if None not in shape[:2] else None

    def training_split(self) -> str:
        return "train"

    def _dataset(self, decode: bool = False) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        try:
            return self.builder.as_dataset(
                split=self.split, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=True),
                decoders=None if decode else {self.image_key: tfds.decode.SkipDecoding()},
            )
        except (ValueError, KeyError, AssertionError) as err:
            raise AuditError(f"tfds dataset {self.name!r} has no split {self.split!r} ({err})") from None

    def _records(self) -> Iterator[dict]:
        import tensorflow_datasets as tfds

        return tfds.as_numpy(self._dataset())

    def _decode(self, size):
        def decode(record):
            image = record[self.image_key]
            if image.dtype == tf.string:
                image = tf.io.decode_image(image, channels=3, expand_animations=False)
            return _decode.resize_tensor(image, size), record[self.label_key], record["tfds_id"]
        return decode

    def batches(self, size, batch_size, start=0, stop=None, rows=None):
        if rows is None:
            stop = len(self) if stop is None else min(stop, len(self))
            records = self._dataset().skip(start).take(stop - start)
        else:  # one pass over the split, keeping the wanted records
            wanted = np.zeros(len(self), dtype=bool)
            wanted[np.asarray(rows, dtype=np.int64)] = True
            keep = tf.constant(wanted)
            records = (self._dataset().enumerate().filter(lambda i, record: tf.gather(keep, i))
                       .map(lambda i, record: record))
        stream = (records
                  .map(self._decode(tuple(size)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                  .batch(batch_size).prefetch(2).with_options(_decode.STREAM_OPTIONS))
        for images, labels, ids in stream:
            yield Batch(images.numpy(), labels.numpy().astype(np.int64), np.array([i.decode() for i in ids.numpy()]))

    def load(self, sample_ids):
        wanted, found = set(sample_ids), {}
        for record in self._records():
            sid = record["tfds_id"].decode()
            if sid in wanted:
                image = record[self.image_key]
                found[sid] = tf.io.decode_image(image, channels=3, expand_animations=False).numpy() \
                    if isinstance(image, bytes) else image
        return [found[sid] for sid in sample_ids]


# --- a copy of any source with a planted artifact ---------------------------------------------------------------


class PlantedSource(Source):
    """Another source with an :class:`~pipeline.artifacts.Artifact` blended into some of one class's images, in
    every split, at every resolution (batches, training arrays and the report's originals alike).

    A ``background`` artifact needs a source with true masks; it is planted into the carriers that have one (a
    carrier without a mask stays clean, and its batches' ``planted`` says so).

    Nothing is written to disk: the copy exists only as this view, and its fingerprint is the base source's plus the
    artifact's parameters (so models trained on it are cached apart from the clean source's).
    """

    def __init__(self, base: Source, spec: SourceSpec):
        artifact = spec.artifact
        if artifact.class_name not in base.class_names:
            raise AuditError(f"class {artifact.class_name!r} is not in the dataset; its classes are "
                             f"{', '.join(base.class_names)}")
        if artifact.kind == "background" and not base.has_masks:
            raise AuditError(BACKGROUND_NEEDS_MASKS)
        self.base, self.spec, self.artifact = base, spec, artifact
        self.name, self.split, self.class_names = base.name, base.split, base.class_names
        self.sample_ids, self.labels, self.skipped = base.sample_ids, base.labels, base.skipped
        self.natural_size, self.has_masks = base.natural_size, base.has_masks
        self.fingerprint = _fingerprint(base.fingerprint, artifact.as_dict())
        target = base.class_names.index(artifact.class_name)
        self.marked = artifact.carriers(base.sample_ids, base.labels == target)
        self.planted = artifact.as_dict() | {"marked_samples": int(self.marked.sum()),
                                             "class_samples": int((base.labels == target).sum())}

    def training_split(self) -> str:
        return self.base.training_split()

    @property
    def augments_training(self) -> bool:
        return self.base.augments_training

    def _marked(self, sample_ids) -> np.ndarray:
        return np.array([self.marked[self._index[sid]] for sid in sample_ids], dtype=bool)

    def batches(self, size, batch_size, start=0, stop=None, rows=None):
        for batch in self.base.batches(size, batch_size, start, stop, rows):
            marked = self._marked(batch.sample_ids)
            images = batch.images.copy()
            if self.artifact.kind == "background":
                marked &= batch.mask_kind == "true"
                images[marked] = self.artifact.apply(images[marked], batch.foreground[marked])
            else:
                images[marked] = self.artifact.apply(images[marked])
            yield replace(batch, images=images, planted=marked)

    def load(self, sample_ids):
        images, marked = self.base.load(sample_ids), self._marked(sample_ids)
        if self.artifact.kind != "background":
            return [self.artifact.apply(image[None])[0] if mark else image
                    for image, mark in zip(images, marked, strict=True)]
        out = []
        for image, mark, mask in zip(images, marked, self.base.load_masks(sample_ids), strict=True):
            if mark and mask is not None:
                mask = _decode.resize_masks(mask[None], image.shape[:2])[0] if mask.shape != image.shape[:2] else mask
                image = self.artifact.apply(image[None], mask[None])[0]
            out.append(image)
        return out

    def load_masks(self, sample_ids):
        return self.base.load_masks(sample_ids)


def spec_for(dataset: str, **options) -> SourceSpec:
    """The spec of what a user typed: ``demo``, an existing folder, or a tfds name."""
    if dataset == "demo":
        return SourceSpec(kind="synthetic", **options)
    if Path(dataset).is_dir():
        return SourceSpec(kind="folder", name=dataset, **options)
    if "/" in dataset or dataset.startswith("."):
        raise AuditError(f"image folder {dataset!r} does not exist")
    return SourceSpec(kind="tfds", name=dataset, **options)


@functools.lru_cache(maxsize=4)
def open_source(spec: SourceSpec) -> Source:
    """Open the source a spec describes; cached per process, since the shards of a run share it."""
    if spec.artifact is not None:
        # Into the demo set, the artifact is planted instead of the demo's own mark.
        clean = replace(spec, artifact=None, planted_class=None if spec.kind == "synthetic" else spec.planted_class)
        return PlantedSource(open_source(clean), spec)
    if spec.kind == "synthetic":
        if spec.split not in (None, "train", "test"):
            raise AuditError(f"the demo dataset has splits 'train' and 'test', not {spec.split!r}")
        if spec.planted_class not in (*synthetic.SHAPES, None):
            raise AuditError(f"planted class {spec.planted_class!r} is not one of {', '.join(synthetic.SHAPES)}")
        return SyntheticSource(spec)
    if spec.kind == "folder":
        return FolderSource(spec)
    if spec.kind == "tfds":
        return TfdsSource(spec)
    raise AuditError(f"unknown source kind {spec.kind!r}")
