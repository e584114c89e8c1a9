"""The causal check behind a shortcut flag: blank the suspected region and see whether the class's predictions fall.

If a class's heatmaps sit in a corner because the model really uses what is there, filling that corner with a
neutral colour should cost that class far more accuracy than it costs the other classes. A class blamed for its
background gets each image's background (outside its object mask: the source's true mask, else the estimate of
:mod:`pipeline.foreground`, as in the audit) filled with mid grey instead.

The same blanking, image by image over the whole audited split, gives each sample's *reliance* on a class's region
(:func:`reliance`): how much of the evidence for its given label (log-odds) it loses when that region is blanked.

Blanking asks whether the region is *needed*; where every class needs it (a spot at the centre, on the object),
blanking costs all of them and singles none out. The transplant check (:func:`transplant_check`) asks the converse,
whether the region's content is *enough*: other classes' images get the region from the class's images, and from
other classes' images as a control; a logo makes the model call them the class, a part of an object in a small
region seldom does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _decode
from .datasets import Source
from .foreground import estimate_foreground
from .gradcam import GradCAM, explain_by_fold
from .models import cross_fit_folds

#: :func:`reliance` measures every image of a class and of a draw of this many samples of the split: the other
#: classes' ``tail_quantile`` (0.95, the ``uses_shortcut`` cut-off) is estimated from about as many to within half a
#: percentile (standard error sqrt(0.95 * 0.05 / 2,000)).
MAX_OTHERS = 2_000

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


def occlusion_check(explainers: Sequence[GradCAM], source: Source, labels: np.ndarray, sample_ids: np.ndarray,
                    k: int, region: np.ndarray | None, *, size: tuple[int, int] | None = None, max_samples: int = 300,
                    batch_size: int = 128, seed: int = 0, population: np.ndarray | None = None,
                    fold_seed: int = 0) -> OcclusionResult:
    """Accuracy of class ``k`` and of the other classes with and without ``region`` blanked (at the model's size).

    ``explainers`` are the audit's model, or its K cross-fitted models: each sample is predicted by the model of its
    fold (:func:`pipeline.models.cross_fit_folds` with ``fold_seed``), the one that never saw it, as in the audit (a
    model predicting the images it trained on knows them by heart, with or without the region: on the Oxford-IIIT
    Pet dogs with striped backgrounds, ``benchmarks/validate_pets_background.py``, the first fold's model on every
    image measured an excess drop of -0.03, the out-of-fold models 0.11).

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
    images, readable = _load(source, sample_ids[chosen], size, batch_size)
    truth, ids = labels[chosen][readable], sample_ids[chosen][readable]
    n = int(readable[:n].sum())
    if region is None:
        occluded = blank(images, ~foreground_masks(source, ids, images), fill="grey")
    else:
        occluded = blank(images, region)
    folds = _folds(ids, len(explainers), fold_seed)

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each prediction is right, and the probability of the true label."""
        pred, probs = _predict(explainers, batch, truth, folds, batch_size)
        return pred == truth, probs

    (right, conf), (right_after, conf_after) = predict(images.astype(np.float32)), predict(occluded)
    mine, rest = slice(0, n), slice(n, None)
    return OcclusionResult(*(float(values[part].mean()) for part in (mine, rest) for values in (right, right_after)),
                           *(float(values[part].mean()) for part in (mine, rest) for values in (conf, conf_after)),
                           int(n))


@dataclass(frozen=True)
class TransplantResult:
    """How often other classes' images are predicted as the class once a region is pasted into them from the class's
    images, and from other classes' images (the control)."""

    class_rate: float  # share of the composites with the class's content predicted as the class
    control_rate: float  # the same with other classes' content
    class_probability: float  # mean probability of the class, composites with the class's content
    control_probability: float
    samples: int  # composites of each kind

    @property
    def excess(self) -> float:
        """How many more of the composites with the class's content are called the class than of the controls."""
        return self.class_rate - self.control_rate


def transplant_check(explainers: Sequence[GradCAM], source: Source, labels: np.ndarray, sample_ids: np.ndarray,
                     k: int, region: np.ndarray, *, max_samples: int = 300, batch_size: int = 128, seed: int = 0,
                     population: np.ndarray | None = None, fold_seed: int = 0) -> TransplantResult:
    """Whether the content of ``region`` (boolean (H, W) at the model's input size) in class ``k``'s images is
    enough to make the model call other classes' images ``k``.

    Each *recipient*, an image of another class drawn from the whole split, is predicted twice: with the region's
    pixels pasted from a *donor* of class ``k``, and from a *control donor*, another image of any class but ``k``.
    Donors and control donors are drawn from ``population`` (bool per sample; None: every sample), e.g. the class's
    images that peak on the region and other classes' images as focused there, so that both sides hold what the
    model looks at there. The excess of the first rate of ``k`` predictions over the second is what the class's
    content there carries: everything else in the composites is the same recipients'.

    With K cross-fitted ``explainers``, each donor, control donor and recipient triple is drawn within one fold
    (:func:`pipeline.models.cross_fit_folds` with ``fold_seed``) and predicted by its model, which saw none of them.
    Up to ``max_samples`` triples, drawn with ``seed``; unreadable images are left out.
    """
    rng = np.random.default_rng(seed)
    labels, sample_ids = np.asarray(labels), np.asarray(sample_ids)
    pool = np.ones(len(labels), dtype=bool) if population is None else np.asarray(population, dtype=bool)
    folds = _folds(sample_ids, len(explainers), fold_seed)
    triples = []
    for fold in np.unique(folds):
        here = folds == fold
        donors, controls = np.flatnonzero(here & pool & (labels == k)), np.flatnonzero(here & pool & (labels != k))
        recipients = np.flatnonzero(here & (labels != k))
        n = min(len(donors), len(controls), len(recipients) // 2)  # recipients apart from the controls
        controls = rng.choice(controls, n, replace=False)
        triples.append(np.stack([rng.choice(donors, n, replace=False), controls,
                                 rng.choice(np.setdiff1d(recipients, controls), n, replace=False)], axis=1))
    triples = np.concatenate(triples) if triples else np.zeros((0, 3), dtype=int)
    triples = triples[rng.permutation(len(triples))[:max_samples]]
    images, readable = _load(source, sample_ids[triples.ravel()], region.shape, batch_size)
    complete = readable.reshape(-1, 3).all(axis=1)
    position = np.cumsum(readable) - 1  # row of each readable image in ``images``
    rows = position.reshape(-1, 3)[complete]
    donors, controls, recipients = (images[rows[:, i]].astype(np.float32) for i in range(3))
    n = len(rows)
    if n == 0:
        return TransplantResult(np.nan, np.nan, np.nan, np.nan, 0)
    inside = region[None, :, :, None]
    composites = np.concatenate([np.where(inside, donors, recipients), np.where(inside, controls, recipients)])
    pair_folds = np.tile(folds[triples[complete, 2]], 2)
    out = explain_by_fold(explainers, composites, np.full(len(composites), k), pair_folds, batch_size)
    called, probability = out.pred == k, out.probs[:, k].astype(np.float64)
    return TransplantResult(float(called[:n].mean()), float(called[n:].mean()), float(probability[:n].mean()),
                            float(probability[n:].mean()), n)


def reliance(explainers: Sequence[GradCAM], source: Source, sample_ids: np.ndarray, labels: np.ndarray,
             label_probs: np.ndarray, regions: dict[int, np.ndarray | None], *, size: tuple[int, int],
             batch_size: int = 128, fold_seed: int = 0, max_others: int = MAX_OTHERS,
             seed: int = 0) -> dict[int, np.ndarray]:
    """Each sample's *reliance* on each class's region: the drop in the log-odds of its given label when the region
    is blanked as :func:`occlusion_check` blanks it. Measured on every image of the class, and on the images of a
    seeded draw of ``max_others`` samples of the split, the same for every class (the other classes' images among
    them give the cut-off and AUROC the class is compared with; the cost stays the class's size plus
    ``max_others`` per class, not the split's size).

    The log-odds ``log(p / (1 - p))`` of the given label's probability ``p`` is the model's evidence for it against
    the other classes, the scale on which a softmax adds what each part of an image contributes (for two classes,
    the difference of their scores). The probability itself saturates: a confidently classified image can lose
    most of its evidence and barely move, while one near 0.5 moves most for a little (on the Oxford-IIIT Pet
    backgrounds the cats, near 1, lost less probability than the clean dogs, near 0.3, although neither used the
    planted background). Probabilities are clipped to [:data:`PROBABILITY_FLOOR`, 1 - :data:`PROBABILITY_FLOOR`]
    (float32 softmax outputs reach 0 and 1), so a drop lies within +-2 log((1 - floor) / floor), about +-27.6.

    Parameters
    ----------
    explainers : the audit's model, or its K cross-fitted models (a sample in fold k, by
        :func:`pipeline.models.cross_fit_folds` with ``fold_seed``, is predicted by the k-th, the model that never
        saw it), as in the audit.
    source : the audited source; its batches at ``size`` (the model's input size) are the pixels the audit saw.
    sample_ids, labels, label_probs : the audited samples, their given labels and the audit's probability of them
        (the probability before blanking).
    regions : class -> the region blanked for it: boolean (H, W) at ``size``, filled with each image's surrounding
        colour; or None, the background: outside each image's object mask (the source's true mask, else the estimate
        of :mod:`pipeline.foreground`), filled with grey.

    Returns
    -------
    class -> (N,) drops ``log_odds(p(label | image)) - log_odds(p(label | image with the region blanked))``, rows as
    ``sample_ids``; NaN for a sample not measured for that class, or that cannot be read any more. One forward pass
    per measured sample and class (a background is the same for every class: one pass serves all classes blamed for
    it); each measured image is decoded once, and no other.
    """
    labels = np.asarray(labels)
    index = {sample_id: i for i, sample_id in enumerate(np.asarray(sample_ids, dtype=str))}
    drawn = np.zeros(len(labels), dtype=bool)
    drawn[np.random.default_rng(seed).permutation(len(labels))[:max_others]] = True
    measured = {k: drawn | (labels == k) for k in regions}
    after = {k: np.full(len(index), np.nan) for k in regions}
    background = [k for k, region in regions.items() if region is None]
    if background:
        measured_background = np.logical_or.reduce([measured[k] for k in background])
    if not regions:
        return {}
    wanted = np.logical_or.reduce([measured[k] for k in regions])  # only these images are decoded, each once
    for batch in source.batches(size, batch_size, rows=np.unique(source.rows_of(np.asarray(sample_ids)[wanted]))):
        rows = np.array([index.get(sample_id, -1) for sample_id in np.asarray(batch.sample_ids, dtype=str)])
        keep = rows >= 0
        if not keep.any():
            continue
        ids, images, truth, rows = batch.sample_ids[keep], batch.images[keep], labels[rows[keep]], rows[keep]
        folds = _folds(ids, len(explainers), fold_seed)
        for k, region in regions.items():
            if region is not None and (part := measured[k][rows]).any():
                after[k][rows[part]] = _predict(explainers, blank(images[part], region), truth[part], folds[part],
                                                batch_size)[1]
        if background and (part := measured_background[rows]).any():
            chosen = np.zeros(len(keep), dtype=bool)
            chosen[np.flatnonzero(keep)[part]] = True  # masks (estimated, where not true) only for measured images
            objects = _batch_foreground(batch, chosen)
            probs = _predict(explainers, blank(images[part], ~objects, fill="grey"), truth[part], folds[part],
                             batch_size)[1]
            for k in background:
                after[k][rows[part]] = np.where(measured[k][rows[part]], probs, np.nan)
    before = log_odds(np.asarray(label_probs, dtype=float))
    return {k: before - log_odds(values) for k, values in after.items()}


#: :func:`log_odds` clips probabilities to [floor, 1 - floor]: float32 softmax outputs reach 0 and 1.
PROBABILITY_FLOOR = 1e-6


def log_odds(probs: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to [:data:`PROBABILITY_FLOOR`, 1 - :data:`PROBABILITY_FLOOR`];
    NaN stays NaN."""
    p = np.clip(probs, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(p) - np.log1p(-p)


def _load(source: Source, sample_ids: np.ndarray, size: tuple[int, int],
          batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``sample_ids`` at ``size`` (n, H, W, 3), as the audit's batches gave them (one pass of the
    source's decoder over just these samples), and which of the ids could be read (bool per id): an image gone since
    it was audited is left out, and a check does without it."""
    found = {}
    for batch in source.batches(size, batch_size, rows=np.unique(source.rows_of(sample_ids))):
        found.update(zip(np.asarray(batch.sample_ids, dtype=str), batch.images, strict=True))
    readable = np.array([sample_id in found for sample_id in np.asarray(sample_ids, dtype=str)], dtype=bool)
    images = [found[sample_id] for sample_id in np.asarray(sample_ids, dtype=str)[readable]]
    return (np.stack(images) if images else np.zeros((0, *size, 3), dtype=np.uint8)), readable


def _batch_foreground(batch, keep: np.ndarray) -> np.ndarray:
    """The object masks of a batch's kept images: its true masks, else estimated, as the audit measured them."""
    images = batch.images[keep]
    masks = np.zeros(images.shape[:3], dtype=bool)
    true = np.zeros(len(images), dtype=bool) if batch.mask_kind is None else batch.mask_kind[keep] == "true"
    if true.any():
        masks[true] = batch.foreground[keep][true]
    if (~true).any():
        masks[~true] = estimate_foreground(images[~true])
    return masks


def _folds(sample_ids: np.ndarray, models: int, fold_seed: int) -> np.ndarray:
    """The fold of each sample, as the audit assigned them (all 0 for a single model)."""
    return cross_fit_folds(sample_ids, models, fold_seed) if models > 1 else np.zeros(len(sample_ids), dtype=int)


def _predict(explainers: Sequence[GradCAM], images: np.ndarray, labels: np.ndarray, folds: np.ndarray,
             batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class and the probability of the given label of each image, each by the model of its fold,
    in batches of at most ``batch_size``."""
    out = explain_by_fold(explainers, images, labels, folds, batch_size)
    return out.pred.astype(np.int64), out.probs[np.arange(len(labels)), labels].astype(np.float64)
