"""From the per-sample table to findings: shortcut classes with evidence, relabel candidates, per-sample flags.

A class is a *likely shortcut* when its heatmaps sit in a region off the object (the border band, a corner) far more
than the other classes' do: its mean focus ratio is at least ``min_focus_ratio`` times the median of the other
classes' means, and a random sample of it is more focused there than a random sample of the other classes with
probability (AUROC) at least ``min_auroc``. Both numbers go into the evidence sentence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from scipy.stats import mannwhitneyu

from . import heatmaps

#: Statistics that can reveal a shortcut, and the region they measure, in the words of the evidence sentence.
SHORTCUT_STATISTICS = ("border_focus", "corner_focus")
STATISTIC_COLUMNS = ("border_focus", "corner_focus", "background_attention", "concentration")


@dataclass(frozen=True)
class Thresholds:
    """The thresholds behind every flag; recorded in ``audit.json``."""

    min_focus_ratio: float = 1.5  # class mean / median of the other classes' means
    min_auroc: float = 0.75  # P(a sample of the class is more focused than a sample of another class)
    shortcut_sample_quantile: float = 0.9  # a sample "uses" the shortcut above this quantile of the other classes

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditTables:
    """What an audit produced: the tables, the CAMs kept beside them, and the run's record (``audit.json``)."""

    samples: pd.DataFrame
    classes: pd.DataFrame
    cams: np.ndarray  # (N, h, w) raw predicted-class CAMs at the target layer's resolution, rows as in samples
    class_mean_cams: np.ndarray  # (C, h, w) mean normalised CAM per class
    meta: dict = field(default_factory=dict)


def build_tables(
    samples: pd.DataFrame,
    probs: np.ndarray,
    cams: np.ndarray,
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    thresholds: Thresholds,
) -> AuditTables:
    """All findings of an audit from its merged per-sample table, probabilities and CAMs."""
    scored = score_samples(samples.reset_index(drop=True), probs, class_names)
    classes = class_table(scored, class_names, image_size, thresholds)
    scored["flags"] = flag_samples(scored, classes, thresholds)
    means = class_mean_cams(cams, scored["label"].to_numpy(), len(class_names))
    return AuditTables(scored, classes, cams, means)


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 for X from ``inside``, Y from ``outside`` (the Mann-Whitney U statistic, scaled)."""
    inside, outside = inside[np.isfinite(inside)], outside[np.isfinite(outside)]
    if len(inside) == 0 or len(outside) == 0:
        return float("nan")
    return float(mannwhitneyu(inside, outside).statistic / (len(inside) * len(outside)))


def _percentile_rank(values: pd.Series) -> pd.Series:
    return values.rank(pct=True, na_option="keep")


def score_samples(samples: pd.DataFrame, probs: np.ndarray, class_names: tuple[str, ...]) -> pd.DataFrame:
    """Add ``shortcut_score``, ``relabel_score``, ``suggested_label``, ``is_label_issue`` and names to the table.

    ``shortcut_score`` is the larger of the sample's percentile ranks of border focus and corner focus within the
    audited split (range (0, 1]; NaN for an empty CAM). ``relabel_score`` is one minus cleanlab's self-confidence
    label quality, that is one minus the model's probability of the given label (range [0, 1]).
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


def class_table(
    samples: pd.DataFrame,
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    thresholds: Thresholds = Thresholds(),
) -> pd.DataFrame:
    """One row per class: counts, accuracy, the statistics' class means, shortcut evidence and the flag."""
    correct = samples["label"] == samples["pred"]
    rows = []
    for k, name in enumerate(class_names):
        mine = samples["label"].to_numpy() == k
        row = {"class": k, "class_name": name, "samples": int(mine.sum()),
               "accuracy": float(correct[mine].mean()) if mine.any() else float("nan")}
        for column in STATISTIC_COLUMNS:
            row[column] = float(samples.loc[mine, column].mean()) if mine.any() else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)

    labels = samples["label"].to_numpy()
    for column in SHORTCUT_STATISTICS:
        ratios, aurocs = [], []
        for k in table["class"]:
            mine = labels == k
            others = table.loc[table["class"] != k, column].median()
            ratios.append(table.loc[k, column] / others if others > 0 else np.nan)
            aurocs.append(_auroc(samples.loc[mine, column].to_numpy(), samples.loc[~mine, column].to_numpy()))
        table[f"{column}_ratio"] = ratios
        table[f"{column}_auroc"] = aurocs

    # A statistic passes when both its ratio and its AUROC clear their thresholds; a class is flagged when one does.
    # Its shortcut score is the AUROC of its strongest passing statistic (or of its strongest statistic at all).
    ratios = table[[f"{c}_ratio" for c in SHORTCUT_STATISTICS]].to_numpy()
    aurocs = table[[f"{c}_auroc" for c in SHORTCUT_STATISTICS]].to_numpy()
    passes = (ratios >= thresholds.min_focus_ratio) & (aurocs >= thresholds.min_auroc)
    ranked = np.where(np.isnan(aurocs), -np.inf, aurocs) + 2.0 * passes
    strongest = ranked.argmax(axis=1)
    table["shortcut_statistic"] = np.asarray(SHORTCUT_STATISTICS)[strongest]
    table["shortcut_score"] = aurocs[np.arange(len(table)), strongest]
    flagged = passes.any(axis=1).tolist()
    evidence = [
        _evidence(samples, table, k, column, image_size, hit) if table.loc[k, "samples"] else ""
        for k, column, hit in zip(table["class"], table["shortcut_statistic"], flagged, strict=True)
    ]
    table["flagged"] = flagged
    table["evidence"] = evidence
    return table


