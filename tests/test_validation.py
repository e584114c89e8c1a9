import numpy as np
import pandas as pd
import pytest

from pipeline import findings, validation


def planted_audit(n: int = 200, seed: int = 0):
    """Four classes; half of class 1 carry an artifact in the top-left corner and their CAMs sit on it."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n // 4)
    planted = (labels == 1) & (np.arange(n) % 2 == 0)
    cams = rng.uniform(0.0, 0.1, (n, 8, 8)).astype(np.float32)
    cams[:, 3:5, 3:5] += 1.0
    cams[planted, :2, :2] += 3.0
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "label": labels, "planted": planted,
                            "flags": np.where(planted, "uses_shortcut", "")})
    classes = pd.DataFrame({"class": range(4), "class_name": list("abcd"), "flagged": [False, True, False, False],
                            "shortcut_score": [0.1, 0.5, 0.3, 0.05], "shortcut_statistic": "corner_focus",
                            "favoured_corner": "top-left"})
    return samples, classes, cams


def test_a_found_artifact_ranks_first_and_its_samples_are_separated_by_focus_on_the_blamed_region():
    samples, classes, cams = planted_audit()
    for c in findings.heatmaps.CORNERS:
        samples[findings.corner_column(c)] = 1.0
    samples.loc[samples["planted"], "corner_focus_top_left"] = 5.0
    figures = validation.detection_figures(samples, classes, cams, (32, 32), "b")
    assert figures["rank"] == 1 and figures["flagged"] and figures["clean_classes_flagged"] == []
    assert figures["suspected_region"] == "the top-left corner"
    assert figures["sample_auroc"] == pytest.approx(1.0) and figures["precision_at_stamped"] == pytest.approx(1.0)
    assert figures["uses_shortcut_precision"] == 1.0 and figures["uses_shortcut_recall"] == 1.0
    assert figures["stamped_samples"] == 25


def test_a_missed_artifact_ranks_below_the_classes_flagged_instead():
    samples, classes, cams = planted_audit()
    for c in findings.heatmaps.CORNERS:
        samples[findings.corner_column(c)] = 1.0
    classes["flagged"] = [True, False, False, False]
    figures = validation.detection_figures(samples, classes, cams, (32, 32), "b")
    assert figures["rank"] == 2 and not figures["flagged"] and figures["clean_classes_flagged"] == ["a"]


def test_precision_at_k_counts_positives_among_the_k_highest_finite_scores():
    scores = np.array([0.9, np.nan, 0.8, 0.1, 0.7])
    positive = np.array([True, True, False, False, True])
    assert validation.precision_at(scores, positive, 2) == 0.5
    assert validation.precision_at(scores, positive, 3) == pytest.approx(2 / 3)
