import re

import numpy as np
import pandas as pd
import pytest
from conftest import same_evidence

from pipeline import AuditError, findings, heatmaps
from pipeline.occlusion import OcclusionResult, TransplantResult

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
        "cam_valid": True, "mask_kind": "estimated",
    })
    samples["background_focus"] = samples["background_attention"] / BACKGROUND_SHARE
    return samples, probs


#: The share of every image of :func:`make_table` outside its object.
BACKGROUND_SHARE = 0.6


def add_background_attention(samples: pd.DataFrame, rows, mass: float) -> None:
    """``mass`` more heatmap on the background of ``rows`` (a mask or labels), its focus following."""
    samples.loc[rows, "background_attention"] = np.clip(samples.loc[rows, "background_attention"] + mass, 0, 1)
    samples.loc[rows, "background_focus"] = samples.loc[rows, "background_attention"] / BACKGROUND_SHARE


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


def build(samples, probs, occlusion=None, cams=None, thumbnails=None, reliance=None, transplant=None, thresholds=None):
    """The findings of a table whose given labels' CAMs are the predicted ones (and their statistics), by the default
    thresholds with ``thresholds`` (name -> value) changed."""
    cams = np.ones((len(samples), 4, 4), dtype=np.float32) if cams is None else cams
    return findings.build_tables(same_evidence(samples), probs, cams, cams, CLASSES, (32, 32),
                                 findings.Thresholds.from_overrides(thresholds),
                                 occlusion=occlusion, reliance=reliance, transplant=transplant, thumbnails=thumbnails)


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


def test_a_class_is_judged_by_the_evidence_for_its_given_label_not_for_the_class_it_is_mistaken_for():
    samples, probs = make_table()
    samples = same_evidence(samples)
    # Half of class 'c' is mistaken for 'a' on the strength of the border (the predicted CAMs sit there), while the
    # evidence for 'c' in those images is where everyone's is: no shortcut of 'c'.
    wrong = np.flatnonzero(samples["label"] == 2)[::2]
    samples.loc[wrong, "pred"] = 0
    samples.loc[wrong, "border_focus"] += 0.9
    cams = np.ones((len(samples), 4, 4), dtype=np.float32)
    tables = findings.build_tables(samples, probs, cams, cams, CLASSES, (32, 32), findings.Thresholds())
    assert not tables.classes["candidate"].any()
    # The other way round: the evidence for 'c' in its images sits on the border, whatever they are predicted.
    samples.loc[wrong, "border_focus"] -= 0.9
    samples.loc[samples["label"] == 2, "label_border_focus"] += 0.9
    tables = findings.build_tables(samples, probs, cams, cams, CLASSES, (32, 32), findings.Thresholds())
    row = tables.classes.set_index("class_name").loc["c"]
    assert tables.classes["flagged"].tolist() == [False, False, True, False]
    assert row["region_column"] == "label_border_focus" and row["shortcut_statistic"] == "border_focus"
    uses = tables.samples["flags"].str.contains("uses_shortcut")
    assert uses[tables.samples["label"] == 2].mean() > 0.9 and not uses[tables.samples["label"] != 2].any()


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
    confirmed = build(*table_with_border_class(2), occlusion=lambda k, region, population: occlusion_result(0.4, 0.02))
    refuted = build(*table_with_border_class(2), occlusion=lambda k, region, population: occlusion_result(0.03, 0.01))
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
    build(*table_with_corner_subpopulation(3), occlusion=lambda k, region, population: regions.setdefault(k, region)
          is not None and occlusion_result(0.3))
    assert list(regions) == [3]
    assert (regions[3] == heatmaps.corner_regions(32, 32)[0]).all()


