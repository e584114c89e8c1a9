"""The causal check behind a shortcut flag: blank the suspected region and see whether the class's predictions fall.

If a class's heatmaps sit in a corner because the model really uses what is there, filling that corner with a
neutral colour should cost that class far more accuracy than it costs the other classes. A class blamed for its
background gets each image's background (outside its object mask: the source's true mask, else the estimate of
:mod:`pipeline.foreground`, as in the audit) filled with mid grey instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _decode
from .datasets import Source
from .foreground import estimate_foreground
from .gradcam import GradCAM

#: How a blanked region is filled, by name (:func:`blank`).
FILLS = {
    "surround": "each image's mean colour outside the region (a spot, a corner, a band)",
    "grey": "mid grey, (128, 128, 128): neither the background's texture nor its colour (the background)",
}


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


def blank(images: np.ndarray, region: np.ndarray, *, fill: str = "surround") -> np.ndarray:
    """Fill ``region`` of every image (N, H, W, 3), float32.

    Parameters
    ----------
    images : (N, H, W, 3) pixels in [0, 255].
    region : boolean (H, W), the same region in every image, or (N, H, W), one per image.
    fill : one of :data:`FILLS`: ``"surround"``, each image's mean colour outside its region
        (``sum(image * ~region) / |~region|`` per channel; mid grey when the region is the whole image), or
        ``"grey"``, 128 in every channel.
    """
    inside = np.broadcast_to(np.asarray(region, dtype=bool), images.shape[:3])
    if fill == "grey":
        colour = np.full((len(images), 3), 128.0, dtype=np.float32)
    elif fill == "surround":
        outside = (~inside).sum(axis=(1, 2))[:, None]
        sums = np.einsum("nhwc,nhw->nc", images.astype(np.float32), ~inside)
        colour = np.where(outside > 0, sums / np.maximum(outside, 1), 128.0).astype(np.float32)
    else:
        raise ValueError(f"unknown fill {fill!r}; choose from {', '.join(FILLS)}")
    return np.where(inside[..., None], colour[:, None, None, :], images.astype(np.float32))


def foreground_masks(source: Source, sample_ids: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The object masks (N, H, W) of ``images`` (the samples ``sample_ids`` at the model's size): the source's true
    masks (:meth:`pipeline.datasets.Source.load_masks`) where it has them, else estimated from the images, as the
    audit's ``background_attention`` was measured."""
    size = images.shape[1:3]
    masks = np.zeros(images.shape[:3], dtype=bool)
    missing = np.ones(len(images), dtype=bool)
    for i, mask in enumerate(source.load_masks(list(sample_ids))):
        if mask is not None:
            masks[i], missing[i] = _decode.resize_masks(mask[None], size)[0], False
    if missing.any():
        masks[missing] = estimate_foreground(images[missing])
    return masks


def occlusion_check(explainer: GradCAM, source: Source, labels: np.ndarray, sample_ids: np.ndarray, k: int,
                    region: np.ndarray | None, *, size: tuple[int, int] | None = None, max_samples: int = 300,
                    batch_size: int = 128, seed: int = 0, population: np.ndarray | None = None) -> OcclusionResult:
    """Accuracy of class ``k`` and of the other classes with and without ``region`` blanked (at the model's size).

    ``region`` is a boolean (H, W) mask at the model's input size, filled with each image's surrounding colour; or
    None, the background: each image's outside of its object mask (:func:`foreground_masks`), filled with grey, at
    ``size`` (the model's input size; needed only then). Up to ``max_samples`` samples of the class and as many of
    the other classes, drawn with ``seed`` from ``population`` (bool per sample; None: every sample), e.g. the
    images of a sub-population and other classes' images as focused on the region.
    """
    rng = np.random.default_rng(seed)
    pool = np.ones(len(labels), dtype=bool) if population is None else np.asarray(population, dtype=bool)
    mine, others = np.flatnonzero(pool & (labels == k)), np.flatnonzero(pool & (labels != k))
    n = min(max_samples, len(mine), len(others))
    chosen = np.concatenate([rng.choice(mine, n, replace=False), rng.choice(others, n, replace=False)])
    if region is not None:
        size = region.shape
    elif size is None:
        raise ValueError("the background check needs the model's input size")
    images, readable = [], np.ones(len(chosen), dtype=bool)
    for i, sample_id in enumerate(sample_ids[chosen]):
        try:
            images.append(_decode.resize(source.load([sample_id])[0], size))
        except _decode.Unreadable:  # gone since it was audited: the check does without it
            readable[i] = False
    images, truth = np.stack(images), labels[chosen][readable]
    n = int(readable[:n].sum())
    if region is None:
        occluded = blank(images, ~foreground_masks(source, sample_ids[chosen][readable], images), fill="grey")
    else:
        occluded = blank(images, region)

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each prediction is right, and the probability of the true label."""
        parts = [explainer.explain(batch[i : i + batch_size], truth[i : i + batch_size])
                 for i in range(0, len(batch), batch_size)]
        pred, probs = np.concatenate([p.pred for p in parts]), np.concatenate([p.probs for p in parts])
        return pred == truth, probs[np.arange(len(truth)), truth]

    (right, conf), (right_after, conf_after) = predict(images.astype(np.float32)), predict(occluded)
    mine, rest = slice(0, n), slice(n, None)
    return OcclusionResult(*(float(values[part].mean()) for part in (mine, rest) for values in (right, right_after)),
                           *(float(values[part].mean()) for part in (mine, rest) for values in (conf, conf_after)),
                           int(n))
