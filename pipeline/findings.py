"""From the per-sample table to findings: shortcut classes with evidence, relabel candidates, per-sample flags.

A class is a *shortcut candidate* when its heatmaps sit in a region off the object far more than the other classes'
do, for the whole class or for a sub-population of it. The heatmaps judged are each image's *given label's* CAM (the
``label_*`` columns of the samples table, ``label_cams``): the evidence for the class in its own images, which is
the predicted class's CAM wherever the model is right, and not the evidence for another class where it is wrong.
Four regions are measured per class: the border band and its favoured corner (fixed regions), its *hot spot*, the
window anywhere in the image where the class's heatmaps peak far more often than other classes' do
(:func:`class_hot_spots`), and the *background*, outside each image's object mask (true or estimated). A class
favours the band, the corner or the background when

- whole class: its mean focus ratio is at least ``min_focus_ratio`` times the median of the other classes' means,
  and a random sample of it is more focused there than a random sample of another class with probability (AUROC)
  at least ``min_auroc``;
- sub-population: at least ``min_tail_share`` of its samples are more focused there than the ``tail_quantile`` of
  the other classes' samples (so 1 - ``tail_quantile`` would be expected by chance);

and its hot spot when at least ``min_spot_excess`` more of its images than of other classes' peak there
(:meth:`HotSpots.passes`).

A candidate is *flagged* only after the causal check (:mod:`pipeline.occlusion`): blanking the region (filling the
background with grey) must cost the class's confidence in its true label at least ``min_occlusion_drop`` more than it
costs the other classes'; for a sub-population's candidate, its images against other classes' images as focused
there (:func:`check_population`); and, where the images' reliance on the region was measured (below), at least
``min_reliance_share`` of the class's images must lose more evidence when it is blanked than the ``tail_quantile`` of
the other classes' images (:func:`reliance_refutes`). A candidate whose mean drop falls short is still confirmed when
``min_reliance_confirm_share`` of its images lose that much (:func:`reliance_confirms`): the images bear it out one by
one. Blanking asks whether the model needs the region; where every class needs it (a spot at the centre, on the
object), neither check can single the class out. A candidate still not confirmed, whose region covers at most
:data:`MAX_TRANSPLANT_SHARE` of the image, is then put to the transplant check (:func:`record_transplant`): pasting
the region (grown by :data:`TRANSPLANT_GROWTH` cell) from its images into other classes' images must make the model
call them the class at least ``min_transplant_excess`` more often than pasting it from other classes' images.
``confirmed_by`` says which decided (``occlusion``, ``reliance`` or ``transplant``).
The class's ``shortcut_score`` is that tail share of its strongest statistic (range [0, 1]; about 0.05 by chance).

Each candidate's images are ranked by their *reliance* on the blamed region (:func:`record_reliance`): the drop in
the log-odds of an image's given label when the region is blanked exactly as the causal check blanks it
(:func:`pipeline.occlusion.reliance`). The reliance asks the model itself what it needs, where a coarse heatmap only
says roughly where it looked. A flagged class's image *uses the shortcut* (the ``uses_shortcut`` flag) when it does
both: its heatmap statistic on the region and its reliance on it each exceed the ``tail_quantile`` of the other
classes' images' (:func:`shortcut_tail`); without a measured reliance, the statistic alone decides.

Every number behind a flag goes into the class's evidence sentence. SpRAy clusters of each class's heatmaps
(:mod:`pipeline.spray`) show sub-populations with a distinct strategy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from scipy.ndimage import gaussian_filter
from scipy.stats import mannwhitneyu

from . import heatmaps
from .config import Thresholds
from .spray import spray

if TYPE_CHECKING:
    from .occlusion import OcclusionResult, TransplantResult

#: Statistics that can reveal a shortcut; each measures one region: the border band, the favoured corner and each
#: image's background (focus ratios), the class's hot spot (a peak margin, samples-table column :func:`spot_column`).
SHORTCUT_STATISTICS = ("border_focus", "corner_focus", "spot_margin", "background_focus")
#: The statistics of fixed regions: when one of them passes, it is preferred to the learnt regions (the hot spot,
#: chosen from the heatmaps themselves, and an estimated background, whose masks are rough), which could otherwise
#: absorb a corner or a frame. A background from the source's true masks is as fixed as the border band: when every
#: mask is true, it competes with them on its tail share (a background shortcut touches the border band too).
FIXED_STATISTICS = ("border_focus", "corner_focus")
#: The samples-table columns of the given label's CAM's statistics: ``label_`` and the statistic's column.
EVIDENCE_PREFIX = "label_"
#: What each statistic measures, as the evidence sentence names it.
STATISTIC_WORDS = {"border_focus": "border focus", "corner_focus": "corner focus",
                   "spot_margin": "peak margin on the spot", "background_focus": "background focus"}
#: A region at least this many times wider than high (or higher than wide) is described as a strip.
STRIP_ASPECT = 3.0
STATISTIC_COLUMNS = ("border_focus", "corner_focus", "background_attention", "concentration")
DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class AuditTables:
    """What an audit produced: the tables, the CAMs kept beside them, and the run's record (``audit.json``)."""

    samples: pd.DataFrame
    classes: pd.DataFrame
    cams: np.ndarray  # (N, h, w) raw predicted-class CAMs at the target layer's resolution, rows as in samples
    class_mean_cams: np.ndarray  # (C, h, w) mean normalised CAM of the given label per class
    probs: np.ndarray | None = None  # (N, C) the model's class probabilities, rows as in samples
    meta: dict = field(default_factory=dict)
    clusters: dict = field(default_factory=dict)  # class -> SpRAy clusters of its CAMs (pipeline.spray.Clusters)
    duplicates: pd.DataFrame | None = None
    # class -> the region blamed for a candidate, boolean (H, W) at the model's input size; a class blamed for its
    # background has none (each image has its own object mask)
    regions: dict = field(default_factory=dict)
    # (N, h, w) raw CAMs of each sample's given label, the evidence the rules judged (the findings' pictures); None:
    # not kept
    label_cams: np.ndarray | None = None


#: ``occlusion(k, region, population) -> OcclusionResult``: blanks ``region`` (H, W bool) in samples of class ``k``
#: and of the other classes, drawn from ``population`` (bool per sample; None: all); ``region`` None: fills each
#: image's background (outside its object mask) instead.
Occlusion = Callable[[int, "np.ndarray | None", "np.ndarray | None"], "OcclusionResult"]
#: ``uses_shortcut`` by the reliance also asks that the image look at the region more than this quantile of the other
#: classes' images (the upper quartile). Against the focus tail (``tail_quantile``) on the validation runs' flagged
#: classes: precision / recall 0.96 / 1.00 (0.99 / 1.00) on the CIFAR-10 corner, 1.00 / 1.00 (1.00 / 0.91) on the
#: deer's patch, 0.79 / 1.00 (0.91 / 0.78) on the pets' flat background, and 1.00 / 1.00 on the demo's corner, where
#: the focus tail flags no image at all (no clean class of the demo, but a few of its images, focus on that corner
#: alone).
LOOKS_QUANTILE = 0.75
#: ``reliance(regions) -> {k: drops}``: ``regions`` maps each checked class to its blamed region (as for
#: :data:`Occlusion`; None: each image's background); ``drops`` (N,), rows as in the samples table, is every sample's
#: drop in the log-odds of its given label when that region is blanked (:func:`pipeline.occlusion.reliance`).
Reliance = Callable[[dict], dict]
#: ``transplant(k, region, population) -> TransplantResult``: pastes ``region`` (H, W bool) from class ``k``'s images,
#: and from other classes' images, drawn from ``population`` (as for :data:`Occlusion`), into other classes' images.
Transplant = Callable[[int, "np.ndarray", "np.ndarray | None"], "TransplantResult"]
#: The transplant check is made for blamed regions of at most this share of the image: a larger region carries much of
#: a scene (the border band of a 32x32 image is 44% of it), and pasting it is no longer a test of a mark but of a
#: picture.
MAX_TRANSPLANT_SHARE = 0.25
#: What is pasted is the blamed region grown by this many cells of the hot spot rule's 16 x 16 grid
#: (:func:`pipeline.heatmaps.grown`): a window is placed on that grid, so a mark can straddle its edge, and a cut
#: mark is a different picture. Every class's mark on six CIFAR-10 models (``benchmarks/transplant_margins_cifar10.py``,
#: README), pasted as found and grown by one cell: the logos' excess 0.69 and 0.65 -> 0.71 and 0.74, the text stamp's
#: 0.24 -> 0.37, the clean classes' 0.04 -> 0.13 at most, against ``min_transplant_excess`` 0.35.
TRANSPLANT_GROWTH = 1
#: The causal check of a sub-population's candidate blanks the region in that sub-population, against other
#: classes' images as focused there, when each side has at least this many images; else in the whole class.
MIN_CHECKED_TAIL = 50