def test_the_causal_check_of_a_sub_population_compares_it_with_other_classes_images_as_focused_there():
    populations = {}

    def occlusion(k, region, population):
        populations[k] = population
        return occlusion_result(0.3)

    # A whole class drawn to its border: the whole class against the other classes.
    tables = build(*table_with_border_class(2), occlusion=occlusion)
    assert populations[2] is None and tables.classes.loc[2, "occlusion_population"] == "whole class"
    assert "changes 'c' accuracy" in tables.classes.loc[2, "evidence"]
    # 30% of a class in a corner, in a table large enough: that tail, and the other classes' images beyond the
    # same cut-off (their 95% quantile), nothing else.
    samples, probs = make_table(n=1200)
    rows = np.flatnonzero(samples["label"] == 3)[:360]
    samples.loc[rows, ["corner_focus_top_left", "corner_focus"]] = 6.0
    tables = build(samples, probs, occlusion=occlusion)
    population = populations[3]
    labels = samples["label"].to_numpy()
    values = samples["corner_focus_top_left"].to_numpy()
    cutoff = np.quantile(values[labels != 3], 0.95)
    assert (population == (values > cutoff)).all() and population[rows].all()
    assert 150 <= (population & (labels != 3)).sum() <= 190  # 5% of the 3,600 others
    assert tables.classes.loc[3, "occlusion_population"] == "tail"
    assert "changes those images' accuracy" in tables.classes.loc[3, "evidence"]
    assert "(other classes' images as focused there: " in tables.classes.loc[3, "evidence"]
    # Too few of them (the 400-sample table: 15 other images beyond the cut-off): the whole class again.
    build(*table_with_corner_subpopulation(3), occlusion=occlusion)
    assert populations[3] is None


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
    samples, probs = table_with_corner_subpopulation(1, share=0.3)
    cams = np.ones((400, 4, 4), np.float32)
    strict = findings.build_tables(same_evidence(samples), probs, cams, cams, CLASSES, (32, 32),
                                   findings.Thresholds(min_tail_share=0.4))
    assert not strict.classes["flagged"].any()


def cams_with_interior_spot(samples: pd.DataFrame, k: int, share: float = 0.4, seed: int = 0) -> np.ndarray:
    """8x8 heatmaps: everyone looks at the centre, with noise; ``share`` of class k's images also at a spot left of
    centre (cells rows 3-4, columns 0-1: pixels 12-19 x 0-7 at 32x32), as at an interior logo."""
    rng = np.random.default_rng(seed)
    cams = rng.uniform(0.0, 0.2, (len(samples), 8, 8)).astype(np.float32)
    cams[:, 3:5, 3:5] += 1.0
    rows = np.flatnonzero(samples["label"] == k)[: int(share * 100)]
    cams[rows, 3:5, 0:2] += 2.0
    return cams


def test_a_class_whose_heatmaps_carry_an_interior_spot_is_flagged_for_that_spot_and_clean_classes_are_not():
    samples, probs = make_table()
    tables = build(samples, probs, cams=cams_with_interior_spot(samples, 2))
    classes = tables.classes.set_index("class_name")
    assert classes["flagged"].tolist() == [False, False, True, False]
    row = classes.loc["c"]
    assert row["shortcut_statistic"] == "spot_margin" and row["region_kind"] == "spot"
    # The 40 images with the spot peak there, the other 60 of the class and the other classes' images at the centre.
    assert row["spot_margin_peak_share"] == pytest.approx(0.4) and row["spot_margin_others_share"] == 0.0
    assert row["spot_margin_z"] > findings.SPOT_MIN_Z and row["spot_margin_tail_share"] == pytest.approx(0.4, abs=0.06)
    assert row["region"] == "a spot left of centre covering 6% of the image"
    assert (f"40% of 'c' images have the densest part of their heatmap on {row['region']}, against 0% of other "
            "classes' images") in row["evidence"]
    region = tables.regions[2]
    assert region[16, 3] and not region[16, 16] and not region[2, 3] and region.mean() == row["region_share"]
    # Every sample's peak margin on the spot is a column of the samples table, for this class's spot only.
    assert row["region_column"] == "spot_margin_2"
    assert [c for c in tables.samples if c.startswith("spot_margin_")] == ["spot_margin_2"]
    margin = tables.samples["spot_margin_2"].to_numpy()
    mine = tables.samples["label"].to_numpy() == 2
    assert (margin[mine][:40] > 0).all() and (margin[mine][40:] < 0).all() and (margin[~mine] < 0).all()
    uses = tables.samples["flags"].str.contains("uses_shortcut").to_numpy()
    assert uses[mine][:40].all() and uses[mine][40:].sum() <= 6 and not uses[~mine].any()


