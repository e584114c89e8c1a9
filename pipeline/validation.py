"""How well an audit found a shortcut that was planted on purpose (``gradcam-audit validate``, and the demo).

Given the audit's tables and which samples carry the planted artifact, it answers three questions:

- *Class level*: where does the planted class rank among the classes, ordered as the report orders them (flagged
  first, then by shortcut score)? Is it flagged, and is any clean class flagged too?
- *Sample level*: does the audit's own per-sample score separate the stamped images from the clean ones? The score
  is the planted class's ``sample_score`` (:func:`pipeline.findings.shortcut_values`): each sample's *reliance* on
  the class's blamed region (the drop in the log-odds of its given label when the region is blanked) where the audit
  measured it, a candidate's; else its value of the class's shortcut statistic (its focus on the border band, on
  the corner the class's heatmaps favour or on its background, or its peak margin on the class's hot spot; named
  in ``sample_statistic``). Either way it uses what the audit found, not where the artifact really is.
  Figures: AUROC of stamped versus all clean images, and precision at k, the share of stamped images among the k
  highest scores (k = the number of stamped images, and k = 100); and, side by side, the AUROC of each of the two
  scores (``focus_auroc``, ``reliance_auroc``).
- The ``uses_shortcut`` sample flag: its precision and recall for the stamped images; and what they would be with
  either score ranking the flagged class's samples (``focus_uses_*``, ``reliance_uses_*``;
  :func:`pipeline.findings.shortcut_tail`).

Beside them, what decided the planted class (``confirmed_by``) and the transplant check's excess for it and, at most,
for the clean classes checked (the margin that check keeps on unseen data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .findings import STATISTIC_WORDS, auroc, ranked_classes, shortcut_tail, shortcut_values


def precision_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Share of positives among the ``k`` highest finite scores."""
    finite = np.flatnonzero(np.isfinite(scores))
    top = finite[np.argsort(-scores[finite], kind="stable")[:k]]
    return float(positive[top].mean()) if len(top) else float("nan")


def detection_figures(samples: pd.DataFrame, classes: pd.DataFrame, planted_class: str) -> dict:
    """The detection figures of one audit of a source with a planted artifact (``samples["planted"]``)."""
    k = int(classes.loc[classes["class_name"] == planted_class, "class"].iloc[0])
    order = ranked_classes(classes)
    _, score = shortcut_values(samples, classes, k)
    region_name, focus = shortcut_values(samples, classes, k, "focus")
    _, reliance = shortcut_values(samples, classes, k, "reliance")
    stamped = samples["planted"].to_numpy(dtype=bool)
    mine = samples["label"].to_numpy() == k
    uses = samples["flags"].str.contains("uses_shortcut").to_numpy()
    flagged = classes.loc[classes["flagged"], "class_name"].tolist()
    finite = np.isfinite(focus)
    # What the flag would be with either score ranking the class's samples (none unless the class is flagged).
    alternatives = {f"{name}_uses": shortcut_tail(samples, classes, k, name) & (planted_class in flagged)
                    for name in ("focus", "reliance")}
    clean_tails = classes.loc[classes["class_name"] != planted_class, "shortcut_score"]
    correct = (samples["label"] == samples["pred"]).to_numpy() if "pred" in samples else None
    return {
        "planted_class": planted_class,
        "stamped_samples": int(stamped.sum()),
        "rank": int(order.index(k) + 1),
        "flagged": planted_class in flagged,
        "clean_classes_flagged": [name for name in flagged if name != planted_class],
        "suspected_region": region_name,
        "sample_statistic": STATISTIC_WORDS[classes.loc[classes["class"] == k, "shortcut_statistic"].iloc[0]],
        "sample_score": classes.loc[classes["class"] == k, "sample_score"].iloc[0],
        "sample_auroc": auroc(score[stamped], score[~stamped]),
        "focus_auroc": auroc(focus[stamped], focus[~stamped]),
        "reliance_auroc": auroc(reliance[stamped], reliance[~stamped]),
        "sample_auroc_within_class": auroc(score[stamped & mine], score[~stamped & mine]),
        "precision_at_stamped": precision_at(score, stamped, int(stamped.sum())),
        "precision_at_100": precision_at(score, stamped, 100),
        **{f"{name}_{figure}": value for name, chosen in {"uses_shortcut": uses, **alternatives}.items()
           for figure, value in zip(("precision", "recall"), _precision_recall(chosen, stamped), strict=True)},
        # Did the model learn the artifact at all? The class's tail share against the largest of the clean
        # classes', and, within the class, how stamped and clean images differ in focus and in accuracy.
        **spot_figures(classes, planted_class),
        **transplant_figures(classes, planted_class),
        "confirmed_by": classes.loc[classes["class"] == k, "confirmed_by"].iloc[0],
        "planted_tail_share": float(classes.loc[classes["class"] == k, "shortcut_score"].iloc[0]),
        "max_clean_tail_share": float(clean_tails.max()) if clean_tails.notna().any() else float("nan"),
        "stamped_median_focus": _median(focus[stamped & mine & finite]),
        "clean_median_focus": _median(focus[~stamped & mine & finite]),
        "stamped_median_reliance": _median(reliance[stamped & mine & np.isfinite(reliance)]),
        "clean_median_reliance": _median(reliance[~stamped & mine & np.isfinite(reliance)]),
        "stamped_accuracy": float(correct[stamped & mine].mean()) if correct is not None and
        (stamped & mine).any() else float("nan"),
        "clean_accuracy": float(correct[~stamped & mine].mean()) if correct is not None and
        (~stamped & mine).any() else float("nan"),
    }


def spot_figures(classes: pd.DataFrame, planted_class: str | None = None) -> dict:
    """The hot spot rule's two tests for the planted class, and the largest of the clean classes': the excess of its
    images peaking in its spot over other classes' share, and how alike they look there (NaN for a classes table
    without the hot spot's columns)."""
    names = ("spot_excess", "spot_consistency", "max_clean_spot_excess", "max_clean_spot_consistency")
    if "spot_margin_peak_share" not in classes:
        return dict.fromkeys(names, float("nan"))
    excess = classes["spot_margin_peak_share"] - classes["spot_margin_others_share"]
    planted = (classes["class_name"] == planted_class).to_numpy()
    return {"spot_excess": float(excess[planted].iloc[0]) if planted.any() else float("nan"),
            "spot_consistency": float(classes.loc[planted, "spot_margin_consistency"].iloc[0]) if planted.any()
            else float("nan"),
            "max_clean_spot_excess": float(excess[~planted].max()),
            "max_clean_spot_consistency": float(classes.loc[~planted, "spot_margin_consistency"].max())}


def transplant_figures(classes: pd.DataFrame, planted_class: str | None = None) -> dict:
    """The transplant check's excess for the planted class, and the largest of the clean classes' (NaN where no
    class was checked)."""
    checked = classes["transplant_excess"] if "transplant_excess" in classes else pd.Series(np.nan, classes.index)
    planted = (classes["class_name"] == planted_class).to_numpy()
    return {"transplant_excess": float(checked[planted].iloc[0]) if planted.any() else float("nan"),
            "max_clean_transplant_excess": float(checked[~planted].max())}


def _precision_recall(chosen: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Share of positives among the chosen samples (NaN when none is chosen), and of chosen among the positives."""
    return (float(positive[chosen].mean()) if chosen.any() else float("nan"),
            float(chosen[positive].mean()) if positive.any() else float("nan"))


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")