def build_tables(
    samples: pd.DataFrame,
    probs: np.ndarray,
    cams: np.ndarray,
    label_cams: np.ndarray,
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    thresholds: Thresholds,
    *,
    occlusion: Occlusion | None = None,
    reliance: Reliance | None = None,
    transplant: Transplant | None = None,
    thumbnails: np.ndarray | None = None,
) -> AuditTables:
    """All findings of an audit from its merged per-sample table, probabilities and CAMs: ``cams`` of the predicted
    class (kept for the report), ``label_cams`` of the given label (the evidence the shortcut rules, SpRAy and the
    class means judge), raw, at the target layer's resolution, rows as in ``samples``.

    ``thumbnails`` (N, 32, 32, 3), rows as in ``samples``, let the hot spot rule check that the images peaking on a
    spot look alike there (:func:`spot_consistency`); without them that check is not made.

    ``occlusion`` runs the causal check of each candidate class; without it (unit tests, dry runs) candidates are
    flagged on the statistics alone and their evidence says no causal check was made. ``reliance`` measures every
    sample's reliance on each candidate's blamed region (:func:`record_reliance`); without it, a class's samples are
    ranked by their heatmap statistic on the region. ``transplant`` puts the candidates neither confirms to the
    transplant check (:func:`record_transplant`).
    """
    scored = score_samples(samples.reset_index(drop=True), probs, class_names)
    labels = scored["label"].to_numpy()
    spots = class_hot_spots(label_cams, labels, len(class_names), image_size, thresholds, thumbnails)
    with_spot = np.flatnonzero(spots.masks.any(axis=(1, 2)))
    scored = pd.concat([scored, pd.DataFrame({spot_column(k): spots.margins[:, k] for k in with_spot},
                                             index=scored.index)], axis=1)
    classes = class_table(scored, class_names, image_size, thresholds, spots=spots)
    if reliance is not None:
        reliance = _measured_once(reliance)  # the region chosen here is blamed below: one forward pass, not two
        choose_by_reliance(scored, classes, reliance, image_size, thresholds, spots)
    # A spot's column stays in the samples table only for the classes whose measured region it is.
    measured = set(classes["region_column"])
    scored = scored.drop(columns=[spot_column(k) for k in with_spot if spot_column(k) not in measured])
    masks, blamed, populations = {}, {}, {}
    for row in classes.index[classes["candidate"]]:
        k = int(classes.loc[row, "class"])
        name, region = suspected_region(scored, classes, label_cams, k, image_size, thresholds, spots=spots)
        classes.loc[row, ["region", "region_share"]] = [name, np.nan if region is None else float(region.mean())]
        blamed[k] = region
        if region is not None:
            masks[k] = region
        if occlusion is not None:
            populations[k] = population = check_population(scored, classes, k, thresholds)
            record_occlusion(classes, k, occlusion(k, region, population), thresholds)
            classes.loc[row, "occlusion_population"] = "whole class" if population is None else "tail"
    scored = record_reliance(scored, classes, reliance(blamed) if reliance is not None and blamed else {}, thresholds)
    check_transplants(classes, blamed, populations, transplant, thresholds)
    # Without a causal check, a candidate is flagged on its statistics alone (its evidence says so).
    classes["flagged"] = (classes["status"] == "confirmed") | ((classes["status"] == "candidate") & (occlusion is None))
    mass, valid = heatmaps.to_mass(label_cams)
    clusters, cluster_column = {}, np.full(len(scored), -1)
    for k in range(len(class_names)):
        mine = np.flatnonzero(labels == k)
        if len(mine):
            clusters[k] = spray(mass[mine])
            cluster_column[mine] = clusters[k].labels
    scored["cam_cluster"] = cluster_column
    record_clusters(classes, clusters, masks)
    classes["evidence"] = [evidence(row, image_size, thresholds) for row in classes.to_dict("records")]
    scored["flags"] = flag_samples(scored, classes)
    scored["relabel_reason"] = relabel_reasons(scored)
    means = class_mean_cams(label_cams, labels, len(class_names))
    return AuditTables(scored, classes, cams, means, probs=np.asarray(probs, dtype=np.float32), clusters=clusters,
                       regions=masks, label_cams=label_cams)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 for X from ``inside``, Y from ``outside`` (the Mann-Whitney U statistic, scaled)."""
    inside, outside = inside[np.isfinite(inside)], outside[np.isfinite(outside)]
    if len(inside) == 0 or len(outside) == 0:
        return float("nan")
    return float(mannwhitneyu(inside, outside).statistic / (len(inside) * len(outside)))


def ranked_classes(classes: pd.DataFrame) -> list[int]:
    """Class indices as the report ranks them: flagged classes first, then by shortcut score (highest first)."""
    order = classes.assign(_score=classes["shortcut_score"].fillna(-np.inf)).sort_values(
        ["flagged", "_score"], ascending=False, kind="stable")
    return order["class"].astype(int).tolist()


def _percentile_rank(values: pd.Series) -> pd.Series:
    return values.rank(pct=True, na_option="keep")


def score_samples(samples: pd.DataFrame, probs: np.ndarray, class_names: tuple[str, ...]) -> pd.DataFrame:
    """Add ``shortcut_score``, ``relabel_score``, ``suggested_label``, ``is_label_issue`` and names to the table.

    ``shortcut_score`` is the larger of the sample's percentile ranks of border focus and corner focus within the
    audited split (range (0, 1]; NaN for an empty CAM).

    ``relabel_score`` is ``1 - q``, where ``q`` is cleanlab's self-confidence label quality (the model's probability
    of the given label). Range [0, 1]. It was measured against cleanlab's other rankings and against a heatmap-weighted
    variant (``(1 - q) * (0.5 + 0.5 * on_object)``) on real human label errors (CIFAR-10N,
    ``benchmarks/label_noise_cifar10n.py``): self-confidence ranks best, and the heatmap term costs a quarter of the
    hits, so the heatmap evidence goes into the reason (:func:`relabel_reasons`), not into the score.
    ``suggested_label`` is the model's most probable class; ``is_label_issue`` is cleanlab's ``find_label_issues``.
    """
    out = samples.copy()
    names = np.asarray(class_names, dtype=object)
    out["label_name"] = names[out["label"].to_numpy()]
    out["pred_name"] = names[out["pred"].to_numpy()]
    out["shortcut_score"] = np.fmax(_percentile_rank(out["border_focus"]), _percentile_rank(out["corner_focus"]))
    labels = out["label"].to_numpy()
    out["relabel_score"] = 1.0 - get_label_quality_scores(labels, probs, method="self_confidence")
    out["suggested_label"] = names[probs.argmax(axis=1)]
    # n_jobs=1: cleanlab's worker pool loses its globals under the "spawn" start method (as in Prefect's served
    # flow runs: NameError 'pred_probs_by_class'), and on a few cores the pool gains little.
    out["is_label_issue"] = find_label_issues(labels, probs, n_jobs=1) if len(np.unique(labels)) > 1 else False
    return out


def relabel_reasons(samples: pd.DataFrame) -> pd.Series:
    """One sentence per sample whose suggested label differs from its label or that cleanlab flags; else ""."""
    reasons = []
    for row in samples.itertuples(index=False):
        if row.suggested_label == row.label_name and not row.is_label_issue:
            reasons.append("")
            continue
        on_object = 1.0 - row.background_attention
        reason = (f"the model gives '{row.label_name}' {row.label_prob:.0%} and predicts '{row.pred_name}' "
                  f"({row.confidence:.0%})")
        if np.isfinite(on_object):
            reason += f", with {on_object:.0%} of that heatmap on the object"
            if on_object < 0.5:
                reason += " (mostly off it: maybe context or a shortcut rather than a wrong label)"
        if row.is_label_issue:
            reason += "; confident learning (cleanlab) flags the label"
        reasons.append(reason)
    return pd.Series(reasons, index=samples.index, name="relabel_reason", dtype=object)


def corner_column(corner: str) -> str:
    """The samples-table column of one corner's focus ratio, e.g. ``corner_focus_top_left``."""
    return "corner_focus_" + corner.replace("-", "_")


def evidence_column(column: str) -> str:
    """The samples-table column of a statistic of the given label's CAM, e.g. ``label_border_focus``."""
    return EVIDENCE_PREFIX + column


def favoured_corner(samples: pd.DataFrame, k: int) -> str:
    """The corner on which class ``k``'s heatmaps (of its given label) have the highest mean focus."""
    mine = samples["label"] == k
    means = np.array([samples.loc[mine, evidence_column(corner_column(c))].mean() for c in heatmaps.CORNERS])
    return heatmaps.CORNERS[int(np.nanargmax(means))] if np.isfinite(means).any() else heatmaps.CORNERS[0]