def test_the_hot_spot_is_found_in_the_given_labels_cams():
    samples, probs = make_table()
    spotted, plain = cams_with_interior_spot(samples, 2), cams_with_interior_spot(samples, 2, share=0.0)
    for cams, label_cams, flagged in ((plain, spotted, True), (spotted, plain, False)):
        tables = findings.build_tables(same_evidence(samples), probs, cams, label_cams, CLASSES, (32, 32),
                                       findings.Thresholds())
        assert tables.classes["flagged"].tolist() == [False, False, flagged, False]


def test_heatmaps_alike_in_every_class_have_no_spot_signal():
    samples, probs = make_table()
    cams = cams_with_interior_spot(samples, 2, share=0.0)
    tables = build(samples, probs, cams=cams)
    assert not tables.classes["candidate"].any()
    excess = tables.classes["spot_margin_peak_share"] - tables.classes["spot_margin_others_share"]
    assert (excess < findings.Thresholds().min_spot_excess).all()


def test_a_class_looking_at_a_broad_area_has_its_peaks_scattered_there_and_no_spot():
    samples, _ = make_table()
    labels = samples["label"].to_numpy()
    cams = cams_with_interior_spot(samples, 2, share=0.0)
    cams[labels == 1, :, :6] += 1.0  # class 1 looks at three quarters of the image, each image a little elsewhere
    spots = findings.class_hot_spots(cams, labels, 4, (32, 32))
    assert spots.peak_share[1] - spots.others_share[1] < findings.Thresholds().min_spot_excess
    assert not spots.passes().any()
    # The same class with a spot on 30% of its images: found, at the spot, and only for that class.
    cams[np.flatnonzero(labels == 1)[:30], 5:7, 6:8] += 3.0
    spots = findings.class_hot_spots(cams, labels, 4, (32, 32))
    assert spots.passes().tolist() == [False, True, False, False]
    assert spots.masks[1][22, 27] and spots.masks[1].mean() == 0.0625


def test_the_causal_check_of_a_spot_blanks_the_spot():
    samples, probs = make_table()
    regions = {}

    def occlusion(k, region, population):
        regions[k] = region
        return occlusion_result(0.3)

    tables = build(samples, probs, occlusion=occlusion, cams=cams_with_interior_spot(samples, 2))
    assert list(regions) == [2] and (regions[2] == tables.regions[2]).all()
    assert "blanking a spot left of centre covering" in tables.classes.loc[2, "evidence"]


@pytest.mark.parametrize(("mask_kind", "words"), [
    (["true"], "the background (true masks)"),
    (["estimated"], "the background (estimated masks)"),
    (["true", "estimated"], "the background (true masks for 50% of the images, estimated for the rest)"),
])
def test_a_class_with_high_background_attention_is_flagged_for_the_background_naming_its_masks(mask_kind, words):
    samples, probs = make_table()
    samples["mask_kind"] = np.resize(mask_kind, len(samples))
    add_background_attention(samples, samples["label"] == 1, 0.5)
    regions = {}

    def occlusion(k, region, population):
        regions[k] = region
        return occlusion_result(0.3)

    tables = build(samples, probs, occlusion=occlusion)
    row = tables.classes.loc[1]
    assert tables.classes["flagged"].tolist() == [False, True, False, False]
    assert row["shortcut_statistic"] == "background_focus" and row["region"] == words
    assert row["background_focus_auroc"] == 1.0 and row["background_focus_ratio"] > 3
    assert regions == {1: None} and 1 not in tables.regions  # each image's own background, no fixed region
    assert row["evidence"].startswith(f"likely shortcut: 100% of 'b' images are more focused on {words} "
                                      "than 95% of other classes' images")
    # The mass those images put on their background is the attention (the focus times each image's share).
    assert row["tail_mass"] == pytest.approx(tables.samples.loc[tables.samples["label"] == 1,
                                                                "background_attention"].mean())
    assert f"filling {words} with grey changes 'b' accuracy" in row["evidence"]
    assert tables.samples.loc[tables.samples["label"] == 1, "flags"].str.contains("uses_shortcut").all()


