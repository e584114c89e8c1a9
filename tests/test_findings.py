import re

import numpy as np
import pandas as pd
import pytest

from pipeline import findings, heatmaps
from pipeline.occlusion import OcclusionResult

CLASSES = ("a", "b", "c", "d")


def make_table(n: int = 100, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A samples table of four alike classes (random statistics), with confident, correct predictions."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n)
    corners = rng.normal(1.0, 0.2, (len(labels), 4))
    probs = np.full((len(labels), len(CLASSES)), 0.02)
    probs[np.arange(len(labels)), labels] = 0.94
    samples = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(len(labels))], "label": labels, "pred": labels,
        "confidence": 0.94, "label_prob": 0.94,
        "border_focus": rng.normal(0.8, 0.15, len(labels)), "corner_focus": corners.max(axis=1),
        "focus_corner": np.asarray(heatmaps.CORNERS)[corners.argmax(axis=1)],
        **{findings.corner_column(c): corners[:, i] for i, c in enumerate(heatmaps.CORNERS)},
        "background_attention": rng.uniform(0, 0.3, len(labels)), "concentration": rng.uniform(0, 1, len(labels)),
        "cam_valid": True,
    })
    return samples, probs


def table_with_border_class(k: int | None, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """One whole class's border focus about twice the others'."""
    samples, probs = make_table(seed=seed)
    if k is not None:
        samples.loc[samples["label"] == k, "border_focus"] += 0.9
    return samples, probs


def table_with_corner_subpopulation(k: int, share: float = 0.3) -> tuple[pd.DataFrame, np.ndarray]:
    """``share`` of class k's samples put far more mass in the top-left corner; the rest look like everyone."""
    samples, probs = make_table()
    rows = np.flatnonzero(samples["label"] == k)[: int(share * 100)]
    samples.loc[rows, "corner_focus_top_left"] = 6.0
    samples.loc[rows, "corner_focus"] = 6.0
    samples.loc[rows, "focus_corner"] = "top-left"
    return samples, probs


def build(samples, probs, occlusion=None, cams=None):
    cams = np.ones((len(samples), 4, 4), dtype=np.float32) if cams is None else cams
    return findings.build_tables(samples, probs, cams, CLASSES, (32, 32), findings.Thresholds(), occlusion=occlusion)


def occlusion_result(class_drop: float, others_drop: float = 0.0) -> OcclusionResult:
    return OcclusionResult(0.9, 0.9 - class_drop, 0.9, 0.9 - others_drop, 0.8, 0.8 - class_drop, 0.8,
                           0.8 - others_drop, 100)


def test_only_the_class_drawn_to_the_border_is_flagged_with_numbers_in_its_evidence():
    tables = build(*table_with_border_class(2))
    classes = tables.classes.set_index("class_name")
    assert classes["flagged"].tolist() == [False, False, True, False]
    evidence = classes.loc["c", "evidence"]
    assert evidence.startswith("likely shortcut: 100% of 'c' images are more focused on the 4-px border band")
    assert re.search(r"border focus 1\.[67]\d, 2\.\dx the other classes' median, AUROC 1\.00", evidence)
    assert evidence.endswith("no causal check was made.")
    assert classes.loc["c", "shortcut_score"] > 0.95
    assert classes.loc["a", "shortcut_score"] < 0.2


def test_no_class_is_flagged_when_all_classes_look_alike():
    tables = build(*table_with_border_class(None))
    assert not tables.classes["candidate"].any() and not tables.classes["flagged"].any()
    assert tables.classes["evidence"].str.startswith("no shortcut signal").all()


def test_a_sub_population_using_one_corner_makes_its_class_a_candidate_although_the_class_auroc_is_low():
    tables = build(*table_with_corner_subpopulation(1, share=0.3))
    row = tables.classes.set_index("class_name").loc["b"]
    assert row["flagged"] and row["shortcut_statistic"] == "corner_focus" and row["favoured_corner"] == "top-left"
    assert row["corner_focus_auroc"] < findings.Thresholds().min_auroc  # the whole-class rule alone would miss it
    assert row["corner_focus_tail_share"] == pytest.approx(0.3, abs=0.05)
    assert row["evidence"].startswith("likely shortcut: 3")
    assert "the top-left corner (6% of the image)" in row["evidence"]
    assert tables.classes["flagged"].sum() == 1


def test_the_causal_check_confirms_a_candidate_only_when_blanking_costs_the_class_more_than_the_others():
    confirmed = build(*table_with_border_class(2), occlusion=lambda k, region: occlusion_result(0.4, 0.02))
    refuted = build(*table_with_border_class(2), occlusion=lambda k, region: occlusion_result(0.03, 0.01))
    row = confirmed.classes.loc[2]
    assert row["flagged"] and row["occlusion_excess_drop"] == pytest.approx(0.38)
    assert row["evidence"].startswith("likely shortcut:")
    assert "changes 'c' accuracy from 90% to 50% and its confidence in the true label from 0.80 to 0.40" in \
        row["evidence"]
    row = refuted.classes.loc[2]
    assert row["candidate"] and not row["flagged"]
    assert row["evidence"].startswith("shortcut candidate, not confirmed:")
    assert "so the class is not flagged" in row["evidence"]
    assert not refuted.samples["flags"].str.contains("uses_shortcut").any()


def test_the_causal_check_blanks_the_suspected_region():
    regions = {}
    build(*table_with_corner_subpopulation(3), occlusion=lambda k, region: regions.setdefault(k, region)
          is not None and occlusion_result(0.3))
    assert list(regions) == [3]
    assert (regions[3] == heatmaps.corner_regions(32, 32)[0]).all()


def test_samples_of_a_flagged_class_above_the_other_classes_quantile_are_marked_as_using_the_shortcut():
    tables = build(*table_with_corner_subpopulation(1, share=0.3))
    uses = tables.samples["flags"].str.contains("uses_shortcut")
    assert uses[tables.samples["label"] != 1].sum() == 0
    mine = uses[tables.samples["label"] == 1].to_numpy()
    assert mine[:30].all() and mine[30:].sum() <= 7  # the sub-population, plus the clean ones above it by chance


def test_spray_finds_the_cluster_of_a_flagged_class_that_looks_at_the_corner():
    samples, probs = table_with_corner_subpopulation(1, share=0.3)
    rng = np.random.default_rng(1)
    cams = rng.uniform(0.0, 0.05, (len(samples), 8, 8)).astype(np.float32)
    cams[:, 3:5, 3:5] += 1.0  # everyone looks at the centre ...
    corner_rows = np.flatnonzero(samples["corner_focus_top_left"] == 6.0)
    cams[corner_rows] = rng.uniform(0.0, 0.05, (len(corner_rows), 8, 8))
    cams[corner_rows, :2, :2] += 1.0  # ... except the sub-population, at the top-left corner
    tables = build(samples, probs, cams=cams)
    row = tables.classes.loc[1]
    assert row["spray_clusters"] == 2 and row["shortcut_cluster_share"] == pytest.approx(0.3)
    assert "SpRAy splits the class's heatmaps into 2 clusters, and the one of 30%" in row["evidence"]
    clusters = tables.samples.loc[tables.samples["label"] == 1, "cam_cluster"].to_numpy()
    assert (clusters[:30] == row["shortcut_cluster"]).all() and (clusters[30:] != row["shortcut_cluster"]).all()


def test_a_confidently_mislabelled_sample_gets_a_high_relabel_score_a_suggestion_and_a_reason():
    samples, probs = table_with_border_class(None)
    probs[5] = [0.01, 0.01, 0.97, 0.01]  # labelled "a", the model is sure it is "c"
    samples.loc[5, ["pred", "confidence", "label_prob"]] = [2, 0.97, 0.01]
    scored = build(samples, probs).samples
    assert scored.loc[5, "relabel_score"] == scored["relabel_score"].max()
    assert scored.loc[5, "suggested_label"] == "c"
    assert "label_issue" in scored.loc[5, "flags"] and "misclassified" in scored.loc[5, "flags"]
    assert scored.loc[5, "relabel_reason"].startswith("the model gives 'a' 1% and predicts 'c' (97%), with")
    assert (scored.drop(index=5)["relabel_reason"] == "").all()


def test_the_relabel_score_is_self_confidence_and_the_heatmap_share_goes_into_the_reason():
    samples, probs = table_with_border_class(None)
    for i in (5, 6):
        probs[i] = [0.01, 0.01, 0.97, 0.01]
        samples.loc[i, ["pred", "confidence", "label_prob"]] = [2, 0.97, 0.01]
    samples.loc[5, "background_attention"] = 0.1
    samples.loc[6, "background_attention"] = 0.9
    scored = build(samples, probs).samples
    labels = samples["label"].to_numpy()
    np.testing.assert_allclose(scored["relabel_score"], 1.0 - probs[np.arange(len(probs)), labels], rtol=1e-6)
    assert scored.loc[5, "relabel_score"] == scored.loc[6, "relabel_score"] == pytest.approx(0.99)
    assert "mostly off it" in scored.loc[6, "relabel_reason"] and "mostly off it" not in scored.loc[5, "relabel_reason"]


def test_empty_cams_are_flagged_and_left_out_of_class_means():
    samples, probs = table_with_border_class(None)
    samples.loc[0, ["border_focus", "corner_focus"]] = np.nan
    samples.loc[0, "cam_valid"] = False
    cams = np.ones((len(samples), 4, 4), dtype=np.float32)
    cams[0] = 0
    tables = build(samples, probs, cams=cams)
    assert "empty_cam" in tables.samples.loc[0, "flags"]
    assert tables.samples.loc[0, "cam_cluster"] == -1
    assert np.isfinite(tables.class_mean_cams).all()
    np.testing.assert_allclose(tables.class_mean_cams.sum(axis=(1, 2)), 1.0, rtol=1e-6)


def test_the_suspected_region_is_the_border_band_or_the_favoured_corner():
    tables = build(*table_with_border_class(2))
    name, region = findings.suspected_region(tables.samples, tables.classes, tables.cams, 2, (32, 32))
    assert name == "the border band" and (region == heatmaps.border_band(32, 32)).all()
    tables.classes.loc[2, "shortcut_statistic"] = "corner_focus"
    tables.samples.loc[tables.samples["label"] == 2, "corner_focus_bottom_right"] = 5.0
    name, region = findings.suspected_region(tables.samples, tables.classes, tables.cams, 2, (32, 32))
    assert name == "the bottom-right corner" and region[31, 31] and not region[0, 0] and region.sum() == 64


def test_the_suspected_corner_grows_by_the_hot_spot_of_its_tail_images_heatmaps():
    samples, probs = table_with_corner_subpopulation(1, share=0.3)
    cams = np.full((len(samples), 8, 8), 0.01, dtype=np.float32)
    tail = np.flatnonzero(samples["corner_focus_top_left"] == 6.0)
    cams[tail, 0, 0:5] = 1.0  # a line of text from the corner to the middle of the top edge
    tables = build(samples, probs, cams=cams)
    name, region = findings.suspected_region(tables.samples, tables.classes, cams, 1, (32, 32))
    corner = heatmaps.corner_regions(32, 32)[0]
    assert name.startswith("the top-left corner and its heatmaps' hot spot")
    assert (region & corner).sum() == corner.sum() and region[0, 17] and not region[20, 20] and not region[0, 30]


def test_classes_rank_flagged_first_then_by_shortcut_score():
    classes = pd.DataFrame({"class": [0, 1, 2, 3], "flagged": [False, True, False, True],
                            "shortcut_score": [0.9, 0.3, np.nan, 0.5]})
    assert findings.ranked_classes(classes) == [3, 1, 0, 2]


def test_thresholds_can_be_overridden_by_name_and_unknown_names_are_refused():
    from pipeline import AuditError

    assert findings.Thresholds.from_overrides({"min_tail_share": "0.4"}).min_tail_share == 0.4
    assert findings.Thresholds.from_overrides(None) == findings.Thresholds()
    with pytest.raises(AuditError, match="unknown threshold"):
        findings.Thresholds.from_overrides({"min_tail": 0.4})
    strict = findings.build_tables(*table_with_corner_subpopulation(1, share=0.3), np.ones((400, 4, 4), np.float32),
                                   CLASSES, (32, 32), findings.Thresholds(min_tail_share=0.4))
    assert not strict.classes["flagged"].any()
