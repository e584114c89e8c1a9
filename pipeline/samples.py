"""The per-sample table of one shard: Grad-CAM, then the heatmap statistics, batch by batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import _workers, foreground, heatmaps, sprites
from ._decode import preview
from .config import Thresholds
from .datasets import Source
from .duplicates import THUMBNAIL_SIZE, find_duplicates, pixel_digests, thumbnails
from .gradcam import CamBatch, GradCAM, explain_by_fold
from .heatmaps import upsample
from .models import cross_fit_folds

#: Bump when the columns or arrays of a shard result change, or how they are computed: persisted shard results of older
#: versions are not reused (10: images larger than 64 px give their thumbnails and estimated masks from a 64 px copy).
TABLE_VERSION = 10


@dataclass(frozen=True)
class ShardResult:
    """One shard's rows, plus the arrays kept beside the table (too wide for columns) and the skipped inputs."""

    table: pd.DataFrame
    probs: np.ndarray  # (n, C) float32 class probabilities
    cams: np.ndarray  # (n, h, w) float32 predicted-class CAMs at the target layer's resolution, unnormalised
    label_cams: np.ndarray  # (n, h, w) float32 the given label's CAMs (equal to ``cams`` where pred == label)
    skipped: list[dict]  # {"sample_id", "reason"} of inputs that could not be decoded
    digests: np.ndarray  # (n,) str digests of the pixels the model saw, for exact duplicates
    thumbnails: np.ndarray  # (n, 32, 32, 3) uint8 thumbnails, for near duplicates
    worker: dict = field(default_factory=dict)  # where the shard was computed (set by the orchestration)
    stages: dict = field(default_factory=dict)  # seconds spent per stage (STAGES) on this shard
    sprite_sheets: sprites.SpriteSheets | None = None  # the explorer's thumbnails, rows as in the table


#: The stages of a shard timed by :func:`scan`: waiting for the source's next decoded batch (folder and tfds sources
#: decode ahead in tf.data threads, so this is the part decoding does not hide), the Grad-CAM engine, statistics
#: (upsampling, mass, summaries, the table), the foreground estimate (with worker processes, :mod:`pipeline._workers`,
#: it runs beside the batch's Grad-CAM: this is the batch's reduced copy (:func:`pipeline._decode.preview`), the
#: resize to the working size, sending, and the wait for the masks after the batch's Grad-CAM and statistics), and
#: the digests and thumbnails of duplicates with the explorer's sprite sheets.
STAGES = ("decode_s", "gradcam_s", "statistics_s", "foreground_s", "thumbnails_s")