def _evidence(samples: pd.DataFrame, table: pd.DataFrame, k: int, column: str, image_size: tuple[int, int],
              flagged: bool) -> str:
    """A sentence with the numbers behind a class's shortcut score."""
    name = table.loc[k, "class_name"]
    others = table.loc[table["class"] != k, column].median()
    corner, mask = _region(samples, k, column, image_size)
    share = mask.mean()
    if corner is None:
        width = int(round(heatmaps.BORDER_FRACTION * min(image_size)))
        region = f"the {width}-px border band ({share:.0%} of the image)"
    else:
        region = f"the {corner} corner ({share:.0%} of the image)"
    mass, other_mass = table.loc[k, column] * share, others * share
    auroc = table.loc[k, f"{column}_auroc"]
    verdict = "likely shortcut" if flagged else "no shortcut signal"
    sentence = (
        f"{verdict}: '{name}' images put {mass:.0%} of their heatmap in {region}, other classes {other_mass:.0%} "
        f"({_comparison(table, k, column)}); a '{name}' image is more focused there than another class's image "
        f"{auroc:.0%} of the time"
    )
    if column != "border_focus":
        sentence += f"; {_comparison(table, k, 'border_focus')}"
    return sentence + "."


def _comparison(table: pd.DataFrame, k: int, column: str) -> str:
    """'border focus 0.69 vs 0.33, 2.1x': a class's mean against the median of the other classes' means."""
    others = table.loc[table["class"] != k, column].median()
    ratio = table.loc[k, f"{column}_ratio"]
    return f"{column.replace('_', ' ')} {table.loc[k, column]:.2f} vs {others:.2f}, {ratio:.1f}x"


def flag_samples(samples: pd.DataFrame, classes: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> pd.Series:
    """The ``flags`` column: a ``;``-separated list of what stands out about each sample.

    ``empty_cam`` (no positive evidence, statistics NaN), ``misclassified``, ``label_issue`` (cleanlab), and
    ``uses_shortcut``: the sample's class is flagged and its value of the class's shortcut statistic is above the
    ``shortcut_sample_quantile`` of the other classes' samples.
    """
    flags = [[] for _ in range(len(samples))]
    labels = samples["label"].to_numpy()
    for i in np.flatnonzero(~samples["cam_valid"].to_numpy()):
        flags[i].append("empty_cam")
    for i in np.flatnonzero(labels != samples["pred"].to_numpy()):
        flags[i].append("misclassified")
    for i in np.flatnonzero(samples["is_label_issue"].to_numpy()):
        flags[i].append("label_issue")
    for _, row in classes[classes["flagged"]].iterrows():
        column, k = row["shortcut_statistic"], row["class"]
        cutoff = samples.loc[labels != k, column].quantile(thresholds.shortcut_sample_quantile)
        for i in np.flatnonzero((labels == k) & (samples[column].to_numpy() > cutoff)):
            flags[i].append("uses_shortcut")
    return pd.Series([";".join(f) for f in flags], index=samples.index, name="flags")


def _region(samples: pd.DataFrame, k: int, column: str, size: tuple[int, int]) -> tuple[str | None, np.ndarray]:
    """Where ``column`` looks for class ``k``: (None, the border band) or (corner name, the corner its samples
    favour most often), the mask boolean (H, W)."""
    if column == "border_focus":
        return None, heatmaps.border_band(*size)
    corners = samples.loc[(samples["label"] == k) & (samples["focus_corner"] != ""), "focus_corner"].mode()
    corner = corners.iloc[0] if len(corners) else heatmaps.CORNERS[0]
    return corner, heatmaps.corner_regions(*size)[heatmaps.CORNERS.index(corner)]


def suspected_region(samples: pd.DataFrame, classes: pd.DataFrame, k: int,
                     size: tuple[int, int]) -> tuple[str, np.ndarray]:
    """The region class ``k``'s shortcut statistic points at, as a name and a boolean (H, W) mask: the border band,
    or the corner its samples favour most often."""
    column = classes.loc[classes["class"] == k, "shortcut_statistic"].iloc[0]
    corner, mask = _region(samples, k, column, size)
    return ("the border band" if corner is None else f"the {corner} corner"), mask


def add_occlusion_evidence(classes: pd.DataFrame, k: int, region: str, class_before: float, class_after: float,
                           others_before: float, others_after: float) -> None:
    """Record the occlusion check of class ``k`` in ``classes`` (in place) and append it to its evidence sentence."""
    row = classes.index[classes["class"] == k][0]
    classes.loc[row, ["occluded_accuracy_before", "occluded_accuracy_after", "others_accuracy_before",
                      "others_accuracy_after"]] = [class_before, class_after, others_before, others_after]
    name = classes.loc[row, "class_name"]
    classes.loc[row, "evidence"] = (
        classes.loc[row, "evidence"].rstrip(".")
        + f"; blanking {region} changes '{name}' accuracy from {class_before:.0%} to {class_after:.0%} "
        f"(other classes: {others_before:.0%} to {others_after:.0%})."
    )


def class_mean_cams(cams: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean normalised CAM of each class (C, h, w), from raw low-resolution CAMs; empty CAMs are left out."""
    mass, valid = heatmaps.to_mass(cams)
    means = np.full((num_classes, *cams.shape[1:]), np.nan, dtype=np.float32)
    for k in range(num_classes):
        chosen = valid & (labels == k)
        if chosen.any():
            means[k] = mass[chosen].mean(axis=0)
    return means
