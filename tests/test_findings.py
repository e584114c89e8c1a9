import re

import numpy as np
import pandas as pd

from pipeline import findings

CLASSES = ("a", "b", "c", "d")


def table_with_border_class(border_class: int | None, n: int = 100, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A samples table where one class's border focus is about twice the others'."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n)
    border = rng.normal(0.8, 0.15, len(labels))
    corner = rng.normal(1.0, 0.2, len(labels))
    if border_class is not None:
        border[labels == border_class] += 0.9
    probs = np.full((len(labels), len(CLASSES)), 0.02)
    probs[np.arange(len(labels)), labels] = 0.94
    samples = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(len(labels))], "label": labels, "pred": labels,
        "border_focus": border, "corner_focus": corner, "focus_corner": "top-left",
        "background_attention": rng.uniform(0, 1, len(labels)), "concentration": rng.uniform(0, 1, len(labels)),
        "cam_valid": True,
    })
    return samples, probs


def build(samples, probs):
    cams = np.ones((len(samples), 4, 4), dtype=np.float32)
    return findings.build_tables(samples, probs, cams, CLASSES, (32, 32), findings.Thresholds())


def test_only_the_class_drawn_to_the_border_is_flagged_with_numbers_in_its_evidence():
    tables = build(*table_with_border_class(2))
    classes = tables.classes.set_index("class_name")
    assert classes["flagged"].tolist() == [False, False, True, False]
    evidence = classes.loc["c", "evidence"]
    assert evidence.startswith("likely shortcut: 'c' images put")
    assert re.search(r"border focus 1\.[67]\d vs 0\.[78]\d, 2\.\dx", evidence)
    assert classes.loc["c", "shortcut_score"] > 0.95


def test_no_class_is_flagged_when_all_classes_look_alike():
    tables = build(*table_with_border_class(None))
    assert not tables.classes["flagged"].any()
    assert tables.classes["evidence"].str.startswith("no shortcut signal").all()


def test_samples_of_a_flagged_class_above_the_other_classes_quantile_are_marked_as_using_the_shortcut():
    tables = build(*table_with_border_class(1))
    uses = tables.samples["flags"].str.contains("uses_shortcut")
    assert uses[tables.samples["label"] != 1].sum() == 0
    assert uses[tables.samples["label"] == 1].mean() > 0.9


def test_a_confidently_mislabelled_sample_gets_a_high_relabel_score_and_a_suggestion():
    samples, probs = table_with_border_class(None)
    probs[5] = [0.01, 0.01, 0.97, 0.01]  # labelled "a", the model is sure it is "c"
    samples.loc[5, "pred"] = 2
    scored = build(samples, probs).samples
    assert scored.loc[5, "relabel_score"] == scored["relabel_score"].max()
    assert scored.loc[5, "suggested_label"] == "c"
    assert "label_issue" in scored.loc[5, "flags"] and "misclassified" in scored.loc[5, "flags"]


def test_empty_cams_are_flagged_and_left_out_of_class_means():
    samples, probs = table_with_border_class(None)
    samples.loc[0, ["border_focus", "corner_focus"]] = np.nan
    samples.loc[0, "cam_valid"] = False
    cams = np.ones((len(samples), 4, 4), dtype=np.float32)
    cams[0] = 0
    tables = findings.build_tables(samples, probs, cams, CLASSES, (32, 32), findings.Thresholds())
    assert "empty_cam" in tables.samples.loc[0, "flags"]
    assert np.isfinite(tables.class_mean_cams).all()
    np.testing.assert_allclose(tables.class_mean_cams.sum(axis=(1, 2)), 1.0, rtol=1e-6)


def test_the_suspected_region_is_the_border_band_or_the_favoured_corner():
    from pipeline import heatmaps

    samples, probs = table_with_border_class(2)
    tables = build(samples, probs)
    name, region = findings.suspected_region(tables.samples, tables.classes, 2, (32, 32))
    assert name == "the border band" and (region == heatmaps.border_band(32, 32)).all()
    tables.classes.loc[2, "shortcut_statistic"] = "corner_focus"
    tables.samples.loc[tables.samples["label"] == 2, "focus_corner"] = "bottom-right"
    name, region = findings.suspected_region(tables.samples, tables.classes, 2, (32, 32))
    assert name == "the bottom-right corner" and region[31, 31] and not region[0, 0] and region.sum() == 64


def test_occlusion_evidence_is_recorded_and_appended_to_the_sentence():
    tables = build(*table_with_border_class(2))
    findings.add_occlusion_evidence(tables.classes, 2, "the border band", 0.98, 0.41, 0.95, 0.94)
    row = tables.classes.set_index("class_name").loc["c"]
    assert row["evidence"].endswith("; blanking the border band changes 'c' accuracy from 98% to 41% "
                                    "(other classes: 95% to 94%).")
    assert row["occluded_accuracy_after"] == 0.41
