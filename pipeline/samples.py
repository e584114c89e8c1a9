"""The per-sample table of one shard: Grad-CAM, then the heatmap statistics, batch by batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import heatmaps
from .datasets import Source
from .foreground import estimate_foreground
from .gradcam import GradCAM, upsample


@dataclass(frozen=True)
class ShardResult:
    """One shard's rows, plus the arrays kept beside the table (too wide for columns)."""

    table: pd.DataFrame
    probs: np.ndarray  # (n, C) float32 class probabilities
    cams: np.ndarray  # (n, h, w) float32 predicted-class CAMs at the target layer's resolution, unnormalised


def scan(source: Source, explainer: GradCAM, start: int, stop: int, batch_size: int) -> ShardResult:
    """Audit samples ``start`` to ``stop`` of ``source``: probabilities, CAMs and statistics per sample.

    Statistics are computed on CAMs upsampled to the image size and normalised to mass distributions; where the
    source has no foreground masks they are estimated (:mod:`pipeline.foreground`).
    """
    tables, probs, cams = [], [], []
    for batch in source.batches(batch_size, start, stop):
        images, labels = batch["image"], batch["label"]
        out = explainer.explain(images.astype(np.float32), labels)
        size = images.shape[1:3]
        mass, valid = heatmaps.to_mass(upsample(out.cam_pred, size))
        label_mass, label_valid = heatmaps.to_mass(upsample(out.cam_label, size))
        foreground = batch["foreground"]
        mask_kind = "true"
        if foreground is None:
            foreground, mask_kind = estimate_foreground(images), "estimated"
        stats = heatmaps.summarise(mass, foreground)
        label_stats = heatmaps.summarise(label_mass, foreground)
        rows = np.arange(len(labels))
        table = pd.DataFrame(
            {
                "sample_id": batch["sample_id"],
                "label": labels,
                "pred": out.pred,
                "confidence": out.probs[rows, out.pred],
                "label_prob": out.probs[rows, labels],
                **stats,
                "label_border_focus": label_stats["border_focus"],
                "label_background_attention": label_stats["background_attention"],
                "cam_valid": valid,
                "label_cam_valid": label_valid,
                "mask_kind": mask_kind,
            }
        )
        if batch.get("planted") is not None:
            table["planted"] = batch["planted"]
        tables.append(table)
        probs.append(out.probs.astype(np.float32))
        cams.append(out.cam_pred.astype(np.float32))
    return ShardResult(pd.concat(tables, ignore_index=True), np.concatenate(probs), np.concatenate(cams))


def merge(shards: list[ShardResult]) -> ShardResult:
    """Concatenate shard results in order."""
    return ShardResult(
        pd.concat([s.table for s in shards], ignore_index=True),
        np.concatenate([s.probs for s in shards]),
        np.concatenate([s.cams for s in shards]),
    )