def test_a_sub_population_attending_to_the_background_makes_its_class_a_candidate():
    samples, probs = make_table()
    rows = np.flatnonzero(samples["label"] == 3)[:30]
    add_background_attention(samples, rows, 0.9)
    row = build(samples, probs).classes.loc[3]
    assert row["candidate"] and row["shortcut_statistic"] == "background_focus"
    assert row["background_focus_auroc"] < findings.Thresholds().min_auroc
    assert row["shortcut_score"] == pytest.approx(0.3, abs=0.05)  # the 30, and a few clean ones by chance


def test_a_fixed_region_that_passes_is_preferred_to_an_estimated_background_but_not_to_a_true_one():
    samples, probs = table_with_border_class(2)
    add_background_attention(samples, samples["label"] == 2, 0.5)
    row = build(samples, probs).classes.loc[2]
    assert row["background_focus_tail_share"] == 1.0 and row["shortcut_statistic"] == "border_focus"
    # With true masks, the background is no guess: it competes on its tail share, and here it is the larger.
    samples, probs = make_table()
    samples.loc[np.flatnonzero(samples["label"] == 2)[:40], "border_focus"] = 3.0
    add_background_attention(samples, samples["label"] == 2, 0.5)
    assert build(samples, probs).classes.loc[2, "shortcut_statistic"] == "border_focus"
    samples["mask_kind"] = "true"
    assert build(samples, probs).classes.loc[2, "shortcut_statistic"] == "background_focus"


@pytest.mark.parametrize(("rows", "cols", "words"), [
    (slice(14, 18), slice(4, 10), "a spot left of centre covering 2% of the image"),
    (slice(28, 30), slice(4, 28), "a horizontal strip at the bottom covering 5% of the image"),
    (slice(2, 6), slice(26, 30), "a spot in the top-right covering 2% of the image"),
    (slice(12, 20), slice(12, 20), "a spot at the centre covering 6% of the image"),
    (slice(4, 28), slice(15, 17), "a vertical strip at the centre covering 5% of the image"),
    (slice(16, 17), slice(16, 17), "a spot at the centre covering under 1% of the image"),
])
def test_a_region_is_described_in_words_by_its_shape_place_and_size(rows, cols, words):
    region = np.zeros((32, 32), dtype=bool)
    region[rows, cols] = True
    assert findings.describe_region(region) == words


