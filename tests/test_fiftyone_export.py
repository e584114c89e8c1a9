"""The FiftyOne export of a report and the way back of its review tags through apply-review.

The tests that need FiftyOne (the optional ``[fiftyone]`` extra) are skipped where it is not installed; the tag
conventions and the user errors are tested everywhere."""

import os
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import hostile_audit
from PIL import Image

from pipeline import AuditError, report
from pipeline.fiftyone_export import audit_tags, export, main, read_report, review_from_tags, review_rows
from pipeline.review import apply_review


@pytest.fixture
def audited(tmp_path):
    """A small report of a real image folder (hostile names), and its tables."""
    source, tables = hostile_audit(tmp_path)
    tables.meta["dataset"]["split"] = source.split  # as a run records it; its duplicate pair is in that split
    return report.write_report(tmp_path / "run", source, tables), tables


@pytest.fixture
def fo():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    return pytest.importorskip("fiftyone")


@pytest.fixture
def dataset_name(fo):
    """A fresh dataset name, and the dataset deleted after the test."""
    name = f"gradcam-audit-test-{uuid.uuid4().hex[:12]}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def snapshot(directory):
    return {p.relative_to(directory): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def test_review_tags_become_review_rows_in_any_case_and_other_tags_are_ignored():
    rows = review_rows("run", [
        ("a", ["misclassified", "Keep"]),
        ("b", ["remove", "label_issue"]),
        ("c", ["relabel:Tabby Cat", "relabel_candidate"]),  # the class as written, spaces and case kept
        ("d", ["uses_shortcut"]),  # no review tag: not reviewed, left out
        ("e", ["remove", "REMOVE"]),  # the same decision twice is one decision
    ])
    assert rows.columns.tolist() == ["run_id", "sample_id", "decision", "new_label"]
    assert rows.values.tolist() == [["run", "a", "keep", ""], ["run", "b", "remove", ""],
                                    ["run", "c", "relabel", "Tabby Cat"], ["run", "e", "remove", ""]]


@pytest.mark.parametrize(
    ("tagged", "message"),
    [
        ([("a", ["keep", "remove"])], r"more than one review tag, e.g. 'a' \(keep, remove\)"),
        ([("a", ["relabel:cat", "relabel:dog"])], "more than one review tag"),
        ([("a", ["relabel: "])], "without a class"),
        ([("a", ["misclassified"]), ("b", [])], "no sample carries a review tag"),
    ],
)
def test_contradictory_incomplete_or_missing_review_tags_are_refused(tagged, message):
    with pytest.raises(AuditError, match=message):
        review_rows("run", tagged)


def test_audit_tags_are_the_flags_relabel_candidates_and_duplicates():
    samples = pd.DataFrame({"flags": ["misclassified;label_issue", "", "uses_shortcut"],
                            "relabel_reason": ["the model gives 'cat' 3%", "", ""]})
    assert audit_tags(samples, np.array([False, True, False])) == [
        ["misclassified", "label_issue", "relabel_candidate"], ["duplicate"], ["uses_shortcut"]]


def test_a_missing_or_incomplete_report_directory_is_refused(audited, tmp_path):
    with pytest.raises(AuditError, match="does not exist"):
        read_report(tmp_path / "nowhere")
    out, _ = audited
    (out / "cams.npz").unlink()
    with pytest.raises(AuditError, match=r"not a complete report directory \(no cams.npz\)"):
        read_report(out)


def test_without_fiftyone_the_commands_say_how_to_install_it_and_exit_2(audited, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fiftyone", None)  # import fiftyone fails as when it is not installed
    out, _ = audited
    assert main(["export", str(out)]) == 2
    assert main(["tags-to-review", "some-dataset", str(tmp_path / "review.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("FiftyOne is not installed" in line and "gradcam-audit[fiftyone]" in line
                                 for line in err)
    assert main(["export", str(tmp_path / "nowhere")]) == 2  # the report is checked first, without FiftyOne
    assert "does not exist" in capsys.readouterr().err


def test_export_makes_one_sample_per_audited_row_with_its_fields_heatmap_and_tags(audited, fo, dataset_name,
                                                                                  tmp_path):
    out, tables = audited
    before = snapshot(out)
    dataset = export(out, name=dataset_name, thumbnails_dir=tmp_path / "thumbs")
    assert snapshot(out) == before  # the report directory is only read

    samples = pd.read_parquet(out / "samples.parquet")
    cams = np.load(out / "cams.npz")["cam"]
    assert dataset.persistent and len(dataset) == len(samples)
    assert dataset.default_classes == list(tables.meta["dataset"]["classes"])
    assert dataset.info["gradcam_audit"]["run_id"] == "r"
    assert "gradcam" in dataset.app_config.active_fields.paths  # the App shows the heatmaps without a click
    exported = {s.sample_id: s for s in dataset}
    for i, row in samples.iterrows():
        sample = exported[row["sample_id"]]
        for column in ("label", "pred", "border_focus", "background_attention", "shortcut_score", "relabel_score"):
            assert sample[column] == pytest.approx(row[column]), column
        for column in ("cam_valid", "is_label_issue", "label_name", "flags", "relabel_reason"):
            assert sample[column] == row[column], column
        assert sample.ground_truth.label == row["label_name"] and sample.prediction.label == row["pred_name"]
        assert sample.prediction.confidence == pytest.approx(row["confidence"])
        assert np.exp(sample.prediction.logits) == pytest.approx(tables.probs[i], abs=1e-6)
        np.testing.assert_array_equal(sample.gradcam.map, cams[i])
        assert sample.gradcam.map.dtype == np.uint8 and sample.gradcam.range == [0, 255]
        expected = [f for f in row["flags"].split(";") if f] + ["relabel_candidate"] * bool(row["relabel_reason"])
        assert [t for t in sample.tags if t != "duplicate"] == expected
    assert sorted(s.sample_id for s in dataset.match_tags("duplicate")) == sorted(samples["sample_id"][:2])

    # Images: the report's thumbnails, each the image of its own sample (nearest of all the originals).
    originals = np.stack([np.asarray(Image.open(tmp_path / "data" / sid), dtype=float) for sid in samples["sample_id"]])
    for i, sid in enumerate(samples["sample_id"]):
        thumb = np.asarray(Image.open(exported[sid].filepath), dtype=float)
        assert np.abs(originals - thumb).mean(axis=(1, 2, 3)).argmin() == i
        assert exported[sid].filepath.startswith(str(tmp_path / "thumbs"))


def test_an_image_folder_exports_the_dataset_files_themselves(audited, fo, dataset_name, tmp_path):
    out, _ = audited
    dataset = export(out, name=dataset_name, images_root=tmp_path / "data")
    for sample in dataset:
        assert sample.filepath == str((tmp_path / "data" / sample.sample_id).resolve())
        assert os.path.isfile(sample.filepath)
    with pytest.raises(AuditError, match="are not under"):
        export(out, name=dataset_name, images_root=tmp_path, overwrite=True)


def test_a_report_without_thumbnails_needs_the_image_folder(tmp_path, fo, dataset_name):
    source, tables = hostile_audit(tmp_path)
    out = report.write_report(tmp_path / "linked", source, tables, link_images=True)
    with pytest.raises(AuditError, match="carries no thumbnails"):
        export(out, name=dataset_name, thumbnails_dir=tmp_path / "thumbs")
    assert len(export(out, name=dataset_name, images_root=tmp_path / "data")) == len(tables.samples)


def test_an_existing_dataset_is_replaced_only_when_asked(audited, fo, dataset_name, tmp_path):
    out, _ = audited
    export(out, name=dataset_name, thumbnails_dir=tmp_path / "thumbs").take(1).tag_samples("keep")
    with pytest.raises(AuditError, match="exists; choose another --name"):
        export(out, name=dataset_name, thumbnails_dir=tmp_path / "thumbs")
    assert fo.load_dataset(dataset_name).count_sample_tags()["keep"] == 1
    replaced = export(out, name=dataset_name, thumbnails_dir=tmp_path / "thumbs", overwrite=True)
    assert "keep" not in replaced.count_sample_tags()


def test_tags_made_on_the_dataset_come_back_through_apply_review(audited, fo, dataset_name, tmp_path, capsys):
    out, tables = audited
    assert main(["export", str(out), "--name", dataset_name, "--thumbnails-dir", str(tmp_path / "thumbs")]) == 0
    assert f"FiftyOne dataset {dataset_name!r}: 30 samples" in capsys.readouterr().out
    dataset = fo.load_dataset(dataset_name)
    by_id = {s.sample_id: s.id for s in dataset}
    ids, classes = tables.samples["sample_id"], list(tables.meta["dataset"]["classes"])
    target = next(c for c in classes if c != tables.samples.loc[0, "label_name"])
    # What a reviewer does in the App: select samples, tag them.
    dataset.select([by_id[ids[0]]]).tag_samples(f"relabel:{target}")
    dataset.select([by_id[ids[1]]]).tag_samples("remove")
    dataset.select([by_id[ids[2]]]).tag_samples("keep")

    review_csv = tmp_path / "review.csv"
    assert main(["tags-to-review", dataset_name, str(review_csv)]) == 0
    printed = capsys.readouterr().out
    assert "3 decisions (1 keep, 1 relabel, 1 remove)" in printed and f"--report {out.resolve()}" in printed
    corrections = apply_review(review_csv, out)
    assert corrections.kept == 1
    assert corrections.table[["sample_id", "action", "new_label"]].values.tolist() == [
        [ids[0], "relabel", target], [ids[1], "remove", ""]]

    assert main(["tags-to-review", dataset_name, str(review_csv)]) == 2  # an existing file is kept
    assert "exists" in capsys.readouterr().err
    assert review_from_tags(dataset, review_csv, overwrite=True).path == review_csv
    assert main(["tags-to-review", "gradcam-audit-no-such-dataset", str(tmp_path / "x.csv")]) == 2
    assert "no FiftyOne dataset named" in capsys.readouterr().err
