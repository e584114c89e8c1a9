"""The per-sample table of one shard: Grad-CAM, then the heatmap statistics, batch by batch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from . import heatmaps
from ._decode import resize
from .config import Thresholds
from .datasets import Source
from .duplicates import SIGNATURE_SIZE, find_duplicates, pixel_digests, pixel_signatures
from .foreground import estimate_foreground
from .gradcam import CamBatch, GradCAM
from .heatmaps import upsample
from .models import cross_fit_folds

#: Bump when the columns or arrays of a shard result change: persisted shard results of older versions are not reused.
TABLE_VERSION = 5


@dataclass(frozen=True)
class ShardResult:
    """One shard's rows, plus the arrays kept beside the table (too wide for columns) and the skipped inputs."""

    table: pd.DataFrame
    probs: np.ndarray  # (n, C) float32 class probabilities
    cams: np.ndarray  # (n, h, w) float32 predicted-class CAMs at the target layer's resolution, unnormalised
    skipped: list[dict]  # {"sample_id", "reason"} of inputs that could not be decoded
    embeddings: np.ndarray  # (n, D) float32 penultimate-layer embeddings, for near duplicates
    digests: np.ndarray  # (n,) str digests of the pixels the model saw, for exact duplicates
    signatures: np.ndarray  # (n, 768) float16 thumbnail signatures, to confirm near duplicates
    worker: dict = field(default_factory=dict)  # where the shard was computed (set by the orchestration)


def _explain(explainers: list[GradCAM], images: np.ndarray, labels: np.ndarray, folds: np.ndarray | None):
    """Grad-CAM of a batch; with several (cross-fitted) models, each sample by the model of its fold."""
    if folds is None:
        return explainers[0].explain(images, labels)
    parts = {k: explainers[k].explain(images[folds == k], labels[folds == k]) for k in np.unique(folds)}
    order = np.argsort(np.concatenate([np.flatnonzero(folds == k) for k in parts]), kind="stable")
    return CamBatch(*(np.concatenate([getattr(p, f.name) for p in parts.values()])[order]
                      for f in fields(CamBatch)))