def varied_thumbnails(n: int, seed: int = 0) -> np.ndarray:
    """Photo-like 32x32 thumbnails, each different: smooth random shading plus fine random texture."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    shading = gaussian_filter(rng.uniform(0, 255, (n, 32, 32, 3)), sigma=(0, 4, 4, 0)) * 4 - 384
    texture = rng.normal(0, 20, (n, 32, 32, 3))
    return np.clip(128 + shading + texture, 0, 255).astype(np.uint8)


def test_images_carrying_one_printed_mark_look_alike_there_and_varied_images_do_not():
    from pipeline.artifacts import Artifact

    images = varied_thumbnails(60)
    region = np.zeros((32, 32), dtype=bool)
    region[12:20, 4:12] = True
    assert abs(findings.spot_consistency(images, region)) < 0.15
    for opacity in (1.0, 0.5):
        stamped = Artifact("patch", "x", position="0.25,0.5", size=0.15, opacity=opacity).apply(images)
        assert findings.spot_consistency(stamped, region) > 0.8
    assert np.isnan(findings.spot_consistency(images[:1], region))


def test_a_class_peaking_in_one_place_is_no_hot_spot_when_its_images_look_different_there():
    from pipeline.artifacts import Artifact

    samples, probs = make_table()
    cams = cams_with_interior_spot(samples, 2)
    thumbnails = varied_thumbnails(len(samples))
    # The class's images peak left of centre (where the spot of cams_with_interior_spot is), but show different things
    # there, as the parts of varied objects would: no hot spot, whatever the heatmaps say.
    plain = build(samples, probs, cams=cams, thumbnails=thumbnails).classes.loc[2]
    assert plain["spot_margin_peak_share"] == pytest.approx(0.4) and plain["spot_margin_consistency"] < 0.15
    assert not plain["candidate"] and "but they do not look alike there or near it" in plain["evidence"]
    # With a mark printed there on those 40 images, it is one, and the evidence says they look alike.
    rows = np.flatnonzero(samples["label"] == 2)[:40]
    thumbnails[rows] = Artifact("patch", "c", position="0.125,0.5", size=0.15).apply(thumbnails[rows])
    marked = build(samples, probs, cams=cams, thumbnails=thumbnails).classes.loc[2]
    assert marked["candidate"] and marked["shortcut_statistic"] == "spot_margin"
    assert marked["spot_margin_consistency"] > 0.8 and ", and they look alike " in marked["evidence"]


def test_a_mark_beside_the_place_where_the_heatmaps_peak_is_found_there_and_blamed():
    from pipeline.artifacts import Artifact

    samples, probs = make_table()
    cams = cams_with_interior_spot(samples, 2)  # class 'c' peaks left of centre, rows 12-19, columns 0-7 ...
    thumbnails = varied_thumbnails(len(samples))
    rows = np.flatnonzero(samples["label"] == 2)[:40]
    # ... but its mark is printed lower, rows 23-27, as a coarse heatmap can peak beside what draws it.
    thumbnails[rows] = Artifact("patch", "c", position="0.125,0.78", size=0.15).apply(thumbnails[rows])
    spots = findings.class_hot_spots(cams, samples["label"].to_numpy(), 4, (32, 32), thumbnails=thumbnails)
    peak_rows, mark_rows = (np.flatnonzero(region.any(axis=1)) for region in (spots.masks[2], spots.marks[2]))
    assert (peak_rows.min(), peak_rows.max()) == (12, 19) and mark_rows.min() > 16 and mark_rows.max() >= 27
    assert spots.consistency[2] > 0.8 and spots.passes().tolist() == [False, False, True, False]
    blamed = {}

    def occlusion(k, region, population):
        blamed[k] = region
        return occlusion_result(0.3)

    tables = build(samples, probs, cams=cams, thumbnails=thumbnails, occlusion=occlusion)
    row = tables.classes.loc[2]
    assert (blamed[2] == spots.marks[2]).all() and (tables.regions[2] == spots.marks[2]).all()
    assert row["measured_region"] == "a spot left of centre covering 6% of the image"  # where the heatmaps peak
    assert row["region"] == row["spot_mark"] == "a spot in the bottom-left covering 6% of the image"
    assert ", and they look alike at a spot in the bottom-left covering 6% of the image (their fine detail" in \
        row["evidence"]


def test_a_flagged_class_s_samples_use_the_shortcut_when_they_look_at_the_region_and_rely_on_it():
    samples, probs = table_with_border_class(2)  # every 'c' image but ten is drawn to the border ...
    labels = samples["label"].to_numpy()
    relying = (labels == 2) & (np.arange(len(labels)) % 2 == 0)  # ... but only half of them depend on it
    looking = (labels == 2) & ~np.isin(np.arange(len(labels)), np.flatnonzero(relying)[:10])
    samples.loc[(labels == 2) & ~looking, "border_focus"] = 0.5
    drops = np.where(relying, 0.6, np.where(labels == 2, 0.0, np.random.default_rng(1).normal(0.0, 0.02,
                                                                                              len(labels))))
    asked = {}

    def reliance(regions):
        asked.update(regions)
        return {k: drops for k in regions}

    tables = build(samples, probs, occlusion=lambda k, region, population: occlusion_result(0.3), reliance=reliance)
    assert list(asked) == [2] and (asked[2] == heatmaps.border_band(32, 32)).all()  # the region the check blanks
    row = tables.classes.loc[2]
    assert row["reliance_column"] == "reliance_2" and row["sample_score"] == "reliance"
    assert row["reliance_tail_share"] == 0.5 and row["reliance_mean"] == pytest.approx(0.3, abs=0.01)
    assert row["reliance_auroc"] == pytest.approx(0.5 + 0.5 * 0.5, abs=0.01)
    assert (tables.samples["reliance_2"].to_numpy() == drops).all()
    uses = tables.samples["flags"].str.contains("uses_shortcut").to_numpy()
    assert (uses == (relying & looking)).all() and uses.sum() == 40
    _, scores = findings.shortcut_values(tables.samples, tables.classes, 2)
    _, focus = findings.shortcut_values(tables.samples, tables.classes, 2, "focus")
    assert (scores == drops).all() and (focus == tables.samples["label_border_focus"].to_numpy()).all()
    assert (findings.shortcut_tail(tables.samples, tables.classes, 2, "focus") == looking).all()
    assert (findings.shortcut_tail(tables.samples, tables.classes, 2, "reliance") == relying).all()
    assert "; image by image, 50% of 'c' images lose more of the evidence for their label when it is blanked " \
        "than 95% of other classes' images (a drop of its log-odds above 0.25, the least that counts)" in \
        row["evidence"]  # the others' 95% quantile (0.03) is below the floor of a drop that counts
    # Classes without a candidate have no reliance, and keep their focus as their score.
    assert tables.classes.loc[0, "reliance_column"] == "" and tables.classes.loc[0, "sample_score"] == "focus"


@pytest.mark.parametrize(("relying_share", "flagged"), [(0.5, True), (0.3, True), (0.2, False)])
def test_a_class_whose_images_rely_on_its_region_one_by_one_is_flagged_though_its_mean_drop_falls_short(
        relying_share, flagged):
    samples, probs = table_with_border_class(2)
    labels = samples["label"].to_numpy()
    mine = np.flatnonzero(labels == 2)
    relying = np.isin(np.arange(len(labels)), mine[:round(relying_share * len(mine))])
    drops = np.where(relying, 2.0, np.where(labels == 2, 0.0, np.random.default_rng(3).normal(0.0, 0.02, len(labels))))
    tables = build(samples, probs, occlusion=lambda k, region, population: occlusion_result(0.01),
                   reliance=lambda regions: {k: drops for k in regions})
    row = tables.classes.loc[2]
    assert row["occlusion_excess_drop"] == pytest.approx(0.01)  # the mean drop alone does not confirm it
    assert row["reliance_tail_share"] == pytest.approx(relying_share, abs=0.01)
    assert row["flagged"] == flagged and row["status"] == ("confirmed" if flagged else "not confirmed")
    assert row["confirmed_by"] == ("reliance" if flagged else "")
    bears_out = ", at least 25%: its images bear the shortcut out one by one, although the causal check's excess " \
                "drop (0.01) is below 0.05, so the class is flagged"
    assert (bears_out in row["evidence"]) == flagged and ("not flagged" in row["evidence"]) != flagged
    assert row["evidence"].startswith("likely shortcut:" if flagged else "shortcut candidate, not confirmed:")


@pytest.mark.parametrize(("drop", "floor", "flagged"), [(0.1, None, False), (0.4, None, True), (0.1, 0.0, True)])
def test_images_that_beat_the_others_only_by_a_drop_too_small_to_count_do_not_confirm_a_class(drop, floor, flagged):
    """The reduced demo's clean squares: blanking the border band costs no image much, a third of the squares 0.1
    log-odds and the other classes' images 0.02 at most, so all of them beat the others' 95% quantile; confirmed
    by that alone, a clean class was flagged. Such drops are below ``min_reliance_drop`` (0.25) and count for
    nothing; with the floor at 0, the same images confirm it."""
    samples, probs = table_with_border_class(2)
    labels = samples["label"].to_numpy()
    mine = np.flatnonzero(labels == 2)
    relying = np.isin(np.arange(len(labels)), mine[:len(mine) // 3])
    noise = np.random.default_rng(4).uniform(-0.02, 0.02, len(labels))
    drops = np.where(relying, drop, np.where(labels == 2, 0.0, noise))
    thresholds = {} if floor is None else {"min_reliance_drop": floor}
    tables = build(samples, probs, occlusion=lambda k, region, population: occlusion_result(0.01),
                   reliance=lambda regions: {k: drops for k in regions}, thresholds=thresholds)
    row = tables.classes.loc[2]
    assert row["reliance_cutoff"] == pytest.approx(0.25 if floor is None else np.quantile(noise[labels != 2], 0.95))
    assert row["reliance_tail_share"] == pytest.approx(1 / 3 if flagged else 0.0, abs=0.01)
    assert row["flagged"] == flagged and row["confirmed_by"] == ("reliance" if flagged else "")
    uses = tables.samples["flags"].str.contains("uses_shortcut").to_numpy()
    assert uses.any() == flagged and not (uses & ~relying).any()


def test_a_reliance_share_that_would_both_confirm_and_refute_is_refused():
    with pytest.raises(AuditError, match="min_reliance_confirm_share .0.2. must be at least min_reliance_share .0.3."):
        findings.Thresholds.from_overrides({"min_reliance_share": 0.3, "min_reliance_confirm_share": 0.2})


def test_a_class_whose_images_do_not_rely_on_its_region_one_by_one_is_not_flagged_whatever_its_mean_drop():
    samples, probs = make_table()
    samples["mask_kind"] = "true"
    add_background_attention(samples, samples["label"] == 1, 0.5)
    drops = np.random.default_rng(2).normal(0.0, 0.02, len(samples))
    asked = {}

    def reliance(regions):
        asked.update(regions)
        return {k: drops for k in regions}

    tables = build(samples, probs, occlusion=lambda k, region, population: occlusion_result(0.3), reliance=reliance)
    assert asked == {1: None}  # each image's own background, one column for every class blamed for it
    row = tables.classes.loc[1]
    assert row["reliance_column"] == "background_reliance"
    assert "background_reliance" in tables.samples and "reliance_1" not in tables.samples
    # The mean drop confirms it (0.3 more than the others), but image by image no more of its images depend on the
    # background than chance (5% of them above the others' 95% quantile): not flagged.
    assert row["occlusion_excess_drop"] == pytest.approx(0.3) and row["reliance_tail_share"] < 0.1
    assert row["status"] == "not confirmed" and not row["flagged"]
    assert row["evidence"].startswith("shortcut candidate, not confirmed:") and "excess drop of" not in row["evidence"]
    assert row["evidence"].endswith(", fewer than 15%: its images do not bear the check out one by one, so the class "
                                    "is not flagged.")
    assert not tables.samples["flags"].str.contains("uses_shortcut").any()


@pytest.mark.parametrize(("class_rate", "flagged"), [(0.6, True), (0.35, False)])
def test_a_spot_that_blanking_cannot_single_out_is_confirmed_when_its_content_makes_other_images_the_class(
        class_rate, flagged):
    samples, probs = make_table()
    asked = {}

    def transplant(k, region, population):
        asked[k] = region, population
        return TransplantResult(class_rate, 0.05, class_rate, 0.05, 40)

    drops = np.random.default_rng(5).normal(0.0, 0.02, len(samples))  # blanking costs every class alike
    tables = build(samples, probs, cams=cams_with_interior_spot(samples, 2),
                   occlusion=lambda k, region, population: occlusion_result(-0.1),
                   reliance=lambda regions: {k: drops for k in regions}, transplant=transplant)
    row = tables.classes.loc[2]
    # The spot (8 x 8 px at the left edge) is pasted grown by one cell of the 16 x 16 grid (2 px) on every side
    # but the image's edge: 12 x 10 px.
    assert list(asked) == [2] and (asked[2][0] == heatmaps.grown(tables.regions[2])).all()
    assert asked[2][0].sum() == 12 * 10 and (asked[2][0] >= tables.regions[2]).all()
    assert row["transplant_checked"] and row["transplant_excess"] == pytest.approx(class_rate - 0.05)
    assert row["flagged"] == flagged and row["confirmed_by"] == ("transplant" if flagged else "")
    pasted = ("; pasting a spot left of centre covering 12% of the image (the region and what lies within 6% of the "
              f"image's side of it) from 40 of 'c' images into other classes' images makes the model call "
              f"{class_rate:.0%} of them 'c' (5% when it comes from other classes' images)")
    assert pasted in row["evidence"]
    assert ("so the class is flagged" in row["evidence"]) == flagged
    assert ("not flagged" in row["evidence"]) != flagged
    assert tables.classes["transplant_checked"].sum() == 1


def test_the_transplant_check_is_made_only_for_small_regions_that_blanking_did_not_confirm():
    asked = []

    def transplant(k, region, population):
        asked.append(k)
        return TransplantResult(1.0, 0.0, 1.0, 0.0, 40)

    # The border band (44% of a 32x32 image) is too large to be pasted as a mark.
    build(*table_with_border_class(2), occlusion=lambda k, region, population: occlusion_result(0.01),
          transplant=transplant)
    # A spot confirmed by blanking needs no transplant.
    samples, probs = make_table()
    tables = build(samples, probs, cams=cams_with_interior_spot(samples, 2),
                   occlusion=lambda k, region, population: occlusion_result(0.3), transplant=transplant)
    assert asked == [] and tables.classes.loc[2, "confirmed_by"] == "occlusion"
    assert not tables.classes["transplant_checked"].any() and tables.classes["transplant_rate"].isna().all()


@pytest.mark.parametrize("relied_on", ["background", "band"])
def test_when_the_band_and_the_true_background_both_pass_the_model_s_reliance_chooses_the_region_blamed(relied_on):
    samples, probs = table_with_border_class(1)  # class 'b' favours the border band (its whole class) ...
    samples["mask_kind"] = "true"
    add_background_attention(samples, np.flatnonzero(samples["label"] == 1)[:60], 0.5)  # ... and, less, its background
    labels = samples["label"].to_numpy()
    noise = np.random.default_rng(4).normal(0.0, 0.02, len(samples))
    relying, indifferent = np.where(labels == 1, 2.0, noise), np.where(labels == 1, -0.5, noise)
    asked = []

    def reliance(regions):
        (k, region), = regions.items()
        asked.append((k, "background" if region is None else "band"))
        return {k: relying if asked[-1][1] == relied_on else indifferent}

    classes = build(samples, probs, occlusion=lambda k, region, population: occlusion_result(0.3),
                    reliance=reliance).classes
    row = classes.loc[1]
    assert classes.loc[1, "fixed_alternatives"] == "background_focus"
    # Each region once for the choice (the band first), and the one chosen not again for the samples' reliance.
    assert asked == [(1, "band"), (1, "background")]
    # The class loses 2 log-odds more than the others where it relies on the region, half a log-odds less elsewhere.
    excess = (2.0, -0.5) if relied_on == "band" else (-0.5, 2.0)
    assert row["chosen_by"] == "reliance"
    assert row["alternatives_reliance"] == "border focus {:.2f}; background focus {:.2f}".format(*excess)
    expected = "background_focus" if relied_on == "background" else "border_focus"
    assert row["shortcut_statistic"] == expected and row["shortcut_score"] == row[f"{expected}_tail_share"]
    assert row["region_kind"] == ("background" if relied_on == "background" else "band")
    assert row["flagged"] and "so that is the region blamed" in row["evidence"]
    assert (classes.drop(index=1)["chosen_by"] == "").all()  # no other class had two fixed regions passing
