import numpy as np
import pandas as pd
import pytest

from pipeline import findings, validation


def planted_audit(n: int = 200, seed: int = 0):
    """Four classes; half of class 1 carry an artifact in the top-left corner and look at it."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n // 4)
    planted = (labels == 1) & (np.arange(n) % 2 == 0)
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "label": labels, "planted": planted,
                            "flags": np.where(planted, "uses_shortcut", "")})
    for corner in findings.heatmaps.CORNERS:
        samples[findings.corner_column(corner)] = rng.uniform(0.5, 1.5, n)
    samples.loc[planted, "corner_focus_top_left"] += 3.0
    classes = pd.DataFrame({"class": range(4), "class_name": list("abcd"), "flagged": [False, True, False, False],
                            "shortcut_score": [0.1, 0.5, 0.3, 0.05], "shortcut_statistic": "corner_focus",
                            "measured_region": "the top-left corner", "region_column": "corner_focus_top_left",
                            "region": "the top-left corner", "tail_cutoff": 1.45, "sample_score": "focus",
                            "reliance_column": "", "reliance_cutoff": np.nan,
                            "confirmed_by": ["", "occlusion", "", ""]})
    return samples, classes


def test_a_found_artifact_ranks_first_and_its_samples_are_separated_by_the_shortcut_statistic():
    samples, classes = planted_audit()
    figures = validation.detection_figures(samples, classes, "b")
    assert figures["rank"] == 1 and figures["flagged"] and figures["clean_classes_flagged"] == []
    assert figures["suspected_region"] == "the top-left corner"
    assert figures["confirmed_by"] == "occlusion" and np.isnan(figures["transplant_excess"])
    assert figures["sample_auroc"] == pytest.approx(1.0) and figures["precision_at_stamped"] == pytest.approx(1.0)
    assert figures["uses_shortcut_precision"] == 1.0 and figures["uses_shortcut_recall"] == 1.0
    assert figures["stamped_samples"] == 25
    # Whether the model learnt it: the class's tail share against the clean classes', focus of stamped vs clean.
    assert figures["planted_tail_share"] == 0.5 and figures["max_clean_tail_share"] == 0.3
    assert figures["stamped_median_focus"] > figures["clean_median_focus"] + 2.5


def test_the_score_is_measured_where_the_audit_looks_not_where_the_artifact_is():
    samples, classes = planted_audit()
    samples.loc[samples["label"] == 1, "corner_focus_bottom_right"] = 9.0  # the class favours another corner
    classes.loc[1, ["measured_region", "region_column"]] = ["the bottom-right corner", "corner_focus_bottom_right"]
    figures = validation.detection_figures(samples, classes, "b")
    assert figures["suspected_region"] == "the bottom-right corner"
    assert figures["sample_auroc_within_class"] == 0.5  # stamped and clean images of the class tie there


def test_a_missed_artifact_ranks_below_the_classes_flagged_instead():
    samples, classes = planted_audit()
    classes["flagged"] = [True, False, False, False]
    figures = validation.detection_figures(samples, classes, "b")
    assert figures["rank"] == 2 and not figures["flagged"] and figures["clean_classes_flagged"] == ["a"]


def test_precision_at_k_counts_positives_among_the_k_highest_finite_scores():
    scores = np.array([0.9, np.nan, 0.8, 0.1, 0.7])
    positive = np.array([True, True, False, False, True])
    assert validation.precision_at(scores, positive, 2) == 0.5
    assert validation.precision_at(scores, positive, 3) == pytest.approx(2 / 3)


def test_the_hot_spot_figures_are_the_planted_class_s_and_the_largest_of_the_clean_classes():
    classes = pd.DataFrame({"class_name": ["a", "b", "c"], "spot_margin_peak_share": [0.30, 0.05, 0.04],
                            "spot_margin_others_share": [0.02, 0.01, 0.03], "spot_margin_consistency": [0.9, 0.1, 0.2]})
    figures = validation.spot_figures(classes, "a")
    assert figures["spot_excess"] == pytest.approx(0.28) and figures["spot_consistency"] == 0.9
    assert figures["max_clean_spot_excess"] == pytest.approx(0.04) and figures["max_clean_spot_consistency"] == 0.2
    control = validation.spot_figures(classes)
    assert np.isnan(control["spot_excess"]) and control["max_clean_spot_excess"] == pytest.approx(0.28)


def test_the_figures_give_the_focus_and_the_reliance_side_by_side_and_the_score_in_force_is_the_class_s():
    samples, classes = planted_audit()
    planted, labels = samples["planted"].to_numpy(), samples["label"].to_numpy()
    samples.loc[labels == 1, "corner_focus_top_left"] = 3.0  # the whole class looks at the corner ...
    samples["reliance_1"] = np.where(planted, 0.7, 0.01 * (np.arange(len(samples)) % 5))  # ... the stamped rely on it
    classes.loc[1, ["sample_score", "reliance_column", "reliance_cutoff"]] = ["reliance", "reliance_1", 0.045]
    figures = validation.detection_figures(samples, classes, "b")
    assert figures["sample_score"] == "reliance"
    assert figures["focus_auroc"] == pytest.approx(0.5 + 0.5 * 150 / 175)  # ties with the class's clean images
    assert figures["reliance_auroc"] == pytest.approx(1.0) and figures["sample_auroc"] == figures["reliance_auroc"]
    assert figures["focus_uses_precision"] == 0.5 and figures["focus_uses_recall"] == 1.0
    assert figures["reliance_uses_precision"] == 1.0 and figures["reliance_uses_recall"] == 1.0
    assert figures["stamped_median_reliance"] == 0.7
    classes.loc[1, "flagged"] = False  # a class not flagged flags no sample, whatever its score
    figures = validation.detection_figures(samples, classes, "b")
    assert figures["reliance_uses_recall"] == 0.0 and np.isnan(figures["reliance_uses_precision"])


def test_the_transplant_figures_are_the_planted_class_s_and_the_largest_of_the_clean_classes_checked():
    _, classes = planted_audit()
    classes["transplant_excess"] = [np.nan, 0.6, 0.1, np.nan]
    assert validation.transplant_figures(classes, "b") == {"transplant_excess": 0.6,
                                                           "max_clean_transplant_excess": 0.1}
    assert validation.transplant_figures(classes) == {"transplant_excess": pytest.approx(np.nan, nan_ok=True),
                                                      "max_clean_transplant_excess": 0.6}