def scan(source: Source, explainers: list[GradCAM], start: int, stop: int, batch_size: int,
         fold_seed: int = 0) -> ShardResult:
    """Audit samples ``start`` to ``stop`` of ``source``: probabilities, CAMs and statistics per sample.

    With one explainer, every sample is explained by its model; with K (cross-fitting), a sample in fold k (by
    :func:`pipeline.models.cross_fit_folds` with ``fold_seed``) by the k-th, the model that never saw it.

    Images reach the model at its input size. Statistics are computed on CAMs upsampled to that size and normalised
    to mass distributions; where the source gives no foreground mask for a sample it is estimated
    (:mod:`pipeline.foreground`) and the row says ``mask_kind = "estimated"``.
    """
    size = explainers[0].image_size(source.natural_size)
    tables, probs, cams, skipped, embeddings, digests, signatures = [], [], [], [], [], [], []
    for batch in source.batches(size, batch_size, start, stop):
        skipped.extend(batch.skipped)
        if len(batch.labels) == 0:
            continue
        folds = cross_fit_folds(batch.sample_ids, len(explainers), fold_seed) if len(explainers) > 1 else None
        out = _explain(explainers, batch.images, batch.labels, folds)
        mass, valid = heatmaps.to_mass(upsample(out.cam_pred, size))
        label_mass, label_valid = heatmaps.to_mass(upsample(out.cam_label, size))
        mask_kind = np.full(len(batch.labels), "none", dtype=object) if batch.mask_kind is None \
            else batch.mask_kind.astype(object)
        foreground = np.zeros((len(batch.labels), *size), dtype=bool) if batch.foreground is None \
            else batch.foreground.copy()
        missing = mask_kind != "true"
        if missing.any():
            foreground[missing] = estimate_foreground(batch.images[missing])
            mask_kind[missing] = "estimated"
        stats = heatmaps.summarise(mass, foreground)
        label_stats = heatmaps.summarise(label_mass, foreground)
        rows = np.arange(len(batch.labels))
        table = pd.DataFrame(
            {
                "sample_id": batch.sample_ids,
                "label": batch.labels,
                "pred": out.pred,
                "confidence": out.probs[rows, out.pred],
                "label_prob": out.probs[rows, batch.labels],
                **stats,
                **{f"label_{name}": label_stats[name] for name in
                   ("border_focus", "corner_focus", "background_attention", "concentration")},
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
        embeddings.append(out.embedding.astype(np.float32))
        digests.append(pixel_digests(batch.images))
        signatures.append(_signatures(batch.images))
    if not tables:
        return ShardResult(pd.DataFrame(), np.zeros((0, len(source.class_names)), np.float32),
                           np.zeros((0, 1, 1), np.float32), skipped, np.zeros((0, 1), np.float32),
                           np.zeros(0, dtype=object), np.zeros((0, 3 * SIGNATURE_SIZE**2), np.float16))
    return ShardResult(pd.concat(tables, ignore_index=True), np.concatenate(probs), np.concatenate(cams), skipped,
                       np.concatenate(embeddings), np.concatenate(digests), np.concatenate(signatures))


def _signatures(images: np.ndarray) -> np.ndarray:
    return pixel_signatures(resize(images, (SIGNATURE_SIZE, SIGNATURE_SIZE)))


def embed(source: Source, explainer: GradCAM, size: tuple[int, int], batch_size: int) -> tuple[np.ndarray, ...]:
    """Sample ids, penultimate-layer embeddings (forward passes only), pixel digests and pixel signatures of a whole
    source."""
    ids, embeddings, digests, signatures = [], [], [], []
    for batch in source.batches(size, batch_size):
        if len(batch.labels):
            ids.append(batch.sample_ids)
            embeddings.append(explainer.embed(batch.images).astype(np.float32))
            digests.append(pixel_digests(batch.images))
            signatures.append(_signatures(batch.images))
    if not ids:
        return (np.zeros(0, dtype=object), np.zeros((0, 1), np.float32), np.zeros(0, dtype=object),
                np.zeros((0, 3 * SIGNATURE_SIZE**2), np.float16))
    return tuple(np.concatenate(parts) for parts in (ids, embeddings, digests, signatures))


def split_duplicates(audited: Source, merged: ShardResult, explainer: GradCAM, *, size: tuple[int, int],
                     batch_size: int, thresholds: Thresholds, reembed: bool = False,
                     other: Source | None = None) -> pd.DataFrame:
    """Exact and near duplicate pairs (:func:`pipeline.duplicates.find_duplicates`) within the audited split and,
    given the ``other`` (training) split, between the two: leakage.

    The audited split's embeddings are the ones its shards kept, unless ``reembed`` (cross-fitted shards came from
    several models, whose embeddings are not comparable): then every split is embedded by ``explainer``'s model.
    """
    if reembed:
        ids, embeddings, digests, signatures = embed(audited, explainer, size, batch_size)
    else:
        ids, embeddings, digests, signatures = (merged.table["sample_id"].to_numpy(), merged.embeddings,
                                                merged.digests, merged.signatures)
    options = {"min_similarity": thresholds.min_duplicate_similarity,
               "min_pixel_correlation": thresholds.min_pixel_correlation, "signatures_a": signatures}
    found = [find_duplicates(ids, audited.split, embeddings, digests, **options)]
    if other is not None:
        other_ids, other_embeddings, other_digests, other_signatures = embed(other, explainer, size, batch_size)
        found.append(find_duplicates(ids, audited.split, embeddings, digests, ids_b=other_ids, split_b=other.split,
                                     embeddings_b=other_embeddings, digests_b=other_digests,
                                     signatures_b=other_signatures, **options))
    return pd.concat(found, ignore_index=True)


def merge(shards: list[ShardResult]) -> ShardResult:
    """Concatenate shard results in order."""
    full = [s for s in shards if len(s.table)] or shards[:1]
    return ShardResult(
        pd.concat([s.table for s in full], ignore_index=True),
        np.concatenate([s.probs for s in full]),
        np.concatenate([s.cams for s in full]),
        [item for s in shards for item in s.skipped],
        np.concatenate([s.embeddings for s in full]),
        np.concatenate([s.digests for s in full]),
        np.concatenate([s.signatures for s in full]),
    )