class _Clock:
    """Seconds since the previous lap."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def scan(source: Source, explainers: list[GradCAM], start: int, stop: int, batch_size: int,
         fold_seed: int = 0, explorer_thumbnails: bool = True, processes: int = 1) -> ShardResult:
    """Audit samples ``start`` to ``stop`` of ``source``: probabilities, CAMs and statistics per sample.

    With one explainer, every sample is explained by its model; with K (cross-fitting), a sample in fold k (by
    :func:`pipeline.models.cross_fit_folds` with ``fold_seed``) by the k-th, the model that never saw it.

    Images reach the model at its input size. Statistics are computed on CAMs upsampled to that size and normalised
    to mass distributions; where the source gives no foreground mask for a sample it is estimated
    (:mod:`pipeline.foreground`) and the row says ``mask_kind = "estimated"``. With ``explorer_thumbnails``, the
    images as the model saw them also go into the report explorer's sprite sheets (:mod:`pipeline.sprites`). With
    ``processes`` of 2 or more, each batch's foreground estimate runs in that many worker processes while this one
    computes the batch's Grad-CAM (:mod:`pipeline._workers`).
    """
    size = explainers[0].image_size(source.natural_size)
    writer = sprites.SheetWriter(sprites.thumbnail_side(source.natural_size)) if explorer_thumbnails else None
    tables, probs, cams, label_cams, skipped, digests, thumbs = [], [], [], [], [], [], []
    if not source.has_masks and batch_size >= _workers.MIN_ITEMS:
        _workers.start(processes)  # while the first batch decodes
    stages, clock = dict.fromkeys(STAGES, 0.0), _Clock()
    for batch in source.batches(size, batch_size, start, stop):
        stages["decode_s"] += clock.lap()
        skipped.extend(batch.skipped)
        if len(batch.labels) == 0:
            continue
        mask_kind = np.full(len(batch.labels), "none", dtype=object) if batch.mask_kind is None \
            else batch.mask_kind.astype(object)
        missing = mask_kind != "true"
        small = preview(batch.images)  # what the estimate's images, the thumbnails and the sprite sheets are made from
        # The estimate runs in worker processes beside the batch's Grad-CAM: foreground_s is the resizes to its working
        # size and the wait for it after.
        estimate = _workers.split_map(foreground.estimate_foreground, foreground.working_images(small[missing]),
                                      processes) if missing.any() else None
        stages["foreground_s"] += clock.lap()
        folds = cross_fit_folds(batch.sample_ids, len(explainers), fold_seed) if len(explainers) > 1 else None
        out = explain_by_fold(explainers, batch.images, batch.labels, folds)
        stages["gradcam_s"] += clock.lap()
        mass, valid = heatmaps.to_mass(upsample(out.cam_pred, size))
        objects = np.zeros((len(batch.labels), *size), dtype=bool) if batch.foreground is None \
            else batch.foreground.copy()
        stages["statistics_s"] += clock.lap()
        if estimate is not None:
            objects[missing] = foreground.full_size_masks(estimate.result(), size)
            mask_kind[missing] = "estimated"
        stages["foreground_s"] += clock.lap()
        stats = heatmaps.summarise(mass, objects)
        label_stats, label_valid = _label_statistics(stats, valid, out, batch.labels, objects, size)
        rows = np.arange(len(batch.labels))
        table = pd.DataFrame(
            {
                "sample_id": batch.sample_ids,
                "label": batch.labels,
                "pred": out.pred,
                "confidence": out.probs[rows, out.pred],
                "label_prob": out.probs[rows, batch.labels],
                **stats,
                **{f"label_{name}": values for name, values in label_stats.items()},
                "cam_valid": valid,
                "label_cam_valid": label_valid,
                "mask_kind": mask_kind,
            }
        )
        if batch.planted is not None:
            table["planted"] = batch.planted
        tables.append(table)
        probs.append(out.probs.astype(np.float32))
        cams.append(out.cam_pred.astype(np.float32))
        label_cams.append(out.cam_label.astype(np.float32))
        stages["statistics_s"] += clock.lap()
        digests.append(pixel_digests(batch.images))
        thumbs.append(thumbnails(small))
        if writer is not None:
            writer.add(small)
        stages["thumbnails_s"] += clock.lap()
    if not tables:
        return ShardResult(pd.DataFrame(), np.zeros((0, len(source.class_names)), np.float32),
                           np.zeros((0, 1, 1), np.float32), np.zeros((0, 1, 1), np.float32), skipped,
                           np.zeros(0, dtype=object), _no_thumbnails())
    return ShardResult(pd.concat(tables, ignore_index=True), np.concatenate(probs), np.concatenate(cams),
                       np.concatenate(label_cams), skipped, np.concatenate(digests), np.concatenate(thumbs),
                       stages=stages, sprite_sheets=None if writer is None else writer.finish())


#: The statistics also kept for the given label's CAM (``label_<name>`` columns): those a shortcut rule reads
#: (:mod:`pipeline.findings` judges a class by the evidence for it in its own images), and no other (the samples
#: table is the largest part of a report).
LABEL_STATISTICS = ("border_focus", *("corner_focus_" + c.replace("-", "_") for c in heatmaps.CORNERS),
                    "background_attention", "background_focus")


def _label_statistics(stats: dict, valid: np.ndarray, out: CamBatch, labels: np.ndarray, foreground: np.ndarray,
                      size: tuple[int, int]) -> tuple[dict, np.ndarray]:
    """:data:`LABEL_STATISTICS` of the given label's CAMs, and which are valid. Where the model predicts the given
    label the two CAMs are the same map (:class:`pipeline.gradcam.CamBatch`), so only the other rows are computed."""
    columns = {name: np.array(stats[name], copy=True) for name in LABEL_STATISTICS}
    label_valid = valid.copy()
    differ = np.flatnonzero(out.pred != labels)
    if len(differ):
        mass, label_valid[differ] = heatmaps.to_mass(upsample(out.cam_label[differ], size))
        other = heatmaps.summarise(mass, foreground[differ])
        for name in LABEL_STATISTICS:
            columns[name][differ] = other[name]
    return columns, label_valid


def _no_thumbnails() -> np.ndarray:
    return np.zeros((0, THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), np.uint8)


def appearance(source: Source, size: tuple[int, int], batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ids, pixel digests and thumbnails of a whole source at the model's input ``size`` (decoding only)."""
    ids, digests, thumbs = [], [], []
    for batch in source.batches(size, batch_size):
        if len(batch.labels):
            ids.append(batch.sample_ids)
            digests.append(pixel_digests(batch.images))
            thumbs.append(thumbnails(batch.images))
    if not ids:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=object), _no_thumbnails()
    return np.concatenate(ids), np.concatenate(digests), np.concatenate(thumbs)


def split_duplicates(audited: Source, merged: ShardResult, *, size: tuple[int, int], batch_size: int,
                     thresholds: Thresholds, other: Source | None = None) -> pd.DataFrame:
    """Exact and near duplicate pairs (:func:`pipeline.duplicates.find_duplicates`) within the audited split and,
    given the ``other`` (training) split, between the two: leakage. The audited split's digests and thumbnails are
    the ones its shards kept; the other split is decoded at the same size."""
    ids = merged.table["sample_id"].to_numpy() if len(merged.table) else np.zeros(0, dtype=object)
    options = {"min_correlation": thresholds.min_duplicate_correlation,
               "min_colour_correlation": thresholds.min_colour_correlation}
    found = [find_duplicates(ids, audited.split, merged.thumbnails, merged.digests, **options)]
    if other is not None:
        other_ids, other_digests, other_thumbs = appearance(other, size, batch_size)
        found.append(find_duplicates(ids, audited.split, merged.thumbnails, merged.digests, ids_b=other_ids,
                                     split_b=other.split, thumbnails_b=other_thumbs, digests_b=other_digests,
                                     **options))
    return pd.concat(found, ignore_index=True)


def merge(shards: list[ShardResult]) -> ShardResult:
    """Concatenate shard results in order."""
    full = [s for s in shards if len(s.table)] or shards[:1]
    return ShardResult(
        pd.concat([s.table for s in full], ignore_index=True),
        np.concatenate([s.probs for s in full]),
        np.concatenate([s.cams for s in full]),
        np.concatenate([s.label_cams for s in full]),
        [item for s in shards for item in s.skipped],
        np.concatenate([s.digests for s in full]),
        np.concatenate([s.thumbnails for s in full]),
        stages={stage: sum(s.stages.get(stage, 0.0) for s in shards) for stage in STAGES},
        sprite_sheets=sprites.concatenate([s.sprite_sheets for s in full]),
    )
