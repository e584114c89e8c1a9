"""The causal check behind a shortcut flag: blank the suspected region and see whether the class's predictions fall.

If a class's heatmaps sit in a corner because the model really uses what is there, filling that corner with a
neutral colour should cost that class far more accuracy than it costs the other classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _decode
from .datasets import Source
from .gradcam import GradCAM


@dataclass(frozen=True)
class OcclusionResult:
    """Accuracy of one class's samples and of the other classes' samples, before and after blanking the region."""

    class_before: float  # accuracy
    class_after: float
    others_before: float
    others_after: float
    class_confidence_before: float  # mean probability of the true label
    class_confidence_after: float
    others_confidence_before: float
    others_confidence_after: float
    samples: int  # of the class; as many of the other classes

    @property
    def excess_drop(self) -> float:
        """How much more accuracy the class loses than the other classes do (points in [-1, 1])."""
        return (self.class_before - self.class_after) - (self.others_before - self.others_after)

    @property
    def excess_confidence_drop(self) -> float:
        """How much more of its confidence in the true label the class loses than the other classes ([-1, 1])."""
        return (self.class_confidence_before - self.class_confidence_after) - (
            self.others_confidence_before - self.others_confidence_after)


def blank(images: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Fill ``region`` (H, W bool) of every image (N, H, W, 3) with that image's mean colour outside the region."""
    outside = images[:, ~region, :].mean(axis=1)
    out = images.astype(np.float32, copy=True)
    out[:, region, :] = outside[:, None, :]
    return out


def occlusion_check(explainer: GradCAM, source: Source, labels: np.ndarray, sample_ids: np.ndarray, k: int,
                    region: np.ndarray, *, max_samples: int = 300, batch_size: int = 128,
                    seed: int = 0) -> OcclusionResult:
    """Accuracy of class ``k`` and of the other classes with and without ``region`` blanked (at the model's size).

    Up to ``max_samples`` samples of the class and as many of the other classes, drawn with ``seed``.
    """
    rng = np.random.default_rng(seed)
    mine, others = np.flatnonzero(labels == k), np.flatnonzero(labels != k)
    n = min(max_samples, len(mine), len(others))
    chosen = np.concatenate([rng.choice(mine, n, replace=False), rng.choice(others, n, replace=False)])
    size = region.shape
    images, readable = [], np.ones(len(chosen), dtype=bool)
    for i, sample_id in enumerate(sample_ids[chosen]):
        try:
            images.append(_decode.resize(source.load([sample_id])[0], size))
        except _decode.Unreadable:  # gone since it was audited: the check does without it
            readable[i] = False
    images, truth = np.stack(images), labels[chosen][readable]
    n = int(readable[:n].sum())

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each prediction is right, and the probability of the true label."""
        parts = [explainer.explain(batch[i : i + batch_size], truth[i : i + batch_size])
                 for i in range(0, len(batch), batch_size)]
        pred, probs = np.concatenate([p.pred for p in parts]), np.concatenate([p.probs for p in parts])
        return pred == truth, probs[np.arange(len(truth)), truth]

    (right, conf), (right_after, conf_after) = predict(images.astype(np.float32)), predict(blank(images, region))
    mine, rest = slice(0, n), slice(n, None)
    return OcclusionResult(*(float(values[part].mean()) for part in (mine, rest) for values in (right, right_after)),
                           *(float(values[part].mean()) for part in (mine, rest) for values in (conf, conf_after)),
                           int(n))