def spot_column(k: int) -> str:
    """The samples-table column of every sample's peak margin on class ``k``'s hot spot, e.g. ``spot_margin_3``."""
    return f"spot_margin_{k}"


#: A hot spot must stand out from chance too: a one-sided two-proportion z of at least this (p about 3e-5 for one
#: window; over the 169 windows of a class and a few dozen classes, a family-wise false alarm rate of a few percent).
SPOT_MIN_Z = 4.0


@dataclass(frozen=True)
class HotSpots:
    """Each class's hot spot (:func:`class_hot_spots`) and every sample's peak margin on each of them."""

    masks: np.ndarray  # bool (C, H, W): the window, at the model's input size; all False for a class without images
    # bool (C, H, W): where the images peaking on the spot look most alike, the spot or a window near it
    # (:data:`MARK_SEARCH`); the spot itself where that is unknown (no thumbnails)
    marks: np.ndarray
    margins: np.ndarray  # (N, C) each sample's peak margin on each class's spot, in [-1, 1]; NaN for an empty CAM
    masses: np.ndarray  # (N, C) the share of each sample's heatmap inside each class's spot; NaN for an empty CAM
    peak_share: np.ndarray  # (C,) share of the class's images whose densest window is its spot
    others_share: np.ndarray  # (C,) the same share among the other classes' images
    z: np.ndarray  # (C,) one-sided two-proportion z of the difference
    consistency: np.ndarray  # (C,) how alike those images look at the mark (:func:`spot_consistency`); NaN unknown
    consistency_on_spot: np.ndarray  # (C,) ... and on the spot itself

    def passes(self, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> np.ndarray:
        """(C,) bool: the class's images peak on its spot at least ``min_spot_excess`` more often than other
        classes' images, the difference is no chance (z >= :data:`SPOT_MIN_Z`), and the images that peak there
        look alike there (consistency >= ``min_spot_consistency``; not required where it is unknown: no
        thumbnails were given)."""
        with np.errstate(invalid="ignore"):
            alike = np.isnan(self.consistency) | (self.consistency >= thresholds.min_spot_consistency)
            return (self.peak_share - self.others_share >= thresholds.min_spot_excess) & (self.z >= SPOT_MIN_Z) & alike


#: Fine detail, for :func:`spot_consistency`: a thumbnail minus its Gaussian blur of this sigma (pixels of 32).
SPOT_DETAIL_SIGMA = 1.5
#: Where the images peaking on a spot look alike is sought among the windows whose offset from the spot is at most
#: this many window sides, in rows and in columns (at the grid's stride): a heatmap at a coarse layer's resolution
#: can peak beside the mark that draws it. On CIFAR-10 with a text stamp at the bottom-left of half the trucks, the
#: stamped trucks peaked on a window left of centre where they do not look alike (0.02); 8 px lower and 6 px to the
#: right, on the text, 0.91. Sought that far, a clean class's images look more alike than on the spot alone: over
#: the sixth training's twelve models, 0.34 at most (0.23 on the spot itself), the learnt marks 0.75 to 0.94; the
#: likeness required (``min_spot_consistency``) is 0.5 since (0.4 before the search) (README).
MARK_SEARCH = 1


def spot_consistency(thumbnails: np.ndarray, region: np.ndarray) -> float:
    """How alike ``thumbnails`` (n, 32, 32, 3) look inside ``region`` (32, 32 bool): the mean correlation of each
    one's fine detail there (the thumbnail minus its blur, :data:`SPOT_DETAIL_SIGMA`) with the mean detail of the
    others (leave one out). A mark printed on every image (a logo, a watermark, a stamp) gives nearly 1 even when
    half transparent; parts of varied photos give about 0, their blur-free smooth shading being removed (on the
    CIFAR-10 validation runs: clean classes 0.23 at most, learnt interior patches 0.77 or more). NaN for fewer than
    two images."""
    if len(thumbnails) < 2 or not region.any():
        return float("nan")
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    margin = int(np.ceil(3 * SPOT_DETAIL_SIGMA))
    top, left = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    crop = np.asarray(thumbnails[:, top:rows[-1] + margin + 1, left:cols[-1] + margin + 1], dtype=np.float32)
    detail = crop - gaussian_filter(crop, sigma=(0, SPOT_DETAIL_SIGMA, SPOT_DETAIL_SIGMA, 0), mode="nearest")
    inside = region[top:rows[-1] + margin + 1, left:cols[-1] + margin + 1]
    x = detail[:, inside].reshape(len(detail), -1).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    rest = (x.sum(axis=0)[None, :] - x) / (len(x) - 1)
    return float(np.mean(np.sum(x * rest, axis=1) / np.maximum(np.linalg.norm(rest, axis=1), 1e-9)))


def class_hot_spots(cams: np.ndarray, labels: np.ndarray, num_classes: int, size: tuple[int, int],
                    thresholds: Thresholds = DEFAULT_THRESHOLDS, thumbnails: np.ndarray | None = None) -> HotSpots:
    """Where a part of a class looks that other classes do not: one hot spot per class, anywhere in the image.

    Each heatmap, as a mass map resampled to a 16 x 16 grid (:func:`pipeline.heatmaps.window_masses`), has a
    *densest window*: of all square windows covering ``spot_share`` of the image (a corner square, 4 x 4 cells, at
    stride one cell), the one holding the most mass. A logo at a fixed place makes the images that carry it peak in
    the same window, wherever it is, even on the object: at the centre, where every class looks, the class's *mean*
    heatmap does not stand out, but the place of its peaks does. So for class ``k``:

    1. the share of its images whose densest window is ``w``, minus the same share among other classes' images,
       for every window ``w``; the spot is the window where that excess is largest (``peak_share``,
       ``others_share``, and the two-proportion ``z`` of the difference);
    2. every sample's *peak margin* on it: ``(m_spot - m_else) / max(m_spot, m_else)``, with ``m_spot`` the mass in
       the spot and ``m_else`` the mass of the densest window that does not overlap it; positive when the heatmap's
       densest place is the spot, 1 when all its mass is there, -1 when none is. It ranks the samples (the tail
       share and ``uses_shortcut``, as for the other regions' statistics) and is the samples-table column
       :func:`spot_column`;
    3. with ``thumbnails`` (N, 32, 32, 3), the images' :func:`spot_consistency`: a logo looks the same in every
       image that carries it; a part of an object that sits at that place in many images (the hole of a centred
       ring) does not. It is measured on the spot and on every window within :data:`MARK_SEARCH` window sides of it;
       the window where those images look most alike is the *mark* (``marks``), the region the causal checks blank
       and paste: a heatmap at a coarse layer's resolution can peak beside the mark that draws it.

    The class's spot passes when :meth:`HotSpots.passes`: on the CIFAR-10 validation runs, clean classes reach an
    excess of 0.05 and a likeness at the mark of 0.34 at most (0.23 on the spot), a class with a mark learnt on a
    half or a fifth of its images 0.06 to 0.25 and 0.75 to 0.94 (README).
    """
    mass, valid = heatmaps.to_mass(cams)
    side = heatmaps.window_side(thresholds.spot_share)
    windows = heatmaps.window_masses(mass, side)
    n, p = len(windows), windows.shape[1]
    flat = np.nan_to_num(windows.reshape(n, -1), nan=-1.0)
    peak = flat.argmax(axis=1)
    rows, cols = np.divmod(np.arange(p * p), p)
    masks = np.zeros((num_classes, *size), dtype=bool)
    marks = np.zeros((num_classes, *size), dtype=bool)
    margins, masses = np.full((n, num_classes), np.nan), np.full((n, num_classes), np.nan)
    peak_share, others_share, z, consistency, on_spot = (np.full(num_classes, np.nan) for _ in range(5))
    for k in range(num_classes):
        mine, others = valid & (labels == k), valid & (labels != k)
        if not mine.any() or not others.any():
            continue
        in_class = np.bincount(peak[mine], minlength=p * p) / mine.sum()
        elsewhere = np.bincount(peak[others], minlength=p * p) / others.sum()
        best = int(np.argmax(in_class - elsewhere))
        peak_share[k], others_share[k] = in_class[best], elsewhere[best]
        pooled = (in_class[best] * mine.sum() + elsewhere[best] * others.sum()) / (mine.sum() + others.sum())
        se = np.sqrt(pooled * (1 - pooled) * (1 / mine.sum() + 1 / others.sum()))
        z[k] = (peak_share[k] - others_share[k]) / se if se > 0 else 0.0
        masks[k] = marks[k] = heatmaps.window_region(rows[best], cols[best], side, size)
        if thumbnails is not None:
            near = np.flatnonzero((np.abs(rows - rows[best]) <= MARK_SEARCH * side)
                                  & (np.abs(cols - cols[best]) <= MARK_SEARCH * side))
            peaking = thumbnails[mine & (peak == best)]
            likeness = [spot_consistency(peaking, heatmaps.window_region(rows[w], cols[w], side,
                                                                         thumbnails.shape[1:3])) for w in near]
            on_spot[k] = likeness[int(np.flatnonzero(near == best)[0])]
            if np.isfinite(likeness).any():
                mark = near[int(np.nanargmax(likeness))]
                consistency[k] = np.nanmax(likeness)
                marks[k] = heatmaps.window_region(rows[mark], cols[mark], side, size)
        apart = (np.abs(rows - rows[best]) >= side) | (np.abs(cols - cols[best]) >= side)
        m_spot = flat[:, best]
        masses[:, k] = np.where(valid, m_spot, np.nan)
        m_else = flat[:, apart].max(axis=1) if apart.any() else np.zeros(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            margins[:, k] = np.where(valid, (m_spot - m_else) / np.maximum(m_spot, m_else), np.nan)
    return HotSpots(masks, marks, margins, masses, peak_share, others_share, z, consistency, on_spot)


def _share_words(share: float) -> str:
    return f"{share:.0%}" if share >= 0.005 else "under 1%"


def describe_region(region: np.ndarray) -> str:
    """A region (H, W bool) in words: its shape, where its centre of mass lies and its area share, e.g. "a spot left
    of centre covering 4% of the image" or "a horizontal strip at the bottom covering 6% of the image".

    The shape is a *strip* when its bounding box is at least :data:`STRIP_ASPECT` times wider than high (or higher
    than wide), else a *spot*; the place is the third of the height (top, middle, bottom) and of the width (left,
    centre, right) that holds its centre of mass.
    """
    rows, cols = np.nonzero(region)
    if len(rows) == 0:
        return "no region"
    h, w = region.shape
    height, width = (np.ptp(rows) + 1) / h, (np.ptp(cols) + 1) / w
    shape = ("a horizontal strip" if width >= STRIP_ASPECT * height else
             "a vertical strip" if height >= STRIP_ASPECT * width else "a spot")
    row, col = (rows.mean() + 0.5) / h, (cols.mean() + 0.5) / w
    vertical = "top" if row < 1 / 3 else "bottom" if row > 2 / 3 else ""
    horizontal = "left" if col < 1 / 3 else "right" if col > 2 / 3 else ""
    if vertical and horizontal:
        place = f"in the {vertical}-{horizontal}"
    elif vertical:
        place = f"at the {vertical}"
    elif horizontal:
        place = f"{horizontal} of centre"
    else:
        place = "at the centre"
    return f"{shape} {place} covering {_share_words(region.mean())} of the image"


def _true_mask_share(samples: pd.DataFrame) -> float:
    """Share of the samples whose foreground mask is a true one (``mask_kind``; a table without the column has none:
    every mask was estimated)."""
    if "mask_kind" not in samples or not len(samples):
        return 0.0
    return float((samples["mask_kind"] == "true").mean())


def background_name(samples: pd.DataFrame) -> str:
    """The background in words, with the masks behind ``background_attention``: "the background (true masks)",
    "(estimated masks)", or, when the source gives masks for some images only, the share of true ones."""
    true = _true_mask_share(samples)
    if true == 1.0:
        return "the background (true masks)"
    if true == 0.0:
        return "the background (estimated masks)"
    return f"the background (true masks for {_share_words(true)} of the images, estimated for the rest)"


@dataclass(frozen=True)
class _Measured:
    """What one shortcut statistic measures for one class."""

    kind: str  # "band", "corner", "spot" or "background"
    name: str  # the region in words
    column: str  # the samples-table column of every sample's value
    mask: np.ndarray | None  # boolean (H, W); None for the background (each image has its own) or no spot


def _region(samples: pd.DataFrame, k: int, statistic: str, size: tuple[int, int],
            spots: HotSpots | None) -> _Measured:
    """Where ``statistic`` looks for class ``k``: the border band for the border focus; the class's favoured corner
    for the corner focus; its hot spot (``spots.masks[k]``) for the spot margin; each image's background for the
    background focus. Its column holds the statistic of each sample's given label's CAM (:func:`evidence_column`;
    the spot margins are of those CAMs already)."""
    if statistic == "border_focus":
        return _Measured("band", "the border band", evidence_column("border_focus"), heatmaps.border_band(*size))
    if statistic == "corner_focus":
        corner = favoured_corner(samples, k)
        return _Measured("corner", f"the {corner} corner", evidence_column(corner_column(corner)),
                         heatmaps.corner_regions(*size)[heatmaps.CORNERS.index(corner)])
    if statistic == "spot_margin":
        spot = spots.masks[k] if spots is not None and spots.masks[k].any() else None
        return _Measured("spot", "no spot" if spot is None else describe_region(spot), spot_column(k), spot)
    return _Measured("background", background_name(samples), evidence_column("background_focus"), None)


def _values(samples: pd.DataFrame, column: str) -> np.ndarray:
    """A column's values as floats; all NaN when the samples table has no such column (a class without a spot)."""
    return samples[column].to_numpy(dtype=float) if column in samples else np.full(len(samples), np.nan)


def _tail(values: np.ndarray, mine: np.ndarray, quantile: float, floor: float = -np.inf) -> tuple[np.ndarray, float]:
    """Samples of the class above the ``quantile`` of the other classes' values (and above ``floor``), and that
    cut-off."""
    others = values[~mine & np.isfinite(values)]
    cutoff = max(float(np.quantile(others, quantile)), floor) if len(others) else np.inf
    return mine & (values > cutoff), cutoff


def _tail_share(values: np.ndarray, mine: np.ndarray, quantile: float,
                floor: float = -np.inf) -> tuple[float, float]:
    """The share of the class's measured (finite) values above the ``quantile`` of the other classes' (and above
    ``floor``; NaN when none is measured), and that cut-off."""
    tail, cutoff = _tail(values, mine, quantile, floor)
    measured = (mine & np.isfinite(values)).sum()
    return (tail.sum() / measured if measured else np.nan), cutoff


#: What a class's ``status`` can be: no shortcut signal in its statistics; a candidate by its statistics (not yet
#: put to the causal check); confirmed or not confirmed by the causal check and its images' reliance on the region
#: (``confirmed_by``: ``occlusion`` when the check's mean drop confirmed it, ``reliance`` when its images did).
STATUSES = ("no signal", "candidate", "confirmed", "not confirmed")


def class_table(
    samples: pd.DataFrame,
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    spots: HotSpots | None = None,
) -> pd.DataFrame:
    """One row per class: counts, accuracy, the statistics' class means, the shortcut statistics of each region
    (``*_ratio``, ``*_auroc``, ``*_tail_share`` for each of :data:`SHORTCUT_STATISTICS`), and of the strongest one:
    the region it measures (``measured_region`` in words, ``region_kind``, its area share ``measured_share``, NaN for
    the background, and the samples-table ``region_column``), the class's mean value there (``focus_mean``) and its
    tail (``tail_samples`` above the other classes' ``tail_quantile``, the heatmap mass they and the other classes'
    images put there; ``tail_cutoff``, the other classes' ``tail_quantile``). ``sample_score`` says what ranks the
    class's samples (``focus`` here; :func:`record_reliance` sets ``reliance``).
    ``candidate`` and ``status`` (``no signal`` or ``candidate``) follow from the thresholds;
    ``region`` (the blamed region, refined for candidates by :func:`suspected_region`) starts as the measured one.

    ``spots`` are the classes' hot spots (:func:`class_hot_spots`), whose peak margins are the samples columns
    :func:`spot_column`; without them, or for a class without a spot, the spot statistics are NaN. The spot's
    sub-population is the class's images whose densest window is the spot (``spot_margin_peak_share``, against
    ``spot_margin_others_share`` of the other classes' images, ``spot_margin_z``): it passes by
    :meth:`HotSpots.passes`, not by its tail share; its ratio is NaN (a margin is no focus ratio). The
    strongest statistic is a passing one first, a fixed region (:data:`FIXED_STATISTICS`) before a learnt one, then
    the larger tail share.
    """
    correct = samples["label"] == samples["pred"]
    labels = samples["label"].to_numpy()
    rows = []
    for k, name in enumerate(class_names):
        mine = labels == k
        row = {"class": k, "class_name": name, "samples": int(mine.sum()),
               "accuracy": float(correct[mine].mean()) if mine.any() else float("nan")}
        for column in STATISTIC_COLUMNS:
            row[column] = float(samples.loc[mine, column].mean()) if mine.any() else float("nan")
        row["favoured_corner"] = favoured_corner(samples, k)
        for statistic in SHORTCUT_STATISTICS:
            values = _values(samples, _region(samples, k, statistic, image_size, spots).column)
            finite = np.isfinite(values)
            others = [np.mean(values[(labels == j) & finite]) for j in range(len(class_names)) if j != k
                      and ((labels == j) & finite).any()]
            tail, _ = _tail(values, mine, thresholds.tail_quantile)
            ratio = (statistic != "spot_margin" and others and np.median(others) > 0 and (mine & finite).any())
            row[f"{statistic}_ratio"] = np.mean(values[mine & finite]) / np.median(others) if ratio else np.nan
            row[f"{statistic}_auroc"] = auroc(values[mine], values[~mine])
            row[f"{statistic}_tail_share"] = tail.sum() / (mine & finite).sum() if (mine & finite).any() else np.nan
        for column in ("peak_share", "others_share", "z", "consistency"):
            row[f"spot_margin_{column}"] = float(getattr(spots, column)[k]) if spots is not None else np.nan
        moved = spots is not None and spots.marks[k].any() and (spots.marks[k] != spots.masks[k]).any()
        row["spot_mark"] = describe_region(spots.marks[k]) if moved else ""
        rows.append(row)
    table = pd.DataFrame(rows)

    ratios = table[[f"{c}_ratio" for c in SHORTCUT_STATISTICS]].to_numpy(dtype=float)
    aurocs = table[[f"{c}_auroc" for c in SHORTCUT_STATISTICS]].to_numpy(dtype=float)
    tails = table[[f"{c}_tail_share" for c in SHORTCUT_STATISTICS]].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        passes = ((ratios >= thresholds.min_focus_ratio) & (aurocs >= thresholds.min_auroc)) | (
            tails >= thresholds.min_tail_share)
    # The hot spot's sub-population is the images that peak on it (the spot is chosen where they are most over
    # represented, so the tail share of its margin, chosen too, is no fair test).
    spot = SHORTCUT_STATISTICS.index("spot_margin")
    passes[:, spot] = spots.passes(thresholds) if spots is not None else False
    true_background = ("background_focus",) if _true_mask_share(samples) == 1.0 else ()
    fixed = np.isin(SHORTCUT_STATISTICS, FIXED_STATISTICS + true_background)[None, :]
    strongest = (np.where(np.isnan(tails), -1.0, tails) + 2.0 * passes + 2.0 * (passes & fixed)).argmax(axis=1)
    table["shortcut_statistic"] = np.asarray(SHORTCUT_STATISTICS)[strongest]
    table["shortcut_score"] = tails[np.arange(len(table)), strongest]
    table["candidate"] = passes.any(axis=1)
    # The other fixed regions that pass too (:func:`choose_by_reliance` puts them to the model).
    table["fixed_alternatives"] = [";".join(SHORTCUT_STATISTICS[j] for j in np.flatnonzero(row & fixed[0]) if j != best)
                                   for row, best in zip(passes, strongest, strict=True)]
    table["status"] = np.where(table["candidate"], "candidate", "no signal")
    table["confirmed_by"] = ""
    table["flagged"] = False
    table["true_mask_share"] = _true_mask_share(samples)
    measured = [_measured_figures(samples, k, statistic, image_size, thresholds, spots)
                for k, statistic in zip(table["class"], table["shortcut_statistic"], strict=True)]
    return pd.concat([table, pd.DataFrame(measured, index=table.index)], axis=1)


def _measured_figures(samples: pd.DataFrame, k: int, statistic: str, image_size: tuple[int, int],
                      thresholds: Thresholds, spots: HotSpots | None) -> dict:
    """The classes-table figures of class ``k``'s region measured by ``statistic`` (see :func:`class_table`)."""
    region = _region(samples, k, statistic, image_size, spots)
    values, mine = _values(samples, region.column), samples["label"].to_numpy() == k
    tail, cutoff = _tail(values, mine, thresholds.tail_quantile)
    _, looks = _tail(values, mine, LOOKS_QUANTILE)
    # The heatmap mass in the region: a focus ratio times the region's share; for the background, its attention
    # (each image's background share differs); for a spot, the mass kept beside its margins.
    share = np.nan if region.mask is None else float(region.mask.mean())
    mass = (spots.masses[:, k] if region.kind == "spot" else
            _values(samples, evidence_column("background_attention"))
            if region.kind == "background" else values * share)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class without samples has NaN means
        return {
            "measured_region": region.name, "region_kind": region.kind, "measured_share": share,
            "region_column": region.column, "region": region.name, "region_share": share,
            "focus_mean": np.nanmean(values[mine]) if mine.any() else np.nan,
            "tail_samples": int(tail.sum()), "tail_cutoff": cutoff, "looks_cutoff": looks,
            "sample_score": "focus",
            "tail_mass": np.nanmean(mass[tail]) if tail.any() else np.nan,
            "others_mass": np.nanmean(mass[~mine]) if (~mine).any() else np.nan,
        }


def choose_by_reliance(samples: pd.DataFrame, classes: pd.DataFrame, reliance: Reliance,
                       image_size: tuple[int, int], thresholds: Thresholds = DEFAULT_THRESHOLDS,
                       spots: HotSpots | None = None) -> None:
    """For each candidate for which more than one fixed region passes (``fixed_alternatives``: the border band, its
    corner, and the background when every mask is true), ask the model which it relies on: the class's statistic
    becomes the region whose blanking costs the class's images the most evidence beyond what it costs the other
    classes' images (the mean drop of their label's log-odds, :func:`pipeline.occlusion.reliance`, minus the other
    classes' mean drop; one pass over the class's images and the drawn others per region). In place; ``chosen_by``
    says ``reliance`` for a class whose region was chosen so, with that excess for every region put to it in
    ``alternatives_reliance``.

    The heatmaps cannot settle it: a background shortcut puts the heatmaps on the border band too. On the
    Oxford-IIIT Pet dogs with a tinted background the band's tail share was the larger (0.60 against 0.51), and the
    tint blamed on it was ranked at 0.915; the dogs lose 4.11 log-odds more than the cats when their background is
    grey, 1.74 when the band is blanked, and the background ranks them at 0.985. The tail share of the reliance
    (:func:`record_reliance`) chose the background for the tint but the band for a flat colour (0.61 against 0.54),
    where the excess mean drop says the background (4.29 against 2.64; both rank the dogs at 0.994).
    """
    classes["chosen_by"], classes["alternatives_reliance"] = "", ""
    labels = samples["label"].to_numpy()
    for row in classes.index[classes["candidate"] & (classes["fixed_alternatives"] != "")]:
        k = int(classes.loc[row, "class"])
        statistics = [classes.loc[row, "shortcut_statistic"], *classes.loc[row, "fixed_alternatives"].split(";")]
        excess = {}
        for statistic in statistics:
            drops = np.asarray(reliance({k: _region(samples, k, statistic, image_size, spots).mask})[k], dtype=float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # nothing measured on a side: NaN
                excess[statistic] = np.nanmean(drops[labels == k]) - np.nanmean(drops[labels != k])
        best = max(statistics, key=lambda statistic: np.nan_to_num(excess[statistic], nan=-np.inf))  # ties: first
        classes.loc[row, ["chosen_by", "alternatives_reliance"]] = [
            "reliance", "; ".join(f"{STATISTIC_WORDS[statistic]} {value:.2f}" for statistic, value in excess.items())]
        if best != statistics[0]:
            figures = _measured_figures(samples, k, best, image_size, thresholds, spots)
            figures |= {"shortcut_statistic": best, "shortcut_score": classes.loc[row, f"{best}_tail_share"]}
            for column, value in figures.items():
                classes.loc[row, column] = value


def _measured_once(reliance: Reliance) -> Reliance:
    """``reliance`` that puts each class's region to the model once: a later call for the same class and region
    gets the drops of the first."""
    known = {}

    def key(k: int, region: np.ndarray | None) -> tuple:
        return k, None if region is None else (region.shape, np.packbits(region).tobytes())

    def measured(regions: dict) -> dict:
        new = {k: region for k, region in regions.items() if key(k, region) not in known}
        for k, drops in (reliance(new) if new else {}).items():
            known[key(k, new[k])] = drops
        return {k: known[key(k, region)] for k, region in regions.items()}

    return measured


def region_words(row: dict, image_size: tuple[int, int]) -> str:
    """The measured region of a classes-table row in words, with its size: "the 4-px border band (44% of the
    image)", "the top-left corner (6% of the image)", "a spot left of centre covering 4% of the image" or "the
    background (true masks)"."""
    if row["region_kind"] == "band":
        px = int(round(heatmaps.BORDER_FRACTION * min(image_size)))
        return f"the {px}-px border band ({row['measured_share']:.0%} of the image)"
    if row["region_kind"] == "corner":
        return f"{row['measured_region']} ({row['measured_share']:.0%} of the image)"
    return row["measured_region"]


def evidence(row: dict, image_size: tuple[int, int], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """The sentence a person reads about one class (a row of the classes table): what its shortcut statistic shows,
    what the causal check did, and the SpRAy cluster behind it; every number in it is a column of the row."""
    if not row["samples"]:
        return ""
    statistic, status, quantile = row["shortcut_statistic"], row["status"], thresholds.tail_quantile
    prefix = {"no signal": "no shortcut signal", "confirmed": "likely shortcut",
              "not confirmed": "shortcut candidate, not confirmed",
              "candidate": "likely shortcut" if row["flagged"] else "shortcut candidate"}[status]
    background = row["region_kind"] == "background"
    if row["region_kind"] == "spot":
        sentence = (f"{prefix}: {row['spot_margin_peak_share']:.0%} of '{row['class_name']}' images have the "
                    f"densest part of their heatmap on {region_words(row, image_size)}, against "
                    f"{row['spot_margin_others_share']:.0%} of other classes' images (z = {row['spot_margin_z']:.1f})")
        consistency, there = row["spot_margin_consistency"], f"at {row['spot_mark']}" if row.get("spot_mark") else \
            "there"
        if np.isfinite(consistency) and consistency >= thresholds.min_spot_consistency:
            sentence += (f", and they look alike {there} (their fine detail correlates {consistency:.2f} with the "
                         f"others', as a printed mark would)")
        elif np.isfinite(consistency):
            sentence += (f", but they do not look alike there or near it (their fine detail correlates "
                         f"{consistency:.2f} with the others' at most; a printed mark gives "
                         f"{thresholds.min_spot_consistency:.2f} or more)")
        sentence += (f"; {row['shortcut_score']:.0%} have a larger peak margin there than {quantile:.0%} of other "
                     f"classes' images ({1 - quantile:.0%} expected)")
    else:
        sentence = (f"{prefix}: {row['shortcut_score']:.0%} of '{row['class_name']}' images are more focused on "
                    f"{region_words(row, image_size)} than {quantile:.0%} of other classes' images "
                    f"({1 - quantile:.0%} expected)")
    if row["tail_samples"]:
        sentence += (f"; those put {row['tail_mass']:.0%} of their heatmap there, other classes' images "
                     f"{row['others_mass']:.0%} on average")
    sentence += f"; over the whole class, {STATISTIC_WORDS[statistic]} {row['focus_mean']:.2f}"
    if np.isfinite(row[f"{statistic}_ratio"]):
        sentence += f", {row[f'{statistic}_ratio']:.1f}x the other classes' median"
    sentence += f", AUROC {row[f'{statistic}_auroc']:.2f}"
    if row.get("chosen_by") == "reliance":
        sentence += (f"; of the regions its heatmaps favour, blanking {region_words(row, image_size)} costs its images "
                     f"the most evidence beyond what it costs other classes' images (mean drop of log-odds, in "
                     f"excess: {row['alternatives_reliance']}), so that is the region blamed")
    if status in ("confirmed", "not confirmed"):
        action = f"filling {row['region']} with grey" if background else f"blanking {row['region']}"
        if row.get("occlusion_population") == "tail":
            whose, their, others = "those images'", "their", "other classes' images as focused there"
        else:
            whose, their, others = f"'{row['class_name']}'", "its", "other classes"
        sentence += (
            f"; {action} changes {whose} accuracy from "
            f"{row['occluded_accuracy_before']:.0%} to {row['occluded_accuracy_after']:.0%} and {their} confidence in "
            f"the true label from {row['occluded_confidence_before']:.2f} to {row['occluded_confidence_after']:.2f} "
            f"({others}: {row['others_accuracy_before']:.0%} to {row['others_accuracy_after']:.0%}, "
            f"{row['others_confidence_before']:.2f} to {row['others_confidence_after']:.2f})"
        )
        if status == "not confirmed" and row["occlusion_excess_drop"] < thresholds.min_occlusion_drop:
            sentence += (f", an excess drop of {row['occlusion_excess_drop']:.2f} < "
                         f"{thresholds.min_occlusion_drop:.2f}: the model does not depend on it, so the class is not "
                         "flagged")
    elif status == "candidate" and row["flagged"]:
        sentence += "; no causal check was made"
    if row.get("reliance_column"):
        floored = row["reliance_cutoff"] <= thresholds.min_reliance_drop
        sentence += (f"; image by image, {row['reliance_tail_share']:.0%} of '{row['class_name']}' images lose more "
                     f"of the evidence for their label when it is blanked than {quantile:.0%} of other classes' images "
                     f"(a drop of its log-odds above {row['reliance_cutoff']:.2f}"
                     + (", the least that counts" if floored else "") + ")")
        if reliance_refutes(row, thresholds):
            pasted = row.get("confirmed_by") == "transplant"
            sentence += (f", fewer than {thresholds.min_reliance_share:.0%}: its images do not bear the check out one "
                         "by one" + ("" if pasted else ", so the class is not flagged"))
        elif row.get("confirmed_by") == "reliance":
            sentence += (f", at least {thresholds.min_reliance_confirm_share:.0%}: its images bear the shortcut out "
                         f"one by one, although the causal check's excess drop ({row['occlusion_excess_drop']:.2f}) "
                         f"is below {thresholds.min_occlusion_drop:.2f}, so the class is flagged")
    if row.get("transplant_checked"):
        whose = "those images" if row.get("occlusion_population") == "tail" else f"'{row['class_name']}' images"
        sentence += (f"; pasting {row['transplant_region']} (the region and what lies within "
                     f"{TRANSPLANT_GROWTH / heatmaps.WINDOW_GRID:.0%} of the image's side of it) from "
                     f"{row['transplant_samples']:.0f} of {whose} into other classes' "
                     f"images makes the model call {row['transplant_rate']:.0%} of them '{row['class_name']}' "
                     f"({row['transplant_control_rate']:.0%} when it comes from other classes' images)")
        if row.get("confirmed_by") == "transplant":
            sentence += (f", {row['transplant_excess']:.0%} more, at least {thresholds.min_transplant_excess:.0%}: "
                         f"what is there carries the label, although blanking it confirms it neither as a whole "
                         f"(excess drop {row['occlusion_excess_drop']:.2f}, against "
                         f"{thresholds.min_occlusion_drop:.2f}) nor image "
                         f"by image ({row['reliance_tail_share']:.0%}, against "
                         f"{thresholds.min_reliance_confirm_share:.0%}), so the class is flagged")
    if row["shortcut_cluster"] >= 0:
        sentence += (
            f"; SpRAy splits the class's heatmaps into {row['spray_clusters']} clusters, and the one of "
            f"{row['shortcut_cluster_share']:.0%} of its images puts "
            f"{row['shortcut_cluster_focus'] * row['region_share']:.0%} of its mean heatmap on "
            f"{row['region'].split(' (')[0]} (the other clusters: "
            f"{row['other_clusters_focus'] * row['region_share']:.0%} at most)"
        )
    return sentence + "."


def flag_samples(samples: pd.DataFrame, classes: pd.DataFrame) -> pd.Series:
    """The ``flags`` column: a ``;``-separated list of what stands out about each sample.

    ``empty_cam`` (no positive evidence, statistics NaN), ``misclassified``, ``label_issue`` (cleanlab), and
    ``uses_shortcut``: the sample's class is flagged and, where the reliance on the blamed region was measured, the
    sample is in the class's tail by it (above the ``tail_quantile`` of the other classes' samples,
    :func:`shortcut_tail`) and looks at the measured region more than :data:`LOOKS_QUANTILE` of the other classes'
    samples do (``looks_cutoff``); else it is in the class's tail by its focus on the region (``tail_cutoff``). The
    reliance says the model needs the region for the image; alone, it also takes the class's clean images that need a
    large blamed region for their own reasons (the parts of the object or the context it covers), which the heatmap
    condition removes. The focus tail itself would be too strict there: a class flagged on its whole-class ratio can
    have no image beyond the other classes' extreme tail (the demo's corner, whose other classes hold a few images
    focused on that corner alone).
    """
    flags = [[] for _ in range(len(samples))]
    labels = samples["label"].to_numpy()
    for i in np.flatnonzero(~samples["cam_valid"].to_numpy()):
        flags[i].append("empty_cam")
    for i in np.flatnonzero(labels != samples["pred"].to_numpy()):
        flags[i].append("misclassified")
    for i in np.flatnonzero(samples["is_label_issue"].to_numpy()):
        flags[i].append("label_issue")
    for k in classes.loc[classes["flagged"], "class"]:
        row = classes.loc[classes["class"] == k].iloc[0]
        if row["sample_score"] == "reliance":
            with np.errstate(invalid="ignore"):
                looks = _values(samples, row["region_column"]) > row["looks_cutoff"]
            uses = shortcut_tail(samples, classes, k, "reliance") & looks
        else:
            uses = shortcut_tail(samples, classes, k, "focus")
        for i in np.flatnonzero(uses):
            flags[i].append("uses_shortcut")
    return pd.Series([";".join(f) for f in flags], index=samples.index, name="flags")


def shortcut_values(samples: pd.DataFrame, classes: pd.DataFrame, k: int,
                    score: str | None = None) -> tuple[str, np.ndarray]:
    """Every sample's per-sample score of class ``k``, with the name of the region it is measured on: ``score``
    ``"reliance"``, the sample's drop in the log-odds of its given label when the class's blamed region is blanked
    (``reliance_column``; all NaN where it was not measured), or ``"focus"``, its value of the class's shortcut
    statistic on the region it measures (the border band, the class's favoured corner or hot spot, or each image's
    background: ``region_column``, the score behind the class's tail share). None: the class's ``sample_score``, the
    one that ranks its samples (validation's sample AUROC, the report's order)."""
    row = classes.loc[classes["class"] == k].iloc[0]
    if (score or row["sample_score"]) == "reliance":
        return row["region"], _values(samples, row["reliance_column"]) if row["reliance_column"] else \
            np.full(len(samples), np.nan)
    return row["measured_region"], _values(samples, row["region_column"])


def shortcut_tail(samples: pd.DataFrame, classes: pd.DataFrame, k: int, score: str | None = None) -> np.ndarray:
    """Which samples are in class ``k``'s tail by ``score`` (:func:`shortcut_values`; None: the class's
    ``sample_score``): its samples whose score is above the ``tail_quantile`` of the other classes' samples' (the
    cut-off recorded in the classes table, ``tail_cutoff`` for the focus, ``reliance_cutoff`` for the reliance). Of
    a flagged class, those in its tail by the reliance that look at the region are flagged ``uses_shortcut``
    (:func:`flag_samples`)."""
    row = classes.loc[classes["class"] == k].iloc[0]
    score = score or row["sample_score"]
    _, values = shortcut_values(samples, classes, k, score)
    cutoff = row["reliance_cutoff"] if score == "reliance" else row["tail_cutoff"]
    with np.errstate(invalid="ignore"):
        return (samples["label"].to_numpy() == k) & (values > cutoff)


def reliance_column(k: int, *, background: bool = False) -> str:
    """The samples-table column of every sample's reliance on class ``k``'s blamed region: ``reliance_<k>``, or
    ``background_reliance`` for the background (each image's own, so the same column serves every class blamed
    for it)."""
    return "background_reliance" if background else f"reliance_{k}"


#: The classes-table columns of :func:`record_reliance`.
RELIANCE_FIGURES = ("reliance_mean", "reliance_auroc", "reliance_tail_share", "reliance_cutoff")


def record_reliance(samples: pd.DataFrame, classes: pd.DataFrame, drops: dict,
                    thresholds: Thresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """``samples`` with a column of every sample's reliance on each checked class's blamed region
    (:func:`reliance_column`), and the figures of it in ``classes`` (in place).

    ``drops`` maps class ``k`` to every sample's drop in the log-odds of its given label when ``k``'s region is
    blanked (:func:`pipeline.occlusion.reliance`); a class whose ``region_kind`` is the background
    gets the column ``background_reliance``. The classes table gets ``reliance_column`` (empty for a class not
    measured), ``reliance_mean`` (the class's mean drop), ``reliance_auroc`` (P(a sample of the class drops more
    than a sample of another class)), ``reliance_tail_share`` (share of the class above ``reliance_cutoff``, the
    ``tail_quantile`` of the other classes' drops, or ``min_reliance_drop`` where that is larger: when blanking the
    region costs no image much, a share beyond the others' quantile compares noise with noise), and ``sample_score``
    ``reliance``: it ranks the class's samples (:func:`shortcut_values`) and joins the focus in their
    ``uses_shortcut`` flag (:func:`flag_samples`). A class confirmed by the causal check whose reliance refutes it
    (:func:`reliance_refutes`) becomes ``not confirmed``, and one not confirmed by it whose reliance bears it out
    (:func:`reliance_confirms`) becomes ``confirmed``. The drop is asked of the model itself, image by image, where a
    low-resolution heatmap only says roughly where the model looked: it ranked the images carrying a planted artifact
    above the others better in every validation run where it was measured (README, Self-validation).
    """
    classes["reliance_column"] = ""
    for column in RELIANCE_FIGURES:
        classes[column] = np.nan
    labels, columns = samples["label"].to_numpy(), {}
    for k, values in drops.items():
        row = classes.index[classes["class"] == k][0]
        column = reliance_column(k, background=classes.loc[row, "region_kind"] == "background")
        columns[column] = values = np.asarray(values, dtype=float)
        mine = labels == k
        share, cutoff = _tail_share(values, mine, thresholds.tail_quantile, thresholds.min_reliance_drop)
        finite = mine & np.isfinite(values)
        classes.loc[row, ["reliance_column", "sample_score"]] = [column, "reliance"]
        classes.loc[row, list(RELIANCE_FIGURES)] = [
            np.mean(values[finite]) if finite.any() else np.nan, auroc(values[mine], values[~mine]), share, cutoff]
        if classes.loc[row, "status"] == "confirmed" and reliance_refutes(classes.loc[row], thresholds):
            classes.loc[row, ["status", "confirmed_by"]] = ["not confirmed", ""]
        elif classes.loc[row, "status"] == "not confirmed" and reliance_confirms(classes.loc[row], thresholds):
            classes.loc[row, ["status", "confirmed_by"]] = ["confirmed", "reliance"]
    return pd.concat([samples, pd.DataFrame(columns, index=samples.index)], axis=1) if columns else samples


def reliance_confirms(row: pd.Series, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """Whether a class's images bear its shortcut out one by one where the mean drop of its causal check did not: at
    least ``min_reliance_confirm_share`` of them (five times the 5% expected) lose more evidence when the blamed
    region is blanked than the ``tail_quantile`` of the other classes' images. The mean drop is measured in
    probability, which barely moves for images the model is sure of: on CIFAR-10 with a patch on half the ships
    (README, Self-validation), the stamped ships were all right and the class's excess drop was -0.01 and -0.03 in
    two trainings, while 60% of the class lost more log-odds than 95% of the other classes' images. Clean candidates
    of the CIFAR-10 validation runs had reliance tail shares of 0.07 at most; classes that learnt a planted artifact
    0.39 to 0.69. On the reduced demo's weak models, where blanking a clean candidate's region costs no image much,
    its share beyond the others' quantile alone reached 0.24 (and passed 0.25 in a CI run, which flagged a clean
    class); counting only drops of at least ``min_reliance_drop``, 0.04 at most
    (``benchmarks/reliance_margins_demo.py``, README)."""
    share = row["reliance_tail_share"]
    return bool(np.isfinite(share) and share >= thresholds.min_reliance_confirm_share)


def reliance_refutes(row: pd.Series, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """Whether a class's images fail to bear its causal check out one by one: fewer than ``min_reliance_share`` of
    them lose more evidence when the blamed region is blanked than the ``tail_quantile`` of the other classes' images
    (``reliance_tail_share``; 0.05 by chance, and lower than the candidates' ``min_tail_share``, so that a shortcut
    learnt by a fifth of a class, which the hot spot rule can raise, is not refused for its size). A class confirmed by
    its mean drop is then not confirmed: the mean can come from a few images, or from the class's images being more
    confident to begin with than the other classes' images they are compared with. On the validation runs, classes
    that learnt a planted artifact had reliance tail shares of 0.39 to 0.69; the clean candidates 0.07 at most, among
    them a clean CIFAR-10 class (deer, drawn to the border band) that the mean drop alone confirmed (README)."""
    share = row["reliance_tail_share"]
    return bool(np.isfinite(share) and share < thresholds.min_reliance_share)


def suspected_region(samples: pd.DataFrame, classes: pd.DataFrame, cams: np.ndarray, k: int,
                     size: tuple[int, int], thresholds: Thresholds = DEFAULT_THRESHOLDS, *,
                     spots: HotSpots | None = None) -> tuple[str, np.ndarray | None]:
    """The region class ``k``'s shortcut statistic points at, as a name and a boolean (H, W) mask (None for the
    background: each image's own, outside its object mask).

    For the border focus, the border band; for the spot margin, the class's mark (``spots.marks[k]``, from
    :func:`class_hot_spots`: where the images peaking on its hot spot look most alike, the spot or a window near
    it). For the corner focus, the favoured corner's square together with the *hot spot* of the
    class's tail images (those more focused on that corner than the ``tail_quantile`` of the other classes' images):
    the pixels where their mean heatmap is at least half its peak, the connected part that holds the peak
    (:func:`pipeline.heatmaps.hot_spot`), unless it is larger than four corner squares (a diffuse map). An artifact
    that reaches beyond the corner square (a line of text) is then covered whole, so the causal check blanks all of
    it.
    """
    statistic = classes.loc[classes["class"] == k, "shortcut_statistic"].iloc[0]
    region = _region(samples, k, statistic, size, spots)
    if statistic == "spot_margin" and region.mask is not None:
        return describe_region(spots.marks[k]), spots.marks[k]
    if statistic != "corner_focus":
        return region.name, region.mask
    name, mask = region.name, region.mask
    tail, _ = _tail(_values(samples, region.column), samples["label"].to_numpy() == k, thresholds.tail_quantile)
    mass, valid = heatmaps.to_mass(cams[tail])
    if not valid.any():
        return name, mask
    hot = heatmaps.hot_spot(heatmaps.upsample(mass[valid].mean(axis=0)[None], size)[0])
    # A diffuse map has no hot spot worth the name: beyond four corner squares (a quarter of the image), keep the
    # corner alone.
    if (hot & ~mask).sum() == 0 or hot.sum() > 4 * mask.sum():
        return name, mask
    region = mask | hot
    return f"{name} and its heatmaps' hot spot ({region.mean():.0%} of the image)", region


def check_population(samples: pd.DataFrame, classes: pd.DataFrame, k: int,
                     thresholds: Thresholds = DEFAULT_THRESHOLDS) -> np.ndarray | None:
    """Which samples the causal check of candidate class ``k`` draws from: None (all: the class against the other
    classes) when its strongest statistic passes the whole-class rule; else, a sub-population's candidate (tail
    share or hot spot), the samples above the ``tail_quantile`` of the other classes' values, of the class and of the
    other classes alike, so that the class's images that carry the evidence are compared with other classes' images
    that look at the region as much (and a class whose images are merely drawn to the region for their own reasons
    is not confirmed by the selection alone). Also None when either side has fewer than :data:`MIN_CHECKED_TAIL`."""
    row = classes.loc[classes["class"] == k].iloc[0]
    statistic = row["shortcut_statistic"]
    with np.errstate(invalid="ignore"):
        whole = (row[f"{statistic}_ratio"] >= thresholds.min_focus_ratio) and (
            row[f"{statistic}_auroc"] >= thresholds.min_auroc)
    if whole:
        return None
    values, mine = _values(samples, row["region_column"]), samples["label"].to_numpy() == k
    _, cutoff = _tail(values, mine, thresholds.tail_quantile)
    above = values > cutoff
    if (above & mine).sum() < MIN_CHECKED_TAIL or (above & ~mine).sum() < MIN_CHECKED_TAIL:
        return None
    return above


def record_occlusion(classes: pd.DataFrame, k: int, result: OcclusionResult,
                     thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
    """Record the causal check of candidate class ``k`` in ``classes`` (in place): its figures, and its status,
    ``confirmed`` when the excess drop of true-label confidence reaches ``min_occlusion_drop``, else ``not
    confirmed``."""
    row = classes.index[classes["class"] == k][0]
    figures = {"occluded_accuracy_before": result.class_before, "occluded_accuracy_after": result.class_after,
               "others_accuracy_before": result.others_before, "others_accuracy_after": result.others_after,
               "occluded_confidence_before": result.class_confidence_before,
               "occluded_confidence_after": result.class_confidence_after,
               "others_confidence_before": result.others_confidence_before,
               "others_confidence_after": result.others_confidence_after,
               "occlusion_excess_drop": result.excess_confidence_drop}
    for column, value in figures.items():
        classes.loc[row, column] = value
    confirmed = bool(result.excess_confidence_drop >= thresholds.min_occlusion_drop)
    classes.loc[row, ["status", "confirmed_by"]] = ["confirmed", "occlusion"] if confirmed else ["not confirmed", ""]


def check_transplants(classes: pd.DataFrame, blamed: dict, populations: dict, transplant: Transplant | None,
                      thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
    """Put every candidate that is still not confirmed, whose blamed region (``blamed``: class -> boolean (H, W), None
    for the background) covers at most :data:`MAX_TRANSPLANT_SHARE` of the image, to the transplant check: the region
    grown by :data:`TRANSPLANT_GROWTH` cell, drawn from the population its causal check drew from (``populations``),
    recorded by :func:`record_transplant`. In place; without ``transplant`` (no model) the columns stay empty."""
    classes["transplant_checked"], classes["transplant_region"] = False, ""
    for column in TRANSPLANT_FIGURES:
        classes[column] = np.nan
    if transplant is None:
        return
    for row in classes.index[classes["status"] == "not confirmed"]:
        k = int(classes.loc[row, "class"])
        if blamed.get(k) is not None and blamed[k].mean() <= MAX_TRANSPLANT_SHARE:
            pasted = heatmaps.grown(blamed[k], TRANSPLANT_GROWTH)
            record_transplant(classes, k, transplant(k, pasted, populations.get(k)), thresholds)
            classes.loc[row, "transplant_region"] = describe_region(pasted)


#: The classes-table columns of :func:`record_transplant`.
TRANSPLANT_FIGURES = ("transplant_rate", "transplant_control_rate", "transplant_probability",
                      "transplant_control_probability", "transplant_samples", "transplant_excess")


def record_transplant(classes: pd.DataFrame, k: int, result: TransplantResult,
                      thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
    """Record the transplant check of class ``k`` (:func:`pipeline.occlusion.transplant_check`) in ``classes`` (in
    place): ``transplant_checked``, its figures (:data:`TRANSPLANT_FIGURES`), and, for a class not confirmed, the
    status ``confirmed`` by ``transplant`` when pasting its region from its images into other classes' images makes
    the model call at least ``min_transplant_excess`` more of them the class than pasting it from other classes'
    images does.

    Blanking a spot on the object costs every class: on CIFAR-10 with a logo at (0.5, 0.4) on half the deer, the
    class's spot was the centre window, where blanking cost the other classes' images as much evidence as the stamped
    deer (README, Self-validation). What the region holds is then asked directly: a learnt mark there makes other
    pictures the class, a part of an object in a small region seldom does.
    """
    row = classes.index[classes["class"] == k][0]
    classes.loc[row, "transplant_checked"] = True
    classes.loc[row, list(TRANSPLANT_FIGURES)] = [result.class_rate, result.control_rate, result.class_probability,
                                                  result.control_probability, result.samples, result.excess]
    if classes.loc[row, "status"] == "not confirmed" and result.excess >= thresholds.min_transplant_excess:
        classes.loc[row, ["status", "confirmed_by"]] = ["confirmed", "transplant"]


def record_clusters(classes: pd.DataFrame, clusters: dict, masks: dict) -> None:
    """For each flagged class, the SpRAy cluster whose mean heatmap is most focused on the blamed region (``masks``:
    class -> boolean (H, W) mask, from :func:`suspected_region`); columns ``spray_clusters``,
    ``shortcut_cluster``, ``shortcut_cluster_share``, ``shortcut_cluster_focus`` and ``other_clusters_focus`` (the
    largest focus of the class's other clusters)."""
    classes["spray_clusters"] = [clusters[k].count if k in clusters else 0 for k in classes["class"]]
    classes["shortcut_cluster"] = -1
    for column in ("shortcut_cluster_share", "shortcut_cluster_focus", "other_clusters_focus"):
        classes[column] = np.nan
    for row in classes.index[classes["flagged"]]:
        k = classes.loc[row, "class"]
        found = clusters.get(k)
        if found is None or found.count < 2 or k not in masks:
            continue
        mass, _ = heatmaps.to_mass(heatmaps.upsample(found.mean_maps, masks[k].shape))
        focus = heatmaps.region_focus(mass, masks[k])
        best = int(np.nanargmax(focus))
        share = float((found.labels == best).sum() / max((found.labels >= 0).sum(), 1))
        classes.loc[row, ["shortcut_cluster", "shortcut_cluster_share", "shortcut_cluster_focus",
                          "other_clusters_focus"]] = [best, share, float(focus[best]),
                                                      float(np.nanmax(np.delete(focus, best)))]


def class_mean_cams(cams: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean normalised CAM of each class (C, h, w), from raw low-resolution CAMs; empty CAMs are left out."""
    mass, valid = heatmaps.to_mass(cams)
    means = np.full((num_classes, *cams.shape[1:]), np.nan, dtype=np.float32)
    for k in range(num_classes):
        chosen = valid & (labels == k)
        if chosen.any():
            means[k] = mass[chosen].mean(axis=0)
    return means
