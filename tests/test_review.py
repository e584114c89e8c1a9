import json

import pandas as pd
import pytest
from conftest import hostile_audit

from pipeline import AuditError, cli, report
from pipeline.review import apply_review


@pytest.fixture
def report_dir(tmp_path):
    source, tables = hostile_audit(tmp_path)
    return report.write_report(tmp_path / "run", source, tables), tables


def write_review(path, rows):
    pd.DataFrame(rows, columns=["run_id", "sample_id", "decision", "new_label"]).to_csv(path, index=False)
    return path


def test_relabel_and_remove_decisions_become_label_corrections(report_dir, tmp_path):
    out, tables = report_dir
    ids, classes = tables.samples["sample_id"], list(tables.meta["dataset"]["classes"])
    target = next(c for c in classes if c != tables.samples.loc[0, "label_name"])
    review = write_review(out / "review.csv", [
        ["r", ids[0], "relabel", target], ["r", ids[1], "remove", ""], ["r", ids[2], "keep", ""],
        ["r", ids[3], "relabel", tables.samples.loc[3, "label_name"]],  # relabel to its own label: no change
    ])
    corrections = apply_review(review)
    assert corrections.kept == 1
    assert corrections.table[["sample_id", "action", "new_label"]].values.tolist() == [
        [ids[0], "relabel", target], [ids[1], "remove", ""]]
    saved = json.loads(corrections.json_path.read_text())
    assert saved["run_id"] == "r" and saved["corrections"][0]["new_label_index"] == classes.index(target)
    assert saved["corrections"][1]["new_label"] is None
    assert pd.read_csv(corrections.csv_path)["sample_id"].tolist() == [ids[0], ids[1]]
    manifest = pd.read_csv(corrections.manifest_path, dtype=str, keep_default_na=False)
    assert manifest.columns.tolist() == ["sample_id", "label"]
    assert manifest["sample_id"].tolist() == ids.tolist()  # every audited sample, in the audit's order
    expected = tables.samples["label_name"].astype(str).tolist()
    expected[0], expected[1] = target, "removed"
    assert manifest["label"].tolist() == expected


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["another-run", None, "keep", ""], "belongs to run"),
        (["r", "not/audited.png", "keep", ""], "were not audited"),
        (["r", None, "delete", ""], "unknown decision"),
        (["r", None, "relabel", "zebra"], "unknown new label"),
    ],
)
def test_a_review_that_does_not_belong_to_the_run_is_refused(report_dir, row, message):
    out, tables = report_dir
    row = [tables.samples.loc[0, "sample_id"] if v is None else v for v in row]
    with pytest.raises(AuditError, match=message):
        apply_review(write_review(out / "review.csv", [row]))
    assert not (out / "label-corrections.csv").exists()


def test_apply_review_command_reports_what_it_wrote_and_exits_2_on_a_foreign_review(report_dir, tmp_path, capsys):
    out, tables = report_dir
    review = write_review(tmp_path / "review.csv", [["r", tables.samples.loc[0, "sample_id"], "remove", ""]])
    assert cli.main(["apply-review", str(review), "--report", str(out)]) == 0
    assert "0 relabelled, 1 removed, 0 kept" in capsys.readouterr().out
    foreign = write_review(tmp_path / "foreign.csv", [["x", tables.samples.loc[0, "sample_id"], "keep", ""]])
    assert cli.main(["apply-review", str(foreign), "--report", str(out)]) == 2
    assert "belongs to run" in capsys.readouterr().err
    assert cli.main(["apply-review", str(review)]) == 2  # tmp_path is no report directory
    assert "not a complete report directory" in capsys.readouterr().err


def test_the_report_compares_its_findings_with_the_previous_run_of_the_same_dataset_and_model(tmp_path):
    source, tables = hostile_audit(tmp_path)
    first = report.write_report(tmp_path / "reports" / "first", source, tables)
    tables.meta = tables.meta | {"run_id": "second", "created": "2099-01-01T00:00:00"}
    flagged = tables.samples.index[tables.samples["flags"].str.contains("label_issue|uses_shortcut")]
    assert len(flagged) >= 2
    resolved = tables.samples.loc[flagged[0], "sample_id"]
    tables.samples.loc[flagged[:1], "flags"] = ""  # one finding resolved since the first run
    history = report._history(tmp_path / "reports" / "second", tables)
    samples_row = next(r for r in history["rows"] if r["what"] == "flagged samples")
    assert samples_row["resolved"] == [resolved] and samples_row["new"] == []
    assert len(samples_row["persisting"]) == len(flagged) - 1
    second = report.write_report(tmp_path / "reports" / "second", source, tables)
    html = (second / "index.html").read_text()
    assert "Since the previous run" in html and "../first/index.html" in html
    assert "Since the previous run" not in (first / "index.html").read_text()
